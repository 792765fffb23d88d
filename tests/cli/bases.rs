//! Distribution bases as artifacts: a root image's cloud image root filesystem is an artifact
//! with one file per arch, following "latest" and verified against the publisher's SHA256SUMS
//! before it is pinned, per arch, in ccb.lock. Served by a real nginx on 127.0.0.1 in the
//! layout of Ubuntu's cloud-image server (`<release>/current/` holding the images and
//! SHA256SUMS), since this machine cannot reach the real one.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{Env, Nginx, Run, repo, write};
use crate::distros::{mini_rootfs, sha256};

struct Project {
    env: Env,
    nginx: Nginx,
    dir: tempfile::TempDir,
}

impl Project {
    /// One image, `fake-ubuntu` (amd64 and arm64), whose base is the `noble-rootfs` artifact
    /// served at `url_base` (nginx's by default).
    fn new() -> Self {
        let p = Self {
            env: Env::new(),
            nginx: Nginx::start(),
            dir: tempfile::tempdir().unwrap(),
        };
        write(
            p.root().join("manifests/sites.ncl"),
            "{ local = { name = \"Local\", baremetal = true, kind = 'local, path = \"out\" } }\n",
        );
        write(
            p.root().join("manifests/images.ncl"),
            r#"{
  fake-ubuntu = {
    name = "Fake-Ubuntu",
    elements = ["ubuntu"],
    arch = ['amd64, 'arm64],
    formats = ['qcow2],
    base_artifacts = { DIB_UBUNTU_ROOTFS = "noble-rootfs" },
    env = { DIB_RELEASE = "noble" },
  },
}
"#,
        );
        let base = p.nginx.base.clone();
        p.artifacts(&base);
        p
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    fn artifacts(&self, server: &str) {
        // As the real manifests write it: the server is one `let`, the override a failed
        // download names.
        write(
            self.root().join("manifests/artifacts.ncl"),
            &format!(
                r#"let ubuntu_cloud_images = "{server}/ubuntu" in
let dir = "%{{ubuntu_cloud_images}}/noble/current" in
let file = fun arch => {{ url = "%{{dir}}/noble-server-cloudimg-%{{arch}}.squashfs", sums = "%{{dir}}/SHA256SUMS" }} in
{{
  noble-rootfs = {{
    sha256 = "latest",
    arch = {{ amd64 = file "amd64", arm64 = file "arm64" }},
    description = "Ubuntu 24.04 cloud image root filesystem",
  }},
}}
"#
            ),
        );
    }

    /// Where nginx serves the release's `current/` directory from.
    fn current(&self) -> PathBuf {
        self.nginx.root().join("ubuntu/noble/current")
    }

    /// Publishes a squashfs root filesystem per arch, each marked with its arch and
    /// `release`; returns their SHA-256s (amd64, arm64). `sums` writes SHA256SUMS.
    fn publish(&self, release: &str, sums: bool) -> (String, String) {
        let mut digests = Vec::new();
        for arch in ["amd64", "arm64"] {
            let tree = self.dir.path().join(format!("tree-{arch}"));
            if !tree.exists() {
                mini_rootfs(&tree, "apt-get");
            }
            write(
                tree.join("etc/fixture-release"),
                &format!("{arch} {release}\n"),
            );
            let file = self
                .current()
                .join(format!("noble-server-cloudimg-{arch}.squashfs"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let st = Command::new("mksquashfs")
                .arg(&tree)
                .arg(&file)
                .args(["-noappend", "-quiet", "-no-progress", "-all-root"])
                .status()
                .expect("mksquashfs (squashfs-tools) is installed");
            assert!(st.success());
            digests.push(sha256(&file));
        }
        if sums {
            self.sums(&digests[0], &digests[1]);
        }
        (digests[0].clone(), digests[1].clone())
    }

    /// SHA256SUMS as Ubuntu writes it (`HEX *NAME`), with other files around ours.
    fn sums(&self, amd64: &str, arm64: &str) {
        write(
            self.current().join("SHA256SUMS"),
            &format!(
                "{} *noble-server-cloudimg-amd64.img\n{amd64} *noble-server-cloudimg-amd64.squashfs\n{arm64} *noble-server-cloudimg-arm64.squashfs\n",
                "f".repeat(64)
            ),
        );
    }

    /// Runs ccb on the project; ccb's own elements come from ELEMENTS_PATH so that every
    /// command (`update`, `query`) sees them.
    fn ccb(&self, rest: &[&str]) -> Run {
        self.cmd().args(rest).output().expect("run ccb").into()
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.env.cmd();
        cmd.env("ELEMENTS_PATH", repo().join("elements"))
            .arg("--root")
            .arg(self.root());
        cmd
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.root().join("ccb.lock")).unwrap_or_default()
    }

    /// The marker of the root filesystem the arch's base was made from.
    fn base_release(&self, arch: &str) -> String {
        let tree = self.env.layer_tree(&format!("base:fake-ubuntu:{arch}"));
        std::fs::read_to_string(tree.join("etc/fixture-release"))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// The lock's `[artifacts."noble-rootfs:ARCH"]` digest.
fn pinned(lock: &str, arch: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(lock).ok()?;
    table["artifacts"]
        .get(format!("noble-rootfs:{arch}"))?
        .get("sha256")?
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_distribution_base_is_pinned_per_arch_after_its_sha256sums_check_and_moved_only_by_update() {
    let p = Project::new();
    let (amd64, arm64) = p.publish("one", false);
    let build = [
        "build",
        "fake-ubuntu",
        "--until",
        "base",
        "--arch",
        "amd64,arm64",
    ];

    // CI's --locked refuses to add the pins the manifests leave open, naming them.
    p.ccb(&[&build[..], &["--locked"]].concat())
        .fails()
        .stderr_has("artifact `noble-rootfs:amd64`")
        .stderr_has("artifact `noble-rootfs:arm64`")
        .stderr_has("--locked");
    assert!(!p.root().join("ccb.lock").exists());

    // SHA256SUMS disagrees with arm64's file: refused, and amd64's pin, which was fine, is
    // kept (written atomically with the others resolved): the next build does not download
    // it again.
    p.sums(&amd64, &"e".repeat(64));
    p.ccb(&build)
        .fails()
        .stderr_has("cannot pin artifact `noble-rootfs:arm64`")
        .stderr_has("kept the 1 pinned meanwhile (noble-rootfs:amd64)")
        .stderr_has("artifact `noble-rootfs:arm64`: SHA-256 mismatch")
        .stderr_has(&format!("expected {}", "e".repeat(64)))
        .stderr_has(&format!("actual   {arm64}"));
    let kept = p.lock();
    assert_eq!(pinned(&kept, "amd64").as_deref(), Some(amd64.as_str()));
    assert_eq!(pinned(&kept, "arm64"), None);

    // The publisher's sums agree: arm64's file is pinned at its own digest, saying so, and
    // each arch's base is made from its own file.
    p.sums(&amd64, &arm64);
    let first = p.ccb(&build).ok();
    first.stderr_has(&format!(
        "ccb.lock: pinned artifact `noble-rootfs:arm64` at {arm64}"
    ));
    assert!(
        !first.stderr.contains("`noble-rootfs:amd64` at"),
        "{}",
        first.stderr
    );
    let lock = p.lock();
    assert_eq!(pinned(&lock, "amd64").as_deref(), Some(amd64.as_str()));
    assert_eq!(pinned(&lock, "arm64").as_deref(), Some(arm64.as_str()));
    assert_eq!(p.base_release("amd64"), "amd64 one");
    assert_eq!(p.base_release("arm64"), "arm64 one");
    p.ccb(&[&build[..], &["--locked"]].concat()).ok();

    // Ubuntu publishes new images: builds keep the pins (nothing rebuilt, the lock as it was).
    let (amd64_two, arm64_two) = p.publish("two", true);
    let again = p.ccb(&[&build[..], &["--format", "json"]].concat()).ok();
    assert!(!again.stderr.contains("pinned"), "{}", again.stderr);
    assert_eq!(p.lock(), lock);
    let built: Vec<String> = again.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "built")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert!(built.is_empty(), "{built:?}");

    // `ccb update NAME:ARCH` moves that arch's pin alone; explain names the moved base.
    let upd = p
        .ccb(&["update", "noble-rootfs:arm64", "--format", "json"])
        .ok()
        .json();
    assert_eq!(upd["changed"].as_array().unwrap().len(), 1, "{upd}");
    assert_eq!(upd["changed"][0]["entry"], "artifact `noble-rootfs:arm64`");
    assert_eq!(upd["changed"][0]["before"], arm64.as_str());
    assert_eq!(upd["changed"][0]["after"], arm64_two.as_str());
    let lock = p.lock();
    assert_eq!(pinned(&lock, "amd64").as_deref(), Some(amd64.as_str()));
    let explain = p
        .ccb(&["query", "explain", "fake-ubuntu", "--arch", "arm64"])
        .ok();
    assert!(
        explain
            .stdout
            .contains("artifacts: noble-rootfs:arm64 (DIB_UBUNTU_ROOTFS) changed"),
        "{}",
        explain.stdout
    );
    p.ccb(&build).ok();
    assert_eq!(p.base_release("arm64"), "arm64 two");
    assert_eq!(p.base_release("amd64"), "amd64 one");

    // Asked by its name, the artifact's dependents are every arch's base.
    let rdeps = p.ccb(&["query", "rdeps", "artifact:noble-rootfs"]).ok();
    for arch in ["amd64", "arm64"] {
        assert!(
            rdeps.stdout.contains(&format!("base:fake-ubuntu:{arch}")),
            "{}",
            rdeps.stdout
        );
    }

    // `ccb update NAME` moves every arch's.
    let upd = p
        .ccb(&["update", "noble-rootfs", "--format", "json"])
        .ok()
        .json();
    assert_eq!(upd["changed"][0]["entry"], "artifact `noble-rootfs:amd64`");
    assert_eq!(upd["changed"][0]["after"], amd64_two.as_str());
    assert_eq!(
        pinned(&p.lock(), "amd64").as_deref(),
        Some(amd64_two.as_str())
    );
}

#[test]
fn an_unreachable_base_names_its_url_and_what_overrides_it() {
    let p = Project::new();
    p.artifacts("http://127.0.0.1:9");
    p.ccb(&["build", "fake-ubuntu", "--until", "base", "--arch", "amd64"])
        .fails()
        .stderr_has("artifact `noble-rootfs:amd64`")
        .stderr_has("http://127.0.0.1:9/ubuntu/noble/current/SHA256SUMS")
        .stderr_has("`ubuntu_cloud_images` in manifests/artifacts.ncl")
        .stderr_has("CCB_DISTDIR");
    assert!(!p.root().join("ccb.lock").exists());
    // DIB's variable would be silently ignored (the base is the artifact): said instead.
    p.ccb(&[
        "build",
        "fake-ubuntu",
        "--dry-run",
        "--env",
        "DIB_CLOUD_IMAGES=http://mirror.example/ubuntu",
    ])
    .ok()
    .stderr_has(
        "--env DIB_CLOUD_IMAGES is not used by images whose base is an artifact (noble-rootfs)",
    );

    // An operator's copy in CCB_DISTDIR (downloaded elsewhere) is pinned as it is.
    let (amd64, _) = p.publish("one", false);
    let run: Run = p
        .cmd()
        .env("CCB_DISTDIR", p.current())
        .args(["build", "fake-ubuntu", "--until", "base", "--arch", "amd64"])
        .output()
        .unwrap()
        .into();
    run.ok()
        .stderr_has(&format!("pinned artifact `noble-rootfs:amd64` at {amd64}"));
    assert_eq!(p.base_release("amd64"), "amd64 one");

    // An image built for an arch its base has no file for is a manifest error.
    write(
        p.root().join("manifests/artifacts.ncl"),
        "{ noble-rootfs = { sha256 = \"latest\", arch = { amd64 = { url = \"http://127.0.0.1:9/x.squashfs\" } } } }\n",
    );
    p.ccb(&["check"]).fails().stderr_has(
        "image `fake-ubuntu` is built for arm64, but artifact `noble-rootfs` has no arm64 file",
    );
}

#[test]
fn a_centos_stream_base_is_checked_against_its_checksum_file() {
    let p = Project::new();
    // CentOS's layout: `<major>-stream/<arch>/images/` holding the tarball and a CHECKSUM file
    // in BSD format.
    let images = p.nginx.root().join("centos/9-stream/x86_64/images");
    let tree = p.dir.path().join("centos-root");
    mini_rootfs(&tree, "dnf");
    write(tree.join("etc/fixture-release"), "centos 9\n");
    let file = images.join("CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz");
    std::fs::create_dir_all(&images).unwrap();
    let st = Command::new("tar")
        .arg("-cJf")
        .arg(&file)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let digest = sha256(&file);
    let checksum = |hex: &str| {
        write(
            images.join("CHECKSUM"),
            &format!(
                "# CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz: 1 bytes\nSHA256 (CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz) = {hex}\n"
            ),
        )
    };
    let dir = format!("{}/centos/9-stream/%{{arch}}/images", p.nginx.base);
    write(
        p.root().join("manifests/artifacts.ncl"),
        &format!(
            r#"let file = fun arch => {{ url = "{dir}/CentOS-Stream-Container-Base-9-latest.%{{arch}}.tar.xz", sums = "{dir}/CHECKSUM" }} in
{{ centos9-stream-rootfs = {{ sha256 = "latest", arch = {{ amd64 = file "x86_64" }} }} }}
"#
        ),
    );
    write(
        p.root().join("manifests/images.ncl"),
        r#"{
  fake-centos = {
    name = "Fake-CentOS",
    elements = ["centos"],
    formats = ['qcow2],
    base_artifacts = { DIB_CENTOS_ROOTFS = "centos9-stream-rootfs" },
  },
}
"#,
    );
    let build = ["build", "fake-centos", "--until", "base"];
    checksum(&"0".repeat(64));
    p.ccb(&build)
        .fails()
        .stderr_has("artifact `centos9-stream-rootfs:amd64`: SHA-256 mismatch");
    assert!(!p.root().join("ccb.lock").exists());
    // A CHECKSUM listing only the dated names (as CentOS's has at times): the file's own
    // `<file>.SHA256SUM` beside it answers, as DIB reads it.
    write(
        images.join("CHECKSUM"),
        &format!(
            "SHA256 (CentOS-Stream-Container-Base-9-20261201.0.x86_64.tar.xz) = {}\n",
            "e".repeat(64)
        ),
    );
    p.ccb(&build)
        .fails()
        .stderr_has("has no SHA-256 for CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz");
    write(
        images.join("CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz.SHA256SUM"),
        &format!("SHA256 (CentOS-Stream-Container-Base-9-latest.x86_64.tar.xz) = {digest}\n"),
    );
    p.ccb(&build).ok().stderr_has(&format!(
        "pinned artifact `centos9-stream-rootfs:amd64` at {digest}"
    ));
    let tree = p.env.layer_tree("base:fake-centos:amd64");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/fixture-release")).unwrap(),
        "centos 9\n"
    );
}

/// The vGPU guest driver comes as a `.run` or a `.deb`; as an artifact its file is named by
/// its variable, so the element tells them apart by content. The real extra-data script.
#[test]
fn the_vgpu_driver_artifact_reaches_the_root_named_by_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo().join("elements/cc-ubuntu24.04-cuda-vgpu/extra-data.d/40-cc-vgpu-driver");
    let run = |content: &[u8]| {
        let driver = dir.path().join("CC_VGPU_DRIVER");
        std::fs::write(&driver, content).unwrap();
        let root = dir.path().join("root");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let out = Command::new("bash")
            .arg(&script)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CC_VGPU_DRIVER", &driver)
            .env("TMP_MOUNT_PATH", &root)
            .output()
            .unwrap();
        let mut files: Vec<String> = std::fs::read_dir(root.join("tmp/cc-vgpu"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        (
            out.status.success(),
            files,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, files, _) = run(b"#!/bin/sh\n# NVIDIA-Linux-x86_64-grid.run (makeself)\n");
    assert!(ok);
    assert_eq!(files, ["nvidia-vgpu-guest-driver.run"]);
    let (ok, files, _) =
        run(b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n");
    assert!(ok);
    assert_eq!(files, ["nvidia-vgpu-guest-driver.deb"]);
    let (ok, files, err) = run(b"<html>login required</html>");
    assert!(!ok && files.is_empty());
    assert!(err.contains("neither a .deb nor a .run"), "{err}");
}

/// The real manifests in a project of their own, their upstream `let`s pointed at a nginx on
/// 127.0.0.1 laid out as the upstream servers are (Ubuntu's `<release>/current/` with
/// SHA256SUMS, CentOS's `<major>-stream/<arch>/images/` with CHECKSUM, NVIDIA's
/// `<distro>/<arch>/` keyrings, AMD's key). Only the `let`s change: a typo in a URL template
/// or a checksum name fails the tests that use it.
struct RealInventory {
    /// Serves as long as the inventory lives.
    _nginx: Nginx,
    env: Env,
    dir: tempfile::TempDir,
    /// (artifact key, SHA-256) of every file served.
    expected: Vec<(String, String)>,
}

impl RealInventory {
    /// Serves every base and key but those of `withheld` (artifact keys); `driver`, when
    /// given, replaces the vGPU driver's site URL by a file of that content.
    fn new(withheld: &[&str], driver: Option<&str>) -> Self {
        let nginx = Nginx::start();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        std::fs::create_dir_all(&root).unwrap();
        crate::common::copy_tree(&repo().join("manifests"), &root.join("manifests"));
        std::fs::copy(repo().join("ccb.lock"), root.join("ccb.lock")).unwrap();
        let real = std::fs::read_to_string(root.join("manifests/artifacts.ncl")).unwrap();
        let mut pointed = real.clone();
        for (var, upstream, here) in [
            (
                "ubuntu_cloud_images",
                "https://cloud-images.ubuntu.com",
                "ubuntu",
            ),
            ("centos_cloud", "https://cloud.centos.org/centos", "centos"),
            (
                "nvidia",
                "https://developer.download.nvidia.com/compute/cuda/repos",
                "cuda",
            ),
            ("radeon", "https://repo.radeon.com", "radeon"),
        ] {
            let line = format!("let {var} = \"{upstream}\" in");
            assert!(
                pointed.contains(&line),
                "manifests/artifacts.ncl lacks `{line}`"
            );
            pointed = pointed.replace(&line, &format!("let {var} = \"{}/{here}\" in", nginx.base));
        }
        let site_url = "file:///etc/ccb/vgpu/nvidia-vgpu-guest-driver.run";
        assert!(pointed.contains(site_url));
        if let Some(content) = driver {
            let file = dir.path().join("vgpu-driver.run");
            write(&file, content);
            pointed = pointed.replace(site_url, &format!("file://{}", file.display()));
        }
        write(root.join("manifests/artifacts.ncl"), &pointed);

        // Each file holds its own path, so every digest is distinct and checkable.
        let mut expected: Vec<(String, String)> = Vec::new();
        let mut serve = |key: String, path: &str| -> String {
            let file = nginx.root().join(path);
            write(&file, &format!("fixture {path}\n"));
            let hex = sha256(&file);
            if withheld.contains(&key.as_str()) {
                std::fs::remove_file(&file).unwrap();
            } else {
                expected.push((key, hex.clone()));
            }
            hex
        };
        for release in ["jammy", "noble", "resolute"] {
            let mut sums = String::new();
            for arch in ["amd64", "arm64"] {
                let name = format!("{release}-server-cloudimg-{arch}.squashfs");
                let hex = serve(
                    format!("ubuntu-{release}-rootfs:{arch}"),
                    &format!("ubuntu/{release}/current/{name}"),
                );
                sums.push_str(&format!("{hex} *{name}\n"));
            }
            write(
                nginx
                    .root()
                    .join(format!("ubuntu/{release}/current/SHA256SUMS")),
                &sums,
            );
        }
        for (arch, upstream) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
            let name = format!("CentOS-Stream-Container-Base-9-latest.{upstream}.tar.xz");
            let hex = serve(
                format!("centos9-stream-rootfs:{arch}"),
                &format!("centos/9-stream/{upstream}/images/{name}"),
            );
            write(
                nginx
                    .root()
                    .join(format!("centos/9-stream/{upstream}/images/CHECKSUM")),
                &format!("# {name}: 1 bytes\nSHA256 ({name}) = {hex}\n"),
            );
        }
        for (name, path) in [
            (
                "cuda-keyring-ubuntu2204",
                "cuda/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb",
            ),
            (
                "cuda-keyring-ubuntu2404",
                "cuda/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb",
            ),
            (
                "cuda-keyring-ubuntu2404-sbsa",
                "cuda/ubuntu2404/sbsa/cuda-keyring_1.1-1_all.deb",
            ),
            ("cuda-key-rhel9", "cuda/rhel9/x86_64/D42D0685.pub"),
            ("rocm-key", "radeon/rocm/rocm.gpg.key"),
        ] {
            serve(name.to_string(), path);
        }
        Self {
            _nginx: nginx,
            env: Env::new(),
            dir,
            expected,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// `ccb --root PROJECT ARGS… --element-path <the repo's elements>`.
    fn ccb(&self, args: &[&str]) -> Run {
        let root = self.root();
        let elements = repo().join("elements");
        let mut all = vec!["--root", root.to_str().unwrap()];
        all.extend(args);
        all.extend(["--element-path", elements.to_str().unwrap()]);
        self.env.run(&all)
    }

    fn lock(&self) -> toml::Table {
        toml::from_str(&std::fs::read_to_string(self.root().join("ccb.lock")).unwrap()).unwrap()
    }
}

/// The real manifests' base and key artifacts, resolved and pinned from upstream layouts
/// ([`RealInventory`]). Fetch only, nothing is built.
/// CI cost: about 2 s (14 small files served by nginx).
#[test]
fn every_base_and_key_of_the_real_inventory_resolves_from_upstream_layouts() {
    // The site's licensed driver: `ccb update` resolves every unpinned artifact.
    let inv = RealInventory::new(&[], Some("a site's vGPU guest driver\n"));
    let names = [
        "ubuntu-jammy-rootfs",
        "ubuntu-noble-rootfs",
        "ubuntu-resolute-rootfs",
        "centos9-stream-rootfs",
        "cuda-keyring-ubuntu2204",
        "cuda-keyring-ubuntu2404",
        "cuda-keyring-ubuntu2404-sbsa",
        "cuda-key-rhel9",
        "rocm-key",
    ];
    let root = inv.root();
    let mut args = vec!["--root", root.to_str().unwrap(), "update"];
    args.extend(names);
    inv.env.run(&args).ok();
    let lock = inv.lock();
    for (name, hex) in &inv.expected {
        assert_eq!(
            lock["artifacts"][name]["sha256"].as_str(),
            Some(hex.as_str()),
            "{name}"
        );
    }
    // Every image plans with its bases and keys pinned: nothing is left to pin. The vGPU
    // image is named: its license token is not on this host, so `//...` alone leaves it out.
    inv.ccb(&[
        "build",
        "//...",
        "ubuntu24.04-cuda-vgpu",
        "--dry-run",
        "--locked",
    ])
    .ok();
}

/// `ccb build //...` on a host without the site's vGPU driver and license token: the vGPU
/// image is left out of the wildcard with a note naming what it lacks (nothing is downloaded
/// for it), and a base that cannot be fetched does not cost the others their pins: every pin
/// resolved is in ccb.lock, and every failure is named with its URL and its variable. Named,
/// the vGPU image fails on its missing driver. Pins and fetches only, nothing is built.
/// CI cost: about 3 s (small files served by nginx).
#[test]
fn a_wildcard_build_leaves_out_images_whose_secrets_are_missing_and_keeps_every_pin_it_resolved() {
    assert!(
        !std::path::Path::new("/etc/ccb/vgpu/nvidia-vgpu-guest-driver.run").exists()
            && !std::path::Path::new("/etc/ccb/secrets/vgpu-client-configuration-token.tok")
                .exists(),
        "this test needs a host without the site's vGPU files"
    );
    let inv = RealInventory::new(&["rocm-key", "ubuntu-resolute-rootfs:arm64"], None);
    let note = "ubuntu24.04-cuda-vgpu: left out of the wildcard (its secret inputs are not on \
                this host: CC_VGPU_LICENSE_TOKEN (file /etc/ccb/secrets/vgpu-client-configuration-token.tok), \
                CC_VGPU_DRIVER (artifact `vgpu-guest-driver`, file:///etc/ccb/vgpu/nvidia-vgpu-guest-driver.run)";

    let plan = inv.ccb(&["build", "//...", "--dry-run"]).ok();
    plan.stderr_has(note);
    assert!(
        !plan.stdout.contains("ubuntu24.04-cuda-vgpu"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("layer:ubuntu24.04-cuda:amd64"),
        "{}",
        plan.stdout
    );

    let failed = inv.ccb(&["build", "//...", "--until", "fetch"]).fails();
    failed
        .stderr_has(note)
        .stderr_has("cannot pin artifact `rocm-key`, artifact `ubuntu-resolute-rootfs:arm64`")
        .stderr_has("/ubuntu/resolute/current/resolute-server-cloudimg-arm64.squashfs")
        .stderr_has("`ubuntu_cloud_images` in manifests/artifacts.ncl")
        .stderr_has("/radeon/rocm/rocm.gpg.key")
        .stderr_has("`radeon` in manifests/artifacts.ncl");
    let lock = inv.lock();
    // No image builds CentOS on arm64: only that base is not needed.
    for (name, hex) in inv
        .expected
        .iter()
        .filter(|(n, _)| n != "centos9-stream-rootfs:arm64")
    {
        assert_eq!(
            lock["artifacts"]
                .get(name)
                .and_then(|a| a["sha256"].as_str()),
            Some(hex.as_str()),
            "{name}: {}",
            failed.stderr
        );
    }
    assert!(
        !lock["artifacts"]
            .as_table()
            .unwrap()
            .keys()
            .any(|k| k == "rocm-key" || k == "vgpu-guest-driver"),
        "{lock}"
    );

    // Named, the image stays, and its missing driver is the error, with the way out.
    inv.ccb(&["build", "ubuntu24.04-cuda-vgpu", "--until", "fetch"])
        .fails()
        .stderr_has("artifact `vgpu-guest-driver`: cannot download file:///etc/ccb/vgpu/nvidia-vgpu-guest-driver.run")
        .stderr_has("CCB_DISTDIR");
}
