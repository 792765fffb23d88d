//! The store: ccb's cache directory (`$CCB_CACHE_DIR`, default `$XDG_CACHE_HOME/ccb`).
//!
//! Every write is atomic (temp file + rename), so two ccb processes can share one store and a
//! killed process never leaves a half-written record that looks finished. Records are JSON;
//! a record that fails to parse (an older ccb, a torn disk) is treated as absent, never as an
//! error: the store is a cache, and a miss only costs time.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fsutil::{self, FsError};

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

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }
}

/// A short, stable file name for a path-like identity (a project root, an action id).
pub fn name_for(identity: &str) -> String {
    blake3::hash(identity.as_bytes()).to_hex()[..32].to_string()
}
