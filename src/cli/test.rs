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
    /// Which firmware to boot with
    #[arg(long, value_enum, default_value = "both")]
    firmware: FirmwareChoice,
    /// The bus the image's disk is attached to (repeatable: one boot per bus and firmware)
    #[arg(long, value_enum, value_delimiter = ',', default_value = "virtio")]
    disk: Vec<DiskBus>,
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
    let mut session = ctx.session(&store, a.element_path, a.env)?;
    let planned = session.plan_to_build(&a.targets, &a.arch, &shell)?;
    let mut buses = a.disk.clone();
    buses.sort();
    buses.dedup();
    let req = TestRequest {
        firmwares: match a.firmware {
            FirmwareChoice::Bios => vec![Firmware::Bios],
            FirmwareChoice::Uefi => vec![Firmware::Uefi],
            FirmwareChoice::Both => vec![Firmware::Bios, Firmware::Uefi],
        },
        buses,
        timeout: std::time::Duration::from_secs(a.timeout),
    };
    let mut observer = Text {
        shell,
        text: a.format == OutputFormat::Text,
    };
    let report = ops::test::test(&session, &planned, &req, &shell, &mut observer)?;
    if a.format == OutputFormat::Json {
        shell.out_json(&report);
    }
    if !report.passed {
        return Err(CliError::msg("boot checks failed"));
    }
    Ok(())
}
