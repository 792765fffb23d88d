//! Builds ccb-canon (src/action/canon.c says why it is C without a C library): a static
//! x86-64 program that ccb writes into a host-tools step's engine directory.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/action/canon.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let program = out.join("ccb-canon");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        // Elsewhere there is none: the image's readlink and realpath stay.
        std::fs::write(&program, b"").expect("write an empty ccb-canon");
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args([
            "-O2",
            "-static",
            "-nostdlib",
            "-fno-pie",
            "-no-pie",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-ffreestanding",
            "-Wall",
            "-Werror",
            "-o",
        ])
        .arg(&program)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("run {cc} to build {source}: {e}"));
    assert!(status.success(), "{cc} could not build {source}");
}
