//! diskimage-builder compatibility: DIB 3.43's own element library (from its PyPI wheel,
//! installed with pip so exec bits survive), used unchanged as a third-party source and layered
//! on a Debian image, each element's effect read back from the built disk with
//! `ccb inspect cat/ls`.
//!
//! One image holds every element (one bootstrap, one package run, one disk), and it has no
//! block-device element, so it also shows DIB's default disk layout. A child image calls a
//! command that does not exist: a warning without `--strict`, a failure with it.
//!
//! DIB's elements used (17): growroot, runtime-ssh-host-keys, modprobe, disable-nouveau,
//! openssh-server, journal-to-console, devuser, element-manifest, select-boot-kernel-initrd,
//! cleanup-kernel-initrd, sysctl, svc-map, dib-python, enable-serial-console,
//! cloud-init-growpart, cloud-init, dynamic-login. Elements sharing a name with ccb's own
//! (base, dib-init-system, package-installs, pkg-map, install-static, install-bin, manifests,
//! sysprep, debian, debian-minimal, cloud-init-datasources, bootloader, vm, dkms, ...) are
//! ccb's, which come first on the search path; the probe element below calls their tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Env, Run, leftovers, repo, row, script, write};

/// DIB's release whose elements are tested.
const DIB_VERSION: &str = "3.43.0";

/// Where the wheel is installed: kept between runs (the setup is skipped when it is there).
fn venv_dir() -> PathBuf {
    std::env::var_os("CCB_DIB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/dib-venv"))
}

fn find_elements(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/diskimage_builder/elements"))
        .find(|p| p.join("growroot/element-deps").is_file())
}

/// DIB's element directory, installing diskimage-builder into the venv first if it is not
/// there (under a lock, so two test runs never install at once).
fn dib_elements() -> PathBuf {
    let venv = venv_dir();
    if let Some(dir) = find_elements(&venv) {
        return dir;
    }
    let lock = format!("{}.lock", venv.display());
    let install = format!(
        "[ -x '{v}/bin/pip' ] || python3 -m venv '{v}'; \
         '{v}/bin/pip' install --quiet --disable-pip-version-check diskimage-builder=={DIB_VERSION}",
        v = venv.display()
    );
    let out = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", &install])
        .output()
        .expect("run flock");
    assert!(
        out.status.success(),
        "installing diskimage-builder {DIB_VERSION} with pip failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    find_elements(&venv).expect("the wheel holds diskimage_builder/elements")
}

/// The test's own elements: a probe that calls what DIB gives scripts (and what it lets
/// elements ship: svc-map, pkg-map files), and one that calls a command that does not exist.
fn probe_elements(dir: &Path) {
    let probe = dir.join("dib-compat-probe");
    write(probe.join("README.rst"), "Calls DIB's helpers.\n");
    write(
        probe.join("element-deps"),
        "dib-python\npackage-installs\nselect-boot-kernel-initrd\nsvc-map\nsysctl\n",
    );
    // What DIB's elements need from the OS that debian-minimal leaves out: systemd (they call
    // systemctl), sudo (devuser checks its file with visudo), a kernel (the smallest one).
    write(
        probe.join("package-installs.yaml"),
        "linux-image-cloud-amd64:\n  arch: amd64\nsudo:\nsystemd-sysv:\n",
    );
    write(
        probe.join("svc-map"),
        "dibcompat-svc:\n  debian: dibcompat-on-debian\n  default: dibcompat-elsewhere\n",
    );
    write(
        probe.join("pkg-map"),
        r#"{"family": {"debian": {"probe-generic": "probe-deb"}}, "default": {"probe-generic": "probe-other"}}"#,
    );
    // Outside the chroot: the element array, DIB_ENV, _LIB, sudo.
    script(
        probe.join("extra-data.d/50-dib-compat-probe"),
        r#"#!/bin/bash
set -eu
set -o pipefail
source "$_LIB/die"
eval declare -A image_elements=($(get_image_element_array))
[ -f "${image_elements[growroot]}/element-deps" ] || die "no growroot directory"
sudo mkdir -p "$TMP_MOUNT_PATH/etc/dib-compat"
printf '%s\n' "${!image_elements[@]}" | sort | sudo tee "$TMP_MOUNT_PATH/etc/dib-compat/elements" >/dev/null
echo "$DIB_ENV" | grep '^declare -x DIB_COMPAT_MARK=' | sudo tee "$TMP_MOUNT_PATH/etc/dib-compat/dib-env" >/dev/null
python3 -c 'import os, yaml; print(sorted(yaml.safe_load(os.environ["IMAGE_ELEMENT_YAML"]))[0])' \
    | sudo -E tee "$TMP_MOUNT_PATH/etc/dib-compat/first-element" >/dev/null
"#,
    );
    // In the chroot, after everything is installed: the tools DIB's elements ship.
    script(
        probe.join("post-install.d/90-dib-compat-probe"),
        r#"#!/bin/bash
set -eu
set -o pipefail
select-boot-kernel-initrd > /etc/dib-compat/kernel
svc-map dibcompat-svc > /etc/dib-compat/svc
sysctl-write-value vm.dib_compat_probe 13
readlink /usr/local/bin/dib-python > /etc/dib-compat/dib-python
pkg-map --element dib-compat-probe probe-generic > /etc/dib-compat/pkg-map
dib-init-system > /etc/dib-compat/init-system
mkdir -p /tmp/parts && printf '#!/bin/sh\necho ran > /etc/dib-compat/run-parts\n' > /tmp/parts/10-x
chmod +x /tmp/parts/10-x && dib-run-parts /tmp/parts && rm -r /tmp/parts
"#,
    );
    let missing = dir.join("dib-compat-missing");
    write(
        missing.join("README.rst"),
        "Calls a command that is not there.\n",
    );
    script(
        missing.join("install.d/50-call-a-missing-command"),
        "#!/bin/bash\n# Not under set -e: the script goes on, as so many do.\n\
         dib-compat-no-such-tool --enable\necho done > /etc/dib-compat-missing\n",
    );
}

struct Project {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn run(&self, rest: &[&str]) -> Run {
        let core = repo().join("elements");
        let mut args = vec!["--root", self.root.to_str().unwrap()];
        args.extend_from_slice(rest);
        if rest.first() == Some(&"build") {
            args.push("--element-path");
            args.push(core.to_str().unwrap());
        }
        self.env.run(&args)
    }

    fn cat(&self, disk: &Path, path: &str) -> String {
        self.run(&["inspect", "cat", disk.to_str().unwrap(), path])
            .ok()
            .stdout
    }

    fn ls(&self, disk: &Path, path: &str) -> Vec<String> {
        let run = self
            .run(&["inspect", "ls", disk.to_str().unwrap(), path])
            .ok();
        run.stdout.lines().map(str::to_string).collect()
    }
}

fn project() -> Project {
    let dib = dib_elements();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dibcompat");
    probe_elements(&root.join("elements"));
    let keys = root.join("files/authorized_keys");
    write(
        &keys,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDibCompatTestKey dib@compat\n",
    );
    write(
        root.join("manifests/sources.toml"),
        &format!(
            "# diskimage-builder {DIB_VERSION}'s own elements, unchanged.\n\
             [dib]\nurl = \"{}\"\nref = \"local\"\npath = \"elements\"\n",
            dib.parent().unwrap().display()
        ),
    );
    write(
        root.join("manifests/images.toml"),
        &format!(
            r#"[dibcompat]
name = "DIB-Compat"
description = "diskimage-builder's own elements on Debian"
elements = ["debian-minimal", "dib-compat-probe", "growroot", "runtime-ssh-host-keys", "disable-nouveau",
  "modprobe", "openssh-server", "journal-to-console", "devuser", "element-manifest",
  "cleanup-kernel-initrd", "enable-serial-console", "cloud-init-growpart", "cloud-init",
  "dynamic-login"]
arch = ["amd64"]
formats = ["raw"]

[dibcompat.provenance]
distro = "debian"
release = "bookworm"
variant = "dib-compat"

[dibcompat.env]
DIB_RELEASE = "bookworm"
DIB_PYTHON_VERSION = "3"
DIB_COMPAT_MARK = "from-the-manifest"
DIB_MODPROBE_BLACKLIST = "floppy pcspkr"
DIB_DEV_USER_USERNAME = "dibdev"
DIB_DEV_USER_PWDLESS_SUDO = "yes"
DIB_DEV_USER_AUTHORIZED_KEYS = "{keys}"
DIB_CLOUD_INIT_GROWPART_DEVICES = "['/']"

[dibcompat-missing]
name = "DIB-Compat-Missing"
from = "dibcompat"
elements = ["dib-compat-missing"]
"#,
            keys = keys.display()
        ),
    );
    Project {
        env: Env::new(),
        _dir: dir,
        root,
    }
}

#[test]
fn dib_elements_run_unchanged_and_their_effects_are_in_the_image() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "building images needs root (scripts/test runs as root)"
    );
    let p = project();
    let out = p.root.join("out");
    let build = p
        .run(&[
            "build",
            "//images:dibcompat",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok();
    let report = build.json();
    for action in report["actions"].as_array().unwrap() {
        assert_eq!(action["status"], "built", "{action}");
        assert!(
            action.get("warnings").is_none(),
            "no script of DIB's elements calls a missing command: {action}"
        );
    }
    let disk = out.join("DIB-Compat.raw");
    let cat = |path: &str| p.cat(&disk, path);
    let exists = |path: &str| {
        let (dir, name) = path.rsplit_once('/').unwrap();
        p.ls(&disk, if dir.is_empty() { "/" } else { dir })
            .iter()
            // `mode uid gid size name[ -> target]`
            .any(|l| l.split_whitespace().nth(4) == Some(name))
    };

    // No block-device element: DIB's default, one root filesystem (by label in fstab).
    let fstab = cat("/etc/fstab");
    assert!(
        fstab.contains("LABEL=cloudimg-rootfs / ext4"),
        "the default layout's root filesystem: {fstab}"
    );

    // dib-init-system + growroot, runtime-ssh-host-keys, dynamic-login: init-scripts/systemd
    // installed, then enabled by the elements' own `systemctl enable`.
    for unit in ["growroot", "ssh-keygen", "dynamic-login"] {
        let service = cat(&format!("/usr/lib/systemd/system/{unit}.service"));
        assert!(service.contains("[Unit]"), "{unit}.service: {service}");
        assert!(
            exists(&format!(
                "/etc/systemd/system/multi-user.target.wants/{unit}.service"
            )),
            "{unit}.service is enabled"
        );
    }
    assert!(cat("/usr/local/sbin/growroot").contains("growpart"));
    assert!(exists("/usr/local/sbin/runtime-ssh-host-keys.sh"));
    assert!(exists("/usr/local/bin/dynamic-login"));
    assert_eq!(cat("/etc/dib-compat/init-system"), "systemd\n");
    // runtime-ssh-host-keys' cleanup.d removed the build's host keys.
    assert!(
        !p.ls(&disk, "/etc/ssh")
            .iter()
            .any(|l| l.contains("ssh_host_"))
    );

    // modprobe (through get_image_element_array + sudo) with disable-nouveau's snippet, and
    // DIB_MODPROBE_BLACKLIST.
    assert!(cat("/etc/modprobe.d/disable-nouveau.conf").contains("blacklist nouveau"));
    assert_eq!(
        cat("/etc/modprobe.d/blacklist.conf"),
        "blacklist floppy\nblacklist pcspkr\n"
    );

    // openssh-server: enabled and hardened.
    assert!(exists(
        "/etc/systemd/system/multi-user.target.wants/ssh.service"
    ));
    assert!(cat("/etc/ssh/sshd_config").contains("\nMACs hmac-sha2-512-etm@openssh.com"));

    // journal-to-console, enable-serial-console.
    assert!(
        cat("/etc/systemd/journald.conf.d/log-to-console.conf").contains("ForwardToConsole=true")
    );
    assert!(cat("/etc/udev/rules.d/99-serial-console.rules").contains("getty@"));

    // devuser: the user, passwordless sudo, the key from a host file (extra-data.d).
    assert!(cat("/etc/passwd").contains("\ndibdev:"));
    assert_eq!(
        cat("/etc/sudoers.d/dibdev"),
        "dibdev ALL=(ALL) NOPASSWD:ALL\n"
    );
    assert!(cat("/home/dibdev/.ssh/authorized_keys").contains("dib@compat"));

    // element-manifest: IMAGE_ELEMENT, one per line, in the manifests directory.
    let manifest = cat("/etc/dib-manifests/dib-element-manifest");
    for e in ["growroot", "modprobe", "base", "dib-init-system"] {
        assert!(manifest.lines().any(|l| l == e), "{e} in {manifest}");
    }

    // cloud-init, cloud-init-growpart.
    assert!(exists(
        "/etc/systemd/system/cloud-init.target.wants/cloud-init.service"
    ));
    assert!(cat("/etc/cloud/cloud.cfg").contains("ssh_genkeytypes:  ['rsa', 'ecdsa', 'ed25519']"));
    assert!(cat("/etc/cloud/cloud.cfg.d/55-growpart.cfg").contains("devices: ['/']"));

    // What the probe saw of DIB's contract.
    let elements = cat("/etc/dib-compat/elements");
    assert!(
        elements.lines().any(|l| l == "svc-map") && elements.lines().any(|l| l == "base"),
        "get_image_element_array names every element: {elements}"
    );
    assert_eq!(
        cat("/etc/dib-compat/dib-env"),
        "declare -x DIB_COMPAT_MARK=\"from-the-manifest\"\n"
    );
    assert_eq!(cat("/etc/dib-compat/first-element"), "base\n");
    let kernel = cat("/etc/dib-compat/kernel");
    assert!(
        kernel.starts_with("vmlinuz-") && kernel.contains(":initrd.img-"),
        "select-boot-kernel-initrd: {kernel}"
    );
    // select-boot-kernel-initrd's cleanup.d removed what its extra-data.d put in the image.
    assert!(!exists("/usr/lib/diskimage-builder"));
    assert!(exists(&format!(
        "/boot/{}",
        kernel.split(':').next().unwrap()
    )));
    // svc-map: the merged map in the image, the distro's name for the service.
    assert!(cat("/usr/share/svc-map/services").contains("dibcompat-svc: dibcompat-on-debian"));
    assert_eq!(cat("/etc/dib-compat/svc"), "dibcompat-on-debian\n");
    assert!(cat("/etc/sysctl.d/vm.dib_compat_probe.conf").contains("vm.dib_compat_probe = 13"));
    assert!(
        cat("/etc/dib-compat/dib-python")
            .trim_end()
            .ends_with("python3")
    );
    assert_eq!(cat("/etc/dib-compat/pkg-map"), "probe-deb\n");
    assert_eq!(cat("/etc/dib-compat/run-parts"), "ran\n");

    // A command that does not exist: an error under --strict (naming element, script and
    // command), a warning without.
    let strict = p
        .run(&[
            "build",
            "//images:dibcompat-missing",
            "--until",
            "layer",
            "--strict",
        ])
        .fails();
    strict.stderr_has("dib-compat-missing");
    strict.stderr_has("50-call-a-missing-command");
    strict.stderr_has("dib-compat-no-such-tool");
    let lenient = p
        .run(&[
            "build",
            "//images:dibcompat-missing",
            "--until",
            "layer",
            "--format",
            "json",
        ])
        .ok();
    lenient.stderr_has(
        "element `dib-compat-missing`, install.d/50-call-a-missing-command: \
         `dib-compat-no-such-tool`: command not found",
    );
    let report = lenient.json();
    let layer = row(&report["actions"], "layer:dibcompat-missing:amd64");
    assert_eq!(
        layer["warnings"],
        serde_json::json!([{
            "element": "dib-compat-missing",
            "phase": "install.d",
            "script": "50-call-a-missing-command",
            "command": "dib-compat-no-such-tool",
        }])
    );
    // Nothing of the build machinery is left in the image.
    for (dir, name) in [
        ("/etc/dpkg/dpkg.cfg.d", "ccb-unsafe-io"),
        ("/usr/sbin", "policy-rc.d"),
        ("/tmp", "in_target.d"),
    ] {
        assert!(!exists(&format!("{dir}/{name}")), "{dir}/{name} is left");
    }
    assert_eq!(leftovers(p.env.cache.path()), Vec::<String>::new());
}
