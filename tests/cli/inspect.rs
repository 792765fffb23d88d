//! `ccb inspect`: generated GPT disks with an ext4 root (made without root or mounts), as raw
//! and qcow2, checked locally, through a site, and over HTTP range requests from a public
//! Swift container.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Env, Run, write};

/// A project whose inspect.ncl asks for two executables and the dpkg comparison.
pub(crate) fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(d.path().join("manifests/images.ncl"), "{}\n");
    write(
        d.path().join("manifests/inspect.ncl"),
        r#"{
  executables = {
    "usr/bin" = ["cloud-init"],
    "usr/local/bin" = ["cc-read-vendordata"],
  },
  compare_dpkg_manifest = true,
}
"#,
    );
    d
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const STATUS: &str = "Package: cloud-init\nStatus: install ok installed\nArchitecture: all\nVersion: 22.4.2-1\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n";

/// `<dir>/<name>.raw`: GPT (BIOS boot, ESP, root) whose ext4 root holds `tree`, with the dpkg
/// manifest of the "build" beside it as `ccb build --out` lays it out.
pub(crate) fn disk(dir: &Path, name: &str, cloud_init_mode: u32, manifest_libc: &str) -> PathBuf {
    disk_with(dir, name, cloud_init_mode, manifest_libc, &[])
}

/// [`disk`] with more files in its root: `(path, content)`.
pub(crate) fn disk_with(
    dir: &Path,
    name: &str,
    cloud_init_mode: u32,
    manifest_libc: &str,
    extra: &[(&str, Vec<u8>)],
) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["usr/bin", "usr/local/bin", "usr/lib", "etc", "var/lib/dpkg"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    write(
        root.join("usr/lib/os-release"),
        "ID=debian\nVERSION_ID=\"12\"\n",
    );
    std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    write(root.join("usr/bin/cloud-init"), "#!/bin/sh\n");
    run(Command::new("chmod")
        .arg(format!("{cloud_init_mode:o}"))
        .arg(root.join("usr/bin/cloud-init")));
    write(root.join("usr/local/bin/cc-read-vendordata"), "#!/bin/sh\n");
    run(Command::new("chmod")
        .arg("0755")
        .arg(root.join("usr/local/bin/cc-read-vendordata")));
    write(root.join("var/lib/dpkg/status"), STATUS);
    for (path, content) in extra {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    let raw = dir.join(format!("{name}.raw"));
    let _ = std::fs::remove_file(&raw);
    run(Command::new("truncate").args(["-s", "96M"]).arg(&raw));
    run(Command::new("sgdisk")
        .args(["-n", "14:2048:+8M", "-t", "14:EF02"])
        .args(["-n", "15:0:+16M", "-t", "15:EF00"])
        .args([
            "-n",
            "1:0:0",
            "-t",
            "1:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        ])
        .arg(&raw)
        .stdout(std::process::Stdio::null()));
    // The root's place, from the table just written.
    let info = Command::new("sgdisk")
        .args(["-i", "1"])
        .arg(&raw)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    let field = |label: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, last) = (field("First sector"), field("Last sector"));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg("-E")
        .arg(format!("offset={}", first * 512))
        .arg(&raw)
        .arg(format!("{}k", (last - first + 1) >> 1)));
    let manifest = format!(
        r#"{{"packages": [
  {{"package": "cloud-init", "arch": "all", "version": "22.4.2-1", "status": "ii "}},
  {{"package": "libc6", "arch": "amd64", "version": "{manifest_libc}", "status": "ii "}}
]}}"#
    );
    write(
        dir.join(format!("{name}.d/dib-manifests/dib-manifest-dpkg-{name}")),
        &manifest,
    );
    raw
}

fn ccb(env: &Env, project: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--root", project.to_str().unwrap()];
    all.extend_from_slice(args);
    env.run(&all)
}

#[test]
fn local_images_pass_or_fail_with_a_line_per_check() {
    let env = Env::new();
    let p = project();
    let raw = disk(p.path(), "CC-Test", 0o755, "2.36-9");
    let qcow = p.path().join("CC-Test.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    for image in [&raw, &qcow] {
        let out = ccb(
            &env,
            p.path(),
            &["inspect", image.to_str().unwrap(), "--format", "json"],
        )
        .ok()
        .json();
        assert_eq!(out["passed"], true, "{out}");
        let checks: Vec<String> = out["images"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            checks.contains(&"exec:usr/bin/cloud-init".to_string()),
            "{checks:?}"
        );
        assert!(
            out["images"][0]["root"].as_str().unwrap().contains("ext4"),
            "{out}"
        );
    }

    // ls and cat read inside the image, symlinks included.
    let ls = ccb(
        &env,
        p.path(),
        &["inspect", "ls", qcow.to_str().unwrap(), "/usr/bin"],
    )
    .ok();
    assert!(ls.stdout.contains("cloud-init"), "{}", ls.stdout);
    let cat = ccb(
        &env,
        p.path(),
        &["inspect", "cat", qcow.to_str().unwrap(), "/etc/os-release"],
    )
    .ok();
    assert_eq!(cat.stdout, "ID=debian\nVERSION_ID=\"12\"\n");

    // A non-executable required file: exit 1, the check names the mode.
    let bad = disk(p.path(), "CC-Bad", 0o644, "2.36-9");
    let run = ccb(&env, p.path(), &["inspect", bad.to_str().unwrap()]).fails();
    assert!(
        run.stdout.contains("FAIL exec:usr/bin/cloud-init"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("not executable (mode 0644)"),
        "{}",
        run.stdout
    );

    // The build's manifest says another libc6 than the image has: the package check fails.
    let drift = disk(p.path(), "CC-Drift", 0o755, "2.36-10");
    let run = ccb(&env, p.path(), &["inspect", drift.to_str().unwrap()]).fails();
    assert!(
        run.stdout
            .contains("version mismatch: libc6:amd64 2.36-10 != 2.36-9"),
        "{}",
        run.stdout
    );

    // Untrusted input: a truncated image is a clear error, not a panic.
    let cut = p.path().join("cut.qcow2");
    let bytes = std::fs::read(&qcow).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let r = ccb(&env, p.path(), &["inspect", cut.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// `find . | cpio -o -H newc` of `files` (`(path, content)`), as mkinitramfs packs them.
fn cpio(dir: &Path, files: &[(&str, &[u8])]) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(dir);
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio --quiet -o -H newc")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_initramfs_of_each_kernel_must_hold_the_storage_drivers_of_inspect_ncl() {
    let env = Env::new();
    let p = project();
    write(
        p.path().join("manifests/inspect.ncl"),
        r#"{
  executables = { "usr/bin" = ["cloud-init"] },
  compare_dpkg_manifest = false,
  initramfs = { modules = ["nvme", "ahci", "virtio-blk"], root_filesystem = true },
}
"#,
    );
    const V: &str = "6.1.0-99-amd64";
    // Debian's layout: an uncompressed early-microcode cpio, then the zstd main archive.
    let initrd = |modules: &[&str]| -> Vec<u8> {
        let mut image = cpio(
            &p.path().join("ucode"),
            &[("kernel/x86/microcode/GenuineIntel.bin", b"ucode")],
        );
        let files: Vec<(String, &[u8])> = modules
            .iter()
            .map(|m| (format!("usr/lib/modules/{V}/kernel/{m}"), b"ELF" as &[u8]))
            .chain([("init".to_string(), b"#!/bin/sh\n" as &[u8])])
            .collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        let main = cpio(&p.path().join("main"), &refs);
        let zst = Command::new("sh")
            .arg("-c")
            .arg("zstd -q -c")
            .stdin(
                std::fs::File::open({
                    let f = p.path().join("main.cpio");
                    std::fs::write(&f, &main).unwrap();
                    f
                })
                .unwrap(),
            )
            .output()
            .unwrap();
        assert!(zst.status.success());
        image.extend(zst.stdout);
        image
    };
    // virtio_blk is built into this kernel; an initramfs of the build VM's drivers only (as
    // dracut's hostonly mode makes) lacks nvme and the root's ext4.
    let boot = |initrd: Vec<u8>| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("boot/vmlinuz-6.1.0-99-amd64", b"kernel".to_vec()),
            ("boot/initrd.img-6.1.0-99-amd64", initrd),
            (
                "usr/lib/modules/6.1.0-99-amd64/modules.builtin",
                b"kernel/drivers/block/virtio_blk.ko\nkernel/lib/crc32.ko\n".to_vec(),
            ),
        ]
    };
    let hostonly = disk_with(
        p.path(),
        "CC-Hostonly",
        0o755,
        "2.36-9",
        &boot(initrd(&["drivers/ata/ahci.ko.zst"])),
    );
    let run = ccb(&env, p.path(), &["inspect", hostonly.to_str().unwrap()]).fails();
    for line in [
        format!("FAIL initramfs:{V}:nvme "),
        format!("FAIL initramfs:{V}:ext4 "),
        format!("ok   initramfs:{V}:ahci "),
        format!("ok   initramfs:{V}:virtio-blk "),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in\n{}", run.stdout);
    }
    assert!(
        run.stdout.contains("built into the kernel"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("cpio + zstd cpio"), "{}", run.stdout);
    let json = ccb(
        &env,
        p.path(),
        &["inspect", hostonly.to_str().unwrap(), "--format", "json"],
    )
    .fails()
    .json();
    let failed: Vec<&str> = json["images"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        failed,
        [format!("initramfs:{V}:nvme"), format!("initramfs:{V}:ext4")]
    );

    // A generic initramfs passes.
    let generic = disk_with(
        p.path(),
        "CC-Generic",
        0o755,
        "2.36-9",
        &boot(initrd(&[
            "drivers/ata/ahci.ko.zst",
            "drivers/nvme/host/nvme.ko.xz",
            "fs/ext4/ext4.ko",
        ])),
    );
    let run = ccb(&env, p.path(), &["inspect", generic.to_str().unwrap()]).ok();
    assert!(
        run.stdout.contains("PASS: 6 checks, 0 failed"),
        "{}",
        run.stdout
    );

    // A kernel without an initramfs, and a corrupt one, are named.
    let mut cut = initrd(&["fs/ext4/ext4.ko"]);
    cut.truncate(cut.len() - 20);
    let corrupt = disk_with(p.path(), "CC-Corrupt", 0o755, "2.36-9", &boot(cut));
    let run = ccb(&env, p.path(), &["inspect", corrupt.to_str().unwrap()]).fails();
    assert!(
        run.stdout.contains(&format!("FAIL initramfs:{V} ")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("zstd data is corrupt or truncated"),
        "{}",
        run.stdout
    );
}
