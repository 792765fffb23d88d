//! `ccb inspect`: checks on images read directly from their files, local or remote.

use clap::{Args, Subcommand};

use super::{CliError, Context};
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
    },
    /// Print a file of an image (like virt-cat)
    Cat {
        /// An image file or a target
        image: String,
        /// A path inside the image
        path: String,
    },
}

pub fn run(ctx: &mut Context, a: InspectArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.model()?;
    let store = ctx.store()?;
    let opts = SessionOptions {
        offline: ctx.offline,
        remote: ctx.remote.clone(),
        ..Default::default()
    };
    if let Some(cmd) = a.command {
        let (image, path) = match &cmd {
            InspectCommand::Ls { image, path } | InspectCommand::Cat { image, path } => {
                (image.clone(), path.clone())
            }
        };
        let fs = ops::inspect::open_one(&model, &store, &opts, &image, &shell)?;
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        match cmd {
            InspectCommand::Ls { .. } => {
                let mut entries = fs.read_dir(&path).map_err(CliError::from_diag)?;
                entries.sort_by(|x, y| x.name.cmp(&y.name));
                for e in entries {
                    let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                    match fs.symlink_metadata(&child) {
                        Ok(m) => {
                            let link = if m.kind == crate::inspect::fs::FileKind::Symlink {
                                fs.read_link(&child)
                                    .map(|t| format!(" -> {t}"))
                                    .unwrap_or_default()
                            } else {
                                String::new()
                            };
                            shell.out(&format!(
                                "{:06o} {:>5} {:>5} {:>12} {}{link}\n",
                                m.mode, m.uid, m.gid, m.size, e.name
                            ));
                        }
                        Err(_) => shell.out(&format!("{:>32} {}\n", "?", e.name)),
                    }
                }
            }
            InspectCommand::Cat { .. } => {
                let data = fs.read(&path).map_err(CliError::from_diag)?;
                ui::out_bytes(&data);
            }
        }
        return Ok(());
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
        shell.out(&out);
    };
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
