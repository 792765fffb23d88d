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
