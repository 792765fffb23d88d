//! The default image, end to end: `ccb build //images:debian12` makes a GPT disk bootable on
//! BIOS and UEFI, its layout is checked by reading the image file, and `ccb test` boots it
//! (TCG here) and runs the checks inside, and `ccb verify` builds it again from an empty
//! scratch store into the same raw and qcow2 bytes, while a second "host" builds
//! CC-Debian12-Devtools from its results in a shared cache; CC-Debian13 is booted on UEFI from
//! NVMe and on BIOS from SATA.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use std::process::Stdio;
use std::time::Duration;

use crate::common::{
    Env, Nginx, leftovers, logs_contain, processes_under, repo, row, sandbox_mounts, wait_until,
    write,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `blkid` of the filesystem at `offset` in `disk`: TYPE and LABEL.
fn probe(disk: &Path, offset: u64) -> (String, String) {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string()])
        .arg(disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    (get("TYPE"), get("LABEL"))
}

/// Copies `len` bytes at `offset` of `disk` into a sparse file (a partition on its own).
fn extract(disk: &Path, offset: u64, len: u64, to: &Path) {
    let st = Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", to.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", offset >> 20))
        .arg(format!("count={}", len >> 20))
        .status()
        .unwrap();
    assert!(st.success());
}

fn debugfs_cat(fs: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The engine's own boot checks, and the Chameleon elements' (issue [5/8]'s list): a check
/// that silently went missing must fail a test as surely as a failing one.
const CHAMELEON_CHECKS: &[&str] = &[
    "multi-user",
    "cloud-init",
    "root-grown",
    "provenance",
    "cc-users/10-cc-users",
    "cc-users/20-serial-autologin",
    "cc-ssh/10-sshd-hardened",
    "cc-firewall/10-firewall",
    "cc-firewall/20-disable-helper",
    "cc-firewall/30-firewall-setting",
    "cc-timesync/10-chronyd",
    "cc-provenance/10-provenance-fields",
    "cc-cloud-init/10-cloud-init-drop-ins",
    "cc-cloud-init/20-chameleon-settings",
    "cc-vendordata/10-helpers",
    "cc-vendordata/20-vendordata-cache",
    "cc-vendordata/30-openrc",
    "cc-vendordata/40-public-keys",
    "cc-rclone/10-object-store-helpers",
    "cc-motd/10-motd",
    "cc-snapshot/10-cc-snapshot",
];

/// Names of the checks of one `ccb test` result.
fn check_names(result: &serde_json::Value) -> Vec<&str> {
    result["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// Whether two files hold the same bytes (streamed: the disks are gigabytes).
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ra, mut rb) = (
        std::io::BufReader::with_capacity(1 << 20, fa),
        std::io::BufReader::with_capacity(1 << 20, fb),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        rb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

#[test]
fn debian12_is_a_gpt_disk_that_boots() {
    assert!(
        is_root(),
        "building disks needs root (scripts/test runs as root)"
    );
    let env = Env::new();
    let out = tempfile::tempdir().unwrap();
    let root = repo();
    let root = root.to_str().unwrap();
    let outs = out.path().to_str().unwrap();

    let store = env.cache.path().to_path_buf();

    // kill -9 in the middle of the disk action (finalise on the tree, chroot mounts up):
    // no mount may survive. The root filesystem is written from the tree after finalise, so
    // no loop device exists then.
    let mut ccb = env
        .cmd()
        .args([
            "--root",
            root,
            "build",
            "//images:debian12",
            "--arch",
            "amd64",
            "--out",
            outs,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the disk's finalise phase",
        Duration::from_secs(1200),
        || logs_contain(&store, "==> finalise.d/"),
    );
    let inside = sandbox_mounts(&store);
    assert!(
        !inside.is_empty() && !inside.iter().any(|m| m.starts_with("/dev/loop")),
        "finalise runs on the tree, with the chroot's mounts and no loop device: {inside:?}"
    );
    ccb.kill().unwrap();
    ccb.wait().unwrap();
    wait_until("the sandbox to end", Duration::from_secs(30), || {
        processes_under(&store).is_empty()
    });
    wait_until(
        "loop devices to be released",
        Duration::from_secs(10),
        || leftovers(&store).is_empty(),
    );

    let build = env
        .run(&[
            "--root",
            root,
            "build",
            "//images:debian12",
            "--arch",
            "amd64",
            "--out",
            outs,
            "--format",
            "json",
        ])
        .ok();
    let report = build.json();
    let disk = row(&report["actions"], "disk:debian12:amd64").clone();
    assert_eq!(disk["status"], "built", "{report}");
    let layer = row(&report["actions"], "layer:debian12:amd64");
    assert_eq!(
        layer["status"], "cached",
        "the killed build had finished the layer"
    );
    // The layer's initramfs was made with ccb's stand-ins (ccb-gzip compressing on every
    // core, ccb-canon's readlink, realpath and mkdir); the boots below show that it works.
    let layer_log = std::fs::read_to_string(
        store
            .join("logs")
            .join(format!("{}.log", layer["key"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        layer_log.contains("post-install.d/01-dpkg-initramfs runs 4 host tools natively:")
            && layer_log.contains("/usr/bin/gzip <- ccb-gzip")
            && layer_log.contains("/usr/bin/readlink <- ccb-canon")
            && layer_log.contains("/usr/bin/realpath <- ccb-canon")
            && layer_log.contains("/usr/bin/mkdir <- ccb-canon"),
        "{layer_log}"
    );

    // Outputs: the formats the manifest asks for, the manifests, the provenance, SHA256SUMS.
    let raw = out.path().join("CC-Debian12.raw");
    let qcow2 = out.path().join("CC-Debian12.qcow2");
    assert!(raw.is_file() && qcow2.is_file());
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains("  CC-Debian12.qcow2\n") && sums.contains("  CC-Debian12.raw\n"),
        "{sums}"
    );
    // Every checksum is its file's (the raw disk's is computed while the qcow2 is written).
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(out.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let dpkg = std::fs::read_to_string(
        out.path()
            .join("CC-Debian12.d/dib-manifests/dib-manifest-dpkg-CC-Debian12"),
    )
    .unwrap();
    let dpkg: serde_json::Value = serde_json::from_str(&dpkg).expect("DIB's dpkg manifest is JSON");
    let packages = dpkg["packages"].as_array().unwrap();
    assert!(
        packages
            .iter()
            .any(|p| p["package"] == "grub-pc" && p["status"] == "ii ")
    );
    let prov: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("CC-Debian12.d/CC-Debian12_provenance.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(prov["chameleon-supported"], "true");
    assert!(
        prov["build-tag"]
            .as_str()
            .unwrap()
            .starts_with("CC-Debian12-")
    );
    // Its SBOM (SPDX 2.3) validates with the SPDX project's validator and lists exactly the
    // image's installed packages (`ccb inspect`'s sbom check).
    crate::sbom::assert_valid_and_matching(Path::new(root), out.path(), "CC-Debian12", &env);
    // The raw disk is sparse: far fewer blocks than its size.
    let meta = std::fs::metadata(&raw).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < meta.len(),
        "the raw disk is not sparse"
    );

    // The partition table, read from the file.
    let mut f = std::fs::File::open(&raw).unwrap();
    let gpt = gptman::GPT::find_from(&mut f).expect("a GPT");
    let parts: Vec<(u32, String, u64, u64)> = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(i, p)| {
            (
                i,
                p.partition_name.as_str().to_string(),
                p.starting_lba * 512,
                (p.ending_lba - p.starting_lba + 1) * 512,
            )
        })
        .collect();
    let names: Vec<&str> = parts.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(names, ["ESP", "BSP", "root"]);
    assert_eq!(parts[0].3, 550 << 20, "a 550 MiB ESP");
    assert_eq!(parts[1].3, 8 << 20, "an 8 MiB BIOS boot partition");
    assert_eq!(
        &gpt[2].partition_type_guid[..4],
        &[0x48, 0x61, 0x68, 0x21],
        "BIOS boot partition type"
    );
    let (esp_type, esp_label) = probe(&raw, parts[0].2);
    assert_eq!(
        (esp_type.as_str(), esp_label.as_str()),
        ("vfat", "MKFS_ESP")
    );
    let (root_type, root_label) = probe(&raw, parts[2].2);
    assert_eq!(
        (root_type.as_str(), root_label.as_str()),
        ("ext4", "cloudimg-rootfs")
    );

    // BIOS boot code: GRUB's boot.img in the MBR pointing at core.img in the BIOS boot partition.
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut mbr).unwrap();
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    assert_eq!(mbr[450], 0xee, "protective MBR partition");
    let kernel_sector = u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap());
    assert_eq!(
        kernel_sector * 512,
        parts[1].2,
        "boot.img points at the BIOS boot partition"
    );
    let mut core = [0u8; 512];
    f.seek(SeekFrom::Start(parts[1].2)).unwrap();
    f.read_exact(&mut core).unwrap();
    let next = u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap());
    assert_eq!(
        next,
        kernel_sector + 1,
        "core.img's block list continues after its first sector"
    );

    // The ESP: GRUB at the removable path.
    let esp = out.path().join("esp.img");
    extract(&raw, parts[0].2, parts[0].3, &esp);
    let dir = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&esp)
        .arg("::/EFI/BOOT")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dir.stdout).contains("BOOTX64.EFI"),
        "{}",
        String::from_utf8_lossy(&dir.stdout)
    );

    // The root filesystem: fstab by label, GRUB's configuration, a clean machine-id.
    let rootfs = out.path().join("root.img");
    extract(&raw, parts[2].2, parts[2].3, &rootfs);
    let fstab = debugfs_cat(&rootfs, "/etc/fstab");
    assert!(
        fstab.contains("LABEL=cloudimg-rootfs / ext4 defaults 0 1"),
        "{fstab}"
    );
    assert!(
        fstab.contains("LABEL=MKFS_ESP /boot/efi vfat defaults 0 2"),
        "{fstab}"
    );
    let grub = debugfs_cat(&rootfs, "/boot/grub/grub.cfg");
    assert!(grub.contains("root=LABEL=cloudimg-rootfs"), "{grub}");
    // Finalise ran before the filesystem existed: grub-mkconfig was told its UUID by ccb.
    let uuid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID"])
        .arg(&rootfs)
        .output()
        .unwrap();
    let uuid = String::from_utf8_lossy(&uuid.stdout).trim().to_string();
    assert!(
        !uuid.is_empty() && grub.contains(&format!("--fs-uuid --set=root {uuid}")),
        "grub.cfg finds the root by the UUID it has ({uuid}):\n{grub}"
    );
    assert!(grub.contains("console=ttyS0,115200"), "{grub}");
    assert!(grub.contains("gfxpayload=text pci=realloc=off"), "{grub}");
    assert!(!grub.contains("nomodeset"), "{grub}");
    assert!(!debugfs_cat(&rootfs, "/boot/grub/i386-pc/normal.mod").is_empty());
    assert_eq!(debugfs_cat(&rootfs, "/etc/machine-id"), "");
    assert!(debugfs_cat(&rootfs, "/opt/chameleon/provenance.json").contains("build-repo-commit"));
    assert!(!debugfs_cat(&rootfs, "/etc/resolv.conf").contains("ccb"));
    for leftover in ["/usr/sbin/policy-rc.d", "/tmp/ccb-boot/i386-pc/core.img"] {
        let out = Command::new("debugfs")
            .args(["-R", &format!("stat {leftover}")])
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File not found"),
            "{leftover} is in the image"
        );
    }

    // A build farm ([7/9]): this store is host A and uploads what it built to a shared cache
    // (nginx WebDAV); host B, another checkout and store, builds CC-Debian12-Devtools from it
    // and publishes both images, while A goes on below.
    let nginx = Nginx::start();
    crate::remote::debian12_host_a_uploads(&env, root, &nginx);
    let host_b = std::thread::spawn(move || {
        crate::remote::debian12_host_b_builds_devtools_from_the_cache(&nginx.url);
        drop(nginx);
    });

    // And it boots with the checks passing inside: BIOS here; UEFI (and the NVMe and SATA
    // buses) are booted by the CC-Debian13 test below, so CI pays for three boots, not four.
    let test = env.run(&[
        "--root",
        root,
        "test",
        "//images:debian12",
        "--arch",
        "amd64",
        "--firmware",
        "bios",
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
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["firmware"], "bios");
    for r in results {
        let names = check_names(r);
        for want in CHAMELEON_CHECKS {
            assert!(
                names.contains(want),
                "{} lacks {want}: {names:?}",
                r["firmware"]
            );
        }
        assert!(Path::new(r["serial_log"].as_str().unwrap()).is_file());
    }
    // The boots wrote nothing into the image.
    env.run(&["cache", "verify"]).ok();

    // Equal keys, equal bytes: `ccb verify` builds the base, the layer and the disk again in a
    // scratch store (a second build from empty) and finds each identical to the store's; the
    // raw and qcow2 it rebuilt are the very bytes of the first build's.
    let kept = tempfile::tempdir().unwrap();
    let verify = env.run(&[
        "--root",
        root,
        "verify",
        "//images:debian12",
        "--arch",
        "amd64",
        "--keep",
        kept.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(
        verify.code, 0,
        "the rebuild differs:\n{}\n{}",
        verify.stdout, verify.stderr
    );
    let v = verify.json();
    let verdicts: Vec<(&str, &str)> = v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["verdict"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("base:debian12:amd64", "identical"),
            ("layer:debian12:amd64", "identical"),
            ("disk:debian12:amd64", "identical"),
        ],
        "{v}"
    );
    for f in ["CC-Debian12.raw", "CC-Debian12.qcow2"] {
        assert!(
            same_bytes(&out.path().join(f), &kept.path().join(f)),
            "{f} of the rebuild is not bit-identical"
        );
    }
    drop(kept);

    // Published through the graph (nothing to build now) to the project's local site, once:
    // a second publish of the same disk sends nothing.
    let scope = format!("e2e-{}", std::process::id());
    let site_dir = Path::new(root).join("out/publish").join(&scope);
    let publish = |args: &[&str]| {
        let mut all = vec![
            "--root",
            root,
            "publish",
            "//images:debian12",
            "--arch",
            "amd64",
        ];
        all.extend_from_slice(&["--scope", &scope, "--site", "local"]);
        all.extend_from_slice(args);
        env.run(&all)
    };
    let first = publish(&["--format", "json"]).ok().json();
    let version = first["results"][0]["version"].as_str().unwrap().to_string();
    assert_eq!(first["results"][0]["outcome"], "published", "{first}");
    for f in [
        "CC-Debian12.qcow2",
        "CC-Debian12.raw",
        "CC-Debian12.manifest",
    ] {
        assert!(
            site_dir.join("versions").join(&version).join(f).is_file(),
            "{f}"
        );
    }
    let again = publish(&[]).ok();
    assert!(again.stdout.contains("already live"), "{}", again.stdout);
    std::fs::remove_dir_all(&site_dir).unwrap();

    // Inspected without root or mounts: the required executables (cc-snapshot exempt, by
    // design) and every package of the build's dpkg manifest installed at its version.
    let inspected = env
        .run(&[
            "--root",
            root,
            "inspect",
            "//images:debian12",
            "--arch",
            "amd64",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(inspected["passed"], true, "{inspected}");
    let checks = inspected["images"][0]["checks"].as_array().unwrap();
    let dpkg = checks
        .iter()
        .find(|c| c["name"] == "dpkg-manifest")
        .unwrap();
    assert!(
        dpkg["detail"]
            .as_str()
            .unwrap()
            .contains("packages installed as built"),
        "{dpkg}"
    );
    // The storage drivers of inspect.ncl are in the kernel's initramfs (or built in).
    let drivers: Vec<&str> = checks
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("initramfs:"))
        .collect();
    assert!(drivers.iter().any(|n| n.ends_with(":nvme")), "{drivers:?}");
    // Made by Debian 12's own generator (CC-Debian13's test covers dracut).
    for k in initramfs_of_each_kernel(checks) {
        assert!(
            k["detail"]
                .as_str()
                .unwrap()
                .contains("made by initramfs-tools"),
            "{k}"
        );
    }

    if let Err(panic) = host_b.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `ccb inspect`'s one result per kernel (`initramfs:<version>`, found and read), not those
/// of its drivers (`initramfs:<version>:<module>`).
fn initramfs_of_each_kernel(checks: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let kernels: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| {
            let name = c["name"].as_str().unwrap();
            name.starts_with("initramfs:") && name.matches(':').count() == 1
        })
        .collect();
    assert!(!kernels.is_empty(), "no initramfs check: {checks:?}");
    kernels
}

/// The second release: the same elements on trixie's systemd, kernel and cloud-init, where
/// cc-firewall's firewall is nftables (trixie's cloud-init conflicts with firewalld) and the
/// initramfs is a generic dracut one (`DIB_INITRAMFS=dracut`). It must boot from the buses a
/// node's root disk sits on that initramfs-tools' CC-Debian12 test does not use: NVMe on UEFI,
/// SATA (AHCI) on BIOS.
#[test]
fn debian13_with_a_dracut_initramfs_boots_from_nvme_on_uefi_and_sata_on_bios() {
    assert!(
        is_root(),
        "building disks needs root (scripts/test runs as root)"
    );
    let env = Env::new();
    let out = tempfile::tempdir().unwrap();
    let root = repo();
    let root = root.to_str().unwrap();
    let outs = out.path().to_str().unwrap();
    let image = ["//images:debian13", "--arch", "amd64"];

    let mut build = vec!["--root", root, "build"];
    build.extend_from_slice(&image);
    build.extend_from_slice(&["--out", outs]);
    env.run(&build).ok();

    // dracut replaced initramfs-tools, nftables stands in for firewalld.
    let dpkg = std::fs::read_to_string(
        out.path()
            .join("CC-Debian13.d/dib-manifests/dib-manifest-dpkg-CC-Debian13"),
    )
    .unwrap();
    let dpkg: serde_json::Value = serde_json::from_str(&dpkg).expect("DIB's dpkg manifest is JSON");
    let installed = |name: &str| {
        dpkg["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["package"] == name && p["status"] == "ii ")
    };
    assert!(installed("dracut") && !installed("initramfs-tools"));
    assert!(installed("nftables") && !installed("firewalld"));

    // Read from the disk: every kernel's initramfs is dracut's and holds each storage driver
    // of inspect.ncl (the hostonly failure of Ubuntu 26.04's first images).
    let mut inspect = vec!["--root", root, "inspect"];
    inspect.extend_from_slice(&image);
    inspect.extend_from_slice(&["--format", "json"]);
    let inspected = env.run(&inspect).ok().json();
    assert_eq!(inspected["passed"], true, "{inspected}");
    let checks = inspected["images"][0]["checks"].as_array().unwrap();
    for k in initramfs_of_each_kernel(checks) {
        assert!(
            k["detail"].as_str().unwrap().contains("made by dracut"),
            "{k}"
        );
    }
    for driver in ["nvme", "ahci", "sd_mod", "virtio_blk", "virtio_scsi"] {
        assert!(
            checks.iter().any(|c| c["passed"] == true
                && c["name"].as_str().unwrap().starts_with("initramfs:")
                && c["name"].as_str().unwrap().ends_with(&format!(":{driver}"))),
            "{driver}: {inspected}"
        );
    }

    // Booted by one `ccb test` with a repeated --disk: UEFI from an NVMe disk, BIOS from a
    // SATA one (each --disk naming its firmware: two boots, not every firmware on every
    // bus), every check passing on both.
    let mut test = vec!["--root", root, "test"];
    test.extend_from_slice(&image);
    test.extend_from_slice(&[
        "--disk",
        "uefi:nvme",
        "--disk",
        "bios:sata",
        "--format",
        "json",
    ]);
    let run = env.run(&test);
    assert_eq!(
        run.code, 0,
        "boot checks failed:\n{}\n{}",
        run.stdout, run.stderr
    );
    let json = run.json();
    let results = json["results"].as_array().unwrap();
    let boots: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["firmware"].as_str().unwrap(), r["disk"].as_str().unwrap()))
        .collect();
    assert_eq!(boots, [("uefi", "nvme"), ("bios", "sata")], "{json}");
    for result in results {
        let names = check_names(result);
        for want in CHAMELEON_CHECKS {
            assert!(
                names.contains(want),
                "{}/{} lacks {want}: {names:?}",
                result["firmware"],
                result["disk"]
            );
        }
    }
    // The boots wrote nothing into the image.
    env.run(&["cache", "verify"]).ok();
}

/// A small Debian 12 whose root filesystem is XFS (`FS_TYPE=xfs`): kernel, GRUB, cloud-init
/// and xfsprogs (cloud-init grows the root with xfs_growfs), and the provenance element.
fn xfs_project(dir: &Path) {
    write(
        dir.join("manifests/images.ncl"),
        r#"{
  xfs-os = {
    name = "XFS-OS",
    description = "Debian 12 on an XFS root: kernel, GRUB, cloud-init",
    elements = ["debian", "vm", "block-device-efi", "cc-provenance", "xfs-tools"],
    arch = ['amd64],
    formats = ['raw, 'qcow2],
    provenance = { distro = "debian", release = "bookworm", variant = "base" },
    env = { DIB_RELEASE = "bookworm", DIB_SKIP_BASE_PACKAGE_INSTALL = "1", FS_TYPE = "xfs" },
  },
}
"#,
    );
    // The provenance check wants a build repository; a scratch project has no git remote.
    write(
        dir.join("manifests/project.ncl"),
        "{ build_repo = \"https://github.com/ChameleonCloud/cc-images\" }\n",
    );
    let el = dir.join("elements/xfs-tools");
    write(el.join("README.rst"), "xfsprogs, for an XFS root.\n");
    write(el.join("element-deps"), "package-installs\n");
    write(el.join("package-installs.yaml"), "xfsprogs:\n");
}

/// The disk action without a block device for finalise: the bootloader element's grub.cfg
/// names the root filesystem by the UUID ccb then gives it (no grub-probe of a device), an
/// XFS root (filled through a loop mount, then normalised: src/action/xfs.rs) boots on UEFI
/// with the checks passing, and the disk action run again on the same layer writes the same
/// raw and qcow2 bytes.
#[test]
fn an_xfs_root_is_written_after_finalise_and_boots_on_uefi() {
    use ccb::inspect::disk::find_root;

    assert!(
        is_root(),
        "building disks needs root (scripts/test runs as root)"
    );
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    xfs_project(&project);
    let root = project.to_str().unwrap();
    let elements = repo().join("elements");
    let elements = elements.to_str().unwrap();
    let out = work.path().join("out");
    let outs = out.to_str().unwrap();
    let build = || {
        env.run(&[
            "--root",
            root,
            "build",
            "xfs-os",
            "--element-path",
            elements,
            "--out",
            outs,
            "--format",
            "json",
        ])
        .ok()
        .json()
    };
    let built = build();
    let disk_key = built["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "disk:xfs-os:amd64")
        .and_then(|a| a["key"].as_str())
        .unwrap_or_else(|| panic!("no disk action: {built}"))
        .to_string();

    // The layout: ESP, BIOS boot partition, an XFS root labelled as DIB labels it.
    let raw = out.join("XFS-OS.raw");
    let mut f = std::fs::File::open(&raw).unwrap();
    let gpt = gptman::GPT::find_from(&mut f).expect("a GPT");
    let parts: Vec<(String, u64)> = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| (p.partition_name.as_str().to_string(), p.starting_lba * 512))
        .collect();
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["ESP", "BSP", "root"]);
    assert_eq!(probe(&raw, parts[0].1), ("vfat".into(), "MKFS_ESP".into()));
    assert_eq!(probe(&raw, parts[2].1), ("xfs".into(), "img-rootfs".into()));
    let uuid = {
        let out = Command::new("blkid")
            .args([
                "-p",
                "-o",
                "value",
                "-s",
                "UUID",
                "-O",
                &parts[2].1.to_string(),
            ])
            .arg(&raw)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(!uuid.is_empty());

    // Read from the image file: fstab and grub.cfg describe the filesystem that was written,
    // and the image's own grub-probe is back in place.
    let (_, fs) = find_root(std::sync::Arc::new(std::fs::File::open(&raw).unwrap())).unwrap();
    assert_eq!(fs.kind(), "xfs");
    let text = |p: &str| String::from_utf8(fs.read(p).unwrap()).unwrap();
    let fstab = text("/etc/fstab");
    assert!(
        fstab.contains("LABEL=img-rootfs / xfs defaults 0 1"),
        "{fstab}"
    );
    let grub = text("/boot/grub/grub.cfg");
    assert!(grub.contains("root=LABEL=img-rootfs"), "{grub}");
    assert!(grub.contains("insmod xfs"), "{grub}");
    assert!(grub.contains("insmod part_gpt"), "{grub}");
    assert!(
        grub.contains(&format!("search --no-floppy --fs-uuid --set=root {uuid}")),
        "grub.cfg finds the root by the UUID the filesystem has ({uuid}):\n{grub}"
    );
    assert!(
        fs.read("/usr/sbin/grub-probe")
            .unwrap()
            .starts_with(b"\x7fELF"),
        "the image's grub-probe is restored"
    );
    assert!(
        fs.symlink_metadata("/usr/sbin/grub-probe.ccb-real")
            .is_err()
    );

    // It boots, the root grown by cloud-init's xfs_growfs. UEFI only: the filesystem is what
    // differs from the ext4 disks, and those boot on both firmwares in the Debian 12/13 tests
    // (a second TCG boot here costs CI minutes and proves nothing more).
    let test = env.run(&[
        "--root",
        root,
        "test",
        "xfs-os",
        "--element-path",
        elements,
        "--firmware",
        "uefi",
        "--format",
        "json",
    ]);
    assert_eq!(
        test.code, 0,
        "boot checks failed:\n{}\n{}",
        test.stdout, test.stderr
    );
    let json = test.json();
    let results = json["results"].as_array().unwrap();
    let firmwares: Vec<&str> = results
        .iter()
        .map(|r| r["firmware"].as_str().unwrap())
        .collect();
    assert_eq!(firmwares, ["uefi"], "{json}");
    for r in results {
        let names = check_names(r);
        for want in ["multi-user", "cloud-init", "root-grown", "provenance"] {
            assert!(names.contains(&want), "lacks {want}: {names:?}");
        }
    }
    env.run(&["cache", "verify"]).ok();

    // Equal keys, equal bytes on XFS too: the disk action run again on the same layer (its
    // entry removed from the store by key) writes the same raw and qcow2 bytes. What XFS adds
    // is the disk (filled through a loop mount, then normalised: src/action/xfs.rs); the
    // base and layer are proven by the Debian 12 test's `ccb verify`, and a whole rebuild
    // here would cost CI ten minutes more.
    let kept = tempfile::tempdir().unwrap();
    for f in ["XFS-OS.raw", "XFS-OS.qcow2"] {
        std::fs::rename(out.join(f), kept.path().join(f)).unwrap();
    }
    env.run(&["cache", "rm", &disk_key]).ok();
    let again = build();
    let status = |id: &str| {
        again["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["status"].as_str().unwrap().to_string())
    };
    assert_eq!(
        status("disk:xfs-os:amd64").as_deref(),
        Some("built"),
        "{again}"
    );
    assert_eq!(
        status("layer:xfs-os:amd64").as_deref(),
        Some("cached"),
        "{again}"
    );
    for f in ["XFS-OS.raw", "XFS-OS.qcow2"] {
        assert!(
            same_bytes(&out.join(f), &kept.path().join(f)),
            "{f} of the second disk action is not bit-identical"
        );
    }
}
