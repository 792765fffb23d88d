//! The store: ccb's cache directory (`$CCB_CACHE_DIR`, default `$XDG_CACHE_HOME/ccb`).
//!
//! Every write is atomic (temp file + rename), so two ccb processes can share one store and a
//! killed process never leaves a half-written record that looks finished. Records are JSON;
//! a record that fails to parse (an older ccb, a torn disk) is treated as absent, never as an
//! error: the store is a cache, and a miss only costs time.

mod checkpoint;
mod layout;
pub mod tree;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fsutil::{self, FsError};
pub use checkpoint::{CheckpointChain, CheckpointMeta, MAX_CHECKPOINTS};
pub use layout::Layout;
pub use tree::summarize;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StoreError {
    #[error("cannot find a cache directory: set CCB_CACHE_DIR (or XDG_CACHE_HOME or HOME)")]
    #[diagnostic(code(ccb::store::no_cache_dir))]
    NoCacheDir,
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("failed to encode a store record for `{}`", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store named by the environment: `CCB_CACHE_DIR`, else `$XDG_CACHE_HOME/ccb`, else
    /// `$HOME/.cache/ccb`.
    pub fn from_env() -> Result<Self, StoreError> {
        let root = match std::env::var_os("CCB_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
                Some(dir) => PathBuf::from(dir).join("ccb"),
                None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                    Some(home) => PathBuf::from(home).join(".cache").join("ccb"),
                    None => return Err(StoreError::NoCacheDir),
                },
            },
        };
        Ok(Self::at(root))
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Reads a JSON record; `None` when it is absent or unreadable.
    pub fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Option<T> {
        let bytes = std::fs::read(self.path(rel)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<(), StoreError> {
        let path = self.path(rel);
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// [`Store::write_json`] for a cache record that [`Store::read_json`] reads back: not
    /// fsynced (see [`fsutil::write_atomic_cache`]).
    pub fn write_cache_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<(), StoreError> {
        let path = self.path(rel);
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic_cache(&path, &bytes)?;
        Ok(())
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }
}

/// A short, stable file name for a path-like identity (a project root, an action id).
pub fn name_for(identity: &str) -> String {
    blake3::hash(identity.as_bytes()).to_hex()[..32].to_string()
}

/// An exclusive or shared `flock` on a file of the store; released when dropped (and by the
/// kernel when the process dies, so a killed ccb never leaves a stale lock).
pub struct Lock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Whether to wait for a lock held by another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Block,
    Try,
}

impl Store {
    fn lock_file(&self, name: &str, shared: bool, wait: Wait) -> Result<Option<Lock>, StoreError> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.path(&Layout::lock(name));
        fsutil::create_dir_all(path.parent().expect("locks/ has a parent"))?;
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FsError::new("open lock", &path, e))?;
        let arg = match (shared, wait) {
            (false, Wait::Block) => FlockArg::LockExclusive,
            (false, Wait::Try) => FlockArg::LockExclusiveNonblock,
            (true, Wait::Block) => FlockArg::LockShared,
            (true, Wait::Try) => FlockArg::LockSharedNonblock,
        };
        match Flock::lock(file, arg) {
            Ok(f) => Ok(Some(Lock { _file: f })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(FsError::new("lock", &path, e.into()).into()),
        }
    }

    /// The per-key lock: two ccb processes never build the same key at once.
    pub fn lock_key(&self, key: &str, wait: Wait) -> Result<Option<Lock>, StoreError> {
        self.lock_file(key, false, wait)
    }

    /// Builds hold the store shared; `ccb cache gc|rm` hold it exclusively, so nothing is
    /// removed from under a running build.
    pub fn lock_store(&self, exclusive: bool, wait: Wait) -> Result<Option<Lock>, StoreError> {
        self.lock_file("store", !exclusive, wait)
    }

    /// A committed layer: `layers/<key>/` with `tree/` and `layer.json`.
    pub fn layer_dir(&self, key: &str) -> PathBuf {
        self.path(&Layout::layer_dir(key))
    }

    /// A committed layer's files.
    pub fn layer_tree(&self, key: &str) -> PathBuf {
        self.path(&Layout::layer_tree(key))
    }

    pub fn layer_meta(&self, key: &str) -> Option<LayerMeta> {
        self.read_json(&Layout::layer_record(key))
    }

    pub fn log_path(&self, key: &str) -> PathBuf {
        self.path(&Layout::log(key))
    }

    /// A fresh private working directory for one attempt at `key`.
    pub fn work_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.path(&Layout::work_dir(key, std::process::id(), n));
        if dir.exists() {
            remove_tree(&dir)?;
        }
        fsutil::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Working directories of `key` left by a process that died (call with the key's lock held).
    pub fn remove_stale_work(&self, key: &str) -> Result<(), StoreError> {
        let Ok(entries) = std::fs::read_dir(self.path(Layout::TMP)) else {
            return Ok(());
        };
        for e in entries.filter_map(Result::ok) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{key}-")))
            {
                remove_tree(&e.path())?;
            }
        }
        Ok(())
    }

    /// Moves a finished tree and its metadata into place in one rename: a reader sees no
    /// layer or a whole one.
    pub fn commit_layer(&self, tree: &Path, meta: &LayerMeta) -> Result<(), StoreError> {
        fsutil::sync_filesystem(tree)?;
        let staging = self.work_dir(&Layout::staging(&meta.key))?;
        std::fs::rename(tree, staging.join(Layout::TREE))
            .map_err(|e| FsError::new("move the finished tree from", tree, e))?;
        self.write_json_at(&staging.join(Layout::LAYER_RECORD), meta)?;
        crate::fault::point("store.layer-staged");
        let dest = self.layer_dir(&meta.key);
        fsutil::create_dir_all(dest.parent().expect("layers/ has a parent"))?;
        if dest.exists() {
            // Only a `--force` rebuild gets here (with the key's lock held): replace it.
            let old = self.work_dir(&Layout::replaced(&meta.key))?;
            std::fs::rename(&dest, old.join("layer"))
                .map_err(|e| FsError::new("move aside", &dest, e))?;
            std::fs::rename(&staging, &dest)
                .map_err(|e| FsError::new("commit the layer to", &dest, e))?;
            remove_tree(&old)?;
        } else {
            std::fs::rename(&staging, &dest)
                .map_err(|e| FsError::new("commit the layer to", &dest, e))?;
        }
        Ok(())
    }

    fn write_json_at<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        fsutil::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Removes a committed layer (renamed aside first: a half-removed layer must never be
    /// found under its key).
    pub fn remove_layer(&self, key: &str) -> Result<(), StoreError> {
        self.remove_aside(&self.layer_dir(key), key, "layer")
    }

    /// Removes a disk's outputs directory (its record is the caller's to remove first).
    pub fn remove_outputs(&self, key: &str) -> Result<(), StoreError> {
        self.remove_aside(&self.outputs_dir(key), key, "outputs")
    }

    /// Renames `dir` into a trash working directory of `key`, then removes it.
    fn remove_aside(&self, dir: &Path, key: &str, what: &str) -> Result<(), StoreError> {
        if dir.exists() {
            let trash = self.work_dir(&Layout::trash(key))?;
            std::fs::rename(dir, trash.join(what))
                .map_err(|e| FsError::new("move aside", dir, e))?;
            remove_tree(&trash)?;
        }
        Ok(())
    }

    pub fn remove(&self, rel: &str) -> Result<(), StoreError> {
        let p = self.path(rel);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(FsError::new("remove", &p, e).into())
            }
            _ => Ok(()),
        }
    }
}

/// Removes a directory tree (builds leave root-owned, read-only and device files behind).
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(FsError::new("remove", path, e).into())
        }
        _ => Ok(()),
    }
}

/// How a layer's tree relates to the ones under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerMode {
    /// A whole root filesystem.
    Full,
    /// An overlayfs upper directory over `lowers`.
    Diff,
}

/// What a tree holds, and a digest over all of it (made by [`summarize`];
/// kept in layer and checkpoint records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TreeSummary {
    /// blake3 over every entry's path, type, mode, owner, content or target, device number
    /// and xattrs, in sorted order.
    pub digest: String,
    pub entries: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
}

/// `layers/<key>/layer.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LayerMeta {
    pub key: String,
    pub id: String,
    pub mode: LayerMode,
    /// The layers under this one, top first, down to the nearest full one.
    pub lowers: Vec<String>,
    pub tree: TreeSummary,
    /// Seconds since the epoch.
    pub created: u64,
}

impl LayerMeta {
    /// The trees to stack for a layer built on this one, top first.
    pub fn stack(&self, store: &Store) -> Vec<PathBuf> {
        let mut out = vec![store.layer_tree(&self.key)];
        if self.mode == LayerMode::Diff {
            out.extend(self.lowers.iter().map(|k| store.layer_tree(k)));
        }
        out
    }
}

/// `outputs/<key>.json`: the files a disk action made (in `outputs/<key>/`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutputsMeta {
    pub key: String,
    pub id: String,
    /// The published name (the files' base name).
    pub name: String,
    /// Paths relative to the outputs directory, with their sizes (apparent bytes).
    pub files: Vec<(String, u64)>,
    pub created: u64,
    /// The secret inputs (and secret artifacts) the disk holds, by variable: publish refuses
    /// public sites from this record of the build, not only from today's manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl Store {
    pub fn outputs_dir(&self, key: &str) -> PathBuf {
        self.path(&Layout::outputs_dir(key))
    }

    pub fn outputs_meta(&self, key: &str) -> Option<OutputsMeta> {
        self.read_json(&Layout::outputs_record(key))
    }

    /// The serial log of `ccb test`'s boot of a disk with a firmware.
    pub fn boot_log(&self, key: &str, firmware: &str, bus: &str) -> PathBuf {
        self.path(&Layout::boot_log(key, firmware, bus))
    }

    /// Where a boot's first attempt's serial log goes when its guest kernel panicked.
    pub fn boot_log_panicked(&self, key: &str, firmware: &str, bus: &str) -> PathBuf {
        self.path(&Layout::boot_log_panicked(key, firmware, bus))
    }

    /// Moves a finished output directory into place in one rename, then records it
    /// (`outputs/<key>.json`, which is what makes the outputs count as present).
    pub fn commit_outputs(&self, dir: &Path, meta: &OutputsMeta) -> Result<(), StoreError> {
        fsutil::sync_filesystem(dir)?;
        let dest = self.outputs_dir(&meta.key);
        fsutil::create_dir_all(dest.parent().expect("outputs/ has a parent"))?;
        if dest.exists() {
            let old = self.work_dir(&Layout::replaced(&meta.key))?;
            std::fs::rename(&dest, old.join("outputs"))
                .map_err(|e| FsError::new("move aside", &dest, e))?;
            std::fs::rename(dir, &dest).map_err(|e| FsError::new("commit outputs to", &dest, e))?;
            remove_tree(&old)?;
        } else {
            std::fs::rename(dir, &dest).map_err(|e| FsError::new("commit outputs to", &dest, e))?;
        }
        crate::fault::point("store.outputs-unrecorded");
        self.write_json(&Layout::outputs_record(&meta.key), meta)
    }
}
