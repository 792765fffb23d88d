//! Base root filesystems of distributions whose servers this machine cannot reach (Ubuntu's
//! cloud images, a CentOS Stream tarball): the real elements fetch small fixture root
//! filesystems from a server on 127.0.0.1, verify them, unpack them and run their phases in a
//! real chroot, where the distribution's package tool is a fixture that records its calls.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Env, Run, repo, script, write};

/// Serves the files under `dir` over HTTP/1.0 on 127.0.0.1 (GET only), for the test's life.
fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            // The query is not part of the file's name (git's dumb HTTP asks
            // `info/refs?service=…` first).
            let target = line.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/").to_string();
            let file = dir.join(path.trim_start_matches('/'));
            match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let _ = write!(
                        stream,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(&body);
                }
                _ => {
                    let _ = write!(
                        stream,
                        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    );
                }
            }
        }
    });
    port
}

/// A root filesystem just big enough for ccb's runner: bash and the few tools
/// install-packages uses, copied from the host with their libraries, and a fake package tool.
pub(crate) fn mini_rootfs(root: &Path, package_tool: &str) {
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "etc",
        "var/log",
        // The fake package tools log here: the committed layers' /var/log is emptied.
        "var/lib",
        "tmp",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    for tool in [
        "bash",
        "find",
        "head",
        "cat",
        "env",
        "mkdir",
        "install",
        "grep",
        "chmod",
        "rm",
        "basename",
        "dpkg-query",
        "sed",
        "dirname",
        "mv",
        "cp",
        "ln",
        "sort",
        "chown",
        "touch",
        "tr",
        "cut",
        "stat",
        "mktemp",
    ] {
        let host = PathBuf::from(format!("/usr/bin/{tool}"));
        std::fs::copy(&host, root.join(format!("usr/bin/{tool}"))).unwrap();
        let ldd = Command::new("ldd").arg(&host).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let lib = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from);
            if let Some(lib) = lib {
                let dest = root.join(lib.strip_prefix("/").unwrap());
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                if !dest.exists() {
                    std::fs::copy(&lib, &dest).unwrap();
                }
            }
        }
    }
    script(
        root.join(format!("usr/bin/{package_tool}")),
        &format!("#!/bin/bash\necho \"{package_tool} $*\" >> /var/lib/fake-{package_tool}.log\n"),
    );
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Enough of the user database for the finalise steps of a disk (`chown root:root`).
    write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n");
    write(root.join("etc/group"), "root:x:0:\n");
}

pub(crate) fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A project whose `fake-ubuntu` and `fake-centos` bases come from a server on 127.0.0.1:
/// real phases in a real chroot in seconds (other modules build on it too).
pub(crate) struct Fixture {
    pub env: Env,
    _dir: tempfile::TempDir,
    pub project: PathBuf,
    pub served: PathBuf,
    pub port: u16,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        // Ubuntu: a squashfs root filesystem and its SHA256SUMS.
        let ubuntu = dir.path().join("ubuntu-root");
        mini_rootfs(&ubuntu, "apt-get");
        std::fs::create_dir_all(served.join("ubuntu")).unwrap();
        let sq = served.join("ubuntu/noble-server-cloudimg-amd64.squashfs");
        let st = Command::new("mksquashfs")
            .arg(&ubuntu)
            .arg(&sq)
            .args(["-noappend", "-quiet", "-no-progress"])
            .status()
            .expect("mksquashfs (squashfs-tools) is installed");
        assert!(st.success());
        write(
            served.join("ubuntu/SHA256SUMS"),
            &format!("{} *noble-server-cloudimg-amd64.squashfs\n", sha256(&sq)),
        );
        // CentOS: a root tarball, pinned by digest in the manifest.
        let centos = dir.path().join("centos-root");
        mini_rootfs(&centos, "dnf");
        std::fs::create_dir_all(served.join("centos")).unwrap();
        let st = Command::new("tar")
            .arg("-czf")
            .arg(served.join("centos/rootfs.tar.gz"))
            .arg("-C")
            .arg(&centos)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let port = serve(served.clone());
        let project = dir.path().join("project");
        write(
            project.join("manifests/sites.ncl"),
            "{ local = { name = \"Local\", baremetal = true, kind = 'local, path = \"out\" } }\n",
        );
        let f = Self {
            env: Env::new(),
            _dir: dir,
            project,
            served,
            port,
        };
        f.images(&sha256(&f.served.join("centos/rootfs.tar.gz")));
        f
    }

    pub(crate) fn images(&self, centos_sha: &str) {
        self.images_with(centos_sha, "");
    }

    pub(crate) fn images_with(&self, centos_sha: &str, extra: &str) {
        let port = self.port;
        write(
            self.project.join("manifests/images.ncl"),
            &format!(
                r#"{{
  fake-ubuntu = {{
    name = "Fake-Ubuntu",
    elements = ["ubuntu"],
    formats = ['qcow2],
    env = {{ DIB_RELEASE = "noble", DIB_CLOUD_IMAGES = "http://127.0.0.1:{port}/ubuntu" }},
  }},
  fake-centos = {{
    name = "Fake-CentOS",
    elements = ["centos"],
    formats = ['qcow2],
    env = {{
      DIB_CENTOS_ROOTFS_URL = "http://127.0.0.1:{port}/centos/rootfs.tar.gz",
      DIB_CENTOS_ROOTFS_SHA256 = "{centos_sha}",
    }},
  }},
{extra}}}
"#
            ),
        );
    }

    pub(crate) fn ccb(&self, rest: &[&str]) -> Run {
        let elements = repo().join("elements");
        let mut args = vec!["--root", self.project.to_str().unwrap()];
        args.extend_from_slice(rest);
        args.push("--element-path");
        args.push(elements.to_str().unwrap());
        self.env.run(&args)
    }

    fn downloads(&self) -> PathBuf {
        self.env.cache.path().join("downloads/image-cache")
    }

    pub(crate) fn layer_tree(&self, id: &str) -> PathBuf {
        self.env.layer_tree(id)
    }
}

#[test]
fn ubuntu_and_centos_bases_come_from_verified_downloads() {
    let f = Fixture::new();

    // A wrong pinned digest: a clear error naming both digests, nothing stored.
    f.images(&"0".repeat(64));
    let bad = f.ccb(&["build", "fake-centos", "--until", "layer"]).fails();
    bad.stderr_has("sha256 mismatch")
        .stderr_has(&format!("expected {}", "0".repeat(64)))
        .stderr_has("element `centos`, root.d/10-centos-rootfs failed");
    assert!(!f.downloads().join("centos/rootfs.tar.gz").exists());
    assert!(!f.downloads().join("centos/rootfs.tar.gz.part").exists());

    // The right digest: both distributions build side by side.
    f.images(&sha256(&f.served.join("centos/rootfs.tar.gz")));
    let run = f
        .ccb(&["build", "--until", "layer", "-j", "2", "--format", "json"])
        .ok();
    let statuses: Vec<String> = run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["id"].as_str().unwrap(),
                a["status"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| s.ends_with(" built")).count(),
        4,
        "{statuses:?}"
    );

    // Packages went through each distribution's own tool, recommends/weak deps off.
    let apt = std::fs::read_to_string(
        f.layer_tree("layer:fake-ubuntu:amd64")
            .join("var/lib/fake-apt-get.log"),
    )
    .unwrap();
    assert!(
        apt.contains("APT::Install-Recommends=false -o APT::Install-Suggests=false install "),
        "{apt}"
    );
    assert!(apt.contains("linux-image-generic"), "{apt}");
    let dnf = std::fs::read_to_string(
        f.layer_tree("layer:fake-centos:amd64")
            .join("var/lib/fake-dnf.log"),
    )
    .unwrap();
    assert!(
        dnf.contains("--setopt=install_weak_deps=False --setopt=keepcache=True install"),
        "{dnf}"
    );
    assert!(dnf.contains("dracut-config-generic"), "{dnf}");
    // pkg-map translated the base element's Debian names for the redhat family.
    let words: Vec<&str> = dnf.split_whitespace().collect();
    assert!(
        words.contains(&"iproute") && !words.contains(&"iproute2"),
        "{dnf}"
    );
    assert!(!dnf.contains("apt-get"), "{dnf}");

    // The downloads are cached and verified: a tampered SHA256SUMS stops the next base build.
    assert!(
        f.downloads()
            .join("ubuntu/noble-server-cloudimg-amd64.squashfs")
            .is_file()
    );
    write(
        f.served.join("ubuntu/SHA256SUMS"),
        &format!("{} *noble-server-cloudimg-amd64.squashfs\n", "1".repeat(64)),
    );
    let forced = f
        .ccb(&[
            "build",
            "fake-ubuntu",
            "--until",
            "base",
            "--force",
            "fake-ubuntu",
        ])
        .fails();
    forced.stderr_has("sha256 mismatch");
}

#[test]
fn cc_snapshot_is_installed_from_a_pinned_artifact_served_locally() {
    let f = Fixture::new();
    let centos_sha = sha256(&f.served.join("centos/rootfs.tar.gz"));
    // A stand-in for Chameleon's cc-snapshot, whose upstream this machine cannot reach.
    let tool = "#!/bin/bash\n[ \"${1:-}\" = -h ] && { echo 'usage: cc-snapshot [-h] name'; exit 0; }\nexit 1\n";
    write(f.served.join("cc-snapshot/cc-snapshot"), tool);
    let good = sha256(&f.served.join("cc-snapshot/cc-snapshot"));
    f.images_with(
        &centos_sha,
        r#"  snap = {
    name = "Snap",
    from = "fake-ubuntu",
    elements = ["cc-snapshot"],
    artifacts = { CC_SNAPSHOT_SOURCE = "cc-snapshot" },
  },
"#,
    );
    let artifacts = |sha: &str| {
        write(
            f.project.join("manifests/artifacts.ncl"),
            &format!(
                r#"{{
  cc-snapshot = {{
    url = "http://127.0.0.1:{}/cc-snapshot/cc-snapshot",
    sha256 = "{sha}",
  }},
}}
"#,
                f.port
            ),
        )
    };

    // A digest that does not match what the server sends: the fetch fails naming the artifact
    // and both digests, stores nothing, and the layer that needs it never runs.
    artifacts(&"a".repeat(64));
    let bad = f.ccb(&["build", "snap", "--until", "layer"]).fails();
    bad.stderr_has("artifact `cc-snapshot`")
        .stderr_has(&format!("expected {}", "a".repeat(64)))
        .stderr_has(&format!("actual   {good}"));
    let stored: Vec<_> = std::fs::read_dir(f.env.cache.path().join("artifacts"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(stored.is_empty(), "nothing stored: {stored:?}");

    // The right digest: fetched once, verified, and installed by the real element.
    artifacts(&good);
    let run = f
        .ccb(&["build", "snap", "--until", "layer", "--format", "json"])
        .ok();
    let fetch = run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "fetch:cc-snapshot")
        .cloned()
        .unwrap();
    assert_eq!(fetch["status"], "built", "{fetch}");
    let installed = f.layer_tree("layer:snap:amd64").join("usr/bin/cc-snapshot");
    assert_eq!(std::fs::read_to_string(&installed).unwrap(), tool);
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let store_copy = f.env.cache.path().join("artifacts").join(&good);
    assert_eq!(std::fs::read_to_string(&store_copy).unwrap(), tool);
    // Its dependencies went through the distribution's package tool.
    let apt = std::fs::read_to_string(
        f.layer_tree("layer:snap:amd64")
            .join("var/lib/fake-apt-get.log"),
    )
    .unwrap();
    for pkg in ["libguestfs-tools", "qemu-utils", "python3-glanceclient"] {
        assert!(apt.contains(pkg), "{pkg} not installed: {apt}");
    }

    // Once fetched, the artifact is never downloaded again: with the server's copy gone the
    // fetch is cached and a forced rebuild of the layer still finds it.
    std::fs::remove_file(f.served.join("cc-snapshot/cc-snapshot")).unwrap();
    f.ccb(&["build", "snap", "--until", "layer", "--force", "snap"])
        .ok();
}

/// An element `name` of the fixture project running the real `hooks` (paths under the repo's
/// `elements/`, each copied into its phase) in a root whose apt-get fails `update` as it does
/// when a vendor repository is unreachable: exit 100 when the script asked to be told
/// (Error-Mode=any); install-packages' own update passes. apt's directories, as a real Ubuntu
/// root has them.
fn unreachable_repository_element(f: &Fixture, name: &str, hooks: &[&str]) -> PathBuf {
    let el = f.project.join("elements").join(name);
    write(el.join("README.rst"), &format!("{name}\n"));
    for hook in hooks {
        let (phase, file) = hook.rsplit_once('/').unwrap();
        let phase = phase.rsplit('/').next().unwrap();
        std::fs::create_dir_all(el.join(phase)).unwrap();
        std::fs::copy(
            repo().join("elements").join(hook),
            el.join(phase).join(file),
        )
        .unwrap();
    }
    script(
        el.join("pre-install.d/01-unreachable-apt"),
        "#!/bin/bash\nset -eu\nmkdir -p /etc/apt/sources.list.d /etc/apt/preferences.d\nprintf '#!/bin/bash\\ncase \" $* \" in *Error-Mode=any*\" update \"*) echo \"E: Failed to fetch\" >&2; exit 100;; esac\\n' > /usr/bin/apt-get\nchmod +x /usr/bin/apt-get\n",
    );
    el
}

/// `manifests/artifacts.ncl` of the fixture project: each (name, file) pinned by its digest.
fn file_artifacts(f: &Fixture, files: &[(&str, &Path)]) {
    let entries: Vec<String> = files
        .iter()
        .map(|(name, path)| {
            format!(
                "{name} = {{ url = \"file://{}\", sha256 = \"{}\" }}",
                path.display(),
                sha256(path)
            )
        })
        .collect();
    write(
        f.project.join("manifests/artifacts.ncl"),
        &format!("{{ {} }}\n", entries.join(", ")),
    );
}

/// A vendor repository apt cannot fetch fails where it is added, naming the variable that
/// points it at a mirror: the real `05-cc-rocm-repo` of cc-ubuntu24.04-rocm, run in a fixture
/// root whose apt-get fails `update` as it does when the repository is unreachable.
/// CI cost: about 5 s (one fixture base and a failing layer).
#[test]
fn an_unreachable_vendor_repository_names_its_override_variable() {
    let f = Fixture::new();
    unreachable_repository_element(
        &f,
        "rocm-repo",
        &["cc-ubuntu24.04-rocm/pre-install.d/05-cc-rocm-repo"],
    );
    let key = f.project.join("private/rocm.gpg");
    write(&key, "binary key");
    file_artifacts(&f, &[("rocm-key", &key)]);
    f.images_with(
        &sha256(&f.served.join("centos/rootfs.tar.gz")),
        "  rocm = { name = \"Rocm\", from = \"fake-ubuntu\", elements = [\"rocm-repo\"], artifacts = { CC_ROCM_KEY = \"rocm-key\" }, env = { CC_ROCM_REPO_URL = \"http://127.0.0.1:9/rocm\", CC_AMDGPU_REPO_URL = \"http://127.0.0.1:9/amdgpu\" } },\n",
    );
    f.ccb(&["build", "rocm", "--until", "layer"])
        .fails()
        .stderr_has("apt-get update failed for AMD's repositories")
        .stderr_has("set CC_ROCM_REPO_URL and CC_AMDGPU_REPO_URL");
}

/// The same for NVIDIA's CUDA repository: the real `05-cc-cuda-repo` and cc-cuda's
/// environment install a keyring package built with `dpkg-deb -b` as NVIDIA's is laid out
/// (a keyring in /usr/share/keyrings, an apt source naming NVIDIA's host), with the host's
/// real dpkg, point its source at CC_CUDA_REPO_URL, and fail naming that variable when apt
/// cannot fetch it. CI cost: about 5 s (one fixture base and a failing layer).
#[test]
fn an_unreachable_cuda_repository_names_its_override_variable() {
    let f = Fixture::new();
    let el = unreachable_repository_element(
        &f,
        "cuda-repo",
        &[
            "cc-cuda/environment.d/20-cc-cuda.bash",
            "cc-cuda/pre-install.d/05-cc-cuda-repo",
        ],
    );
    // The host's dpkg (and what it checks for on its PATH), with their libraries: the
    // fixture root has only a fake package tool.
    script(
        el.join("extra-data.d/10-host-dpkg"),
        "#!/bin/bash\nset -eu\nroot=$TMP_MOUNT_PATH\n\
         for tool in dpkg dpkg-deb dpkg-split dpkg-query tar diff sh ldconfig start-stop-daemon rm; do\n\
           bin=$(command -v \"$tool\")\n\
           install -D \"$(readlink -f \"$bin\")\" \"$root/usr/bin/$tool\"\n\
           for lib in $(ldd \"$bin\" | grep -o '/[^ ]*'); do\n\
             [ -e \"$root$lib\" ] || install -D \"$lib\" \"$root$lib\"\n\
           done\n\
         done\n\
         mkdir -p \"$root/var/lib/dpkg/info\" \"$root/var/lib/dpkg/updates\" \"$root/usr/share/keyrings\"\n\
         touch \"$root/var/lib/dpkg/status\" \"$root/var/lib/dpkg/available\"\n",
    );
    let pkg = f.project.join("private/cuda-keyring");
    write(
        pkg.join("DEBIAN/control"),
        "Package: cuda-keyring\nVersion: 1.1-1\nArchitecture: all\nMaintainer: fixture <f@example.org>\nDescription: NVIDIA's CUDA repository keyring, as laid out\n",
    );
    write(
        pkg.join("usr/share/keyrings/cuda-archive-keyring.gpg"),
        "binary key",
    );
    write(
        pkg.join("etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list"),
        "deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] https://vendor.invalid/compute/cuda/repos/ubuntu2404/x86_64/ /\n",
    );
    let deb = f.project.join("private/cuda-keyring_1.1-1_all.deb");
    let built = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&pkg)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    file_artifacts(&f, &[("cuda-keyring", &deb)]);
    f.images_with(
        &sha256(&f.served.join("centos/rootfs.tar.gz")),
        "  cuda = { name = \"Cuda\", from = \"fake-ubuntu\", elements = [\"cuda-repo\"], artifacts = { CC_CUDA_KEYRING = \"cuda-keyring\" }, env = { CC_CUDA_REPO_URL = \"http://127.0.0.1:9/cuda\" } },\n",
    );
    f.ccb(&["build", "cuda", "--until", "layer"])
        .fails()
        .stderr_has("cc-cuda: /etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list -> http://127.0.0.1:9/cuda/ubuntu2404/x86_64/")
        .stderr_has("apt-get update failed for NVIDIA's repository http://127.0.0.1:9/cuda/ubuntu2404/x86_64/")
        .stderr_has("set CC_CUDA_REPO_URL");
}

/// Ubuntu 22.04's base: the jammy cloud image from the same server (its own name and
/// SHA256SUMS entry), unpacked and set up by the real `ubuntu` element as for noble.
/// CI cost: about 5 s (one fixture base and layer).
#[test]
fn ubuntu_22_04_base_is_jammy_from_its_cloud_image() {
    let f = Fixture::new();
    let root = f.served.parent().unwrap().join("jammy-root");
    mini_rootfs(&root, "apt-get");
    write(root.join("etc/fixture-release"), "jammy\n");
    let sq = f.served.join("ubuntu/jammy-server-cloudimg-amd64.squashfs");
    let st = Command::new("mksquashfs")
        .arg(&root)
        .arg(&sq)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success());
    let noble = f.served.join("ubuntu/noble-server-cloudimg-amd64.squashfs");
    write(
        f.served.join("ubuntu/SHA256SUMS"),
        &format!(
            "{} *noble-server-cloudimg-amd64.squashfs\n{} *jammy-server-cloudimg-amd64.squashfs\n",
            sha256(&noble),
            sha256(&sq)
        ),
    );
    f.images_with(
        &sha256(&f.served.join("centos/rootfs.tar.gz")),
        &format!(
            r#"  fake-ubuntu22 = {{
    name = "Fake-Ubuntu22.04",
    elements = ["ubuntu"],
    formats = ['qcow2],
    env = {{ DIB_RELEASE = "jammy", DIB_CLOUD_IMAGES = "http://127.0.0.1:{}/ubuntu" }},
  }},
"#,
            f.port
        ),
    );
    f.ccb(&["build", "fake-ubuntu22", "--until", "layer"]).ok();
    let base = f.layer_tree("base:fake-ubuntu22:amd64");
    assert_eq!(
        std::fs::read_to_string(base.join("etc/fixture-release")).unwrap(),
        "jammy\n"
    );
    let apt = std::fs::read_to_string(
        f.layer_tree("layer:fake-ubuntu22:amd64")
            .join("var/lib/fake-apt-get.log"),
    )
    .unwrap();
    assert!(apt.contains("linux-image-generic"), "{apt}");
    assert!(
        f.downloads()
            .join("ubuntu/jammy-server-cloudimg-amd64.squashfs")
            .is_file()
    );
}

/// Ubuntu 26.04's base: the resolute cloud image from the same server, and the initramfs made
/// by dracut in its generic mode. The kernel, dracut and lsinitrd are fixtures here; what is
/// real is the element's work: the apt install, the configuration that keeps every later
/// regeneration generic, one `--no-hostonly` run per kernel, and the check that the NVMe
/// driver (whose absence hung upstream's first 26.04 images) is inside.
#[test]
fn ubuntu_26_04_base_is_resolute_with_a_generic_dracut_initramfs() {
    let f = Fixture::new();
    let root = f.served.parent().unwrap().join("resolute-root");
    mini_rootfs(&root, "apt-get");
    let kver = "7.0.0-10-generic";
    let modules = root.join(format!("usr/lib/modules/{kver}"));
    std::fs::create_dir_all(modules.join("kernel/drivers/nvme/host")).unwrap();
    write(
        modules.join("modules.order"),
        "kernel/drivers/nvme/host/nvme.ko\n",
    );
    write(
        modules.join("kernel/drivers/nvme/host/nvme.ko.zst"),
        "module",
    );
    std::fs::create_dir_all(root.join("boot")).unwrap();
    // dracut records its arguments and writes the image it is asked for; lsinitrd lists what
    // the served rootfs says the initramfs holds.
    script(
        root.join("usr/bin/dracut"),
        "#!/bin/bash\necho \"dracut $*\" >> /var/lib/fake-dracut.log\nfor a; do out=$a; done\necho initramfs > \"$out\"\n",
    );
    // lsinitrd lists an initramfs with the NVMe driver only when the image's env says so.
    script(
        root.join("usr/bin/lsinitrd"),
        &format!(
            "#!/bin/bash\necho usr/lib/modules/{kver}/kernel/drivers/ata/ahci.ko.zst\n\
             [ \"${{FAKE_INITRD_NVME:-}}\" = yes ] && echo usr/lib/modules/{kver}/kernel/drivers/nvme/host/nvme.ko.zst\n\
             exit 0\n"
        ),
    );
    let sq = f
        .served
        .join("ubuntu/resolute-server-cloudimg-amd64.squashfs");
    let st = Command::new("mksquashfs")
        .arg(&root)
        .arg(&sq)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap();
    assert!(st.success());
    let noble = f.served.join("ubuntu/noble-server-cloudimg-amd64.squashfs");
    write(
        f.served.join("ubuntu/SHA256SUMS"),
        &format!(
            "{} *noble-server-cloudimg-amd64.squashfs\n{} *resolute-server-cloudimg-amd64.squashfs\n",
            sha256(&noble),
            sha256(&sq)
        ),
    );
    let centos_sha = sha256(&f.served.join("centos/rootfs.tar.gz"));
    let images = |nvme: &str| {
        f.images_with(
            &centos_sha,
            &format!(
                r#"  fake-ubuntu26 = {{
    name = "Fake-Ubuntu26.04",
    elements = ["ubuntu", "initramfs"],
    formats = ['qcow2],
    env = {{
      DIB_RELEASE = "resolute",
      DIB_INITRAMFS = "dracut",
      DIB_CLOUD_IMAGES = "http://127.0.0.1:{}/ubuntu",
      FAKE_INITRD_NVME = "{nvme}",
    }},
  }},
"#,
                f.port
            ),
        )
    };

    // An initramfs without the NVMe driver is the failure upstream shipped: the build stops.
    images("no");
    let bad = f
        .ccb(&["build", "fake-ubuntu26", "--until", "layer"])
        .fails();
    bad.stderr_has("lacks nvme although dracut ran with --no-hostonly")
        .stderr_has("element `initramfs`");

    images("yes");
    f.ccb(&["build", "fake-ubuntu26", "--until", "layer"]).ok();
    let tree = f.layer_tree("layer:fake-ubuntu26:amd64");
    let apt = std::fs::read_to_string(tree.join("var/lib/fake-apt-get.log")).unwrap();
    assert!(apt.contains(" install ") && apt.contains("dracut"), "{apt}");
    let conf = std::fs::read_to_string(tree.join("etc/dracut.conf.d/10-cc-generic.conf")).unwrap();
    assert!(conf.contains("hostonly=\"no\""), "{conf}");
    let dracut = std::fs::read_to_string(tree.join("var/lib/fake-dracut.log")).unwrap();
    assert_eq!(
        dracut.trim(),
        format!(
            "dracut --force --no-hostonly --add-drivers nvme --kver {kver} /boot/initrd.img-{kver}"
        ),
    );
    assert_eq!(
        std::fs::read_to_string(tree.join(format!("boot/initrd.img-{kver}"))).unwrap(),
        "initramfs\n"
    );
    assert!(
        f.downloads()
            .join("ubuntu/resolute-server-cloudimg-amd64.squashfs")
            .is_file()
    );
}

/// A secret input (the vGPU license token) and an EULA-bound artifact (the vGPU guest driver):
/// read at build time, handed to the scripts as paths, and nowhere else: not in a key, the
/// plan, `explain`, JSON, the logs (a script that prints the token logs `[redacted]`), a
/// remote cache, or the store outside the image's own tree; for the `file` and the `env`
/// forms, and for a child layered on the image. The actions holding them build here and are
/// neither uploaded nor taken from the cache (a second store builds them again while the
/// base comes from the cache). Its disk is built too: the whole store, disk outputs and logs
/// included, holds the secrets only inside the image (its trees and raw disk), and the disk's
/// record names them. Only the secret's presence is keyed, and an image holding one is not
/// published to a public site unless the manifest allows it.
/// CI cost: about 20 s (four fixture layers, one of them twice, and one fixture disk).
#[test]
fn a_secret_input_reaches_the_build_and_nothing_else() {
    let f = Fixture::new();
    let nginx = crate::common::Nginx::start();
    let secret = "s3cr3t-token-7f1e2d";
    let env_secret = "env-t0ken-9a8b7c6d";
    let driver_bytes = "EULA-bound-driver-5d4c3b2a";
    let all = [secret, env_secret, driver_bytes];
    let token = f.project.join("private/token.tok");
    write(&token, &format!("{secret}\n"));
    let driver = f.project.join("private/driver.run");
    write(&driver, driver_bytes);
    write(
        f.project.join("manifests/artifacts.ncl"),
        &format!(
            "{{ eula-driver = {{ url = \"file://{}\", sha256 = \"{}\", secret = true }} }}\n",
            driver.display(),
            sha256(&driver)
        ),
    );
    script(
        f.project.join("elements/licensed/install.d/50-licensed"),
        "#!/bin/bash\nset -eu\ntest -r \"$LICENSE_TOKEN\"\ninstall -D -m 0600 \"$LICENSE_TOKEN\" /etc/licensed/token\n\
         if [ -n \"${VGPU_DRIVER:-}\" ]; then install -D -m 0600 \"$VGPU_DRIVER\" /opt/driver.run; fi\n\
         echo \"licensed: token is $(cat \"$LICENSE_TOKEN\")\"\n",
    );
    write(f.project.join("elements/licensed/README.rst"), "licensed\n");
    script(
        f.project
            .join("elements/on-licensed/install.d/50-on-licensed"),
        "#!/bin/bash\nset -eu\necho \"child: the parent's token is $(cat /etc/licensed/token)\"\n",
    );
    write(
        f.project.join("elements/on-licensed/README.rst"),
        "on-licensed\n",
    );
    let centos = sha256(&f.served.join("centos/rootfs.tar.gz"));
    let images = |secrets: &str, public_ok: bool| {
        f.images_with(
            &centos,
            &format!(
                "  licensed = {{ name = \"Licensed\", from = \"fake-ubuntu\", elements = [\"licensed\"], {secrets} artifacts = {{ VGPU_DRIVER = \"eula-driver\" }}, public_with_secrets = {public_ok} }},\n\
                 \x20 licensed-child = {{ name = \"Licensed-Child\", from = \"licensed\", elements = [\"on-licensed\"] }},\n\
                 \x20 licensed-env = {{ name = \"Licensed-Env\", from = \"fake-ubuntu\", elements = [\"licensed\"], secrets = {{ LICENSE_TOKEN = {{ env = \"CCB_TEST_TOKEN\" }} }} }},\n"
            ),
        )
    };
    let with_secret = "secrets = { LICENSE_TOKEN = { file = \"private/token.tok\" } },";
    images(with_secret, false);
    let key = |f: &Fixture| -> String {
        let plan = f
            .ccb(&["build", "licensed", "--dry-run", "--format", "json"])
            .ok();
        assert!(!plan.stdout.contains(secret), "{}", plan.stdout);
        plan.json()["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "layer:licensed:amd64")
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let with_token = |env: &Env, rest: &[&str]| -> Run {
        let elements = repo().join("elements");
        let out = env
            .cmd()
            .env("CCB_TEST_TOKEN", env_secret)
            .arg("--root")
            .arg(&f.project)
            .args(rest)
            .arg("--element-path")
            .arg(&elements)
            .output()
            .unwrap();
        Run::from(out)
    };

    // Missing: the build stops naming the secret and where it was looked for.
    std::fs::remove_file(&token).unwrap();
    f.ccb(&["build", "licensed", "--until", "layer"])
        .fails()
        .stderr_has("secret `LICENSE_TOKEN` (file private/token.tok)");
    write(&token, &format!("{secret}\n"));

    let build = [
        "build",
        "licensed-child",
        "licensed-env",
        "--until",
        "layer",
        "--format",
        "json",
        "-v",
        "--remote-cache",
        &nginx.url,
        "--remote-cache-upload",
    ];
    let built = with_token(&f.env, &build).ok();
    for s in all {
        assert!(!built.stdout.contains(s) && !built.stderr.contains(s));
    }
    assert!(
        built.stderr.contains("token is [redacted]"),
        "{}",
        built.stderr
    );
    let report = built.json();
    let mut not_shared: Vec<&str> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["not_shared"] == "holds a secret: not shared")
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    not_shared.sort();
    assert_eq!(
        not_shared,
        [
            "fetch:eula-driver",
            "layer:licensed-child:amd64",
            "layer:licensed-env:amd64",
            "layer:licensed:amd64",
        ],
        "{report}"
    );
    // Only the parent image's base and layer went to the cache; it holds none of the secrets.
    assert_eq!(report["remote"]["uploaded"], 2, "{report}");
    let in_cache = Command::new("grep")
        .args(["-rlF", "-e", secret, "-e", env_secret, "-e", driver_bytes])
        .arg(nginx.data())
        .output()
        .unwrap();
    assert!(in_cache.stdout.is_empty(), "{in_cache:?}");

    // Its disk too: the outputs' record names the secrets the disk holds.
    let disk = with_token(&f.env, &["build", "licensed", "--format", "json"]).ok();
    let disk_key = disk.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "disk:licensed:amd64")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let record =
        std::fs::read_to_string(f.env.cache.path().join(format!("outputs/{disk_key}.json")))
            .unwrap();
    assert!(
        record.contains("LICENSE_TOKEN") && record.contains("VGPU_DRIVER"),
        "{record}"
    );
    let tree = f.layer_tree("layer:licensed:amd64");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/licensed/token")).unwrap(),
        format!("{secret}\n")
    );
    assert_eq!(
        std::fs::read_to_string(
            f.layer_tree("layer:licensed-env:amd64")
                .join("etc/licensed/token")
        )
        .unwrap(),
        env_secret
    );
    // The whole store: the secrets are in the images' own trees (and the licensed file in the
    // artifact store, where it was fetched to), never in a log, key document, record or work
    // file; the logs say `[redacted]` where the scripts printed them (the child's too).
    let grep = Command::new("grep")
        .args(["-rlF", "-e", secret, "-e", env_secret, "-e", driver_bytes])
        .arg(f.env.cache.path())
        .output()
        .unwrap();
    for hit in String::from_utf8_lossy(&grep.stdout).lines() {
        assert!(
            hit.ends_with("/tree/etc/licensed/token")
                || hit.ends_with("/tree/opt/driver.run")
                // The disk image itself holds them, as its tree does.
                || hit.ends_with("/Licensed.raw")
                || (hit.contains("/artifacts/")
                    && std::fs::read_to_string(hit).unwrap() == driver_bytes),
            "a secret found in {hit}"
        );
    }
    assert!(crate::common::logs_contain(
        f.env.cache.path(),
        "licensed: token is [redacted]"
    ));
    assert!(crate::common::logs_contain(
        f.env.cache.path(),
        "child: the parent's token is [redacted]"
    ));
    for q in [
        vec!["query", "explain", "licensed-child"],
        vec!["query", "manifest", "licensed", "--format", "json"],
    ] {
        let out = f.ccb(&q).ok();
        for s in all {
            assert!(!out.stdout.contains(s), "{q:?}: {}", out.stdout);
        }
    }
    let explain = f.ccb(&["query", "explain", "licensed-child"]).ok();
    assert!(
        explain.stdout.contains("holds a secret: not shared"),
        "{}",
        explain.stdout
    );

    // Another host with the same cache: the base comes from it, the secret-holding actions
    // are built there again (never downloaded).
    let other = Env::new();
    let again = with_token(&other, &build).ok().json();
    for a in again["actions"].as_array().unwrap() {
        let expected =
            if a["id"] == "base:fake-ubuntu:amd64" || a["id"] == "layer:fake-ubuntu:amd64" {
                "remote"
            } else {
                "none"
            };
        assert_eq!(a["from"].as_str().unwrap_or("none"), expected, "{a}");
    }

    // Its bytes are not keyed (another token, same key), its presence is.
    let k1 = key(&f);
    write(&token, "another-token");
    assert_eq!(key(&f), k1);
    images("", false);
    assert_ne!(key(&f), k1);

    // Publishing: a public site gets the image only when the manifest allows it.
    images(with_secret, false);
    let outs = f.project.join("outs");
    write(outs.join("Licensed.qcow2"), "disk");
    write(
        outs.join("SHA256SUMS"),
        &format!("{}  Licensed.qcow2\n", sha256(&outs.join("Licensed.qcow2"))),
    );
    write(
        outs.join("Licensed.d/Licensed_provenance.json"),
        r#"{"build-distro": "ubuntu", "build-release": "noble", "build-variant": "base", "build-repo": "https://example.org/ccb.git", "build-repo-commit": "0000000000000000000000000000000000000000", "build-timestamp": "2026-12-06 00:00:00", "build-tag": "Licensed-2026-12-06 00:00:00", "build-ipa": "false", "chameleon-supported": "true"}"#,
    );
    write(
        f.project.join("manifests/sites.ncl"),
        "{ open = { name = \"Open\", baremetal = true, public = true, kind = 'local, path = \"pub\" } }\n",
    );
    let publish = |f: &Fixture| {
        f.ccb(&[
            "publish",
            "--outputs",
            outs.to_str().unwrap(),
            "Licensed",
            "--scope",
            "test",
        ])
    };
    publish(&f)
        .fails()
        .stderr_has("holds secret inputs (LICENSE_TOKEN, VGPU_DRIVER) and Open is public");
    assert!(!f.project.join("pub").exists());
    images(with_secret, true);
    let allowed = publish(&f);
    assert!(
        !allowed.stderr.contains("holds secret inputs"),
        "{}",
        allowed.stderr
    );
}
