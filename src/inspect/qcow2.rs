//! A read-only qcow2 reader (versions 2 and 3) over any [`ReadAt`], so that the same code reads
//! a local file and an object fetched with HTTP range requests.
//!
//! Supported: L1/L2 tables, standard and extended (subcluster) L2 entries, zero clusters,
//! deflate and zstd compressed clusters, and backing chains of qcow2 and raw files. Refused with
//! an error: encryption, external data files, images marked corrupt and unknown incompatible
//! features. Snapshots are ignored: what is read is the active layer, as `qemu-img convert` does.
//!
//! The layout follows QEMU's `docs/interop/qcow2.txt`; where that text leaves room, the
//! behaviour follows QEMU's block driver, so that a byte read here equals what
//! `qemu-img convert -O raw` writes.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use super::ReadAt;

/// The first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// QEMU refuses clusters outside 512 B..=2 MiB; anything else is a damaged header.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// Room for the v3 header and its optional `compression_type` byte and padding.
const HEADER_BUF_LEN: usize = 112;
/// QEMU's own cap on the L1 table (`QCOW_MAX_L1_SIZE`).
const MAX_L1_BYTES: u64 = 32 << 20;
/// The qcow2 specification's limit on the backing file name.
const MAX_BACKING_NAME_LEN: u64 = 1023;
/// Backing files below the image being opened; a longer chain is taken to be a loop that
/// does not repeat a name (`a` and `./a`).
pub const MAX_BACKING_DEPTH: usize = 16;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;

/// Bits 9..=55 of L1 and standard L2 entries: a cluster-aligned host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const SUBCLUSTERS: u32 = 32;
/// Extended L2 splits a cluster into 32 subclusters, which QEMU wants to be at least 512 B.
const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;

/// Enough L2 tables to stream through a disk and jump between a few places in it without
/// rereading; bytes rather than entries because an L2 table is a whole cluster (up to 2 MiB).
const L2_CACHE_BYTES: u64 = 4 << 20;
/// Reads smaller than a cluster (filesystem blocks) hit the same compressed cluster many times.
const CLUSTER_CACHE_BYTES: u64 = 8 << 20;
/// The caches are searched linearly, which stays cheap for this many entries.
const MAX_CACHE_ENTRIES: u64 = 64;
/// ruzstd reserves the window a frame declares before decoding it; QEMU's frames are one
/// cluster (at most 2 MiB), so a larger claim only costs memory.
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Why a qcow2 image cannot be opened or read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum Qcow2Error {
    #[error("not a qcow2 image: it starts with {found:02x?}, not the qcow2 magic \"QFI\\xfb\"")]
    #[diagnostic(code(ccb::qcow2::not_qcow2))]
    NotQcow2 { found: Vec<u8> },
    #[error(
        "{what} at 0x{offset:x} ({len} bytes) extends past the end of the {file_size}-byte file"
    )]
    #[diagnostic(
        code(ccb::qcow2::past_eof),
        help("the image is truncated or its metadata is corrupt")
    )]
    PastEof {
        what: String,
        offset: u64,
        len: u64,
        file_size: u64,
    },
    #[error("cannot read {what} at 0x{offset:x}: {source}")]
    #[diagnostic(code(ccb::qcow2::read))]
    Read {
        what: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("qcow2 version {0} is not supported (only versions 2 and 3 are)")]
    #[diagnostic(code(ccb::qcow2::version))]
    UnsupportedVersion(u32),
    #[error(
        "the header's cluster_bits is {0}, outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} \
         (clusters of 512 B to 2 MiB)"
    )]
    #[diagnostic(code(ccb::qcow2::cluster_bits))]
    BadClusterBits(u32),
    #[error("the image is encrypted (crypt_method {method}: {}), which is not supported", crypt_method_name(*.method))]
    #[diagnostic(
        code(ccb::qcow2::encrypted),
        help("decrypt it first: `qemu-img convert --object secret,... -O qcow2 ...`")
    )]
    Encrypted { method: u32 },
    #[error(
        "the image keeps its data in an external data file (incompatible feature bit 2), \
         which is not supported"
    )]
    #[diagnostic(code(ccb::qcow2::external_data_file))]
    ExternalDataFile,
    #[error("the image is marked corrupt (incompatible feature bit 1)")]
    #[diagnostic(
        code(ccb::qcow2::marked_corrupt),
        help(
            "QEMU marked it after finding inconsistent metadata; `qemu-img check -r all` may repair it"
        )
    )]
    MarkedCorrupt,
    #[error("the image uses incompatible features this reader does not know: {features}")]
    #[diagnostic(code(ccb::qcow2::unknown_features))]
    UnknownIncompatibleFeatures { bits: u64, features: String },
    #[error("invalid qcow2 header: {0}")]
    #[diagnostic(code(ccb::qcow2::header))]
    BadHeader(String),
    #[error("corrupt qcow2 metadata for guest offset 0x{guest:x}: {problem}")]
    #[diagnostic(code(ccb::qcow2::metadata))]
    BadMetadata { guest: u64, problem: String },
    #[error(
        "the compressed cluster at 0x{host:x} (guest offset 0x{guest:x}) does not decompress \
         ({codec}): {problem}"
    )]
    #[diagnostic(code(ccb::qcow2::decompress))]
    Decompress {
        guest: u64,
        host: u64,
        codec: &'static str,
        problem: String,
    },
    #[error("cannot open backing file `{name}`: {source}")]
    #[diagnostic(code(ccb::qcow2::backing_open))]
    BackingOpen {
        name: String,
        #[source]
        source: io::Error,
    },
    /// A resolver that will not open backing files says why, e.g. "a published image has a
    /// backing file (base.qcow2)".
    #[error("{0}")]
    #[diagnostic(code(ccb::qcow2::backing))]
    Backing(String),
    #[error(
        "backing file `{name}` has format `{format}`; only raw and qcow2 backing files are supported"
    )]
    #[diagnostic(code(ccb::qcow2::backing_format))]
    UnsupportedBackingFormat { name: String, format: String },
    #[error("backing file `{name}`: {source}")]
    #[diagnostic(code(ccb::qcow2::in_backing))]
    InBacking {
        name: String,
        #[source]
        source: Box<Qcow2Error>,
    },
    #[error("backing chain loop: `{name}` is its own backing file, directly or through others")]
    #[diagnostic(code(ccb::qcow2::backing_loop))]
    BackingLoop { name: String },
    #[error("the backing chain is more than {limit} files deep (a loop?)")]
    #[diagnostic(code(ccb::qcow2::backing_depth))]
    BackingChainTooDeep { limit: usize },
    #[error("cannot read backing file `{name}` at 0x{offset:x}: {source}")]
    #[diagnostic(code(ccb::qcow2::backing_read))]
    BackingRead {
        name: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

fn crypt_method_name(method: u32) -> &'static str {
    match method {
        1 => "AES",
        2 => "LUKS",
        _ => "unknown",
    }
}

impl Qcow2Error {
    /// The error as the `io::Error` that [`ReadAt::read_at`] returns, keeping the kind of an
    /// underlying I/O failure (a network error stays one) and calling the rest invalid data.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            Qcow2Error::Read { source, .. } | Qcow2Error::BackingRead { source, .. } => {
                source.kind()
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Opens a backing file by name, as the image that refers to it spells it; `Qcow2` has already
/// made names of nested backing files relative to the directory of the top image.
pub type ResolveBacking<'a> = &'a dyn Fn(&str) -> Result<Arc<dyn ReadAt>, Qcow2Error>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Deflate,
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::Deflate => "deflate",
            Compression::Zstd => "zstd",
        }
    }
}

/// A qcow2 image, read as its virtual disk.
pub struct Qcow2 {
    file: Arc<dyn ReadAt>,
    file_size: u64,
    version: u32,
    cluster_bits: u32,
    /// log2 of the entries in one L2 table.
    l2_bits: u32,
    extended_l2: bool,
    compression: Compression,
    virtual_size: u64,
    l1: Vec<u64>,
    backing_name: Option<String>,
    backing: Option<Arc<dyn ReadAt>>,
    caches: Mutex<Caches>,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("version", &self.version)
            .field("cluster_size", &self.cluster_size())
            .field("extended_l2", &self.extended_l2)
            .field("compression", &self.compression)
            .field("virtual_size", &self.virtual_size)
            .field("backing_file", &self.backing_name)
            .finish_non_exhaustive()
    }
}

/// What the fixed header and its extensions say.
struct Header {
    version: u32,
    cluster_bits: u32,
    virtual_size: u64,
    l1_size: u32,
    l1_offset: u64,
    extended_l2: bool,
    compression: Compression,
    backing_name: Option<String>,
    backing_format: Option<String>,
}

impl Qcow2 {
    /// Opens a qcow2 image and, through `resolve_backing`, its backing chain. The names given
    /// to `resolve_backing` are relative to the directory of this image: a backing file's own
    /// backing name is joined to the directory part of the name it was opened by.
    pub fn open(
        file: Arc<dyn ReadAt>,
        resolve_backing: ResolveBacking<'_>,
    ) -> Result<Self, Qcow2Error> {
        Self::open_in_chain(file, resolve_backing, None, &mut Vec::new())
    }

    /// The backing file name as the header spells it.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }

    /// The size of the virtual disk in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// `name` is this image's name relative to the top image's directory (`None` for the top
    /// image); `chain` holds the names of the backing files opened above it.
    fn open_in_chain(
        file: Arc<dyn ReadAt>,
        resolve: ResolveBacking<'_>,
        name: Option<&str>,
        chain: &mut Vec<String>,
    ) -> Result<Self, Qcow2Error> {
        let file_size = file.size();
        let header = read_header(&*file, file_size)?;
        let l1 = read_l1(&*file, file_size, &header)?;
        let backing = match &header.backing_name {
            None => None,
            Some(backing_name) => Some(open_backing(
                name,
                backing_name,
                header.backing_format.as_deref(),
                resolve,
                chain,
            )?),
        };
        let cluster_bits = header.cluster_bits;
        let l2_bits = cluster_bits - if header.extended_l2 { 4 } else { 3 };
        let cluster_size = 1u64 << cluster_bits;
        let cache_entries =
            |bytes: u64| (bytes / cluster_size).clamp(1, MAX_CACHE_ENTRIES) as usize;
        let caches = Caches {
            l2: Lru::new(cache_entries(L2_CACHE_BYTES)),
            clusters: Lru::new(cache_entries(CLUSTER_CACHE_BYTES)),
        };
        Ok(Qcow2 {
            file,
            file_size,
            version: header.version,
            cluster_bits,
            l2_bits,
            extended_l2: header.extended_l2,
            compression: header.compression,
            virtual_size: header.virtual_size,
            l1,
            backing_name: header.backing_name,
            backing,
            caches: Mutex::new(caches),
        })
    }

    fn read_inner(&self, offset: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        // Neighbouring units that map to one contiguous host range (or to the backing file)
        // are read with one call: over HTTP every call can be a request.
        let mut run: Option<Run> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let (extent, unit_left) = self.map(guest)?;
            let n = usize::try_from(unit_left)
                .unwrap_or(usize::MAX)
                .min(buf.len() - pos);
            let next = match extent {
                Extent::Data(host) => Some(Run::Data {
                    guest,
                    host,
                    at: pos,
                    len: n,
                }),
                Extent::Backing => Some(Run::Backing {
                    guest,
                    at: pos,
                    len: n,
                }),
                Extent::Zero => {
                    buf[pos..pos + n].fill(0);
                    None
                }
                Extent::Compressed(entry) => {
                    let data = self.compressed_cluster(entry, guest)?;
                    let start = (guest & (self.cluster_size() - 1)) as usize;
                    let src =
                        data.get(start..start + n)
                            .ok_or_else(|| Qcow2Error::BadMetadata {
                                guest,
                                problem: "a decompressed cluster is shorter than a cluster".into(),
                            })?;
                    buf[pos..pos + n].copy_from_slice(src);
                    None
                }
            };
            run = match (run, next) {
                (Some(done), Some(next)) => match done.merge(next) {
                    Ok(merged) => Some(merged),
                    Err((done, next)) => {
                        self.read_run(done, buf)?;
                        Some(next)
                    }
                },
                (Some(done), None) => {
                    self.read_run(done, buf)?;
                    None
                }
                (None, next) => next,
            };
            pos += n;
        }
        if let Some(r) = run {
            self.read_run(r, buf)?;
        }
        Ok(())
    }

    fn read_run(&self, run: Run, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        match run {
            Run::Data {
                guest,
                host,
                at,
                len,
            } => {
                let out = &mut buf[at..at + len];
                read_checked(&*self.file, self.file_size, host, out, || {
                    format!("the data for guest offset 0x{guest:x}")
                })
            }
            Run::Backing { guest, at, len } => self.read_backing(guest, &mut buf[at..at + len]),
        }
    }

    fn read_backing(&self, guest: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        // A backing file shorter than the image reads as zeros past its end.
        let available = backing.size().saturating_sub(guest);
        let n = usize::try_from(available)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        if !head.is_empty() {
            backing
                .read_at(guest, head)
                .map_err(|source| Qcow2Error::BackingRead {
                    name: self.backing_name.clone().unwrap_or_default(),
                    offset: guest,
                    source,
                })?;
        }
        tail.fill(0);
        Ok(())
    }

    /// Where the byte at `guest` comes from, and how many bytes from it on come from the same
    /// place in the same way (to the end of its cluster or subcluster).
    fn map(&self, guest: u64) -> Result<(Extent, u64), Qcow2Error> {
        let cluster_size = self.cluster_size();
        let in_cluster = guest & (cluster_size - 1);
        let to_cluster_end = cluster_size - in_cluster;
        let cluster = guest >> self.cluster_bits;
        let l1_index = cluster >> self.l2_bits;
        let l2_index = cluster & ((1u64 << self.l2_bits) - 1);
        let l1_entry = usize::try_from(l1_index)
            .ok()
            .and_then(|i| self.l1.get(i))
            .copied()
            .ok_or_else(|| Qcow2Error::BadMetadata {
                guest,
                problem: format!("L1 entry {l1_index} is past the end of the L1 table"),
            })?;
        let l2_offset = l1_entry & OFFSET_MASK;
        let (entry, bitmap) = if l2_offset == 0 {
            (0, 0)
        } else {
            let table = self.l2_table(l2_offset, l1_index, guest)?;
            let i = if self.extended_l2 {
                l2_index * 2
            } else {
                l2_index
            };
            let at = |i: u64| usize::try_from(i).ok().and_then(|i| table.get(i)).copied();
            let entry = at(i);
            let bitmap = if self.extended_l2 { at(i + 1) } else { Some(0) };
            match (entry, bitmap) {
                (Some(e), Some(b)) => (e, b),
                _ => {
                    return Err(Qcow2Error::BadMetadata {
                        guest,
                        problem: format!("L2 index {l2_index} is past the end of its table"),
                    });
                }
            }
        };

        if entry & L2_COMPRESSED != 0 {
            // Compressed clusters ignore the subcluster bitmap.
            return Ok((Extent::Compressed(entry), to_cluster_end));
        }
        let host = entry & OFFSET_MASK;
        let check_aligned = || {
            if host & (cluster_size - 1) != 0 {
                Err(Qcow2Error::BadMetadata {
                    guest,
                    problem: format!(
                        "L2 entry {l2_index} of L1 entry {l1_index} points to 0x{host:x}, \
                         which is not cluster-aligned"
                    ),
                })
            } else {
                Ok(())
            }
        };
        if !self.extended_l2 {
            if entry & L2_ZERO != 0 {
                if self.version < 3 {
                    return Err(Qcow2Error::BadMetadata {
                        guest,
                        problem: "a zero cluster in a version 2 image".into(),
                    });
                }
                return Ok((Extent::Zero, to_cluster_end));
            }
            if host == 0 {
                return Ok((Extent::Backing, to_cluster_end));
            }
            check_aligned()?;
            return Ok((Extent::Data(host + in_cluster), to_cluster_end));
        }

        let subcluster_bits = self.cluster_bits - SUBCLUSTERS.trailing_zeros();
        let subcluster = in_cluster >> subcluster_bits;
        let to_subcluster_end = ((subcluster + 1) << subcluster_bits) - in_cluster;
        let allocated = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if allocated & zero != 0 {
            return Err(Qcow2Error::BadMetadata {
                guest,
                problem: format!(
                    "extended L2 entry {l2_index} of L1 entry {l1_index} marks subclusters \
                     both allocated and zero (bitmap 0x{bitmap:016x})"
                ),
            });
        }
        if host == 0 && allocated != 0 {
            return Err(Qcow2Error::BadMetadata {
                guest,
                problem: format!(
                    "extended L2 entry {l2_index} of L1 entry {l1_index} has allocated \
                     subclusters but no cluster (bitmap 0x{bitmap:016x})"
                ),
            });
        }
        let extent = if zero & (1 << subcluster) != 0 {
            Extent::Zero
        } else if allocated & (1 << subcluster) != 0 {
            check_aligned()?;
            Extent::Data(host + in_cluster)
        } else {
            Extent::Backing
        };
        Ok((extent, to_subcluster_end))
    }

    fn l2_table(
        &self,
        l2_offset: u64,
        l1_index: u64,
        guest: u64,
    ) -> Result<Arc<[u64]>, Qcow2Error> {
        if let Some(table) = self.lock_caches().l2.get(l2_offset) {
            return Ok(table);
        }
        let cluster_size = self.cluster_size();
        let what = || {
            format!(
                "the L2 table for guest cluster {} (L1 entry {l1_index})",
                guest >> self.cluster_bits
            )
        };
        if l2_offset & (cluster_size - 1) != 0 {
            return Err(Qcow2Error::BadMetadata {
                guest,
                problem: format!("{} at 0x{l2_offset:x} is not cluster-aligned", what()),
            });
        }
        let mut bytes = vec![0u8; cluster_size as usize];
        read_checked(&*self.file, self.file_size, l2_offset, &mut bytes, what)?;
        let table: Arc<[u64]> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        self.lock_caches().l2.put(l2_offset, table.clone());
        Ok(table)
    }

    /// The whole decompressed cluster that a compressed L2 entry describes.
    fn compressed_cluster(&self, entry: u64, guest: u64) -> Result<Arc<[u8]>, Qcow2Error> {
        // The descriptor packs the offset into the low `62 - (cluster_bits - 8)` bits and the
        // count of additional 512-byte sectors above it.
        let offset_bits = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << offset_bits) - 1);
        let extra_sectors = (entry >> offset_bits) & ((1u64 << (self.cluster_bits - 8)) - 1);
        if let Some(data) = self.lock_caches().clusters.get(host) {
            return Ok(data);
        }
        if host >= self.file_size {
            return Err(Qcow2Error::PastEof {
                what: format!(
                    "the compressed cluster for guest cluster {}",
                    guest >> self.cluster_bits
                ),
                offset: host,
                len: 1,
                file_size: self.file_size,
            });
        }
        // The size is only known to the sector, and the last cluster of a file may end before
        // its last sector does.
        let size = (extra_sectors + 1) * 512 - (host & 511);
        let len = size.min(self.file_size - host);
        let mut compressed = vec![0u8; len as usize];
        read_checked(&*self.file, self.file_size, host, &mut compressed, || {
            "a compressed cluster".to_string()
        })?;
        let out_len = self.cluster_size() as usize;
        let decompressed = match self.compression {
            Compression::Deflate => inflate(&compressed, out_len),
            Compression::Zstd => unzstd(&compressed, out_len),
        }
        .map_err(|problem| Qcow2Error::Decompress {
            guest,
            host,
            codec: self.compression.name(),
            problem,
        })?;
        let data: Arc<[u8]> = decompressed.into();
        self.lock_caches().clusters.put(host, data.clone());
        Ok(data)
    }

    fn lock_caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        // The caches only ever hold complete entries, so one left by a panicking reader is fine.
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReadAt for Qcow2 {
    fn size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.virtual_size)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the {}-byte virtual disk",
                    buf.len(),
                    self.virtual_size
                ),
            ));
        }
        self.read_inner(offset, buf).map_err(Qcow2Error::into_io)
    }
}

#[derive(Clone, Copy, Debug)]
enum Extent {
    /// Stored in the image file at this host offset.
    Data(u64),
    Zero,
    /// Not allocated here: from the backing file, or zeros without one.
    Backing,
    /// In a compressed cluster; the raw L2 entry.
    Compressed(u64),
}

/// A piece of a read still to be done: `len` bytes into `buf[at..]`.
#[derive(Clone, Copy, Debug)]
enum Run {
    Data {
        guest: u64,
        host: u64,
        at: usize,
        len: usize,
    },
    Backing {
        guest: u64,
        at: usize,
        len: usize,
    },
}

impl Run {
    /// One run if `next` continues `self`, otherwise both back.
    fn merge(self, next: Run) -> Result<Run, (Run, Run)> {
        match (self, next) {
            (
                Run::Data {
                    guest,
                    host,
                    at,
                    len,
                },
                Run::Data {
                    host: next_host,
                    len: next_len,
                    ..
                },
            ) if host + len as u64 == next_host => Ok(Run::Data {
                guest,
                host,
                at,
                len: len + next_len,
            }),
            (Run::Backing { guest, at, len }, Run::Backing { len: next_len, .. }) => {
                Ok(Run::Backing {
                    guest,
                    at,
                    len: len + next_len,
                })
            }
            other => Err(other),
        }
    }
}

/// Reads `buf.len()` bytes at `offset`, first checking that they are inside the file so that a
/// bad offset gets a message saying what it was for.
fn read_checked(
    file: &dyn ReadAt,
    file_size: u64,
    offset: u64,
    buf: &mut [u8],
    what: impl Fn() -> String,
) -> Result<(), Qcow2Error> {
    let len = buf.len() as u64;
    if offset.checked_add(len).is_none_or(|end| end > file_size) {
        return Err(Qcow2Error::PastEof {
            what: what(),
            offset,
            len,
            file_size,
        });
    }
    file.read_at(offset, buf)
        .map_err(|source| Qcow2Error::Read {
            what: what(),
            offset,
            source,
        })
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_header(file: &dyn ReadAt, file_size: u64) -> Result<Header, Qcow2Error> {
    let mut buf = [0u8; HEADER_BUF_LEN];
    let available = usize::try_from(file_size).map_or(HEADER_BUF_LEN, |s| s.min(HEADER_BUF_LEN));
    read_checked(file, file_size, 0, &mut buf[..available], || {
        "the qcow2 header".to_string()
    })?;
    if available < MAGIC.len() || buf[..4] != MAGIC {
        return Err(Qcow2Error::NotQcow2 {
            found: buf[..available.min(4)].to_vec(),
        });
    }
    // `buf` is HEADER_BUF_LEN long, so every fixed field below is inside it.
    let field32 = |at| be32(&buf, at).unwrap_or(0);
    let field64 = |at| be64(&buf, at).unwrap_or(0);
    let version = field32(4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::UnsupportedVersion(version));
    }
    let fixed_len = if version == 2 {
        V2_HEADER_LEN
    } else {
        V3_HEADER_LEN
    };
    if available < fixed_len {
        return Err(Qcow2Error::PastEof {
            what: format!("the version {version} qcow2 header"),
            offset: 0,
            len: fixed_len as u64,
            file_size,
        });
    }
    let backing_offset = field64(8);
    let backing_len = field32(16);
    let cluster_bits = field32(20);
    let virtual_size = field64(24);
    let crypt_method = field32(32);
    let l1_size = field32(36);
    let l1_offset = field64(40);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(Qcow2Error::BadClusterBits(cluster_bits));
    }
    let cluster_size = 1u64 << cluster_bits;
    if crypt_method != 0 {
        return Err(Qcow2Error::Encrypted {
            method: crypt_method,
        });
    }

    let (incompatible, header_len) = if version == 2 {
        (0, V2_HEADER_LEN as u64)
    } else {
        (field64(72), u64::from(field32(100)))
    };
    if version == 3 && header_len < V3_HEADER_LEN as u64 {
        return Err(Qcow2Error::BadHeader(format!(
            "header_length is {header_len}, less than the {V3_HEADER_LEN} bytes of a version 3 header"
        )));
    }
    if header_len > cluster_size {
        return Err(Qcow2Error::BadHeader(format!(
            "header_length {header_len} is larger than the {cluster_size}-byte cluster"
        )));
    }
    let compression_type = if header_len > V3_HEADER_LEN as u64 {
        buf[V3_HEADER_LEN]
    } else {
        0
    };

    // Extensions run from the end of the header to the backing file name, or to the end of the
    // first cluster without one.
    if backing_offset > cluster_size {
        return Err(Qcow2Error::BadHeader(format!(
            "the backing file name at 0x{backing_offset:x} is outside the first cluster"
        )));
    }
    let extensions_end = if backing_offset != 0 {
        backing_offset
    } else {
        cluster_size
    }
    .min(file_size);
    let extensions = read_extensions(file, file_size, header_len, extensions_end)?;

    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::MarkedCorrupt);
    }
    if incompatible & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(Qcow2Error::ExternalDataFile);
    }
    let unknown = incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let features = (0..64)
            .filter(|bit| unknown & (1u64 << bit) != 0)
            .map(|bit| match extensions.feature_name(0, bit) {
                Some(name) => format!("bit {bit} ({name:?})"),
                None => format!("bit {bit}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Qcow2Error::UnknownIncompatibleFeatures {
            bits: unknown,
            features,
        });
    }
    let compression = match (
        compression_type,
        incompatible & INCOMPAT_COMPRESSION_TYPE != 0,
    ) {
        (0, false) => Compression::Deflate,
        (1, true) => Compression::Zstd,
        (0, true) => {
            return Err(Qcow2Error::BadHeader(
                "the compression type feature bit is set, but compression_type is deflate".into(),
            ));
        }
        (t @ 1, false) => {
            return Err(Qcow2Error::BadHeader(format!(
                "compression_type is {t} (zstd), but the compression type feature bit is not set"
            )));
        }
        (t, _) => {
            return Err(Qcow2Error::BadHeader(format!(
                "unknown compression_type {t} (0 is deflate, 1 zstd)"
            )));
        }
    };
    let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
        return Err(Qcow2Error::BadHeader(format!(
            "extended L2 entries with {cluster_size}-byte clusters: subclusters would be smaller \
             than 512 bytes"
        )));
    }

    let backing_name = if backing_offset == 0 || backing_len == 0 {
        None
    } else {
        let len = u64::from(backing_len);
        if len > MAX_BACKING_NAME_LEN || backing_offset + len > cluster_size {
            return Err(Qcow2Error::BadHeader(format!(
                "the backing file name ({len} bytes at 0x{backing_offset:x}) is longer than \
                 {MAX_BACKING_NAME_LEN} bytes or runs past the first cluster"
            )));
        }
        let mut name = vec![0u8; len as usize];
        read_checked(file, file_size, backing_offset, &mut name, || {
            "the backing file name".to_string()
        })?;
        Some(String::from_utf8(name).map_err(|e| {
            Qcow2Error::BadHeader(format!("the backing file name is not UTF-8: {e}"))
        })?)
    };

    Ok(Header {
        version,
        cluster_bits,
        virtual_size,
        l1_size,
        l1_offset,
        extended_l2,
        compression,
        backing_name,
        backing_format: extensions.backing_format,
    })
}

#[derive(Default)]
struct Extensions {
    backing_format: Option<String>,
    /// (type: 0 incompatible, 1 compatible, 2 autoclear; bit; name)
    feature_names: Vec<(u8, u8, String)>,
}

impl Extensions {
    fn feature_name(&self, kind: u8, bit: u8) -> Option<&str> {
        self.feature_names
            .iter()
            .find(|(k, b, _)| *k == kind && *b == bit)
            .map(|(_, _, name)| name.as_str())
    }
}

fn read_extensions(
    file: &dyn ReadAt,
    file_size: u64,
    start: u64,
    end: u64,
) -> Result<Extensions, Qcow2Error> {
    let mut extensions = Extensions::default();
    if end <= start {
        return Ok(extensions);
    }
    // At most one cluster (2 MiB): `end` is inside the first one.
    let mut area = vec![0u8; (end - start) as usize];
    read_checked(file, file_size, start, &mut area, || {
        "the header extensions".to_string()
    })?;
    let mut at = 0usize;
    while at < area.len() {
        let (Some(kind), Some(len)) = (be32(&area, at), be32(&area, at + 4)) else {
            return Err(Qcow2Error::BadHeader(format!(
                "a header extension at 0x{:x} is cut off by the end of the header area",
                start + at as u64
            )));
        };
        let data_at = at + 8;
        let data = area
            .get(data_at..data_at.saturating_add(len as usize))
            .ok_or_else(|| {
                Qcow2Error::BadHeader(format!(
                    "header extension 0x{kind:08x} at 0x{:x} claims {len} bytes, past the end of \
                     the header area",
                    start + at as u64
                ))
            })?;
        match kind {
            EXT_END => break,
            EXT_BACKING_FORMAT => {
                extensions.backing_format = Some(
                    std::str::from_utf8(data)
                        .map_err(|_| {
                            Qcow2Error::BadHeader("the backing format name is not UTF-8".into())
                        })?
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(48) {
                    let name = &entry[2..];
                    let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
                    extensions.feature_names.push((
                        entry[0],
                        entry[1],
                        String::from_utf8_lossy(name).into_owned(),
                    ));
                }
            }
            // Optional extensions (bitmaps, encryption header, data file name, ...) that a
            // reader of the active layer can skip.
            _ => {}
        }
        at = data_at + (len as usize).div_ceil(8) * 8;
    }
    Ok(extensions)
}

fn read_l1(file: &dyn ReadAt, file_size: u64, header: &Header) -> Result<Vec<u64>, Qcow2Error> {
    let cluster_size = 1u64 << header.cluster_bits;
    let l2_entry_bits = if header.extended_l2 { 4 } else { 3 };
    let bytes_per_l1_entry = 1u64 << (2 * header.cluster_bits - l2_entry_bits);
    let needed = header.virtual_size.div_ceil(bytes_per_l1_entry);
    let l1_bytes = u64::from(header.l1_size) * 8;
    let what = || format!("the L1 table ({} entries)", header.l1_size);
    if header.l1_offset & (cluster_size - 1) != 0 {
        return Err(Qcow2Error::BadHeader(format!(
            "the L1 table offset 0x{:x} is not cluster-aligned",
            header.l1_offset
        )));
    }
    if header
        .l1_offset
        .checked_add(l1_bytes)
        .is_none_or(|end| end > file_size)
    {
        return Err(Qcow2Error::PastEof {
            what: what(),
            offset: header.l1_offset,
            len: l1_bytes,
            file_size,
        });
    }
    if l1_bytes > MAX_L1_BYTES {
        return Err(Qcow2Error::BadHeader(format!(
            "the L1 table has {} entries, more than the {} QEMU allows",
            header.l1_size,
            MAX_L1_BYTES / 8
        )));
    }
    if needed > u64::from(header.l1_size) {
        return Err(Qcow2Error::BadHeader(format!(
            "the L1 table has {} entries, but the virtual size of {} bytes needs {needed}",
            header.l1_size, header.virtual_size
        )));
    }
    let mut bytes = vec![0u8; l1_bytes as usize];
    read_checked(file, file_size, header.l1_offset, &mut bytes, what)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// `backing` as a name relative to the top image's directory, given `referrer`, the name of the
/// image that refers to it (`None` for the top image).
fn relative_to(referrer: Option<&str>, backing: &str) -> String {
    match referrer {
        Some(referrer) if !backing.starts_with('/') && !backing.contains("://") => {
            match referrer.rfind('/') {
                Some(slash) => format!("{}{backing}", &referrer[..=slash]),
                None => backing.to_string(),
            }
        }
        _ => backing.to_string(),
    }
}

fn open_backing(
    referrer: Option<&str>,
    backing: &str,
    format: Option<&str>,
    resolve: ResolveBacking<'_>,
    chain: &mut Vec<String>,
) -> Result<Arc<dyn ReadAt>, Qcow2Error> {
    let name = relative_to(referrer, backing);
    if chain.contains(&name) || referrer == Some(name.as_str()) {
        return Err(Qcow2Error::BackingLoop { name });
    }
    if chain.len() >= MAX_BACKING_DEPTH {
        return Err(Qcow2Error::BackingChainTooDeep {
            limit: MAX_BACKING_DEPTH,
        });
    }
    let file = resolve(&name)?;
    let is_qcow2 = match format {
        Some("qcow2") => true,
        Some("raw") => false,
        Some(other) => {
            return Err(Qcow2Error::UnsupportedBackingFormat {
                name,
                format: other.to_string(),
            });
        }
        // Without a format QEMU probes; of the formats read here only qcow2 has a magic.
        None => has_magic(&*file),
    };
    if !is_qcow2 {
        return Ok(file);
    }
    chain.push(name.clone());
    let opened = Qcow2::open_in_chain(file, resolve, Some(&name), chain);
    chain.pop();
    match opened {
        Ok(image) => Ok(Arc::new(image)),
        Err(e) => Err(Qcow2Error::InBacking {
            name,
            source: Box::new(e),
        }),
    }
}

/// Whether `src` starts with the qcow2 magic.
pub fn has_magic(src: &dyn ReadAt) -> bool {
    let mut magic = [0u8; 4];
    src.size() >= 4 && src.read_at(0, &mut magic).is_ok() && magic == MAGIC
}

/// Raw deflate (no zlib header), as QEMU writes it; the output must fill the cluster.
fn inflate(input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    use miniz_oxide::inflate::TINFLStatus;
    use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

    let mut out = vec![0u8; out_len];
    let mut decompressor = Box::<DecompressorOxide>::default();
    let (status, _, written) = decompress(
        &mut decompressor,
        input,
        &mut out,
        0,
        inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    );
    match status {
        // QEMU takes a full cluster even when the stream goes on or the data ends in the middle
        // of it: the stored size is only known to the sector.
        TINFLStatus::Done
        | TINFLStatus::HasMoreOutput
        | TINFLStatus::NeedsMoreInput
        | TINFLStatus::FailedCannotMakeProgress
            if written == out_len =>
        {
            Ok(out)
        }
        TINFLStatus::Done => Err(format!(
            "the data decompresses to {written} bytes, not the {out_len} of a cluster"
        )),
        TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => Err(format!(
            "the data ends after {written} of the {out_len} bytes of a cluster"
        )),
        other => Err(format!("{other:?} after {written} bytes")),
    }
}

/// zstd, as QEMU writes it: one or more frames (skippable ones too) that together fill exactly
/// one cluster; whatever follows the frame that fills it (sector padding) is not looked at.
fn unzstd(mut input: &[u8], out_len: usize) -> Result<Vec<u8>, String> {
    use ruzstd::decoding::StreamingDecoder;
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use std::io::Read;

    let mut out = vec![0u8; out_len];
    let mut filled = 0usize;
    while filled < out_len {
        if input.is_empty() {
            return Err(format!(
                "the data ends after {filled} of the {out_len} bytes of a cluster"
            ));
        }
        let mut decoder =
            match StreamingDecoder::new_with_max_window_size(&mut input, ZSTD_MAX_WINDOW) {
                Ok(decoder) => decoder,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    input = input.get(length as usize..).ok_or_else(|| {
                        format!("a skippable frame of {length} bytes runs past the end of the data")
                    })?;
                    continue;
                }
                Err(e) => return Err(format!("after {filled} bytes: {e}")),
            };
        loop {
            let n = decoder
                .read(&mut out[filled..])
                .map_err(|e| format!("after {filled} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            filled += n;
            if filled == out_len {
                let mut more = [0u8; 1];
                match decoder.read(&mut more) {
                    Ok(0) => break,
                    Ok(_) => {
                        return Err(format!(
                            "the data decompresses to more than the {out_len} bytes of a cluster"
                        ));
                    }
                    Err(e) => return Err(format!("at the end of the frame: {e}")),
                }
            }
        }
    }
    Ok(out)
}

struct Caches {
    l2: Lru<Arc<[u64]>>,
    clusters: Lru<Arc<[u8]>>,
}

/// A handful of entries, so a linear scan beats a map.
struct Lru<T> {
    /// Least recently used first.
    entries: VecDeque<(u64, T)>,
    capacity: usize,
}

impl<T: Clone> Lru<T> {
    fn new(capacity: usize) -> Self {
        Lru {
            entries: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    fn get(&mut self, key: u64) -> Option<T> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        let entry = self.entries.remove(i)?;
        let value = entry.1.clone();
        self.entries.push_back(entry);
        Some(value)
    }

    fn put(&mut self, key: u64, value: T) {
        // Another thread may have loaded the same entry meanwhile.
        if self.entries.iter().any(|(k, _)| *k == key) {
            return;
        }
        while self.entries.len() >= self.capacity.max(1) {
            self.entries.pop_front();
        }
        self.entries.push_back((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image held in memory.
    struct Mem(Vec<u8>);

    impl ReadAt for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let src = usize::try_from(offset)
                .ok()
                .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    /// What goes into a hand-made image: cluster 0 holds the header, its extensions and the
    /// backing name, cluster 1 the L1 table, cluster 2 the one L2 table (for L1 entry 0),
    /// and data clusters follow.
    struct Spec {
        version: u32,
        cluster_bits: u32,
        virtual_size: u64,
        crypt_method: u32,
        incompatible: u64,
        compression_type: u8,
        l1_size: Option<u32>,
        backing: Option<&'static str>,
        backing_format: Option<&'static str>,
        feature_names: Vec<(u8, u8, &'static str)>,
    }

    impl Default for Spec {
        fn default() -> Self {
            Spec {
                version: 3,
                cluster_bits: 16,
                virtual_size: 1 << 20,
                crypt_method: 0,
                incompatible: 0,
                compression_type: 0,
                l1_size: None,
                backing: None,
                backing_format: None,
                feature_names: Vec::new(),
            }
        }
    }

    struct Image {
        bytes: Vec<u8>,
        cluster_bits: u32,
        extended_l2: bool,
    }

    fn put32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    impl Spec {
        fn build(self) -> Image {
            let cs = 1usize << self.cluster_bits;
            let mut b = vec![0u8; 3 * cs];
            b[..4].copy_from_slice(&MAGIC);
            put32(&mut b, 4, self.version);
            put32(&mut b, 20, self.cluster_bits);
            put64(&mut b, 24, self.virtual_size);
            put32(&mut b, 32, self.crypt_method);
            let extended_l2 = self.incompatible & INCOMPAT_EXTENDED_L2 != 0;
            let per_l1 = 1u64 << (2 * self.cluster_bits - if extended_l2 { 4 } else { 3 });
            let l1_size = self
                .l1_size
                .unwrap_or(self.virtual_size.div_ceil(per_l1).max(1) as u32);
            put32(&mut b, 36, l1_size);
            put64(&mut b, 40, cs as u64);
            put64(&mut b, cs, 2 * cs as u64);
            let mut at = if self.version == 2 {
                V2_HEADER_LEN
            } else {
                put64(&mut b, 72, self.incompatible);
                put32(&mut b, 96, 4);
                put32(&mut b, 100, HEADER_BUF_LEN as u32);
                b[V3_HEADER_LEN] = self.compression_type;
                HEADER_BUF_LEN
            };
            let mut extension = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
                put32(b, at, kind);
                put32(b, at + 4, data.len() as u32);
                b[at + 8..at + 8 + data.len()].copy_from_slice(data);
                at += 8 + data.len().div_ceil(8) * 8;
            };
            if let Some(format) = self.backing_format {
                extension(&mut b, EXT_BACKING_FORMAT, format.as_bytes());
            }
            if !self.feature_names.is_empty() {
                let mut table = Vec::new();
                for (kind, bit, name) in &self.feature_names {
                    let mut entry = [0u8; 48];
                    entry[0] = *kind;
                    entry[1] = *bit;
                    entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
                    table.extend_from_slice(&entry);
                }
                extension(&mut b, EXT_FEATURE_NAMES, &table);
            }
            extension(&mut b, EXT_END, &[]);
            if let Some(name) = self.backing {
                let name_at = cs / 2;
                put64(&mut b, 8, name_at as u64);
                put32(&mut b, 16, name.len() as u32);
                b[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
            }
            Image {
                bytes: b,
                cluster_bits: self.cluster_bits,
                extended_l2,
            }
        }

        fn open(self) -> Result<Qcow2, Qcow2Error> {
            self.build().open()
        }
    }

    impl Image {
        fn cluster_size(&self) -> usize {
            1 << self.cluster_bits
        }

        fn set_l2(&mut self, index: usize, entry: u64) {
            let width = if self.extended_l2 { 16 } else { 8 };
            let at = 2 * self.cluster_size() + index * width;
            put64(&mut self.bytes, at, entry);
        }

        fn set_l2_bitmap(&mut self, index: usize, bitmap: u64) {
            let at = 2 * self.cluster_size() + index * 16 + 8;
            put64(&mut self.bytes, at, bitmap);
        }

        /// Appends a cluster-aligned data cluster and returns its offset.
        fn push_cluster(&mut self, data: &[u8]) -> u64 {
            let cs = self.cluster_size();
            self.bytes.resize(self.bytes.len().div_ceil(cs) * cs, 0);
            let offset = self.bytes.len();
            self.bytes.extend_from_slice(data);
            self.bytes.resize(offset + cs, 0);
            offset as u64
        }

        /// Appends bytes where the file ends, as compressed clusters are stored.
        fn push_bytes(&mut self, data: &[u8]) -> u64 {
            let offset = self.bytes.len() as u64;
            self.bytes.extend_from_slice(data);
            offset
        }

        /// A compressed L2 entry for `len` bytes at `offset`.
        fn compressed_entry(&self, offset: u64, len: u64) -> u64 {
            let offset_bits = 62 - (self.cluster_bits - 8);
            let sectors = (offset + len).div_ceil(512) - offset / 512;
            L2_COMPRESSED | ((sectors - 1) << offset_bits) | offset
        }

        fn open(self) -> Result<Qcow2, Qcow2Error> {
            Qcow2::open(Arc::new(Mem(self.bytes)), &no_backing)
        }
    }

    fn no_backing(name: &str) -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        Err(Qcow2Error::BackingOpen {
            name: name.into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    fn read_all(src: &dyn ReadAt) -> Vec<u8> {
        let mut out = vec![0u8; src.size() as usize];
        src.read_at(0, &mut out).unwrap();
        out
    }

    fn read(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        src.read_at(offset, &mut out)?;
        Ok(out)
    }

    /// Bytes that differ at every position, so a misplaced read shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    fn err(r: Result<Qcow2, Qcow2Error>) -> Qcow2Error {
        match r {
            Ok(q) => panic!("expected an error, opened {q:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_image_without_allocated_clusters_reads_as_zeros() {
        let q = Spec::default().open().unwrap();
        assert_eq!(q.virtual_size(), 1 << 20);
        assert_eq!(q.version(), 3);
        assert_eq!(q.backing_file(), None);
        assert!(read_all(&q).iter().all(|&b| b == 0));
    }

    #[test]
    fn data_clusters_are_read_at_their_host_offset_and_zero_clusters_as_zeros() {
        let mut img = Spec::default().build();
        let cs = img.cluster_size();
        let a = img.push_cluster(&pattern(cs, 1));
        let b = img.push_cluster(&pattern(cs, 2));
        img.set_l2(0, a | 1 << 63);
        img.set_l2(1, b);
        img.set_l2(3, b | L2_ZERO); // zero flag wins over the offset
        let q = img.open().unwrap();
        let all = read_all(&q);
        assert_eq!(&all[..cs], &pattern(cs, 1)[..]);
        assert_eq!(&all[cs..2 * cs], &pattern(cs, 2)[..]);
        assert!(all[2 * cs..].iter().all(|&b| b == 0));
        // Unaligned reads across cluster boundaries.
        assert_eq!(
            read(&q, cs as u64 - 3, 6).unwrap(),
            [&pattern(cs, 1)[cs - 3..], &pattern(cs, 2)[..3]].concat()
        );
    }

    #[test]
    fn a_version_2_image_reads_like_version_3_but_has_no_zero_clusters() {
        let mut img = Spec {
            version: 2,
            ..Spec::default()
        }
        .build();
        let cs = img.cluster_size();
        let a = img.push_cluster(&pattern(cs, 3));
        img.set_l2(1, a);
        img.set_l2(2, L2_ZERO);
        let q = img.open().unwrap();
        assert_eq!(q.version(), 2);
        assert_eq!(read(&q, cs as u64, cs).unwrap(), pattern(cs, 3));
        let e = read(&q, 2 * cs as u64, 1).unwrap_err();
        assert!(
            e.to_string().contains("zero cluster in a version 2 image"),
            "{e}"
        );
    }

    #[test]
    fn reads_past_the_virtual_size_fail_with_unexpected_eof() {
        let q = Spec::default().open().unwrap();
        let e = read(&q, (1 << 20) - 1, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            read(&q, u64::MAX, 1).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(read(&q, 1 << 20, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_file_that_is_not_qcow2_is_refused() {
        for bytes in [&b""[..], b"QF", b"\x7fELF and more bytes"] {
            let e = Qcow2::open(Arc::new(Mem(bytes.to_vec())), &no_backing).unwrap_err();
            assert!(matches!(e, Qcow2Error::NotQcow2 { .. }), "{e}");
        }
    }

    #[test]
    fn a_truncated_header_is_an_error_naming_the_header() {
        let img = Spec::default().build();
        let e = Qcow2::open(Arc::new(Mem(img.bytes[..80].to_vec())), &no_backing).unwrap_err();
        assert!(e.to_string().contains("the version 3 qcow2 header"), "{e}");
    }

    #[test]
    fn a_truncated_image_is_an_error_naming_what_is_missing() {
        let img = Spec::default().build();
        let cs = img.cluster_size();
        let e = Qcow2::open(Arc::new(Mem(img.bytes[..cs + 4].to_vec())), &no_backing).unwrap_err();
        assert!(matches!(e, Qcow2Error::PastEof { .. }), "{e}");
        assert!(e.to_string().contains("the L1 table (1 entries)"), "{e}");
    }

    #[test]
    fn versions_other_than_2_and_3_are_refused() {
        for version in [0, 1, 4, u32::MAX] {
            let e = err(Spec {
                version,
                ..Spec::default()
            }
            .open());
            assert!(
                matches!(e, Qcow2Error::UnsupportedVersion(v) if v == version),
                "{e}"
            );
        }
    }

    #[test]
    fn cluster_bits_outside_9_to_21_are_refused() {
        for bits in [0, 8, 22, 63, 64, u32::MAX] {
            let mut img = Spec::default().build();
            put32(&mut img.bytes, 20, bits);
            let e = err(img.open());
            assert!(
                matches!(e, Qcow2Error::BadClusterBits(b) if b == bits),
                "{e}"
            );
        }
        for bits in [9, 21] {
            let spec = Spec {
                cluster_bits: bits,
                virtual_size: 4096,
                ..Spec::default()
            };
            spec.open().unwrap();
        }
    }

    #[test]
    fn encrypted_images_are_refused() {
        for method in [1, 2, 7] {
            let e = err(Spec {
                crypt_method: method,
                ..Spec::default()
            }
            .open());
            assert!(matches!(e, Qcow2Error::Encrypted { .. }), "{e}");
        }
        let e = err(Spec {
            crypt_method: 2,
            ..Spec::default()
        }
        .open());
        assert!(
            e.to_string().contains("encrypted (crypt_method 2: LUKS)"),
            "{e}"
        );
    }

    #[test]
    fn an_external_data_file_is_refused() {
        let e = err(Spec {
            incompatible: INCOMPAT_EXTERNAL_DATA,
            ..Spec::default()
        }
        .open());
        assert!(matches!(e, Qcow2Error::ExternalDataFile), "{e}");
    }

    #[test]
    fn an_image_marked_corrupt_is_refused() {
        let e = err(Spec {
            incompatible: INCOMPAT_CORRUPT | INCOMPAT_DIRTY,
            ..Spec::default()
        }
        .open());
        assert!(matches!(e, Qcow2Error::MarkedCorrupt), "{e}");
    }

    #[test]
    fn the_dirty_bit_is_accepted() {
        Spec {
            incompatible: INCOMPAT_DIRTY,
            ..Spec::default()
        }
        .open()
        .unwrap();
    }

    #[test]
    fn unknown_incompatible_features_are_refused_by_bit_and_name() {
        let e = err(Spec {
            incompatible: 1 << 5 | 1 << 63,
            feature_names: vec![(0, 5, "frobnicated"), (1, 63, "a compatible one")],
            ..Spec::default()
        }
        .open());
        assert!(
            matches!(e, Qcow2Error::UnknownIncompatibleFeatures { bits, .. } if bits == 1 << 5 | 1 << 63),
            "{e}"
        );
        assert!(
            e.to_string().ends_with(": bit 5 (\"frobnicated\"), bit 63"),
            "{e}"
        );
    }

    #[test]
    fn the_compression_type_must_agree_with_its_feature_bit() {
        for (compression_type, incompatible) in [
            (1, 0),
            (0, INCOMPAT_COMPRESSION_TYPE),
            (2, INCOMPAT_COMPRESSION_TYPE),
        ] {
            let e = err(Spec {
                compression_type,
                incompatible,
                ..Spec::default()
            }
            .open());
            assert!(matches!(e, Qcow2Error::BadHeader(_)), "{e}");
        }
    }

    #[test]
    fn an_absurd_l1_size_is_an_error_not_an_allocation() {
        let e = err(Spec {
            l1_size: Some(u32::MAX),
            ..Spec::default()
        }
        .open());
        assert!(matches!(e, Qcow2Error::PastEof { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("the L1 table (4294967295 entries) at 0x10000 (34359738360 bytes) extends past the end"),
            "{e}"
        );
    }

    #[test]
    fn an_l1_table_too_small_for_the_virtual_size_is_an_error() {
        let e = err(Spec {
            virtual_size: 1 << 40,
            l1_size: Some(1),
            ..Spec::default()
        }
        .open());
        assert!(e.to_string().contains("needs 2048"), "{e}");
        // No L1 table a 32-bit l1_size can describe covers the largest virtual size.
        let e = err(Spec {
            virtual_size: u64::MAX,
            l1_size: Some(1),
            ..Spec::default()
        }
        .open());
        assert!(e.to_string().contains("needs 34359738368"), "{e}");
    }

    #[test]
    fn an_l2_table_past_the_end_of_the_file_is_an_error_when_read() {
        let mut img = Spec::default().build();
        let cs = img.cluster_size();
        put64(&mut img.bytes, cs, 0x40_0000);
        let q = img.open().unwrap();
        let e = read(&q, 5 * cs as u64, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            e.to_string(),
            "the L2 table for guest cluster 5 (L1 entry 0) at 0x400000 (65536 bytes) extends \
             past the end of the 196608-byte file"
        );
    }

    #[test]
    fn unaligned_l2_tables_and_data_clusters_are_errors() {
        let mut img = Spec::default().build();
        let cs = img.cluster_size();
        put64(&mut img.bytes, cs, 2 * cs as u64 + 512);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("is not cluster-aligned"), "{e}");

        let mut img = Spec::default().build();
        img.set_l2(0, 3 * cs as u64 + 512);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("not cluster-aligned"), "{e}");
    }

    #[test]
    fn a_data_cluster_past_the_end_of_the_file_is_an_error() {
        let mut img = Spec::default().build();
        img.set_l2(2, 0x100_0000);
        let q = img.open().unwrap();
        let e = read(&q, 0x20000, 16).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "the data for guest offset 0x20000 at 0x1000000 (16 bytes) extends past the end"
            ),
            "{e}"
        );
    }

    #[test]
    fn deflate_clusters_are_read_with_the_size_capped_at_the_end_of_the_file() {
        let mut img = Spec::default().build();
        let cs = img.cluster_size();
        let data = pattern(cs, 7);
        let packed = miniz_oxide::deflate::compress_to_vec(&data, 6);
        let at = img.push_bytes(&[0xee; 100]) + 100; // an unaligned start
        img.push_bytes(&packed);
        // Claim more sectors than the file has, as the last compressed cluster of a file may.
        let entry = img.compressed_entry(at, packed.len() as u64 + 4096);
        img.set_l2(4, entry);
        let q = img.open().unwrap();
        assert_eq!(read(&q, 4 * cs as u64, cs).unwrap(), data);
        assert_eq!(
            read(&q, 4 * cs as u64 + 1000, 10).unwrap(),
            &data[1000..1010]
        );
    }

    #[test]
    fn a_deflate_cluster_that_does_not_fill_the_cluster_is_an_error() {
        let mut img = Spec::default().build();
        let cs = img.cluster_size();
        let packed = miniz_oxide::deflate::compress_to_vec(&pattern(cs - 1, 7), 6);
        let at = img.push_bytes(&packed);
        let entry = img.compressed_entry(at, packed.len() as u64);
        img.set_l2(0, entry);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("decompresses to 65535 bytes"), "{e}");

        let mut img = Spec::default().build();
        let at = img.push_bytes(&[0xff; 600]);
        let entry = img.compressed_entry(at, 600);
        img.set_l2(0, entry);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(
            e.to_string().contains("does not decompress (deflate)"),
            "{e}"
        );
    }

    fn zstd_image() -> Image {
        Spec {
            incompatible: INCOMPAT_COMPRESSION_TYPE,
            compression_type: 1,
            ..Spec::default()
        }
        .build()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn zstd_clusters_may_be_several_frames_and_skippable_frames_followed_by_padding() {
        let mut img = zstd_image();
        let cs = img.cluster_size();
        let data = pattern(cs, 9);
        let mut packed = zstd(&data[..1000]);
        // A skippable frame: magic 0x184D2A5?, little-endian length, payload.
        packed.extend_from_slice(&0x184d_2a53u32.to_le_bytes());
        packed.extend_from_slice(&5u32.to_le_bytes());
        packed.extend_from_slice(b"skip!");
        packed.extend(zstd(&data[1000..40000]));
        packed.extend(zstd(&data[40000..]));
        let len = packed.len() as u64;
        packed.extend_from_slice(&[0xa5; 300]); // sector padding, never decoded
        let at = img.push_bytes(&packed);
        let entry = img.compressed_entry(at, len);
        img.set_l2(1, entry);
        let q = img.open().unwrap();
        assert_eq!(read(&q, cs as u64, cs).unwrap(), data);
    }

    #[test]
    fn zstd_data_that_does_not_fill_or_overfills_the_cluster_is_an_error() {
        for len in [1000usize, (1 << 16) + 1] {
            let mut img = zstd_image();
            let packed = zstd(&pattern(len, 1));
            let at = img.push_bytes(&packed);
            let entry = img.compressed_entry(at, packed.len() as u64);
            img.set_l2(0, entry);
            let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
            assert!(e.to_string().contains("does not decompress (zstd)"), "{e}");
        }
    }

    #[test]
    fn a_zstd_frame_declaring_a_huge_window_is_refused_before_allocating_it() {
        let mut img = zstd_image();
        // Frame header: magic, descriptor (no single segment, no checksum), window byte
        // 0xf8 = exponent 31 (2 GiB), then a raw block header.
        let mut frame = 0xfd2f_b528u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0x00, 0xf8, 0x01, 0x00, 0x00]);
        let at = img.push_bytes(&frame);
        let entry = img.compressed_entry(at, frame.len() as u64);
        img.set_l2(0, entry);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("does not decompress (zstd)"), "{e}");
    }

    fn extended_image(backing: Option<&'static str>) -> Image {
        Spec {
            incompatible: INCOMPAT_EXTENDED_L2,
            backing,
            ..Spec::default()
        }
        .build()
    }

    /// A backing file named `base` whose every byte is 0xbb.
    fn resolve_bb(name: &str) -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        assert_eq!(name, "base");
        Ok(Arc::new(Mem(vec![0xbb; 1 << 20])))
    }

    #[test]
    fn extended_l2_subclusters_are_allocated_zero_or_from_the_backing_file() {
        let mut img = extended_image(Some("base"));
        let cs = img.cluster_size();
        let sc = cs / 32;
        let data = pattern(cs, 4);
        let host = img.push_cluster(&data);
        img.set_l2(0, host);
        // Subclusters 0 and 2 allocated, 1 and 31 zero, the rest from the backing file.
        img.set_l2_bitmap(0, (1 << 0 | 1 << 2) | (1 << 1 | 1 << 31) << 32);
        // An unallocated cluster can still have zero subclusters.
        img.set_l2_bitmap(1, (1 << 3) << 32);
        let q = Qcow2::open(Arc::new(Mem(img.bytes)), &resolve_bb).unwrap();
        let all = read_all(&q);
        assert_eq!(&all[..sc], &data[..sc]);
        assert!(all[sc..2 * sc].iter().all(|&b| b == 0));
        assert_eq!(&all[2 * sc..3 * sc], &data[2 * sc..3 * sc]);
        assert!(all[3 * sc..31 * sc].iter().all(|&b| b == 0xbb));
        assert!(all[31 * sc..cs].iter().all(|&b| b == 0));
        assert!(all[cs..cs + 3 * sc].iter().all(|&b| b == 0xbb));
        assert!(all[cs + 3 * sc..cs + 4 * sc].iter().all(|&b| b == 0));
        assert!(all[cs + 4 * sc..].iter().all(|&b| b == 0xbb));
    }

    #[test]
    fn an_extended_l2_entry_with_a_subcluster_both_allocated_and_zero_is_an_error() {
        let mut img = extended_image(None);
        let host = img.push_cluster(&[1]);
        img.set_l2(0, host);
        img.set_l2_bitmap(0, 1 << 5 | (1 << 5) << 32);
        let e = read(&img.open().unwrap(), 1 << 15, 1).unwrap_err();
        assert!(e.to_string().contains("both allocated and zero"), "{e}");

        let mut img = extended_image(None);
        img.set_l2_bitmap(0, 1);
        let e = read(&img.open().unwrap(), 0, 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("allocated subclusters but no cluster"),
            "{e}"
        );
    }

    #[test]
    fn an_extended_l2_compressed_cluster_ignores_the_bitmap() {
        let mut img = extended_image(None);
        let cs = img.cluster_size();
        let data = pattern(cs, 5);
        let packed = miniz_oxide::deflate::compress_to_vec(&data, 1);
        let at = img.push_bytes(&packed);
        let entry = img.compressed_entry(at, packed.len() as u64);
        img.set_l2(2, entry);
        img.set_l2_bitmap(2, u64::MAX);
        assert_eq!(read(&img.open().unwrap(), 2 * cs as u64, cs).unwrap(), data);
    }

    #[test]
    fn extended_l2_needs_clusters_of_at_least_16_kib() {
        let e = err(Spec {
            incompatible: INCOMPAT_EXTENDED_L2,
            cluster_bits: 13,
            ..Spec::default()
        }
        .open());
        assert!(e.to_string().contains("smaller than 512 bytes"), "{e}");
    }

    #[test]
    fn a_backing_file_shorter_than_the_image_reads_as_zeros_past_its_end() {
        let img = Spec {
            backing: Some("base"),
            backing_format: Some("raw"),
            ..Spec::default()
        }
        .build();
        let resolve = |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
            assert_eq!(name, "base");
            Ok(Arc::new(Mem(vec![0x11; 1000])))
        };
        let q = Qcow2::open(Arc::new(Mem(img.bytes)), &resolve).unwrap();
        assert_eq!(q.backing_file(), Some("base"));
        let all = read_all(&q);
        assert!(all[..1000].iter().all(|&b| b == 0x11));
        assert!(all[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_raw_backing_format_is_taken_even_for_a_file_with_the_qcow2_magic() {
        let base = Spec::default().build().bytes;
        let img = Spec {
            backing: Some("base"),
            backing_format: Some("raw"),
            ..Spec::default()
        }
        .build();
        let resolve = |_: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
            Ok(Arc::new(Mem(Spec::default().build().bytes)))
        };
        let q = Qcow2::open(Arc::new(Mem(img.bytes)), &resolve).unwrap();
        assert_eq!(read(&q, 0, 4).unwrap(), MAGIC);
        assert_eq!(read(&q, 0, base.len()).unwrap(), base);
    }

    #[test]
    fn backing_formats_other_than_raw_and_qcow2_are_refused() {
        let e = err(Spec {
            backing: Some("base.vmdk"),
            backing_format: Some("vmdk"),
            ..Spec::default()
        }
        .build()
        .open_with(&|_| Ok(Arc::new(Mem(vec![0; 512])))));
        assert!(
            matches!(e, Qcow2Error::UnsupportedBackingFormat { .. }),
            "{e}"
        );
    }

    #[test]
    fn a_backing_file_that_cannot_be_opened_is_an_error_naming_it() {
        let e = err(Spec {
            backing: Some("missing.qcow2"),
            ..Spec::default()
        }
        .open());
        assert_eq!(
            e.to_string(),
            "cannot open backing file `missing.qcow2`: entity not found"
        );
    }

    impl Image {
        fn open_with(self, resolve: ResolveBacking<'_>) -> Result<Qcow2, Qcow2Error> {
            Qcow2::open(Arc::new(Mem(self.bytes)), resolve)
        }
    }

    #[test]
    fn nested_backing_names_are_relative_to_the_image_that_names_them() {
        let names = std::sync::Mutex::new(Vec::new());
        let resolve = |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
            names.lock().unwrap().push(name.to_string());
            let backing = match name {
                "a/mid.qcow2" => Some("../b/low.qcow2"),
                "a/../b/low.qcow2" => Some("/abs/base.raw"),
                "/abs/base.raw" => return Ok(Arc::new(Mem(vec![0x42; 4096]))),
                other => panic!("unexpected name {other}"),
            };
            Ok(Arc::new(Mem(Spec {
                backing,
                ..Spec::default()
            }
            .build()
            .bytes)))
        };
        let q = Spec {
            backing: Some("a/mid.qcow2"),
            ..Spec::default()
        }
        .build()
        .open_with(&resolve)
        .unwrap();
        assert_eq!(
            *names.lock().unwrap(),
            ["a/mid.qcow2", "a/../b/low.qcow2", "/abs/base.raw"]
        );
        assert_eq!(
            read(&q, 4090, 8).unwrap(),
            [0x42, 0x42, 0x42, 0x42, 0x42, 0x42, 0, 0]
        );
    }

    #[test]
    fn an_image_that_is_its_own_backing_file_is_a_loop() {
        let resolve = |_: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
            Ok(Arc::new(Mem(Spec {
                backing: Some("self.qcow2"),
                ..Spec::default()
            }
            .build()
            .bytes)))
        };
        let e = err(Spec {
            backing: Some("self.qcow2"),
            ..Spec::default()
        }
        .build()
        .open_with(&resolve));
        assert_eq!(
            e.to_string(),
            "backing file `self.qcow2`: backing chain loop: `self.qcow2` is its own backing \
             file, directly or through others"
        );
    }

    #[test]
    fn a_backing_chain_deeper_than_the_limit_is_refused() {
        // Every name is new ("x/", "x/x/", ...), so only the depth limit stops it.
        let resolve = |_: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
            Ok(Arc::new(Mem(Spec {
                backing: Some("x/next"),
                ..Spec::default()
            }
            .build()
            .bytes)))
        };
        let mut e = err(Spec {
            backing: Some("x/next"),
            ..Spec::default()
        }
        .build()
        .open_with(&resolve));
        let mut depth = 0;
        while let Qcow2Error::InBacking { source, .. } = e {
            e = *source;
            depth += 1;
        }
        assert_eq!(depth, MAX_BACKING_DEPTH);
        assert!(
            matches!(
                e,
                Qcow2Error::BackingChainTooDeep {
                    limit: MAX_BACKING_DEPTH
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn header_extensions_that_overrun_the_header_area_are_errors() {
        let mut img = Spec::default().build();
        put32(&mut img.bytes, HEADER_BUF_LEN, 0x1234_5678);
        put32(&mut img.bytes, HEADER_BUF_LEN + 4, 1 << 20);
        let e = err(img.open());
        assert!(e.to_string().contains("claims 1048576 bytes"), "{e}");
    }

    #[test]
    fn unknown_optional_header_extensions_are_skipped() {
        let mut img = Spec {
            backing: Some("base"),
            ..Spec::default()
        }
        .build();
        // Move the end marker down behind an unknown 5-byte extension (padded to 8).
        put32(&mut img.bytes, HEADER_BUF_LEN, 0x2385_2875);
        put32(&mut img.bytes, HEADER_BUF_LEN + 4, 5);
        put32(&mut img.bytes, HEADER_BUF_LEN + 16, EXT_BACKING_FORMAT);
        put32(&mut img.bytes, HEADER_BUF_LEN + 20, 3);
        img.bytes[HEADER_BUF_LEN + 24..HEADER_BUF_LEN + 27].copy_from_slice(b"raw");
        let q = img.open_with(&resolve_bb).unwrap();
        assert_eq!(read(&q, 0, 2).unwrap(), [0xbb, 0xbb]);
    }

    #[test]
    fn backing_names_are_joined_to_the_directory_of_the_referring_name() {
        assert_eq!(relative_to(None, "base"), "base");
        assert_eq!(relative_to(Some("base"), "other"), "other");
        assert_eq!(relative_to(Some("d/e/mid"), "low"), "d/e/low");
        assert_eq!(relative_to(Some("d/mid"), "/abs/low"), "/abs/low");
        assert_eq!(
            relative_to(Some("d/mid"), "http://host/low"),
            "http://host/low"
        );
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_entries() {
        let mut lru = Lru::new(2);
        lru.put(1, "a");
        lru.put(2, "b");
        assert_eq!(lru.get(1), Some("a"));
        lru.put(3, "c");
        assert_eq!(lru.get(2), None);
        assert_eq!(lru.get(1), Some("a"));
        assert_eq!(lru.get(3), Some("c"));
    }
}
