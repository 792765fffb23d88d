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
    let model = ctx.model()?;
    let store = ctx.store()?;
    let summary =
        crate::element::check_model(&model, &args.element_path, &store, ctx.offline, &mut |w| {
            crate::ui::warn(w)
        })?;
    let builds: usize = model.images.values().map(|i| i.arch.len()).sum();
    crate::ui::out(&format!(
        "ok: {} images ({} builds), {} sites, {} artifacts, {} sources, {} elements checked in {} ms\n",
        model.images.len(),
        builds,
        model.sites.len(),
        model.artifacts.len(),
        model.sources.len(),
        summary.elements,
        started.elapsed().as_millis()
    ));
    Ok(())
}
