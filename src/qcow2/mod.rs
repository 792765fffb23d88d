//! A qcow2 writer: a raw disk file in, a qcow2 (version 3) image out, in one streaming pass.
//!
//! What `qemu-img convert -c -O qcow2` writes, in the same on-disk format, so that QEMU, the
//! clouds' image services and ccb's own reader ([`crate::inspect::qcow2`]) all read it:
//! 64 KiB clusters, 16-bit refcounts, clusters compressed as raw deflate
//! (`compression_type` zlib), clusters that are all zeros left unallocated (they read as
//! zeros: the image has no backing file), and a cluster that does not shrink stored as is.
//!
//! Why not `qemu-img`: it compresses with zlib at level 6, one cluster per coroutine, and at
//! most a few threads; here every cluster of a batch is compressed on every core (rayon) with
//! libdeflate, which gives a smaller result than zlib at the same level in a fraction of the
//! time, and at [`LEVEL`] still a smaller one than QEMU's. Decompression needs nothing new: QEMU inflates a whole cluster in one call, so the
//! 32 KiB window libdeflate uses is read back exactly (the tests convert with `qemu-img`).
//!
//! The file is written front to back: the header's cluster, then the data clusters as they
//! come (compressed ones packed byte after byte, as QEMU packs them), then the L2 tables, the
//! L1 table and the refcounts, which only then are known; finally the header. It is written
//! under a temporary name in the destination's directory and renamed into place once synced,
//! so a failed or killed conversion never leaves a half-written image under the real name.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

mod ahead;
pub use ahead::{Ahead, HeadStart};

const MAGIC: u32 = 0x5146_49fb;
const VERSION: u32 = 3;
/// QEMU's default, and what every image ccb reads from the clouds uses.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 16-bit refcounts (QEMU's default).
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const L2_ENTRIES: u64 = CLUSTER / 8;
/// The v3 header with the `compression_type` byte and its padding, as QEMU writes it.
const HEADER_LEN: u32 = 112;
const SECTOR: u64 = 512;

const L2_COPIED: u64 = 1 << 63;
const L2_COMPRESSED: u64 = 1 << 62;
/// In a compressed cluster's L2 entry, the bits below this hold the host byte offset and the
/// bits from it up to 61 the number of 512-byte sectors the data touches, minus one.
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
const CSIZE_MASK: u64 = (1 << (CLUSTER_BITS - 8)) - 1;

/// libdeflate's level. Measured on CC-Debian12 (1.45 GB of data clusters): `qemu-img`'s
/// zlib at level 6 writes 538.9 MB; libdeflate at 6 writes 501.6 MB, at 4 512.0 MB and at 2
/// 519.1 MB, still 3.7 % less than QEMU's, with about 10 % less CPU than 4 (compression is
/// most of a disk action's work on a two-core builder, where the goal is the disk action's
/// time). Level 1 writes more than QEMU.
pub const LEVEL: i32 = 2;

/// Clusters read, compressed and written per batch: enough work to keep every core busy,
/// little enough memory (16 MiB in, at most as much out) to stream any disk.
const BATCH_CLUSTERS: usize = 256;
/// Batches read ahead of the digest's thread at most (each holds its buffer).
const HASH_QUEUE: usize = 2;
/// Clusters stored as they are wait for this many of them (16 MiB) before being written.
const PENDING_RAW: usize = 256;

/// How the clusters of the image are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Every non-zero cluster as is.
    None,
    /// Raw deflate per cluster (QEMU's `compression_type=zlib`, the default of `-c`), at
    /// libdeflate's [`LEVEL`].
    Zlib,
}

impl Compression {
    /// The `compression_type` names of `qemu-img`; `None` for those this writer does not
    /// write (zstd).
    pub fn from_qemu_name(name: Option<&str>) -> Option<Compression> {
        match name {
            None => Some(Compression::None),
            Some("zlib") => Some(Compression::Zlib),
            Some(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Qcow2WriteError {
    #[error("qcow2: cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "qcow2: `{}` is {size} bytes, not a whole number of 512-byte sectors",
        path.display()
    )]
    NotSectors { path: PathBuf, size: u64 },
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> Qcow2WriteError + use<'p> {
    move |source| Qcow2WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub virtual_size: u64,
    pub file_size: u64,
    /// Guest clusters that hold data (the rest are zeros, left unallocated).
    pub data_clusters: u64,
    /// Of those, the clusters stored compressed.
    pub compressed_clusters: u64,
}

/// Converts the raw disk `src` into the qcow2 image `dst` (replaced atomically).
/// With a `head` start ([`Ahead`]), clusters whose bytes it compressed already are not
/// compressed again.
pub fn convert_raw(
    src: &Path,
    dst: &Path,
    compression: Compression,
    head: Option<&HeadStart>,
) -> Result<Stats, Qcow2WriteError> {
    convert(src, dst, compression, None, head)
}

/// [`convert_raw`], and the SHA-256 of `src` (hex; its holes read as zeros) from the bytes the
/// conversion reads anyway, hashed beside the compression: a disk that is an output as well
/// as the qcow2's source was read a second time for its checksum, GBs through one core.
pub fn convert_raw_with_digest(
    src: &Path,
    dst: &Path,
    compression: Compression,
    head: Option<&HeadStart>,
) -> Result<(Stats, String), Qcow2WriteError> {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    let stats = convert(src, dst, compression, Some(&mut digest), head)?;
    let hex = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((stats, hex))
}

fn convert(
    src: &Path,
    dst: &Path,
    compression: Compression,
    digest: Option<&mut sha2::Sha256>,
    head: Option<&HeadStart>,
) -> Result<Stats, Qcow2WriteError> {
    let input = File::open(src).map_err(io_err("open", src))?;
    let size = input.metadata().map_err(io_err("stat", src))?.len();
    if size % SECTOR != 0 {
        return Err(Qcow2WriteError::NotSectors {
            path: src.to_path_buf(),
            size,
        });
    }
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ccb-qcow2-")
        .tempfile_in(dir)
        .map_err(io_err("create a file in", dir))?;
    let stats = {
        let out = tmp.as_file();
        let mut w = Writer::new(out, tmp.path(), size)?;
        w.data(&input, src, size, compression, digest, head)?;
        w.finish()?
    };
    // Readable by all, as qemu-img's output is (a temporary file starts private).
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io_err("chmod", tmp.path()))?;
    tmp.as_file()
        .sync_data()
        .map_err(io_err("sync", tmp.path()))?;
    tmp.persist(dst)
        .map_err(|e| io_err("rename into place", dst)(e.error))?;
    Ok(stats)
}

/// A batch of the raw disk: `len` bytes from `start` in `buf` (zeros where the file has
/// holes, up to the next cluster boundary), unless it is all hole (`buf` then unread, kept
/// only to be used again).
struct Batch {
    start: u64,
    len: usize,
    buf: Vec<u8>,
    hole: bool,
}

/// Reads the batch at `start` of the `size`-byte disk into `buf` (of a batch's size); `None`
/// past the end.
fn read_batch(
    input: &File,
    src: &Path,
    start: u64,
    size: u64,
    mut buf: Vec<u8>,
) -> Result<Option<Batch>, Qcow2WriteError> {
    if start >= size {
        return Ok(None);
    }
    let end = (start + buf.len() as u64).min(size);
    let len = (end - start) as usize;
    let ranges = crate::fsutil::data_ranges(input, start, end);
    let hole = ranges.is_empty();
    // Zeros only where no data is read: the holes between ranges and the last cluster's tail.
    let mut at = 0;
    for (a, b) in ranges {
        let (a, b) = ((a - start) as usize, (b - start) as usize);
        buf[at..a].fill(0);
        input
            .read_exact_at(&mut buf[a..b], start + a as u64)
            .map_err(io_err("read", src))?;
        at = b;
    }
    if !hole {
        buf[at..len.next_multiple_of(CLUSTER as usize)].fill(0);
    }
    Ok(Some(Batch {
        start,
        len,
        buf,
        hole,
    }))
}

fn is_zero(buf: &[u8]) -> bool {
    // A branch-free OR over each block (vectorised) with an exit after it: most clusters
    // with data have some in their first block.
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

thread_local! {
    /// One compressor per rayon worker: libdeflate's state is large to allocate per cluster.
    static DEFLATE: std::cell::RefCell<Option<libdeflater::Compressor>> =
        const { std::cell::RefCell::new(None) };
}

/// Raw deflate of `cluster` into `out`, if it fits.
fn deflate(cluster: &[u8], out: &mut [u8]) -> Option<usize> {
    DEFLATE.with(|z| {
        let mut z = z.borrow_mut();
        let z = z.get_or_insert_with(|| {
            libdeflater::Compressor::new(
                libdeflater::CompressionLvl::new(LEVEL).expect("LEVEL is a valid level"),
            )
        });
        z.deflate_compress(cluster, out).ok()
    })
}

/// How each cluster of a batch (the first is guest cluster `first`) is stored, decided (and
/// compressed) on every core, or taken from the head start where its bytes are the same.
fn compress_batch(
    chunk: &[u8],
    first: u64,
    compression: Compression,
    head: Option<&HeadStart>,
) -> Vec<Stored> {
    chunk
        .par_chunks(CLUSTER as usize)
        .enumerate()
        .map(|(i, cluster)| {
            if is_zero(cluster) {
                return Stored::Zero;
            }
            head.and_then(|h| h.reuse(first + i as u64, cluster, compression))
                .unwrap_or_else(|| store_cluster(cluster, compression))
        })
        .collect()
}

/// How a cluster that is not all zeros is stored.
fn store_cluster(cluster: &[u8], compression: Compression) -> Stored {
    if compression == Compression::None {
        return Stored::Raw;
    }
    // As QEMU: compressed only if it saves at least a byte.
    let mut out = vec![0u8; CLUSTER as usize - 1];
    match deflate(cluster, &mut out) {
        Some(n) => {
            out.truncate(n);
            Stored::Compressed(out)
        }
        None => Stored::Raw,
    }
}

/// A cluster as it goes to the file.
#[derive(Clone)]
enum Stored {
    Zero,
    Raw,
    Compressed(Vec<u8>),
}

struct Writer<'a> {
    out: BufWriter<&'a File>,
    path: &'a Path,
    /// The next byte written goes here.
    pos: u64,
    virtual_size: u64,
    /// One entry per guest cluster (0: unallocated).
    l2: Vec<u64>,
    /// Per host cluster: how many entries point into it (metadata is added at the end).
    refcounts: Vec<u16>,
    /// Clusters to store as they are (guest cluster, bytes), not yet written.
    pending: Vec<(usize, Vec<u8>)>,
    stats: Stats,
}

impl<'a> Writer<'a> {
    fn new(out: &'a File, path: &'a Path, virtual_size: u64) -> Result<Self, Qcow2WriteError> {
        let clusters = virtual_size.div_ceil(CLUSTER) as usize;
        let mut w = Writer {
            out: BufWriter::with_capacity(4 << 20, out),
            path,
            pos: 0,
            virtual_size,
            l2: vec![0; clusters],
            refcounts: Vec::new(),
            pending: Vec::new(),
            stats: Stats {
                virtual_size,
                ..Stats::default()
            },
        };
        // The header's cluster, written last; its place is kept now.
        w.write(&[0u8; CLUSTER as usize])?;
        w.refer(0, CLUSTER);
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Qcow2WriteError> {
        self.out
            .write_all(bytes)
            .map_err(io_err("write", self.path))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn align(&mut self) -> Result<(), Qcow2WriteError> {
        let pad = self.pos.next_multiple_of(CLUSTER) - self.pos;
        if pad > 0 {
            self.write(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    /// Counts one reference to every host cluster that `[offset, offset + len)` touches.
    fn refer(&mut self, offset: u64, len: u64) {
        let first = offset / CLUSTER;
        let last = (offset + len - 1) / CLUSTER;
        if self.refcounts.len() <= last as usize {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.refcounts[c as usize] += 1;
        }
    }

    fn data(
        &mut self,
        input: &File,
        src: &Path,
        size: u64,
        compression: Compression,
        digest: Option<&mut sha2::Sha256>,
        head: Option<&HeadStart>,
    ) -> Result<(), Qcow2WriteError> {
        use sha2::Digest;
        use std::sync::mpsc;
        let batch_bytes = BATCH_CLUSTERS * CLUSTER as usize;
        std::thread::scope(|s| {
            // Buffers go round: read into, compressed from, hashed, then read into again.
            let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
            // The digest on a thread of its own, fed in order (holes as zeros): hashed between
            // batches, it left the other core idle for every hole and every batch's hash.
            let hasher = match digest {
                Some(d) => {
                    let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize, bool)>(HASH_QUEUE);
                    let spare = spare_tx.clone();
                    let handle = std::thread::Builder::new()
                        .name("ccb-qcow2-sha256".into())
                        .spawn_scoped(s, move || {
                            let zeros = vec![0u8; batch_bytes];
                            for (buf, len, hole) in rx {
                                d.update(if hole { &zeros[..len] } else { &buf[..len] });
                                let _ = spare.send(buf);
                            }
                        })
                        .map_err(io_err("start the checksum thread for", src))?;
                    Some((tx, handle))
                }
                None => None,
            };
            let buffer = || {
                spare_rx
                    .try_recv()
                    .unwrap_or_else(|_| vec![0u8; batch_bytes])
            };
            let result = (|| {
                let mut next = read_batch(input, src, 0, size, buffer())?;
                while let Some(batch) = next.take() {
                    let (after, into) = (batch.start + batch.len as u64, buffer());
                    // The next batch is read while this one is compressed.
                    let (read, stored) = rayon::join(
                        || read_batch(input, src, after, size, into),
                        || {
                            (!batch.hole).then(|| {
                                compress_batch(
                                    &batch.buf[..batch.len.next_multiple_of(CLUSTER as usize)],
                                    batch.start / CLUSTER,
                                    compression,
                                    head,
                                )
                            })
                        },
                    );
                    next = read?;
                    if let Some(stored) = stored {
                        self.store_batch(batch.start, &batch.buf, stored)?;
                    }
                    match &hasher {
                        Some((tx, _)) => {
                            // Only a hasher that stopped closes its end: its panic is
                            // raised when it is joined below.
                            let _ = tx.send((batch.buf, batch.len, batch.hole));
                        }
                        None => {
                            let _ = spare_tx.send(batch.buf);
                        }
                    }
                }
                self.flush_raw()
            })();
            if let Some((tx, handle)) = hasher {
                drop(tx);
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            result
        })
    }

    /// Writes (or keeps for [`Self::flush_raw`]) the clusters of the batch at `start`.
    fn store_batch(
        &mut self,
        start: u64,
        buf: &[u8],
        stored: Vec<Stored>,
    ) -> Result<(), Qcow2WriteError> {
        let first = (start / CLUSTER) as usize;
        for (i, s) in stored.into_iter().enumerate() {
            let guest = first + i;
            match s {
                Stored::Zero => continue,
                Stored::Raw => {
                    let c = i * CLUSTER as usize;
                    self.pending
                        .push((guest, buf[c..c + CLUSTER as usize].to_vec()));
                    if self.pending.len() >= PENDING_RAW {
                        self.flush_raw()?;
                    }
                }
                Stored::Compressed(bytes) => {
                    let at = self.pos;
                    self.write(&bytes)?;
                    let len = bytes.len() as u64;
                    // QEMU reads (and counts) whole sectors from the one holding `at`.
                    let sectors = (at + len - 1) / SECTOR - at / SECTOR;
                    debug_assert!(sectors <= CSIZE_MASK, "a compressed cluster under 64 KiB");
                    self.refer(at, (at + len).next_multiple_of(SECTOR) - at);
                    self.stats.compressed_clusters += 1;
                    self.l2[guest] = L2_COMPRESSED | (sectors << CSIZE_SHIFT) | at;
                }
            }
            self.stats.data_clusters += 1;
        }
        Ok(())
    }

    /// Writes the clusters kept as they are, each in a host cluster of its own. They wait in
    /// memory so that the compressed stream is cut (and padded to a cluster boundary) once
    /// per many of them rather than once each.
    fn flush_raw(&mut self) -> Result<(), Qcow2WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.align()?;
        for (guest, bytes) in std::mem::take(&mut self.pending) {
            let at = self.pos;
            self.write(&bytes)?;
            self.refer(at, CLUSTER);
            self.l2[guest] = at | L2_COPIED;
        }
        Ok(())
    }

    /// The tables, then the header.
    fn finish(mut self) -> Result<Stats, Qcow2WriteError> {
        // Compressed data may end mid-sector; QEMU reads whole sectors.
        self.align()?;
        let l1_size = self.l2.len().div_ceil(L2_ENTRIES as usize);
        let mut l1 = vec![0u64; l1_size];
        let l2 = std::mem::take(&mut self.l2);
        for (i, table) in l2.chunks(L2_ENTRIES as usize).enumerate() {
            if table.iter().all(|&e| e == 0) {
                continue;
            }
            let at = self.pos;
            let mut bytes = vec![0u8; CLUSTER as usize];
            for (j, e) in table.iter().enumerate() {
                bytes[j * 8..j * 8 + 8].copy_from_slice(&e.to_be_bytes());
            }
            self.write(&bytes)?;
            self.refer(at, CLUSTER);
            l1[i] = at | L2_COPIED;
        }
        // Then the refcount blocks and their table, which must count themselves, and the L1
        // table last: it is the one structure that may end the file mid-cluster, as the data
        // would otherwise have to (QEMU's file ends with its data).
        let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(CLUSTER);
        let first = self.pos / CLUSTER;
        let (mut blocks, mut table) = (0u64, 0u64);
        loop {
            let total = first + blocks + table + l1_clusters;
            let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let t = (b * 8).div_ceil(CLUSTER);
            if (b, t) == (blocks, table) {
                break;
            }
            (blocks, table) = (b, t);
        }
        let blocks_offset = self.pos;
        let table_offset = blocks_offset + blocks * CLUSTER;
        let l1_offset = table_offset + table * CLUSTER;
        self.refer(blocks_offset, (blocks + table) * CLUSTER);
        if !l1_bytes.is_empty() {
            self.refer(l1_offset, l1_bytes.len() as u64);
        }
        let mut refcounts = std::mem::take(&mut self.refcounts);
        refcounts.resize((blocks * REFCOUNTS_PER_BLOCK) as usize, 0);
        for block in refcounts.chunks(REFCOUNTS_PER_BLOCK as usize) {
            let bytes: Vec<u8> = block.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.write(&bytes)?;
        }
        let mut table_bytes = vec![0u8; (table * CLUSTER) as usize];
        for i in 0..blocks {
            let at = blocks_offset + i * CLUSTER;
            table_bytes[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&at.to_be_bytes());
        }
        self.write(&table_bytes)?;
        debug_assert_eq!(self.pos, l1_offset);
        self.write(&l1_bytes)?;
        let file_size = self.pos;

        let mut h = Vec::with_capacity(HEADER_LEN as usize + 8);
        h.extend(MAGIC.to_be_bytes());
        h.extend(VERSION.to_be_bytes());
        h.extend(0u64.to_be_bytes()); // backing_file_offset
        h.extend(0u32.to_be_bytes()); // backing_file_size
        h.extend(CLUSTER_BITS.to_be_bytes());
        h.extend(self.virtual_size.to_be_bytes());
        h.extend(0u32.to_be_bytes()); // crypt_method
        h.extend((l1_size as u32).to_be_bytes());
        h.extend(l1_offset.to_be_bytes());
        h.extend(table_offset.to_be_bytes());
        h.extend((table as u32).to_be_bytes());
        h.extend(0u32.to_be_bytes()); // nb_snapshots
        h.extend(0u64.to_be_bytes()); // snapshots_offset
        h.extend(0u64.to_be_bytes()); // incompatible_features
        h.extend(0u64.to_be_bytes()); // compatible_features
        h.extend(0u64.to_be_bytes()); // autoclear_features
        h.extend(REFCOUNT_ORDER.to_be_bytes());
        h.extend(HEADER_LEN.to_be_bytes());
        h.push(0); // compression_type: zlib
        h.extend([0u8; 7]);
        h.extend([0u8; 8]); // the end of the header extensions
        let mut out = self
            .out
            .into_inner()
            .map_err(|e| io_err("write", self.path)(e.into_error()))?;
        out.seek(SeekFrom::Start(0))
            .map_err(io_err("write", self.path))?;
        out.write_all(&h).map_err(io_err("write", self.path))?;
        out.set_len(file_size).map_err(io_err("size", self.path))?;
        Ok(Stats {
            file_size,
            ..self.stats
        })
    }
}
