//! Element digests: blake3 over an element directory's sorted relative paths, file contents,
//! exec bits and symlink targets.
//!
//! File content hashes are cached by (path, size, mtime, ctime, inode), so a warm run lists
//! directories and stats files but reads no element file. A file modified within two seconds
//! of being hashed is not cached (its stamp could repeat after a quick second edit: git's
//! "racy" entries).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ElementError;
use crate::fsutil::FsError;
use crate::fsutil::Stamp;
use crate::keydoc::{hash_bytes, hash_str};
use crate::store::Store;

const RECORD: &str = crate::store::Layout::ELEMENT_STATS;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    engine: String,
    files: BTreeMap<PathBuf, (Stamp, String)>,
}

/// The stat cache of element file hashes.
pub struct DigestCache {
    record: Record,
    dirty: bool,
    now_ns: i128,
    /// How many files were actually read (for tests and benchmarks).
    pub files_read: usize,
}

impl DigestCache {
    pub fn load(store: &Store) -> Self {
        let record = store
            .read_json::<Record>(RECORD)
            .filter(|r| r.engine == crate::ENGINE_VERSION)
            .unwrap_or_else(|| Record {
                engine: crate::ENGINE_VERSION.to_string(),
                files: BTreeMap::new(),
            });
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            record,
            dirty: false,
            now_ns,
            files_read: 0,
        }
    }

    /// An empty cache that is never saved.
    pub fn in_memory() -> Self {
        Self {
            record: Record::default(),
            dirty: false,
            now_ns: 0,
            files_read: 0,
        }
    }

    pub fn save(&self, store: &Store) {
        if self.dirty {
            // A cache that cannot be written only costs time on the next run.
            let _ = store.write_json(RECORD, &self.record);
        }
    }

    fn file_hash(&mut self, path: &Path, md: &std::fs::Metadata) -> Result<String, FsError> {
        let stamp = Stamp::of(md);
        if let Some((s, h)) = self.record.files.get(path)
            && *s == stamp
        {
            return Ok(h.clone());
        }
        let bytes = crate::fsutil::read(path)?;
        self.files_read += 1;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        if self.now_ns - stamp.mtime_ns.max(stamp.ctime_ns) > 2_000_000_000 {
            self.record
                .files
                .insert(path.to_path_buf(), (stamp, hash.clone()));
            self.dirty = true;
        }
        Ok(hash)
    }

    /// The digest of one element directory.
    pub fn element_digest(&mut self, dir: &Path) -> Result<String, ElementError> {
        let mut entries = collect(dir)?;
        entries.sort();
        let mut h = blake3::Hasher::new();
        hash_str(&mut h, "ccb-element-digest-v1");
        for (rel, path) in entries {
            let md =
                std::fs::symlink_metadata(&path).map_err(|e| FsError::new("stat", &path, e))?;
            hash_str(&mut h, &rel);
            let ft = md.file_type();
            if ft.is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|e| FsError::new("read link", &path, e))?;
                hash_str(&mut h, "symlink");
                hash_bytes(&mut h, target.as_os_str().as_encoded_bytes());
            } else if ft.is_dir() {
                hash_str(&mut h, "dir");
            } else if ft.is_file() {
                let exec = md.permissions().mode() & 0o111 != 0;
                hash_str(&mut h, if exec { "exec" } else { "file" });
                let fh = self.file_hash(&path, &md)?;
                hash_str(&mut h, &fh);
            } else {
                hash_str(&mut h, "special");
            }
        }
        Ok(h.finalize().to_hex().to_string())
    }
}

/// Every entry under `dir` (not following symlinks), as (relative path, full path). Python
/// bytecode caches are skipped, as DIB does when merging elements, and so is the element's
/// top-level `boot-checks.d/`: checks run on a booted image (`ccb test`) and never reach a
/// build, so editing one must not rebuild anything.
fn collect(dir: &Path) -> Result<Vec<(String, PathBuf)>, FsError> {
    let skipped = |e: &walkdir::DirEntry| {
        e.file_name() == "__pycache__"
            || e.path().extension().is_some_and(|x| x == "pyc")
            || (e.depth() == 1 && e.file_name() == "boot-checks.d")
    };
    let mut out = Vec::new();
    let entries = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !skipped(e));
    for entry in entries {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            FsError::new("list", &path, e.into())
        })?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .into_owned();
        out.push((rel, entry.into_path()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_digest_reads_no_file_and_any_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let el = dir.path().join("el");
        std::fs::create_dir_all(el.join("install.d")).unwrap();
        std::fs::write(el.join("README.rst"), "x\n").unwrap();
        std::fs::write(el.join("install.d/10-a"), "#!/bin/bash\n").unwrap();
        // Files younger than two seconds are never cached (racy stamps): let them age.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let store = Store::at(dir.path().join("cache"));

        let mut cold = DigestCache::load(&store);
        let d1 = cold.element_digest(&el).unwrap();
        assert_eq!(cold.files_read, 2);
        cold.save(&store);

        let mut warm = DigestCache::load(&store);
        assert_eq!(warm.element_digest(&el).unwrap(), d1);
        assert_eq!(warm.files_read, 0, "a warm run reads no element file");

        // The exec bit, a content edit and a symlink each change the digest.
        std::fs::set_permissions(
            el.join("install.d/10-a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let d2 = DigestCache::in_memory().element_digest(&el).unwrap();
        assert_ne!(d1, d2);
        std::fs::write(el.join("README.rst"), "y\n").unwrap();
        let d3 = DigestCache::in_memory().element_digest(&el).unwrap();
        assert_ne!(d2, d3);
        std::os::unix::fs::symlink("README.rst", el.join("README")).unwrap();
        let d4 = DigestCache::in_memory().element_digest(&el).unwrap();
        assert_ne!(d3, d4);
        // And the digest does not depend on where the element lives.
        let moved = dir.path().join("elsewhere");
        std::fs::rename(&el, &moved).unwrap();
        assert_eq!(DigestCache::in_memory().element_digest(&moved).unwrap(), d4);
    }
}
