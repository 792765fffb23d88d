//! arm64 on this (amd64) host: `ccb doctor`, and what a build does when the host can or cannot
//! run arm64 code. A host without emulation is made for real: ccb runs in a private mount
//! namespace where an empty tmpfs hides binfmt_misc, exactly what it sees on a host where
//! binfmt_misc was never mounted.

use std::path::Path;
use std::process::Command;

use crate::common::{Env, Run, logs_contain, os_element, repo, script, write};

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
fn an_arch_this_host_cannot_build_is_refused_before_anything_is_pinned_downloaded_or_opened() {
    assert!(is_root(), "mount namespaces need root");
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    two_arch_project(project.path());
    // The image follows a "latest" artifact nobody serves (nothing listens on port 9): a
    // build that pins it first fails on the download, and writes nothing to ccb.lock.
    write(
        project.path().join("manifests/artifacts.ncl"),
        "{ tool = { url = \"http://127.0.0.1:9/tool.sh\", sha256 = \"latest\" } }\n",
    );
    let images = project.path().join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap();
    write(
        &images,
        &text.replace(
            "formats = ['qcow2],",
            "formats = ['qcow2],\n    artifacts = { TOOL = \"tool\" },",
        ),
    );
    let remote = tempfile::tempdir().unwrap();
    let remote_url = format!("file://{}", remote.path().display());
    let root = project.path().to_str().unwrap();
    let elements = repo().join("elements");
    let elements = elements.to_str().unwrap();
    let build = |arch: &'static str| {
        vec![
            "--root",
            root,
            "build",
            "mini",
            "--arch",
            arch,
            "--until",
            "base",
            "--element-path",
            elements,
            "--remote-cache",
            &remote_url,
        ]
    };
    let store_has = |dir: &str| env.cache.path().join(dir).exists();

    // What a buildable arch does first: pin the artifact (and fail, nothing serves it).
    run_without_binfmt(&Env::new(), &build("amd64"))
        .fails()
        .stderr_has("127.0.0.1:9");

    // arm64 without emulation: refused having pinned, downloaded and opened nothing.
    let refused = run_without_binfmt(&env, &build("arm64")).fails();
    refused.stderr_has("cannot build arm64 root filesystems");
    assert!(
        !refused.stderr.contains("remote cache:") && !refused.stderr.contains("127.0.0.1:9"),
        "{}",
        refused.stderr
    );
    assert!(!project.path().join("ccb.lock").exists());
    assert!(!store_has("artifacts") && !store_has("layers"));
    assert_eq!(std::fs::read_dir(remote.path()).unwrap().count(), 0);
}

#[test]
fn a_bios_boot_of_arm64_is_refused_before_anything_is_pinned_or_downloaded() {
    let env = Env::new();
    let project = tempfile::tempdir().unwrap();
    two_arch_project(project.path());
    // A "latest" artifact nobody serves (nothing listens on port 9): pinning it would fail on
    // the download, so a refusal that came after pinning would name 127.0.0.1:9.
    write(
        project.path().join("manifests/artifacts.ncl"),
        "{ tool = { url = \"http://127.0.0.1:9/tool.sh\", sha256 = \"latest\" } }\n",
    );
    let images = project.path().join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap();
    write(
        &images,
        &text.replace(
            "formats = ['qcow2],",
            "formats = ['qcow2],\n    artifacts = { TOOL = \"tool\" },",
        ),
    );
    let root = project.path().to_str().unwrap();
    let elements = repo().join("elements");
    let refused = env.run(&[
        "--root",
        root,
        "test",
        "mini",
        "--arch",
        "arm64",
        "--firmware",
        "bios",
        "--element-path",
        elements.to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 2, "a usage error:\n{}", refused.stderr);
    refused.stderr_has("arm64 has no BIOS");
    assert!(
        !refused.stderr.contains("127.0.0.1:9"),
        "{}",
        refused.stderr
    );
    assert!(!project.path().join("ccb.lock").exists());
    assert!(!env.cache.path().join("artifacts").exists());
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
/// Each of `built` ran (not cached) with every step timed, where the emulated time goes,
/// and `layer` deferred its initramfs (the dpkg element). Returns the report's rows.
fn assert_emulated_build(
    json: &serde_json::Value,
    built: &[&str],
    layer: &str,
) -> Vec<serde_json::Value> {
    let rows = json["actions"].as_array().unwrap().clone();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {json}"))
            .clone()
    };
    for id in built {
        assert_eq!(row(id)["status"], "built", "{id}");
        let steps = row(id)["steps"].as_array().unwrap().clone();
        assert!(!steps.is_empty(), "{id} has no steps");
        assert!(steps.iter().all(|s| s["duration_ms"].is_u64()), "{id}");
    }
    let names: Vec<String> = row(layer)["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "00-dpkg-defer"), "{names:?}");
    rows
}

fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// A two-image arm64 chain small enough for CI that still boots as CC-Debian12-ARM64 does:
/// the same elements for booting (debian, vm, block-device-efi's GRUB on the ESP,
/// cloud-init) in the parent, and the Chameleon elements whose boot checks apply (users and
/// serial autologin, SSH hardening, cloud-init settings, provenance) in the child.
fn arm64_boot_project(dir: &Path) {
    write(
        dir.join("manifests/images.ncl"),
        r#"{
  arm-os = {
    name = "Arm-OS",
    description = "Debian 12 arm64 that boots on UEFI: kernel, GRUB, cloud-init, SSH",
    elements = ["debian", "vm", "block-device-efi", "arm-test-initramfs"],
    arch = ['arm64],
    formats = ['qcow2],
    env = { DIB_RELEASE = "bookworm", DIB_SKIP_BASE_PACKAGE_INSTALL = "1" },
  },
  arm-cc = {
    name = "Arm-CC",
    description = "arm-os with the Chameleon elements whose boot checks apply to any VM",
    from = "arm-os",
    arch = ['arm64],
    elements = ["cc-ssh", "cc-users", "cc-provenance"],
    provenance = { distro = "debian", release = "bookworm", variant = "base" },
  },
}
"#,
    );
    // The one cut from CC-Debian12-ARM64: an initramfs of the few modules a virtio VM needs
    // instead of MODULES=most. mkinitramfs copies every module with its own cp, mkdir and
    // readlink, and each emulated process start costs ~30x a native one: for arm64's
    // thousands of SoC drivers that is most of the emulated build (figures in the arm64
    // benchmark). Runs after the package step, before the dpkg element's one generation.
    let el = dir.join("elements/arm-test-initramfs");
    write(
        el.join("README.rst"),
        "A small initramfs for the arm64 boot test.\n",
    );
    write(el.join("element-deps"), "initramfs\npackage-installs\n");
    // logind (serial autologin's check asks loginctl) needs dbus, which the minimal
    // package set leaves out.
    write(el.join("package-installs.yaml"), "dbus:\n");
    // The provenance check wants a build repository; a scratch project has no git remote.
    write(
        dir.join("manifests/project.ncl"),
        "{ build_repo = \"https://github.com/ChameleonCloud/cc-images\" }\n",
    );
    script(
        el.join("install.d/10-arm-test-initramfs"),
        "#!/bin/bash\nset -eu\nmkdir -p /etc/initramfs-tools/conf.d\n\
         echo MODULES=list > /etc/initramfs-tools/conf.d/ccb-arm-test.conf\n\
         printf '%s\\n' virtio_pci virtio_blk virtio_net ext4 >> /etc/initramfs-tools/modules\n",
    );
    // The same initramfs made again with every program the image's own, emulated (this
    // script does not declare host tools), for the test to compare with the one the dpkg
    // element's post-install.d/01 made with the host's. A name GRUB does not take for an
    // initrd.
    script(
        el.join("post-install.d/02-arm-test-initramfs-emulated"),
        "#!/bin/bash\nset -eu\nfor m in /lib/modules/*; do\n\
         \x20   mkinitramfs -o \"/boot/ccb-test-emulated-${m##*/}\" \"${m##*/}\"\ndone\n",
    );
}

/// One member of an initramfs's cpio archives: the link target is a link's contents.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    name: String,
    mode: u32,
    contents: Vec<u8>,
}

/// Every member of an initramfs (uncompressed early archives, then one compressed by gzip,
/// xz or zstd, which the host's tool decompresses), by name.
fn initramfs_members(path: &Path) -> Vec<Member> {
    let archive = initramfs_archive(path);
    let mut members = Vec::new();
    let mut rest = &archive[..];
    loop {
        while rest.first() == Some(&0) {
            rest = &rest[1..];
        }
        if !rest.starts_with(b"070701") {
            break;
        }
        rest = read_newc(rest, &mut members);
    }
    members.sort();
    members
}

/// An initramfs's archives as the kernel unpacks them: the uncompressed early ones as they
/// are, then the compressed one decompressed.
fn initramfs_archive(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut archive = Vec::new();
    let mut rest = &bytes[..];
    loop {
        while rest.first() == Some(&0) {
            rest = &rest[1..];
        }
        if rest.is_empty() {
            break;
        }
        if !rest.starts_with(b"070701") {
            let tool = match rest[..4] {
                [0x28, 0xb5, 0x2f, 0xfd] => "zstd",
                [0x1f, 0x8b, _, _] => "gzip",
                [0xfd, b'7', b'z', b'X'] => "xz",
                _ => panic!("{}: unknown compression {:x?}", path.display(), &rest[..4]),
            };
            let mut child = Command::new(tool)
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let input = rest.to_vec();
            let mut stdin = child.stdin.take().unwrap();
            let feeder = std::thread::spawn(move || {
                use std::io::Write;
                let _ = stdin.write_all(&input);
            });
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap();
            assert!(out.status.success(), "{tool} -dc {}", path.display());
            archive.extend_from_slice(&out.stdout);
            break;
        }
        let mut skipped = Vec::new();
        let after = read_newc(rest, &mut skipped);
        archive.extend_from_slice(&rest[..rest.len() - after.len()]);
        rest = after;
    }
    archive
}

/// Reads one newc archive (up to its trailer) into `members`; returns what follows it.
fn read_newc<'a>(mut data: &'a [u8], members: &mut Vec<Member>) -> &'a [u8] {
    let field = |h: &[u8], i: usize| {
        u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
    };
    let pad = |n: usize| (n + 3) & !3;
    loop {
        assert!(data.starts_with(b"070701"), "not a newc header");
        let (mode, size, namesize) = (
            field(data, 1),
            field(data, 6) as usize,
            field(data, 11) as usize,
        );
        let name = String::from_utf8_lossy(&data[110..110 + namesize - 1]).into_owned();
        let start = pad(110 + namesize);
        let contents = data[start..start + size].to_vec();
        data = &data[pad(start + size)..];
        if name == "TRAILER!!!" {
            return data;
        }
        members.push(Member {
            name,
            mode,
            contents,
        });
    }
}

/// The whole arm64 path, in CI: an emulated kernel, GRUB and cloud-init install with the
/// host's tools where they cannot change the result, then a TCG boot with the Chameleon
/// checks (about 6 minutes on a quiet 2-core host; the full CC-Debian12-ARM64 is
/// `benches/arm64.sh`).
#[test]
fn an_arm64_image_is_built_under_emulation_and_boots_on_aavmf_with_the_checks_passing() {
    assert!(is_root(), "builds need root");
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    arm64_boot_project(&project);
    let root = project.to_str().unwrap();
    let elements = repo().join("elements");
    let elements = elements.to_str().unwrap();
    let out = work.path().join("out");

    let run = env
        .run(&[
            "--root",
            root,
            "build",
            "arm-cc",
            "--element-path",
            elements,
            "--out",
            out.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok();
    run.stderr_has("qemu-user emulation");
    let json = run.json();
    let rows = assert_emulated_build(
        &json,
        &[
            "base:arm-os:arm64",
            "layer:arm-os:arm64",
            "layer:arm-cc:arm64",
            "disk:arm-cc:arm64",
        ],
        "layer:arm-os:arm64",
    );
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();

    // The programs in the root filesystem are arm64's, run by qemu-user in the chroot.
    let tree = |id: &str| {
        env.cache
            .path()
            .join("layers")
            .join(row(id)["key"].as_str().unwrap())
            .join("tree")
    };
    assert_eq!(
        elf_machine(&tree("base:arm-os:arm64").join("usr/bin/dpkg")),
        0xB7
    );
    // While layers build, update-initramfs is deferred (the dpkg element) and dpkg skips
    // its fsyncs; neither is left for the disk.
    let layer = tree("layer:arm-os:arm64");
    let stub = std::fs::read_to_string(layer.join("usr/sbin/update-initramfs")).unwrap();
    assert!(stub.contains("deferred"), "{stub}");
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/dpkg/dpkg.cfg.d/02-dib-force-unsafe-io")).unwrap(),
        "force-unsafe-io\n"
    );
    // GRUB's arm64 image was made natively, by the host's grub-mkimage from the image's
    // modules, not under emulation (scripts/host-deps.sh installs grub-common).
    if Command::new("grub-mkimage")
        .arg("--version")
        .output()
        .is_ok()
    {
        assert!(
            logs_contain(env.cache.path(), "GRUB image(s) made by the host's"),
            "the arm64 GRUB image was not made natively"
        );
    }
    // The initramfs the dpkg element made with the host's tools is the one the image's own
    // tools make under emulation: the same members, modes, link targets and contents, and
    // every program in it is arm64's.
    assert!(
        logs_contain(env.cache.path(), "post-install.d/01-dpkg-initramfs runs")
            && logs_contain(env.cache.path(), "/usr/bin/dash <- host"),
        "the initramfs was not made with the host's tools"
    );
    let boot = layer.join("boot");
    let emulated: Vec<_> = std::fs::read_dir(&boot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("ccb-test-emulated-"))
        .collect();
    assert_eq!(emulated.len(), 1, "{emulated:?}");
    let version = emulated[0]
        .to_string_lossy()
        .rsplit_once("ccb-test-emulated-")
        .unwrap()
        .1
        .to_string();
    let host_made = boot.join(format!("initrd.img-{version}"));
    let members = initramfs_members(&host_made);
    assert!(
        members.iter().any(|m| m.name.ends_with("virtio_blk.ko")),
        "{:?}",
        members.iter().map(|m| &m.name).collect::<Vec<_>>()
    );
    let want = initramfs_members(&emulated[0]);
    let names = |ms: &[Member]| ms.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&members), names(&want));
    for (got, want) in members.iter().zip(&want) {
        assert!(got == want, "{} differs", got.name);
    }
    let mut programs = 0;
    for m in &members {
        if m.mode & 0o170000 == 0o100000 && m.contents.starts_with(b"\x7fELF") {
            let machine = u16::from_le_bytes([m.contents[18], m.contents[19]]);
            assert_eq!(machine, 0xB7, "{} is not arm64's", m.name);
            programs += 1;
        }
    }
    assert!(programs > 10, "{programs} programs in the initramfs");
    // SOURCE_DATE_EPOCH makes mkinitramfs reproducible (clamped times, cpio --reproducible):
    // the two archives are the same bytes. Only their deflate differs: ccb-gzip compressed the
    // host-tools one (src/gzip.rs), the image's emulated gzip the other.
    assert!(
        initramfs_archive(&host_made) == initramfs_archive(&emulated[0]),
        "same members ({} of them), different archive bytes",
        members.len()
    );
    assert!(
        out.join("Arm-CC-ARM64.qcow2").is_file(),
        "no Arm-CC-ARM64.qcow2 in {}",
        out.display()
    );

    // It boots: qemu-system-aarch64 -M virt on AAVMF (UEFI only: the default `both` boots
    // arm64 on UEFI alone), TCG on this host, with the checks passing inside.
    let test = env.run(&[
        "--root",
        root,
        "test",
        "arm-cc",
        "--arch",
        "arm64",
        "--element-path",
        elements,
        "--format",
        "json",
    ]);
    let json = test.json();
    assert_eq!(
        test.code, 0,
        "boot checks failed:\n{}\n{}",
        test.stdout, test.stderr
    );
    assert_eq!(json["passed"], true);
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{json}");
    let r = &results[0];
    assert_eq!(r["arch"], "arm64");
    assert_eq!(r["firmware"], "uefi");
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // A check that silently went missing must fail the test as surely as a failing one.
    for want in [
        "multi-user",
        "cloud-init",
        "root-grown",
        "provenance",
        "bootloader/10-kernel-cmdline",
        "cc-users/10-cc-users",
        "cc-users/20-serial-autologin",
        "cc-ssh/10-sshd-hardened",
        "cc-provenance/10-provenance-fields",
    ] {
        assert!(names.contains(&want), "lacks {want}: {names:?}");
    }
    let serial = std::fs::read_to_string(r["serial_log"].as_str().unwrap()).unwrap();
    // The kernel is arm64's, on the PL011 console the bootloader element chose.
    assert!(
        serial.contains("Linux version") && serial.contains("aarch64"),
        "{serial}"
    );
    // The boot wrote nothing into the image.
    env.run(&["cache", "verify"]).ok();
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
    // What CPU the child's emulated programs see: the hardware capabilities the kernel (here
    // qemu-user) hands every program, which glibc prints.
    script(
        project.join("elements/tiny-extra/install.d/40-hwcap"),
        "#!/bin/bash\nset -eu\nLD_SHOW_AUXV=1 /bin/true | grep '^AT_HWCAP:'\n",
    );
    // A step that declares host tools sees the host's dash (x86-64, e_machine 3e) over the
    // image's, read-only, and still the emulated machine's uname; the step after it sees the
    // image's own programs again, with nothing mounted over them.
    let observe = "od -An -tx1 -j18 -N2 /usr/bin/dash | tr -d ' \\n'; echo \" $(uname -m) \
                   $(grep -c ' /usr/bin/' /proc/self/mountinfo || true)\"";
    script(
        project.join("elements/tiny-extra/install.d/41-host-tools"),
        &format!(
            "#!/bin/bash\n# ccb: host-tools\nset -eu\n{{ {observe}; }} > /etc/tiny/host-tools\n\
             if : > /usr/bin/sed 2>/dev/null; then echo writable; exit 1; fi\n"
        ),
    );
    script(
        project.join("elements/tiny-extra/install.d/42-image-tools"),
        &format!("#!/bin/bash\nset -eu\n{{ {observe}; }} > /etc/tiny/image-tools\n"),
    );
    // What the package step's programs find on their PATH: apt runs dpkg with a PATH of its
    // own (DPkg::Path) and dpkg hands its environment to every maintainer script; this hook
    // of dpkg's, run by dpkg after its work, prints which grep it finds and that program's
    // ELF machine into the log (not the tree: the two builds below must make the same one).
    script(
        project.join("elements/tiny-base/pre-install.d/10-observe-path"),
        "#!/bin/bash\nset -eu\ncat > /etc/dpkg/dpkg.cfg.d/99ccb-observe <<'EOF'\n\
         post-invoke=echo ccb-observe $(command -v grep) \
         $(od -An -tx1 -j18 -N2 $(readlink -f $(command -v grep)) | tr -d ' ')\nEOF\n",
    );
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
    let rows = assert_emulated_build(
        &json,
        &[
            "base:tiny:arm64",
            "layer:tiny:arm64",
            "layer:tiny-child:arm64",
        ],
        "layer:tiny:arm64",
    );
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap();

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
    // qemu-user emulates a Cortex-A72 (no pointer authentication, no SVE): with its default
    // `max`, every function's PAC instructions of Debian's branch-protected binaries would
    // run QARMA in software.
    let build_env = std::fs::read_to_string(child.join("etc/tiny/build-env")).unwrap();
    assert!(
        build_env.lines().any(|l| l == "QEMU_CPU=cortex-a72"),
        "{build_env}"
    );
    let log_path = env.cache.path().join("logs").join(format!(
        "{}.log",
        row("layer:tiny-child:arm64")["key"].as_str().unwrap()
    ));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let hwcap = log
        .lines()
        .find_map(|l| l.strip_prefix("AT_HWCAP:"))
        .map(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).unwrap())
        .unwrap_or_else(|| panic!("no AT_HWCAP in {}", log_path.display()));
    const SVE: u64 = 1 << 22;
    const PACA: u64 = 1 << 30;
    const ASIMD: u64 = 1 << 1;
    assert_eq!(hwcap & (SVE | PACA), 0, "hwcap {hwcap:#x}");
    assert_ne!(hwcap & ASIMD, 0, "hwcap {hwcap:#x}");
    // On a bookworm host (the gate of every host program) the host-tools step ran the host's
    // dash natively, and nothing of it outlived the step: the child's tree has no program
    // of the base written into it, and the base's dash is arm64's.
    let bookworm_host =
        std::fs::read_to_string("/etc/debian_version").is_ok_and(|v| v.starts_with("12."));
    let observed = |f: &str| std::fs::read_to_string(child.join("etc/tiny").join(f)).unwrap();
    if bookworm_host {
        let mounted: usize = observed("host-tools")
            .trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            observed("host-tools").starts_with("3e00 aarch64 ") && mounted >= 10,
            "{}",
            observed("host-tools")
        );
        assert!(
            log.contains("install.d/41-host-tools runs") && log.contains("/usr/bin/dash <- host"),
            "{log}"
        );
    }
    assert_eq!(observed("image-tools").trim(), "b700 aarch64 0");
    for program in ["dash", "sed", "cp"] {
        assert!(!child.join("usr/bin").join(program).exists(), "{program}");
        assert_eq!(elf_machine(&base.join("usr/bin").join(program)), 0xB7);
    }
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
    // On a bookworm host (CI's) the packages were decompressed by the host's dpkg-deb, and
    // the emulated dpkg wrote them: every file of the layer's package is as packaged.
    let log = std::fs::read_to_string(env.cache.path().join("logs").join(format!(
        "{}.log",
        row("layer:tiny:arm64")["key"].as_str().unwrap()
    )))
    .unwrap();
    if bookworm_host {
        assert!(
            log.contains("ccb: packages are decompressed by the host's dpkg-deb"),
            "{log}"
        );
        // The package step found the host's machine-independent tools first on its PATH
        // (x86-64's grep, e_machine 3e), named in the log.
        let placed = log
            .lines()
            .find_map(|l| l.split_once("host programs first on its PATH: "))
            .map(|(_, names)| names.split(' ').collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no host programs on the package step's PATH: {log}"));
        for tool in ["grep", "sed", "rm", "basename", "readlink"] {
            assert!(placed.contains(&tool), "{tool} not in {placed:?}");
        }
        assert!(
            placed
                .iter()
                .all(|t| !["uname", "arch", "nproc", "dpkg", "perl", "sh", "dash"].contains(t)),
            "{placed:?}"
        );
        assert!(
            log.contains("ccb-observe /tmp/ccb/native/path/grep 3e00"),
            "{log}"
        );
    }
    // The layer's tree holds what the layer changed (less's files and dpkg's record of them):
    // each file's md5 is the one the package lists.
    let verify = Command::new("md5sum")
        .args(["-c", "--quiet", "var/lib/dpkg/info/less.md5sums"])
        .current_dir(&layer)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    assert!(layer.join("usr/bin/less").exists());
    // Nothing of the engine is in the committed layer: every program in it is arm64's and
    // no link leads to the engine directory.
    let listing = tree_listing(&layer);
    for (path, entry) in &listing {
        assert!(!path.starts_with("tmp/ccb"), "{path}");
        if let Entry::Link(target) = &entry.kind {
            assert!(!target.contains("/tmp/ccb"), "{path} -> {target}");
        }
        if let Entry::File(bytes) = &entry.kind
            && bytes.starts_with(b"\x7fELF")
        {
            assert_eq!(
                u16::from_le_bytes([bytes[18], bytes[19]]),
                0xB7,
                "{path} is not arm64's"
            );
        }
    }

    // The same layer built again on the same base with every program the image's own
    // (CCB_HOST_TOOLS=0, no dpkg-deb of the host's either) is the same tree: names, types,
    // modes, owners, link targets and contents.
    let with_host = work.path().join("with-host-tools");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&layer)
        .arg(&with_host)
        .status()
        .unwrap();
    assert!(copied.success());
    let layer_key = row("layer:tiny:arm64")["key"].as_str().unwrap().to_string();
    env.run(&["cache", "rm", &layer_key]).ok();
    let out = env
        .cmd()
        .env("CCB_HOST_TOOLS", "0")
        // The layer's steps again, not its checkpoints (the switch is no input of their keys).
        .env("CCB_CHECKPOINTS", "0")
        .args([
            "--root",
            project.to_str().unwrap(),
            "build",
            "tiny",
            "--until",
            "layer",
            "--element-path",
            elements.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let again = crate::common::row(&json["actions"], "layer:tiny:arm64").clone();
    assert_eq!(again["status"], "built", "{json}");
    assert_eq!(
        again["key"],
        layer_key.as_str(),
        "the switch is not an input of the key"
    );
    let log = std::fs::read_to_string(
        env.cache
            .path()
            .join("logs")
            .join(format!("{layer_key}.log")),
    )
    .unwrap();
    assert!(
        log.contains("runs the image's own tools: CCB_HOST_TOOLS=0"),
        "{log}"
    );
    assert!(
        !log.contains("decompressed by the host's dpkg-deb"),
        "{log}"
    );
    assert!(log.contains("ccb-observe /usr/bin/grep b700"), "{log}");
    let emulated = tree_listing(&layer);
    let with_host = tree_listing(&with_host);
    let names =
        |l: &std::collections::BTreeMap<String, Meta>| l.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&with_host), names(&emulated));
    for (path, meta) in &emulated {
        assert_eq!(&with_host[path], meta, "{path} differs");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(String),
    /// A device (an overlay whiteout is 0:0): its number.
    Other(u64),
}

/// What two builds of one tree must agree on for a path (not its times).
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    kind: Entry,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Every path under `root` (relative) with its kind, contents, mode and owner.
fn tree_listing(root: &Path) -> std::collections::BTreeMap<String, Meta> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Entry::Dir
        } else if ft.is_symlink() {
            Entry::Link(std::fs::read_link(e.path()).unwrap().display().to_string())
        } else if ft.is_file() {
            Entry::File(std::fs::read(e.path()).unwrap())
        } else {
            Entry::Other(md.rdev())
        };
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        out.insert(
            rel,
            Meta {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
            },
        );
    }
    out
}
