//! `ccb verify`: rebuild a target in a scratch store and compare it with the store's (or a
//! site's published) copy, action by action.

use clap::Args;

use super::{CliError, Context};
use crate::ops::verify::{Published, VerifyReport, VerifyRequest};
use crate::ops::{self, SessionOptions};
use crate::ui::OutputFormat;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Targets whose actions to rebuild and compare
    #[arg(required = true)]
    targets: Vec<String>,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Compare the rebuild with the disk live on this site (in --scope), not the store's
    #[arg(long, requires = "scope")]
    site: Option<String>,
    /// The scope of --site
    #[arg(long, requires = "site")]
    scope: Option<String>,
    /// Keep the rebuilt disks in this directory (else they are removed with the scratch store)
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    /// Set a build variable for every image, as `ccb build --env` (it enters the keys)
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Run up to N actions at once
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: VerifyArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let store = ctx.store()?;
    let opts = SessionOptions {
        element_path: a.element_path.clone(),
        env: a.env.clone(),
        offline: ctx.offline,
        remote: ctx.remote.clone(),
    };
    let session = ctx.session(&store, a.element_path, a.env)?;
    let req = VerifyRequest {
        targets: a.targets,
        arch: a.arch,
        published: a
            .site
            .zip(a.scope)
            .map(|(site, scope)| Published { site, scope }),
        keep: a.keep,
        jobs: a.jobs,
    };
    let report = ops::verify::verify(&session, &opts, &req, &shell)?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => shell.out(&text(&report)),
    }
    report.ok()
}

fn text(r: &VerifyReport) -> String {
    let mut out = String::new();
    for a in &r.actions {
        out.push_str(&format!("{:<32} {}", a.id, a.verdict));
        if a.differing > 0 {
            out.push_str(&format!(
                " ({} file{})",
                a.differing,
                if a.differing == 1 { "" } else { "s" }
            ));
        }
        out.push('\n');
        for f in &a.files {
            out.push_str(&format!("  {} {}: {}\n", f.change, f.path, f.detail));
            if let Some(d) = &f.diff {
                for l in d.lines() {
                    out.push_str(&format!("    {l}\n"));
                }
            }
        }
        if a.files.len() < a.differing {
            out.push_str(&format!("  … {} more\n", a.differing - a.files.len()));
        }
        if let Some(n) = &a.note {
            out.push_str(&format!("  note: {n}\n"));
        }
    }
    out.push_str(&format!(
        "rebuilt in {} s, compared in {} s: {}",
        r.rebuild_ms / 1000,
        r.compare_ms / 1000,
        if r.identical {
            "identical"
        } else {
            "DIFFERENT"
        }
    ));
    out.push('\n');
    out
}
