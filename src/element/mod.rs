//! diskimage-builder elements: discovery on a search path, dependency expansion, the merged
//! per-phase view of an image's elements (scripts in run order, environment.d, static/ and
//! bin/), the environment the build sees, package-installs, digests and lint.
//!
//! The contract is diskimage-builder's (see the team's `dib-element-format.md`), except that
//! everything DIB leaves to hash order is sorted here, so the same inputs always give the same
//! view and the same keys.

pub mod digest;
pub mod env;
pub mod expand;
pub mod lint;
pub mod packages;
pub mod reads;
pub mod search;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

pub use digest::DigestCache;
pub use expand::expand;
pub use search::{ElementDir, SearchDir, SearchPath};
pub use view::{ElementView, PHASES};

use crate::manifest::{Arch, Image, Model};
use crate::store::Store;

/// Element resolution errors. The messages carry DIB's error classes ("not found", "already
/// provided", "operating system") so that people who know DIB recognise them.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ElementError {
    /// A limit of the environment.d capture set to something that is not one.
    #[error("{var}={value:?} is not {expected}")]
    #[diagnostic(
        code(ccb::element::limit),
        help("unset {var} for the default, or see the README's limits")
    )]
    BadLimit {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("Element '{name}' not found{}", wanted_by.as_ref().map(|w| format!(" (required by {w})")).unwrap_or_default())]
    #[diagnostic(code(ccb::element::not_found))]
    NotFound {
        name: String,
        wanted_by: Option<String>,
        #[help]
        help: Option<String>,
    },
    #[error("{name}: already provided by {first}, and also provided by {second}")]
    #[diagnostic(code(ccb::element::already_provided))]
    ProvidedTwice {
        name: String,
        first: String,
        second: String,
    },
    #[error("{name}: already provided by {provider}, but it was also requested by name")]
    #[diagnostic(
        code(ccb::element::already_provided),
        help("request either `{name}` or `{provider}`, not both")
    )]
    RequestedButProvided { name: String, provider: String },
    #[error("Please include an operating system element: nothing provides `operating-system`")]
    #[diagnostic(
        code(ccb::element::no_operating_system),
        help(
            "add an OS element such as `debian`, `ubuntu` or `centos` (or an element depending on one)"
        )
    )]
    MissingOs,
    #[error("element-provides do not settle: {0}")]
    #[diagnostic(code(ccb::element::provides_cycle))]
    ProvidesCycle(String),
    #[error("element search path entry `{0}` is not a directory")]
    #[diagnostic(code(ccb::element::invalid_dir))]
    InvalidElementDir(String),
    #[error(
        "duplicate script `{phase}/{script}` in elements `{first}` and `{second}`: scripts of one phase share one directory"
    )]
    #[diagnostic(
        code(ccb::element::duplicate_script),
        help("rename one of them; diskimage-builder refuses the same name too")
    )]
    DuplicateScript {
        phase: String,
        script: String,
        first: String,
        second: String,
    },
    #[error("environment.d of element `{element}` failed: `{file}` {detail}")]
    #[diagnostic(code(ccb::element::environment))]
    Environment {
        element: String,
        file: String,
        detail: String,
    },
    #[error("looking for element `{element}` in the third-party sources")]
    #[diagnostic(code(ccb::element::source))]
    Source {
        element: String,
        #[source]
        #[diagnostic_source]
        source: Box<dyn miette::Diagnostic + Send + Sync>,
    },
    #[error("cannot source environment.d")]
    Bash(#[source] crate::process::ProcessError),
    #[error("element `{element}`: {file}: {message}")]
    #[diagnostic(code(ccb::element::package_installs))]
    Packages {
        element: String,
        file: String,
        message: String,
    },
    #[error(
        "element `{element}`: package `{package}` has a `when` condition on `{variable}`, which is not set"
    )]
    #[diagnostic(
        code(ccb::element::when_unset),
        help(
            "set `{variable}` in the image's `env` or give it a default in an environment.d file"
        )
    )]
    WhenUnset {
        element: String,
        package: String,
        variable: String,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The variables ccb itself gives every build, besides the manifest's `env`.
pub fn engine_env(
    arch: Arch,
    image_name: Option<&str>,
    elements: &[String],
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("ARCH".into(), arch.as_str().into());
    env.insert("DIB_OFFLINE".into(), String::new());
    env.insert("DIB_DEBUG_TRACE".into(), "0".into());
    env.insert("DIB_CCB".into(), "1".into());
    env.insert("IMAGE_ELEMENT".into(), elements.join(" "));
    if let Some(name) = image_name {
        env.insert("IMAGE_NAME".into(), name.into());
    }
    env
}

/// An image's elements for one arch, fully resolved: what every later stage needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    /// The expanded element closure, sorted.
    pub elements: Vec<String>,
    /// The merged view over `elements`.
    pub view: ElementView,
    /// Element name → digest, for the closure.
    pub digests: BTreeMap<String, String>,
    /// The subset of the closure that makes the base root filesystem (elements with `root.d`),
    /// with its own view (environment from those elements only).
    pub base: Option<BaseView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseView {
    pub elements: Vec<String>,
    pub view: ElementView,
}

/// How an image's elements are requested: the manifest's list plus DIB's automatic additions.
pub fn requested_elements(image: &Image) -> Vec<String> {
    let mut req: Vec<String> = Vec::new();
    // DIB prepends `base` unless -n; ccb does the same for images.
    req.push("base".into());
    for e in &image.elements {
        if !req.contains(e) {
            req.push(e.clone());
        }
    }
    req
}

/// The resolver: a search path with its digests, and the store for caching resolutions.
pub struct Resolver<'a> {
    pub path: SearchPath,
    pub digests: BTreeMap<String, String>,
    /// One digest for the whole search path: any element edit changes it.
    pub path_digest: String,
    store: &'a Store,
}

impl<'a> Resolver<'a> {
    pub fn new(path: SearchPath, store: &'a Store) -> Result<Self, ElementError> {
        let mut cache = DigestCache::load(store);
        let mut digests = BTreeMap::new();
        for el in path.elements() {
            digests.insert(el.name.clone(), cache.element_digest(&el.dir)?);
        }
        cache.save(store);
        let mut h = blake3::Hasher::new();
        for el in path.elements() {
            crate::keydoc::hash_str(&mut h, &el.name);
            crate::keydoc::hash_str(&mut h, &digests[&el.name]);
        }
        Ok(Self {
            path,
            digests,
            path_digest: h.finalize().to_hex().to_string(),
            store,
        })
    }

    /// The first (image, element) of the model that no directory of the search path has.
    /// "Nothing missing" is remembered by the search path's digest and the images' requests,
    /// so a project whose sources stay unfetched (none of its images needs them) pays for the
    /// check once, not on every command.
    fn first_missing(&self, model: &Model) -> Option<(String, String)> {
        let mut h = blake3::Hasher::new();
        crate::keydoc::hash_str(&mut h, crate::ENGINE_VERSION);
        crate::keydoc::hash_str(&mut h, &self.path_digest);
        let images = model.images_parents_first();
        for image in &images {
            crate::keydoc::hash_str(&mut h, &image.key);
            crate::keydoc::hash_list(&mut h, &requested_elements(image));
        }
        let rec = crate::store::Layout::resolve_complete_record(&h.finalize().to_hex()[..40]);
        if self.store.exists(&rec) {
            return None;
        }
        let missing = images.into_iter().find_map(|image| {
            match expand(&self.path, &requested_elements(image)) {
                Err(ElementError::NotFound { name, .. }) => Some((image.key.clone(), name)),
                _ => None,
            }
        });
        if missing.is_none() {
            // Failing to record it only costs the check next time.
            let _ = self.store.write_cache_json(&rec, &true);
        }
        missing
    }

    /// Expands and views `requested` under `declared` variables (the manifest's `env`),
    /// caching the result by the search path's digest and the inputs.
    pub fn resolve(
        &self,
        requested: &[String],
        arch: Arch,
        image_name: Option<&str>,
        declared: &BTreeMap<String, String>,
        with_base: bool,
    ) -> Result<Resolved, ElementError> {
        let key = self.key(requested, arch, image_name, declared, with_base);
        let rec = crate::store::Layout::resolve_record(&key);
        if let Some(r) = self.store.read_json::<Resolved>(&rec) {
            return Ok(r);
        }
        let resolved = self.compute(requested, arch, image_name, declared, with_base)?;
        // Failing to cache only costs time on the next run.
        let _ = self.store.write_cache_json(&rec, &resolved);
        Ok(resolved)
    }

    /// What a resolution's result is a function of: the search path's digest and the inputs.
    fn key(
        &self,
        requested: &[String],
        arch: Arch,
        image_name: Option<&str>,
        declared: &BTreeMap<String, String>,
        with_base: bool,
    ) -> String {
        let mut h = blake3::Hasher::new();
        crate::keydoc::hash_str(&mut h, crate::ENGINE_VERSION);
        crate::keydoc::hash_str(&mut h, &self.path_digest);
        crate::keydoc::hash_list(&mut h, requested);
        crate::keydoc::hash_str(&mut h, arch.as_str());
        crate::keydoc::hash_str(&mut h, image_name.unwrap_or("\0none"));
        crate::keydoc::hash_map(&mut h, declared);
        crate::keydoc::hash_str(&mut h, if with_base { "base" } else { "nobase" });
        h.finalize().to_hex()[..40].to_string()
    }

    /// [`Resolver::resolve`] without its record.
    fn compute(
        &self,
        requested: &[String],
        arch: Arch,
        image_name: Option<&str>,
        declared: &BTreeMap<String, String>,
        with_base: bool,
    ) -> Result<Resolved, ElementError> {
        let closure = expand(&self.path, requested)?;
        let dirs: Vec<&ElementDir> = closure
            .iter()
            .map(|n| self.path.get(n).expect("expanded"))
            .collect();
        let mut env_in = engine_env(arch, image_name, &closure);
        env_in.extend(declared.clone());
        let view = ElementView::build(&dirs, &env_in)?;
        let base = if with_base {
            let base_dirs: Vec<&ElementDir> = dirs
                .iter()
                .copied()
                .filter(|d| d.reads.is_dir(&d.dir.join("root.d")))
                .collect();
            let names: Vec<String> = base_dirs.iter().map(|d| d.name.clone()).collect();
            let mut base_env = engine_env(arch, None, &names);
            base_env.extend(declared.clone());
            Some(BaseView {
                view: ElementView::build(&base_dirs, &base_env)?,
                elements: names,
            })
        } else {
            None
        };
        let digests = closure
            .iter()
            .map(|n| (n.clone(), self.digests[n].clone()))
            .collect();
        Ok(Resolved {
            elements: closure,
            view,
            digests,
            base,
        })
    }
}

/// Builds the element search path of a project: `--element-path` entries, `ELEMENTS_PATH`, the
/// project's `elements/`, then the third-party sources: plain local directories in place, git
/// sources whose locked tree is in the store (see [`project_resolver`] for the others).
pub fn project_search_path(
    model: Option<&Model>,
    root: Option<&std::path::Path>,
    extra: &[String],
    store: Option<&Store>,
    warn: &mut dyn FnMut(&str),
) -> Result<SearchPath, ElementError> {
    let mut dirs: Vec<SearchDir> = Vec::new();
    for entry in extra
        .iter()
        .flat_map(|e| e.split(':'))
        .filter(|s| !s.is_empty())
    {
        dirs.push(std::path::PathBuf::from(entry).into());
    }
    if let Some(env) = std::env::var_os("ELEMENTS_PATH") {
        for entry in std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(entry.into());
        }
    }
    if let Some(root) = root {
        let own = root.join("elements");
        if own.is_dir() {
            dirs.push(own.into());
        }
    }
    if let (Some(model), Some(root)) = (model, root) {
        for (name, source) in &model.sources {
            let dir = match model.pins.sources.get(name) {
                Some(locked) => store
                    .map(|s| crate::sources::tree_dir(s, &locked.tree))
                    .filter(|d| d.is_dir()),
                None => crate::sources::path_source_dir(root, source),
            };
            if let Some(dir) = dir {
                dirs.push(SearchDir {
                    dir,
                    source: Some(name.clone()),
                });
            }
        }
    }
    SearchPath::scan(&dirs, warn)
}

/// An element error while resolving one target (or the search path, when `target` is `None`).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{}", match target { Some(t) => format!("cannot resolve the elements of {t}"), None => "cannot resolve the elements".to_string() })]
pub struct ForTarget {
    pub target: Option<String>,
    #[source]
    #[diagnostic_source]
    pub source: ElementError,
}

impl ForTarget {
    pub fn new(target: Option<String>, source: ElementError) -> Self {
        Self { target, source }
    }
}

/// What `ccb check` verifies about elements: every image's elements expand for every arch.
pub struct CheckSummary {
    pub elements: usize,
}

/// The resolver over a project's search path (with `extra` entries first).
///
/// `offline`: fetch nothing; a source the resolution needs must be in the store already.
pub fn project_resolver<'a>(
    model: &Model,
    extra: &[String],
    store: &'a Store,
    offline: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<Resolver<'a>, ForTarget> {
    let scan = |warn: &mut dyn FnMut(&str)| {
        project_search_path(Some(model), Some(&model.root), extra, Some(store), warn)
            .map_err(|e| ForTarget::new(None, e))
    };
    let mut path = scan(warn)?;
    // Git sources not in the store yet are fetched, in search order, only while some image
    // asks for an element no directory before them has.
    let mut pending: Vec<(&String, &crate::manifest::LockedSource)> = model
        .pins
        .sources
        .iter()
        .filter(|(_, l)| !crate::sources::is_checked_out(store, l))
        .collect();
    loop {
        let resolver = Resolver::new(path, store).map_err(|e| ForTarget::new(None, e))?;
        if pending.is_empty() {
            return Ok(resolver);
        }
        let Some((image, element)) = resolver.first_missing(model) else {
            return Ok(resolver);
        };
        let (name, locked) = pending.remove(0);
        let url = model
            .sources
            .get(name)
            .map_or(locked.url.as_str(), |s| &s.url);
        crate::sources::checkout(store, &model.root, name, url, locked, offline, &mut |m| {
            crate::ui::Shell::default().status(m)
        })
        .map_err(|source| {
            ForTarget::new(
                Some(format!("//images:{image}")),
                ElementError::Source {
                    element,
                    source: Box::new(source),
                },
            )
        })?;
        path = scan(warn)?;
    }
}

pub fn check_model(
    model: &Model,
    extra: &[String],
    store: &Store,
    offline: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<CheckSummary, ForTarget> {
    let resolver = project_resolver(model, extra, store, offline, warn)?;
    // A check that passed for the same search path and the same requests passes again: a
    // warm check reads one record instead of one resolution per image and arch.
    let mut h = blake3::Hasher::new();
    crate::keydoc::hash_str(&mut h, crate::ENGINE_VERSION);
    crate::keydoc::hash_str(&mut h, &resolver.path_digest);
    for image in model.images.values() {
        crate::keydoc::hash_str(&mut h, &image.key);
        crate::keydoc::hash_list(&mut h, &requested_elements(image));
        let arches: Vec<String> = image.arch.iter().map(|a| a.as_str().to_string()).collect();
        crate::keydoc::hash_list(&mut h, &arches);
        crate::keydoc::hash_str(&mut h, &image.name);
        crate::keydoc::hash_map(&mut h, &image.env);
        crate::keydoc::hash_str(
            &mut h,
            if image.from.is_none() {
                "base"
            } else {
                "nobase"
            },
        );
    }
    let record = crate::store::Layout::check_record(&h.finalize().to_hex()[..40]);
    if let Some(elements) = store.read_json::<usize>(&record) {
        return Ok(CheckSummary { elements });
    }
    // What the project's last check resolved, by resolution key: a check after an edit
    // resolves only the builds the edit changed. One file for the whole check, not a record
    // per build: creating 8,000 files made a cold check of 4,000 images spend its system time
    // allocating inodes (and more the more files had just been deleted), and a check needs
    // only each build's element closure, not its whole view.
    let pack_record = crate::store::Layout::check_pack(&crate::store::name_for(&format!(
        "{}\0{}",
        model.root.display(),
        crate::ENGINE_VERSION
    )));
    let previous: HashMap<String, Vec<String>> = store.read_json(&pack_record).unwrap_or_default();
    // Resolutions are independent, and a cold one sources environment.d through bash: run
    // them in parallel; the first failure in parents-first order is the one reported, as
    // if they had run one by one.
    use rayon::prelude::*;
    let builds: Vec<(&Image, Arch)> = model
        .images_parents_first()
        .into_iter()
        .flat_map(|image| image.arch.iter().map(move |&arch| (image, arch)))
        .collect();
    let results: Vec<Result<(String, Vec<String>), ForTarget>> = builds
        .par_iter()
        .map(|&(image, arch)| {
            let requested = requested_elements(image);
            let name = image.published_name(arch);
            let with_base = image.from.is_none();
            let key = resolver.key(&requested, arch, Some(&name), &image.env, with_base);
            if let Some(elements) = previous.get(&key) {
                return Ok((key, elements.clone()));
            }
            resolver
                .compute(&requested, arch, Some(&name), &image.env, with_base)
                .map(|r| (key, r.elements))
                .map_err(|e| ForTarget::new(Some(format!("//images:{} ({arch})", image.key)), e))
        })
        .collect();
    let mut used = BTreeSet::new();
    let mut pack = HashMap::with_capacity(results.len());
    for r in results {
        let (key, elements) = r?;
        used.extend(elements.iter().cloned());
        pack.insert(key, elements);
    }
    // Failing to record them only costs the resolutions next time.
    let _ = store.write_cache_json(&pack_record, &pack);
    let _ = store.write_cache_json(&record, &used.len());
    Ok(CheckSummary {
        elements: used.len(),
    })
}
