//! Read-only filesystems inside an image: ext4 (through `ext4-view`) and XFS (through
//! `xfs_db -r` on a sparse copy of the partition).
//!
//! Every path is resolved inside the image, symlinks included: `/bin -> usr/bin` and
//! `/usr/bin/editor -> /etc/alternatives/editor` lead to the image's files, never the host's.
//! Paths are absolute in the image; a relative path is taken from the image's root.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;

use crate::process::Process;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::ReadAt;

/// The most [`Filesystem::read`] reads: files the checks need (dpkg status, os-release,
/// configuration) are far smaller, and an image must not make us allocate without bound.
pub const MAX_READ: u64 = 256 << 20;

/// The most entries [`Filesystem::read_dir`] returns: a directory in a real image has at most
/// tens of thousands; a corrupt one must not fill the memory.
pub const MAX_DIR_ENTRIES: usize = 1 << 18;

/// How many symlinks one path may go through, as Linux's `MAXSYMLINKS`: more is a loop.
pub const MAX_SYMLINK_HOPS: usize = 40;

/// The longest symlink target Linux accepts (`PATH_MAX`).
const MAX_LINK_TARGET: usize = 4096;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FsError {
    #[error("{path}: no such file or directory in the image")]
    #[diagnostic(code(ccb::inspect::fs::not_found))]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    #[diagnostic(code(ccb::inspect::fs::not_a_directory))]
    NotADirectory { path: String },
    #[error("{path}: is a directory")]
    #[diagnostic(code(ccb::inspect::fs::is_a_directory))]
    IsADirectory { path: String },
    #[error("{path}: not a regular file")]
    #[diagnostic(code(ccb::inspect::fs::not_a_file))]
    NotAFile { path: String },
    #[error("{path}: not a symlink")]
    #[diagnostic(code(ccb::inspect::fs::not_a_symlink))]
    NotASymlink { path: String },
    #[error("{path}: too many levels of symbolic links (a loop, or more than {MAX_SYMLINK_HOPS})")]
    #[diagnostic(code(ccb::inspect::fs::symlink_loop))]
    SymlinkLoop { path: String },
    #[error("{path}: {size} bytes, more than the {limit} this reads")]
    #[diagnostic(code(ccb::inspect::fs::too_large))]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: directory has more than {limit} entries")]
    #[diagnostic(code(ccb::inspect::fs::dir_too_large))]
    DirTooLarge { path: String, limit: usize },
    #[error("{path}: not a valid path in the image")]
    #[diagnostic(code(ccb::inspect::fs::bad_path))]
    BadPath { path: String },
    #[error("{fs}: unsupported filesystem feature: {feature}")]
    #[diagnostic(
        code(ccb::inspect::fs::unsupported),
        help(
            "ccb reads images without mounting them and does not handle this feature; build the image without it, or inspect it with libguestfs"
        )
    )]
    Unsupported { fs: &'static str, feature: String },
    #[error("{fs}: corrupt filesystem: {detail}")]
    #[diagnostic(code(ccb::inspect::fs::corrupt))]
    Corrupt { fs: &'static str, detail: String },
    #[error("no ext4 or XFS filesystem here (no superblock magic)")]
    #[diagnostic(code(ccb::inspect::fs::unknown))]
    Unrecognized,
    #[error("{tool}: {detail}")]
    #[diagnostic(
        code(ccb::inspect::fs::tool),
        help("XFS is read through `xfs_db` from xfsprogs (`apt-get install xfsprogs`)")
    )]
    Tool { tool: &'static str, detail: String },
    #[error("reading the image: {0}")]
    #[diagnostic(code(ccb::inspect::fs::io))]
    Io(#[from] std::io::Error),
}

/// What an inode is. Devices, FIFOs and sockets are all `Other`: the checks never open them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`); the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes; for a symlink, the length of its target.
    pub size: u64,
    /// Last modification, seconds since 1970.
    pub mtime: i64,
}

impl Metadata {
    /// A regular file that someone may execute: what `test -x` says for root.
    pub fn is_executable(&self) -> bool {
        self.kind == FileKind::File && self.mode & 0o111 != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name as stored; bytes that are not UTF-8 are replaced (U+FFFD), so such a name
    /// cannot be opened by path.
    pub name: String,
    pub kind: FileKind,
}

/// A read-only filesystem inside an image. `&self` everywhere: one filesystem is shared by the
/// checks, which may run in parallel.
pub trait Filesystem: Send + Sync {
    /// `"ext4"` or `"xfs"`.
    fn kind(&self) -> &'static str;
    /// Follows symlinks, all inside the image.
    fn metadata(&self, path: &str) -> Result<Metadata, FsError>;
    /// Does not follow a symlink in the last component (intermediate ones are followed).
    fn symlink_metadata(&self, path: &str) -> Result<Metadata, FsError>;
    /// The content of a regular file (following symlinks), refused if it is over `limit` bytes.
    fn read_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError>;
    /// The entries of a directory (following symlinks) without `.` and `..`, in on-disk order.
    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError>;
    /// The target of a symlink, as stored.
    fn read_link(&self, path: &str) -> Result<String, FsError>;
    /// The absolute path in the image with every symlink, `.` and `..` resolved.
    fn canonicalize(&self, path: &str) -> Result<String, FsError>;

    /// The content of a regular file of at most [`MAX_READ`] bytes.
    fn read(&self, path: &str) -> Result<Vec<u8>, FsError> {
        self.read_limited(path, MAX_READ)
    }
}

/// The filesystems this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

/// Which filesystem `src` holds, by superblock magic (`None`: neither ext4 nor XFS).
pub fn probe(src: &dyn ReadAt) -> Result<Option<FsType>, FsError> {
    let mut head = [0u8; 4];
    if src.size() >= 4 {
        src.read_at(0, &mut head)?;
        if &head == b"XFSB" {
            return Ok(Some(FsType::Xfs));
        }
    }
    // s_magic, at byte 56 of the superblock, which starts at 1024 (ext2, ext3 and ext4 alike).
    let mut magic = [0u8; 2];
    if src.size() >= 1024 + 58 {
        src.read_at(1024 + 56, &mut magic)?;
        if u16::from_le_bytes(magic) == 0xEF53 {
            return Ok(Some(FsType::Ext4));
        }
    }
    Ok(None)
}

/// Opens the filesystem that `src` holds (see [`probe`]).
pub fn open(src: Arc<dyn ReadAt>) -> Result<Box<dyn Filesystem>, FsError> {
    match probe(&*src)? {
        Some(FsType::Ext4) => Ok(Box::new(Ext4Fs::open(src)?)),
        Some(FsType::Xfs) => Ok(Box::new(XfsFs::open(src)?)),
        None => Err(FsError::Unrecognized),
    }
}

/// The path as ext4-view and our resolver take it: absolute, `/` for the root.
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

// ---------------------------------------------------------------------------------------------
// ext4

/// ext4 (and ext2/ext3) through `ext4-view`, which checks metadata checksums, replays the
/// journal in memory and resolves symlinks inside the image.
///
/// `ext4_view::Ext4` holds `Rc`s and `RefCell`s, so it is neither `Send` nor `Sync`. Rather than
/// assert otherwise with `unsafe`, one thread owns it for its whole life and runs each call;
/// the filesystem itself only holds the channel to that thread. A panic inside ext4-view on a
/// malformed image ends that thread, and every call after it is an error, not a crash of ccb.
pub struct Ext4Fs {
    jobs: Option<mpsc::Sender<Ext4Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

type Ext4Job = Box<dyn FnOnce(&ext4_view::Ext4) + Send>;

struct Ext4Source(Arc<dyn ReadAt>);

impl ext4_view::Ext4Read for Ext4Source {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.0.read_at(start_byte, dst)?)
    }
}

/// `s_feature_incompat` bits that ext4-view refuses, with the names `mkfs.ext4 -O` uses, so
/// that the error names the feature the image was built with.
const EXT4_INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x0001, "compression"),
    (0x0008, "journal_dev"),
    (0x0100, "mmp"),
    (0x1000, "ea_inode"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x1_0000, "encrypt"),
    (0x2_0000, "casefold"),
];

impl Ext4Fs {
    pub fn open(src: Arc<dyn ReadAt>) -> Result<Self, FsError> {
        let incompat = ext4_incompat(&*src)?;
        let (jobs, job_rx) = mpsc::channel::<Ext4Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), FsError>>(1);
        let worker = std::thread::Builder::new()
            .name("ccb-ext4".into())
            .spawn(move || {
                let fs = match ext4_view::Ext4::load(Box::new(Ext4Source(src))) {
                    Ok(fs) => {
                        let _ = ready_tx.send(Ok(()));
                        fs
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(ext4_error(e, "/", incompat)));
                        return;
                    }
                };
                // Ends when the `Ext4Fs` (the only sender) is dropped.
                while let Ok(job) = job_rx.recv() {
                    job(&fs);
                }
            })?;
        let fs = Ext4Fs {
            jobs: Some(jobs),
            worker: Some(worker),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(fs),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(worker_died()),
        }
    }

    /// Runs `f` on the worker thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ext4_view::Ext4) -> Result<R, FsError> + Send + 'static,
    ) -> Result<R, FsError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(worker_died)?;
        jobs.send(Box::new(move |fs| {
            let _ = tx.send(f(fs));
        }))
        .map_err(|_| worker_died())?;
        rx.recv().map_err(|_| worker_died())?
    }
}

impl Drop for Ext4Fs {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop; joining keeps no thread behind.
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn worker_died() -> FsError {
    FsError::Corrupt {
        fs: "ext4",
        detail: "the ext4 reader stopped on this image (a bug in ext4-view on malformed data)"
            .into(),
    }
}

/// `s_feature_incompat` (superblock offset 0x60), or 0 if the superblock is out of reach.
fn ext4_incompat(src: &dyn ReadAt) -> Result<u32, FsError> {
    let mut b = [0u8; 4];
    if src.size() < 1024 + 0x64 {
        return Ok(0);
    }
    src.read_at(1024 + 0x60, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn ext4_error(e: ext4_view::Ext4Error, path: &str, incompat: u32) -> FsError {
    use ext4_view::Ext4Error as E;
    let path = path.to_string();
    match e {
        E::NotFound => FsError::NotFound { path },
        E::NotADirectory => FsError::NotADirectory { path },
        E::IsADirectory => FsError::IsADirectory { path },
        E::IsASpecialFile => FsError::NotAFile { path },
        E::NotASymlink => FsError::NotASymlink { path },
        E::TooManySymlinks => FsError::SymlinkLoop { path },
        E::NotAbsolute | E::MalformedPath | E::PathTooLong | E::NotUtf8 => {
            FsError::BadPath { path }
        }
        E::FileTooLarge => FsError::TooLarge {
            path,
            size: u64::MAX,
            limit: MAX_READ,
        },
        E::Encrypted => FsError::Unsupported {
            fs: "ext4",
            feature: format!("encrypted file {path}"),
        },
        E::Incompatible(inc) => {
            let named: Vec<&str> = EXT4_INCOMPAT_NAMES
                .iter()
                .filter(|(bit, _)| incompat & bit != 0)
                .map(|(_, name)| *name)
                .collect();
            let feature = if named.is_empty() {
                inc.to_string()
            } else {
                format!("{} ({inc})", named.join(", "))
            };
            FsError::Unsupported {
                fs: "ext4",
                feature,
            }
        }
        E::Corrupt(c) => FsError::Corrupt {
            fs: "ext4",
            detail: c.to_string(),
        },
        E::Io(io) => match io.downcast::<std::io::Error>() {
            Ok(io) => FsError::Io(*io),
            Err(other) => FsError::Io(std::io::Error::other(other.to_string())),
        },
        other => FsError::Corrupt {
            fs: "ext4",
            detail: other.to_string(),
        },
    }
}

fn ext4_kind(t: ext4_view::FileType) -> FileKind {
    use ext4_view::FileType as T;
    match t {
        T::Regular => FileKind::File,
        T::Directory => FileKind::Dir,
        T::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn ext4_metadata(m: &ext4_view::Metadata) -> Metadata {
    Metadata {
        kind: ext4_kind(m.file_type()),
        mode: u32::from(m.mode()),
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: m.modified().seconds(),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Filesystem for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn metadata(&self, path: &str) -> Result<Metadata, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            fs.metadata(path.as_str())
                .map(|m| ext4_metadata(&m))
                .map_err(|e| ext4_error(e, &path, 0))
        })
    }

    fn symlink_metadata(&self, path: &str) -> Result<Metadata, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            fs.symlink_metadata(path.as_str())
                .map(|m| ext4_metadata(&m))
                .map_err(|e| ext4_error(e, &path, 0))
        })
    }

    fn read_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            // ext4-view allocates the whole file: look at its size first.
            let m = fs
                .metadata(path.as_str())
                .map_err(|e| ext4_error(e, &path, 0))?;
            if m.is_dir() {
                return Err(FsError::IsADirectory { path });
            }
            if m.len() > limit {
                return Err(FsError::TooLarge {
                    path,
                    size: m.len(),
                    limit,
                });
            }
            fs.read(path.as_str()).map_err(|e| ext4_error(e, &path, 0))
        })
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            let mut out = Vec::new();
            for entry in fs
                .read_dir(path.as_str())
                .map_err(|e| ext4_error(e, &path, 0))?
            {
                let entry = entry.map_err(|e| ext4_error(e, &path, 0))?;
                let name = entry.file_name();
                let name = name.as_ref();
                if name == b"." || name == b".." {
                    continue;
                }
                if out.len() >= MAX_DIR_ENTRIES {
                    return Err(FsError::DirTooLarge {
                        path,
                        limit: MAX_DIR_ENTRIES,
                    });
                }
                let kind = entry
                    .file_type()
                    .map(ext4_kind)
                    .map_err(|e| ext4_error(e, &path, 0))?;
                out.push(DirEntry {
                    name: lossy(name),
                    kind,
                });
            }
            Ok(out)
        })
    }

    fn read_link(&self, path: &str) -> Result<String, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            fs.read_link(path.as_str())
                .map(|p| lossy(p.as_ref()))
                .map_err(|e| ext4_error(e, &path, 0))
        })
    }

    fn canonicalize(&self, path: &str) -> Result<String, FsError> {
        let path = absolute(path);
        self.call(move |fs| {
            fs.canonicalize(path.as_str())
                .map(|p| lossy(p.as_ref()))
                .map_err(|e| ext4_error(e, &path, 0))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// XFS

/// XFS without an in-process reader: the partition is copied into a sparse temporary file
/// (all-zero blocks are skipped), and `xfs_db -r` on that copy lists directories and maps file
/// blocks (`ls`, `bmap`). Superblock and inode cores are small fixed layouts, read here
/// directly; so is file content, at the blocks `bmap` names.
///
/// Block addresses are (allocation group, block in group) pairs, not linear: a file in AG 1 is
/// at `(1 * agblocks + agbno) * blocksize`. That is the mistake that makes the XFS crates we
/// surveyed return the wrong bytes on any multi-AG filesystem; `bmap` prints the pair.
pub struct XfsFs {
    src: Arc<dyn ReadAt>,
    copy: tempfile::NamedTempFile,
    sb: XfsSuper,
    xfs_db: PathBuf,
    dirs: Mutex<DirCache>,
}

#[derive(Default)]
struct DirCache {
    dirs: HashMap<u64, Arc<Vec<XfsDirent>>>,
    entries: usize,
}

/// Directories kept in the cache, counted in entries, so that resolving many paths does not
/// list the same directory again (each listing is one `xfs_db` run).
const DIR_CACHE_ENTRIES: usize = 1 << 20;

#[derive(Debug, Clone)]
struct XfsDirent {
    name: Vec<u8>,
    ino: u64,
}

#[derive(Debug, Clone, Copy)]
struct XfsSuper {
    blocksize: u64,
    agblocks: u64,
    agcount: u64,
    rootino: u64,
    inodesize: u64,
    agblklog: u32,
    inopblog: u32,
    v5: bool,
}

#[derive(Debug, Clone, Copy)]
struct XfsInode {
    meta: Metadata,
    /// di_format: 1 local (data in the inode), 2 extents, 3 btree.
    format: u8,
    /// Where the data fork starts in the inode, and its size.
    fork_offset: usize,
    fork_size: usize,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn xfs_corrupt(detail: impl Into<String>) -> FsError {
    FsError::Corrupt {
        fs: "xfs",
        detail: detail.into(),
    }
}

impl XfsSuper {
    fn parse(b: &[u8; 512]) -> Result<Self, FsError> {
        if &b[0..4] != b"XFSB" {
            return Err(xfs_corrupt("no XFS superblock magic"));
        }
        let sb = XfsSuper {
            blocksize: u64::from(be32(b, 4)),
            rootino: be64(b, 56),
            agblocks: u64::from(be32(b, 84)),
            agcount: u64::from(be32(b, 88)),
            inodesize: u64::from(be16(b, 104)),
            inopblog: u32::from(b[123]),
            agblklog: u32::from(b[124]),
            v5: be16(b, 100) & 0xf == 5,
        };
        // The ranges Linux accepts (xfs_validate_sb_common); anything else is not an XFS we
        // can address, and would make the arithmetic below meaningless.
        let ok = sb.blocksize.is_power_of_two()
            && (512..=65536).contains(&sb.blocksize)
            && sb.inodesize.is_power_of_two()
            && (256..=2048).contains(&sb.inodesize)
            && sb.inodesize <= sb.blocksize
            && sb.blocksize.checked_shr(sb.inopblog) == Some(sb.inodesize)
            && sb.agcount > 0
            && sb.agblocks > 0
            && sb.agblklog < 32
            && (1u64 << sb.agblklog) >= sb.agblocks;
        if !ok {
            return Err(xfs_corrupt(format!("implausible superblock: {sb:?}")));
        }
        Ok(sb)
    }

    /// The byte offset of block `agbno` of allocation group `agno`.
    fn block_offset(&self, agno: u64, agbno: u64) -> Option<u64> {
        if agno >= self.agcount || agbno >= self.agblocks {
            return None;
        }
        agno.checked_mul(self.agblocks)?
            .checked_add(agbno)?
            .checked_mul(self.blocksize)
    }

    /// The byte offset of inode `ino`: its number packs AG, block in AG and slot in block.
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let shift = self.agblklog + self.inopblog;
        let agno = ino.checked_shr(shift).unwrap_or(0);
        let agino = ino & ((1u64 << shift) - 1);
        let agbno = agino >> self.inopblog;
        let slot = agino & ((1u64 << self.inopblog) - 1);
        self.block_offset(agno, agbno)?
            .checked_add(slot.checked_mul(self.inodesize)?)
    }
}

impl XfsFs {
    /// Copies the partition into a sparse temporary file (in `$TMPDIR`) and checks that
    /// `xfs_db` reads it.
    pub fn open(src: Arc<dyn ReadAt>) -> Result<Self, FsError> {
        let mut head = [0u8; 512];
        if src.size() < 512 {
            return Err(xfs_corrupt("shorter than a superblock"));
        }
        src.read_at(0, &mut head)?;
        let sb = XfsSuper::parse(&head)?;
        let xfs_db = find_xfs_db()?;
        let copy = tempfile::Builder::new().prefix("ccb-xfs-").tempfile()?;
        sparse_copy(&*src, copy.as_file())?;
        let fs = XfsFs {
            src,
            copy,
            sb,
            xfs_db,
            dirs: Mutex::new(DirCache::default()),
        };
        // The root must be a directory xfs_db can list: a check that the copy and the tool
        // work before any path is asked for.
        fs.list(fs.sb.rootino)?;
        Ok(fs)
    }

    fn inode(&self, ino: u64) -> Result<XfsInode, FsError> {
        let off = self
            .sb
            .inode_offset(ino)
            .ok_or_else(|| xfs_corrupt(format!("inode {ino} is outside the filesystem")))?;
        let size = usize::try_from(self.sb.inodesize).map_err(|_| xfs_corrupt("inode size"))?;
        let mut b = vec![0u8; size];
        self.src.read_at(off, &mut b)?;
        if &b[0..2] != b"IN" {
            return Err(xfs_corrupt(format!("inode {ino}: bad magic")));
        }
        let version = b[4];
        let core = if version >= 3 { 176 } else { 100 };
        if version >= 3 && be64(&b, 152) != ino {
            // v3 inodes carry their own number: a mismatch means we computed the wrong place.
            return Err(xfs_corrupt(format!(
                "inode {ino}: the inode at its place says it is {}",
                be64(&b, 152)
            )));
        }
        let mode = be16(&b, 2);
        let kind = match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            _ => FileKind::Other,
        };
        // di_forkoff: the attribute fork's start in 8-byte units; 0 means no attribute fork.
        let forkoff = usize::from(b[82]) * 8;
        let literal = size - core;
        let fork_size = if forkoff == 0 {
            literal
        } else {
            forkoff.min(literal)
        };
        Ok(XfsInode {
            meta: Metadata {
                kind,
                mode: u32::from(mode & 0o7777),
                uid: be32(&b, 8),
                gid: be32(&b, 12),
                size: be64(&b, 56),
                // di_mtime's seconds (the classic encoding; bigtime inodes count otherwise).
                mtime: i64::from(be32(&b, 40) as i32),
            },
            format: b[5],
            fork_offset: core,
            fork_size,
        })
    }

    /// The entries of directory `ino` (with `.` and `..`), from `xfs_db ls`.
    fn list(&self, ino: u64) -> Result<Arc<Vec<XfsDirent>>, FsError> {
        if let Ok(cache) = self.dirs.lock()
            && let Some(d) = cache.dirs.get(&ino)
        {
            return Ok(d.clone());
        }
        let out = self.xfs_db(&[format!("inode {ino}"), "ls".into()], 128 << 20)?;
        let entries = Arc::new(parse_ls(&out).map_err(|e| match e {
            FsError::DirTooLarge { limit, .. } => FsError::DirTooLarge {
                path: format!("directory inode {ino}"),
                limit,
            },
            e => e,
        })?);
        if let Ok(mut cache) = self.dirs.lock() {
            if cache.entries + entries.len() > DIR_CACHE_ENTRIES {
                cache.dirs.clear();
                cache.entries = 0;
            }
            cache.entries += entries.len();
            cache.dirs.insert(ino, entries.clone());
        }
        Ok(entries)
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, FsError> {
        Ok(self
            .list(dir)?
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.ino))
    }

    /// The data of inode `ino`, `size` bytes of it, from the blocks `xfs_db bmap` maps.
    fn read_extents(&self, ino: u64, size: u64) -> Result<Vec<u8>, FsError> {
        let len = usize::try_from(size).map_err(|_| xfs_corrupt("file size"))?;
        let mut data = vec![0u8; len];
        let out = self.xfs_db(&[format!("inode {ino}"), "bmap".into()], 64 << 20)?;
        for ext in parse_bmap(&out)? {
            if ext.unwritten {
                continue; // preallocated, reads as zeros
            }
            let start = ext
                .offset
                .checked_mul(self.sb.blocksize)
                .ok_or_else(|| xfs_corrupt("extent offset"))?;
            if start >= size {
                continue;
            }
            let disk = self
                .sb
                .block_offset(ext.agno, ext.agbno)
                .filter(|_| {
                    ext.agbno
                        .checked_add(ext.count)
                        .is_some_and(|e| e <= self.sb.agblocks)
                })
                .ok_or_else(|| xfs_corrupt(format!("inode {ino}: extent outside its AG")))?;
            let bytes = ext
                .count
                .checked_mul(self.sb.blocksize)
                .ok_or_else(|| xfs_corrupt("extent length"))?
                .min(size - start);
            // Both fit in `len`, a usize: start < size and bytes <= size - start.
            let (s, n) = (start as usize, bytes as usize);
            self.src.read_at(disk, &mut data[s..s + n])?;
        }
        Ok(data)
    }

    fn read_symlink(&self, ino: u64, inode: &XfsInode) -> Result<Vec<u8>, FsError> {
        let size = inode.meta.size;
        if size == 0 || size > MAX_LINK_TARGET as u64 {
            return Err(xfs_corrupt(format!(
                "symlink inode {ino}: target of {size} bytes"
            )));
        }
        let len = size as usize;
        if inode.format == 1 {
            // Short targets live in the inode itself.
            if len > inode.fork_size {
                return Err(xfs_corrupt(format!(
                    "symlink inode {ino}: target overflows the inode"
                )));
            }
            let off = self
                .sb
                .inode_offset(ino)
                .and_then(|o| o.checked_add(inode.fork_offset as u64))
                .ok_or_else(|| xfs_corrupt("inode offset"))?;
            let mut b = vec![0u8; len];
            self.src.read_at(off, &mut b)?;
            return Ok(b);
        }
        // Longer ones are in blocks; on v5 each block starts with a 56-byte header (magic
        // "XSLM", offset, length, checksum…).
        let out = self.xfs_db(&[format!("inode {ino}"), "bmap".into()], 1 << 20)?;
        let mut target = Vec::with_capacity(len);
        for ext in parse_bmap(&out)? {
            for i in 0..ext.count {
                if target.len() >= len {
                    break;
                }
                let disk = ext
                    .agbno
                    .checked_add(i)
                    .and_then(|b| self.sb.block_offset(ext.agno, b))
                    .ok_or_else(|| xfs_corrupt(format!("symlink inode {ino}: bad block")))?;
                let mut block = vec![0u8; self.sb.blocksize as usize];
                self.src.read_at(disk, &mut block)?;
                let body = if self.sb.v5 {
                    if &block[0..4] != b"XSLM" {
                        return Err(xfs_corrupt(format!("symlink inode {ino}: bad block magic")));
                    }
                    &block[56..]
                } else {
                    &block[..]
                };
                let want = (len - target.len()).min(body.len());
                target.extend_from_slice(&body[..want]);
            }
        }
        if target.len() != len {
            return Err(xfs_corrupt(format!(
                "symlink inode {ino}: target is missing blocks"
            )));
        }
        Ok(target)
    }

    /// Walks `path` from the root, following symlinks (the last one only if `follow_last`),
    /// and returns the inode with the canonical path's components.
    fn resolve(
        &self,
        path: &str,
        follow_last: bool,
    ) -> Result<(u64, XfsInode, Vec<Vec<u8>>), FsError> {
        let err_path = absolute(path);
        let root = self.sb.rootino;
        let mut pending: VecDeque<Vec<u8>> = components(path.as_bytes());
        // The directories walked into, each with its name: `..` pops one (the root's parent
        // is the root), an absolute symlink empties it.
        let mut stack: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut hops = 0usize;
        let mut last: Option<(u64, XfsInode)> = None;
        while let Some(name) = pending.pop_front() {
            if name == b".." {
                stack.pop();
                last = None;
                continue;
            }
            let dir = stack.last().map(|d| d.0).unwrap_or(root);
            let ino = self.lookup(dir, &name)?.ok_or_else(|| FsError::NotFound {
                path: err_path.clone(),
            })?;
            let inode = self.inode(ino)?;
            let is_last = pending.is_empty();
            if inode.meta.kind == FileKind::Symlink && (!is_last || follow_last) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(FsError::SymlinkLoop { path: err_path });
                }
                let target = self.read_symlink(ino, &inode)?;
                if target.first() == Some(&b'/') {
                    stack.clear();
                }
                for c in components(&target).into_iter().rev() {
                    pending.push_front(c);
                }
                last = None;
                continue;
            }
            if !is_last && inode.meta.kind != FileKind::Dir {
                return Err(FsError::NotADirectory { path: err_path });
            }
            stack.push((ino, name));
            last = Some((ino, inode));
        }
        let (ino, inode) = match last {
            Some(l) => l,
            None => {
                let ino = stack.last().map(|d| d.0).unwrap_or(root);
                (ino, self.inode(ino)?)
            }
        };
        Ok((ino, inode, stack.into_iter().map(|d| d.1).collect()))
    }

    fn xfs_db(&self, commands: &[String], max_out: usize) -> Result<Vec<u8>, FsError> {
        let mut cmd = Process::new(&self.xfs_db);
        cmd.arg("-r").arg("-f");
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        cmd.arg(self.copy.path());
        run_bounded(cmd, max_out, Duration::from_secs(120))
    }
}

fn components(path: &[u8]) -> VecDeque<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn find_xfs_db() -> Result<PathBuf, FsError> {
    // /usr/sbin is not on every user's PATH.
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("xfs_db"))
        .find(|p| p.is_file())
        .ok_or(FsError::Tool {
            tool: "xfs_db",
            detail: "not found (it reads XFS root filesystems)".into(),
        })
}

/// Copies `src` into `dst`, writing only blocks that are not all zeros, so that the copy of a
/// mostly empty partition stays small on disk.
fn sparse_copy(src: &dyn ReadAt, dst: &std::fs::File) -> Result<(), FsError> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    const BLOCK: usize = 4096;
    let size = src.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK) as usize;
        let chunk = &mut buf[..n];
        src.read_at(off, chunk)?;
        for (i, block) in chunk.chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                dst.write_all_at(block, off + (i * BLOCK) as u64)?;
            }
        }
        off += n as u64;
    }
    dst.set_len(size)?;
    Ok(())
}

/// Runs `cmd`, keeping at most `max_out` bytes of its output and at most `timeout` of time: a
/// corrupt filesystem must not make `xfs_db` hang ccb or fill its memory.
fn run_bounded(cmd: Process, max_out: usize, timeout: Duration) -> Result<Vec<u8>, FsError> {
    let tool_err = |detail: String| FsError::Tool {
        tool: "xfs_db",
        detail,
    };
    let mut child = cmd
        .spawn(Stdio::piped(), Stdio::piped())
        .map_err(|e| tool_err(e.to_string()))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        crate::process::stop(&mut child, Duration::ZERO);
        return Err(tool_err("no output pipes".into()));
    };
    let (done_tx, done_rx) = mpsc::channel();
    let limit = max_out as u64 + 1;
    let out_thread = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.take(limit).read_to_end(&mut out).map(|_| out);
        let _ = done_tx.send(());
        r
    });
    let err_thread = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr.take(64 << 10).read_to_end(&mut err);
        err
    });
    let timed_out = done_rx.recv_timeout(timeout).is_err();
    // Kill first when we stop listening early, so that the reader threads see EOF.
    if timed_out {
        crate::process::stop(&mut child, Duration::ZERO);
    }
    let out = out_thread
        .join()
        .map_err(|_| tool_err("output reader failed".into()))?;
    let out = out.map_err(|e| tool_err(format!("reading its output: {e}")))?;
    let too_long = out.len() > max_out;
    if too_long {
        crate::process::stop(&mut child, Duration::ZERO);
    }
    let status = child.wait()?;
    let err = err_thread.join().unwrap_or_default();
    if timed_out {
        return Err(tool_err(format!("no answer within {}s", timeout.as_secs())));
    }
    if too_long {
        return Err(tool_err(format!("more than {max_out} bytes of output")));
    }
    let err = String::from_utf8_lossy(&err);
    let err = err.trim();
    // xfs_db reports a failed command with exit code 1 (or only on stderr).
    if !status.success() || !err.is_empty() {
        let first = String::from_utf8_lossy(&out);
        let detail = if err.is_empty() { first.trim() } else { err };
        return Err(tool_err(format!("{status}: {detail}")));
    }
    Ok(out)
}

/// Parses `xfs_db ls`: one line per entry, `cookie inode type hash namelen name (good)`, where
/// the name is exactly `namelen` raw bytes (it may hold spaces or newlines).
fn parse_ls(out: &[u8]) -> Result<Vec<XfsDirent>, FsError> {
    let bad = |what: &str| FsError::Tool {
        tool: "xfs_db",
        detail: format!(
            "unexpected `ls` output ({what}): {}",
            lossy(&out[..out.len().min(200)])
        ),
    };
    let mut entries = Vec::new();
    let mut rest = out;
    let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let r = &rest[start..];
        let end = r
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(r.len());
        let f = r[..end].to_vec();
        *rest = &r[end..];
        Some(f)
    };
    while rest.iter().any(|b| !b.is_ascii_whitespace()) {
        let mut f = Vec::new();
        for _ in 0..5 {
            f.push(field(&mut rest).ok_or_else(|| bad("short line"))?);
        }
        let ino: u64 = std::str::from_utf8(&f[1])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("inode number"))?;
        let namelen: usize = std::str::from_utf8(&f[4])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0 && n <= 255)
            .ok_or_else(|| bad("name length"))?;
        // One space, then the name.
        if rest.first() != Some(&b' ') || rest.len() < 1 + namelen {
            return Err(bad("name"));
        }
        let name = rest[1..1 + namelen].to_vec();
        rest = &rest[1 + namelen..];
        let verdict = field(&mut rest).ok_or_else(|| bad("verdict"))?;
        if verdict != b"(good)" {
            return Err(xfs_corrupt(format!(
                "directory entry {} is {}",
                lossy(&name),
                lossy(&verdict)
            )));
        }
        if entries.len() >= MAX_DIR_ENTRIES + 2 {
            return Err(FsError::DirTooLarge {
                path: String::new(),
                limit: MAX_DIR_ENTRIES,
            });
        }
        entries.push(XfsDirent { name, ino });
    }
    Ok(entries)
}

#[derive(Debug, PartialEq, Eq)]
struct BmapExtent {
    offset: u64,
    agno: u64,
    agbno: u64,
    count: u64,
    unwritten: bool,
}

/// Parses `xfs_db bmap`: `data offset O startblock B (AG/AGBNO) count C flag F` per extent.
fn parse_bmap(out: &[u8]) -> Result<Vec<BmapExtent>, FsError> {
    let text = String::from_utf8_lossy(out);
    let mut extents = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let parsed = (|| {
            if w.len() != 10 || w[0] != "data" || w[1] != "offset" || w[3] != "startblock" {
                return None;
            }
            let (agno, agbno) = w[5].strip_prefix('(')?.strip_suffix(')')?.split_once('/')?;
            Some(BmapExtent {
                offset: w[2].parse().ok()?,
                agno: agno.parse().ok()?,
                agbno: agbno.parse().ok()?,
                count: w[7].parse().ok()?,
                unwritten: w[9] != "0",
            })
        })();
        extents.push(parsed.ok_or_else(|| FsError::Tool {
            tool: "xfs_db",
            detail: format!("unexpected `bmap` output: {line}"),
        })?);
    }
    Ok(extents)
}

fn path_string(names: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for n in names {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(n));
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

impl Filesystem for XfsFs {
    fn kind(&self) -> &'static str {
        "xfs"
    }

    fn metadata(&self, path: &str) -> Result<Metadata, FsError> {
        Ok(self.resolve(path, true)?.1.meta)
    }

    fn symlink_metadata(&self, path: &str) -> Result<Metadata, FsError> {
        Ok(self.resolve(path, false)?.1.meta)
    }

    fn read_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let (ino, inode, _) = self.resolve(path, true)?;
        let path = absolute(path);
        match inode.meta.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsADirectory { path }),
            _ => return Err(FsError::NotAFile { path }),
        }
        if inode.meta.size > limit {
            return Err(FsError::TooLarge {
                path,
                size: inode.meta.size,
                limit,
            });
        }
        if inode.meta.size == 0 {
            return Ok(Vec::new());
        }
        self.read_extents(ino, inode.meta.size)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let (ino, inode, _) = self.resolve(path, true)?;
        if inode.meta.kind != FileKind::Dir {
            return Err(FsError::NotADirectory {
                path: absolute(path),
            });
        }
        let mut out = Vec::new();
        for e in self.list(ino)?.iter() {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            out.push(DirEntry {
                name: lossy(&e.name),
                kind: self.inode(e.ino)?.meta.kind,
            });
        }
        Ok(out)
    }

    fn read_link(&self, path: &str) -> Result<String, FsError> {
        let (ino, inode, _) = self.resolve(path, false)?;
        if inode.meta.kind != FileKind::Symlink {
            return Err(FsError::NotASymlink {
                path: absolute(path),
            });
        }
        Ok(lossy(&self.read_symlink(ino, &inode)?))
    }

    fn canonicalize(&self, path: &str) -> Result<String, FsError> {
        Ok(path_string(&self.resolve(path, true)?.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfs_db_ls_names_are_taken_by_length_so_spaces_and_newlines_survive() {
        let out = b"8          128                directory      0x0000002e   1 . (good)\n\
10         128                directory      0x0000172e   2 .. (good)\n\
12         131                regular        0x0018b4ee   7 a b\nc d (good)\n";
        let entries = parse_ls(out).unwrap();
        let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"."[..], b"..", b"a b\nc d"]);
        assert_eq!(entries[2].ino, 131);
    }

    #[test]
    fn xfs_db_ls_with_a_corrupt_entry_is_an_error() {
        let out = b"12 131 regular 0x1 3 abc (corrupt)\n";
        assert!(matches!(parse_ls(out), Err(FsError::Corrupt { .. })));
        assert!(parse_ls(b"Not a directory\n").is_err());
    }

    #[test]
    fn xfs_db_bmap_gives_the_allocation_group_of_each_extent() {
        let out = b"data offset 0 startblock 98328 (3/24) count 74 flag 0\n\
data offset 74 startblock 10 (0/10) count 2 flag 1\n";
        assert_eq!(
            parse_bmap(out).unwrap(),
            [
                BmapExtent {
                    offset: 0,
                    agno: 3,
                    agbno: 24,
                    count: 74,
                    unwritten: false
                },
                BmapExtent {
                    offset: 74,
                    agno: 0,
                    agbno: 10,
                    count: 2,
                    unwritten: true
                },
            ]
        );
        assert!(parse_bmap(b"bad block number\n").is_err());
    }

    #[test]
    fn xfs_inode_numbers_pack_allocation_group_block_and_slot() {
        let sb = XfsSuper {
            blocksize: 4096,
            agblocks: 32768,
            agcount: 4,
            rootino: 128,
            inodesize: 512,
            agblklog: 15,
            inopblog: 3,
            v5: true,
        };
        // Inode 128: AG 0, block 16, slot 0.
        assert_eq!(sb.inode_offset(128), Some(16 * 4096));
        // AG 2 (2 << 18), block 5, slot 3.
        assert_eq!(
            sb.inode_offset((2 << 18) | (5 << 3) | 3),
            Some((2 * 32768 + 5) * 4096 + 3 * 512)
        );
        // AG 4 does not exist.
        assert_eq!(sb.inode_offset(4 << 18), None);
        assert_eq!(sb.block_offset(1, 10), Some((32768 + 10) * 4096));
    }

    #[test]
    fn paths_split_into_components_without_dots_or_empty_parts() {
        let c: Vec<Vec<u8>> = components(b"//usr/./bin/../lib/").into_iter().collect();
        assert_eq!(
            c,
            [
                b"usr".to_vec(),
                b"bin".to_vec(),
                b"..".to_vec(),
                b"lib".to_vec()
            ]
        );
    }
}
