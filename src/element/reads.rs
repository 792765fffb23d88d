//! Reads of element directories, memoised for one search path.
//!
//! Thousands of images share a handful of elements, and every image and arch's view lists the
//! same phase directories and reads the same `element-deps`, `package-installs.yaml` and
//! environment.d fragments: some seventy system calls per view, half a million for a cold
//! `ccb check` of 4,000 images. Elements do not change while ccb runs (their digests, taken
//! when the resolver starts, are in every key), so each directory is listed and each file
//! read once per [`SearchPath`](super::SearchPath), as Buck2 reads a file once per
//! invocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fsutil::FsError;

/// One entry of a directory, with what the views ask of it (symlinks followed).
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_file: bool,
    pub is_dir: bool,
    /// Any execute bit.
    pub executable: bool,
}

/// A memo of listings and file contents; shared by the elements of a search path.
#[derive(Debug, Default)]
pub struct Reads {
    lists: Mutex<HashMap<PathBuf, Arc<Vec<Entry>>>>,
    trees: Mutex<HashMap<PathBuf, Arc<Vec<String>>>>,
    files: Mutex<HashMap<PathBuf, Option<Arc<[u8]>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere leaves a memo of finished reads: still sound.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reads {
    /// The entries of `dir`, sorted by name; none when it does not exist. An error is not
    /// remembered (the next caller meets it again).
    pub fn list(&self, dir: &Path) -> Result<Arc<Vec<Entry>>, FsError> {
        if let Some(l) = lock(&self.lists).get(dir) {
            return Ok(l.clone());
        }
        let listing = Arc::new(list(dir)?);
        lock(&self.lists).insert(dir.to_path_buf(), listing.clone());
        Ok(listing)
    }

    /// Whether `path` is a regular file (symlinks followed), from its directory's listing.
    pub fn is_file(&self, path: &Path) -> bool {
        self.entry(path).is_some_and(|e| e.is_file)
    }

    /// Whether `path` is a directory (symlinks followed), from its directory's listing.
    pub fn is_dir(&self, path: &Path) -> bool {
        self.entry(path).is_some_and(|e| e.is_dir)
    }

    fn entry(&self, path: &Path) -> Option<Entry> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        let listing = self.list(dir).ok()?;
        listing.iter().find(|e| *e.name == *name).cloned()
    }

    /// Every file under `dir`, relative to it, sorted (symlinked directories not followed).
    pub fn tree(&self, dir: &Path) -> Result<Arc<Vec<String>>, FsError> {
        if let Some(t) = lock(&self.trees).get(dir) {
            return Ok(t.clone());
        }
        let mut files = Vec::new();
        tree_files(dir, dir, &mut files)?;
        files.sort();
        let files = Arc::new(files);
        lock(&self.trees).insert(dir.to_path_buf(), files.clone());
        Ok(files)
    }

    /// The bytes of `path`; `None` when it does not exist.
    pub fn bytes(&self, path: &Path) -> Result<Option<Arc<[u8]>>, FsError> {
        if let Some(b) = lock(&self.files).get(path) {
            return Ok(b.clone());
        }
        let bytes = match crate::fsutil::read(path) {
            Ok(b) => Some(Arc::from(b)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        lock(&self.files).insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }

    /// The text of `path`; `None` when it does not exist, an error when it is not UTF-8.
    pub fn text(&self, path: &Path) -> Result<Option<String>, FsError> {
        let Some(bytes) = self.bytes(path)? else {
            return Ok(None);
        };
        match std::str::from_utf8(&bytes) {
            Ok(t) => Ok(Some(t.to_string())),
            Err(_) => Err(FsError::new(
                "read",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ),
            )),
        }
    }
}

fn list(dir: &Path) -> Result<Vec<Entry>, FsError> {
    use std::os::unix::fs::PermissionsExt;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FsError::new("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| FsError::new("list", dir, e))?;
        let path = entry.path();
        // A dangling symlink is neither a file nor a directory, as `Path::is_file` says.
        let md = std::fs::metadata(&path).ok();
        out.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            is_file: md.as_ref().is_some_and(|m| m.is_file()),
            is_dir: md.as_ref().is_some_and(|m| m.is_dir()),
            executable: md.is_some_and(|m| m.permissions().mode() & 0o111 != 0),
            path,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn tree_files(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<(), FsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::new("list", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| FsError::new("list", dir, e))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| FsError::new("stat", &path, e))?;
        if ft.is_dir() {
            tree_files(&path, base, out)?;
        } else {
            out.push(
                path.strip_prefix(base)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    Ok(())
}
