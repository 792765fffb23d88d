//! Step checkpoints: the state of a layer's tree after one of its steps, kept so that an edit
//! to a later step reruns from there (see [`crate::action::checkpoint`]). A checkpoint is an
//! ordinary store entry, like a layer: a tree committed by rename under its key, a record
//! that makes it count as present, listed, verified and collected by `ccb cache`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Layout, Store, StoreError, remove_tree};
use crate::fsutil::{self, FsError};

/// At most this many checkpoints stacked in one layer's overlay (the manifests' `from` chains
/// keep room for them under overlayfs' layer limit: `manifest::MAX_FROM_CHAIN`).
pub const MAX_CHECKPOINTS: usize = 24;

/// `checkpoints/<key>/checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub key: String,
    /// `checkpoint:<image>:<arch>:<phase>/<step>` (see
    /// [`crate::action::checkpoint::CheckpointId`]).
    pub id: String,
    /// The layer's steps it covers: the first `steps` of them, in run order.
    pub steps: usize,
    /// The checkpoints under this one (it is an overlayfs upper directory over them and the
    /// layer's parent stack), top first.
    pub lowers: Vec<String>,
    /// The key of the layer the layer's steps run on.
    pub parent: String,
    pub tree: super::TreeSummary,
    /// Seconds since the epoch.
    pub created: u64,
}

impl CheckpointMeta {
    /// The trees of this checkpoint and the ones under it, top first.
    pub fn stack(&self, store: &Store) -> Vec<PathBuf> {
        std::iter::once(&self.key)
            .chain(&self.lowers)
            .map(|k| store.checkpoint_tree(k))
            .collect()
    }
}

/// `checkpoint-chains/<layer key>.json`: the checkpoints a committed layer was built through,
/// top first. `gc` keeps them as long as it keeps the layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckpointChain {
    pub checkpoints: Vec<String>,
}

impl Store {
    pub fn checkpoint_dir(&self, key: &str) -> PathBuf {
        self.path(&Layout::checkpoint_dir(key))
    }

    /// A checkpoint's files.
    pub fn checkpoint_tree(&self, key: &str) -> PathBuf {
        self.path(&Layout::checkpoint_tree(key))
    }

    pub fn checkpoint_meta(&self, key: &str) -> Option<CheckpointMeta> {
        self.read_json(&Layout::checkpoint_record(key))
    }

    /// A checkpoint and every checkpoint under it, if all are present.
    pub fn checkpoint_stack(&self, key: &str) -> Option<CheckpointMeta> {
        let meta = self.checkpoint_meta(key)?;
        meta.lowers
            .iter()
            .all(|l| self.checkpoint_meta(l).is_some())
            .then_some(meta)
    }

    /// Every checkpoint's key (whatever its record says).
    pub fn checkpoint_keys(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.path(Layout::CHECKPOINTS)) else {
            return Vec::new();
        };
        let mut out: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        out.sort();
        out
    }

    /// Moves a finished checkpoint tree into place in one rename, its record inside: a reader
    /// sees no checkpoint or a whole one. An existing one of the same key is kept (it stands
    /// for the same steps over the same inputs), and `tree` is removed.
    pub fn commit_checkpoint(&self, tree: &Path, meta: &CheckpointMeta) -> Result<(), StoreError> {
        let dest = self.checkpoint_dir(&meta.key);
        if self.checkpoint_meta(&meta.key).is_some() {
            return remove_tree(tree);
        }
        fsutil::sync_filesystem(tree)?;
        let staging = self.work_dir(&Layout::staging(&meta.key))?;
        std::fs::rename(tree, staging.join(Layout::TREE))
            .map_err(|e| FsError::new("move the checkpoint tree from", tree, e))?;
        let bytes = serde_json::to_vec_pretty(meta).map_err(|source| StoreError::Encode {
            path: staging.join(Layout::CHECKPOINT_RECORD),
            source,
        })?;
        fsutil::write_atomic(&staging.join(Layout::CHECKPOINT_RECORD), &bytes)?;
        fsutil::create_dir_all(dest.parent().expect("checkpoints/ has a parent"))?;
        if dest.exists() {
            // A torn one (no record): replace it.
            let old = self.work_dir(&Layout::replaced(&meta.key))?;
            std::fs::rename(&dest, old.join("checkpoint"))
                .map_err(|e| FsError::new("move aside", &dest, e))?;
            remove_tree(&old)?;
        }
        std::fs::rename(&staging, &dest)
            .map_err(|e| FsError::new("commit the checkpoint to", &dest, e))?;
        Ok(())
    }

    /// Removes a checkpoint: renamed away first, so a half-removed one is never found.
    pub fn remove_checkpoint(&self, key: &str) -> Result<(), StoreError> {
        self.remove_aside(&self.checkpoint_dir(key), key, "checkpoint")
    }

    pub fn checkpoint_chain(&self, layer_key: &str) -> CheckpointChain {
        self.read_json(&Layout::checkpoint_chain(layer_key))
            .unwrap_or_default()
    }
}
