//! What this host can build and test: `ccb doctor`, and the up-front refusal of a build for
//! an architecture the host cannot run.
//!
//! Everything here is read from the running system (binfmt_misc, /proc, /dev, the tools on
//! PATH); nothing is installed or registered. The report names the command that would fix
//! each missing piece, as `scripts/host-deps.sh` would run it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::manifest::Arch;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// How the host runs programs of one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchMode {
    Native,
    /// Through qemu-user, registered with binfmt_misc.
    Emulated,
    /// Not at all.
    Missing,
}

/// One architecture: can its root filesystems be built here, and can its disks be booted?
#[derive(Debug, Clone, Serialize)]
pub struct ArchReport {
    pub arch: Arch,
    pub mode: ArchMode,
    /// The binfmt_misc handler that runs it when emulated (`qemu-aarch64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The registered interpreter, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<PathBuf>,
    /// Registered with the fix-binary flag (F): chroots need no interpreter inside them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix_binary: Option<bool>,
    /// Root filesystems of this arch can be built here.
    pub can_build: bool,
    /// Disks of this arch can be booted here (`ccb test`): QEMU and firmware present.
    pub can_boot: bool,
    /// What is missing, each with the command that fixes it.
    pub problems: Vec<String>,
}

/// A capability of the host kernel or devices.
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub ok: bool,
    pub detail: String,
}

/// A tool ccb runs, where it is and its version.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: String,
    pub used_for: String,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub version: u32,
    /// The host's architecture as the kernel names it (`x86_64`).
    pub host: String,
    pub arches: Vec<ArchReport>,
    /// KVM: the device exists, and a guest really runs on it (a probe boot).
    pub kvm: Capability,
    pub loop_devices: Capability,
    pub overlayfs: Capability,
    pub binfmt_misc: Capability,
    pub tools: Vec<Tool>,
}

impl DoctorReport {
    /// Everything needed to build and boot every arch is there.
    pub fn all_ok(&self) -> bool {
        self.arches.iter().all(|a| a.can_build && a.can_boot)
            && self.loop_devices.ok
            && self.overlayfs.ok
            && self.tools.iter().all(|t| t.path.is_some())
    }
}

fn handler_of(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    }
}

/// A binfmt_misc registration, as `/proc/sys/fs/binfmt_misc/<name>` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Binfmt {
    pub enabled: bool,
    pub interpreter: Option<PathBuf>,
    pub flags: String,
}

/// Parses a binfmt_misc entry (`enabled`, `interpreter /usr/…`, `flags: PF`, …).
pub fn parse_binfmt(text: &str) -> Binfmt {
    let mut b = Binfmt::default();
    for line in text.lines() {
        if line == "enabled" {
            b.enabled = true;
        } else if let Some(i) = line.strip_prefix("interpreter ") {
            b.interpreter = Some(PathBuf::from(i.trim()));
        } else if let Some(f) = line.strip_prefix("flags:") {
            b.flags = f.trim().to_string();
        }
    }
    b
}

/// How `arch` runs here and whether it can be built, with what is missing named; `boot`
/// says whether `ccb test` can boot it.
pub fn arch_report(arch: Arch) -> ArchReport {
    let mut problems = Vec::new();
    let (mode, handler, interpreter, fix_binary) = if Arch::host() == Some(arch) {
        (ArchMode::Native, None, None, None)
    } else {
        let handler = handler_of(arch);
        let entry = std::fs::read_to_string(Path::new(BINFMT).join(handler)).ok();
        let b = entry.as_deref().map(parse_binfmt).unwrap_or_default();
        let fix = b.flags.contains('F');
        if !Path::new(BINFMT).join("register").exists() {
            problems.push(format!(
                "binfmt_misc is not mounted: mount -t binfmt_misc binfmt_misc {BINFMT} && \
                 update-binfmts --enable {handler}"
            ));
        } else if entry.is_none() {
            problems.push(format!(
                "no qemu-user emulation is registered for {arch} (binfmt_misc handler \
                 `{handler}`): apt-get install qemu-user-static binfmt-support (or run \
                 scripts/host-deps.sh's ensure_arm64_emulation)"
            ));
        } else if !b.enabled {
            problems.push(format!(
                "the binfmt_misc handler `{handler}` is disabled: update-binfmts --enable {handler}"
            ));
        } else if !fix {
            problems.push(format!(
                "`{handler}` is registered without the fix-binary flag (F), so a chroot cannot \
                 find its interpreter: re-register it with F (Debian's qemu-user-static does)"
            ));
        }
        let mode = if b.enabled && fix {
            ArchMode::Emulated
        } else {
            ArchMode::Missing
        };
        if mode == ArchMode::Emulated && which("arch-test").is_none() {
            problems.push(format!(
                "mmdebstrap needs arch-test to bootstrap a foreign {arch} root: apt-get install \
                 arch-test"
            ));
        }
        (
            mode,
            Some(handler.to_string()),
            b.interpreter,
            entry.map(|_| fix),
        )
    };
    let (qemu, firmware, firmware_pkg, qemu_pkg) = boot_needs(arch);
    let has_qemu = which(qemu).is_some();
    let has_firmware = firmware.iter().any(|f| Path::new(f).exists());
    if !has_qemu {
        problems.push(format!(
            "{arch} disks cannot be booted: {qemu} is missing (apt-get install {qemu_pkg})"
        ));
    }
    if !has_firmware {
        problems.push(format!(
            "{arch} disks cannot be booted on UEFI: no firmware at {} (apt-get install \
             {firmware_pkg})",
            firmware.join(" or ")
        ));
    }
    ArchReport {
        arch,
        mode,
        handler,
        interpreter,
        fix_binary,
        can_build: mode != ArchMode::Missing,
        can_boot: has_qemu && has_firmware,
        problems,
    }
}

/// (QEMU system emulator, UEFI firmware candidates, firmware package, QEMU package) of an arch.
fn boot_needs(arch: Arch) -> (&'static str, Vec<&'static str>, &'static str, &'static str) {
    match arch {
        Arch::Amd64 => (
            "qemu-system-x86_64",
            vec![
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_CODE.fd",
            ],
            "ovmf",
            "qemu-system-x86",
        ),
        Arch::Arm64 => (
            "qemu-system-aarch64",
            vec!["/usr/share/AAVMF/AAVMF_CODE.fd"],
            "qemu-efi-aarch64",
            "qemu-system-arm",
        ),
    }
}

/// Arches whose root filesystems this host can build.
pub fn buildable_arches() -> Vec<Arch> {
    Arch::ALL
        .into_iter()
        .filter(|&a| arch_report(a).can_build)
        .collect()
}

/// The error for building `arch` here when it cannot be, naming what is missing.
pub fn cannot_build(report: &ArchReport) -> String {
    format!(
        "cannot build {} root filesystems on this {} host: {} (see `ccb doctor`)",
        report.arch,
        std::env::consts::ARCH,
        report
            .problems
            .iter()
            .find(|p| !p.contains("cannot be booted"))
            .map(String::as_str)
            .unwrap_or("no emulation")
    )
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The tools ccb runs: (command, version arguments, what for).
const TOOLS: &[(&str, &[&str], &str)] = &[
    (
        "mmdebstrap",
        &["--version"],
        "Debian/Ubuntu base root filesystems",
    ),
    ("mkfs.ext4", &["-V"], "ext4 root filesystems"),
    ("mkfs.xfs", &["-V"], "xfs root filesystems"),
    ("mkfs.fat", &["--help"], "EFI system partitions"),
    (
        "mcopy",
        &["--version"],
        "filling EFI partitions and test seeds",
    ),
    ("unsquashfs", &["-version"], "squashfs base images"),
    (
        "qemu-img",
        &["--version"],
        "qcow2 conversion, test overlays",
    ),
    ("qemu-system-x86_64", &["--version"], "booting amd64 disks"),
    ("qemu-system-aarch64", &["--version"], "booting arm64 disks"),
    (
        "qemu-aarch64-static",
        &["--version"],
        "building arm64 on other hosts",
    ),
    (
        "grub-mkimage",
        &["--version"],
        "GRUB boot images of emulated arches, made natively",
    ),
    ("arch-test", &["-n"], "mmdebstrap's foreign-arch check"),
    ("git", &["--version"], "element sources"),
];

fn version_of(path: &Path, args: &[&str]) -> Option<String> {
    let out = crate::process::Process::new(path)
        .args(args)
        .output_any_status()
        .ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    // The first line that carries a version number.
    text.lines()
        .map(str::trim)
        .find(|l| l.chars().any(|c| c.is_ascii_digit()) && l.contains('.'))
        .map(|l| l.chars().take(100).collect())
}

fn tools() -> Vec<Tool> {
    TOOLS
        .iter()
        .filter(|(name, _, _)| {
            // The emulator of the host's own arch is never needed.
            !(Arch::host() == Some(Arch::Arm64) && *name == "qemu-aarch64-static")
        })
        .map(|(name, args, used_for)| {
            let path = which(name);
            let version = if *name == "arch-test" {
                None
            } else {
                path.as_deref().and_then(|p| version_of(p, args))
            };
            Tool {
                name: name.to_string(),
                used_for: used_for.to_string(),
                path,
                version,
            }
        })
        .collect()
}

fn loop_devices() -> Capability {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
    {
        Ok(_) => Capability {
            ok: true,
            detail: "/dev/loop-control opens read-write".into(),
        },
        Err(e) => Capability {
            ok: false,
            detail: format!(
                "/dev/loop-control: {e} (disk images need loop devices: modprobe loop, as root)"
            ),
        },
    }
}

fn overlayfs() -> Capability {
    let listed = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    });
    Capability {
        ok: listed,
        detail: if listed {
            "overlay is in /proc/filesystems: layers stack without copies".into()
        } else {
            "overlay is not in /proc/filesystems (modprobe overlay): layers are copied".into()
        },
    }
}

fn binfmt_misc() -> Capability {
    let mounted = Path::new(BINFMT).join("register").exists();
    let enabled = std::fs::read_to_string(Path::new(BINFMT).join("status"))
        .is_ok_and(|s| s.trim() == "enabled");
    Capability {
        ok: mounted && enabled,
        detail: match (mounted, enabled) {
            (true, true) => format!("mounted at {BINFMT}"),
            (true, false) => format!("mounted at {BINFMT} but disabled (echo 1 > {BINFMT}/status)"),
            _ => format!("not mounted: mount -t binfmt_misc binfmt_misc {BINFMT}"),
        },
    }
}

fn kvm(scratch: &Path) -> Capability {
    if !Path::new("/dev/kvm").exists() {
        return Capability {
            ok: false,
            detail: "/dev/kvm is absent: boots use TCG (slower)".into(),
        };
    }
    if crate::bootcheck::kvm_works(scratch) {
        Capability {
            ok: true,
            detail: "/dev/kvm runs a probe guest: boots use KVM".into(),
        }
    } else {
        Capability {
            ok: false,
            detail: "/dev/kvm exists but a probe guest did not run on it: boots use TCG".into(),
        }
    }
}

/// Looks at the host: every check `ccb doctor` reports. Takes a few seconds at most (the KVM
/// probe boot is bounded).
pub fn diagnose() -> DoctorReport {
    let scratch = tempfile::tempdir().ok();
    let kvm = match &scratch {
        Some(s) => kvm(s.path()),
        None => Capability {
            ok: false,
            detail: "no scratch directory for the KVM probe".into(),
        },
    };
    DoctorReport {
        version: 1,
        host: std::env::consts::ARCH.to_string(),
        arches: Arch::ALL.into_iter().map(arch_report).collect(),
        kvm,
        loop_devices: loop_devices(),
        overlayfs: overlayfs(),
        binfmt_misc: binfmt_misc(),
        tools: tools(),
    }
}

/// The report for people.
pub fn render(r: &DoctorReport, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "MISS" };
    writeln!(out, "host: {}", r.host)?;
    for a in &r.arches {
        let how = match a.mode {
            ArchMode::Native => "native".to_string(),
            ArchMode::Emulated => format!(
                "emulated ({}{})",
                a.handler.as_deref().unwrap_or("qemu-user"),
                a.interpreter
                    .as_ref()
                    .map(|i| format!(" via {}", i.display()))
                    .unwrap_or_default()
            ),
            ArchMode::Missing => "cannot run".to_string(),
        };
        writeln!(
            out,
            "{} {:5}  build: {:3}  boot: {:3}  {how}",
            mark(a.can_build && a.can_boot),
            a.arch.as_str(),
            if a.can_build { "yes" } else { "no" },
            if a.can_boot { "yes" } else { "no" },
        )?;
        for p in &a.problems {
            writeln!(out, "       {p}")?;
        }
    }
    for (name, c) in [
        ("kvm", &r.kvm),
        ("loop", &r.loop_devices),
        ("overlayfs", &r.overlayfs),
        ("binfmt_misc", &r.binfmt_misc),
    ] {
        writeln!(out, "{} {name:11}  {}", mark(c.ok), c.detail)?;
    }
    writeln!(out, "tools:")?;
    for t in &r.tools {
        match &t.path {
            Some(p) => writeln!(
                out,
                "{} {:20} {}  {}",
                mark(true),
                t.name,
                t.version.as_deref().unwrap_or("(present)"),
                p.display()
            )?,
            None => writeln!(
                out,
                "{} {:20} not found ({})",
                mark(false),
                t.name,
                t.used_for
            )?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debian_qemu_user_static_entry_parses_with_its_fix_binary_flag() {
        let b = parse_binfmt(
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n\
             offset 0\nmagic 7f454c46\nmask ffffffff\n",
        );
        assert!(b.enabled);
        assert_eq!(
            b.interpreter.as_deref(),
            Some(Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"))
        );
        assert!(b.flags.contains('F'));
    }

    #[test]
    fn a_disabled_entry_without_flags_is_neither_enabled_nor_fixed() {
        let b = parse_binfmt("disabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \n");
        assert!(!b.enabled);
        assert!(!b.flags.contains('F'));
    }

    #[test]
    fn the_host_arch_is_native_and_buildable() {
        let host = Arch::host().expect("tests run on amd64 or arm64");
        let r = arch_report(host);
        assert_eq!(r.mode, ArchMode::Native);
        assert!(r.can_build);
        assert!(buildable_arches().contains(&host));
    }

    #[test]
    fn the_text_report_names_every_arch_and_missing_tool() {
        let r = DoctorReport {
            version: 1,
            host: "x86_64".into(),
            arches: vec![ArchReport {
                arch: Arch::Arm64,
                mode: ArchMode::Missing,
                handler: Some("qemu-aarch64".into()),
                interpreter: None,
                fix_binary: None,
                can_build: false,
                can_boot: true,
                problems: vec!["no qemu-user emulation is registered".into()],
            }],
            kvm: Capability {
                ok: false,
                detail: "absent".into(),
            },
            loop_devices: Capability {
                ok: true,
                detail: "fine".into(),
            },
            overlayfs: Capability {
                ok: true,
                detail: "fine".into(),
            },
            binfmt_misc: Capability {
                ok: false,
                detail: "not mounted".into(),
            },
            tools: vec![Tool {
                name: "mmdebstrap".into(),
                used_for: "bases".into(),
                path: None,
                version: None,
            }],
        };
        let mut text = Vec::new();
        render(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("MISS arm64  build: no"), "{text}");
        assert!(text.contains("no qemu-user emulation is registered"));
        assert!(text.contains("MISS mmdebstrap"), "{text}");
        assert!(!r.all_ok());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["arches"][0]["mode"], "missing");
        assert_eq!(json["arches"][0]["arch"], "arm64");
    }
}
