//! `ccb::inspect::initramfs`: initramfs images packed by the real tools initramfs-tools and
//! dracut use (`cpio -H newc`, `gzip`, `zstd`, `xz --check=crc32`, `lz4 -l`), laid out as
//! Debian's and dracut's are (an uncompressed early-microcode cpio, then the compressed main
//! archive), and hostile ones crafted byte by byte.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ccb::inspect::initramfs::{self, Compression, EntryKind, Generator, InitramfsError, Limits};

// ---- building archives ------------------------------------------------------------------

/// Pipes `input` through a host tool (scripts/host-deps.sh installs them all).
fn filter(program: &str, args: &[&str], dir: Option<&Path>, input: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("these tests need `{program}` (scripts/host-deps.sh): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("the tool runs");
    writer.join().expect("writer").expect("stdin written");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A tree under a temporary directory: `(path, content)`; a path ending in `/` is a directory.
fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, content) in files {
        let p = dir.path().join(path.trim_end_matches('/'));
        if path.ends_with('/') {
            std::fs::create_dir_all(&p).expect("mkdir");
        } else {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
        }
    }
    dir
}

/// `find . | cpio -o -H <format>`, as mkinitramfs and dracut run it.
fn cpio(files: &[(&str, &[u8])], format: &str) -> Vec<u8> {
    let dir = tree(files);
    let list = filter("find", &["."], Some(dir.path()), b"");
    filter(
        "cpio",
        &["--quiet", "-o", "-H", format, "--reproducible"],
        Some(dir.path()),
        &list,
    )
}

fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => filter("gzip", &["-n", "-9", "-c"], None, data),
        Compression::Zstd => filter("zstd", &["-q", "-c", "-19"], None, data),
        // The kernel's xz decoder wants CRC32 checks (mkinitramfs and dracut pass it).
        Compression::Xz => filter("xz", &["--check=crc32", "-c"], None, data),
        Compression::Lz4 => filter("lz4", &["-l", "-q", "-c"], None, data),
    }
}

const MAIN: &[(&str, &[u8])] = &[
    ("init", b"#!/bin/sh\nexec /sbin/init\n"),
    ("usr/lib/modules/6.1.0-18-amd64/", b""),
    (
        "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko",
        b"\x7fELF nvme",
    ),
    (
        "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/block/virtio_blk.ko.zst",
        b"zstd-compressed module",
    ),
    ("etc/modprobe.d/", b""),
];

/// Debian's and dracut's early microcode: an uncompressed cpio first.
fn microcode() -> Vec<u8> {
    cpio(
        &[(
            "kernel/x86/microcode/GenuineIntel.bin",
            &[0xa5u8; 1001] as &[u8],
        )],
        "newc",
    )
}

fn names(i: &initramfs::Initramfs) -> Vec<&str> {
    i.entries.iter().map(|e| e.name.as_str()).collect()
}

// ---- what is read -----------------------------------------------------------------------

#[test]
fn every_compression_lists_the_archive_as_cpio_wrote_it() {
    let archive = cpio(MAIN, "newc");
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ] {
        let image = compress(c, &archive);
        let got = initramfs::read(&image).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert_eq!(got.segments.len(), 1, "{c}");
        assert_eq!(got.segments[0].compression, c);
        let n = names(&got);
        for want in [
            "init",
            "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko",
            "usr/lib/modules/6.1.0-18-amd64/kernel/drivers/block/virtio_blk.ko.zst",
            "etc/modprobe.d",
        ] {
            assert!(n.contains(&want), "{c}: {want} not in {n:?}");
        }
        assert!(
            n.contains(&"."),
            "{c}: the root entry is named as cpio wrote it"
        );
        let init = got.entries.iter().find(|e| e.name == "init").expect("init");
        assert_eq!((init.kind, init.size), (EntryKind::File, 26), "{c}");
        let dir = got.entries.iter().find(|e| e.name == "etc/modprobe.d");
        assert_eq!(dir.map(|d| d.kind), Some(EntryKind::Dir));
        // All of a compressed stream is read, block padding included; an uncompressed
        // segment ends at its trailer (the walk skips the padding).
        if c != Compression::None {
            assert_eq!(got.unpacked, archive.len() as u64, "{c}");
        }
    }
}

#[test]
fn the_crc_format_reads_like_newc() {
    let got = initramfs::read(&compress(Compression::Gzip, &cpio(MAIN, "crc"))).expect("crc");
    assert!(
        names(&got).contains(&"usr/lib/modules/6.1.0-18-amd64/kernel/drivers/nvme/host/nvme.ko")
    );
}

#[test]
fn a_microcode_prefix_then_each_compressed_main_archive() {
    for c in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ] {
        let mut image = microcode();
        let main_at = image.len() as u64;
        image.extend(compress(c, &cpio(MAIN, "newc")));
        let got = initramfs::read(&image).unwrap_or_else(|e| panic!("{c}: {e}"));
        let layout: Vec<(u64, Compression)> = got
            .segments
            .iter()
            .map(|s| (s.offset, s.compression))
            .collect();
        assert_eq!(layout, [(0, Compression::None), (main_at, c)], "{c}");
        let n = names(&got);
        assert!(n.contains(&"kernel/x86/microcode/GenuineIntel.bin"), "{c}");
        assert!(n.contains(&"init"), "{c}");
        assert_eq!(got.describe(), format!("cpio + {c} cpio"));
    }
}

#[test]
fn concatenated_segments_with_padding_between_them_are_all_read() {
    // dracut appends a second compressed archive; block-size zero padding between segments
    // is skipped, as by the kernel.
    let mut image = microcode();
    image.extend([0u8; 512]);
    image.extend(compress(Compression::Zstd, &cpio(MAIN, "newc")));
    image.extend([0u8; 3]);
    image.extend(compress(
        Compression::Gzip,
        &cpio(&[("etc/extra.conf", b"x")], "newc"),
    ));
    image.extend(compress(
        Compression::Xz,
        &cpio(&[("etc/third.conf", b"y")], "newc"),
    ));
    image.extend([0u8; 8]);
    let got = initramfs::read(&image).expect("read");
    let kinds: Vec<Compression> = got.segments.iter().map(|s| s.compression).collect();
    assert_eq!(
        kinds,
        [
            Compression::None,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Xz
        ]
    );
    let n = names(&got);
    for want in [
        "kernel/x86/microcode/GenuineIntel.bin",
        "init",
        "etc/extra.conf",
        "etc/third.conf",
    ] {
        assert!(n.contains(&want), "{want} not in {n:?}");
    }
}

#[test]
fn two_archives_in_one_compressed_stream_are_both_read() {
    let mut both = cpio(MAIN, "newc");
    both.extend(cpio(&[("etc/second", b"2")], "newc"));
    let got = initramfs::read(&compress(Compression::Zstd, &both)).expect("read");
    assert_eq!(got.segments.len(), 1);
    assert!(names(&got).contains(&"etc/second"));
    assert!(names(&got).contains(&"init"));
}

#[test]
fn two_uncompressed_archives_back_to_back_are_two_segments() {
    let mut image = microcode();
    image.extend(cpio(MAIN, "newc"));
    let got = initramfs::read(&image).expect("read");
    assert_eq!(got.segments.len(), 2);
    assert!(names(&got).contains(&"init"));
}

// ---- what is refused --------------------------------------------------------------------

fn corrupt_offset(e: &InitramfsError) -> Option<u64> {
    match e {
        InitramfsError::Corrupt { offset, .. } | InitramfsError::Decompress { offset, .. } => {
            Some(*offset)
        }
        _ => None,
    }
}

#[test]
fn every_truncation_of_every_format_is_an_error_never_a_panic() {
    let archive = cpio(MAIN, "newc");
    for c in [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ] {
        let mut image = microcode();
        let main_at = image.len();
        image.extend(compress(c, &archive));
        // Every cut inside the main segment, past its first bytes (a cut exactly after the
        // microcode segment leaves a valid initramfs), and before cpio's zero padding to
        // 512-byte blocks after an uncompressed trailer (cutting that off is harmless).
        let end = match c {
            Compression::None => {
                let t = image
                    .windows(11)
                    .rposition(|w| w == b"TRAILER!!!\0")
                    .expect("trailer");
                t + 11
            }
            _ => image.len(),
        };
        for cut in main_at + 1..end {
            let cut_image = &image[..cut];
            match initramfs::read(cut_image) {
                Err(e) => assert!(
                    corrupt_offset(&e).is_some() || matches!(e, InitramfsError::Unknown { .. }),
                    "{c} cut at {cut}: unexpected {e:?}"
                ),
                Ok(got) => panic!(
                    "{c} cut at {cut} of {} read as {:?}",
                    image.len(),
                    names(&got)
                ),
            }
        }
    }
}

#[test]
fn garbage_after_the_archive_is_named_with_its_offset() {
    let mut image = compress(Compression::Gzip, &cpio(MAIN, "newc"));
    let at = image.len() as u64;
    image.extend(b"GARBAGE!");
    let err = initramfs::read(&image).expect_err("garbage");
    assert!(
        matches!(err, InitramfsError::Unknown { offset, .. } if offset == at),
        "{err:?}"
    );
    assert!(err.to_string().contains("47 41 52 42"), "{err}");
}

#[test]
fn unsupported_compressions_are_named() {
    let bz = filter("bzip2", &["-c"], None, &cpio(MAIN, "newc"));
    let err = initramfs::read(&bz).expect_err("bzip2");
    assert!(
        err.to_string()
            .contains("bzip2 compression is not supported"),
        "{err}"
    );
}

#[test]
fn the_odc_format_is_refused_by_name() {
    let err = initramfs::read(&cpio(MAIN, "odc")).expect_err("odc");
    assert!(err.to_string().contains("odc"), "{err}");
}

#[test]
fn empty_and_all_zero_images_are_refused() {
    assert!(matches!(initramfs::read(b""), Err(InitramfsError::Empty)));
    assert!(matches!(
        initramfs::read(&[0u8; 4096]),
        Err(InitramfsError::Empty)
    ));
}

/// A `newc` header by hand: `namesize` and `filesize` as given, whatever the bytes after.
fn header(name_len: u32, file_size: u32) -> Vec<u8> {
    let mut h = b"070701".to_vec();
    for (i, v) in [
        1u32, 0o100644, 0, 0, 1, 0, file_size, 0, 0, 0, 0, name_len, 0,
    ]
    .iter()
    .enumerate()
    {
        let _ = i;
        h.extend(format!("{v:08x}").bytes());
    }
    h
}

#[test]
fn hostile_headers_are_errors() {
    // A name longer than PATH_MAX.
    let mut h = header(1 << 30, 0);
    h.extend([b'a'; 64]);
    let e = initramfs::read(&h).expect_err("long name");
    assert!(e.to_string().contains("name length of 1073741824"), "{e}");
    // A name without its NUL.
    let mut h = header(4, 0);
    h.extend(b"abcd\0\0");
    let e = initramfs::read(&h).expect_err("no NUL");
    assert!(e.to_string().contains("terminating NUL"), "{e}");
    // Non-hex fields.
    let mut h = header(5, 0);
    h[6 + 6 * 8] = b'g';
    h.extend(b"init\0\0\0\0");
    let e = initramfs::read(&h).expect_err("not hex");
    assert!(e.to_string().contains("not hex"), "{e}");
    // A 4 GiB file in a 200-byte archive: the data runs past the end.
    let mut h = header(5, u32::MAX);
    h.extend(b"init\0\0\0\0");
    h.extend([7u8; 64]);
    let e = initramfs::read(&h).expect_err("short data");
    assert!(e.to_string().contains("without its trailer"), "{e}");
    // No trailer at all.
    let e = initramfs::read(&cpio(MAIN, "newc")[..110 + 4]).expect_err("cut");
    assert!(e.to_string().contains("without its trailer"), "{e}");
}

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let big = vec![0u8; 64 << 20];
    let dir_files: [(&str, &[u8]); 1] = [("zeros", &big)];
    let archive = cpio(&dir_files, "newc");
    let limits = Limits {
        max_unpacked: 8 << 20,
        ..Limits::default()
    };
    for c in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ] {
        let image = compress(c, &archive);
        assert!(image.len() < 1 << 20, "{c}: {} bytes", image.len());
        let e = initramfs::read_with_limits(&image, limits).expect_err("bomb");
        assert!(
            matches!(e, InitramfsError::TooLarge { limit } if limit == 8 << 20),
            "{c}: {e:?}"
        );
    }
}

#[test]
fn too_many_entries_stop_at_the_limit() {
    let files: Vec<(String, Vec<u8>)> = (0..50).map(|i| (format!("f{i}"), vec![])).collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_slice()))
        .collect();
    let image = cpio(&refs, "newc");
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let e = initramfs::read_with_limits(&image, limits).expect_err("entries");
    assert!(
        matches!(e, InitramfsError::TooManyEntries { limit: 10 }),
        "{e:?}"
    );
}

#[test]
fn an_xz_dictionary_over_the_window_limit_is_refused_before_allocation() {
    let archive = cpio(MAIN, "newc");
    let image = filter(
        "xz",
        &["--check=crc32", "--lzma2=dict=64MiB", "-c"],
        None,
        &archive,
    );
    let limits = Limits {
        max_window: 16 << 20,
        ..Limits::default()
    };
    let e = initramfs::read_with_limits(&image, limits).expect_err("dict");
    assert!(
        matches!(
            e,
            InitramfsError::Decompress {
                what: Compression::Xz,
                ..
            }
        ),
        "{e:?}"
    );
    initramfs::read(&image).expect("within the default limit");
}

#[test]
fn lz4_legacy_streams_of_several_blocks_and_back_to_back_are_read_whole() {
    // 20 MiB of varied data: three 8 MiB legacy blocks.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let first = cpio(
        &[("usr/lib/firmware/big.bin", &big), ("init", b"x")],
        "newc",
    );
    let second = cpio(&[("etc/after.conf", b"y")], "newc");
    let mut image = compress(Compression::Lz4, &first);
    // `cat a.lz4 b.lz4`: the kernel reads the repeated magic as the start of more blocks.
    image.extend(compress(Compression::Lz4, &second));
    let got = initramfs::read(&image).expect("read");
    assert_eq!(got.segments.len(), 1);
    let n = names(&got);
    for want in ["usr/lib/firmware/big.bin", "init", "etc/after.conf"] {
        assert!(n.contains(&want), "{want} not in {n:?}");
    }
    let big_entry = got.entries.iter().find(|e| e.name.ends_with("big.bin"));
    assert_eq!(big_entry.map(|e| e.size), Some(20 << 20));
    assert_eq!(got.unpacked, (first.len() + second.len()) as u64);
}

#[test]
fn the_generator_is_told_by_the_files_dracut_and_initramfs_tools_leave() {
    // dracut 106's own tree (Debian 13), after early microcode.
    let mut dracut = microcode();
    let mut files = MAIN.to_vec();
    files.push(("usr/lib/dracut/build-parameter.txt", b" --no-hostonly"));
    files.push(("usr/lib/dracut/hooks/pre-mount/", b""));
    dracut.extend(compress(Compression::Zstd, &cpio(&files, "newc")));
    let got = initramfs::read(&dracut).expect("read");
    assert_eq!(got.generator(), Some(Generator::Dracut));

    // mkinitramfs (Debian 12): its configuration and boot scripts.
    let mut files = MAIN.to_vec();
    files.push(("conf/initramfs.conf", b"MODULES=most\n"));
    files.push(("scripts/init-top/udev", b"#!/bin/sh\n"));
    let got = initramfs::read(&compress(Compression::Gzip, &cpio(&files, "newc"))).expect("read");
    assert_eq!(got.generator(), Some(Generator::InitramfsTools));
    assert_eq!(Generator::InitramfsTools.to_string(), "initramfs-tools");

    // Neither tool's files: unknown, not a guess.
    let got = initramfs::read(&cpio(MAIN, "newc")).expect("read");
    assert_eq!(got.generator(), None);
}
