//! `ccb remote-builder`: what a build host runs when another host's ccb sends it an action
//! over ssh (`remote::builder`). Hidden: people run `ccb build`, not this.

use clap::Subcommand;

use super::{CliError, Context};
use crate::remote::builder;

#[derive(Debug, Subcommand)]
pub enum BuilderCommand {
    /// Say `yes` when the store holds the bundle DIGEST, else `no`
    Has { digest: String },
    /// Store the packed bundle DIGEST read from stdin
    Receive { digest: String },
    /// Build IMAGE of bundle DIGEST up to a stage, uploading to the cache named on stdin
    Run {
        digest: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        arch: String,
        #[arg(long)]
        until: String,
    },
}

pub fn run(ctx: &mut Context, cmd: BuilderCommand) -> Result<(), CliError> {
    let store = ctx.store()?;
    match cmd {
        BuilderCommand::Has { digest } => {
            ctx.shell().out(if builder::has(&store, &digest) {
                "yes"
            } else {
                "no"
            });
            Ok(())
        }
        BuilderCommand::Receive { digest } => {
            builder::receive(&store, &digest, std::io::stdin().lock()).map_err(CliError::from_diag)
        }
        BuilderCommand::Run {
            digest,
            image,
            arch,
            until,
        } => match builder::run(&store, &digest, &image, &arch, &until) {
            Ok(0) => Ok(()),
            Ok(code) => Err(CliError::msg(format!(
                "the build of {image} ({arch}, until {until}) failed here (exit {code})"
            ))),
            Err(e) => Err(CliError::from_diag(e)),
        },
    }
}
