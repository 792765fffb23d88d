//! A parallel gzip for the initramfs generation (the `ccb-gzip` program, src/bin).
//!
//! Debian's mkinitramfs ends with `gzip -n -c` over the whole cpio archive (no image of ours
//! has zstd, and with `SOURCE_DATE_EPOCH` set it never takes pigz): on this project's build
//! machines that is 5.5–6.5 s of one core, with the other idle, in every layer that installs
//! a kernel (a sixth of a cold CC-Debian12 layer, measured with `perf record -a`). During the
//! steps that declare host tools ([`crate::action::native`]), `ccb-gzip` stands in for the
//! image's gzip: the same gzip format, one member, in the manner of pigz. The input is cut into
//! [`CHUNK`]s, each deflated on its own on every core, and each chunk but the last ends in a
//! sync flush, so that the chunks join into one deflate stream. Unlike pigz, a chunk does not
//! take the previous one as a preset dictionary: at 1 MiB that costs little of the ratio.
//! Deflate is zlib-rs's (flate2's backend here): on Debian 12's 126 MiB initramfs archive it
//! takes 2.2 s of CPU at gzip's default level 6, against 6.3 s for GNU gzip and 6.4 s for
//! miniz_oxide, for a file 1.8 % larger than GNU gzip's. libdeflate cannot write a block that
//! is not the last.
//!
//! The bytes differ from GNU gzip's, while what they decompress to is the same: the kernel, gzip
//! and ccb's own initramfs reader read them as one member. The output depends only on the input
//! and the level (never on the number of cores), so a build stays reproducible. Only what
//! mkinitramfs asks for is done here: compressing one file or standard input to standard output
//! with `-n`. [`Invocation::parse`] hands every other use to the image's own gzip.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rayon::prelude::*;

/// The input each worker deflates on its own.
pub const CHUNK: usize = 1 << 20;
/// Chunks read and deflated at a time (then written in order): enough to keep every core busy.
const BATCH: usize = 16;

/// What a `gzip` command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Compress `input` (standard input when `None`) to standard output, without a name or a
    /// time in the header (`-n`), at `level`.
    Compress { level: u32, input: Option<PathBuf> },
    /// Anything else (decompressing, a file compressed in place, a header with the file's name
    /// and time, an option this module does not know): for the image's own gzip.
    Other,
}

impl Invocation {
    /// Reads gzip's arguments (without the program name) as GNU gzip does for the forms it
    /// knows: short options alone or grouped (`-nc9`), their long names, `--` and one operand.
    pub fn parse(args: &[OsString]) -> Invocation {
        let mut level = 6;
        let (mut no_name, mut stdout) = (false, false);
        let mut operands = Vec::new();
        let mut options_done = false;
        for arg in args {
            let Some(text) = arg.to_str() else {
                return Invocation::Other;
            };
            if options_done || text == "-" || !text.starts_with('-') {
                operands.push(text);
                continue;
            }
            match text {
                "--" => options_done = true,
                "--no-name" => no_name = true,
                "--stdout" | "--to-stdout" => stdout = true,
                "--fast" => level = 1,
                "--best" => level = 9,
                "--quiet" | "--force" => {}
                _ if text.starts_with("--") => return Invocation::Other,
                _ => {
                    for flag in text[1..].chars() {
                        match flag {
                            'n' => no_name = true,
                            'c' => stdout = true,
                            'q' | 'f' => {}
                            '1'..='9' => level = flag as u32 - '0' as u32,
                            _ => return Invocation::Other,
                        }
                    }
                }
            }
        }
        let input = match operands.as_slice() {
            [] | ["-"] => None,
            // A file without -c is compressed in place, into FILE.gz.
            [file] if stdout => Some(PathBuf::from(file)),
            _ => return Invocation::Other,
        };
        if !no_name {
            // The header would carry the file's name and time: gzip's own rules.
            return Invocation::Other;
        }
        Invocation::Compress { level, input }
    }
}

/// Compresses `input` into one gzip member on `output`, as `gzip -n -LEVEL` would (a header
/// without name or time), deflating [`CHUNK`]s in parallel. Returns the bytes read.
pub fn compress(mut input: impl Read, mut output: impl Write, level: u32) -> io::Result<u64> {
    let level = level.clamp(1, 9);
    // XFL as gzip writes it: 2 for its slowest level, 4 for its fastest; OS 3, Unix.
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    output.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3])?;
    let mut crc = Crc::new();
    let mut total = 0u64;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    // One chunk read ahead, so that the last chunk (the one that ends the stream) is known.
    let mut next = read_chunk(&mut input)?;
    loop {
        batch.clear();
        let mut last = false;
        while batch.len() < BATCH {
            let chunk = std::mem::take(&mut next);
            next = read_chunk(&mut input)?;
            crc.update(&chunk);
            total += chunk.len() as u64;
            batch.push(chunk);
            if next.is_empty() {
                last = true;
                break;
            }
        }
        let count = batch.len();
        let deflated: Vec<Vec<u8>> = batch
            .par_iter()
            .enumerate()
            .map(|(i, chunk)| deflate(chunk, level, last && i + 1 == count))
            .collect::<io::Result<_>>()?;
        for d in &deflated {
            output.write_all(d)?;
        }
        if last {
            break;
        }
    }
    output.write_all(&crc.sum().to_le_bytes())?;
    // ISIZE is the length modulo 2^32.
    output.write_all(&(total as u32).to_le_bytes())?;
    output.flush()?;
    Ok(total)
}

/// Up to [`CHUNK`] bytes of `input` (fewer only at its end; empty there).
fn read_chunk(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(CHUNK);
    input.take(CHUNK as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// `chunk` as raw deflate blocks: ending the stream when `last`, else with a sync flush (an
/// empty stored block), byte-aligned, so that the next chunk's blocks follow on.
fn deflate(chunk: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    let mut z = Compress::new(Compression::new(level), false);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(chunk.len() / 2 + 1024);
    loop {
        let consumed = z.total_in() as usize;
        if out.len() == out.capacity() {
            out.reserve(chunk.len() / 4 + 1024);
        }
        let status = z
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let done = z.total_in() as usize == chunk.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // A sync flush is complete once all the input is in and the output has room left.
            Status::Ok | Status::BufError if !last && done && out.len() < out.capacity() => {
                return Ok(out);
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::{GzDecoder, MultiGzDecoder};

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    /// Bytes that compress like a real archive: text, repeats and noise.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_u32;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                match (i / 4096) % 3 {
                    0 => b"initramfs module copy "[i % 22],
                    1 => (state % 7) as u8 + b'a',
                    _ => state as u8,
                }
            })
            .collect()
    }

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let read = compress(data, &mut out, level).unwrap();
        assert_eq!(read, data.len() as u64);
        out
    }

    #[test]
    fn mkinitramfs_compression_is_done_here_and_everything_else_by_the_images_gzip() {
        let file = |f: &str, level| Invocation::Compress {
            level,
            input: Some(PathBuf::from(f)),
        };
        assert_eq!(
            Invocation::parse(&args("-n -c /var/tmp/main")),
            file("/var/tmp/main", 6)
        );
        assert_eq!(Invocation::parse(&args("-n -9 -c /m")), file("/m", 9));
        assert_eq!(Invocation::parse(&args("-nc1 /m")), file("/m", 1));
        assert_eq!(
            Invocation::parse(&args("--no-name --best --stdout -- -m")),
            file("-m", 9)
        );
        let stdin = Invocation::Compress {
            level: 6,
            input: None,
        };
        assert_eq!(Invocation::parse(&args("-n")), stdin);
        assert_eq!(Invocation::parse(&args("-nq -")), stdin);
        for other in [
            "-c /m",       // the header would hold the file's time
            "-n /m",       // compressed in place
            "-dc /m.gz",   // decompression
            "-n -c /a /b", // two files
            "-n --rsyncable",
            "-nk",
            "-t /m.gz",
        ] {
            assert_eq!(
                Invocation::parse(&args(other)),
                Invocation::Other,
                "{other}"
            );
        }
    }

    #[test]
    fn the_output_is_one_gzip_member_that_decompresses_to_the_input() {
        for len in [
            0,
            1,
            1000,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 77,
            (BATCH + 2) * CHUNK,
        ] {
            let data = sample(len);
            let gz = gzip(&data, 6);
            // One member: a single-member decoder reads all of it, and nothing follows.
            let mut decoder = GzDecoder::new(gz.as_slice());
            let mut back = Vec::new();
            decoder.read_to_end(&mut back).unwrap();
            assert!(
                back == data,
                "length {len}: the round trip changed the bytes"
            );
            let mut rest = Vec::new();
            decoder.into_inner().read_to_end(&mut rest).unwrap();
            assert!(
                rest.is_empty(),
                "length {len}: {} bytes after the member",
                rest.len()
            );
            // The header says what `gzip -n` says: no name, no time, Unix.
            assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
        }
    }

    #[test]
    fn the_output_depends_on_the_input_and_level_never_on_the_cores() {
        let data = sample(5 * CHUNK + 12_345);
        let on = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gzip(&data, 6))
        };
        let one = on(1);
        assert!(
            one == on(2) && one == on(7),
            "the bytes changed with the number of threads"
        );
        assert!(gzip(&data, 9) != one, "the level was ignored");
        assert_eq!(gzip(&data, 9)[8], 2);
        assert_eq!(gzip(&data, 1)[8], 4);
    }

    #[test]
    fn gnu_gzip_reads_it_back_and_finds_it_sound() {
        // gzip is Essential on Debian: every host this runs on has it.
        let dir = tempfile::tempdir().unwrap();
        let data = sample(2 * CHUNK + 5);
        let gz = dir.path().join("a.gz");
        std::fs::write(&gz, gzip(&data, 6)).unwrap();
        let tested = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&gz)
            .status()
            .unwrap();
        assert!(tested.success(), "gzip -t rejected it");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == data,
            "gzip -dc gave other bytes"
        );
        // A multi-member reader agrees (what ccb's initramfs reader uses for gzip).
        let mut back = Vec::new();
        MultiGzDecoder::new(std::fs::File::open(&gz).unwrap())
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }
}
