//! `ccb doctor`: what this host can build and test.

use clap::Args;

use super::{CliError, Context};
use crate::doctor;
use crate::ui::OutputFormat;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: DoctorArgs) -> Result<(), CliError> {
    let report = doctor::diagnose();
    match a.format {
        OutputFormat::Json => ctx.shell().out_json(&report),
        OutputFormat::Text => {
            let mut text = Vec::new();
            let _ = doctor::render(&report, &mut text);
            ctx.shell().out(&String::from_utf8_lossy(&text));
        }
    }
    Ok(())
}
