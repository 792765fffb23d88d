//! `ccb build`: plan the targets' actions, then run the ones not in the store.

use clap::Args;

use super::{CliError, Context};
use crate::ops;
use crate::ops::build::{BuildOutcome, BuildRequest, Stage};
use crate::ui::OutputFormat;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Targets (default: every image)
    targets: Vec<String>,
    /// Print the plan (every action, its key, cached or to run, and why) without building
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Refuse to add a pin to ccb.lock (for CI): a "latest" artifact with no pin is an error
    #[arg(long)]
    locked: bool,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    /// Run up to N actions at once
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// After a failure, go on with everything that does not depend on it
    #[arg(long)]
    keep_going: bool,
    /// Rebuild this target's own actions even when they are in the store (repeatable)
    #[arg(long, value_name = "TARGET")]
    force: Vec<String>,
    /// Keep the working tree of a failed action (its path is printed)
    #[arg(long)]
    keep_failed: bool,
    /// Stop after this stage
    #[arg(long, value_enum, value_name = "STAGE")]
    pub until: Option<Stage>,
    /// Where the images go (default: `out/images` in the project)
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Set a build variable for every image, over the manifests' `env` (repeatable; `NAME`
    /// alone takes the value from ccb's environment). Like Bazel's --action_env, the value
    /// enters the keys: how a site passes its mirrors or repository URLs without committing them
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Fail a step whose output says a command it called was not found (else a warning)
    #[arg(long)]
    strict: bool,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: BuildArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let store = ctx.store()?;
    let mut session = ctx.session(&store, a.element_path, a.env)?;
    let req = BuildRequest {
        targets: a.targets,
        arch: a.arch,
        locked: a.locked,
        dry_run: a.dry_run,
        until: a.until.unwrap_or(Stage::Disk),
        jobs: a.jobs,
        keep_going: a.keep_going,
        force: a.force,
        keep_failed: a.keep_failed,
        out: a.out,
        announce_outputs: a.format == OutputFormat::Text,
        strict: a.strict,
    };
    match ops::build::run(&mut session, &req, &shell)? {
        BuildOutcome::Planned(plan) => {
            super::render::plan(&shell, &plan, a.format, ctx.verbose > 0);
            Ok(())
        }
        BuildOutcome::Built(report) => {
            match a.format {
                OutputFormat::Json => shell.out_json(&report),
                OutputFormat::Text => shell.status(&report.summary_line()),
            }
            report.ok()
        }
    }
}
