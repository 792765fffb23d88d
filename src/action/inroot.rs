//! Host-side access to an image tree that cannot leave the tree.
//!
//! ccb writes into image trees from the host (install-static, install-bin, `/etc/fstab`, the
//! chroot's resolv.conf and policy-rc.d, mount points) and reads from them (the ESP, the DIB
//! manifests, logs to truncate). The tree belongs to the image, and so do its symlinks: every
//! Debian base has `/var/run -> /run`, and a hostile element can make `/etc -> /etc` or
//! `/boot/efi -> /root`. `root.join(path)` follows such a link on the host, as root. Here every
//! path is resolved by the kernel as the image would see it after `chroot`: `openat2` with
//! `RESOLVE_IN_ROOT` makes `..` and absolute links stop at the tree's root, so `/run` inside
//! the tree is `<tree>/run`, never the host's.
//!
//! A resolved path is turned back into the tree's real path (no symlink left in it), so the
//! callers keep using path-based tools (`cp`, `mount`). That is sound because nothing runs in
//! the image while the host works on it: the sandbox ends every process of a phase with it.
//! The last component is never followed where that matters (writes, removals, new links).

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// An image tree opened for confined access.
#[derive(Debug)]
pub struct TreeRoot {
    fd: OwnedFd,
    /// The tree's real path (symlinks resolved), the prefix of every path handed out.
    real: PathBuf,
}

impl TreeRoot {
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let real = fd_path(&fd)?;
        Ok(Self { fd, real })
    }

    /// The tree's own (real) path.
    pub fn path(&self) -> &Path {
        &self.real
    }

    /// `rel` (absolute or not: both mean inside the tree) resolved as the image sees it,
    /// following every link, the last one included, without leaving the tree.
    pub fn resolve(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let rel = inner(rel.as_ref());
        if rel.as_os_str().is_empty() {
            return Ok(self.real.clone());
        }
        let fd = rustix::fs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )?;
        let real = fd_path(&fd)?;
        if !real.starts_with(&self.real) {
            // The kernel keeps RESOLVE_IN_ROOT inside; a tree moved under ccb's feet would
            // land here. Refuse rather than hand out a host path.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} resolves outside the image tree", rel.display()),
            ));
        }
        Ok(real)
    }

    /// Like [`resolve`](Self::resolve) but `None` when the path does not exist.
    pub fn resolve_existing(&self, rel: impl AsRef<Path>) -> io::Result<Option<PathBuf>> {
        match self.resolve(rel) {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A directory inside the tree, `None` when absent or not a directory.
    pub fn dir(&self, rel: impl AsRef<Path>) -> io::Result<Option<PathBuf>> {
        Ok(self.resolve_existing(rel)?.filter(|p| p.is_dir()))
    }

    /// The real path of `rel`'s parent joined with its last component, which is *not*
    /// followed: the path to write, remove or create a link at.
    pub fn entry(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let rel = inner(rel.as_ref());
        let name = last_name(rel)?;
        let parent = self.resolve(rel.parent().unwrap_or(Path::new("")))?;
        Ok(parent.join(name))
    }

    /// `mkdir -p` inside the tree; links on the way are followed inside it. Returns the
    /// directory's real path.
    pub fn create_dir_all(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<PathBuf> {
        let rel = inner(rel.as_ref());
        let mut done = PathBuf::new();
        for c in rel.components() {
            done.push(c);
            match self.resolve(&done) {
                Ok(p) if p.is_dir() => continue,
                Ok(p) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a directory", p.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let at = self.entry(&done)?;
                    match std::fs::DirBuilder::new().mode(mode).create(&at) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.resolve(rel)
    }

    /// Writes a regular file at `rel` atomically (a temporary file beside it, then a
    /// rename over whatever was there, a link included), owned by root with `mode`.
    pub fn write(&self, rel: impl AsRef<Path>, contents: &[u8], mode: u32) -> io::Result<()> {
        self.install(rel, mode, |f| f.write_all(contents))
    }

    /// Copies the host file `src` (an element's file: a regular file, never a FIFO or a
    /// device) to `rel` in the tree, atomically, owned by root with `mode`.
    pub fn copy_in(&self, src: &Path, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let mut from = crate::fsutil::open_regular(src)?;
        self.install(rel, mode, |f| io::copy(&mut from, f).map(drop))
    }

    fn install(
        &self,
        rel: impl AsRef<Path>,
        mode: u32,
        fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
    ) -> io::Result<()> {
        let target = self.entry(rel)?;
        let dir = target.parent().unwrap_or(&self.real);
        let mut tmp = tempfile::Builder::new().prefix(".ccb-").tempfile_in(dir)?;
        fill(tmp.as_file_mut())?;
        let f = tmp.as_file();
        rustix::fs::fchown(
            f.as_fd(),
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
        )?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&target)?;
        }
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(())
    }

    /// Removes `rel` itself (a link is removed, not what it points to); a directory with
    /// everything below it. Absent is fine.
    pub fn remove(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let at = match self.entry(rel) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_entry(&at)
    }

    /// Makes `rel` a symlink to `target` (kept verbatim: it is the image's link),
    /// replacing what was there.
    pub fn symlink(&self, target: &Path, rel: impl AsRef<Path>) -> io::Result<()> {
        let at = self.entry(rel)?;
        remove_entry(&at)?;
        std::os::unix::fs::symlink(target, &at)
    }
}

/// Removes a path that has no link before its last component: a link or file is unlinked,
/// a directory removed with its contents (std's `remove_dir_all` never follows links).
pub fn remove_entry(at: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(at) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(at),
        Ok(_) => std::fs::remove_file(at),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `rel` with any leading `/` removed: inside the tree, `/etc` and `etc` are the same.
fn inner(rel: &Path) -> &Path {
    rel.strip_prefix("/").unwrap_or(rel)
}

fn last_name(rel: &Path) -> io::Result<OsString> {
    match rel.components().next_back() {
        Some(Component::Normal(name)) => Ok(name.to_os_string()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` does not name an entry in the tree", rel.display()),
        )),
    }
}

/// The path the kernel gives an open file descriptor (no link left in it).
fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A tree whose links point at the host, as a hostile (or ordinary Debian) image has them.
    fn hostile_tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let tree = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("run")).unwrap();
        std::fs::create_dir(tree.path().join("var")).unwrap();
        symlink("/run", tree.path().join("var/run")).unwrap();
        symlink(host.path(), tree.path().join("escape")).unwrap();
        symlink("../../../../../..", tree.path().join("up")).unwrap();
        (tree, host)
    }

    #[test]
    fn an_absolute_link_resolves_inside_the_tree_as_after_chroot() {
        let (tree, _host) = hostile_tree();
        let root = TreeRoot::open(tree.path()).unwrap();
        let real = root.resolve("var/run").unwrap();
        assert_eq!(real, root.path().join("run"));
    }

    #[test]
    fn writes_through_links_to_the_host_land_inside_the_tree() {
        let (tree, host) = hostile_tree();
        let root = TreeRoot::open(tree.path()).unwrap();
        // /escape -> <host dir>: inside the tree that is <tree>/<host dir>, which does not
        // exist, so the write fails rather than landing in the host directory.
        let err = root.write("escape/owned", b"x", 0o644).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!host.path().join("owned").exists());
        // As `mkdir -p` after chroot: the link dangles inside the tree, so this fails too.
        root.create_dir_all("escape/sub", 0o755).unwrap_err();
        assert!(!host.path().join("sub").exists());
        root.write("up/etc/x", b"x", 0o600).unwrap_err();
        root.create_dir_all("up/etc", 0o755).unwrap();
        root.write("up/etc/x", b"x", 0o600).unwrap();
        assert!(
            root.path().join("etc/x").is_file(),
            "`..` stops at the tree's root"
        );
    }

    #[test]
    fn a_write_replaces_a_link_at_the_last_component_instead_of_following_it() {
        let (tree, host) = hostile_tree();
        std::fs::write(host.path().join("passwd"), b"host\n").unwrap();
        symlink(host.path().join("passwd"), tree.path().join("fstab")).unwrap();
        let root = TreeRoot::open(tree.path()).unwrap();
        root.write("/fstab", b"image\n", 0o644).unwrap();
        assert_eq!(
            std::fs::read(host.path().join("passwd")).unwrap(),
            b"host\n"
        );
        let meta = std::fs::symlink_metadata(tree.path().join("fstab")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn removing_a_link_to_a_host_directory_removes_only_the_link() {
        let (tree, host) = hostile_tree();
        std::fs::write(host.path().join("keep"), b"").unwrap();
        let root = TreeRoot::open(tree.path()).unwrap();
        root.remove("escape").unwrap();
        assert!(host.path().join("keep").exists());
        assert!(std::fs::symlink_metadata(tree.path().join("escape")).is_err());
    }
}
