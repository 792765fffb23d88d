//! ccb's qcow2 writer against QEMU: every image it writes must pass `qemu-img check`, and read
//! back byte for byte as the raw disk it came from, both through `qemu-img convert -O raw` and
//! through ccb's own reader.

use std::path::Path;
use std::process::Command;

use ccb::inspect::ReadAt;
use ccb::inspect::image;
use ccb::qcow2::{Compression, Qcow2WriteError, Stats, convert_raw, convert_raw_with_digest};
use proptest::prelude::*;

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-img (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The virtual disk of `qcow2` as QEMU reads it (converted to raw in `dir`).
fn qemu_img_to_raw(qcow2: &Path, dir: &Path) -> Vec<u8> {
    let back = dir.join("back.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        qcow2.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    std::fs::read(&back).unwrap()
}

/// A piece of a raw disk.
#[derive(Debug, Clone)]
enum Run {
    /// Bytes no compressor can shrink.
    Random(usize, u64),
    /// Text, as package databases and configuration are.
    Text(usize),
    /// Zeros written as data (the writer must find them and leave the clusters unallocated).
    Zeros(usize),
    /// Never written: a hole in the file.
    Hole(usize),
}

fn random_bytes(len: usize, mut state: u64) -> Vec<u8> {
    state |= 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes the runs one after another, the file rounded up to whole sectors.
fn write_raw(path: &Path, runs: &[Run]) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    let mut at = 0u64;
    for r in runs {
        let len = match r {
            Run::Random(len, seed) => {
                std::os::unix::fs::FileExt::write_all_at(&f, &random_bytes(*len, *seed), at)
                    .unwrap();
                *len
            }
            Run::Text(len) => {
                let text = b"Package: cloud-init\nStatus: install ok installed\nVersion: 24.1\n";
                let bytes: Vec<u8> = text.iter().cycle().take(*len).copied().collect();
                std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at).unwrap();
                *len
            }
            Run::Zeros(len) => {
                std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; *len], at).unwrap();
                *len
            }
            Run::Hole(len) => *len,
        };
        at += len as u64;
    }
    f.set_len(at.next_multiple_of(512)).unwrap();
    drop(f);
    std::fs::read(path).unwrap()
}

/// Converts `raw` and checks the result as QEMU and ccb read it, and the raw disk's SHA-256
/// the conversion computed on the way (holes hash as the zeros they read as).
fn convert_and_check(dir: &Path, raw: &Path, expected: &[u8], compression: Compression) -> Stats {
    let qcow2 = dir.join("disk.qcow2");
    let (stats, digest) = convert_raw_with_digest(raw, &qcow2, compression, None).unwrap();
    assert_eq!(
        digest,
        ccb::fetch::hash::sha256_bytes(expected),
        "the raw disk's SHA-256"
    );
    assert_eq!(stats.virtual_size, expected.len() as u64);
    assert_eq!(
        stats.file_size,
        std::fs::metadata(&qcow2).unwrap().len(),
        "the stats name the file's size"
    );

    let check = qemu_img(&["check", "-f", "qcow2", qcow2.to_str().unwrap()]);
    assert!(
        check.contains("No errors were found"),
        "qemu-img check: {check}"
    );
    let info = qemu_img(&["info", "-f", "qcow2", qcow2.to_str().unwrap()]);
    assert!(info.contains("compat: 1.1"), "a version 3 image: {info}");
    assert!(info.contains("compression type: zlib"), "{info}");

    assert_same(
        "qemu-img convert -O raw",
        &qemu_img_to_raw(&qcow2, dir),
        expected,
    );

    let disk = image::open_path(&qcow2).unwrap();
    let mut by_ccb = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut by_ccb).unwrap();
    assert_same("ccb's qcow2 reader", &by_ccb, expected);
    stats
}

fn assert_same(reader: &str, actual: &[u8], expected: &[u8]) {
    assert_eq!(actual.len(), expected.len(), "{reader}: virtual size");
    if let Some(at) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        panic!(
            "{reader}: first difference at byte {at} (0x{at:x}): {:#04x}, the raw disk {:#04x}",
            actual[at], expected[at]
        );
    }
}

fn arb_run() -> impl Strategy<Value = Run> {
    // Lengths that start and end off cluster (64 KiB) and sector boundaries.
    let len = 1usize..300_000;
    prop_oneof![
        (len.clone(), any::<u64>()).prop_map(|(l, s)| Run::Random(l, s)),
        len.clone().prop_map(Run::Text),
        len.clone().prop_map(Run::Zeros),
        len.prop_map(Run::Hole),
    ]
}

proptest! {
    // Each case runs qemu-img three times: a few cases cover the combinations.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_sparse_disks_read_back_identical_through_qemu_and_ccb(
        runs in proptest::collection::vec(arb_run(), 1..24),
        compress in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let expected = write_raw(&raw, &runs);
        let compression = if compress { Compression::Zlib } else { Compression::None };
        let stats = convert_and_check(dir.path(), &raw, &expected, compression);
        let nonzero = expected
            .chunks(65536)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count() as u64;
        prop_assert_eq!(stats.data_clusters, nonzero, "only clusters with data are allocated");
        if !compress {
            prop_assert_eq!(stats.compressed_clusters, 0);
        }
    }
}

#[test]
fn disks_larger_than_one_l2_table_keep_data_at_both_ends() {
    // One L2 table maps 512 MiB: data on either side of that boundary and at the very end.
    // The disk is mostly holes; it is compared without reading 1.1 GiB into memory.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    let size: u64 = (1 << 30) + (100 << 20);
    f.set_len(size).unwrap();
    let pieces: [(u64, Vec<u8>); 3] = [
        (0, b"start of the disk ".repeat(5000)),
        ((512 << 20) - 1000, random_bytes(70_000, 7)),
        (size - 5000, b"end".repeat(1666)),
    ];
    for (at, bytes) in &pieces {
        std::os::unix::fs::FileExt::write_all_at(&f, bytes, *at).unwrap();
    }
    drop(f);
    let qcow2 = dir.path().join("disk.qcow2");
    let (stats, digest) = convert_raw_with_digest(&raw, &qcow2, Compression::Zlib, None).unwrap();
    // Batches that are holes through and through hash as zeros too.
    assert_eq!(
        digest,
        ccb::fetch::hash::sha256_file(&raw).unwrap(),
        "the raw disk's SHA-256"
    );
    assert_eq!(stats.data_clusters, 2 + 3 + 1);
    assert!(stats.compressed_clusters >= 3, "{stats:?}");
    let check = qemu_img(&["check", "-f", "qcow2", qcow2.to_str().unwrap()]);
    assert!(
        check.contains("No errors were found"),
        "qemu-img check: {check}"
    );
    qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let disk = image::open_path(&qcow2).unwrap();
    assert_eq!(disk.size(), size);
    for (at, bytes) in &pieces {
        let start = at.saturating_sub(70_000);
        let end = (at + bytes.len() as u64 + 70_000).min(size);
        let mut expected = vec![0u8; (end - start) as usize];
        expected[(at - start) as usize..][..bytes.len()].copy_from_slice(bytes);
        let mut actual = vec![0u8; expected.len()];
        disk.read_at(start, &mut actual).unwrap();
        assert_same(
            &format!("ccb's qcow2 reader at {start}"),
            &actual,
            &expected,
        );
    }
}

#[test]
fn zero_clusters_are_left_unallocated() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = write_raw(
        &raw,
        &[Run::Zeros(8 << 20), Run::Text(10), Run::Zeros(1 << 20)],
    );
    let stats = convert_and_check(dir.path(), &raw, &expected, Compression::Zlib);
    assert_eq!(stats.data_clusters, 1);
    let map = qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        dir.path().join("disk.qcow2").to_str().unwrap(),
    ]);
    assert_eq!(
        map.matches("\"data\": true").count(),
        1,
        "one allocated extent: {map}"
    );
}

#[test]
fn incompressible_clusters_are_stored_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = write_raw(&raw, &[Run::Random(3 << 16, 1), Run::Text(1 << 16)]);
    let stats = convert_and_check(dir.path(), &raw, &expected, Compression::Zlib);
    assert_eq!(stats.data_clusters, 4);
    assert_eq!(stats.compressed_clusters, 1, "only the text shrinks");
}

#[test]
fn the_output_is_no_larger_than_qemu_img_c() {
    // A disk of mixed content, as a root filesystem is.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let mut runs = Vec::new();
    for i in 0..40u64 {
        runs.push(Run::Text(50_000 + (i as usize * 7919) % 90_000));
        runs.push(Run::Random(((i * 104_729) % 60_000) as usize, i));
        runs.push(Run::Hole(((i * 3571) % 200_000) as usize));
    }
    let expected = write_raw(&raw, &runs);
    let ours = convert_and_check(dir.path(), &raw, &expected, Compression::Zlib);
    let theirs = dir.path().join("qemu.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        theirs.to_str().unwrap(),
    ]);
    let theirs = std::fs::metadata(&theirs).unwrap().len();
    assert!(
        ours.file_size <= theirs,
        "ccb wrote {} bytes, qemu-img -c {theirs}",
        ours.file_size
    );
}

#[test]
fn an_empty_disk_is_a_valid_image() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = write_raw(&raw, &[]);
    let stats = convert_and_check(dir.path(), &raw, &expected, Compression::Zlib);
    assert_eq!(stats.data_clusters, 0);
}

#[test]
fn a_disk_of_partial_sectors_is_refused_and_the_destination_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, vec![1u8; 1000]).unwrap();
    let dst = dir.path().join("disk.qcow2");
    std::fs::write(&dst, b"the previous image").unwrap();
    let err = convert_raw(&raw, &dst, Compression::Zlib, None).unwrap_err();
    assert!(
        matches!(err, Qcow2WriteError::NotSectors { size: 1000, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("disk.raw"),
        "names the file: {err}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), b"the previous image");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");
}

#[test]
fn a_new_image_replaces_the_old_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let expected = write_raw(&raw, &[Run::Text(200_000)]);
    std::fs::write(dir.path().join("disk.qcow2"), vec![0xffu8; 10 << 20]).unwrap();
    convert_and_check(dir.path(), &raw, &expected, Compression::Zlib);
}

#[test]
fn a_head_start_taken_while_the_disk_was_written_gives_the_same_image_byte_for_byte() {
    use ccb::qcow2::Ahead;
    use std::os::unix::fs::FileExt;
    const C: usize = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    // A writer at work on a partition that starts mid-cluster, past the conversion's first
    // batch, in a disk whose end is not on a cluster boundary either: 48 clusters of it
    // written, the rest a hole still.
    let part = 300 * C + 4096;
    write_raw(
        &raw,
        &[
            Run::Hole(part),
            Run::Text(40 * C),
            Run::Random(8 * C, 7),
            Run::Hole(252 * C + 1536 - 4096),
        ],
    );
    let size = std::fs::metadata(&raw).unwrap().len();
    assert_ne!(size % C as u64, 0);
    let f = std::fs::File::options().write(true).open(&raw).unwrap();

    let ahead = Ahead::start(&raw, part as u64, size, Compression::Zlib).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ahead.compressed() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing compressed ahead in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Then the writer goes on: it rewrites clusters already compressed (as mkfs rewrites its
    // metadata), zeros one, and writes more.
    let at = |cluster: usize| (cluster * C) as u64;
    f.write_all_at(&random_bytes(C, 11), at(303)).unwrap();
    f.write_all_at(b"a byte changed", at(310) + 100).unwrap();
    f.write_all_at(&vec![0; C], at(320)).unwrap();
    f.write_all_at(&random_bytes(30 * C, 3), at(400)).unwrap();
    drop(f);
    let head = ahead.finish();
    assert!(head.len() >= 40, "{} clusters compressed ahead", head.len());

    let expected = std::fs::read(&raw).unwrap();
    let convert = |name: &str, compression, head| {
        let out = dir.path().join(name);
        let (stats, digest) = convert_raw_with_digest(&raw, &out, compression, head).unwrap();
        (std::fs::read(&out).unwrap(), stats, digest)
    };
    let with = convert("with.qcow2", Compression::Zlib, Some(&head));
    let without = convert("without.qcow2", Compression::Zlib, None);
    assert!(with == without, "the same image, head start or not");
    assert_eq!(with.2, ccb::fetch::hash::sha256_bytes(&expected));
    // What the writer changed was compressed again, all the rest taken as it was.
    let stale = head.len() as u64 - head.reused();
    assert!(
        head.reused() >= 37 && stale >= 3,
        "{} reused of {}",
        head.reused(),
        head.len()
    );
    // A head start is for the compression it was made for only.
    let plain = convert("plain.qcow2", Compression::None, Some(&head));
    assert!(plain == convert("plain-alone.qcow2", Compression::None, None));
    let back = qemu_img_to_raw(&dir.path().join("with.qcow2"), dir.path());
    assert_same("qemu-img convert -O raw", &back, &expected);
}
