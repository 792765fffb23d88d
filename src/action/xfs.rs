//! An XFS root filesystem written so that the same tree gives the same bytes.
//!
//! How, and why this way (measured on a 54 MiB, 1.5 k-entry tree, see the report of
//! `xfsdet`): xfsprogs 6.1's protofile (`mkfs.xfs -p`, Debian 12) and 6.13's (Debian 13)
//! keep neither xattrs nor hard links and stamp every inode with the clock, and xfs_db 6.1
//! can neither make a hard link nor write a bigtime timestamp (`write core.ctime.sec N`
//! stores 1901); a newer xfsprogs that fills from a directory is not in any suite the hosts
//! run. So the kernel writes the files, through a loop mount, and what the kernel makes
//! vary is removed:
//!
//! - allocation order: one thread, entries in name order, each file written and fsynced
//!   before the next entry, so delayed allocation happens in that order and not when the
//!   flusher gets to it;
//! - the log, and the LSN stamped on every metadata block: the log's volume depends on when
//!   the AIL writes buffers back (a buffer relogged before its writeback logs every range
//!   dirtied since), which depends on timers, memory pressure and load; measured, two runs
//!   of 2 k entries drifted apart by 680 KiB of log. So after the unmount every metadata
//!   block (found by its magic, this filesystem's UUID and a valid CRC: v5 metadata
//!   describes itself, file data does not pass all three) gets LSN 0, as mkfs writes
//!   them, and its CRC recomputed; the log is formatted clean (`xfs_db -x logformat`);
//! - allocation that depends on the log: an extent freed (a btree block, post-EOF
//!   preallocation) stays busy until its checkpoint is on disk, and the allocator skips
//!   it or forces the log: every entry ends with a log force (the fsync, or one on the
//!   parent directory), so busy extents clear at the same points; and the mount is cycled
//!   every [`BATCH_ENTRIES`] entries or [`BATCH_BYTES`] bytes (a count, never a time)
//!   so that the log worker (first run 30 s after mount) has no part either;
//! - UUID: fixed by `mkfs.xfs -m uuid=` from the key; `nouuid` lets two builds of one key
//!   mount at once;
//! - inode times, generation numbers and change counters: patched offline in the inode
//!   chunks (every inode, free ones too, carries a random `di_gen`), each inode's CRC
//!   recomputed; access, change and creation times become the source date, the
//!   modification time the tree's.
//!
//! The cost is the log force per entry (the loop device is made write-through, so that
//! none of them is also an fsync of the image file on the host: [`write_through`]).
//! `benches/xfs.sh` measured, on a 27 k-entry, 1.7 GiB tree: 28-34 s for the old
//! `cp -a` (never twice the same bytes), 27-33 s for this fill (the same bytes).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use super::runner::{RunError, engine, io, program};
use crate::process::Process;

/// Entries written between two mounts: at a few ms each (an fsync), well under the 30 s
/// after which the log worker would force the log on its own, even on a loaded host.
const BATCH_ENTRIES: u64 = 2000;
/// Bytes written between two mounts, for the same reason when the files are large.
const BATCH_BYTES: u64 = 512 << 20;

/// An inode's modification time, as the tree has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mtime {
    sec: i64,
    nsec: u32,
}

/// Fills the fresh XFS filesystem in `img` from `dir`, then fixes what the kernel made
/// vary (see the module's comment). `epoch` is the source date.
pub fn fill(img: &Path, dir: &Path, epoch: i64) -> Result<(), RunError> {
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).map_err(io("create a mount point"))?;
    let mut mounted = Mount::new(img, &mnt)?;
    let mut writer = Writer {
        mnt: mnt.clone(),
        links: HashMap::new(),
        mtimes: BTreeMap::new(),
        entries: 0,
        bytes: 0,
    };
    let outcome = writer.copy_all(dir, &mut mounted);
    let chunks = outcome.and_then(|()| inode_chunks(&mnt));
    let unmounted = mounted.unmount();
    let _ = std::fs::remove_dir(&mnt);
    let chunks = chunks?;
    unmounted?;
    normalise(img, &chunks, &writer.mtimes, epoch)
}

/// A loop mount of the image; unmounted when dropped if [`Mount::unmount`] was not called.
struct Mount {
    img: PathBuf,
    mnt: PathBuf,
    live: bool,
}

impl Mount {
    fn new(img: &Path, mnt: &Path) -> Result<Self, RunError> {
        Process::new("mount")
            .args(["-t", "xfs", "-o", "loop,nouuid"])
            .arg(img)
            .arg(mnt)
            .output()
            .map_err(program("loop-mounting the XFS root"))?;
        write_through(mnt);
        Ok(Mount {
            img: img.to_path_buf(),
            mnt: mnt.to_path_buf(),
            live: true,
        })
    }

    fn unmount(&mut self) -> Result<(), RunError> {
        if self.live {
            self.live = false;
            umount2(&self.mnt, MntFlags::empty()).map_err(engine("unmount the XFS root"))?;
        }
        Ok(())
    }

    /// Unmounts and mounts again: a new log worker timer, everything written back.
    fn cycle(&mut self) -> Result<(), RunError> {
        self.unmount()?;
        *self = Mount::new(&self.img.clone(), &self.mnt.clone())?;
        Ok(())
    }
}

/// Tells the block layer that the loop device under `mnt` has no volatile cache, so the
/// log force that ends every entry is not also an fsync of the image file on the host (the
/// image is synced once, after the normalisation). Measured on 1.5 k entries: 11.1 s with
/// the flushes, 2.1 s without. The bytes are the same either way, so a host where sysfs
/// cannot be written only goes slower.
fn write_through(mnt: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(device) = loop_device(&info, mnt) else {
        return;
    };
    let _ = std::fs::write(
        format!("/sys/block/{device}/queue/write_cache"),
        "write through",
    );
}

/// The loop device (`loop7`) mounted at `mnt`, from `/proc/self/mountinfo`: the mount point
/// is its fifth field (spaces escaped as `\040`), the source the second after ` - `.
fn loop_device(mountinfo: &str, mnt: &Path) -> Option<String> {
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').nth(1))
        .filter_map(|source| source.strip_prefix("/dev/"))
        .rfind(|d| d.starts_with("loop"))
        .map(str::to_string)
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.live {
            let _ = umount2(&self.mnt, MntFlags::empty());
        }
    }
}

struct Writer {
    mnt: PathBuf,
    /// The first path written for each multiply-linked source inode.
    links: HashMap<(u64, u64), PathBuf>,
    /// The new filesystem's inodes and the modification times they must end with.
    mtimes: BTreeMap<u64, Mtime>,
    entries: u64,
    bytes: u64,
}

fn io_at(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    io(format!("{what} {}", path.display()))
}

impl Writer {
    fn copy_all(&mut self, dir: &Path, mount: &mut Mount) -> Result<(), RunError> {
        for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let e = e.map_err(|e| RunError::Io {
                what: format!("read the tree {}", dir.display()),
                source: std::io::Error::other(e),
            })?;
            let rel = e
                .path()
                .strip_prefix(dir)
                .map_err(|_| RunError::Internal("an entry outside the tree"))?;
            if self.entries >= BATCH_ENTRIES || self.bytes >= BATCH_BYTES {
                mount.cycle()?;
                self.entries = 0;
                self.bytes = 0;
            }
            self.copy_one(e.path(), rel)?;
            self.entries += 1;
        }
        Ok(())
    }

    /// Writes one entry and forces the log, so that it is one checkpoint of its own.
    fn copy_one(&mut self, src: &Path, rel: &Path) -> Result<(), RunError> {
        use nix::sys::stat::{Mode, SFlag, mknod};
        let meta = std::fs::symlink_metadata(src).map_err(io_at("inspect", src))?;
        let dst = self.mnt.join(rel);
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let mtime = Mtime {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec() as u32,
        };
        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                std::fs::hard_link(first, &dst).map_err(io_at("link", &dst))?;
                return sync_parent(&dst);
            }
            self.links.insert((meta.dev(), meta.ino()), dst.clone());
        }
        if ft.is_dir() {
            if !rel.as_os_str().is_empty() {
                std::fs::create_dir(&dst).map_err(io_at("create", &dst))?;
            }
        } else if ft.is_file() {
            let out = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)
                .map_err(io_at("create", &dst))?;
            self.bytes += copy_data(src, &out, meta.len())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(io_at("read", src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io_at("create", &dst))?;
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            mknod(&dst, kind, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(engine(format!("create {}", dst.display())))?;
        }
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_at("set the owner of", &dst))?;
        // After the owner: chown clears setuid and setgid.
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                .map_err(io_at("set the mode of", &dst))?;
        }
        let mut names: Vec<_> = xattr::list(src)
            .map_err(io_at("list the xattrs of", src))?
            .collect();
        names.sort();
        for name in names {
            if let Some(value) = xattr::get(src, &name).map_err(io_at("read the xattrs of", src))? {
                xattr::set(&dst, &name, &value).map_err(io_at("set an xattr on", &dst))?;
            }
        }
        let ino = std::fs::symlink_metadata(&dst)
            .map_err(io_at("inspect", &dst))?
            .ino();
        self.mtimes.insert(ino, mtime);
        if ft.is_file() || ft.is_dir() {
            // The entry itself: its data written back (allocated) now, the log forced.
            let f = File::open(&dst).map_err(io_at("open", &dst))?;
            f.sync_all().map_err(io_at("sync", &dst))
        } else {
            sync_parent(&dst)
        }
    }
}

/// Forces the log through the directory an entry was made in (a symlink or a device cannot
/// be opened to be synced; the parent changed in the same transaction).
fn sync_parent(path: &Path) -> Result<(), RunError> {
    let parent = path
        .parent()
        .ok_or(RunError::Internal("an entry without a parent"))?;
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io_at("sync", parent))
}

/// Copies a file's data, its holes kept holes; returns the bytes written.
fn copy_data(src: &Path, dst: &File, len: u64) -> Result<u64, RunError> {
    let f = File::open(src).map_err(io_at("open", src))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for (mut at, end) in crate::fsutil::data_ranges(&f, 0, len) {
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)
                .map_err(io_at("read", src))?;
            dst.write_all_at(&buf[..n], at).map_err(io(format!(
                "write into the XFS root (from {})",
                src.display()
            )))?;
            at += n as u64;
            written += n as u64;
        }
    }
    dst.set_len(len)
        .map_err(io(format!("size the copy of {}", src.display())))?;
    Ok(written)
}

/// The first inode of every allocated inode chunk (64 inodes each), from the kernel.
fn inode_chunks(mnt: &Path) -> Result<Vec<u64>, RunError> {
    let out = Process::new("xfs_io")
        .args(["-c", "inumbers"])
        .arg(mnt)
        .output()
        .map_err(program(
            "listing the XFS root's inode chunks (xfs_io inumbers)",
        ))?;
    Ok(parse_inumbers(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_inumbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("xi_startino = "))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Where inodes live, from the superblock.
#[derive(Debug)]
struct Geometry {
    blocksize: u64,
    agblocks: u64,
    inodesize: usize,
    inopblock: u64,
    inopblog: u32,
    agblklog: u32,
    rbmino: u64,
    rsumino: u64,
    uuid: [u8; 16],
    dblocks: u64,
    logstart: u64,
    logblocks: u64,
    sectsize: usize,
    dirblklog: u8,
}

impl Geometry {
    fn read(img: &mut File) -> Result<Self, RunError> {
        let mut sb = [0u8; 512];
        img.seek(SeekFrom::Start(0))
            .and_then(|_| img.read_exact(&mut sb))
            .map_err(io("read the XFS superblock"))?;
        if &sb[0..4] != b"XFSB" {
            return Err(RunError::Image {
                problem: "the XFS root has no superblock".into(),
            });
        }
        let be32 = |o: usize| u32::from_be_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
        let be64 = |o: usize| u64::from_be_bytes(sb[o..o + 8].try_into().expect("8 bytes"));
        let version = u16::from_be_bytes([sb[100], sb[101]]) & 0xf;
        if version != 5 {
            return Err(RunError::Image {
                problem: format!("the XFS root is version {version}, not 5 (v5, CRCs)"),
            });
        }
        Ok(Geometry {
            blocksize: be32(4) as u64,
            agblocks: be32(84) as u64,
            inodesize: u16::from_be_bytes([sb[104], sb[105]]) as usize,
            inopblock: u16::from_be_bytes([sb[106], sb[107]]) as u64,
            inopblog: sb[123] as u32,
            agblklog: sb[124] as u32,
            rbmino: be64(64),
            rsumino: be64(72),
            uuid: sb[32..48].try_into().expect("16 bytes"),
            dblocks: be64(8),
            logstart: be64(48),
            logblocks: be32(96) as u64,
            sectsize: u16::from_be_bytes([sb[102], sb[103]]) as usize,
            dirblklog: sb[192],
        })
    }

    /// Byte offset of a filesystem block number (AG number in the high bits).
    fn fsb_offset(&self, fsb: u64) -> u64 {
        let agno = fsb >> self.agblklog;
        let agbno = fsb & ((1u64 << self.agblklog) - 1);
        (agno * self.agblocks + agbno) * self.blocksize
    }

    fn offset(&self, ino: u64) -> u64 {
        let agno = ino >> (self.agblklog + self.inopblog);
        let agino = ino & ((1u64 << (self.agblklog + self.inopblog)) - 1);
        let agbno = agino >> self.inopblog;
        let slot = agino & (self.inopblock - 1);
        (agno * self.agblocks + agbno) * self.blocksize + slot * self.inodesize as u64
    }
}

// Offsets in a v3 on-disk inode (struct xfs_dinode).
const DI_MODE: usize = 2;
const DI_VERSION: usize = 4;
const DI_ATIME: usize = 32;
const DI_MTIME: usize = 40;
const DI_CTIME: usize = 48;
const DI_GEN: usize = 92;
const DI_CRC: usize = 100;
const DI_CHANGECOUNT: usize = 104;
const DI_LSN: usize = 112;
const DI_FLAGS2: usize = 120;
const DI_CRTIME: usize = 144;
const DI_INO: usize = 152;
const DI_UUID: usize = 160;
const DIFLAG2_BIGTIME: u64 = 1 << 3;
/// Bigtime counts nanoseconds from the old 32-bit epoch's start, 2^31 s before 1970.
const BIGTIME_OFFSET: i64 = 1 << 31;

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn put_time(inode: &mut [u8], at: usize, bigtime: bool, t: Mtime) {
    if bigtime {
        let v = ((t.sec + BIGTIME_OFFSET) as u64) * 1_000_000_000 + t.nsec as u64;
        inode[at..at + 8].copy_from_slice(&v.to_be_bytes());
    } else {
        inode[at..at + 4].copy_from_slice(&(t.sec as i32).to_be_bytes());
        inode[at + 4..at + 8].copy_from_slice(&t.nsec.to_be_bytes());
    }
}

fn inode_crc(inode: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&inode[..DI_CRC]);
    d.update(&[0; 4]);
    d.update(&inode[DI_CRC + 4..]);
    d.finalize()
}

/// Is this slot an inode of this filesystem with this number (and not the data of a
/// sparse chunk's hole)?
fn is_inode(inode: &[u8], ino: u64, geo: &Geometry) -> bool {
    &inode[0..2] == b"IN"
        && inode[DI_VERSION] == 3
        && inode[DI_INO..DI_INO + 8] == ino.to_be_bytes()
        && inode[DI_UUID..DI_UUID + 16] == geo.uuid
        && u32::from_le_bytes(inode[DI_CRC..DI_CRC + 4].try_into().expect("4 bytes"))
            == inode_crc(inode)
}

/// Every inode of every chunk: generation 0; the used ones' times as the tree has them (the
/// modification time) or the source date (the rest); then the log reformatted.
fn normalise(
    img: &Path,
    chunks: &[u64],
    mtimes: &BTreeMap<u64, Mtime>,
    epoch: i64,
) -> Result<(), RunError> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(img)
        .map_err(io_at("open", img))?;
    let geo = Geometry::read(&mut f)?;
    let source_date = Mtime {
        sec: epoch,
        nsec: 0,
    };
    let mut inode = vec![0u8; geo.inodesize];
    for &start in chunks {
        for ino in start..start + 64 {
            let at = geo.offset(ino);
            f.read_exact_at(&mut inode, at)
                .map_err(io("read the XFS root's inodes"))?;
            if !is_inode(&inode, ino, &geo) {
                continue;
            }
            inode[DI_GEN..DI_GEN + 4].fill(0);
            inode[DI_LSN..DI_LSN + 8].fill(0);
            if inode[DI_MODE..DI_MODE + 2] != [0, 0] {
                let flags2 =
                    u64::from_be_bytes(inode[DI_FLAGS2..DI_FLAGS2 + 8].try_into().expect("8"));
                let bigtime = flags2 & DIFLAG2_BIGTIME != 0;
                let mtime = match mtimes.get(&ino) {
                    Some(t) => *t,
                    None if ino == geo.rbmino || ino == geo.rsumino => source_date,
                    None => {
                        return Err(RunError::Image {
                            problem: format!(
                                "XFS root: inode {ino} is in use but was not written from the tree"
                            ),
                        });
                    }
                };
                for field in [DI_ATIME, DI_CTIME, DI_CRTIME] {
                    put_time(&mut inode, field, bigtime, source_date);
                }
                put_time(&mut inode, DI_MTIME, bigtime, mtime);
                // The change counter (NFS's change attribute) counts the inode's updates,
                // and a write's time update happens or not as the clock ticks between the
                // create and the write: measured, 2 of 27 k inodes one apart. Any value
                // works for a filesystem nobody has changed yet.
                inode[DI_CHANGECOUNT..DI_CHANGECOUNT + 8].copy_from_slice(&1u64.to_be_bytes());
            }
            let crc = inode_crc(&inode);
            inode[DI_CRC..DI_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            f.write_all_at(&inode, at)
                .map_err(io("write the XFS root's inodes"))?;
        }
    }
    zero_lsns(&f, &geo)?;
    f.sync_all().map_err(io_at("sync", img))?;
    drop(f);
    // Every LSN is 0 now, as after mkfs: the log is formatted as mkfs formats it.
    let done = Process::new("xfs_db")
        .args(["-x", "-c", "logformat"])
        .arg(img)
        .output()
        .map_err(program(
            "reformatting the XFS root's log (xfs_db logformat)",
        ))?;
    // xfs_db exits 0 whatever its commands did: a refused one is on stderr.
    let stderr = String::from_utf8_lossy(&done.stderr);
    if let Some(bad) = stderr.lines().find(|l| !l.trim().is_empty()) {
        return Err(RunError::Image {
            problem: format!("xfs_db refused to reformat the XFS root's log: {bad}"),
        });
    }
    Ok(())
}

/// Where a metadata header keeps its LSN, CRC and filesystem UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    lsn: usize,
    crc: usize,
    uuid: usize,
}

const SHORT_BTREE: Header = Header {
    lsn: 24,
    crc: 52,
    uuid: 32,
};
const LONG_BTREE: Header = Header {
    lsn: 32,
    crc: 64,
    uuid: 40,
};
const DIR3_BLOCK: Header = Header {
    lsn: 16,
    crc: 4,
    uuid: 24,
};
const DA3_BLOCK: Header = Header {
    lsn: 24,
    crc: 12,
    uuid: 32,
};
const REMOTE: Header = Header {
    lsn: 48,
    crc: 12,
    uuid: 16,
};

/// The header of a filesystem block that starts with a v5 metadata magic (inodes are done
/// chunk by chunk, the AG headers sector by sector).
fn block_header(block: &[u8]) -> Option<Header> {
    match &block[0..4] {
        // free space by block and by size, inodes, free inodes, reverse map, refcounts
        b"AB3B" | b"AB3C" | b"IAB3" | b"FIB3" | b"RMB3" | b"R3FC" => Some(SHORT_BTREE),
        b"BMA3" => Some(LONG_BTREE),
        // directory block, data and free-index blocks
        b"XDB3" | b"XDD3" | b"XDF3" => Some(DIR3_BLOCK),
        // remote xattr values, symlink targets
        b"XARM" | b"XSLM" => Some(REMOTE),
        _ => match u16::from_be_bytes([block[8], block[9]]) {
            // directory leaf, leafn, da node, xattr leaf
            0x3df1 | 0x3dff | 0x3ebe | 0x3bee => Some(DA3_BLOCK),
            _ => None,
        },
    }
}

/// The headers of an AG's first sectors: superblock, AGF, AGI, AGFL.
const AG_HEADERS: [(&[u8; 4], Header); 4] = [
    (
        b"XFSB",
        Header {
            lsn: 240,
            crc: 224,
            uuid: 32,
        },
    ),
    (
        b"XAGF",
        Header {
            lsn: 208,
            crc: 216,
            uuid: 64,
        },
    ),
    (
        b"XAGI",
        Header {
            lsn: 320,
            crc: 312,
            uuid: 296,
        },
    ),
    (
        b"XAFL",
        Header {
            lsn: 24,
            crc: 32,
            uuid: 8,
        },
    ),
];

fn crc_without(buf: &[u8], at: usize) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&buf[..at]);
    d.update(&[0; 4]);
    d.update(&buf[at + 4..]);
    d.finalize()
}

/// Sets the LSN of one metadata object to 0 if it is one of this filesystem's (its UUID,
/// its CRC right); returns whether it changed.
fn zero_lsn(buf: &mut [u8], h: Header, uuid: &[u8; 16]) -> bool {
    let crc_ok = || {
        u32::from_le_bytes(buf[h.crc..h.crc + 4].try_into().expect("4 bytes"))
            == crc_without(buf, h.crc)
    };
    if buf[h.uuid..h.uuid + 16] != uuid[..] || !crc_ok() {
        return false;
    }
    if buf[h.lsn..h.lsn + 8] == [0; 8] {
        return false;
    }
    buf[h.lsn..h.lsn + 8].fill(0);
    let crc = crc_without(buf, h.crc);
    buf[h.crc..h.crc + 4].copy_from_slice(&crc.to_le_bytes());
    true
}

/// Every metadata block of the filesystem, LSN 0: the AG headers, then every block with
/// data (holes skipped) but the log's.
fn zero_lsns(f: &File, geo: &Geometry) -> Result<(), RunError> {
    if geo.dirblklog != 0 {
        return Err(RunError::Image {
            problem: "the XFS root has directory blocks larger than a filesystem block".into(),
        });
    }
    let bs = geo.blocksize as usize;
    let end = geo.dblocks * geo.blocksize;
    let ag_bytes = geo.agblocks * geo.blocksize;
    let log =
        geo.fsb_offset(geo.logstart)..geo.fsb_offset(geo.logstart) + geo.logblocks * geo.blocksize;
    let mut sector = vec![0u8; geo.sectsize];
    for ag in 0..end.div_ceil(ag_bytes) {
        for (i, (magic, h)) in AG_HEADERS.iter().enumerate() {
            let at = ag * ag_bytes + (i * geo.sectsize) as u64;
            f.read_exact_at(&mut sector, at)
                .map_err(io("read the XFS root's AG headers"))?;
            if &sector[0..4] == *magic && zero_lsn(&mut sector, *h, &geo.uuid) {
                f.write_all_at(&sector, at)
                    .map_err(io("write the XFS root's AG headers"))?;
            }
        }
    }
    let mut buf = vec![0u8; 4 << 20];
    // Where the blocks read so far end: a range's first block may be the last one read.
    let mut done = 0u64;
    for (data, stop) in crate::fsutil::data_ranges(f, 0, end) {
        let mut at = (data / geo.blocksize * geo.blocksize).max(done);
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len()) / bs * bs;
            let n = n.max(bs);
            f.read_exact_at(&mut buf[..n], at)
                .map_err(io("read the XFS root's metadata"))?;
            for (i, block) in buf[..n].chunks_exact_mut(bs).enumerate() {
                let off = at + (i * bs) as u64;
                if off.is_multiple_of(ag_bytes) || log.contains(&off) {
                    continue;
                }
                if let Some(h) = block_header(block)
                    && zero_lsn(block, h, &geo.uuid)
                {
                    f.write_all_at(block, off)
                        .map_err(io("write the XFS root's metadata"))?;
                }
            }
            at += n as u64;
        }
        done = at;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_chunks_are_read_from_xfs_io() {
        let text = "xi_startino = 128\n\txi_allocmask = 0xffffffffffffffff\n\
                    xi_startino = 4480\n\txi_alloccount = 64\n";
        assert_eq!(parse_inumbers(text), [128, 4480]);
    }

    #[test]
    fn the_loop_device_is_found_by_its_mount_point() {
        let info = "36 25 0:32 / /proc rw - proc proc rw\n\
                    712 698 7:3 / /var/tmp/s\\040x/root.mnt rw - xfs /dev/loop3 rw,nouuid\n";
        assert_eq!(
            loop_device(info, Path::new("/var/tmp/s x/root.mnt")),
            Some("loop3".into())
        );
        assert_eq!(loop_device(info, Path::new("/proc")), None);
    }

    #[test]
    fn bigtime_counts_nanoseconds_from_1901() {
        let mut inode = vec![0u8; 512];
        put_time(&mut inode, DI_MTIME, true, Mtime { sec: 0, nsec: 5 });
        let v = u64::from_be_bytes(inode[DI_MTIME..DI_MTIME + 8].try_into().unwrap());
        assert_eq!(v, (1u64 << 31) * 1_000_000_000 + 5);
        put_time(&mut inode, DI_MTIME, false, Mtime { sec: 7, nsec: 9 });
        assert_eq!(&inode[DI_MTIME..DI_MTIME + 8], &[0, 0, 0, 7, 0, 0, 0, 9]);
    }
}

/// The XFS fill on a real tree, for `benches/xfs.sh` (which times the old copy beside it):
/// `CCB_BENCH_TREE=/path cargo test --lib -- --ignored --nocapture xfs_fill_bench`.
#[cfg(test)]
mod bench {
    #[test]
    #[ignore = "a benchmark: benches/xfs.sh runs it"]
    #[allow(clippy::print_stderr)] // the figures
    fn xfs_fill_bench() {
        let Some(tree) = std::env::var_os("CCB_BENCH_TREE") else {
            return;
        };
        let size: u64 = std::env::var("CCB_BENCH_SIZE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4 << 30);
        let dir = tempfile::tempdir().unwrap();
        let mut digests = Vec::new();
        for run in 0..2 {
            let img = dir.path().join(format!("root{run}.img"));
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            crate::process::Process::new("mkfs.xfs")
                .args([
                    "-f",
                    "-q",
                    "-m",
                    "uuid=0b5f1e62-3c6b-4a53-9d5e-2d1f0c9a7e11",
                ])
                .arg(&img)
                .output()
                .unwrap();
            let started = std::time::Instant::now();
            super::fill(&img, std::path::Path::new(&tree), 1_700_000_000).unwrap();
            eprintln!(
                "xfs fill (ccb, deterministic), run {run}: {:.1} s",
                started.elapsed().as_secs_f64()
            );
            digests.push(blake3::hash(&std::fs::read(&img).unwrap()));
            if std::env::var_os("CCB_BENCH_KEEP").is_none() {
                std::fs::remove_file(&img).unwrap();
            }
        }
        eprintln!("bit-identical: {}", digests[0] == digests[1]);
        if std::env::var_os("CCB_BENCH_KEEP").is_some() {
            eprintln!("kept in {}", dir.keep().display());
        }
    }
}
