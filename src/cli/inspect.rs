//! `ccb inspect`: checks on images read directly from their files, local or remote.

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::ops::files::{FileRequest, LsReport};
use crate::ops::inspect::{ImageReport, Images};
use crate::ops::{self, SessionOptions};
use crate::ui::{self, OutputFormat};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InspectArgs {
    #[command(subcommand)]
    command: Option<InspectCommand>,
    /// Images: files (.qcow2, .raw), targets (built first when missing) or, with --site or
    /// --url, published names (default: every image live in the scope)
    images: Vec<String>,
    /// Inspect the images live on this site (`current` of --scope)
    #[arg(long, conflicts_with = "url")]
    site: Option<String>,
    /// Inspect the images live in a public container (its URL)
    #[arg(long)]
    url: Option<String>,
    /// The scope of --site or --url
    #[arg(long, default_value = "prod")]
    scope: String,
    /// Only these architectures (targets)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// List a directory of an image (like virt-ls)
    Ls {
        /// An image file or a target
        image: String,
        /// A path inside the image
        path: String,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Print a file of an image (like virt-cat)
    Cat {
        /// An image file or a target
        image: String,
        /// A path inside the image
        path: String,
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
}

/// `inspect ls|cat`: an image file needs no project (as virt-ls needs none); a target does.
fn files(
    ctx: &mut Context,
    store: &crate::store::Store,
    opts: &SessionOptions,
    cmd: InspectCommand,
) -> Result<(), CliError> {
    let shell = ctx.shell();
    let (InspectCommand::Ls {
        image,
        path,
        format,
    }
    | InspectCommand::Cat {
        image,
        path,
        format,
    }) = &cmd;
    let format = *format;
    let req = FileRequest {
        image: image.clone(),
        path: path.clone(),
    };
    let fs = if ops::inspect::names_a_file(&req.image) {
        ops::inspect::open_file(std::path::Path::new(&req.image))?
    } else {
        let model = ctx.model()?;
        ops::inspect::open_one(&model, store, opts, &req.image, &shell)?
    };
    match (cmd, format) {
        (InspectCommand::Ls { .. }, OutputFormat::Json) => {
            shell.out_json(&ops::files::ls(fs.as_ref(), &req)?)
        }
        (InspectCommand::Ls { .. }, OutputFormat::Text) => {
            shell.out(&ls_text(&ops::files::ls(fs.as_ref(), &req)?))
        }
        (InspectCommand::Cat { .. }, OutputFormat::Json) => {
            shell.out_json(&ops::files::cat(fs.as_ref(), &req)?)
        }
        (InspectCommand::Cat { .. }, OutputFormat::Text) => {
            shell.out_bytes(&ops::files::cat(fs.as_ref(), &req)?.data)
        }
    }
    Ok(())
}

fn ls_text(report: &LsReport) -> String {
    let mut out = String::new();
    for e in &report.entries {
        match (e.mode, e.uid, e.gid, e.size) {
            (Some(mode), Some(uid), Some(gid), Some(size)) => {
                let link = e
                    .link
                    .as_ref()
                    .map(|t| format!(" -> {t}"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{mode:06o} {uid:>5} {gid:>5} {size:>12} {}{link}\n",
                    e.name
                ));
            }
            _ => out.push_str(&format!("{:>32} {}\n", "?", e.name)),
        }
    }
    out
}

/// Renders one image's checks as they finish (text only).
fn image_text(r: &ImageReport) -> String {
    let failed = r.checks.iter().filter(|c| !c.passed).count();
    let mut out = format!(
        "{} ({}){}\n",
        r.name,
        r.source,
        if r.root.is_empty() {
            String::new()
        } else {
            format!(": root {}", r.root)
        }
    );
    for c in &r.checks {
        out.push_str(&format!(
            "  {} {:<44} {}\n",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    out.push_str(&format!(
        "  {}: {} checks, {failed} failed in {} ms{}\n",
        if failed == 0 { "PASS" } else { "FAIL" },
        r.checks.len(),
        r.duration_ms,
        r.fetched_bytes
            .map(|b| format!(", {} fetched", ui::progress::human_bytes(b)))
            .unwrap_or_default()
    ));
    out
}

pub fn run(ctx: &mut Context, a: InspectArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let store = ctx.store()?;
    let opts = SessionOptions {
        offline: ctx.offline,
        remote: ctx.remote.clone(),
        ..Default::default()
    };
    if let Some(cmd) = a.command {
        return files(ctx, &store, &opts, cmd);
    }
    let images = if let Some(site) = a.site {
        Images::Site {
            site,
            scope: a.scope,
            images: a.images,
        }
    } else if let Some(base) = a.url {
        Images::Url {
            base,
            scope: a.scope,
            images: a.images,
        }
    } else {
        Images::Local {
            images: a.images,
            arch: a.arch,
        }
    };
    let text = a.format == OutputFormat::Text;
    let mut render = |r: &ImageReport| {
        if !text {
            return;
        }
        if let Some(note) = &r.skipped {
            shell.status(note);
        }
        shell.out(&image_text(r));
    };
    let model = ctx.model()?;
    let report = ops::inspect::inspect(model, &store, &opts, &images, &shell, &mut render)?;
    let failures = report.failed_checks();
    if text {
        shell.out(&format!(
            "{}: {} image{}, {failures} failed check{} in {} ms\n",
            if failures == 0 { "PASS" } else { "FAIL" },
            report.images.len(),
            if report.images.len() == 1 { "" } else { "s" },
            if failures == 1 { "" } else { "s" },
            report.duration_ms
        ));
    } else {
        shell.out_json(&report);
    }
    if failures > 0 {
        return Err(CliError::silent());
    }
    Ok(())
}
