//! What a sandboxed action runs: plain data, written by the parent as JSON and read by the
//! sandbox. Everything the action may observe is here (or in the element directories it
//! names), so the parent's key document and what actually runs cannot drift apart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecKind {
    /// `root.d` into an empty tree.
    Base,
    /// extra-data → post-root over the lower layers.
    Layer,
    /// A bootable disk from the finished stack: block-device → cleanup, outputs.
    Disk,
}

/// Where a phase runs: on the host (inside the sandbox's namespaces) or chrooted in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Outside,
    Inside,
}

/// One step of a phase, in run order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "step")]
pub enum Step {
    /// An element's phase script, from the merged hooks tree.
    Script {
        element: String,
        name: String,
        /// The install-types subdirectory it comes from (linked into the phase directory).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<String>,
    },
    /// package-installs at DIB's positions: the engine calls `install-packages`.
    Packages {
        name: String,
        install: Vec<String>,
        uninstall: Vec<String>,
    },
    /// install-bin, done by the engine: the layer's own `bin/` files into /usr/local/bin.
    InstallBin { name: String },
    /// install-static, done by the engine: the layer's own `static/` trees onto `/`.
    InstallStatic { name: String },
    /// dib-init-system's install.d step, done by the engine: the layer's own elements'
    /// `init-scripts/<init_system>/` into the init system's directory.
    InitScripts { name: String, init_system: String },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Script { name, .. }
            | Step::Packages { name, .. }
            | Step::InstallBin { name }
            | Step::InstallStatic { name }
            | Step::InitScripts { name, .. } => name,
        }
    }

    /// The element a step belongs to (engine steps belong to the element that asks for them).
    pub fn element(&self) -> &str {
        match self {
            Step::Script { element, .. } => element,
            Step::Packages { .. } => "package-installs",
            Step::InstallBin { .. } => "install-bin",
            Step::InstallStatic { .. } => "install-static",
            Step::InitScripts { .. } => "dib-init-system",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseSpec {
    pub phase: String,
    pub place: Place,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElementSrc {
    pub name: String,
    pub dir: PathBuf,
    /// Whether this layer installs the element's `static/` and `bin/` (its own elements);
    /// a parent's were installed in the parent's layer.
    pub own: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionSpec {
    pub id: String,
    pub key: String,
    pub kind: SpecKind,
    pub arch: String,
    /// The action's private working directory (removed by the parent afterwards).
    pub work: PathBuf,
    /// Lower layer trees, top first (layers only).
    pub lowers: Vec<PathBuf>,
    /// Use overlayfs (else the lowers are copied, and the result is a full tree).
    pub overlay: bool,
    /// The declared variables: ccb's own and the manifest's `env`.
    pub env: BTreeMap<String, String>,
    /// The elements whose directories make the hooks tree, in resolution order.
    pub elements: Vec<ElementSrc>,
    /// environment.d files of the hooks tree, in sourcing order.
    pub env_files: Vec<String>,
    pub phases: Vec<PhaseSpec>,
    /// Per element: generic package name → distro names, for `install-packages -m`.
    pub pkg_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Shared download caches (never part of a key): DIB_IMAGE_CACHE and package archives.
    pub downloads: PathBuf,
    /// The shared package archive cache, bind-mounted into the chroot.
    pub package_cache: Option<CacheMount>,
    /// The action log (also the sandbox's stderr).
    pub log: PathBuf,
    /// Stream every output line to the parent (`-v`).
    pub stream_output: bool,
    /// What a disk action makes (disk actions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSpec>,
    /// The image's artifacts: variable → verified file in the store. Scripts get the
    /// variable as a read-only path (inside the chroot under /tmp/ccb/artifacts).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, PathBuf>,
    /// Files (private copies of the image's secrets) whose bytes never reach the log: the
    /// sandbox writes `[redacted]` where a step prints one. Paths, so the spec on disk holds
    /// no secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<PathBuf>,
    /// A `command not found` in a step's output fails the step (`--strict`). Not an input of
    /// the key: it decides whether a result is accepted, never what it holds.
    #[serde(default)]
    pub strict: bool,
    /// Every program of a build is the image's own: none the host's, no stand-in of ccb's
    /// (`CCB_HOST_TOOLS=0`; see [`super::native`]). Not an input of the key: they make the same
    /// tree, but for the deflate bytes of an initramfs.
    #[serde(default)]
    pub no_host_tools: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSpec {
    /// The published name: the image's `IMAGE_NAME` and the outputs' base name.
    pub name: String,
    pub layout: super::layout::Layout,
    /// A fixed disk size from the manifest, in bytes.
    pub size: Option<u64>,
    /// `qcow2`, `raw`.
    pub formats: Vec<String>,
    /// qcow2 compression: `zlib`, `zstd` or none.
    pub qcow2_compression: Option<String>,
    /// The provenance record (JSON), for DIB_CC_PROVENANCE and `<Name>.d/`.
    pub provenance: String,
    /// Where the build's manifests are in the image (DIB_MANIFEST_IMAGE_DIR).
    pub manifest_dir: String,
    /// Seeds the disk's GUIDs and filesystem UUIDs: the same key gives the same identifiers.
    pub seed: String,
    /// What the image was built from, for its SBOM.
    #[serde(default)]
    pub sbom: crate::sbom::Inputs,
}

/// A host directory shared between builds (never part of a key), mounted at `target`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheMount {
    pub host: PathBuf,
    pub target: String,
}
