//! Filesystem trees: copying, merging overlay diffs without overlayfs, digests and sizes.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::inroot::TreeRoot;

use crate::store::tree::OPAQUE_XATTR;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("failed to {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("copying `{}`", from.display())]
    Copy {
        from: PathBuf,
        #[source]
        source: crate::process::ProcessError,
    },
}

impl From<crate::fsutil::FsError> for TreeError {
    fn from(e: crate::fsutil::FsError) -> Self {
        TreeError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> TreeError + use<'p> {
    move |source| TreeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the contents of `src` into `dst` (created if needed), keeping owners, modes,
/// hard links, xattrs, devices and sparse files. `cp -a` does all of that correctly; a Rust
/// re-implementation would be a second, less tested copy of it.
pub fn copy_contents(src: &Path, dst: &Path) -> Result<(), TreeError> {
    std::fs::create_dir_all(dst).map_err(io_err("create directory", dst))?;
    cp_a(src, &src.join("."), dst, &["--no-target-directory"])
}

/// `cp -a --reflink=auto [extra] from to`, its failure named after `src`.
pub fn cp_a(src: &Path, from: &Path, to: &Path, extra: &[&str]) -> Result<(), TreeError> {
    crate::process::Process::new("cp")
        .args(["-a", "--reflink=auto"])
        .args(extra)
        .arg(from)
        .arg(to)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| TreeError::Copy {
            from: src.to_path_buf(),
            source,
        })?;
    Ok(())
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

fn remove_any(path: &Path) -> Result<(), TreeError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err("remove", path)),
    }
}

// Not walkdir: the digest is defined over this order (lossy UTF-8 names, sorted as strings),
// which every stored layer's digest was made with; walkdir's `sort_by_file_name` orders
// OsStr bytes, which differs for names that are not UTF-8, and would change those digests.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, TreeError> {
    Ok(crate::store::tree::sorted_entries(dir)?)
}

/// Applies an overlayfs upper directory (`diff`) onto a plain tree `dst`, the way overlayfs
/// would present it: whiteouts delete, opaque directories replace, everything else overwrites.
/// Used where overlayfs is unavailable, to flatten a stack of layers into one tree.
pub fn apply_diff(diff: &Path, dst: &Path) -> Result<(), TreeError> {
    // 1. Deletions first, so that the copy below lands in a clean place.
    fn deletions(diff: &Path, dst: &Path) -> Result<(), TreeError> {
        for (name, path) in sorted_entries(diff)? {
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
            let target = dst.join(&name);
            if is_whiteout(&meta) || (meta.is_dir() && is_opaque(&path)) {
                remove_any(&target)?;
            } else if meta.is_dir() {
                match std::fs::symlink_metadata(&target) {
                    Ok(t) if !t.is_dir() => remove_any(&target)?,
                    Ok(_) => deletions(&path, &target)?,
                    Err(_) => {}
                }
            } else if let Ok(t) = std::fs::symlink_metadata(&target)
                && t.is_dir()
            {
                remove_any(&target)?;
            }
        }
        Ok(())
    }
    deletions(diff, dst)?;
    // 2. Everything else.
    copy_contents(diff, dst)?;
    // 3. The copy brought the markers along: drop them.
    fn markers(diff: &Path, dst: &Path) -> Result<(), TreeError> {
        for (name, path) in sorted_entries(diff)? {
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
            let target = dst.join(&name);
            if is_whiteout(&meta) {
                remove_any(&target)?;
            } else if meta.is_dir() {
                if is_opaque(&target) {
                    let _ = xattr::remove(&target, OPAQUE_XATTR);
                }
                markers(&path, &target)?;
            }
        }
        Ok(())
    }
    markers(diff, dst)
}

/// Whether a freshly made root tree is effectively empty (DIB's "Failed to deploy the root
/// element" check: nothing but `lost+found` or `tmp`).
pub fn looks_empty(root: &Path) -> bool {
    match std::fs::read_dir(root) {
        Err(_) => true,
        Ok(entries) => entries
            .filter_map(Result::ok)
            .all(|e| matches!(e.file_name().to_str(), Some("lost+found" | "tmp"))),
    }
}

/// Copies one element directory into the merged hooks tree, DIB's way: every top-level
/// directory (but `tests` and `__pycache__`) merges into the same-named directory of the
/// tree, nested files overwrite; top-level files (but `*.pyc`) go to the tree's root.
pub fn merge_element(element_dir: &Path, hooks: &Path) -> Result<(), TreeError> {
    for (name, path) in sorted_entries(element_dir)? {
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io_err("inspect", &path))?;
        if meta.is_dir() {
            if name == "tests" || name == "__pycache__" || name == "boot-checks.d" {
                continue;
            }
            merge_dir(&path, &hooks.join(&name))?;
        } else if !name.ends_with(".pyc") {
            copy_file(&path, &hooks.join(&name))?;
        }
    }
    Ok(())
}

fn merge_dir(src: &Path, dst: &Path) -> Result<(), TreeError> {
    std::fs::create_dir_all(dst).map_err(io_err("create directory", dst))?;
    for (name, path) in sorted_entries(src)? {
        let target = dst.join(&name);
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path).map_err(io_err("read link", &path))?;
            remove_any(&target)?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_err("create link", &target))?;
        } else if meta.is_dir() {
            merge_dir(&path, &target)?;
        } else {
            copy_file(&path, &target)?;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<(), TreeError> {
    if let Ok(m) = std::fs::symlink_metadata(dst)
        && (m.is_dir() || m.file_type().is_symlink())
    {
        remove_any(dst)?;
    }
    std::fs::copy(src, dst).map_err(io_err("copy to", dst))?;
    Ok(())
}

/// How [`install_static`] sets the modes of what it installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// DIB's install-static (rsync -lCr): new files get the source mode without set-id bits,
    /// masked by 022; existing files keep their mode.
    Static,
    /// `cp -RP --preserve=mode` (dib-init-system's init scripts): the source's mode.
    Keep,
}

/// install-static's copy of one element's `static/` (`src`) onto `rel` in the image, with DIB's
/// (rsync -lCr) semantics for ownership and modes: symlinks kept, everything owned by root,
/// modes per [`Modes`]. Unlike rsync -C, no file is silently skipped (`*.so`, `core`, …).
/// Every path is resolved inside the image (`/var/run -> /run` is the image's /run, never the
/// host's); a source that is not a regular file, directory or link is refused.
pub fn install_static(
    src: &Path,
    root: &TreeRoot,
    rel: &Path,
    modes: Modes,
) -> Result<u64, TreeError> {
    let mut n = 0;
    for (name, path) in sorted_entries(src)? {
        let rel_child = rel.join(&name);
        let in_image = |e: io::Error| TreeError::Io {
            action: "install into the image",
            path: Path::new("/").join(&rel_child),
            source: e,
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        let source_mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path).map_err(io_err("read link", &path))?;
            root.symlink(&link, &rel_child).map_err(in_image)?;
            let at = root.entry(&rel_child).map_err(in_image)?;
            std::os::unix::fs::lchown(&at, Some(0), Some(0)).map_err(in_image)?;
            n += 1;
        } else if meta.is_dir() {
            // A directory symlink in the image (/lib → usr/lib) is followed, as rsync -l
            // does on the receiving side — inside the image.
            if root.dir(&rel_child).map_err(in_image)?.is_none() {
                let mode = match modes {
                    Modes::Static => source_mode & 0o777 & !0o022,
                    Modes::Keep => source_mode & 0o7777,
                };
                root.remove(&rel_child).map_err(in_image)?;
                let made = root.create_dir_all(&rel_child, 0o700).map_err(in_image)?;
                std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode))
                    .map_err(in_image)?;
            }
            n += install_static(&path, root, &rel_child, modes)?;
        } else if meta.is_file() {
            let old_mode = root
                .resolve_existing(&rel_child)
                .map_err(in_image)?
                .and_then(|p| std::fs::metadata(p).ok())
                .filter(|m| m.is_file())
                .map(|m| m.permissions().mode());
            let mode = match (modes, old_mode) {
                (Modes::Static, Some(m)) => m & 0o7777,
                (Modes::Static, None) => source_mode & 0o777 & !0o022,
                (Modes::Keep, _) => source_mode & 0o7777,
            };
            root.copy_in(&path, &rel_child, mode)
                .map_err(|e| TreeError::Io {
                    action: "install",
                    path: path.clone(),
                    source: e,
                })?;
            n += 1;
        } else {
            return Err(TreeError::Io {
                action: "install (not a regular file, directory or link)",
                path,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_root_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(looks_empty(dir.path()));
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        assert!(looks_empty(dir.path()));
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        assert!(!looks_empty(dir.path()));
    }
}
