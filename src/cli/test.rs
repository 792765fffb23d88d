//! `ccb test`: build the targets' disks if needed, boot each in QEMU, report the checks.

use clap::Args;

use super::{CliError, Context};
use crate::bootcheck::{self, BootReport, DiskBus, Firmware};
use crate::ops;
use crate::ops::build::BuildReport;
use crate::ops::test::{BootPlan, BootResult, TestObserver, TestRequest};
use crate::ui::{OutputFormat, Shell};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareChoice {
    Bios,
    Uefi,
    Both,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Targets to boot (default: every image)
    targets: Vec<String>,
    /// Which firmware to boot with [default: both]
    #[arg(long, value_enum)]
    firmware: Option<FirmwareChoice>,
    /// The bus the image's disk is attached to (repeatable: one boot per bus and firmware), or
    /// FIRMWARE:BUS for one boot with that firmware (`--disk uefi:nvme --disk bios:sata`)
    #[arg(long, value_delimiter = ',', default_value = "virtio", value_parser = parse_disk, value_name = "[FIRMWARE:]BUS")]
    disk: Vec<(Option<Firmware>, DiskBus)>,
    /// Seconds a boot may take, checks included, before it counts as failed
    #[arg(long, default_value_t = 900, value_name = "S")]
    timeout: u64,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    /// Build variables over the manifests' `env`, as for `ccb build --env`
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

/// A `--disk` value: `nvme`, or `uefi:nvme` for one boot with that firmware.
fn parse_disk(s: &str) -> Result<(Option<Firmware>, DiskBus), String> {
    use clap::ValueEnum;
    let (fw, bus) = match s.split_once(':') {
        Some((fw, bus)) => (Some(Firmware::from_str(fw, true)?), bus),
        None => (None, s),
    };
    Ok((fw, DiskBus::from_str(bus, true)?))
}

/// Tells the test as it goes, in text.
struct Text {
    shell: Shell,
    text: bool,
}

impl TestObserver for Text {
    fn built(&mut self, report: &BuildReport) {
        self.shell.status(&report.summary_line());
    }

    fn booting(&mut self, name: &str, result: &BootPlan, kvm: bool) {
        self.shell.status(&format!(
            "booting {name} ({}, {}, {} disk, {})...",
            result.arch,
            result.firmware.as_str(),
            result.disk.as_str(),
            if kvm { "kvm" } else { "tcg" }
        ));
    }

    fn booted(&mut self, report: &BootReport, result: &BootResult) {
        if !self.text {
            return;
        }
        let mut text = Vec::new();
        let _ = bootcheck::render(std::slice::from_ref(report), &mut text);
        self.shell.out(&String::from_utf8_lossy(&text));
        self.shell.status(&format!(
            "{} {} {} ({} disk) in {:.0} s; serial log: {}",
            if result.passed { "passed" } else { "FAILED" },
            result.arch,
            result.firmware.as_str(),
            result.disk.as_str(),
            result.duration_ms as f64 / 1000.0,
            result.serial_log.display()
        ));
    }
}

pub fn run(ctx: &mut Context, a: TestArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let store = ctx.store()?;
    let paired: Vec<(Firmware, DiskBus)> = a
        .disk
        .iter()
        .filter_map(|(fw, bus)| fw.map(|fw| (fw, *bus)))
        .collect();
    if !paired.is_empty() && (paired.len() != a.disk.len() || a.firmware.is_some()) {
        return Err(CliError::usage(
            "--disk FIRMWARE:BUS names each boot's firmware: give every --disk one \
             (uefi:nvme, bios:sata) and no --firmware, or give buses only",
        ));
    }
    let mut buses: Vec<DiskBus> = a.disk.iter().map(|(_, bus)| *bus).collect();
    buses.sort();
    buses.dedup();
    let firmwares = if paired.is_empty() {
        match a.firmware.unwrap_or(FirmwareChoice::Both) {
            FirmwareChoice::Bios => vec![Firmware::Bios],
            FirmwareChoice::Uefi => vec![Firmware::Uefi],
            FirmwareChoice::Both => vec![Firmware::Bios, Firmware::Uefi],
        }
    } else {
        [Firmware::Bios, Firmware::Uefi]
            .into_iter()
            .filter(|f| paired.iter().any(|(p, _)| p == f))
            .collect()
    };
    let mut unique = Vec::new();
    for p in paired {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    let req = TestRequest {
        targets: a.targets,
        arch: a.arch,
        firmwares,
        buses,
        paired: unique,
        timeout: std::time::Duration::from_secs(a.timeout),
    };
    let mut session = ctx.session(&store, a.element_path, a.env)?;
    let mut observer = Text {
        shell,
        text: a.format == OutputFormat::Text,
    };
    let report = ops::test::run(&mut session, &req, &shell, &mut observer)?;
    if a.format == OutputFormat::Json {
        shell.out_json(&report);
    }
    if !report.passed {
        return Err(CliError::msg("boot checks failed"));
    }
    Ok(())
}
