//! Tree digests: what a committed layer, checkpoint or disk output holds, hashed the same
//! way by the builder that commits it and the reader that verifies or unpacks it (`action`,
//! `remote`, `ccb cache verify`), so it lives under all of them.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::TreeSummary;
use crate::fsutil::FsError;

/// overlayfs marks an opaque directory (hide everything below it) with this xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// A directory's entries by name, sorted (the order digests and merges walk in).
pub fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, FsError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(FsError::at("read directory", dir))? {
        let entry = entry.map_err(FsError::at("read directory", dir))?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}

/// Files from this size on are hashed on every core.
const BIG_FILE: u64 = 1 << 20;

/// Digests a tree. Any change a build could observe (a byte, a mode, an owner, an xattr, a
/// whiteout) changes the digest; timestamps do not, as they differ on every build.
pub fn summarize(root: &Path) -> Result<TreeSummary, FsError> {
    let mut h = blake3::Hasher::new();
    h.update(b"ccb-tree-v1\0");
    let mut sum = TreeSummary::default();
    walk(root, "", &mut h, &mut sum)?;
    sum.digest = h.finalize().to_hex().to_string();
    Ok(sum)
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn walk(
    dir: &Path,
    rel: &str,
    h: &mut blake3::Hasher,
    sum: &mut TreeSummary,
) -> Result<(), FsError> {
    for (name, path) in sorted_entries(dir)? {
        let meta = std::fs::symlink_metadata(&path).map_err(FsError::at("inspect", &path))?;
        let rel = format!("{rel}/{name}");
        sum.entries += 1;
        put(h, rel.as_bytes());
        h.update(&meta.mode().to_le_bytes());
        h.update(&meta.uid().to_le_bytes());
        h.update(&meta.gid().to_le_bytes());
        let ft = meta.file_type();
        if ft.is_file() {
            sum.bytes += meta.len();
            let mut fh = blake3::Hasher::new();
            if meta.len() >= BIG_FILE {
                hash_big_file(&path, meta.len(), &mut fh).map_err(FsError::at("read", &path))?;
            } else {
                let f = std::fs::File::open(&path).map_err(FsError::at("read", &path))?;
                fh.update_reader(f).map_err(FsError::at("read", &path))?;
            }
            h.update(fh.finalize().as_bytes());
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(FsError::at("read link", &path))?;
            put(h, target.as_os_str().as_encoded_bytes());
        } else if ft.is_char_device() || ft.is_block_device() {
            h.update(&meta.rdev().to_le_bytes());
        }
        let mut attrs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if let Ok(names) = xattr::list(&path) {
            for n in names {
                if is_overlay_bookkeeping(&n) {
                    continue;
                }
                if let Ok(Some(v)) = xattr::get(&path, &n) {
                    attrs.insert(n.as_encoded_bytes().to_vec(), v);
                }
            }
        }
        h.update(&(attrs.len() as u64).to_le_bytes());
        for (k, v) in attrs {
            put(h, &k);
            put(h, &v);
        }
        if ft.is_dir() {
            walk(&path, &rel, h, sum)?;
        }
    }
    Ok(())
}

/// Hashes a big file (a disk's outputs are GBs) on every core. Its holes (half of a raw disk)
/// are hashed as zeros from memory: mapped or read, the kernel zero-filled a page cache page
/// for every hole page first, seconds of CPU for a raw disk.
fn hash_big_file(path: &Path, len: u64, h: &mut blake3::Hasher) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PIECE: usize = 8 << 20;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; PIECE];
    let zeros = vec![0u8; PIECE];
    let hash_zeros = |h: &mut blake3::Hasher, mut n: u64| {
        while n > 0 {
            let k = n.min(PIECE as u64);
            h.update_rayon(&zeros[..k as usize]);
            n -= k;
        }
    };
    let mut at = 0;
    for (a, b) in crate::fsutil::data_ranges(&f, 0, len) {
        hash_zeros(h, a - at);
        at = a;
        while at < b {
            let k = (b - at).min(PIECE as u64) as usize;
            f.read_exact_at(&mut buf[..k], at)?;
            h.update_rayon(&buf[..k]);
            at += k as u64;
        }
    }
    hash_zeros(h, len - at);
    Ok(())
}

/// overlayfs' own records in an upper directory (`origin`, `impure`, ...: file handles of the
/// lower inodes it copied up from), which no build observes through the overlay and which
/// differ between two builds of the same tree. The opaque marker does change what is seen.
fn is_overlay_bookkeeping(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b"trusted.overlay.") && name != OPAQUE_XATTR.as_bytes()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn digest_changes_with_content_and_mode_but_not_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/motd"), "hello\n").unwrap();
        let a = summarize(dir.path()).unwrap();
        assert_eq!(a.entries, 2);
        assert_eq!(a.bytes, 6);
        let f = std::fs::File::options()
            .write(true)
            .open(dir.path().join("etc/motd"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(summarize(dir.path()).unwrap(), a, "mtime is not an input");
        std::fs::set_permissions(
            dir.path().join("etc/motd"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let b = summarize(dir.path()).unwrap();
        assert_ne!(a.digest, b.digest, "a mode change is visible");
        std::fs::write(dir.path().join("etc/motd"), "hellO\n").unwrap();
        assert_ne!(b.digest, summarize(dir.path()).unwrap().digest);
    }

    #[test]
    fn a_big_files_bytes_are_its_digest_holes_reading_as_zeros() {
        use std::os::unix::fs::FileExt;
        // Big files (a disk's outputs) are hashed another way than small ones: the digest must
        // still be of their bytes only, a hole the same as zeros written.
        let len = 3 * BIG_FILE + 123;
        let tree = |sparse: bool| {
            let dir = tempfile::tempdir().unwrap();
            let f = std::fs::File::create(dir.path().join("disk.raw")).unwrap();
            f.write_all_at(b"start", 0).unwrap();
            if !sparse {
                f.write_all_at(&vec![0u8; (len - 10) as usize], 5).unwrap();
            }
            f.write_all_at(b"end!!", len - 5).unwrap();
            f.set_len(len).unwrap();
            dir
        };
        let (sparse, written) = (tree(true), tree(false));
        let digest = summarize(sparse.path()).unwrap();
        assert_eq!(digest.bytes, len);
        assert_eq!(digest, summarize(written.path()).unwrap());
        std::fs::File::options()
            .write(true)
            .open(sparse.path().join("disk.raw"))
            .unwrap()
            .write_all_at(b"x", 2 * BIG_FILE)
            .unwrap();
        assert_ne!(digest.digest, summarize(sparse.path()).unwrap().digest);
    }
}
