//! The operations: one library function per user-level job (check, plan, build, test,
//! inspect, publish, …), each taking a typed request and returning a typed, serializable
//! report. The CLI parses, calls one operation and renders its report; operations never
//! call commands, and a command never calls another.
//!
//! A [`Session`] is what every project operation shares: the model with the lock applied, the
//! store and the element resolver, loaded once per command. [`Session::plan`] builds the
//! graph of a target set once; `ccb test`, `publish` and `inspect` reuse the graph and the
//! disks of the build report instead of loading everything again.

pub mod build;
pub mod cache;
pub mod check;
mod error;
pub mod files;
pub mod inspect;
pub mod lint;
pub mod publish;
pub mod query;
pub mod test;
pub mod update;
pub mod verify;
pub mod versions;

use std::path::Path;

pub use error::{CommandError, ErrorKind};

use crate::element::{self, Resolver};
use crate::graph::Graph;
use crate::label::{self, Target};
use crate::manifest::{self, Model};
use crate::store::Store;
use crate::ui::Shell;

/// Loads the project's model; with `locked`, `ccb.lock` is applied (a missing or stale lock is
/// an error for every command but `ccb update`).
pub fn load_model(
    root: &Path,
    store: &Store,
    locked: bool,
    shell: &Shell,
) -> Result<Model, CommandError> {
    let mut model = manifest::load(root, store)?;
    for w in &model.warnings {
        shell.warn(w);
    }
    if locked {
        let lock = crate::lock::load(&model.root)?;
        crate::lock::apply(&mut model, lock.as_ref())?;
    }
    Ok(model)
}

/// Applies `--env NAME[=VALUE]` settings to every image of the model: like Bazel's
/// `--action_env`, the values enter the keys.
pub fn apply_env(
    model: &mut Model,
    settings: &[String],
) -> Result<Vec<(String, String)>, CommandError> {
    let mut applied = Vec::new();
    for setting in settings {
        let (name, value) = match setting.split_once('=') {
            Some((n, v)) => (n, v.to_string()),
            None => {
                let v = std::env::var(setting).map_err(|_| {
                    CommandError::usage(format!(
                        "--env {setting}: `{setting}` is not set in ccb's environment (give NAME=VALUE)"
                    ))
                })?;
                (setting.as_str(), v)
            }
        };
        if let Some(problem) = crate::manifest::env_entry_problem(name, &value) {
            return Err(CommandError::usage(format!("--env {name}: {problem}")));
        }
        for image in model.images.values_mut() {
            image.env.insert(name.to_string(), value.clone());
        }
        applied.push((name.to_string(), value));
    }
    Ok(applied)
}

/// DIB's download variables of a distribution base (`--env DIB_CLOUD_IMAGES=...`) that the
/// images' `base_artifacts` make unused: the base is the artifact, fetched from its URL. Said
/// rather than silently ignored, with what does point the base elsewhere.
fn shadowed_env(model: &Model, applied: &[(String, String)]) -> Vec<String> {
    const SHADOWED: [(&str, &str); 2] = [
        ("DIB_CLOUD_IMAGES", "DIB_UBUNTU_ROOTFS"),
        ("DIB_CENTOS_ROOTFS_URL", "DIB_CENTOS_ROOTFS"),
    ];
    let mut out = Vec::new();
    for (set, artifact_var) in SHADOWED {
        if !applied.iter().any(|(n, _)| n == set) {
            continue;
        }
        let bases: std::collections::BTreeSet<&str> = model
            .images
            .values()
            .filter_map(|i| i.base_artifacts.get(artifact_var).map(String::as_str))
            .collect();
        if bases.is_empty() {
            continue;
        }
        let names: Vec<&str> = bases.into_iter().collect();
        out.push(format!(
            "--env {set} is not used by images whose base is an artifact ({}): their base comes \
             from the artifact's URL; point it at a mirror in manifests/artifacts.ncl (its `let`, \
             e.g. `ubuntu_cloud_images`) or put the file in CCB_DISTDIR",
            names.join(", ")
        ));
    }
    out
}

/// A wildcard (`//images:all`, `//...`, or no target at all) leaves out, as Bazel's does with a
/// target tagged `manual`, each image `why` gives a reason for, with a note naming it and the
/// reason. An image named explicitly stays (the command then says what stops it). Returns the
/// words to resolve: each wildcard replaced by the images it keeps.
pub(crate) fn wildcard_without(
    model: &Model,
    words: &[String],
    shell: &Shell,
    why: impl Fn(&manifest::Image) -> Option<String>,
) -> Vec<String> {
    let wildcard = words.is_empty() || words.iter().any(|w| label::is_wildcard(w));
    if !wildcard {
        return words.to_vec();
    }
    let named = label::named_images(model, words);
    let left_out: Vec<(&String, String)> = model
        .images
        .values()
        .filter(|i| !named.contains(&i.key))
        .filter_map(|i| why(i).map(|reason| (&i.key, reason)))
        .collect();
    let kept: Vec<String> = model
        .images
        .keys()
        .filter(|k| !left_out.iter().any(|(l, _)| l == k))
        .map(|k| format!("//images:{k}"))
        .collect();
    // With nothing left, no words would mean every image: the build then names what is missing.
    if left_out.is_empty() || (kept.is_empty() && named.is_empty()) {
        return words.to_vec();
    }
    for (key, reason) in &left_out {
        shell.status(&format!("{key}: left out of the wildcard ({reason})"));
    }
    words
        .iter()
        .filter(|w| !label::is_wildcard(w))
        .cloned()
        .chain(kept)
        .collect()
}

/// Why a wildcard leaves `image` out on this host: the secret inputs and secret artifacts it
/// lacks, each with where it is looked for (never its bytes); `None` when it has them all.
pub(crate) fn missing_secrets_note(
    model: &Model,
    store: &Store,
    image: &manifest::Image,
    distdirs: &[std::path::PathBuf],
) -> Option<String> {
    let mut missing: Vec<String> = image
        .secrets
        .iter()
        .filter(|(_, source)| !source.is_available(&model.root))
        .map(|(var, source)| format!("{var} ({})", source.describe()))
        .collect();
    for var in &image.secret_artifacts {
        // Artifacts are the image's own or an ancestor's (a child does not inherit them).
        let mut cur = Some(image);
        let name = std::iter::from_fn(|| {
            let img = cur?;
            cur = img.from.as_ref().and_then(|p| model.images.get(p));
            Some(img)
        })
        .find_map(|img| img.artifacts.get(var).or(img.base_artifacts.get(var)));
        let Some(name) = name else { continue };
        let unreachable = image.arch.iter().find_map(|arch| {
            let key = model.artifact_key(name, *arch);
            let art = model.artifacts.get(&key)?;
            (!crate::fetch::within_reach(store, distdirs, &key, art)).then(|| {
                format!(
                    "{var} (artifact `{key}`, {})",
                    art.url
                        .as_deref()
                        .map(crate::fetch::redact_url)
                        .unwrap_or_default()
                )
            })
        });
        missing.extend(unreachable);
    }
    (!missing.is_empty()).then(|| {
        format!(
            "its secret inputs are not on this host: {}; name it to build it once they are",
            missing.join(", ")
        )
    })
}

/// What a session is opened with, beyond the model and the store.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Extra element directories, searched first.
    pub element_path: Vec<String>,
    /// `--env` settings over the manifests' `env`.
    pub env: Vec<String>,
    /// Use only what is in the store.
    pub offline: bool,
    /// The command line's remote-cache flags.
    pub remote: crate::remote::Choice,
}

/// The model (lock and `--env` applied), the store and the element resolver of one command.
pub struct Session<'s> {
    pub model: Model,
    pub store: &'s Store,
    pub resolver: Resolver<'s>,
    pub offline: bool,
    pub remote: crate::remote::Choice,
    /// The `--env` settings as applied (a remote builder applies the same).
    pub env: Vec<(String, String)>,
}

/// A target set and its graph, built once.
pub struct Planned {
    pub targets: Vec<Target>,
    pub graph: Graph,
    /// The arches asked for by name (`--arch arm64`, `CC-Debian12-ARM64`): an arch the host
    /// cannot build is an error for these, and is left out (with a warning) for the others.
    pub named_arches: std::collections::BTreeSet<crate::manifest::Arch>,
}

impl<'s> Session<'s> {
    pub fn open(
        mut model: Model,
        store: &'s Store,
        opts: &SessionOptions,
        shell: &Shell,
    ) -> Result<Self, CommandError> {
        let env = apply_env(&mut model, &opts.env)?;
        for warning in shadowed_env(&model, &env) {
            shell.warn(&warning);
        }
        let resolver =
            element::project_resolver(&model, &opts.element_path, store, opts.offline, &mut |w| {
                shell.warn(w)
            })?;
        Ok(Self {
            model,
            store,
            resolver,
            offline: opts.offline,
            remote: opts.remote.clone(),
            env,
        })
    }

    /// The targets named (all images when none) on the architectures asked for (all when none).
    pub fn targets(
        &self,
        targets: &[String],
        arch: &[String],
    ) -> Result<Vec<Target>, CommandError> {
        let arches = label::parse_arches(arch)?;
        Ok(label::resolve(&self.model, targets, arches.as_ref())?)
    }

    /// The targets of `ccb build` and `ccb test`: a wildcard leaves out the images whose secret
    /// inputs this host does not have (a site's vGPU driver and license token), with a note,
    /// rather than downloading every base and then failing on them. Named, an image stays.
    pub fn buildable_here(&self, targets: &[String], shell: &Shell) -> Vec<String> {
        let distdirs = crate::fetch::distdirs_from_env();
        wildcard_without(&self.model, targets, shell, |image| {
            missing_secrets_note(&self.model, self.store, image, &distdirs)
        })
    }

    /// Pins the "latest" artifacts the targets use that ccb.lock has no digest for yet, saying
    /// so, as Cargo adds a new dependency to Cargo.lock; `locked` refuses instead (CI). Runs
    /// before [`Session::plan`]: the keys are made from the pins. An arch asked for by name
    /// that this host cannot build up to `until` is refused first, having pinned nothing.
    pub(crate) fn pin_new_artifacts(
        &mut self,
        targets: &[String],
        arch: &[String],
        locked: bool,
        until: build::Stage,
        shell: &Shell,
    ) -> Result<(), CommandError> {
        self.refuse_unbuildable_arches(targets, arch, until)?;
        let resolved = self.targets(targets, arch)?;
        let unpinned = crate::lock::unpinned_for(
            &self.model,
            resolved.iter().map(|t| (t.image.as_str(), t.arch)),
        );
        if unpinned.is_empty() {
            return Ok(());
        }
        let fetcher = crate::fetch::Fetcher {
            store: self.store,
            distdirs: crate::fetch::distdirs_from_env(),
            offline: self.offline,
            swift: None,
            mirrors: crate::fetch::mirror_variables(&self.model.root),
        };
        for (name, sha) in crate::lock::pin_new(&mut self.model, &unpinned, &fetcher, locked)? {
            shell.status(&format!(
                "ccb.lock: pinned artifact `{name}` at {sha} (new in the manifests)"
            ));
        }
        Ok(())
    }

    /// Pins what the targets need (never `--locked`: only `ccb build` takes that flag), then
    /// plans them: what every command that builds disks first (test, publish, inspect) runs.
    pub(crate) fn plan_to_build(
        &mut self,
        targets: &[String],
        arch: &[String],
        shell: &Shell,
    ) -> Result<Planned, CommandError> {
        self.pin_new_artifacts(targets, arch, false, build::Stage::Disk, shell)?;
        self.plan(targets, arch)
    }

    /// Refuses an arch asked for by name that this host cannot build and no builder serves,
    /// before anything is pinned, downloaded or opened. Only then is the graph planned twice
    /// (here, with the pins as they are, and after pinning): an action whose artifact is not
    /// pinned yet is not cached, so this plan runs at least what the pinned one would.
    fn refuse_unbuildable_arches(
        &self,
        targets: &[String],
        arch: &[String],
        until: build::Stage,
    ) -> Result<(), CommandError> {
        let named = label::named_arches(&self.model, targets, label::parse_arches(arch)?.as_ref());
        let remote = crate::remote::builder::Builders::configured_arches(
            self.model.project.builders.as_ref(),
            &self.remote,
        );
        if !build::may_refuse(&named, &remote) {
            return Ok(());
        }
        let planned = self.plan(targets, arch)?;
        build::refuse_unbuildable(&build::plan(&planned, self.store, until), &named, &remote)
    }

    /// Resolves the targets and builds their graph.
    pub fn plan(&self, targets: &[String], arch: &[String]) -> Result<Planned, CommandError> {
        self.plan_graph(targets, arch, false)
    }

    /// [`Session::plan`] with the publish actions in the graph (`query graph` shows them).
    pub fn plan_with_publish(
        &self,
        targets: &[String],
        arch: &[String],
    ) -> Result<Planned, CommandError> {
        self.plan_graph(targets, arch, true)
    }

    fn plan_graph(
        &self,
        targets: &[String],
        arch: &[String],
        publish: bool,
    ) -> Result<Planned, CommandError> {
        let named_arches =
            label::named_arches(&self.model, targets, label::parse_arches(arch)?.as_ref());
        let targets = self.targets(targets, arch)?;
        let graph = Graph::build(&self.model, &self.resolver, &targets, publish)?;
        Ok(Planned {
            targets,
            graph,
            named_arches,
        })
    }
}
