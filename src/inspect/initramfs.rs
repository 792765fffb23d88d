//! An initramfs reader: the list of files in an initramfs image, as the kernel would unpack
//! it (`init/initramfs.c`), without unpacking anything.
//!
//! An initramfs is a sequence of segments: uncompressed cpio archives (Debian's and dracut's
//! early-microcode prefix) and compressed streams (gzip, zstd, xz, or lz4 in the kernel's
//! legacy format, as `lz4 -l` writes it), each holding one or more cpio archives in the
//! `newc` or `crc` format, with zero padding allowed between them.
//!
//! The input is untrusted: every length is checked before use, names are bounded by
//! `PATH_MAX`, and the unpacked size, the entry count and each decoder's memory are capped
//! ([`Limits`]), so a hostile image is an error, never a panic, a hang or an unbounded
//! allocation. File contents are streamed past, never kept: memory stays at the decoders'
//! windows plus the names.
//!
//! Decoders are pure-Rust crates, no C: `flate2` (miniz_oxide backend, already in the tree
//! through ureq) for gzip, `ruzstd` (already used by the qcow2 reader) for zstd, `lzma-rust2`
//! for xz (maintained, with a per-block memory limit and a sans-I/O decoder that reports the
//! exact input consumed, which the segment walk needs; `lzma-rs` has neither), and
//! `lz4_flex`'s block decoder for lz4 (the legacy framing is a few lines here; the crate's
//! frame decoder reads only the modern format).

use std::io::Read;

use serde::Serialize;

/// The magic of an lz4 legacy stream (`lz4 -l`), little-endian.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// An lz4 legacy block unpacks to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The size of a `newc`/`crc` header.
const HEADER_LEN: usize = 110;
/// The longest name the kernel accepts (`PATH_MAX`).
const MAX_NAME: usize = 4096;
const TRAILER: &[u8] = b"TRAILER!!!";

/// Caps on what one initramfs may cost to read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of cpio data, all segments together, after decompression.
    pub max_unpacked: u64,
    /// Archive entries, all segments together.
    pub max_entries: usize,
    /// The largest zstd window and xz dictionary accepted, in bytes.
    pub max_window: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Generic initramfs images with every storage and network driver unpack to a few
        // hundred MiB at most; a 128 MiB window is zstd's own default cap.
        Self {
            max_unpacked: 4 << 30,
            max_entries: 1 << 20,
            max_window: 128 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Lz4,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As stored, without a leading `./` or `/`.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
}

/// A segment of the image: where it starts and how it is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub offset: u64,
    pub compression: Compression,
    /// Entries it holds (trailers not counted).
    pub entries: usize,
}

/// What an initramfs holds.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    pub segments: Vec<Segment>,
    pub entries: Vec<Entry>,
    /// Bytes of cpio data after decompression.
    pub unpacked: u64,
}

impl Initramfs {
    /// "zstd after an uncompressed cpio", for a report.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s.compression {
                Compression::None => "cpio".to_string(),
                c => format!("{c} cpio"),
            })
            .collect();
        parts.join(" + ")
    }

    /// The tool that made the archive, told by the files each leaves in it: dracut its own
    /// `usr/lib/dracut/` tree, initramfs-tools its `conf/initramfs.conf` and `scripts/`.
    pub fn generator(&self) -> Option<Generator> {
        let has = |f: &dyn Fn(&str) -> bool| self.entries.iter().any(|e| f(&e.name));
        if has(&|n| n.starts_with("usr/lib/dracut/") || n.starts_with("lib/dracut/")) {
            Some(Generator::Dracut)
        } else if has(&|n| n == "conf/initramfs.conf" || n.starts_with("scripts/init-top/")) {
            Some(Generator::InitramfsTools)
        } else {
            None
        }
    }
}

/// The tools that make the initramfs of the images ccb builds (the `initramfs` element).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    Dracut,
    InitramfsTools,
}

impl std::fmt::Display for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Generator::Dracut => "dracut",
            Generator::InitramfsTools => "initramfs-tools",
        })
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InitramfsError {
    #[error("byte {offset}: {what}")]
    #[diagnostic(code(ccb::inspect::initramfs::corrupt))]
    Corrupt { offset: u64, what: String },
    #[error("byte {offset}: {what} data is corrupt or truncated: {reason}")]
    #[diagnostic(code(ccb::inspect::initramfs::decompress))]
    Decompress {
        offset: u64,
        what: Compression,
        reason: String,
    },
    #[error("byte {offset}: {format} compression is not supported (gzip, zstd, xz, lz4 are)")]
    #[diagnostic(code(ccb::inspect::initramfs::unsupported))]
    Unsupported { offset: u64, format: &'static str },
    #[error("byte {offset}: neither a cpio archive nor a known compression (starts {head})")]
    #[diagnostic(code(ccb::inspect::initramfs::unknown))]
    Unknown { offset: u64, head: String },
    #[error("unpacks to more than {limit} bytes")]
    #[diagnostic(code(ccb::inspect::initramfs::too_large))]
    TooLarge { limit: u64 },
    #[error("holds more than {limit} entries")]
    #[diagnostic(code(ccb::inspect::initramfs::too_many))]
    TooManyEntries { limit: usize },
    #[error("is empty")]
    #[diagnostic(code(ccb::inspect::initramfs::empty))]
    Empty,
}

/// Lists the entries of the initramfs image `data`.
pub fn read(data: &[u8]) -> Result<Initramfs, InitramfsError> {
    read_with_limits(data, Limits::default())
}

pub fn read_with_limits(data: &[u8], limits: Limits) -> Result<Initramfs, InitramfsError> {
    let mut out = Initramfs::default();
    let mut pos = 0usize;
    loop {
        // The kernel skips zero bytes between segments (padding to a block size).
        while pos < data.len() && data[pos] == 0 {
            pos += 1;
        }
        if pos >= data.len() {
            break;
        }
        let rest = &data[pos..];
        let offset = pos as u64;
        let before = out.entries.len();
        let (compression, consumed) = if rest.starts_with(b"0707") {
            let mut cpio = Cpio::new(offset, &mut out, limits, true);
            let consumed = cpio.feed(rest)?;
            cpio.finish()?;
            (Compression::None, consumed)
        } else {
            let compression = detect(rest, offset)?;
            let mut cpio = Cpio::new(offset, &mut out, limits, false);
            let consumed = decompress(compression, rest, offset, limits, &mut cpio)?;
            cpio.finish()?;
            (compression, consumed)
        };
        out.segments.push(Segment {
            offset,
            compression,
            entries: out.entries.len() - before,
        });
        // Every segment consumes its header at least, so the walk always moves on.
        pos += consumed.max(1);
    }
    if out.segments.is_empty() {
        return Err(InitramfsError::Empty);
    }
    Ok(out)
}

fn detect(rest: &[u8], offset: u64) -> Result<Compression, InitramfsError> {
    let unsupported = |format| Err(InitramfsError::Unsupported { offset, format });
    match rest {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Ok(Compression::Xz),
        [0x02, 0x21, 0x4c, 0x18, ..] => Ok(Compression::Lz4),
        [b'B', b'Z', b'h', ..] => unsupported("bzip2"),
        [0x5d, 0, 0, ..] => unsupported("lzma"),
        [0x89, b'L', b'Z', b'O', ..] => unsupported("lzo"),
        [0x1f, 0x9e, ..] => unsupported("old gzip"),
        _ => Err(InitramfsError::Unknown {
            offset,
            head: rest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// Decompresses the stream at the start of `rest` into `cpio`; returns the compressed bytes
/// it took, so the walk can go on to what follows it.
fn decompress(
    compression: Compression,
    rest: &[u8],
    offset: u64,
    limits: Limits,
    cpio: &mut Cpio,
) -> Result<usize, InitramfsError> {
    let bad = |reason: String| InitramfsError::Decompress {
        offset,
        what: compression,
        reason,
    };
    match compression {
        Compression::Gzip => {
            // A `&[u8]` reader advances by exactly what the decoder consumed.
            let mut dec = flate2::bufread::GzDecoder::new(rest);
            pump(&mut dec, cpio, &bad)?;
            Ok(rest.len() - dec.into_inner().len())
        }
        Compression::Zstd => {
            let mut src = rest;
            let mut dec = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                &mut src,
                limits.max_window,
            )
            .map_err(|e| bad(e.to_string()))?;
            pump(&mut dec, cpio, &bad)?;
            drop(dec);
            Ok(rest.len() - src.len())
        }
        Compression::Xz => {
            let mut dec = XzRead {
                stream: lzma_rust2::XzStream::new_mem_limit(
                    false,
                    u32::try_from(limits.max_window / 1024).unwrap_or(u32::MAX),
                ),
                input: rest,
                pos: 0,
                done: false,
            };
            pump(&mut dec, cpio, &bad)?;
            Ok(dec.pos)
        }
        Compression::Lz4 => lz4_legacy(rest, cpio, &bad),
        Compression::None => Ok(0),
    }
}

/// Reads `dec` to its end into `cpio`.
fn pump(
    dec: &mut dyn Read,
    cpio: &mut Cpio,
    bad: &dyn Fn(String) -> InitramfsError,
) -> Result<(), InitramfsError> {
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(e.to_string())),
        };
        cpio.feed(&buf[..n])?;
    }
}

/// `lzma-rust2`'s sans-I/O xz decoder as a reader that knows how much input it took.
struct XzRead<'a> {
    stream: lzma_rust2::XzStream,
    input: &'a [u8],
    pos: usize,
    done: bool,
}

impl Read for XzRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while !self.done && !buf.is_empty() {
            let r =
                self.stream
                    .process(&self.input[self.pos..], buf, lzma_rust2::Action::Finish)?;
            self.pos += r.bytes_consumed;
            if r.status == lzma_rust2::Status::StreamEnd {
                self.done = true;
            }
            if r.bytes_produced > 0 {
                return Ok(r.bytes_produced);
            }
            if r.bytes_consumed == 0 && !self.done {
                // No progress with all the input given: the stream ends early.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the xz stream is truncated",
                ));
            }
        }
        Ok(0)
    }
}

/// The kernel's lz4 legacy format: a magic, then blocks of (u32 compressed size, data), each
/// unpacking to at most 8 MiB, up to the end of the input; the magic may repeat between
/// blocks (concatenated streams). A zero size ends it here (padding), as nothing valid has it.
fn lz4_legacy(
    rest: &[u8],
    cpio: &mut Cpio,
    bad: &dyn Fn(String) -> InitramfsError,
) -> Result<usize, InitramfsError> {
    let mut pos = 4;
    let mut out = vec![0u8; LZ4_LEGACY_BLOCK];
    while pos < rest.len() {
        let Some(size) = rest.get(pos..pos + 4) else {
            return Err(bad(format!("a block size at byte {pos} is cut short")));
        };
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]);
        if size == 0 {
            break;
        }
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let block = usize::try_from(size)
            .ok()
            .and_then(|s| rest.get(pos..pos.checked_add(s)?))
            .ok_or_else(|| bad(format!("a {size}-byte block at byte {pos} is cut short")))?;
        let n = lz4_flex::block::decompress_into(block, &mut out)
            .map_err(|e| bad(format!("block at byte {pos}: {e}")))?;
        cpio.feed(&out[..n])?;
        pos += block.len();
    }
    Ok(pos.min(rest.len()))
}

enum State {
    /// Collecting a header; zero bytes before one are padding.
    Header {
        have: usize,
    },
    Name {
        have: usize,
    },
    /// Skipping bytes: name padding, file data, data padding.
    Skip {
        left: u64,
    },
}

/// A push parser of a stream of `newc`/`crc` cpio archives, as the kernel's: fed any chunks,
/// keeps only the names.
struct Cpio<'a> {
    /// Where the segment starts in the image, for errors.
    base: u64,
    out: &'a mut Initramfs,
    limits: Limits,
    /// Stop after the first trailer (an uncompressed segment: what follows may be compressed).
    stop_at_trailer: bool,
    state: State,
    /// Bytes seen in this segment, for alignment and errors.
    seen: u64,
    header: [u8; HEADER_LEN],
    name: Vec<u8>,
    name_len: usize,
    file_size: u64,
    mode: u32,
    /// In an archive (a header seen, its trailer not yet).
    open: bool,
}

impl<'a> Cpio<'a> {
    fn new(base: u64, out: &'a mut Initramfs, limits: Limits, stop_at_trailer: bool) -> Self {
        Self {
            base,
            out,
            limits,
            stop_at_trailer,
            state: State::Header { have: 0 },
            seen: 0,
            header: [0; HEADER_LEN],
            name: Vec::new(),
            name_len: 0,
            file_size: 0,
            mode: 0,
            open: false,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> InitramfsError {
        InitramfsError::Corrupt {
            offset: self.base + self.seen,
            what: what.into(),
        }
    }

    /// Takes `chunk`; returns how much of it was used (all of it unless a trailer ended an
    /// uncompressed segment).
    fn feed(&mut self, chunk: &[u8]) -> Result<usize, InitramfsError> {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Header { have } => {
                    if have == 0 && !self.open && self.stop_at_trailer && self.seen > 0 {
                        // An uncompressed segment ends after its trailer: what follows may
                        // be compressed (the walk skips any zero padding).
                        return Ok(i);
                    }
                    if have == 0 && !self.open && chunk[i] == 0 {
                        // Zeros between archives are padding.
                        let zeros = chunk[i..].iter().take_while(|b| **b == 0).count();
                        self.advance(zeros)?;
                        i += zeros;
                        continue;
                    }
                    if have == 0 && !self.seen.is_multiple_of(4) {
                        return Err(
                            self.corrupt("a header not aligned to 4 bytes (broken padding)")
                        );
                    }
                    let take = (HEADER_LEN - have).min(chunk.len() - i);
                    self.header[have..have + take].copy_from_slice(&chunk[i..i + take]);
                    i += take;
                    self.advance(take)?;
                    if have + take == HEADER_LEN {
                        self.parse_header()?;
                    } else {
                        self.state = State::Header { have: have + take };
                    }
                }
                State::Name { have } => {
                    let take = (self.name_len - have).min(chunk.len() - i);
                    self.name.extend_from_slice(&chunk[i..i + take]);
                    i += take;
                    self.advance(take)?;
                    if have + take == self.name_len {
                        self.end_name()?;
                    } else {
                        self.state = State::Name { have: have + take };
                    }
                }
                State::Skip { left } => {
                    let take = left.min((chunk.len() - i) as u64);
                    i += take as usize;
                    self.advance(take as usize)?;
                    self.state = if take == left {
                        State::Header { have: 0 }
                    } else {
                        State::Skip { left: left - take }
                    };
                }
            }
        }
        Ok(i)
    }

    fn advance(&mut self, n: usize) -> Result<(), InitramfsError> {
        self.seen += n as u64;
        self.out.unpacked += n as u64;
        if self.out.unpacked > self.limits.max_unpacked {
            return Err(InitramfsError::TooLarge {
                limit: self.limits.max_unpacked,
            });
        }
        Ok(())
    }

    fn hex(&self, field: usize) -> Result<u32, InitramfsError> {
        let start = 6 + field * 8;
        let text = &self.header[start..start + 8];
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| self.corrupt(format!("a header field is not hex ({text:?})")))
    }

    fn parse_header(&mut self) -> Result<(), InitramfsError> {
        let magic = &self.header[..6];
        if magic != b"070701" && magic != b"070702" {
            let what = if magic == b"070707" {
                "an old binary-portable (odc) cpio header: only newc and crc are read".to_string()
            } else {
                format!(
                    "no cpio magic (found {:?})",
                    String::from_utf8_lossy(magic).escape_debug().to_string()
                )
            };
            return Err(self.corrupt(what));
        }
        self.mode = self.hex(1)?;
        self.file_size = u64::from(self.hex(6)?);
        let name_len = self.hex(11)? as usize;
        if name_len == 0 || name_len > MAX_NAME {
            return Err(self.corrupt(format!(
                "a name length of {name_len} (1 to {MAX_NAME} bytes)"
            )));
        }
        self.open = true;
        self.name_len = name_len;
        self.name.clear();
        self.state = State::Name { have: 0 };
        Ok(())
    }

    fn end_name(&mut self) -> Result<(), InitramfsError> {
        if self.name.last() != Some(&0) {
            return Err(self.corrupt("a name without its terminating NUL"));
        }
        self.name.pop();
        // Header and name are padded to 4 bytes, then the data is.
        let name_pad = (4 - self.seen % 4) % 4;
        if self.name == TRAILER {
            self.open = false;
            self.state = State::Skip { left: name_pad };
            return Ok(());
        }
        if self.out.entries.len() >= self.limits.max_entries {
            return Err(InitramfsError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let kind = match self.mode & 0o170000 {
            0o100000 => EntryKind::File,
            0o040000 => EntryKind::Dir,
            0o120000 => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        let name = String::from_utf8_lossy(&self.name);
        let name = name.trim_start_matches("./").trim_start_matches('/');
        self.out.entries.push(Entry {
            name: name.to_string(),
            kind,
            size: self.file_size,
        });
        let data_pad = (4 - self.file_size % 4) % 4;
        let left = name_pad + self.file_size + data_pad;
        self.state = if left == 0 {
            State::Header { have: 0 }
        } else {
            State::Skip { left }
        };
        Ok(())
    }

    /// The stream ended: it must end between archives.
    fn finish(&self) -> Result<(), InitramfsError> {
        match self.state {
            State::Header { have: 0 } if !self.open && self.seen > 0 => Ok(()),
            State::Header { have: 0 } if self.seen == 0 => Err(self.corrupt("no cpio archive")),
            State::Skip { .. } if !self.open => Ok(()),
            _ if self.open => Err(self.corrupt(format!(
                "the archive ends without its trailer, in {}",
                match self.state {
                    State::Header { .. } => "a header",
                    State::Name { .. } => "a name",
                    State::Skip { .. } => "a file's data",
                }
            ))),
            _ => Err(self.corrupt("the archive is truncated")),
        }
    }
}
