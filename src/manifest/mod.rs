//! Manifests: evaluation of `manifests/*.ncl|*.toml` against `stdlib/ccb.ncl` into a [`Model`].
//!
//! Nickel checks each field's type and the names parts use to refer to each other (an unknown
//! parent, artifact or site); `validate` checks what reads better in Rust (cycles in `from`,
//! duplicate published names, a child built for an arch its parent lacks) and resolves
//! inheritance. The evaluated manifests are cached with the stat of every file the evaluation
//! read, so a warm run does not start Nickel at all.

mod eval;
mod locate;
pub mod origin;
mod validate;
pub use validate::env_entry_problem;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag::SourceDiagnostic;
use crate::fsutil::FsError;
use crate::store::{Store, StoreError};

pub use eval::{EVAL_ARG, EmbeddedStdlib, STDLIB_SOURCE, evaluator_main};

/// The manifest categories, each `manifests/<name>.ncl` and/or `manifests/<name>.toml`.
pub const CATEGORIES: [&str; 6] = [
    "images",
    "sites",
    "artifacts",
    "sources",
    "inspect",
    "project",
];

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ManifestError {
    #[error("no `manifests/` directory in `{}` or any of its parents", start.display())]
    #[diagnostic(help("run ccb inside a project, or pass --root DIR"))]
    NoProject { start: PathBuf },
    #[error("`{}` is not a ccb project: it has no `manifests/` directory", root.display())]
    NotAProject { root: PathBuf },
    #[error("{0}")]
    #[diagnostic(transparent)]
    Invalid(Box<SourceDiagnostic>),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("evaluating the manifests {manifests} did not finish within {seconds} s")]
    #[diagnostic(
        code(ccb::manifest::eval_timeout),
        help("a manifest may recurse without end; CCB_EVAL_TIMEOUT sets the limit (seconds)")
    )]
    EvalTimeout { manifests: String, seconds: u64 },
    #[error("evaluating the manifests {manifests} needed more than {limit} of memory")]
    #[diagnostic(
        code(ccb::manifest::eval_memory),
        help("a manifest may recurse without end; CCB_EVAL_MEMORY sets the limit (e.g. 8G)")
    )]
    EvalMemory { manifests: String, limit: String },
    #[error("evaluating the manifests {manifests} failed: the evaluator {detail}")]
    #[diagnostic(code(ccb::manifest::eval_crashed))]
    EvalCrashed { manifests: String, detail: String },
    #[error("evaluating the manifests {manifests} failed: `{}` exited without an answer", program.display())]
    #[diagnostic(
        code(ccb::manifest::eval_no_answer),
        help(
            "the evaluator is ccb re-executed with `__eval`; a program embedding the library names the ccb binary with `ccb::process::use_ccb_binary`"
        )
    )]
    EvalNoAnswer { manifests: String, program: PathBuf },
    #[error("cannot start the manifest evaluator")]
    EvalStart(#[source] Box<crate::process::ProcessError>),
}

impl From<SourceDiagnostic> for ManifestError {
    fn from(d: SourceDiagnostic) -> Self {
        Self::Invalid(Box::new(d))
    }
}

/// A CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The architecture this ccb runs on, when it is one images are built for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An output disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    Swift,
    Local,
}

/// Provenance fields; `None` only when neither the image nor any ancestor sets the field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image after inheritance from its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    /// The key in `images` (the target name).
    pub key: String,
    /// The published name.
    pub name: String,
    /// The parent image's key.
    pub from: Option<String>,
    /// The elements this image adds (its own `elements` field).
    pub own_elements: Vec<String>,
    /// Every element requested for the image: its ancestors' then its own, deduplicated.
    pub elements: Vec<String>,
    pub arch: Vec<Arch>,
    pub baremetal_only: bool,
    pub provenance: Provenance,
    /// The parent's variables overridden by the image's own.
    pub env: BTreeMap<String, String>,
    /// Env var name → artifact key, the parent's merged with the image's own.
    pub artifacts: BTreeMap<String, String>,
    /// Env var name → artifact key for the `base` action (root.d): the distribution's root
    /// filesystem. A root image's own; a child's base is its parent's.
    pub base_artifacts: BTreeMap<String, String>,
    /// Env var name → where its secret is read at build time, the parent's merged with the
    /// image's own. Only their presence is part of a key.
    pub secrets: BTreeMap<String, SecretSource>,
    /// The variables of `artifacts` and `base_artifacts` (the parent's included) whose
    /// artifact is `secret` (EULA-bound files such as NVIDIA's vGPU guest driver): the image
    /// holds them as it holds a secret input.
    pub secret_artifacts: BTreeSet<String>,
    /// The manifests allow publishing this image to public sites although it holds secrets.
    pub public_with_secrets: bool,
    pub formats: Vec<Format>,
    pub size: Option<String>,
    pub description: Option<String>,
}

impl Image {
    /// The name an arch's build is published under: upstream appends the arch upper-cased for
    /// anything but amd64 (`CC-Ubuntu24.04-ARM64`).
    pub fn published_name(&self, arch: Arch) -> String {
        match arch {
            Arch::Amd64 => self.name.clone(),
            other => format!("{}-{}", self.name, other.as_str().to_ascii_uppercase()),
        }
    }

    /// Whether the image's builds hold secret inputs (then publishing to a public site needs
    /// `public_with_secrets`).
    pub fn holds_secrets(&self) -> bool {
        !self.secrets.is_empty() || !self.secret_artifacts.is_empty()
    }

    /// The variables of what the image holds that may not be shared: its secret inputs and its
    /// secret artifacts, for messages (names only).
    pub fn secret_names(&self) -> Vec<&str> {
        self.secrets
            .keys()
            .chain(self.secret_artifacts.iter())
            .map(String::as_str)
            .collect()
    }

    /// Non-amd64 builds count as bare-metal only, whatever the manifest says.
    pub fn baremetal_only_for(&self, arch: Arch) -> bool {
        self.baremetal_only || arch != Arch::Amd64
    }
}

/// Where a secret input is read at build time: a file (relative to the project root unless
/// absolute) or a variable of ccb's own environment holding the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl SecretSource {
    /// Where it comes from, for messages: never its bytes.
    pub fn describe(&self) -> String {
        match (&self.file, &self.env) {
            (Some(f), _) => format!("file {f}"),
            (None, Some(e)) => format!("environment variable {e}"),
            (None, None) => "nowhere".into(),
        }
    }

    /// Whether [`SecretSource::read`] would find something (a non-empty file or variable),
    /// without reading it.
    pub fn is_available(&self, root: &Path) -> bool {
        match (&self.file, &self.env) {
            (Some(f), _) => {
                std::fs::metadata(root.join(f)).is_ok_and(|m| m.is_file() && m.len() > 0)
            }
            (None, Some(name)) => std::env::var_os(name).is_some_and(|v| !v.is_empty()),
            (None, None) => false,
        }
    }

    /// Reads the secret. Errors name the source, never any content.
    pub fn read(&self, root: &Path) -> Result<Vec<u8>, SecretError> {
        let bytes = match (&self.file, &self.env) {
            (Some(f), _) => {
                let path = root.join(f);
                std::fs::read(&path).map_err(|source| SecretError::Read { path, source })?
            }
            (None, Some(name)) => std::env::var_os(name)
                .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
                .ok_or_else(|| SecretError::Unset { name: name.clone() })?,
            (None, None) => return Err(SecretError::NoSource),
        };
        if bytes.is_empty() {
            return Err(SecretError::Empty {
                from: self.describe(),
            });
        }
        Ok(bytes)
    }
}

/// Why a secret input could not be read. A missing variable or file, or an empty one, is
/// the project's to fix; the OS error of a file kept as the source says when it is the
/// host's (a permission, a failing disk).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SecretError {
    #[error("cannot read {}", path.display())]
    #[diagnostic(code(ccb::secret::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("environment variable {name} is not set")]
    #[diagnostic(code(ccb::secret::unset))]
    Unset { name: String },
    #[error("no source (`file` or `env`)")]
    #[diagnostic(code(ccb::secret::no_source))]
    NoSource,
    #[error("{from} is empty")]
    #[diagnostic(code(ccb::secret::empty))]
    Empty { from: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwiftObject {
    pub site: String,
    pub container: String,
    pub object: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swift: Option<SwiftObject>,
    pub sha256: String,
    /// The publisher's checksum file (SHA256SUMS, CHECKSUM) for a `url` artifact: a download
    /// must match its entry before it is pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sums: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A file its licence forbids sharing (NVIDIA's vGPU guest driver): fetched and used on
    /// this host only, never uploaded to a remote cache or sent to a builder, and an image
    /// using it counts as holding a secret.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// One file per arch (a distribution's cloud image): the model holds each as its own
    /// artifact, `NAME:ARCH` ([`Model::artifact_key`]), and this is `None` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<BTreeMap<Arch, ArchSource>>,
}

/// One arch's file of an artifact that differs per arch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchSource {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sums: Option<String>,
    /// This arch's digest; the artifact's `sha256` ("latest" usually) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub name: String,
    pub baremetal: bool,
    pub formats: Vec<Format>,
    pub kind: SiteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether anyone can read what is published there. Swift sites: `ccb publish` checks the
    /// container is publicly readable and listable (what the sites' pullers need). An image
    /// holding secret inputs is refused unless its manifest allows it (`public_with_secrets`).
    #[serde(default = "yes")]
    pub public: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectChecks {
    pub executables: BTreeMap<String, Vec<String>>,
    /// Published name → executables (relative paths) that image is known not to have.
    #[serde(default)]
    pub exempt: BTreeMap<String, Vec<String>>,
    pub compare_dpkg_manifest: bool,
    /// The storage drivers every kernel's initramfs must hold.
    #[serde(default)]
    pub initramfs: InitramfsChecks,
}

/// What `ccb inspect` requires of each kernel's initramfs (`src/inspect/drivers.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsChecks {
    /// Kernel modules that must be in the initramfs or built into the kernel.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Also the module of the image's root filesystem (`ext4`, `xfs`).
    #[serde(default)]
    pub root_filesystem: bool,
}

/// A git source at one commit. `url`, `ref` and `path` repeat the manifest's, so an edit to
/// any of them makes the entry stale instead of silently pinning the old repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub path: String,
    pub commit: String,
    /// The git tree id of `path` at `commit`: what the build's elements are made of.
    pub tree: String,
}

impl LockedSource {
    /// Compared without credentials, in the form the lock holds (`crate::lock::source_url`,
    /// which is `redact::url`): the lock never holds them, and an older lock that does still
    /// matches until `ccb update` rewrites it.
    pub fn matches(&self, source: &Source) -> bool {
        crate::redact::url(&self.url) == crate::redact::url(&source.url)
            && self.git_ref == source.git_ref
            && self.path == source.path
    }
}

/// What `ccb.lock` pins for one model (read and written by `crate::lock`): every git source's commit, every "latest" artifact's
/// digest.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    pub sources: BTreeMap<String, LockedSource>,
    /// "latest" artifacts the lock has no digest for yet (new in the manifests): their
    /// `sha256` stays "latest" until a build pins them (`pin_new`), as Cargo adds a new
    /// dependency to Cargo.lock.
    pub unpinned: std::collections::BTreeSet<String>,
}

/// The project's `cache` setting: the remote cache shared with other build hosts (see
/// `crate::remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub url: String,
    #[serde(default)]
    pub upload: bool,
}

/// The project's `builders` setting: build hosts per arch (`ssh://user@host`, see
/// `crate::remote::builder`).
pub type BuilderHosts = BTreeMap<Arch, Vec<String>>;

/// Settings of the whole project (`manifests/project.ncl`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// The repository URL published as `build-repo`; `None`: the git remote of the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_repo: Option<String>,
    /// The remote cache shared with other build hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
    /// Build hosts per arch (`ssh://user@host`), for what this host should not build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builders: Option<BuilderHosts>,
    /// How published checksums are signed and verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSettings>,
}

/// The key that signs each published image's `<Name>.SHA256SUMS` (OpenSSH's SSHSIG format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSettings {
    /// Where `ccb publish` reads the private ed25519 key (OpenSSH format, unencrypted): a file
    /// or an environment variable. Never in a key, a log, an error or JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretSource>,
    /// The public key (`ssh-ed25519 AAAA… comment`) that `ccb inspect --site/--url` verifies
    /// signatures with, and that the private key must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Everything the manifests declare, checked and with inheritance resolved.
#[derive(Debug, Clone)]
pub struct Model {
    /// The project root (the directory holding `manifests/`).
    pub root: PathBuf,
    pub images: BTreeMap<String, Image>,
    pub sites: BTreeMap<String, Site>,
    /// Artifacts by key; one that differs per arch is here once per arch, as `NAME:ARCH`.
    pub artifacts: BTreeMap<String, Artifact>,
    /// The artifacts declared per arch: name → the arches they have a file for.
    pub per_arch: BTreeMap<String, std::collections::BTreeSet<Arch>>,
    pub sources: BTreeMap<String, Source>,
    pub inspect: InspectChecks,
    pub project: ProjectSettings,
    /// The manifest files, by category, for pointing errors at them.
    pub files: BTreeMap<String, Vec<PathBuf>>,
    /// Whether the evaluation came from the cache.
    pub from_cache: bool,
    /// Non-fatal findings, for the CLI to print as warnings.
    pub warnings: Vec<String>,
    /// What `ccb.lock` pins (set by [`crate::lock::apply`]).
    pub pins: Pins,
    /// Asked of git once, when a disk's key first needs it (see [`Model::origin`]).
    pub origin: std::sync::OnceLock<origin::Origin>,
}

impl Model {
    /// A model that declares nothing (tests, tools that need a root only).
    pub fn empty(root: PathBuf) -> Self {
        Self {
            root,
            images: BTreeMap::new(),
            sites: BTreeMap::new(),
            artifacts: BTreeMap::new(),
            per_arch: BTreeMap::new(),
            sources: BTreeMap::new(),
            inspect: InspectChecks::default(),
            project: ProjectSettings::default(),
            files: BTreeMap::new(),
            from_cache: false,
            warnings: Vec::new(),
            pins: Default::default(),
            origin: Default::default(),
        }
    }

    /// The repository and commit the images' provenance records (and the disks' keys cover).
    pub fn origin(&self) -> &origin::Origin {
        self.origin
            .get_or_init(|| origin::Origin::of(&self.root, self.project.build_repo.as_deref()))
    }

    /// The key in [`Model::artifacts`] of artifact `name` for an `arch` build: `NAME:ARCH` for
    /// an artifact declared per arch, else `name`.
    pub fn artifact_key(&self, name: &str, arch: Arch) -> String {
        if self.per_arch.contains_key(name) {
            arch_artifact_key(name, arch)
        } else {
            name.to_string()
        }
    }

    /// Whether artifact `name` (as an image names it, per-arch or not) is `secret`.
    pub fn artifact_is_secret(&self, name: &str) -> bool {
        self.artifacts.get(name).is_some_and(|a| a.secret)
            || self.per_arch.get(name).is_some_and(|arches| {
                arches.iter().any(|a| {
                    self.artifacts
                        .get(&arch_artifact_key(name, *a))
                        .is_some_and(|x| x.secret)
                })
            })
    }

    /// The model's artifact keys a name given on the command line means: itself, or every
    /// arch's file of an artifact declared per arch.
    pub fn artifact_keys_named(&self, name: &str) -> Vec<String> {
        match self.per_arch.get(name) {
            Some(arches) => arches.iter().map(|a| arch_artifact_key(name, *a)).collect(),
            None => vec![name.to_string()],
        }
    }

    /// The images ordered so that every parent comes before its children.
    pub fn images_parents_first(&self) -> Vec<&Image> {
        let mut out: Vec<&Image> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        fn visit<'a>(
            m: &'a Model,
            key: &str,
            seen: &mut std::collections::BTreeSet<String>,
            out: &mut Vec<&'a Image>,
        ) {
            if !seen.insert(key.to_string()) {
                return;
            }
            if let Some(img) = m.images.get(key) {
                if let Some(parent) = &img.from {
                    visit(m, parent, seen, out);
                }
                out.push(img);
            }
        }
        for key in self.images.keys() {
            visit(self, key, &mut seen, &mut out);
        }
        out
    }

    /// Points a diagnostic at a field of a manifest entry, e.g. `["images", "debian12", "from"]`.
    pub fn locate(
        &self,
        category: &str,
        path: &[&str],
        message: String,
        label: &str,
    ) -> SourceDiagnostic {
        locate::diagnostic(&self.files, category, path, message, label)
    }
}

/// The key of one arch's file of an artifact declared per arch.
pub fn arch_artifact_key(name: &str, arch: Arch) -> String {
    format!("{name}:{arch}")
}

/// Finds the project root: the nearest ancestor of `start` holding `manifests/`.
pub fn find_root(start: &Path) -> Result<PathBuf, ManifestError> {
    let start = start
        .canonicalize()
        .map_err(|e| FsError::new("resolve", start, e))?;
    for dir in start.ancestors() {
        if dir.join("manifests").is_dir() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(ManifestError::NoProject { start })
}

/// Evaluates and checks the manifests of the project at `root`.
pub fn load(root: &Path, store: &Store) -> Result<Model, ManifestError> {
    if !root.join("manifests").is_dir() {
        return Err(ManifestError::NotAProject {
            root: root.to_path_buf(),
        });
    }
    let evaluated = eval::evaluate(root, store)?;
    validate::resolve(root, evaluated)
}
