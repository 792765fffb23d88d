//! Boot tests: a built image booted in QEMU (SeaBIOS and OVMF), checked from the inside.
//!
//! The image is never written: it boots from a throwaway qcow2 overlay, 2 GiB larger than the
//! image so that growing the root filesystem is observable. A seed disk carries the checks as
//! cloud-init user-data, both as NoCloud (`cidata`) and as an OpenStack config drive
//! (`config-2`), so the test works whichever of the two datasources the image enables; both are
//! FAT images filled with mtools (no mount). The config drive also carries a launch key and a
//! test vendordata, so the Chameleon elements' boot-time units have something to work on. The
//! checks report on the serial console, which ccb reads and keeps.
//!
//! KVM is used only when a probe proves it works: a 512-byte boot sector that writes one
//! byte to the serial port must come back within seconds; otherwise TCG.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::manifest::Arch;
use crate::process::Process;

const CHECK_SCRIPT: &str = include_str!("check.sh");

/// The config drive presents the test VM as a Chameleon instance: a key given at launch, and
/// the dynamic vendordata a Chameleon site serves (site fields, the account's SSH keys, and a
/// service token, a secret the elements must keep out of world-readable files). The keys
/// are throwaway public keys whose private halves were never kept.
const TEST_META_DATA: &str = r#"{"uuid": "ccb-boot-test", "hostname": "ccb-test", "name": "ccb-test",
 "public_keys": {"ccb-launch": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFN4dekb06gwarAr6qwtzN3El0Y2Fprcj2ws73LhH9Hd ccb-test-launch-key"}}"#;
const TEST_VENDOR_DATA: &str = r#"{"chameleon": {
 "site": "CHI@ccb-test", "region": "CHI@ccb-test",
 "auth_url_v3": "http://127.0.0.1:5000/v3",
 "project_id": "0123456789abcdef0123456789abcdef", "project_name": "CCB-TEST",
 "user_domain_name": "Default", "username": "ccb-tester",
 "service_token": "ccb-test-service-token",
 "node_type": "compute_ccb", "node_name": "ccb-test-node",
 "reservation_id": "ccb-test-reservation", "lease_name": "ccb-test-lease",
 "lease_end": "2099-01-01T00:00:00Z",
 "public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHAjV9Fh3fvz1zEEZNbTpajlDhcYHP6t5Ef8i2BRMJ6A ccb-test-account-key"]}}"#;
const GROW: u64 = 2 << 30;

/// A boot that could not be set up or watched (a failed boot is a [`BootReport`], not this).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BootError {
    /// A file of the test's scratch directory.
    #[error("{what}")]
    #[diagnostic(code(ccb::test::io))]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool the boot needs (qemu-img, mtools, QEMU) could not run or failed.
    #[error("{what}")]
    #[diagnostic(code(ccb::test::program))]
    Program {
        what: String,
        #[source]
        source: crate::process::ProcessError,
    },
    /// The host lacks the firmware a boot needs.
    #[error("{firmware} firmware not found: install the {package} package")]
    #[diagnostic(code(ccb::test::firmware))]
    MissingFirmware {
        firmware: &'static str,
        package: &'static str,
    },
    #[error("arm64 has no BIOS: arm64 disks boot on UEFI only (--firmware uefi)")]
    #[diagnostic(code(ccb::test::no_bios))]
    NoBios,
    /// `qemu-img info` answered something ccb cannot read.
    #[error("qemu-img info of {}: {problem}", image.display())]
    #[diagnostic(code(ccb::test::image_info))]
    ImageInfo { image: PathBuf, problem: String },
}

fn setup(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BootError {
    move |source| BootError::Io {
        what: context.to_string(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// The bus the image's disk is attached to: Chameleon's nodes boot from NVMe, SATA (AHCI) and
/// virtio disks, and an initramfs that lacks one of those drivers only shows on that bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Nvme,
    Sata,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Nvme => "nvme",
            DiskBus::Sata => "sata",
        }
    }

    /// QEMU `-device` arguments attaching drive `id` on this bus, first in the boot order.
    fn devices(self, id: &str) -> Vec<String> {
        match self {
            DiskBus::Virtio => vec![format!("virtio-blk-pci,drive={id},bootindex=0")],
            DiskBus::Nvme => vec![format!("nvme,drive={id},serial=ccb-{id},bootindex=0")],
            // An AHCI controller of its own: i440fx (BIOS) has none, q35 and virt would
            // otherwise need their built-in one addressed differently.
            DiskBus::Sata => vec![
                "ahci,id=ccb-ahci".to_string(),
                format!("ide-hd,drive={id},bus=ccb-ahci.0,bootindex=0"),
            ],
        }
    }
}

/// A check an element adds: `boot-checks.d/<name>` of the element, run in the booted image.
#[derive(Debug, Clone)]
pub struct ElementCheck {
    pub element: String,
    pub name: String,
    pub script: Vec<u8>,
}

/// Collects the `boot-checks.d/` scripts of `elements` (executable files, DIB's script names).
pub fn element_checks(elements: &[(String, PathBuf)]) -> Vec<ElementCheck> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for (name, dir) in elements {
        let Ok(rd) = std::fs::read_dir(dir.join("boot-checks.d")) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Some(file) = f.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let executable = f
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if executable
                && crate::element::view::runnable_name(file)
                && let Ok(script) = std::fs::read(&f)
            {
                out.push(ElementCheck {
                    element: name.clone(),
                    name: file.to_string(),
                    script,
                });
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    pub arch: Arch,
    pub firmware: Firmware,
    pub disk: DiskBus,
    pub accel: String,
    pub duration_ms: u64,
    pub checks: Vec<CheckResult>,
    /// The checks ran to the end (else the boot hung, crashed or timed out).
    pub completed: bool,
    pub serial_log: PathBuf,
    /// Why this is a second boot: the first one's guest kernel panicked under TCG.
    pub retried: Option<String>,
    /// The guest kernel panicked (the `boot` check says how).
    #[serde(skip)]
    pub panicked: bool,
    /// The guest kernel printed its banner: whatever came after, the console works, so a
    /// KVM boot that never showed it stalled because of KVM, not the image.
    #[serde(skip)]
    pub kernel_started: bool,
}

impl BootReport {
    pub fn passed(&self) -> bool {
        self.completed && self.checks.iter().all(|c| c.passed)
    }
}

/// What one boot needs.
pub struct BootTest<'a> {
    pub image: &'a Path,
    /// `qcow2` or `raw`.
    pub format: &'a str,
    /// The image's architecture: amd64 boots in qemu-system-x86_64 (SeaBIOS or OVMF), arm64
    /// in qemu-system-aarch64 `-M virt` on AAVMF (UEFI only).
    pub arch: Arch,
    pub firmware: Firmware,
    pub disk: DiskBus,
    pub timeout: Duration,
    pub checks: &'a [ElementCheck],
    /// Where the serial log of a first attempt whose guest kernel panicked is kept.
    pub panicked_log: PathBuf,
    /// A scratch directory (overlay, seed, firmware variables).
    pub work: &'a Path,
    pub serial_log: PathBuf,
}

fn run_tool(cmd: &mut Process, what: &str) -> Result<String, BootError> {
    let out = cmd.output().map_err(|source| BootError::Program {
        what: what.into(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host a kernel stalled under KVM on. Some hosts run the probe's boot sector under KVM
/// and then hang on a real kernel, which costs every boot `KVM_STALL` (40 s) before TCG takes over;
/// a stall is remembered for this host's kernel and QEMU, and a new version of either (which
/// may well have fixed KVM) tries KVM again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct KvmHost {
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// The first line of `qemu-system-<host arch> --version`.
    pub qemu: String,
}

impl KvmHost {
    /// This host, or `None` when its kernel release or QEMU's version cannot be read (nothing
    /// is then remembered).
    pub fn here() -> Option<KvmHost> {
        let uname = nix::sys::utsname::uname().ok()?;
        let kernel = uname.release().to_string_lossy().into_owned();
        let qemu = qemu_program(crate::manifest::Arch::host()?);
        let out = Process::new(qemu).arg("--version").output().ok()?;
        let qemu = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .to_string();
        Some(KvmHost { kernel, qemu })
    }
}

/// Whether KVM really runs guests here (it may exist and hang or abort): a boot sector that
/// prints `K` on the serial port must do so within a few seconds.
pub fn kvm_works(work: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let probe = work.join("kvm-probe.img");
    let mut sector = vec![0u8; 512];
    // mov dx,0x3f8; mov al,'K'; out dx,al; hlt; jmp $-1
    sector[..9].copy_from_slice(&[0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xf4, 0xeb, 0xfd]);
    sector[510] = 0x55;
    sector[511] = 0xaa;
    if std::fs::write(&probe, &sector).is_err() {
        return false;
    }
    let child = Process::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-display",
            "none",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", probe.display()))
        .spawn(Stdio::piped(), Stdio::null());
    let Ok(mut child) = child else { return false };
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&b'K') {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let ok = rx.recv_timeout(Duration::from_secs(8)).unwrap_or(false);
    crate::process::stop(&mut child, Duration::ZERO);
    ok
}

fn firmware_files() -> Option<(PathBuf, PathBuf)> {
    [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ]
    .iter()
    .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
    .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// The cloud-config that installs the checks and runs them once cloud-init is done.
pub fn user_data(checks: &[ElementCheck], min_root: u64) -> String {
    let mut s = String::from("#cloud-config\nwrite_files:\n");
    let mut file = |path: &str, perms: &str, content: &[u8]| {
        s.push_str(&format!(
            "  - path: {path}\n    permissions: '{perms}'\n    encoding: b64\n    content: {}\n",
            b64(content)
        ));
    };
    file(
        "/usr/local/sbin/ccb-boot-check",
        "0755",
        CHECK_SCRIPT.as_bytes(),
    );
    for c in checks {
        file(
            &format!("/var/lib/ccb-checks/{}/{}", c.element, c.name),
            "0755",
            &c.script,
        );
    }
    let unit = format!(
        "[Unit]\nDescription=ccb boot checks\nAfter=cloud-final.service multi-user.target\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/sbin/ccb-boot-check {min_root}\n"
    );
    file(
        "/etc/systemd/system/ccb-boot-check.service",
        "0644",
        unit.as_bytes(),
    );
    s.push_str("runcmd:\n  - [systemctl, start, --no-block, ccb-boot-check.service]\n");
    s
}

/// A FAT image labelled `label` holding `files` (name → content), made with mtools.
fn fat_image(
    path: &Path,
    label: &str,
    files: &[(&str, &[u8])],
    dir: &Path,
) -> Result<(), BootError> {
    let _ = std::fs::remove_file(path);
    run_tool(
        Process::new("mkfs.fat")
            .args(["-n", label, "-C"])
            .arg(path)
            .arg("2048"),
        "mkfs.fat (dosfstools)",
    )?;
    let staging = dir.join(format!("{label}-files"));
    let _ = std::fs::remove_dir_all(&staging);
    for (name, content) in files {
        let p = staging.join(name);
        std::fs::create_dir_all(p.parent().expect("has a parent")).map_err(setup("seed files"))?;
        std::fs::write(&p, content).map_err(setup("seed files"))?;
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&staging)
        .map_err(setup("seed files"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    run_tool(
        Process::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i"])
            .arg(path)
            .args(&entries)
            .arg("::/"),
        "mcopy (mtools)",
    )?;
    Ok(())
}

fn virtual_size(image: &Path, format: &str) -> Result<u64, BootError> {
    let out = run_tool(
        Process::new("qemu-img")
            .args(["info", "--output=json", "-f", format])
            .arg(image),
        "qemu-img info",
    )?;
    let info = |problem: String| BootError::ImageInfo {
        image: image.to_path_buf(),
        problem,
    };
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| info(e.to_string()))?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| info("no virtual size".into()))
}

/// Whether a boot of `arch` may use KVM, given what the amd64 probe found: only for the
/// host's own arch (an arm64 guest on an amd64 host is always TCG).
pub fn kvm_for(arch: Arch, amd64_probe: bool) -> bool {
    match (crate::manifest::Arch::host(), arch) {
        (Some(Arch::Amd64), Arch::Amd64) => amd64_probe,
        (Some(Arch::Arm64), Arch::Arm64) => Path::new("/dev/kvm").exists(),
        _ => false,
    }
}

fn aavmf_files() -> Option<(PathBuf, PathBuf)> {
    let (c, v) = (
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/AAVMF/AAVMF_VARS.fd",
    );
    (Path::new(c).exists() && Path::new(v).exists()).then(|| (PathBuf::from(c), PathBuf::from(v)))
}

/// How long QEMU has to exit after SIGTERM before it is killed.
const QEMU_GRACE: Duration = Duration::from_secs(5);

/// How long KVM may take to show the kernel's first message before it counts as broken.
const KVM_STALL: Duration = Duration::from_secs(40);

/// Boots and collects the checks' results from the serial console. A KVM boot that shows no
/// kernel message in time is ended and redone with TCG (`kvm` is then set to false for the
/// boots that follow): on some hosts KVM runs a boot sector but hangs on the kernel.
///
/// A guest kernel that panics under TCG is booted once more, and the report says so
/// (`retried`): TCG is an emulator, and an image that booted under it many times has had its
/// kernel panic in early boot, once, in an interrupt handler (CI, Debian 13 on NVMe). A
/// panic the image causes panics again and fails the boot; one under KVM is never retried.
pub fn boot(t: &BootTest, kvm: &mut bool) -> Result<BootReport, BootError> {
    // The first attempt's console, kept for whoever looks into the panic.
    let keep_first = || match std::fs::rename(&t.serial_log, &t.panicked_log) {
        Ok(()) => format!(" (its console: {})", t.panicked_log.display()),
        Err(_) => String::new(),
    };
    boot_with(kvm, |kvm| boot_once(t, kvm), keep_first)
}

/// [`boot`]'s policy over one boot attempt (`Ok(None)`: a KVM boot abandoned); `keep_first`
/// runs before a second attempt and says where the first one's console went.
fn boot_with(
    kvm: &mut bool,
    mut once: impl FnMut(bool) -> Result<Option<BootReport>, BootError>,
    keep_first: impl FnOnce() -> String,
) -> Result<BootReport, BootError> {
    if *kvm {
        match once(true)? {
            Some(report) => return Ok(report),
            None => *kvm = false,
        }
    }
    let mut tcg_boot = || -> Result<BootReport, BootError> {
        Ok(once(false)?.expect("TCG boots are never abandoned"))
    };
    let first = tcg_boot()?;
    if !first.panicked {
        return Ok(first);
    }
    let why = first
        .checks
        .iter()
        .find(|c| c.name == "boot")
        .map(|c| c.detail.clone())
        .unwrap_or_default();
    let why = format!("{why}{}", keep_first());
    let mut second = tcg_boot()?;
    second.retried = Some(why);
    Ok(second)
}

/// The drives a boot attaches: the image under a grown overlay, and the two seeds.
struct Drives {
    overlay: PathBuf,
    /// The NoCloud seed (cloud-init's user-data).
    seed: PathBuf,
    /// The OpenStack config drive (meta-data and Chameleon's vendordata).
    config_drive: PathBuf,
}

/// How a watched boot ended.
struct Watched {
    completed: bool,
    /// When the guest kernel panicked (from the boot's start): nothing more will come,
    /// whatever the time left.
    panicked: Option<Duration>,
    status: std::io::Result<std::process::ExitStatus>,
    stderr: String,
}

/// The first line of every Linux kernel's log (`Linux version 6.1.0-…`), on both arches.
const KERNEL_BANNER: &str = "Linux version";

/// What the kernel prints when it panics; Debian's kernels then hang (no `panic=` timeout),
/// so without looking for it a boot would wait out the whole timeout.
const PANIC_MARK: &str = "Kernel panic - not syncing";

/// How long the console may go on after the panic line: the kernel ends its report with
/// `---[ end Kernel panic`, which usually follows at once.
const PANIC_TAIL: Duration = Duration::from_secs(5);

/// Says what the panic was from the console: its message and, when the kernel printed an
/// oops before it, the oops' first line and the faulting instruction.
fn panic_summary(serial: &str) -> String {
    let lines: Vec<&str> = serial.lines().map(strip_timestamp).collect();
    let Some(at) = lines.iter().position(|l| l.contains(PANIC_MARK)) else {
        return String::new();
    };
    let message = lines[at][lines[at].find(PANIC_MARK).unwrap_or(0)..].trim();
    // The oops that led to the panic is the last one printed before it.
    let oops = lines[..at].iter().rposition(|l| {
        [
            "BUG:",
            "Oops:",
            "general protection fault",
            "Unable to handle",
            "Internal error:",
        ]
        .iter()
        .any(|m| l.contains(m))
    });
    let mut parts = vec![message.to_string()];
    if let Some(o) = oops {
        parts.push(lines[o].trim().to_string());
        if let Some(ip) = lines[o..at]
            .iter()
            .find(|l| l.trim_start().starts_with("RIP:") || l.trim_start().starts_with("pc :"))
        {
            parts.push(ip.trim().to_string());
        }
    }
    parts.join(" / ")
}

/// A console line without the kernel's `[    3.730511] ` timestamp.
fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_start();
    match (t.starts_with('['), t.find(']')) {
        (true, Some(end)) => t[end + 1..].trim_start(),
        _ => t,
    }
}

fn boot_once(t: &BootTest, kvm: bool) -> Result<Option<BootReport>, BootError> {
    let drives = prepare_drives(t)?;
    let cmd = qemu_command(t, kvm, &drives)?;
    let _ = std::fs::remove_file(&t.serial_log);
    let started = Instant::now();
    let child = spawn_qemu(t, &cmd)?;
    let Some(watched) = watch(t, kvm, child, started)? else {
        return Ok(None);
    };
    let serial =
        String::from_utf8_lossy(&std::fs::read(&t.serial_log).unwrap_or_default()).into_owned();
    let mut checks = console_checks(&serial);
    if !watched.completed {
        let why = if let Some(after) = watched.panicked {
            format!(
                "the guest kernel panicked after {} s: {}",
                after.as_secs(),
                panic_summary(&serial)
            )
        } else if started.elapsed() > t.timeout {
            format!("no result within {} s", t.timeout.as_secs())
        } else {
            format!(
                "qemu ended first ({}){}",
                watched.status.map(|s| s.to_string()).unwrap_or_default(),
                if watched.stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", watched.stderr.trim())
                }
            )
        };
        checks.push(CheckResult {
            name: "boot".into(),
            passed: false,
            detail: format!("{why}; last console lines: {}", last_lines(&serial, 3)),
        });
    }
    Ok(Some(BootReport {
        arch: t.arch,
        firmware: t.firmware,
        disk: t.disk,
        accel: if kvm { "kvm" } else { "tcg" }.into(),
        duration_ms: started.elapsed().as_millis() as u64,
        checks,
        completed: watched.completed,
        serial_log: t.serial_log.clone(),
        retried: None,
        panicked: watched.panicked.is_some(),
        kernel_started: serial.contains(KERNEL_BANNER),
    }))
}

fn prepare_drives(t: &BootTest) -> Result<Drives, BootError> {
    std::fs::create_dir_all(t.work).map_err(setup("create the test directory"))?;
    let size = virtual_size(t.image, t.format)?;
    let overlay = t.work.join(format!("{}.qcow2", t.firmware.as_str()));
    let _ = std::fs::remove_file(&overlay);
    run_tool(
        Process::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", t.format, "-b"])
            .arg(t.image)
            .arg(&overlay)
            .arg((size + GROW).to_string()),
        "qemu-img create (overlay)",
    )?;
    // Grown means: more than the whole original disk.
    let ud = user_data(t.checks, size);
    let seed = t.work.join("seed-nocloud.img");
    fat_image(
        &seed,
        "CIDATA",
        &[
            ("user-data", ud.as_bytes()),
            (
                "meta-data",
                b"instance-id: ccb-boot-test\nlocal-hostname: ccb-test\n",
            ),
        ],
        t.work,
    )?;
    let config_drive = t.work.join("seed-configdrive.img");
    fat_image(
        &config_drive,
        "config-2",
        &[
            ("openstack/latest/meta_data.json", TEST_META_DATA.as_bytes()),
            ("openstack/latest/user_data", ud.as_bytes()),
            (
                "openstack/latest/vendor_data2.json",
                TEST_VENDOR_DATA.as_bytes(),
            ),
        ],
        t.work,
    )?;
    Ok(Drives {
        overlay,
        seed,
        config_drive,
    })
}

fn qemu_program(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// QEMU's command line for the boot: machine, firmware, the drives on the asked bus.
fn qemu_command(t: &BootTest, kvm: bool, drives: &Drives) -> Result<Process, BootError> {
    let mut cmd = Process::new(qemu_program(t.arch));
    // -nodefaults: no floppy, CD-ROM or VGA to probe; everything the guest gets is below.
    cmd.args([
        "-nodefaults",
        "-accel",
        if kvm { "kvm" } else { "tcg,thread=multi" },
        "-m",
        "2048",
        "-smp",
        "2",
        "-display",
        "none",
    ])
    .args([
        "-no-reboot",
        "-nic",
        "user,model=virtio-net-pci,restrict=on",
    ])
    .arg("-serial")
    .arg(format!("file:{}", t.serial_log.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format=qcow2,if=none,id=root",
        drives.overlay.display()
    ));
    for dev in t.disk.devices("root") {
        cmd.arg("-device").arg(dev);
    }
    cmd.arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            drives.seed.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            drives.config_drive.display()
        ));
    let pflash = |cmd: &mut Process, code: &Path, vars: &Path| {
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    };
    match (t.arch, t.firmware) {
        (Arch::Amd64, Firmware::Bios) => {
            cmd.args(["-machine", "pc"]);
        }
        (Arch::Amd64, Firmware::Uefi) => {
            let (code, vars) = firmware_files().ok_or(BootError::MissingFirmware {
                firmware: "UEFI",
                package: "ovmf",
            })?;
            let my_vars = t.work.join("OVMF_VARS.fd");
            std::fs::copy(&vars, &my_vars).map_err(setup("copy the UEFI variables"))?;
            cmd.args(["-machine", "q35"]);
            pflash(&mut cmd, &code, &my_vars);
        }
        (Arch::Arm64, Firmware::Bios) => {
            return Err(BootError::NoBios);
        }
        (Arch::Arm64, Firmware::Uefi) => {
            let (code, vars) = aavmf_files().ok_or(BootError::MissingFirmware {
                firmware: "arm64 UEFI (AAVMF)",
                package: "qemu-efi-aarch64",
            })?;
            let my_vars = t.work.join("AAVMF_VARS.fd");
            std::fs::copy(&vars, &my_vars).map_err(setup("copy the UEFI variables"))?;
            // cortex-a72 under TCG: `max` would emulate pointer authentication, which costs
            // a large share of TCG's time for nothing a boot test needs.
            // Under KVM the guest gets the host's own interrupt controller: many arm64
            // servers have a GICv3 without the GICv2 `virt` would otherwise emulate.
            cmd.args([
                "-machine",
                if kvm { "virt,gic-version=host" } else { "virt" },
                "-cpu",
                if kvm { "host" } else { "cortex-a72" },
            ]);
            pflash(&mut cmd, &code, &my_vars);
        }
    }
    Ok(cmd)
}

/// Starts QEMU in a process group of its own, killed with ccb.
fn spawn_qemu(t: &BootTest, qemu: &Process) -> Result<Child, BootError> {
    let mut cmd = qemu.command();
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).pre_exec(move || {
            // QEMU never outlives ccb.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::other("ccb exited"));
            }
            Ok(())
        });
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BootError::Program {
            what: format!(
                "run {} (package {})",
                qemu_program(t.arch),
                match t.arch {
                    Arch::Amd64 => "qemu-system-x86",
                    Arch::Arm64 => "qemu-system-arm",
                }
            ),
            source: crate::process::ProcessError::Spawn {
                command: qemu.command_line(),
                source,
            },
        })
}

/// Follows the serial console until the checks are done, QEMU ends or time is up; then stops
/// QEMU. `None`: a KVM boot that never reached the kernel (to be redone with TCG).
fn watch(
    t: &BootTest,
    kvm: bool,
    mut child: Child,
    started: Instant,
) -> Result<Option<Watched>, BootError> {
    let mut completed = false;
    let mut panicked_at: Option<Instant> = None;
    loop {
        let serial = std::fs::read(&t.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&serial);
        if text.contains("CCB-CHECKS-DONE") {
            completed = true;
        }
        if !completed && panicked_at.is_none() && text.contains(PANIC_MARK) {
            panicked_at = Some(Instant::now());
        }
        if panicked_at
            .is_some_and(|at| text.contains("---[ end Kernel panic") || at.elapsed() > PANIC_TAIL)
        {
            break;
        }
        if kvm && started.elapsed() > KVM_STALL && !text.contains(KERNEL_BANNER) {
            crate::process::stop(&mut child, QEMU_GRACE);
            return Ok(None);
        }
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(setup("wait for qemu")(e)),
        }
        if started.elapsed() > t.timeout {
            break;
        }
        if completed {
            // Let the guest power off on its own, briefly.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(200));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    crate::process::stop(&mut child, QEMU_GRACE);
    let status = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    Ok(Some(Watched {
        completed,
        panicked: panicked_at.map(|at| at.duration_since(started)),
        status,
        stderr,
    }))
}

/// The checks' `CCB-CHECK|name|PASS|detail` lines of the serial console.
fn console_checks(serial: &str) -> Vec<CheckResult> {
    let mut checks: Vec<CheckResult> = Vec::new();
    for line in serial.lines() {
        let Some(pos) = line.find("CCB-CHECK|") else {
            continue;
        };
        let mut f = line[pos + "CCB-CHECK|".len()..].splitn(3, '|');
        let (Some(name), Some(status), detail) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        checks.push(CheckResult {
            name: name.to_string(),
            passed: status == "PASS",
            detail: detail.unwrap_or("").trim().to_string(),
        });
    }
    checks
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Writes a report line per check (`PASS  uefi  multi-user  …`).
pub fn render(reports: &[BootReport], out: &mut dyn Write) -> std::io::Result<()> {
    for r in reports {
        for c in &r.checks {
            writeln!(
                out,
                "{}  {:5}  {:4}  {:6}  {:24}  {}",
                if c.passed { "PASS" } else { "FAIL" },
                r.arch.as_str(),
                r.firmware.as_str(),
                r.disk.as_str(),
                c.name,
                c.detail
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disk_bus_attaches_the_root_drive_first_in_the_boot_order() {
        assert_eq!(
            DiskBus::Virtio.devices("root"),
            ["virtio-blk-pci,drive=root,bootindex=0"]
        );
        assert_eq!(
            DiskBus::Nvme.devices("root"),
            ["nvme,drive=root,serial=ccb-root,bootindex=0"]
        );
        // SATA brings its own AHCI controller: the i440fx machine of BIOS boots has none.
        assert_eq!(
            DiskBus::Sata.devices("root"),
            [
                "ahci,id=ccb-ahci",
                "ide-hd,drive=root,bus=ccb-ahci.0,bootindex=0"
            ]
        );
    }

    /// How a test boot sector ends after printing.
    #[derive(Clone, Copy)]
    enum Then {
        /// A triple fault, which `-no-reboot` turns into QEMU's exit.
        ExitVm,
        /// Halts for good with interrupts off, as a panicked Debian kernel does.
        Hang,
    }

    /// A BIOS boot sector that prints `text` on COM1 and then ends as `then` says.
    fn boot_sector(text: &str, then: Then) -> Vec<u8> {
        const IDTR: u16 = 0x7c00 + 25;
        const MSG: u16 = 0x7c00 + 31;
        let mut s = vec![
            0xfc, // cld
            0x31,
            0xc0, // xor ax, ax
            0x8e,
            0xd8, // mov ds, ax
            0xbe,
            MSG as u8,
            (MSG >> 8) as u8, // mov si, MSG
            0xba,
            0xf8,
            0x03, // mov dx, 0x3f8
            0xac, // lodsb
            0x84,
            0xc0, // test al, al
            0x74,
            0x03, // jz +3
            0xee, // out dx, al
            0xeb,
            0xf8, // jmp lodsb
        ];
        match then {
            Then::ExitVm => s.extend_from_slice(&[
                0x0f,
                0x01,
                0x1e,
                IDTR as u8,
                (IDTR >> 8) as u8, // lidt [IDTR]: limit 0
                0xcc,              // int3: no IDT, so a triple fault
                0,
                0,
                0,
                0,
                0,
                0, // IDTR
            ]),
            Then::Hang => s.extend_from_slice(&[
                0xfa, // cli
                0xf4, // hlt
                0xeb, 0xfd, // jmp hlt
            ]),
        }
        s.resize(31, 0);
        s.extend_from_slice(text.as_bytes());
        s.push(0);
        assert!(s.len() <= 510, "the text does not fit in a boot sector");
        s.resize(510, 0);
        s.extend_from_slice(&[0x55, 0xaa]);
        s
    }

    #[test]
    fn the_root_disk_boots_first_on_every_bus() {
        // Real QEMU and SeaBIOS: the image is only a boot sector that reports one check, so
        // a boot proves the disk is attached on that bus and first in the boot order (the
        // seed disks are virtio too). UEFI boots of each bus are the end-to-end tests' part.
        let dir = tempfile::tempdir().unwrap();
        for bus in [DiskBus::Virtio, DiskBus::Nvme, DiskBus::Sata] {
            let image = dir.path().join(format!("{}.raw", bus.as_str()));
            let mut disk = boot_sector(
                &format!(
                    "\r\nCCB-CHECK|booted-from-{0}|PASS|{0}\r\nCCB-CHECKS-DONE\r\n",
                    bus.as_str()
                ),
                Then::ExitVm,
            );
            disk.resize(1 << 20, 0);
            std::fs::write(&image, &disk).unwrap();
            let mut kvm = false;
            let report = boot(
                &BootTest {
                    image: &image,
                    format: "raw",
                    arch: Arch::Amd64,
                    firmware: Firmware::Bios,
                    disk: bus,
                    timeout: Duration::from_secs(120),
                    checks: &[],
                    work: &dir.path().join(bus.as_str()),
                    serial_log: dir.path().join(format!("{}.log", bus.as_str())),
                    panicked_log: dir.path().join(format!("{}-panicked.log", bus.as_str())),
                },
                &mut kvm,
            )
            .unwrap();
            assert!(report.completed, "{bus:?}: {:?}", report.checks);
            assert_eq!(report.disk, bus);
            assert_eq!(report.checks.len(), 1, "{:?}", report.checks);
            assert_eq!(
                report.checks[0].name,
                format!("booted-from-{}", bus.as_str())
            );
        }
    }

    #[test]
    fn a_guest_kernel_panic_ends_the_boot_at_once_and_says_what_panicked() {
        // The console of a panicked kernel (the shape of the one a CI boot waited 900 s on),
        // then a guest that hangs with interrupts off, as Debian's kernels do after a panic.
        let console = "\r\n[    3.702113] BUG: kernel NULL pointer dereference, address: 0000000000000008\r\n\
            [    3.705001] #PF: supervisor read access in kernel mode\r\n\
            [    3.712950] RIP: 0010:nvme_irq+0x3c/0x90 [nvme]\r\n\
            [    3.730511] Kernel panic - not syncing: Fatal exception in interrupt\r\n\
            [    3.741851] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---\r\n";
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("panic.raw");
        let mut disk = boot_sector(console, Then::Hang);
        disk.resize(1 << 20, 0);
        std::fs::write(&image, &disk).unwrap();
        let report = boot(
            &BootTest {
                image: &image,
                format: "raw",
                arch: Arch::Amd64,
                firmware: Firmware::Bios,
                disk: DiskBus::Virtio,
                // Were the panic missed, the boot would end only here, and say so.
                timeout: Duration::from_secs(300),
                checks: &[],
                work: &dir.path().join("work"),
                serial_log: dir.path().join("panic.log"),
                panicked_log: dir.path().join("first-panic.log"),
            },
            &mut false,
        )
        .unwrap();
        assert!(!report.completed);
        // Booted twice: a panic the image causes panics again, and fails the boot; the first
        // attempt's console is kept beside the second's.
        let first = dir.path().join("first-panic.log");
        assert!(
            report
                .retried
                .as_deref()
                .is_some_and(|why| why.contains("Fatal exception in interrupt")
                    && why.contains(&first.display().to_string())),
            "{:?}",
            report.retried
        );
        assert!(
            std::fs::read_to_string(&first)
                .unwrap()
                .contains("RIP: 0010:nvme_irq")
        );
        assert_eq!(report.checks.len(), 1, "{:?}", report.checks);
        let boot = &report.checks[0];
        assert_eq!(boot.name, "boot");
        assert!(!boot.passed);
        assert!(
            boot.detail.starts_with("the guest kernel panicked after "),
            "{}",
            boot.detail
        );
        for part in [
            "Kernel panic - not syncing: Fatal exception in interrupt",
            "BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "RIP: 0010:nvme_irq+0x3c/0x90 [nvme]",
        ] {
            assert!(boot.detail.contains(part), "{part}: {}", boot.detail);
        }
    }

    fn attempt(accel: &str, completed: bool, panicked: bool) -> BootReport {
        BootReport {
            arch: Arch::Amd64,
            firmware: Firmware::Uefi,
            disk: DiskBus::Nvme,
            accel: accel.into(),
            duration_ms: 1,
            checks: if completed {
                vec![]
            } else {
                vec![CheckResult {
                    name: "boot".into(),
                    passed: false,
                    detail: if panicked {
                        "the guest kernel panicked after 4 s: Kernel panic - not syncing: Fatal exception in interrupt".into()
                    } else {
                        "no result within 900 s".into()
                    },
                }]
            },
            completed,
            serial_log: PathBuf::from("serial.log"),
            retried: None,
            panicked,
            kernel_started: true,
        }
    }

    #[test]
    fn a_kernel_panic_under_tcg_is_booted_once_more_and_said() {
        // The emulator's panic: the second boot passes, and the report says why it is one.
        let mut attempts = vec![attempt("tcg", true, false), attempt("tcg", false, true)];
        let report = boot_with(
            &mut false,
            |_| Ok(attempts.pop()),
            || " (its console: first.log)".into(),
        )
        .unwrap();
        assert!(report.passed());
        assert!(attempts.is_empty());
        assert!(
            report
                .retried
                .as_deref()
                .is_some_and(|w| w.starts_with("the guest kernel panicked after 4 s")
                    && w.ends_with("(its console: first.log)")),
            "{:?}",
            report.retried
        );

        // Only once: a second panic is the boot's result.
        let mut attempts = vec![
            attempt("tcg", true, false),
            attempt("tcg", false, true),
            attempt("tcg", false, true),
        ];
        let report = boot_with(&mut false, |_| Ok(attempts.pop()), String::new).unwrap();
        assert!(!report.passed() && report.panicked);
        assert_eq!(attempts.len(), 1, "a third boot was made");

        // A boot that failed without a panic, or a panic under KVM, is never booted again.
        let mut attempts = vec![attempt("tcg", true, false), attempt("tcg", false, false)];
        let report = boot_with(&mut false, |_| Ok(attempts.pop()), String::new).unwrap();
        assert!(!report.passed() && report.retried.is_none());
        let mut attempts = vec![attempt("tcg", true, false), attempt("kvm", false, true)];
        let mut kvm = true;
        let report = boot_with(&mut kvm, |_| Ok(attempts.pop()), String::new).unwrap();
        assert!(!report.passed() && report.retried.is_none() && kvm);
    }

    #[test]
    fn the_panic_summary_names_the_oops_that_led_to_it_and_not_an_earlier_one() {
        let arm64 = "[    1.0] Internal error: Oops: 0000000096000004 [#1] SMP\n\
            [    1.1] pc : earlier_fault+0x10/0x20\n\
            [    2.0] Unable to handle kernel paging request at virtual address dead000000000100\n\
            [    2.1] pc : virtqueue_get_buf+0x2c/0x40\n\
            [    2.2] Kernel panic - not syncing: Oops: Fatal exception\n";
        assert_eq!(
            panic_summary(arm64),
            "Kernel panic - not syncing: Oops: Fatal exception / \
             Unable to handle kernel paging request at virtual address dead000000000100 / \
             pc : virtqueue_get_buf+0x2c/0x40"
        );
        // A panic with no oops before it (an init that died) is its own message.
        assert_eq!(
            panic_summary(
                "[ 5.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
            ),
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        );
    }

    #[test]
    fn a_foreign_arch_never_boots_on_kvm() {
        let host = crate::manifest::Arch::host().expect("tests run on amd64 or arm64");
        let foreign = if host == Arch::Amd64 {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        assert!(!kvm_for(foreign, true));
        if host == Arch::Amd64 {
            assert!(kvm_for(Arch::Amd64, true));
            assert!(!kvm_for(Arch::Amd64, false));
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn user_data_installs_the_checks_and_starts_them() {
        let ud = user_data(
            &[ElementCheck {
                element: "cc-ssh".into(),
                name: "10-sshd".into(),
                script: b"#!/bin/sh\ntrue\n".to_vec(),
            }],
            123,
        );
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("path: /var/lib/ccb-checks/cc-ssh/10-sshd"));
        assert!(ud.contains("runcmd:"));
        assert!(ud.contains(&b64(
            b"[Unit]\nDescription=ccb boot checks\nAfter=cloud-final.service multi-user.target\n\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/ccb-boot-check 123\n"
        )));
    }
}
