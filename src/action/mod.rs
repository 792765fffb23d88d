//! Building root filesystems: `base` (root.d into an empty tree) and `layer` (extra-data →
//! post-root over the layers under it), each run in a sandbox (see [`sandbox`]) and committed
//! to the store by key.
//!
//! The parent side lives here: turn a graph action into an [`spec::ActionSpec`], run the
//! sandbox, follow its events, and commit (or discard) its tree.

pub mod checkpoint;
pub mod dib;
pub mod disk;
pub mod event;
mod ext4;
mod fullwatch;
pub mod grub;
pub mod inroot;
pub mod layout;
pub mod native;
pub mod repro;
pub mod runner;
pub mod sandbox;
mod segments;
pub mod spec;
pub mod tree;
mod xfs;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use event::{Event, StepRecord};
use spec::{ActionSpec, CacheMount, ElementSrc, PhaseSpec, Place, SpecKind, Step};

use crate::element::view::run_parts_cmp;
use crate::element::{ElementDir, Resolver, engine_env, packages};
use crate::graph::{Action, Graph, Kind};
use crate::manifest::Model;
use crate::store::{LayerMeta, LayerMode, Store, StoreError};

/// How long an action has to stop after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(8);

/// A script (or engine step) of an action exited non-zero.
#[derive(Debug, thiserror::Error)]
#[error("{id}: element `{element}`, {phase}/{script} failed ({status})")]
pub struct StepFailure {
    pub id: String,
    pub element: String,
    pub phase: String,
    pub script: String,
    pub status: String,
    /// The last lines of its output.
    pub tail: Vec<String>,
    pub log: PathBuf,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    #[error(transparent)]
    #[diagnostic(code(ccb::build::step_failed))]
    StepFailed(Box<StepFailure>),
    /// The engine failed inside the sandbox (a mount, a copy, a program, the disk layout).
    #[error("{id}")]
    #[diagnostic(code(ccb::build::engine))]
    Sandbox {
        id: String,
        #[source]
        source: event::SandboxFailure,
        log: Option<PathBuf>,
    },
    /// A file operation of the parent failed (the work directory, the outputs, a secret's copy).
    #[error("{id}: {what}")]
    #[diagnostic(code(ccb::build::io))]
    Io {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A program the parent runs failed or is not installed.
    #[error("{id}: {what}")]
    #[diagnostic(code(ccb::build::program))]
    Program {
        id: String,
        what: String,
        #[source]
        source: crate::process::ProcessError,
    },
    /// An element's own files are wrong (its package lists, its block-device layout).
    #[error("{id}")]
    #[diagnostic(code(ccb::build::element))]
    Element {
        id: String,
        #[source]
        source: crate::element::ElementError,
    },
    #[error("{id}")]
    #[diagnostic(code(ccb::build::layout))]
    Layout {
        id: String,
        #[source]
        source: layout::LayoutError,
    },
    #[error("{id}")]
    #[diagnostic(code(ccb::build::tree))]
    Tree {
        id: String,
        #[source]
        source: tree::TreeError,
    },
    /// A secret input could not be read: the project's to fix (no such variable or file),
    /// or the host's (the OS error in the chain says: a permission, a failing disk).
    #[error("{id}: secret `{var}` ({from})")]
    #[diagnostic(code(ccb::build::secret))]
    Secret {
        id: String,
        var: String,
        from: String,
        #[source]
        source: crate::manifest::SecretError,
    },
    /// The image's input is wrong in a way found while preparing it (a layout variable out
    /// of range).
    #[error("{id}: {problem}")]
    #[diagnostic(code(ccb::build::input))]
    Input { id: String, problem: String },
    /// A state the graph and the scheduler rule out: a bug in ccb.
    #[error("{id}: internal error: {what}")]
    #[diagnostic(code(ccb::build::internal))]
    Internal { id: String, what: String },
    #[error("{id}: cancelled")]
    #[diagnostic(code(ccb::build::cancelled))]
    Cancelled { id: String },
    #[error("{id}: {what}")]
    #[diagnostic(code(ccb::build::unsupported))]
    Unsupported { id: String, what: &'static str },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    /// Sent to a remote builder, which could not be reached or failed to build it.
    #[error("{id}")]
    #[diagnostic(code(ccb::build::builder))]
    Builder {
        id: String,
        #[source]
        source: Box<crate::remote::builder::BuilderError>,
    },
}

impl BuildError {
    fn io(id: &str, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let (id, what) = (id.to_string(), what.into());
        move |source| BuildError::Io { id, what, source }
    }

    fn internal(id: &str, what: impl Into<String>) -> Self {
        BuildError::Internal {
            id: id.to_string(),
            what: what.into(),
        }
    }

    pub fn log(&self) -> Option<&PathBuf> {
        match self {
            BuildError::StepFailed(f) => Some(&f.log),
            BuildError::Sandbox { log, .. } => log.as_ref(),
            _ => None,
        }
    }

    /// Who has to act: the sandbox says for its failures; an OS error the host's operator
    /// fixes (a full disk, a permission) anywhere in the chain makes it the host's.
    pub fn blame(&self) -> event::Blame {
        use event::Blame;
        match self {
            BuildError::Internal { .. } => return Blame::Bug,
            BuildError::Program { source, .. } if source.is_missing_tool() => {
                return Blame::MissingTool;
            }
            BuildError::Fetch(crate::fetch::FetchError::Download { .. }) => {
                return Blame::Network;
            }
            BuildError::Builder { source, .. } => {
                use crate::remote::builder::BuilderError as B;
                return match &**source {
                    B::Ssh { source, .. } if source.is_missing_tool() => Blame::MissingTool,
                    // A full disk while taking the result from the cache.
                    B::Download { .. } if self.host_errno_in_chain() => Blame::Host,
                    B::Unreachable { .. } | B::Ssh { .. } | B::Download { .. } => Blame::Network,
                    B::Failed { .. } | B::SourceOutside { .. } | B::Corrupt { .. } => Blame::Input,
                    B::Internal(_) | B::NoBuilder(_) => Blame::Bug,
                    // The store, the project's files, a stream here: the host's.
                    _ => Blame::Host,
                };
            }
            BuildError::Sandbox { source, .. } if source.blame() != Blame::Input => {
                return source.blame();
            }
            _ => {}
        }
        if self.host_errno_in_chain() {
            return Blame::Host;
        }
        Blame::Input
    }

    /// Whether an OS error the host's operator fixes (a full disk, a permission) is in the
    /// chain.
    fn host_errno_in_chain(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(errno) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.raw_os_error())
                && event::host_errno(errno)
            {
                return true;
            }
            cur = e.source();
        }
        false
    }

    /// The message with its whole chain of causes, each said once.
    pub fn message(&self) -> String {
        let mut out = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cur = e.source();
        }
        out
    }
}

/// Everything an action needs from the rest of the engine.
pub struct BuildContext<'a> {
    pub model: &'a Model,
    pub graph: &'a Graph,
    pub resolver: &'a Resolver<'a>,
    pub store: &'a Store,
    /// Stack layers with overlayfs (else copy them).
    pub overlay: bool,
    /// Send every output line as an event (`-v`).
    pub stream_output: bool,
    /// Keep the working tree of a failed action.
    pub keep_failed: bool,
    /// Where artifacts are looked for before their URL (`CCB_DISTDIR`).
    pub distdirs: Vec<PathBuf>,
    /// Fetch nothing from the network.
    pub offline: bool,
    /// Opens Swift objects of the sites (artifacts kept in a site's object store).
    pub swift: Option<&'a crate::fetch::SwiftOpener<'a>>,
    /// A `command not found` in a step's output fails the action (`--strict`).
    pub strict: bool,
}

/// Whether overlayfs can be used: the kernel has it and `CCB_OVERLAYFS=0` does not refuse it.
pub fn overlay_available() -> bool {
    if std::env::var("CCB_OVERLAYFS").is_ok_and(|v| v == "0") {
        return false;
    }
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    })
}

/// A finished action.
#[derive(Debug, Clone)]
pub struct Built {
    pub steps: Vec<StepRecord>,
    /// Commands the steps called that do not exist.
    pub warnings: Vec<dib::MissingCommand>,
    pub duration: Duration,
    pub tree: crate::store::TreeSummary,
}

const LAYER_PHASES: [(&str, Place); 5] = [
    ("extra-data.d", Place::Outside),
    ("pre-install.d", Place::Inside),
    ("install.d", Place::Inside),
    ("post-install.d", Place::Inside),
    ("post-root.d", Place::Outside),
];

/// DIB's package-installs positions: (phase, install step, uninstall step).
const PACKAGE_STEPS: [(&str, &str, &str); 3] = [
    (
        "pre-install.d",
        "10-package-installs",
        "99-package-uninstalls",
    ),
    ("install.d", "01-package-installs", "99-package-uninstalls"),
    (
        "post-install.d",
        "00-package-installs",
        "95-package-uninstalls",
    ),
];

fn distro_cache(distro: &str) -> Option<&'static str> {
    match distro {
        "debian" | "ubuntu" => Some("/var/cache/apt/archives"),
        "centos" | "rhel" | "fedora" | "rocky" | "almalinux" | "openeuler" => {
            Some("/var/cache/dnf")
        }
        _ => None,
    }
}

fn unsupported(action: &Action, what: &'static str) -> BuildError {
    BuildError::Unsupported {
        id: action.id.to_string(),
        what,
    }
}

/// A `fetch` action: the artifact into the store (no sandbox: nothing runs but ccb).
fn run_fetch(
    ctx: &BuildContext,
    action: &Action,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let name = &action
        .artifact_name()
        .ok_or_else(|| unsupported(action, "not a fetch action"))?;
    let artifact = ctx.model.artifacts.get(name).ok_or_else(|| {
        BuildError::internal(&action.id, format!("artifact `{name}` is not declared"))
    })?;
    let fetcher = crate::fetch::Fetcher {
        store: ctx.store,
        distdirs: ctx.distdirs.clone(),
        offline: ctx.offline,
        swift: ctx.swift,
        mirrors: crate::fetch::mirror_variables(&ctx.model.root),
    };
    let (path, origin) = fetcher.fetch(name, artifact, &mut |done, total| {
        on_event(&Event::Transfer { done, total })
    })?;
    let from = match origin {
        crate::fetch::Origin::Store => "the store".to_string(),
        crate::fetch::Origin::Distdir(p) => p.display().to_string(),
        crate::fetch::Origin::Url(u) | crate::fetch::Origin::Swift(u) => u,
    };
    on_event(&Event::Output {
        line: format!("{name}: verified, from {from}"),
    });
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(Built {
        steps: vec![],
        warnings: vec![],
        duration: started.elapsed(),
        tree: crate::store::TreeSummary {
            digest: artifact.sha256.to_ascii_lowercase(),
            entries: 1,
            bytes,
        },
    })
}

/// The spec of a `base`, `layer` or `disk` action.
pub fn spec_for(
    ctx: &BuildContext,
    action: &Action,
    work: PathBuf,
) -> Result<ActionSpec, BuildError> {
    let (Some(image_key), Some(arch)) = (&action.image, action.arch) else {
        return Err(unsupported(action, "not an image action"));
    };
    let s = SpecFor {
        ctx,
        action,
        image: &ctx.model.images[image_key],
        arch,
        resolved: &ctx.graph.resolved[&(image_key.clone(), arch)],
    };
    match action.kind {
        Kind::Base => s.base(work),
        Kind::Layer => s.layer(work),
        Kind::Disk => s.disk(work),
        _ => Err(unsupported(action, "not an action that runs in a sandbox")),
    }
}

/// What every spec of one image action is made from.
struct SpecFor<'c, 'a> {
    ctx: &'c BuildContext<'a>,
    action: &'c Action,
    image: &'c crate::manifest::Image,
    arch: crate::manifest::Arch,
    resolved: &'c crate::element::Resolved,
}

impl SpecFor<'_, '_> {
    fn dir_of(&self, name: &str) -> Result<&ElementDir, BuildError> {
        self.ctx.resolver.path.get(name).ok_or_else(|| {
            BuildError::internal(&self.action.id, format!("element `{name}` vanished"))
        })
    }

    fn pkg_maps(
        &self,
        names: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, BuildError> {
        let mut maps = BTreeMap::new();
        for n in names {
            let el = self.dir_of(n)?;
            let map = packages::pkg_map(el, env).map_err(|source| BuildError::Element {
                id: self.action.id.to_string(),
                source,
            })?;
            if !map.is_empty() {
                maps.insert(n.clone(), map);
            }
        }
        Ok(maps)
    }

    /// The store's record of the layer this action stacks on (its first dependency).
    fn dep_layer(&self, what: &str) -> Result<LayerMeta, BuildError> {
        let action = self.action;
        let dep_id = action.deps.first().ok_or_else(|| {
            BuildError::internal(&action.id, format!("a {what} needs a layer under it"))
        })?;
        let dep = self
            .ctx
            .graph
            .get(dep_id)
            .ok_or_else(|| unsupported(action, "the action under it is missing"))?;
        self.ctx.store.layer_meta(&dep.key).ok_or_else(|| {
            BuildError::internal(
                &action.id,
                format!("the layer of {dep_id} is not in the store"),
            )
        })
    }

    fn element_srcs(
        &self,
        names: &[String],
        own: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<ElementSrc>, BuildError> {
        names
            .iter()
            .map(|n| {
                Ok(ElementSrc {
                    name: n.clone(),
                    dir: self.dir_of(n)?.dir.clone(),
                    own: own(n),
                })
            })
            .collect()
    }

    /// The spec's fields every kind fills the same way; the kind's own come after.
    fn spec(
        &self,
        kind: SpecKind,
        work: PathBuf,
        env: BTreeMap<String, String>,
        elements: Vec<ElementSrc>,
    ) -> ActionSpec {
        let (ctx, arch) = (self.ctx, self.arch);
        let distro = self
            .resolved
            .view
            .env
            .get("DISTRO_NAME")
            .cloned()
            .unwrap_or_default();
        let package_cache = distro_cache(&distro).map(|target| CacheMount {
            host: ctx.store.path(&crate::store::Layout::package_downloads(
                &distro,
                &arch.to_string(),
            )),
            target: target.to_string(),
        });
        ActionSpec {
            id: self.action.id.to_string(),
            key: self.action.key.clone(),
            kind,
            arch: arch.as_str().into(),
            work,
            lowers: vec![],
            overlay: ctx.overlay,
            env,
            elements,
            env_files: env_file_names(&self.resolved.view),
            phases: vec![],
            pkg_maps: BTreeMap::new(),
            downloads: ctx.store.path(crate::store::Layout::DOWNLOADS),
            package_cache,
            log: ctx.store.log_path(&self.action.key),
            stream_output: ctx.stream_output,
            disk: None,
            artifacts: BTreeMap::new(),
            redact: vec![],
            strict: ctx.strict,
            no_host_tools: !native::allowed_by_env(),
        }
    }

    fn base(&self, work: PathBuf) -> Result<ActionSpec, BuildError> {
        let base = self
            .resolved
            .base
            .as_ref()
            .ok_or_else(|| unsupported(self.action, "a child image has no base"))?;
        let mut env = engine_env(self.arch, None, &base.elements);
        env.extend(self.image.env.clone());
        let elements = self.element_srcs(&base.elements, &|_| true)?;
        let artifacts = self.artifacts(&self.image.base_artifacts)?;
        let steps = base
            .view
            .phases
            .get("root.d")
            .map(|s| {
                s.iter()
                    .map(|s| Step::Script {
                        element: s.element.clone(),
                        name: s.name.clone(),
                        dir: s.dir.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ActionSpec {
            overlay: false,
            env_files: env_file_names(&base.view),
            phases: vec![PhaseSpec {
                phase: "root.d".into(),
                place: Place::Outside,
                steps,
            }],
            pkg_maps: self.pkg_maps(&base.elements, &base.view.env)?,
            artifacts,
            ..self.spec(SpecKind::Base, work, env, elements)
        })
    }

    fn layer(&self, work: PathBuf) -> Result<ActionSpec, BuildError> {
        let (image, arch, resolved) = (self.image, self.arch, self.resolved);
        let lowers = self.dep_layer("layer")?.stack(self.ctx.store);
        // The same elements the layer's key digests (computed once, in the graph).
        let own: Vec<String> = self
            .ctx
            .graph
            .layer_elements(&image.key, arch)
            .ok_or_else(|| BuildError::internal(&self.action.id, "the layer has no element set"))?
            .to_vec();
        let own_dirs = own
            .iter()
            .map(|n| self.dir_of(n))
            .collect::<Result<Vec<_>, _>>()?;
        let phases = self.layer_phases(&own, &own_dirs)?;
        let mut env = engine_env(arch, Some(&image.published_name(arch)), &resolved.elements);
        env.extend(image.env.clone());
        let epoch = repro::source_date_epoch(&env, &lowers);
        env.insert(repro::ENV.into(), epoch.to_string());
        let elements = self.element_srcs(&resolved.elements, &|n| own.iter().any(|o| o == n))?;
        let mut artifacts = self.artifacts(&image.artifacts)?;
        let (own_secrets, redact) = self.secrets(&work, true)?;
        artifacts.extend(own_secrets);
        Ok(ActionSpec {
            lowers,
            phases,
            pkg_maps: self.pkg_maps(&resolved.elements, &resolved.view.env)?,
            artifacts,
            redact,
            ..self.spec(SpecKind::Layer, work, env, elements)
        })
    }

    /// The layer's phases: its own elements' scripts, and the steps ccb runs for DIB's
    /// engine elements (install-bin, init scripts, static files, package installs).
    fn layer_phases(
        &self,
        own: &[String],
        own_dirs: &[&ElementDir],
    ) -> Result<Vec<PhaseSpec>, BuildError> {
        let resolved = self.resolved;
        let own_packages = packages::evaluate(own_dirs, &resolved.view.env).map_err(|source| {
            BuildError::Element {
                id: self.action.id.to_string(),
                source,
            }
        })?;
        let has = |e: &str| resolved.elements.iter().any(|x| x == e);
        let mut phases = Vec::new();
        for (phase, place) in LAYER_PHASES {
            let mut steps: Vec<Step> = resolved
                .view
                .phases
                .get(phase)
                .into_iter()
                .flatten()
                .filter(|s| own.contains(&s.element))
                .map(|s| Step::Script {
                    element: s.element.clone(),
                    name: s.name.clone(),
                    dir: s.dir.clone(),
                })
                .collect();
            if phase == "pre-install.d" && has("install-bin") {
                steps.push(Step::InstallBin {
                    name: "01-install-bin".into(),
                });
            }
            if phase == "install.d"
                && has("dib-init-system")
                && let Some(init_system) = resolved.view.env.get("DIB_INIT_SYSTEM")
                && own_dirs
                    .iter()
                    .any(|d| d.dir.join("init-scripts").join(init_system).is_dir())
            {
                steps.push(Step::InitScripts {
                    name: "20-install-init-scripts".into(),
                    init_system: init_system.clone(),
                });
            }
            if phase == "install.d" && has("install-static") {
                steps.push(Step::InstallStatic {
                    name: "10-install-static-files".into(),
                });
            }
            if has("package-installs")
                && let Some((_, inst, uninst)) = PACKAGE_STEPS.iter().find(|(p, _, _)| *p == phase)
                && let Some(lists) = own_packages.get(phase)
            {
                if !lists.install.is_empty() {
                    steps.push(Step::Packages {
                        name: inst.to_string(),
                        install: lists.install.clone(),
                        uninstall: vec![],
                    });
                }
                if !lists.uninstall.is_empty() {
                    steps.push(Step::Packages {
                        name: uninst.to_string(),
                        install: vec![],
                        uninstall: lists.uninstall.clone(),
                    });
                }
            }
            steps.sort_by(|a, b| run_parts_cmp(a.name(), b.name()));
            if !steps.is_empty() {
                phases.push(PhaseSpec {
                    phase: phase.into(),
                    place,
                    steps,
                });
            }
        }
        Ok(phases)
    }

    /// Artifacts of `vars` (variable → artifact, this arch's file of one declared per arch),
    /// verified in the store, by variable.
    fn artifacts(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, PathBuf>, BuildError> {
        let (ctx, action) = (self.ctx, self.action);
        let mut artifacts = BTreeMap::new();
        let mut stat_cache = crate::fetch::hash::StatCache::load(ctx.store);
        for (var, name) in vars {
            let art_key = &ctx.model.artifact_key(name, self.arch);
            let art = ctx.model.artifacts.get(art_key).ok_or_else(|| {
                BuildError::internal(&action.id, format!("artifact `{art_key}` is not declared"))
            })?;
            if !crate::fetch::is_fetched(ctx.store, &art.sha256) {
                return Err(BuildError::internal(
                    &action.id,
                    format!("artifact `{art_key}` is not in the store (its fetch did not run)"),
                ));
            }
            let path =
                crate::fetch::verified_path(ctx.store, &mut stat_cache, art_key, &art.sha256);
            if path.is_err() {
                // What was verified before the damaged one stays verified.
                stat_cache.save(ctx.store);
            }
            artifacts.insert(var.clone(), path?);
        }
        stat_cache.save(ctx.store);
        Ok(artifacts)
    }

    /// The image's secrets, read now into private copies in this action's working directory
    /// (gone with it). Its own are exposed to the scripts as artifacts are (a parent's are
    /// already in its layer); all of them are returned as the files whose bytes the sandbox
    /// removes from the action's log, so a script that prints one logs `[redacted]`. A
    /// parent's secret this host cannot read is only not redacted: the layer holding it is
    /// built.
    /// The disk action reads none (`expose` false): its secrets are only redacted.
    fn secrets(&self, work: &std::path::Path, expose: bool) -> Result<SecretCopies, BuildError> {
        let (ctx, action, image) = (self.ctx, self.action, self.image);
        let mut exposed = BTreeMap::new();
        let mut redact = Vec::new();
        let parent = image.from.as_ref().and_then(|p| ctx.model.images.get(p));
        for (var, src) in &image.secrets {
            let own = expose && parent.is_none_or(|p| p.secrets.get(var) != Some(src));
            let bytes = match src.read(&ctx.model.root) {
                Ok(b) => b,
                Err(source) if own => {
                    return Err(BuildError::Secret {
                        id: action.id.to_string(),
                        var: var.clone(),
                        from: src.describe(),
                        source,
                    });
                }
                Err(_) => continue,
            };
            let path = private_copy(work, var, &bytes).map_err(BuildError::io(
                &action.id,
                format!("secret `{var}`: cannot write its private copy"),
            ))?;
            if own {
                exposed.insert(var.clone(), path.clone());
            }
            redact.push(path);
        }
        Ok((exposed, redact))
    }

    fn disk(&self, work: PathBuf) -> Result<ActionSpec, BuildError> {
        let (ctx, action, image, arch, resolved) =
            (self.ctx, self.action, self.image, self.arch, self.resolved);
        let meta = self.dep_layer("disk")?;
        let env_view = &resolved.view.env;
        let disk_layout = self.disk_layout()?;
        let name = image.published_name(arch);
        let compress = env_view
            .get("COMPRESS_IMAGE")
            .is_none_or(|v| !matches!(v.as_str(), "" | "0" | "false" | "False"));
        let mut env = engine_env(arch, Some(&name), &resolved.elements);
        env.extend(image.env.clone());
        let lowers = meta.stack(ctx.store);
        let epoch = repro::source_date_epoch(&env, &lowers);
        env.insert(repro::ENV.into(), epoch.to_string());
        let phases = [
            ("block-device.d", Place::Outside),
            ("pre-finalise.d", Place::Outside),
            ("finalise.d", Place::Inside),
            ("cleanup.d", Place::Outside),
        ]
        .into_iter()
        .filter_map(|(phase, place)| {
            let steps: Vec<Step> = resolved
                .view
                .phases
                .get(phase)?
                .iter()
                .map(|s| Step::Script {
                    element: s.element.clone(),
                    name: s.name.clone(),
                    dir: s.dir.clone(),
                })
                .collect();
            Some(PhaseSpec {
                phase: phase.into(),
                place,
                steps,
            })
        })
        .collect();
        let elements = self.element_srcs(&resolved.elements, &|_| false)?;
        let (_, redact) = self.secrets(&work, false)?;
        Ok(ActionSpec {
            lowers,
            phases,
            pkg_maps: self.pkg_maps(&resolved.elements, env_view)?,
            redact,
            disk: Some(spec::DiskSpec {
                provenance: provenance(ctx.model, image, &name, epoch),
                name,
                layout: disk_layout,
                size: image.size.as_deref().and_then(crate::units::parse_size),
                formats: image
                    .formats
                    .iter()
                    .map(|f| f.as_str().to_string())
                    .collect(),
                qcow2_compression: compress.then(|| {
                    env_view
                        .get("QCOW2_COMPRESSION_TYPE")
                        .filter(|v| !v.is_empty())
                        .cloned()
                        .unwrap_or_else(|| "zlib".into())
                }),
                manifest_dir: env_view
                    .get("DIB_MANIFEST_IMAGE_DIR")
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "/etc/dib-manifests".into()),
                seed: action.key.clone(),
                sbom: self.sbom_inputs(),
            }),
            ..self.spec(SpecKind::Disk, work, env, elements)
        })
    }

    /// What the image is made from, as its SBOM lists it: the actions under the disk, the
    /// elements and their locked sources, the artifacts, and a pinned base image.
    fn sbom_inputs(&self) -> crate::sbom::Inputs {
        use crate::sbom::{ArtifactInput, BaseImage, ElementInput, Inputs, SourceInput};
        let (ctx, action, image, resolved) = (self.ctx, self.action, self.image, self.resolved);
        let mut chain = Vec::new();
        let mut under = action.deps.first().cloned();
        while let Some(a) = under.as_deref().and_then(|id| ctx.graph.get(id)) {
            chain.push((a.id.to_string(), a.key.clone()));
            under = (a.kind != Kind::Base)
                .then(|| a.deps.first().cloned())
                .flatten();
        }
        chain.reverse();
        let source_of =
            |n: &str| -> Option<String> { ctx.resolver.path.get(n).and_then(|d| d.source.clone()) };
        let elements: Vec<ElementInput> = resolved
            .elements
            .iter()
            .filter_map(|n| {
                Some(ElementInput {
                    name: n.clone(),
                    digest: resolved.digests.get(n)?.clone(),
                    source: source_of(n),
                })
            })
            .collect();
        let used: std::collections::BTreeSet<String> =
            elements.iter().filter_map(|e| e.source.clone()).collect();
        let sources = used
            .iter()
            .filter_map(|name| {
                let l = ctx.model.pins.sources.get(name)?;
                Some(SourceInput {
                    name: name.clone(),
                    url: crate::redact::url(&l.url),
                    git_ref: l.git_ref.clone(),
                    path: l.path.clone(),
                    commit: l.commit.clone(),
                    tree: l.tree.clone(),
                })
            })
            .collect();
        let artifacts = image
            .artifacts
            .iter()
            .filter_map(|(var, name)| {
                let key = ctx.model.artifact_key(name, self.arch);
                let art = ctx.model.artifacts.get(&key)?;
                Some(ArtifactInput {
                    name: key.clone(),
                    variable: var.clone(),
                    sha256: art.sha256.to_ascii_lowercase(),
                    // A licensed file's site URL stays out of the SBOM: its name and digest say
                    // what it is.
                    url: art
                        .url
                        .as_deref()
                        .filter(|_| !art.secret)
                        .map(crate::redact::url),
                })
            })
            .collect();
        // The base images: the `base_artifacts` of the chain's root image.
        let mut root = image;
        while let Some(parent) = root.from.as_ref().and_then(|p| ctx.model.images.get(p)) {
            root = parent;
        }
        let mut base_images: Vec<BaseImage> = root
            .base_artifacts
            .values()
            .filter_map(|name| {
                let key = ctx.model.artifact_key(name, self.arch);
                let art = ctx.model.artifacts.get(&key)?;
                Some(BaseImage {
                    name: key,
                    sha256: art.sha256.to_ascii_lowercase(),
                    url: art.url.as_deref().map(crate::redact::url),
                })
            })
            .collect();
        // A base image pinned in the environment (`DIB_UBUNTU_ROOTFS_SHA256`), and where it
        // comes from (`…_URL`, or DIB_CLOUD_IMAGES and `…_FILE`).
        let env = &resolved.view.env;
        let pinned = env
            .iter()
            .find(|(k, v)| k.ends_with("_ROOTFS_SHA256") && !v.is_empty())
            .map(|(k, v)| {
                let stem = k.trim_end_matches("_SHA256");
                let url = env
                    .get(&format!("{stem}_URL"))
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .or_else(|| {
                        let base = env.get("DIB_CLOUD_IMAGES").filter(|b| !b.is_empty())?;
                        let file = env.get(&format!("{stem}_FILE")).filter(|f| !f.is_empty())?;
                        Some(format!("{}/{file}", base.trim_end_matches('/')))
                    });
                BaseImage {
                    name: k.clone(),
                    sha256: v.to_ascii_lowercase(),
                    url: url.as_deref().map(crate::redact::url),
                }
            });
        base_images.extend(pinned);
        Inputs {
            engine: crate::ENGINE_VERSION.to_string(),
            disk_key: action.key.clone(),
            chain,
            elements,
            artifacts,
            sources,
            base_images,
        }
    }

    /// The disk's layout: the block-device element's YAML, or DIB's default image.
    fn disk_layout(&self) -> Result<layout::Layout, BuildError> {
        let action = self.action;
        let env_view = &self.resolved.view.env;
        // No block-device element: DIB's default image, one root filesystem.
        let (bd_name, yaml) = match self.resolved.view.block_device.clone() {
            Some((bd_element, bd_file)) => {
                let bd_path = self.dir_of(&bd_element)?.dir.join(&bd_file);
                let yaml = std::fs::read_to_string(&bd_path).map_err(BuildError::io(
                    &action.id,
                    format!("read {}", bd_path.display()),
                ))?;
                (format!("{bd_element}/{bd_file}"), yaml)
            }
            None => (
                "the default layout (no block-device element)".to_string(),
                layout::DEFAULT_LAYOUT.to_string(),
            ),
        };
        let defaults =
            layout::RootDefaults::from_env(env_view).map_err(|problem| BuildError::Input {
                id: action.id.to_string(),
                problem,
            })?;
        layout::parse(&bd_name, &yaml, &defaults).map_err(|source| BuildError::Layout {
            id: action.id.to_string(),
            source,
        })
    }
}

/// The environment.d files of a view, in sourcing order.
fn env_file_names(view: &crate::element::ElementView) -> Vec<String> {
    view.environment.iter().map(|s| s.name.clone()).collect()
}

/// The provenance record of chameleon-images.md: what was built, from which commit, when
/// (the source date, so that a rebuild of the same key writes the same record). All of it
/// but the source date is in the disk's key (`provenance`), which covers the date's inputs.
pub fn provenance(
    model: &Model,
    image: &crate::manifest::Image,
    name: &str,
    source_date: i64,
) -> String {
    // The sites parse it with Python's `%Y-%m-%d %H:%M:%S.%f` (see `contract`).
    let timestamp = crate::contract::build_timestamp(source_date.max(0) as u64, 0);
    let origin = model.origin();
    let p = &image.provenance;
    let record = serde_json::json!({
        "build-distro": p.distro.clone().unwrap_or_default(),
        "build-release": p.release.clone().unwrap_or_default(),
        "build-variant": p.variant.clone().unwrap_or_default(),
        "build-repo": origin.repo,
        "build-repo-commit": origin.commit,
        "build-tag": format!("{name}-{timestamp}"),
        "build-timestamp": timestamp,
        "build-ipa": "false",
        "chameleon-supported": "true",
    });
    serde_json::to_string_pretty(&record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_emulated_arm64_programs_get_a_qemu_cpu_model() {
        let host = std::env::consts::ARCH;
        let native = if host == "aarch64" { "arm64" } else { "amd64" };
        assert_eq!(super::emulated_cpu(native), None);
        assert_eq!(super::emulated_cpu("riscv64"), None);
        let arm64 = crate::manifest::Arch::Arm64;
        let expected = matches!(
            super::arch_support(arm64),
            super::ArchSupport::Emulated { .. }
        )
        .then_some("cortex-a72");
        assert_eq!(super::emulated_cpu("arm64"), expected);
    }

    use super::event::{Blame, Event};
    use super::runner::RunError;
    use super::*;

    /// What the parent rebuilds from the sandbox's JSON line for a failure inside it.
    fn across_the_sandbox(e: RunError) -> BuildError {
        let line = serde_json::to_string(&Event::Error(e.failure())).unwrap();
        let Event::Error(failure) = serde_json::from_str(&line).unwrap() else {
            panic!("not an error event: {line}");
        };
        BuildError::Sandbox {
            id: "layer:tiny:amd64".into(),
            source: failure.into(),
            log: None,
        }
    }

    #[test]
    fn a_full_disk_inside_the_sandbox_reaches_the_parent_as_the_hosts_problem() {
        let e = across_the_sandbox(RunError::Io {
            what: "copy the layer".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(e.blame(), Blame::Host);
        // The OS error is in the chain again, as a full disk anywhere else would be.
        let os = std::error::Error::source(&e)
            .and_then(|s| s.source())
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("an io::Error in the chain");
        assert_eq!(os.kind(), std::io::ErrorKind::StorageFull);
        let m = e.message();
        assert!(m.starts_with("layer:tiny:amd64: copy the layer: "), "{m}");
        assert_eq!(m.matches("No space left on device").count(), 1, "{m}");
    }

    #[test]
    fn a_missing_tool_a_bad_layout_and_a_bug_inside_the_sandbox_keep_who_must_act() {
        let missing = crate::process::Process::new("ccb-no-such-mkfs")
            .output()
            .unwrap_err();
        let e = across_the_sandbox(RunError::Program {
            what: "mkfs.xfs (xfsprogs)".into(),
            source: missing,
        });
        assert_eq!(e.blame(), Blame::MissingTool);
        assert!(e.message().contains("ccb-no-such-mkfs"), "{}", e.message());
        let e = across_the_sandbox(RunError::Image {
            problem: "the layout has no root filesystem".into(),
        });
        assert_eq!(e.blame(), Blame::Input);
        let e = across_the_sandbox(RunError::Internal("a disk action without a disk spec"));
        assert_eq!(e.blame(), Blame::Bug);
        // A failed mount is a system call's errno, not an I/O error's.
        let e = across_the_sandbox(RunError::Sys {
            what: "mount proc".into(),
            source: nix::Error::EPERM,
        });
        assert_eq!(e.blame(), Blame::Host);
    }
}

/// A secret's private copy in an action's working directory: `secrets/VAR`, the directory
/// 0700 and the file 0400.
fn private_copy(work: &std::path::Path, var: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = work.join("secrets");
    let path = dir.join(var);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(&path, bytes)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
    Ok(path)
}

/// The secrets exposed to a layer's scripts (variable → private copy), and every private copy
/// (the bytes to redact from its log).
type SecretCopies = (BTreeMap<String, PathBuf>, Vec<PathBuf>);

/// Runs a `base` or `layer` action in a sandbox and commits its tree to the store. The
/// caller holds the key's lock.
pub fn run_action(
    ctx: &BuildContext,
    action: &Action,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Built, BuildError> {
    let started = Instant::now();
    if action.kind == Kind::Fetch {
        return run_fetch(ctx, action, on_event);
    }
    let store = ctx.store;
    store.remove_stale_work(&action.key)?;
    let work = store.work_dir(&action.key)?;
    let spec = spec_for(ctx, action, work.clone())?;
    let log = spec.log.clone();
    crate::fsutil::write_atomic(
        &log,
        format!("ccb: {} ({})\n", action.id, action.key).as_bytes(),
    )
    .map_err(StoreError::from)?;
    let spec_path = work.join("spec.json");
    let bytes = serde_json::to_vec_pretty(&spec)
        .map_err(|e| BuildError::internal(&action.id, format!("cannot encode the spec: {e}")))?;
    crate::fsutil::write_atomic(&spec_path, &bytes).map_err(StoreError::from)?;
    let checkpoints = checkpoint::prepare(ctx, action, &spec)?;

    let mut result = supervise(ctx, action, &spec_path, cancel, on_event);
    // The checkpoints the sandbox closed are kept even when a later step failed.
    let mut chain = Vec::new();
    if let Some(prepared) = &checkpoints {
        match checkpoint::collect(ctx, action, &spec, prepared) {
            Ok(c) => chain = c,
            Err(e) => result = result.and(Err(e)),
        }
        if result.is_ok() {
            result = checkpoint::merge_into_upper(store, &spec, &chain)
                .map_err(|source| BuildError::Tree {
                    id: action.id.to_string(),
                    source,
                })
                .and(result);
        }
    }
    if result.is_ok() {
        crate::fault::point(&format!("{}.commit", action.kind.as_str()));
    }
    let outcome = match result {
        Ok((steps, warnings)) if spec.kind == SpecKind::Disk => commit_outputs(ctx, action, &spec)
            .map(|tree| Built {
                steps,
                warnings,
                duration: started.elapsed(),
                tree,
            }),
        Ok((steps, warnings)) => commit(ctx, action, &spec)
            .and_then(|tree| {
                checkpoint::record_chain(store, &action.key, &chain)?;
                Ok(tree)
            })
            .map(|tree| Built {
                steps,
                warnings,
                duration: started.elapsed(),
                tree,
            }),
        Err(e) => Err(e),
    };
    match &outcome {
        Err(_) if ctx.keep_failed => {}
        _ => crate::store::remove_tree(&work)?,
    }
    outcome
}

/// Runs the sandbox, passing its events on, and turns its end into a result.
fn supervise(
    ctx: &BuildContext,
    action: &Action,
    spec_path: &std::path::Path,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(Vec<StepRecord>, Vec<dib::MissingCommand>), BuildError> {
    let log = ctx.store.log_path(&action.key);
    let mut child =
        sandbox::spawn(spec_path, &log).map_err(BuildError::io(&action.id, "start the sandbox"))?;
    crate::fault::point(&format!("{}.sandbox", action.kind.as_str()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<Event>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(ev) = serde_json::from_str::<Event>(&line)
                && tx.send(ev).is_err()
            {
                break;
            }
        }
    });
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    let mut failed: Option<Event> = None;
    let mut engine_error: Option<event::EngineFailure> = None;
    let mut cancelled = false;
    let mut watch = fullwatch::FullWatch::new(ctx.store.root());
    let mut stuck = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => {
                match &ev {
                    Event::Step { name, .. } => {
                        crate::fault::point(&format!("{}.step:{name}", action.kind.as_str()));
                    }
                    Event::StepDone(r) => steps.push(r.clone()),
                    Event::MissingCommand(m) => warnings.push(m.clone()),
                    Event::Failed { .. } => failed = Some(ev.clone()),
                    Event::Error(f) => engine_error = Some(f.clone()),
                    _ => {}
                }
                on_event(&ev);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cancel.load(Ordering::SeqCst) {
            crate::process::stop(&mut child, GRACE);
            cancelled = true;
            break;
        }
        if watch.stuck() {
            crate::process::stop(&mut child, GRACE);
            stuck = true;
            break;
        }
    }
    let _ = reader.join();
    let status = child
        .wait()
        .map_err(BuildError::io(&action.id, "wait for the sandbox"))?;
    if cancelled {
        return Err(BuildError::Cancelled {
            id: action.id.to_string(),
        });
    }
    if stuck {
        return Err(BuildError::Io {
            id: action.id.to_string(),
            what: format!(
                "the store's filesystem ({}) stayed full for {} s while the action ran, and \
                 it was stopped (log: {})",
                ctx.store.root().display(),
                watch.grace.as_secs(),
                log.display()
            ),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    match status.code() {
        Some(sandbox::EXIT_OK) => Ok((steps, warnings)),
        Some(sandbox::EXIT_STEP_FAILED) => match failed {
            Some(Event::Failed {
                phase,
                element,
                name,
                status,
                tail,
            }) => Err(BuildError::StepFailed(Box::new(StepFailure {
                id: action.id.to_string(),
                element,
                phase,
                script: name,
                status,
                tail,
                log,
            }))),
            _ => Err(BuildError::internal(
                &action.id,
                format!(
                    "a step failed without saying which (log: {})",
                    log.display()
                ),
            )),
        },
        Some(sandbox::EXIT_CANCELLED) => Err(BuildError::Cancelled {
            id: action.id.to_string(),
        }),
        other => match engine_error {
            Some(failure) => Err(BuildError::Sandbox {
                id: action.id.to_string(),
                source: failure.into(),
                log: Some(log),
            }),
            // The sandbox died without a word: killed from outside, or a crash.
            None => Err(BuildError::internal(
                &action.id,
                match other {
                    Some(c) => format!(
                        "the sandbox exited with status {c} (log: {})",
                        log.display()
                    ),
                    None => format!("the sandbox was killed (log: {})", log.display()),
                },
            )),
        },
    }
}

/// Commits a disk action's files; their summary stands in for a tree's.
fn commit_outputs(
    ctx: &BuildContext,
    action: &Action,
    spec: &ActionSpec,
) -> Result<crate::store::TreeSummary, BuildError> {
    let out = spec.work.join("out");
    let mut files = Vec::new();
    for e in walkdir::WalkDir::new(&out).min_depth(1) {
        let e = e.map_err(|e| BuildError::io(&action.id, "read outputs")(e.into()))?;
        if e.file_type().is_dir() {
            continue;
        }
        if let Ok(m) = e.path().metadata() {
            let rel = e.path().strip_prefix(&out).unwrap_or(e.path());
            files.push((rel.display().to_string(), m.len()));
        }
    }
    files.sort();
    let summary = crate::store::summarize(&out).map_err(|source| BuildError::Tree {
        id: action.id.to_string(),
        source: source.into(),
    })?;
    let meta = crate::store::OutputsMeta {
        key: action.key.clone(),
        id: action.id.to_string(),
        name: spec
            .disk
            .as_ref()
            .map(|d| d.name.clone())
            .unwrap_or_default(),
        files,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        secrets: action
            .image
            .as_deref()
            .and_then(|k| ctx.model.images.get(k))
            .map(|i| i.secret_names().into_iter().map(str::to_string).collect())
            .unwrap_or_default(),
    };
    ctx.store.commit_outputs(&out, &meta)?;
    Ok(summary)
}

/// Puts a disk action's outputs in `dir` (hard links when the store is on the same
/// filesystem, else copies that keep holes), each file replaced in one rename, and updates the
/// directory's SHA256SUMS for them.
pub fn materialize(
    store: &Store,
    key: &str,
    dir: &std::path::Path,
) -> Result<Vec<PathBuf>, BuildError> {
    const ID: &str = "materialize";
    let meta = store
        .outputs_meta(key)
        .ok_or_else(|| BuildError::internal(ID, format!("no outputs for key {key}")))?;
    let src_dir = store.outputs_dir(key);
    std::fs::create_dir_all(dir)
        .map_err(BuildError::io(ID, format!("create {}", dir.display())))?;
    let mut made = Vec::new();
    let mut sums_here = String::new();
    for (rel, _) in &meta.files {
        let src = src_dir.join(rel);
        if rel == "SHA256SUMS" {
            sums_here = std::fs::read_to_string(&src).unwrap_or_default();
            continue;
        }
        let dst = dir.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(BuildError::io(ID, format!("create {}", parent.display())))?;
        }
        let tmp = dst.with_file_name(format!(
            ".{}.ccb-tmp",
            dst.file_name().and_then(|n| n.to_str()).unwrap_or("out")
        ));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            crate::process::Process::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&src)
                .arg(&tmp)
                .output()
                .map_err(|source| BuildError::Program {
                    id: ID.into(),
                    what: format!("copy {}", src.display()),
                    source,
                })?;
        }
        crate::fault::point("materialize.file");
        std::fs::rename(&tmp, &dst)
            .map_err(BuildError::io(ID, format!("rename into {}", dst.display())))?;
        made.push(dst);
    }
    // One SHA256SUMS for the directory: this image's lines replace its old ones.
    let sums_path = dir.join("SHA256SUMS");
    let mine: Vec<&str> = sums_here.lines().collect();
    let names: Vec<&str> = mine
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let mut lines: Vec<String> = std::fs::read_to_string(&sums_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            !l.split_whitespace()
                .nth(1)
                .is_some_and(|n| names.contains(&n))
        })
        .map(str::to_string)
        .collect();
    lines.extend(mine.iter().map(|l| l.to_string()));
    lines.sort_by(|a, b| {
        a.split_whitespace()
            .nth(1)
            .cmp(&b.split_whitespace().nth(1))
    });
    let mut text = lines.join("\n");
    text.push('\n');
    crate::fsutil::write_atomic(&sums_path, text.as_bytes()).map_err(StoreError::from)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&sums_path, std::fs::Permissions::from_mode(0o644));
    }
    made.push(sums_path);
    Ok(made)
}

fn commit(
    ctx: &BuildContext,
    action: &Action,
    spec: &ActionSpec,
) -> Result<crate::store::TreeSummary, BuildError> {
    let (tree_dir, mode, lowers) = match (spec.kind, spec.overlay) {
        (SpecKind::Layer, true) => {
            let parent = ctx
                .graph
                .get(&action.deps[0])
                .and_then(|p| ctx.store.layer_meta(&p.key))
                .ok_or_else(|| BuildError::internal(&action.id, "the parent layer vanished"))?;
            let mut lowers = vec![parent.key.clone()];
            if parent.mode == LayerMode::Diff {
                lowers.extend(parent.lowers.iter().cloned());
            }
            (spec.work.join("upper"), LayerMode::Diff, lowers)
        }
        _ => (spec.work.join("tree"), LayerMode::Full, vec![]),
    };
    // Times the scripts wrote go to the source date: the one the scripts saw, or for a base,
    // the one its own packages give.
    let epoch = match spec.env.get(repro::ENV) {
        Some(v) if spec.kind != SpecKind::Base => v.parse().ok(),
        _ => None,
    }
    .unwrap_or_else(|| repro::source_date_epoch(&spec.env, std::slice::from_ref(&tree_dir)));
    repro::scrub_layer(&tree_dir, epoch).map_err(BuildError::io(
        &action.id,
        format!(
            "remove what each machine makes itself from {}",
            tree_dir.display()
        ),
    ))?;
    repro::clamp_times(&tree_dir, epoch).map_err(BuildError::io(
        &action.id,
        format!(
            "clamp the times of {} to the source date",
            tree_dir.display()
        ),
    ))?;
    let summary = crate::store::summarize(&tree_dir).map_err(|source| BuildError::Tree {
        id: action.id.to_string(),
        source: source.into(),
    })?;
    let meta = LayerMeta {
        key: action.key.clone(),
        id: action.id.to_string(),
        mode,
        lowers,
        tree: summary.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    ctx.store.commit_layer(&tree_dir, &meta)?;
    Ok(summary)
}

/// The variable qemu-user reads its CPU model from, in the environment of every program the
/// binfmt handler starts (the build's scripts pass it on to their children).
pub const QEMU_CPU: &str = "QEMU_CPU";

/// qemu-user's CPU model for the programs of an image of `arch` when they run emulated here
/// (nothing when they run natively). qemu-aarch64's default, `max`, emulates every optional
/// ARMv8/9 feature, and Debian's arm64 binaries are built with branch protection: each
/// function's pointer-authentication instructions then run QARMA in software. A Cortex-A72
/// has no PAC, SVE or MTE, so those instructions are the no-ops (HINT space) the ABI made them;
/// dpkg and the maintainer scripts ran 1.3-1.7x faster (benches/arm64.sh). ARMv8.0 is
/// Debian's arm64 baseline, so every package runs on it; `ccb test` boots the same model.
pub fn emulated_cpu(arch: &str) -> Option<&'static str> {
    let arch = crate::manifest::Arch::parse(arch)?;
    match (arch, arch_support(arch)) {
        (crate::manifest::Arch::Arm64, ArchSupport::Emulated { .. }) => Some("cortex-a72"),
        _ => None,
    }
}

/// How this host runs code of an architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchSupport {
    Native,
    /// Through qemu-user, registered with binfmt_misc under `handler`.
    Emulated {
        handler: String,
    },
    Missing {
        handler: String,
    },
}

/// Whether `arch` binaries run here: natively, through a qemu-user binfmt handler, or not.
pub fn arch_support(arch: crate::manifest::Arch) -> ArchSupport {
    use crate::manifest::Arch;
    let host = Arch::host();
    if host == Some(arch) {
        return ArchSupport::Native;
    }
    let handler = match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    }
    .to_string();
    let enabled = std::fs::read_to_string(format!("/proc/sys/fs/binfmt_misc/{handler}"))
        .is_ok_and(|s| s.lines().next() == Some("enabled"));
    if enabled {
        ArchSupport::Emulated { handler }
    } else {
        ArchSupport::Missing { handler }
    }
}
