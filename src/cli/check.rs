//! `ccb check`: evaluate and validate everything, print a one-line summary.

use std::time::Instant;

use super::{CliError, Context};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
}

pub fn run(ctx: &mut Context, args: CheckArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let shell = ctx.shell();
    let model = ctx.model()?;
    let store = ctx.store()?;
    let r = crate::ops::check::check(
        &model,
        &store,
        &args.element_path,
        ctx.offline,
        &shell,
        started,
    )?;
    shell.out(&format!(
        "ok: {} images ({} builds), {} sites, {} artifacts, {} sources, {} elements checked in {} ms\n",
        r.images, r.builds, r.sites, r.artifacts, r.sources, r.elements, r.duration_ms
    ));
    // The process ends with the command: freeing a model of thousands of images, allocation
    // by allocation, was a tenth of a warm check. The system takes the memory back at once.
    std::mem::forget(model);
    Ok(())
}
