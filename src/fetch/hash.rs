//! Hashing large files at the speed of the disk, and never twice.
//!
//! - [`blake3_file`]: blake3 over a memory map, split across threads (the blake3 crate's
//!   `update_mmap_rayon`): the store's own check of an artifact, GB/s on a warm page cache.
//! - [`StatCache`]: `stat/artifacts.json` remembers, per store file, the (size, mtime, ctime,
//!   inode) it had when its blake3 was last verified; a file whose stat is unchanged is not read
//!   again. The store's artifacts are written once and made read-only, so a changed stamp means
//!   someone touched the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::Stamp;
use crate::store::Store;

const RECORD: &str = crate::store::Layout::ARTIFACT_STATS;

/// The blake3 of a file, memory-mapped and hashed on every core.
pub fn blake3_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)?;
    Ok(h.finalize().to_hex().to_string())
}

/// The SHA-256 of a file, streamed (the pin's algorithm: one thread, SHA-NI where the CPU has
/// it).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of bytes in memory, hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of everything a reader holds, read in order (a remote object by ranges).
pub fn sha256_read_at(src: &dyn crate::readat::ReadAt) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let size = src.size();
    let mut buf = vec![0u8; 8 << 20];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        src.read_at(at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    files: BTreeMap<PathBuf, (Stamp, String)>,
}

/// Verified blake3 digests of store files by their stat.
pub struct StatCache {
    record: Record,
    dirty: bool,
    /// Files actually read (for tests and the benchmark).
    pub files_read: usize,
}

impl StatCache {
    pub fn load(store: &Store) -> Self {
        Self {
            record: store.read_json(RECORD).unwrap_or_default(),
            dirty: false,
            files_read: 0,
        }
    }

    pub fn save(&self, store: &Store) {
        if self.dirty {
            // A cache that cannot be written only costs a re-hash next time.
            let _ = store.write_json(RECORD, &self.record);
        }
    }

    /// The blake3 of `path`: remembered while its stat is unchanged, else read and hashed.
    pub fn blake3(&mut self, path: &Path) -> std::io::Result<String> {
        let stamp = Stamp::of(&std::fs::metadata(path)?);
        if let Some((s, h)) = self.record.files.get(path)
            && *s == stamp
        {
            return Ok(h.clone());
        }
        let h = blake3_file(path)?;
        self.files_read += 1;
        self.remember(path, stamp, &h);
        Ok(h)
    }

    /// Records a digest computed elsewhere (while the file was written).
    pub fn remember(&mut self, path: &Path, stamp: Stamp, blake3: &str) {
        self.record
            .files
            .insert(path.to_path_buf(), (stamp, blake3.to_string()));
        self.dirty = true;
    }

    pub fn forget(&mut self, path: &Path) {
        self.dirty |= self.record.files.remove(path).is_some();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_of_a_file_matches_the_streaming_hash_across_thread_splits() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        // Larger than one rayon split and not a multiple of a chunk.
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&f, &data).unwrap();
        assert_eq!(
            blake3_file(&f).unwrap(),
            blake3::hash(&data).to_hex().to_string()
        );
    }

    #[test]
    fn an_unchanged_file_is_not_read_again_and_a_touched_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let f = dir.path().join("a");
        std::fs::write(&f, b"one").unwrap();
        let mut c = StatCache::load(&store);
        let h1 = c.blake3(&f).unwrap();
        c.save(&store);
        let mut warm = StatCache::load(&store);
        assert_eq!(warm.blake3(&f).unwrap(), h1);
        assert_eq!(warm.files_read, 0);
        std::fs::write(&f, b"two!").unwrap();
        assert_ne!(warm.blake3(&f).unwrap(), h1);
        assert_eq!(warm.files_read, 1);
    }
}
