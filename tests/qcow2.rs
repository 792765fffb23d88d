//! The qcow2 reader against QEMU: every image is made with `qemu-img`/`qemu-io`, and the whole
//! virtual disk read through `ccb::inspect::image` must equal `qemu-img convert -O raw` byte for
//! byte. Broken images (made by QEMU, then damaged) must give an error that says what is wrong,
//! never a panic or wrong bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ccb::inspect::ReadAt;
use ccb::inspect::image::{self, Format, ImageError};
use ccb::inspect::qcow2::{Qcow2, Qcow2Error};

/// A little over 4 MiB, ending in the middle of a 64 KiB cluster.
const DISK_SIZE: usize = (4 << 20) + 3 * 512;

fn run(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run("qemu-img", args, dir);
}

fn qemu_io(dir: &Path, image: &str, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(image);
    run("qemu-io", &args, dir);
}

/// A raw disk of incompressible bytes, compressible text and holes, in runs that start and end
/// off cluster boundaries.
fn write_raw_disk(path: &Path) {
    let mut disk = vec![0u8; DISK_SIZE];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut at = 0usize;
    let mut kind = 0;
    while at < DISK_SIZE {
        let len = ((random() % (300 << 10)) as usize + 1).min(DISK_SIZE - at);
        let run = &mut disk[at..at + len];
        match kind % 3 {
            0 => run.iter_mut().for_each(|b| *b = random() as u8),
            1 => {
                let text = b"Package: cloud-init\nStatus: install ok installed\nVersion: 24.1\n";
                for (b, t) in run.iter_mut().zip(text.iter().cycle()) {
                    *b = *t;
                }
            }
            _ => {} // a hole
        }
        at += len;
        kind += 1 + (random() % 2) as usize;
    }
    // The last bytes are data, so that the partial last cluster is allocated.
    disk[DISK_SIZE - 100..].fill(0x5a);
    std::fs::write(path, disk).unwrap();
}

fn temp_dir_with_disk() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    write_raw_disk(&raw);
    (dir, raw)
}

/// Reads the whole virtual disk in uneven pieces, so that reads start and end inside clusters
/// and subclusters and span several of them.
fn read_whole(disk: &dyn ReadAt) -> Vec<u8> {
    let size = disk.size() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0usize;
    let pieces = [1 << 20, 777, 65536 + 513, 4096, 3 << 20, 100_000];
    for len in pieces.iter().cycle() {
        if at == size {
            break;
        }
        let len = (*len).min(size - at);
        disk.read_at(at as u64, &mut out[at..at + len])
            .unwrap_or_else(|e| panic!("read of {len} bytes at {at}: {e}"));
        at += len;
    }
    out
}

/// The image read by ccb equals the image read by QEMU.
fn assert_reads_like_qemu(dir: &Path, image: &str) {
    let expected_path = dir.join(format!("{image}.expected.raw"));
    qemu_img(
        dir,
        &[
            "convert",
            "-O",
            "raw",
            image,
            expected_path.to_str().unwrap(),
        ],
    );
    let expected = std::fs::read(&expected_path).unwrap();
    let disk = image::open_path(&dir.join(image)).unwrap_or_else(|e| panic!("{image}: {e}"));
    assert_eq!(disk.size(), expected.len() as u64, "{image}: virtual size");
    let actual = read_whole(&*disk);
    if let Some(at) = actual.iter().zip(&expected).position(|(a, e)| a != e) {
        panic!(
            "{image}: first difference at byte {at} (0x{at:x}): ccb read {:#04x}, qemu {:#04x}",
            actual[at], expected[at]
        );
    }
}

fn convert(dir: &Path, options: &[&str], out: &str) {
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend(options);
    args.extend(["disk.raw", out]);
    qemu_img(dir, &args);
}

fn qcow2_of(dir: &Path, options: &[&str]) {
    convert(dir, options, "disk.qcow2");
    assert_reads_like_qemu(dir, "disk.qcow2");
}

#[test]
fn version_2_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-o", "compat=0.10"]);
    let disk = Qcow2::open(
        Arc::new(std::fs::File::open(dir.path().join("disk.qcow2")).unwrap()),
        &|_| unreachable!(),
    )
    .unwrap();
    assert_eq!(disk.version(), 2);
}

#[test]
fn version_3_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &[]);
}

#[test]
fn deflate_compressed_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-c"]);
}

#[test]
fn zstd_compressed_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-c", "-o", "compression_type=zstd"]);
}

#[test]
fn extended_l2_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-o", "extended_l2=on,cluster_size=128k"]);
}

#[test]
fn compressed_extended_l2_images_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-c", "-o", "extended_l2=on,cluster_size=32k"]);
}

#[test]
fn images_with_4k_clusters_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-c", "-o", "cluster_size=4k"]);
    qcow2_of(dir.path(), &["-o", "cluster_size=4k"]);
}

#[test]
fn images_with_2m_clusters_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-o", "cluster_size=2M"]);
    qcow2_of(
        dir.path(),
        &["-c", "-o", "cluster_size=2M,compression_type=zstd"],
    );
}

#[test]
fn images_with_512_byte_clusters_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    qcow2_of(dir.path(), &["-c", "-o", "cluster_size=512"]);
}

/// An overlay with data, zero clusters (`write -z`) and unallocated clusters over `base`.
fn overlay(dir: &Path, base: &str, base_format: &str, options: &[&str], name: &str) {
    let mut args = vec!["create", "-f", "qcow2", "-b", base, "-F", base_format];
    args.extend(options);
    args.push(name);
    qemu_img(dir, &args);
    qemu_io(
        dir,
        name,
        &[
            "write -P 0xab 1M 64k",
            "write -z 3M 128k",
            "write -P 0x17 4000 5000",
        ],
    );
}

#[test]
fn overlays_read_data_zero_clusters_and_the_backing_file_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &[], "base.qcow2");
    overlay(d, "base.qcow2", "qcow2", &[], "overlay.qcow2");
    assert_reads_like_qemu(d, "overlay.qcow2");
    let disk = image::open_path(&d.join("overlay.qcow2")).unwrap();
    let mut zeros = vec![1u8; 128 << 10];
    disk.read_at(3 << 20, &mut zeros).unwrap();
    assert!(zeros.iter().all(|&b| b == 0));
}

#[test]
fn overlays_over_compressed_bases_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &["-c", "-o", "compression_type=zstd"], "zstd.qcow2");
    overlay(d, "zstd.qcow2", "qcow2", &[], "over-zstd.qcow2");
    assert_reads_like_qemu(d, "over-zstd.qcow2");
    convert(d, &["-c", "-o", "compat=0.10"], "v2-deflate.qcow2");
    overlay(
        d,
        "v2-deflate.qcow2",
        "qcow2",
        &["-o", "cluster_size=16k"],
        "over-v2.qcow2",
    );
    assert_reads_like_qemu(d, "over-v2.qcow2");
}

#[test]
fn extended_l2_overlays_with_subcluster_writes_over_a_deflate_base_read_like_qemu() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &["-c"], "deflate.qcow2");
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "deflate.qcow2",
            "-F",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            "extl2.qcow2",
        ],
    );
    qemu_io(
        d,
        "extl2.qcow2",
        &[
            "write -P 0xcd 512 512",
            "write -P 0xce 2560 512",
            "write -P 0xef 70k 4k",
            "write -z 200k 8k",
            "write -z 1M 64k",
            "write -P 0x99 2M 96k",
            "write -z 3000k 2k",
        ],
    );
    assert_reads_like_qemu(d, "extl2.qcow2");
}

#[test]
fn a_backing_file_shorter_than_the_overlay_reads_as_zeros_past_its_end() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &[], "base.qcow2");
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "long.qcow2",
            "7M",
        ],
    );
    qemu_io(
        d,
        "long.qcow2",
        &["write -P 0x61 5M 64k", "write -P 0x62 4M 4k"],
    );
    assert_reads_like_qemu(d, "long.qcow2");
    // A raw backing file too.
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "disk.raw",
            "-F",
            "raw",
            "long-raw.qcow2",
            "6M",
        ],
    );
    qemu_io(d, "long-raw.qcow2", &["write -P 0x63 100k 1k"]);
    assert_reads_like_qemu(d, "long-raw.qcow2");
    let disk = image::open_path(&d.join("long.qcow2")).unwrap();
    let mut tail = vec![1u8; 4096];
    disk.read_at((6 << 20) + 100, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}

#[test]
fn backing_chains_across_directories_resolve_each_name_from_its_own_image() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    std::fs::create_dir_all(d.join("a")).unwrap();
    std::fs::create_dir_all(d.join("b")).unwrap();
    convert(d, &["-c"], "b/base.qcow2");
    qemu_img(
        &d.join("a"),
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "../b/base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    qemu_io(&d.join("a"), "mid.qcow2", &["write -P 0x31 64k 64k"]);
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "a/mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    // Without the backing format extension (renamed to an unknown one, which both readers
    // skip) the format of the backing file is probed, as QEMU does.
    forget_backing_format(&d.join("top.qcow2"));
    qemu_io(d, "top.qcow2", &["write -P 0x32 96k 64k"]);
    assert_reads_like_qemu(d, "top.qcow2");
}

#[test]
fn detect_tells_qcow2_from_raw() {
    let (dir, raw) = temp_dir_with_disk();
    convert(dir.path(), &[], "disk.qcow2");
    let file = |p: &Path| std::fs::File::open(p).unwrap();
    assert_eq!(image::detect(&file(&raw)), Format::Raw);
    assert_eq!(
        image::detect(&file(&dir.path().join("disk.qcow2"))),
        Format::Qcow2
    );
    std::fs::write(dir.path().join("tiny"), b"QF").unwrap();
    assert_eq!(image::detect(&file(&dir.path().join("tiny"))), Format::Raw);
}

#[test]
fn a_raw_image_is_its_own_virtual_disk() {
    let (_dir, raw) = temp_dir_with_disk();
    let disk = image::open_path(&raw).unwrap();
    assert_eq!(read_whole(&*disk), std::fs::read(&raw).unwrap());
}

#[test]
fn open_source_reads_an_image_from_any_byte_source() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &["-c"], "base.qcow2");
    overlay(d, "base.qcow2", "qcow2", &[], "overlay.qcow2");
    let open = |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        Ok(Arc::new(std::fs::File::open(d.join(name)).unwrap()))
    };
    let disk = image::open_source(open("overlay.qcow2").unwrap(), &open).unwrap();
    let by_path = image::open_path(&d.join("overlay.qcow2")).unwrap();
    assert_eq!(read_whole(&*disk), read_whole(&*by_path));
    // A resolver may refuse backing files altogether.
    let refuse = |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        Err(Qcow2Error::Backing(format!(
            "a published image has a backing file ({name})"
        )))
    };
    let Err(e) = image::open_source(open("overlay.qcow2").unwrap(), &refuse) else {
        panic!("opened an image whose backing file was refused");
    };
    assert_eq!(
        e.to_string(),
        "a published image has a backing file (base.qcow2)"
    );
}

fn open_err(path: &Path) -> String {
    match image::open_path(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Reads the whole disk, which must fail; returns the error.
fn read_err(path: &Path) -> String {
    let disk = image::open_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; disk.size() as usize];
    match disk.read_at(0, &mut buf) {
        Ok(()) => panic!("{} read", path.display()),
        Err(e) => e.to_string(),
    }
}

fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut image = std::fs::read(path).unwrap();
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, image).unwrap();
}

fn forget_backing_format(path: &Path) {
    let image = std::fs::read(path).unwrap();
    let at = image[..4096]
        .windows(4)
        .position(|w| w == 0xe279_2acau32.to_be_bytes())
        .expect("a backing format extension");
    patch(path, at, &0x0bad_f00du32.to_be_bytes());
}

fn header_u64(path: &Path, offset: usize) -> u64 {
    let image = std::fs::read(path).unwrap();
    u64::from_be_bytes(image[offset..offset + 8].try_into().unwrap())
}

#[test]
fn a_missing_image_is_an_error_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.qcow2");
    let Err(e) = image::open_path(&path) else {
        panic!("opened a missing image");
    };
    assert!(matches!(e, ImageError::Open { .. }));
    assert!(e.to_string().contains("nope.qcow2"), "{e}");
}

#[test]
fn a_truncated_image_is_an_error_wherever_it_is_cut() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &["-c"], "disk.qcow2");
    let whole = std::fs::read(d.join("disk.qcow2")).unwrap();
    let path = d.join("cut.qcow2");
    for len in [
        0,
        3,
        50,
        100,
        0x10000,
        0x30000 + 8,
        whole.len() / 2,
        whole.len() - 1000,
    ] {
        std::fs::write(&path, &whole[..len]).unwrap();
        let e = match image::open_path(&path) {
            Err(e) => e.to_string(),
            Ok(disk) if len < 4 => {
                // Too short to be anything but raw.
                assert_eq!(disk.size(), len as u64);
                continue;
            }
            Ok(_) => read_err(&path),
        };
        assert!(
            e.contains("past the end") || e.contains("does not decompress"),
            "cut at {len}: {e}"
        );
        assert!(
            e.contains("cut.qcow2") || len > 0x10000,
            "cut at {len}: {e}"
        );
    }
}

#[test]
fn an_encrypted_image_is_refused() {
    // The crypt_method field set on a plain image: creating a real LUKS image makes qemu-img
    // benchmark PBKDF2, which fails on a busy machine ("Unable to get accurate CPU usage").
    let (dir, _) = temp_dir_with_disk();
    convert(dir.path(), &[], "enc.qcow2");
    for (method, name) in [(1u32, "AES"), (2, "LUKS")] {
        let path = dir.path().join("enc.qcow2");
        patch(&path, 32, &method.to_be_bytes());
        let e = open_err(&path);
        assert!(
            e.ends_with(&format!(
                "enc.qcow2: the image is encrypted (crypt_method {method}: {name}), which is not \
                 supported"
            )),
            "{e}"
        );
    }
}

#[test]
fn an_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    qemu_img(
        dir.path(),
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "ext.qcow2",
            "1M",
        ],
    );
    let e = open_err(&dir.path().join("ext.qcow2"));
    assert!(e.contains("external data file"), "{e}");
}

#[test]
fn an_unknown_incompatible_feature_bit_is_refused() {
    let (dir, _) = temp_dir_with_disk();
    convert(dir.path(), &[], "disk.qcow2");
    let path = dir.path().join("disk.qcow2");
    let incompatible = header_u64(&path, 72) | 1 << 9;
    patch(&path, 72, &incompatible.to_be_bytes());
    let e = open_err(&path);
    assert!(
        e.ends_with("the image uses incompatible features this reader does not know: bit 9"),
        "{e}"
    );
}

#[test]
fn the_corrupt_bit_is_refused_and_the_dirty_bit_accepted() {
    let (dir, _) = temp_dir_with_disk();
    convert(dir.path(), &[], "disk.qcow2");
    let path = dir.path().join("disk.qcow2");
    patch(&path, 72, &1u64.to_be_bytes());
    image::open_path(&path).unwrap();
    patch(&path, 72, &3u64.to_be_bytes());
    assert!(open_err(&path).contains("marked corrupt"));
}

#[test]
fn an_l2_table_offset_past_the_end_of_the_file_is_an_error_when_read() {
    let (dir, _) = temp_dir_with_disk();
    convert(dir.path(), &[], "disk.qcow2");
    let path = dir.path().join("disk.qcow2");
    let l1 = header_u64(&path, 40) as usize;
    patch(&path, l1, &(0x8000_0000u64 | 1 << 63).to_be_bytes());
    let e = read_err(&path);
    assert!(
        e.starts_with(
            "the L2 table for guest cluster 0 (L1 entry 0) at 0x80000000 (65536 bytes) extends \
             past the end of the"
        ),
        "{e}"
    );
}

#[test]
fn an_absurd_l1_size_is_an_error() {
    let (dir, _) = temp_dir_with_disk();
    convert(dir.path(), &[], "disk.qcow2");
    let path = dir.path().join("disk.qcow2");
    patch(&path, 36, &u32::MAX.to_be_bytes());
    let e = open_err(&path);
    assert!(
        e.contains("the L1 table (4294967295 entries)") && e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn an_image_that_is_its_own_backing_file_is_a_loop() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &[], "base.qcow2");
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "loop.qcow2",
        ],
    );
    qemu_img(
        d,
        &[
            "rebase",
            "-u",
            "-b",
            "loop.qcow2",
            "-F",
            "qcow2",
            "loop.qcow2",
        ],
    );
    let e = open_err(&d.join("loop.qcow2"));
    assert!(e.contains("backing chain loop"), "{e}");
}

#[test]
fn a_missing_backing_file_is_an_error_naming_it() {
    let (dir, _) = temp_dir_with_disk();
    let d = dir.path();
    convert(d, &[], "base.qcow2");
    overlay(d, "base.qcow2", "qcow2", &[], "overlay.qcow2");
    std::fs::remove_file(d.join("base.qcow2")).unwrap();
    let e = open_err(&d.join("overlay.qcow2"));
    assert!(
        e.contains("cannot open backing file") && e.contains("base.qcow2"),
        "{e}"
    );
}
