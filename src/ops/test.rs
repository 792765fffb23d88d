//! `test`: the build of the targets' disks, then boots of each disk over the same graph.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::build::{BuildReport, BuildRequest};
use super::{CommandError, Planned, Session};
use crate::bootcheck::{self, BootReport, BootTest, CheckResult, DiskBus, Firmware};
use crate::manifest::Arch;
use crate::ui::Shell;

/// What to boot, and with what.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// Targets to boot (all images when empty).
    pub targets: Vec<String>,
    /// Only these architectures (all when empty).
    pub arch: Vec<String>,
    /// Firmwares to boot with; arm64 has no BIOS, so it boots UEFI only (BIOS alone asked for
    /// an arm64 image named on the command line is an error).
    pub firmwares: Vec<Firmware>,
    /// The buses the disk is attached to: one boot per firmware and bus.
    pub buses: Vec<DiskBus>,
    /// Boots asked for as firmware and bus together (`--disk uefi:nvme --disk bios:sata`):
    /// exactly these, instead of every firmware with every bus.
    pub paired: Vec<(Firmware, DiskBus)>,
    /// How long a boot may take, checks included.
    pub timeout: Duration,
}

/// One boot of one disk.
#[derive(Debug, Clone, Serialize)]
pub struct BootResult {
    pub target: String,
    pub arch: Arch,
    pub image: PathBuf,
    pub firmware: Firmware,
    pub disk: DiskBus,
    pub accel: String,
    pub duration_ms: u64,
    pub completed: bool,
    pub passed: bool,
    pub serial_log: PathBuf,
    pub checks: Vec<CheckResult>,
    /// Why this is the boot's second attempt (the first's guest kernel panicked under TCG).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<String>,
}

/// The build and every boot.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub version: u32,
    pub results: Vec<BootResult>,
    pub passed: bool,
    /// The build of the disks booted.
    pub build: BuildReport,
}

/// One boot about to start.
#[derive(Debug, Clone, Copy)]
pub struct BootPlan {
    pub arch: Arch,
    pub firmware: Firmware,
    pub disk: DiskBus,
}

/// What the test tells as it goes: the build's report, then each boot as it starts and ends.
pub trait TestObserver {
    fn built(&mut self, report: &BuildReport);
    fn booting(&mut self, name: &str, boot: &BootPlan, kvm: bool);
    fn booted(&mut self, report: &BootReport, result: &BootResult);
}

/// `ccb test`: a boot that cannot happen is refused from the words alone, before "latest"
/// artifacts are pinned (downloading them) for a test that would be refused anyway; then the
/// targets are pinned and planned once, their disks built, and each disk booted.
pub fn run(
    session: &mut Session,
    req: &TestRequest,
    shell: &Shell,
    observer: &mut dyn TestObserver,
) -> Result<TestReport, CommandError> {
    // A wildcard leaves out, with a note, the images whose secrets this host lacks.
    let targets = session.buildable_here(&req.targets, shell);
    refuse_impossible_boots(session, &targets, req)?;
    let planned = session.plan_to_build(&targets, &req.arch, shell)?;
    test(session, &planned, req, shell, observer)
}

/// Refuses a boot that cannot happen (BIOS alone for an arm64 image named on the command line)
/// from the words alone.
fn refuse_impossible_boots(
    session: &Session,
    targets: &[String],
    req: &TestRequest,
) -> Result<(), CommandError> {
    let named = crate::label::named_arches(
        &session.model,
        targets,
        crate::label::parse_arches(&req.arch)?.as_ref(),
    );
    refuse_bios_on_arm64(req, &session.targets(targets, &req.arch)?, &named)
}

fn refuse_bios_on_arm64(
    req: &TestRequest,
    targets: &[crate::label::Target],
    named: &std::collections::BTreeSet<Arch>,
) -> Result<(), CommandError> {
    if req.firmwares.contains(&Firmware::Uefi) {
        return Ok(());
    }
    match targets
        .iter()
        .find(|t| t.arch == Arch::Arm64 && named.contains(&t.arch))
    {
        Some(t) => Err(CommandError::usage(format!(
            "{}: arm64 has no BIOS, its disks boot on UEFI only (--firmware uefi)",
            t.label()
        ))),
        None => Ok(()),
    }
}

/// Boots the planned targets' disks, building what is missing first: amd64 on SeaBIOS and OVMF,
/// arm64 on AAVMF (UEFI only). Asking for a BIOS boot of an arm64 image named on the command
/// line is refused before anything is built; unnamed arm64 images are then left out.
fn test(
    session: &Session,
    planned: &Planned,
    req: &TestRequest,
    shell: &Shell,
    observer: &mut dyn TestObserver,
) -> Result<TestReport, CommandError> {
    let bios_only = !req.firmwares.contains(&Firmware::Uefi);
    refuse_bios_on_arm64(req, &planned.targets, &planned.named_arches)?;
    let build = super::build::build(
        session,
        planned,
        &BuildRequest::disks(&req.targets, &req.arch),
        shell,
    )?;
    observer.built(&build);
    build.ok()?;

    let store = session.store;
    let scratch = tempfile::Builder::new()
        .prefix("ccb-test-")
        .tempdir_in(std::env::temp_dir())
        .map_err(|e| {
            CommandError::environment(
                format!("cannot create a scratch directory: {e}"),
                "set TMPDIR to a writable directory with room for a disk overlay",
            )
        })?;
    let mut accel = Accel::start(store, scratch.path(), shell);

    let mut results = Vec::new();
    for disk in &build.disks {
        let t = &disk.target;
        let firmwares: Vec<Firmware> = match t.arch {
            Arch::Amd64 => req.firmwares.clone(),
            Arch::Arm64 if bios_only => continue,
            Arch::Arm64 => vec![Firmware::Uefi],
        };
        let mut kvm = accel.kvm_for(t.arch);
        let (name, image, format) = disk_file(store, disk)?;
        let checks = checks_of(session, planned, t);
        for (firmware, bus) in boots_of(req, &firmwares) {
            let plan = BootPlan {
                arch: t.arch,
                firmware,
                disk: bus,
            };
            observer.booting(&name, &plan, kvm);
            let test = BootTest {
                image: &image,
                format,
                arch: t.arch,
                firmware,
                disk: bus,
                timeout: req.timeout,
                checks: &checks,
                work: &scratch.path().join(format!(
                    "{}-{}-{}-{}",
                    t.image,
                    t.arch,
                    firmware.as_str(),
                    bus.as_str()
                )),
                serial_log: store.boot_log(&disk.key, firmware.as_str(), bus.as_str()),
                panicked_log: store.boot_log_panicked(&disk.key, firmware.as_str(), bus.as_str()),
            };
            let had_kvm = kvm;
            let (report, result) = boot_one(&test, t, &mut kvm, shell)?;
            // Only a kernel that spoke under TCG proves the stall was KVM's, not the image's.
            if had_kvm && !kvm && report.kernel_started {
                accel.stalled(store);
            }
            observer.booted(&report, &result);
            results.push(result);
        }
    }
    Ok(TestReport {
        version: 1,
        passed: results.iter().all(|r| r.passed),
        results,
        build,
    })
}

/// The boots of one disk: every firmware on every bus, or the firmware and bus pairs asked
/// for (of the firmwares the disk's arch has).
fn boots_of(req: &TestRequest, firmwares: &[Firmware]) -> Vec<(Firmware, DiskBus)> {
    if req.paired.is_empty() {
        firmwares
            .iter()
            .flat_map(|&firmware| req.buses.iter().map(move |&disk| (firmware, disk)))
            .collect()
    } else {
        req.paired
            .iter()
            .filter(|(fw, _)| firmwares.contains(fw))
            .copied()
            .collect()
    }
}

/// Whether boots use KVM: probed once per run, and off for good (this run and, through the
/// store, the next ones on this kernel and QEMU) once a kernel stalled under it.
struct Accel {
    host: Option<bootcheck::KvmHost>,
    stalled: bool,
    amd64_probe: bool,
}

impl Accel {
    fn start(store: &crate::store::Store, scratch: &std::path::Path, shell: &Shell) -> Accel {
        let host = bootcheck::KvmHost::here();
        let stalled = stalled_here_before(store, host.as_ref());
        let amd64_probe = if stalled {
            shell.status(&format!(
                "a kernel stalled under KVM on this host before (same kernel and QEMU): booting with TCG (remove {} to try KVM again)",
                store.path(crate::store::Layout::KVM_STALL).display()
            ));
            false
        } else {
            let works = bootcheck::kvm_works(scratch);
            if !works {
                shell.status("KVM is unavailable or does not work here: booting with TCG (slower)");
            }
            works
        };
        Accel {
            host,
            stalled,
            amd64_probe,
        }
    }

    fn kvm_for(&self, arch: Arch) -> bool {
        !self.stalled && bootcheck::kvm_for(arch, self.amd64_probe)
    }

    /// A kernel stalled under KVM: every later boot, of this disk or another, in this run or
    /// the next, uses TCG.
    fn stalled(&mut self, store: &crate::store::Store) {
        if !self.stalled {
            self.stalled = true;
            remember_stall(store, self.host.as_ref());
        }
    }
}

/// A built disk's published name, its file (qcow2, else raw) and that file's format.
fn disk_file(
    store: &crate::store::Store,
    disk: &super::build::BuiltDisk,
) -> Result<(String, PathBuf, &'static str), CommandError> {
    let t = &disk.target;
    let meta = store.outputs_meta(&disk.key).ok_or_else(|| {
        CommandError::msg(format!(
            "the disk of //images:{} is not in the store",
            t.image
        ))
    })?;
    let (file, format) = ["qcow2", "raw"]
        .iter()
        .find_map(|ext| {
            let f = format!("{}.{ext}", meta.name);
            meta.files.iter().any(|(n, _)| *n == f).then_some((f, *ext))
        })
        .ok_or_else(|| {
            CommandError::msg(format!("//images:{} has no qcow2 or raw output", t.image))
        })?;
    Ok((meta.name, disk.dir.join(file), format))
}

/// The boot checks the target's elements ship (`boot-checks.d`).
fn checks_of(
    session: &Session,
    planned: &Planned,
    t: &crate::label::Target,
) -> Vec<bootcheck::ElementCheck> {
    let resolved = &planned.graph.resolved[&(t.image.clone(), t.arch)];
    let dirs: Vec<(String, PathBuf)> = resolved
        .elements
        .iter()
        .filter_map(|n| {
            session
                .resolver
                .path
                .get(n)
                .map(|d| (n.clone(), d.dir.clone()))
        })
        .collect();
    bootcheck::element_checks(&dirs)
}

/// Whether a kernel stalled under KVM on this very host (kernel and QEMU) in an earlier run.
fn stalled_here_before(store: &crate::store::Store, host: Option<&bootcheck::KvmHost>) -> bool {
    host.is_some_and(|h| {
        store
            .read_json::<bootcheck::KvmHost>(crate::store::Layout::KVM_STALL)
            .as_ref()
            == Some(h)
    })
}

/// Remembers that a kernel stalled under KVM on this host. A cache record: when it cannot be
/// written, the next run pays the stall once more and tries again.
fn remember_stall(store: &crate::store::Store, host: Option<&bootcheck::KvmHost>) {
    if let Some(h) = host {
        let _ = store.write_cache_json(crate::store::Layout::KVM_STALL, h);
    }
}

/// One boot; `kvm` is turned off for the next boots when KVM started but never ran the guest.
fn boot_one(
    test: &BootTest,
    t: &crate::label::Target,
    kvm: &mut bool,
    shell: &Shell,
) -> Result<(BootReport, BootResult), CommandError> {
    let had_kvm = *kvm;
    let report = bootcheck::boot(test, kvm)?;
    if had_kvm && !*kvm {
        shell.status(
            "KVM started but the kernel never spoke: KVM does not really work here, using TCG",
        );
    }
    if let Some(why) = &report.retried {
        shell.warn(&format!("booted a second time: {why}"));
    }
    let result = BootResult {
        target: t.label(),
        arch: t.arch,
        image: test.image.to_path_buf(),
        firmware: report.firmware,
        disk: test.disk,
        accel: report.accel.clone(),
        duration_ms: report.duration_ms,
        completed: report.completed,
        passed: report.passed(),
        serial_log: report.serial_log.clone(),
        checks: report.checks.clone(),
        retried: report.retried.clone(),
    };
    Ok((report, result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootcheck::KvmHost;
    use crate::store::{Layout, Store};

    fn host(kernel: &str, qemu: &str) -> KvmHost {
        KvmHost {
            kernel: kernel.into(),
            qemu: qemu.into(),
        }
    }

    #[test]
    fn a_kvm_stall_is_remembered_for_this_kernel_and_qemu_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        let here = host("6.1.0-40-cloud-amd64", "QEMU emulator version 7.2.22");
        assert!(
            !stalled_here_before(&store, Some(&here)),
            "nothing seen yet"
        );

        remember_stall(&store, Some(&here));
        assert!(store.exists(Layout::KVM_STALL));
        assert!(stalled_here_before(&store, Some(&here)));
        // A new kernel or a new QEMU may have fixed KVM: it is tried again.
        assert!(!stalled_here_before(
            &store,
            Some(&host(
                "6.1.0-41-cloud-amd64",
                "QEMU emulator version 7.2.22"
            ))
        ));
        assert!(!stalled_here_before(
            &store,
            Some(&host("6.1.0-40-cloud-amd64", "QEMU emulator version 8.2.2"))
        ));
        // A host whose versions cannot be read remembers nothing and is never taken for one.
        assert!(!stalled_here_before(&store, None));
        // A damaged record is a missing one.
        std::fs::write(store.path(Layout::KVM_STALL), b"{\"kernel\": 1").unwrap();
        assert!(!stalled_here_before(&store, Some(&here)));
    }

    #[test]
    fn this_host_is_read_from_its_kernel_and_qemu() {
        let Some(h) = KvmHost::here() else {
            panic!(
                "the test host has QEMU (scripts/host-deps.sh installs it) and a kernel release"
            );
        };
        assert!(!h.kernel.is_empty());
        assert!(h.qemu.starts_with("QEMU emulator version "), "{}", h.qemu);
    }
}
