//! `ccb update [NAME…]`: resolve the manifests' open inputs and rewrite `ccb.lock` (see
//! `ops::update`).

use clap::Args;

use super::{CliError, Context};
use crate::ops::update::UpdateRequest;
use crate::ui::{COMMIT_WIDTH, OutputFormat, short};

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Sources (keys of `sources`) or "latest" artifacts to resolve again (default: all)
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Show what would change without writing ccb.lock
    #[arg(long)]
    pub(super) dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: UpdateArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.unlocked_model()?;
    let store = ctx.store()?;
    let req = UpdateRequest {
        names: a.names,
        dry_run: a.dry_run,
        offline: ctx.offline,
    };
    let r = crate::ops::update::update(&model, &store, &req, &shell)?;
    match a.format {
        OutputFormat::Json => shell.out_json(&r),
        OutputFormat::Text => {
            let mut out = String::new();
            for c in &r.changed {
                match &c.before {
                    Some(b) => out.push_str(&format!(
                        "{}: {} → {}\n",
                        c.entry,
                        short(b, COMMIT_WIDTH),
                        short(&c.after, COMMIT_WIDTH)
                    )),
                    None => out.push_str(&format!(
                        "{}: pinned {}\n",
                        c.entry,
                        short(&c.after, COMMIT_WIDTH)
                    )),
                }
            }
            for what in &r.removed {
                out.push_str(&format!("{what}: removed\n"));
            }
            shell.out(&out);
            let verdict = if r.up_to_date {
                "ccb.lock is up to date".to_string()
            } else if req.dry_run {
                "dry run: ccb.lock not written".to_string()
            } else {
                format!("wrote {}", r.lock.display())
            };
            shell.status(&verdict);
        }
    }
    Ok(())
}
