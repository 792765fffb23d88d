//! `ccb test`: build the targets' disks if needed, boot each in QEMU, report the checks.

use clap::Args;
use serde_json::json;

use super::{CliError, Context};
use crate::bootcheck::{self, BootTest, DiskBus, Firmware};
use crate::element;
use crate::graph::{Graph, Kind};
use crate::label;
use crate::manifest::Arch;
use crate::ui::{self, OutputFormat};

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

pub fn run(ctx: &mut Context, a: TestArgs) -> Result<(), CliError> {
    // Build what is missing first (quietly cached when it is all there).
    super::build::run(
        ctx,
        super::build::BuildArgs::for_test(
            a.targets.clone(),
            a.arch.clone(),
            a.element_path.clone(),
            a.env.clone(),
        ),
    )?;
    let mut model = ctx.model()?;
    super::build::apply_env(&mut model, &a.env)?;
    let model = model;
    let arches = label::parse_arches(&a.arch)?;
    let targets = label::resolve(&model, &a.targets, arches.as_ref())?;
    let store = ctx.store()?;
    let resolver =
        element::project_resolver(&model, &a.element_path, &store, ctx.offline, &mut |w| {
            ui::warn(w)
        })?;
    let graph = Graph::build(&model, &resolver, &targets, false)?;
    let firmwares = match a.firmware {
        FirmwareChoice::Bios => vec![Firmware::Bios],
        FirmwareChoice::Uefi => vec![Firmware::Uefi],
        FirmwareChoice::Both => vec![Firmware::Bios, Firmware::Uefi],
    };
    let scratch = tempfile::Builder::new()
        .prefix("ccb-test-")
        .tempdir_in(std::env::temp_dir())
        .map_err(|e| CliError::msg(format!("cannot create a scratch directory: {e}")))?;
    let amd64_kvm = bootcheck::kvm_works(scratch.path());
    if !amd64_kvm {
        ui::status(
            ctx.quiet,
            "KVM is unavailable or does not work here: booting with TCG (slower)",
        );
    }
    let mut buses = a.disk.clone();
    buses.sort();
    buses.dedup();
    let named = label::named_arches(&model, &a.targets, arches.as_ref());

    let mut results = Vec::new();
    let mut all_passed = true;
    for t in &targets {
        // arm64 has no BIOS: `both` means UEFI there, and asking for BIOS alone is an error.
        let firmwares: Vec<Firmware> = match t.arch {
            Arch::Amd64 => firmwares.clone(),
            Arch::Arm64 if a.firmware == FirmwareChoice::Bios && !named.contains(&t.arch) => {
                continue;
            }
            Arch::Arm64 if a.firmware == FirmwareChoice::Bios => {
                return Err(CliError::msg(format!(
                    "{}: arm64 has no BIOS, its disks boot on UEFI only (--firmware uefi)",
                    t.label()
                )));
            }
            Arch::Arm64 => vec![Firmware::Uefi],
        };
        let mut kvm = bootcheck::kvm_for(t.arch, amd64_kvm);
        let disk = graph
            .actions_of(t)
            .into_iter()
            .find(|x| x.kind == Kind::Disk)
            .ok_or_else(|| CliError::msg(format!("//images:{} has no disk action", t.image)))?;
        let Some(meta) = store.outputs_meta(&disk.key) else {
            // An arch the host cannot build, not asked for by name: the build left it out.
            if !named.contains(&t.arch) && !crate::doctor::arch_report(t.arch).can_build {
                continue;
            }
            return Err(CliError::msg(format!(
                "the disk of //images:{} is not in the store",
                t.image
            )));
        };
        let (file, format) = ["qcow2", "raw"]
            .iter()
            .find_map(|ext| {
                let f = format!("{}.{ext}", meta.name);
                meta.files.iter().any(|(n, _)| *n == f).then_some((f, *ext))
            })
            .ok_or_else(|| {
                CliError::msg(format!("//images:{} has no qcow2 or raw output", t.image))
            })?;
        let image = store.outputs_dir(&disk.key).join(&file);
        let resolved = &graph.resolved[&(t.image.clone(), t.arch)];
        let dirs: Vec<(String, std::path::PathBuf)> = resolved
            .elements
            .iter()
            .filter_map(|n| resolver.path.get(n).map(|d| (n.clone(), d.dir.clone())))
            .collect();
        let checks = bootcheck::element_checks(&dirs);
        for (&fw, &bus) in firmwares
            .iter()
            .flat_map(|fw| buses.iter().map(move |b| (fw, b)))
        {
            ui::status(
                ctx.quiet,
                &format!(
                    "booting {} ({}, {}, {} disk, {})...",
                    meta.name,
                    t.arch,
                    fw.as_str(),
                    bus.as_str(),
                    if kvm { "kvm" } else { "tcg" }
                ),
            );
            let log = store.path(&format!(
                "logs/{}-boot-{}-{}.log",
                disk.key,
                fw.as_str(),
                bus.as_str()
            ));
            let work = scratch.path().join(format!(
                "{}-{}-{}-{}",
                t.image,
                t.arch,
                fw.as_str(),
                bus.as_str()
            ));
            let had_kvm = kvm;
            let report = bootcheck::boot(
                &BootTest {
                    image: &image,
                    format,
                    arch: t.arch,
                    firmware: fw,
                    disk: bus,
                    timeout: std::time::Duration::from_secs(a.timeout),
                    checks: &checks,
                    work: &work,
                    serial_log: log,
                },
                &mut kvm,
            )?;
            if had_kvm && !kvm {
                ui::status(
                    ctx.quiet,
                    "KVM started but the kernel never spoke: KVM does not really work here, using TCG",
                );
            }
            all_passed &= report.passed();
            if a.format == OutputFormat::Text {
                let mut text = Vec::new();
                let _ = bootcheck::render(std::slice::from_ref(&report), &mut text);
                ui::out(&String::from_utf8_lossy(&text));
                ui::status(
                    ctx.quiet,
                    &format!(
                        "{} {} {} ({} disk) in {:.0} s; serial log: {}",
                        if report.passed() { "passed" } else { "FAILED" },
                        t.arch,
                        fw.as_str(),
                        bus.as_str(),
                        report.duration_ms as f64 / 1000.0,
                        report.serial_log.display()
                    ),
                );
            }
            results.push(json!({
                "target": format!("//images:{}", t.image),
                "arch": t.arch,
                "image": image,
                "firmware": report.firmware,
                "disk": report.disk,
                "accel": report.accel,
                "duration_ms": report.duration_ms,
                "completed": report.completed,
                "passed": report.passed(),
                "serial_log": report.serial_log,
                "checks": report.checks,
            }));
        }
    }
    if a.format == OutputFormat::Json {
        ui::out_json(&json!({"version": 1, "results": results, "passed": all_passed}));
    }
    if !all_passed {
        return Err(CliError::msg("boot checks failed"));
    }
    Ok(())
}
