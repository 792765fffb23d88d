//! arm64 on this (amd64) host: `ccb doctor`, and what a build does when the host can or cannot
//! run arm64 code. A host without emulation is made for real: ccb runs in a private mount
//! namespace where an empty tmpfs hides binfmt_misc, exactly what it sees on a host where
//! binfmt_misc was never mounted.

use std::path::Path;
use std::process::Command;

use crate::common::{Env, Run, os_element, repo, script, write};

/// Runs ccb where binfmt_misc is not mounted (an empty tmpfs over it, in a mount namespace of
/// its own that ends with the command).
fn run_without_binfmt(env: &Env, args: &[&str]) -> Run {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs ccb-test /proc/sys/fs/binfmt_misc && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_ccb"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CCB_CACHE_DIR", env.cache.path())
        .env("NO_COLOR", "1")
        .current_dir("/")
        .output()
        .expect("run unshare");
    Run::from(out)
}

/// A project with one image for both arches whose base is made by a script (no bootstrap):
/// cheap enough to build for real.
fn two_arch_project(dir: &Path) {
    write(
        dir.join("manifests/images.ncl"),
        r#"{
  mini = {
    name = "Mini",
    description = "a base made by a script, for both arches",
    elements = ["fake-os"],
    arch = ['amd64, 'arm64],
    formats = ['qcow2],
    env = { DIB_INIT_SYSTEM = "systemd" },
  },
}
"#,
    );
    os_element(&dir.join("elements"), "fake-os");
    script(
        dir.join("elements/fake-os/root.d/10-fake-root"),
        "#!/bin/bash\nset -eu\nmkdir -p \"$TARGET_ROOT/etc\"\necho \"$ARCH\" > \"$TARGET_ROOT/etc/fake-arch\"\n",
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn without_emulation_every_buildable_arch_builds_and_a_named_foreign_arch_is_refused() {
    assert!(is_root(), "mount namespaces and builds need root");
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    two_arch_project(project.path());
    let root = project.path().to_str().unwrap();
    let elements = repo().join("elements");
    let elements = elements.to_str().unwrap();

    // Doctor says so, and names the fix.
    let doctor = run_without_binfmt(&env, &["doctor", "--format", "json"])
        .ok()
        .json();
    let arm64 = doctor["arches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arch"] == "arm64")
        .unwrap()
        .clone();
    assert_eq!(arm64["mode"], "missing", "{doctor}");
    assert_eq!(arm64["can_build"], false);
    assert!(
        arm64["problems"][0]
            .as_str()
            .unwrap()
            .contains("mount -t binfmt_misc"),
        "{arm64}"
    );
    assert_eq!(doctor["binfmt_misc"]["ok"], false);

    // Asked by name (--arch, or the published arch name): refused before anything runs.
    for args in [
        &[
            "--root",
            root,
            "build",
            "mini",
            "--arch",
            "arm64",
            "--until",
            "base",
            "--element-path",
            elements,
        ][..],
        &[
            "--root",
            root,
            "build",
            "Mini-ARM64",
            "--until",
            "base",
            "--element-path",
            elements,
        ][..],
    ] {
        run_without_binfmt(&env, args)
            .fails()
            .stderr_has("cannot build arm64 root filesystems")
            .stderr_has("binfmt_misc is not mounted");
        assert!(!env.cache.path().join("layers").exists(), "{args:?} built");
    }

    // Not asked by name: amd64 is built, arm64 left out with a warning.
    let run = run_without_binfmt(
        &env,
        &[
            "--root",
            root,
            "build",
            "mini",
            "--until",
            "base",
            "--element-path",
            elements,
            "--format",
            "json",
        ],
    );
    let run = run.ok();
    run.stderr_has("leaving arm64 out");
    let ids: Vec<String> = run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["base:mini:amd64"], "{}", run.stdout);
}

#[test]
fn with_emulation_registered_arm64_is_emulated_with_the_fix_binary_flag() {
    // scripts/test registers it (scripts/host-deps.sh, ensure_arm64_emulation).
    let env = Env::new();
    let doctor = env.run(&["doctor", "--format", "json"]).ok().json();
    let arm64 = doctor["arches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["arch"] == "arm64")
        .unwrap()
        .clone();
    assert_eq!(arm64["mode"], "emulated", "{doctor}");
    assert_eq!(arm64["fix_binary"], true);
    assert_eq!(arm64["can_build"], true);
    assert_eq!(arm64["can_boot"], true, "{arm64}");
    let amd64 = &doctor["arches"][0];
    assert_eq!(amd64["mode"], "native");
    let tools: Vec<&str> = doctor["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| !t["path"].is_null())
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "mmdebstrap",
        "qemu-img",
        "qemu-system-aarch64",
        "qemu-aarch64-static",
    ] {
        assert!(tools.contains(&t), "{t} not found: {tools:?}");
    }
    let text = env.run(&["doctor"]).ok();
    assert!(
        text.stdout
            .contains("arm64  build: yes  boot: yes  emulated"),
        "{}",
        text.stdout
    );
}

/// The ELF machine of a file (e_machine): 0xB7 is AArch64, 0x3E x86-64.
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn an_arm64_root_filesystem_is_built_under_emulation_with_every_step_timed() {
    // The layered fixture (a mmdebstrap base, a package, a child with a script, static files
    // and a bin/ tool) for arm64: the same code path as CC-Debian12-ARM64's layers, small.
    assert!(is_root(), "builds need root");
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    crate::common::copy_tree(&repo().join("tests/fixtures/layered"), &project);
    let images = project.join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap();
    assert!(text.contains("arch = ['amd64],"));
    // Every image of the chain: a child names its arches too.
    let text = text
        .replace("arch = ['amd64],", "arch = ['arm64],")
        .replace("from = \"tiny\",", "from = \"tiny\",\n    arch = ['arm64],");
    std::fs::write(&images, text).unwrap();
    let elements = repo().join("elements");
    let run = env
        .run(&[
            "--root",
            project.to_str().unwrap(),
            "build",
            "tiny-child",
            "--until",
            "layer",
            "--element-path",
            elements.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok();
    run.stderr_has("qemu-user emulation");
    let json = run.json();
    let rows = json["actions"].as_array().unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {json}"))
    };
    for id in [
        "base:tiny:arm64",
        "layer:tiny:arm64",
        "layer:tiny-child:arm64",
    ] {
        assert_eq!(row(id)["status"], "built", "{id}");
        // Where the emulated time goes: every step of the action, with its duration.
        let steps = row(id)["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{id} has no steps");
        assert!(steps.iter().all(|s| s["duration_ms"].is_u64()), "{id}");
    }
    let names: Vec<&str> = row("layer:tiny:arm64")["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"00-dpkg-defer"), "{names:?}");

    // The programs in the root filesystem are arm64's, run by qemu-user in the chroot.
    let base = env
        .cache
        .path()
        .join("layers")
        .join(row("base:tiny:arm64")["key"].as_str().unwrap())
        .join("tree");
    assert_eq!(elf_machine(&base.join("usr/bin/dpkg")), 0xB7);
    // The child's own script ran, in the arm64 chroot.
    let child = env
        .cache
        .path()
        .join("layers")
        .join(row("layer:tiny-child:arm64")["key"].as_str().unwrap())
        .join("tree");
    assert!(child.exists(), "{}", child.display());
    // While layers build, update-initramfs is deferred (the dpkg element): the disk action
    // puts the real one back.
    let layer = env
        .cache
        .path()
        .join("layers")
        .join(row("layer:tiny:arm64")["key"].as_str().unwrap())
        .join("tree");
    let stub = std::fs::read_to_string(layer.join("usr/sbin/update-initramfs")).unwrap();
    assert!(stub.contains("deferred"), "{stub}");
    let dpkg_cfg = layer.join("etc/dpkg/dpkg.cfg.d/02-dib-force-unsafe-io");
    assert_eq!(
        std::fs::read_to_string(dpkg_cfg).unwrap(),
        "force-unsafe-io\n"
    );
}
