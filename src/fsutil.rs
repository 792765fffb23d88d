//! Filesystem helpers that always name the path in their errors (a bare "os error 2" helps
//! nobody) and write atomically (temp file + rename), so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O failure on a named path.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("failed to {action} `{}`", path.display())]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            source,
        }
    }

    /// The error of `action` on `path`, for `map_err`.
    pub fn at<'p>(
        action: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(std::io::Error) -> Self + use<'p> {
        move |source| Self::new(action, path, source)
    }

    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    std::fs::read(path).map_err(|e| FsError::new("read", path, e))
}

pub fn read_to_string(path: &Path) -> Result<String, FsError> {
    std::fs::read_to_string(path).map_err(|e| FsError::new("read", path, e))
}

pub fn create_dir_all(path: &Path) -> Result<(), FsError> {
    std::fs::create_dir_all(path).map_err(|e| FsError::new("create directory", path, e))
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, fsynced,
/// then renamed over `path`. Concurrent writers of the same content are harmless.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    write_renamed(path, contents, true)
}

/// [`write_atomic`] without the fsync, for caches whose reader takes a damaged file for a
/// missing one: a crash can cost the entry, never a wrong answer. A cold `ccb check` writes
/// one per image and arch, and thousands of fsyncs were seconds of its wall time.
pub fn write_atomic_cache(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    write_renamed(path, contents, false)
}

fn write_renamed(path: &Path, contents: &[u8], durable: bool) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| FsError::new("create a file in", dir, e))?;
    tmp.write_all(contents)
        .and_then(|()| {
            if durable {
                tmp.as_file().sync_data()
            } else {
                Ok(())
            }
        })
        .map_err(|e| FsError::new("write", tmp.path().to_path_buf(), e))?;
    tmp.persist(path)
        .map_err(|e| FsError::new("rename into place", path, e.error))?;
    Ok(())
}

/// Writes back everything of the filesystem holding `path` (`syncfs`). A committed store
/// entry must be on disk before the rename that makes it visible: build scripts run with their
/// own syncs answered without writing (`action::nosync`), and one syncfs over the finished
/// tree costs the write-back the scripts would have waited for, once.
pub fn sync_filesystem(path: &Path) -> Result<(), FsError> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path).map_err(|e| FsError::new("open", path, e))?;
    // SAFETY: syncfs takes a valid open descriptor, which `dir` holds for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(FsError::new(
            "sync the filesystem of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The byte ranges of `f` in `[from, to)` that may hold data (SEEK_DATA/SEEK_HOLE), in order.
/// Where the filesystem cannot say, the whole rest of the range: a range too many only costs
/// reading zeros, a range too few would lose data.
pub fn data_ranges(f: &std::fs::File, from: u64, to: u64) -> Vec<(u64, u64)> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let data = match rustix::fs::seek(f, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break, // only a hole from here on
            Err(_) => {
                out.push((pos, to));
                break;
            }
        };
        if data >= to {
            break;
        }
        let end = rustix::fs::seek(f, SeekFrom::Hole(data)).map_or(to, |hole| hole.min(to));
        out.push((data, end));
        pos = end;
    }
    out
}

/// Opens a file to read only if it is a regular file: a FIFO would block the open (and
/// the build) forever, a device would read the host's hardware. A symlink is followed: the
/// path is one the operator named (an image, its backing file, a `file://` artifact, an
/// element's file), and a link to an image is as good as the image; what it leads to must
/// be a regular file all the same. Paths inside an image tree never come here unresolved
/// (`action::inroot` resolves them in the tree first).
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK keeps the open of a FIFO from waiting for a writer; the type check then
    // refuses it.
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    // Back to blocking reads for a regular file (O_NONBLOCK means nothing to it, but the
    // flag should not surprise a later reader).
    let flags = rustix::fs::fcntl_getfl(&f)?;
    rustix::fs::fcntl_setfl(&f, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(f)
}

/// Reads all of a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    open_regular(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A path shown to people: relative to the current directory when it is inside it.
pub fn display_path(path: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = path.strip_prefix(&cwd)
        && !rel.as_os_str().is_empty()
    {
        return rel.display().to_string();
    }
    path.display().to_string()
}

/// What a stat cache compares to decide a file is unchanged (git's index does the same):
/// size, mtime and ctime to the nanosecond, inode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
}

impl Stamp {
    pub fn of(md: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            ino: md.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_link_the_operator_names_is_followed_to_a_regular_file_and_never_to_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("image.qcow2"), b"disk").unwrap();
        let link = dir.path().join("latest.qcow2");
        std::os::unix::fs::symlink("image.qcow2", &link).unwrap();
        assert_eq!(read_regular(&link).unwrap(), b"disk");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let to_fifo = dir.path().join("to-fifo");
        std::os::unix::fs::symlink(&fifo, &to_fifo).unwrap();
        let err = open_regular(&to_fifo).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let to_dir = dir.path().join("to-dir");
        std::os::unix::fs::symlink(dir.path(), &to_dir).unwrap();
        assert!(open_regular(&to_dir).is_err());
    }

    #[test]
    fn data_ranges_cover_every_written_byte_and_skip_holes_in_the_range_asked() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("sparse"))
            .unwrap();
        let mib = 1u64 << 20;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 8 * mib).unwrap();
        f.set_len(32 * mib).unwrap();
        let ranges = data_ranges(&f, 0, 32 * mib);
        let covers = |at: u64| ranges.iter().any(|&(a, b)| a <= at && at < b);
        assert!(covers(0) && covers(8 * mib + 5), "{ranges:?}");
        // A range asked for is kept to.
        let tail = data_ranges(&f, 8 * mib + 2, 8 * mib + 4);
        assert_eq!(tail, vec![(8 * mib + 2, 8 * mib + 4)]);
        if ranges == [(0, 32 * mib)] {
            return; // a filesystem that cannot say where its holes are: all is data
        }
        // The filesystem says where the holes are (to its block size): most of the file is
        // skipped, and nothing after the last data.
        let data: u64 = ranges.iter().map(|(a, b)| b - a).sum();
        assert!(data < 4 * mib, "{ranges:?}");
        assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "{ranges:?}");
        assert!(data_ranges(&f, 16 * mib, 32 * mib).is_empty());
    }
}
