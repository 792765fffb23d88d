//! qcow2 writing: ccb's writer against `qemu-img convert -c` (as the disk action called it,
//! `-W -m 8`), side by side on the same raw disk, each timed and sized, and the two images
//! compared with `qemu-img compare`.
//!
//! The raw disk is `CCB_BENCH_RAW` (benches/disk.sh passes the CC-Debian12 disk it built); the
//! outputs go next to it and are removed. Run: `CCB_BENCH_RAW=disk.raw cargo bench --bench qcow2`;
//! with `CCB_BENCH_ONLY_CCB=1`, only ccb's writer (without and with the raw disk's digest).

// A benchmark program: its report is what it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ccb::qcow2::{Compression, convert_raw};

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
}

fn main() {
    let Some(raw) = std::env::var_os("CCB_BENCH_RAW").map(PathBuf::from) else {
        eprintln!("set CCB_BENCH_RAW to a raw disk image (benches/disk.sh does)");
        std::process::exit(2);
    };
    let dir = raw.parent().unwrap_or(Path::new(".")).to_path_buf();
    let ours = dir.join("bench-ccb.qcow2");
    let theirs = dir.join("bench-qemu.qcow2");
    // Warm the page cache so both read the raw disk from memory.
    let _ = Command::new("cat")
        .arg(&raw)
        .stdout(std::process::Stdio::null())
        .status();

    let t = Instant::now();
    let stats = convert_raw(&raw, &ours, Compression::Zlib, None).expect("ccb's qcow2 writer");
    let ccb_s = t.elapsed().as_secs_f64();

    if std::env::var_os("CCB_BENCH_ONLY_CCB").is_some() {
        // ccb's writer alone, also with the raw disk's SHA-256 as the disk action asks for it.
        let t = Instant::now();
        let (_, _digest) =
            ccb::qcow2::convert_raw_with_digest(&raw, &ours, Compression::Zlib, None)
                .expect("ccb's qcow2 writer");
        println!(
            "ccb writer ({} threads): {ccb_s:.1} s; with the raw disk's SHA-256: {:.1} s",
            rayon::current_num_threads(),
            t.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_file(&ours);
        return;
    }

    let t = Instant::now();
    let status = Command::new("qemu-img")
        .args(["convert", "-W", "-m", "8", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&theirs)
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img convert failed");
    // qemu-img does not sync; ccb does (its output is renamed into place): sync for fairness.
    let _ = std::fs::File::open(&theirs).and_then(|f| f.sync_all());
    let qemu_s = t.elapsed().as_secs_f64();
    let qemu_size = std::fs::metadata(&theirs).expect("stat").len();

    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&ours)
        .arg(&theirs)
        .status()
        .expect("run qemu-img compare")
        .success();
    let threads = rayon::current_num_threads();
    println!("raw disk: {} ({})", raw.display(), mib(stats.virtual_size));
    println!(
        "ccb writer ({threads} threads, libdeflate {}): {ccb_s:6.1} s  {}  ({} data clusters, {} compressed)",
        ccb::qcow2::LEVEL,
        mib(stats.file_size),
        stats.data_clusters,
        stats.compressed_clusters
    );
    println!(
        "qemu-img convert -c -W -m 8:        {qemu_s:6.1} s  {}",
        mib(qemu_size)
    );
    println!(
        "speed-up {:.1}x, size {:+.2} %, same virtual disk: {}",
        qemu_s / ccb_s,
        (stats.file_size as f64 / qemu_size as f64 - 1.0) * 100.0,
        if same { "yes" } else { "NO" }
    );
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
    if !same {
        std::process::exit(1);
    }
}
