//! `ccb cache ls|gc|verify|rm`: look after the store.

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::ops;
use crate::ui::progress::human_bytes;
use crate::ui::{KEY_WIDTH, OutputFormat, short};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the store's entries: key, action, mode, size, age
    Ls(FormatArgs),
    /// Remove entries no current build uses (`--all`: every entry) and scratch directories
    Gc(GcArgs),
    /// Re-digest every layer and check every record; exit 1 on any problem
    Verify(FormatArgs),
    /// Remove entries by key (a unique prefix) or target, with the layers stacked on them
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove every entry, current or not
    #[arg(long)]
    all: bool,
    /// Say what would be removed, remove nothing
    #[arg(long)]
    pub(super) dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Keys (or unique prefixes of at least 8 characters) or targets
    #[arg(required = true)]
    what: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, cmd: CacheCommand) -> Result<(), CliError> {
    let store = ctx.store()?;
    let shell = ctx.shell();
    match cmd {
        CacheCommand::Ls(a) => {
            let report = ops::cache::ls(&store);
            match a.format {
                OutputFormat::Json => shell.out_json(&report),
                OutputFormat::Text => shell.out(&render_ls(&report)),
            }
            Ok(())
        }
        CacheCommand::Gc(a) => {
            let req = ops::cache::GcRequest {
                all: a.all,
                dry_run: a.dry_run,
            };
            let report = ops::cache::gc(&store, req)?;
            match a.format {
                OutputFormat::Json => shell.out_json(&report),
                OutputFormat::Text => shell.out(&render_gc(&report)),
            }
            Ok(())
        }
        CacheCommand::Verify(a) => {
            let report = ops::cache::verify(&store, &mut |id| {
                shell.status(&format!("verifying {id}"));
            });
            match a.format {
                OutputFormat::Json => shell.out_json(&report),
                OutputFormat::Text => shell.out(&render_verify(&report)),
            }
            report.result()
        }
        CacheCommand::Rm(a) => {
            let req = ops::cache::RmRequest { what: a.what };
            let session = if req.targets().is_empty() {
                None
            } else {
                Some(ctx.session(&store, vec![], vec![])?)
            };
            let report = ops::cache::rm(&store, session.as_ref(), &req)?;
            if report.nothing_of_targets {
                shell.status("nothing of these targets is in the store");
            }
            match a.format {
                OutputFormat::Json => shell.out_json(&report),
                OutputFormat::Text => shell.out(&render_rm(&report)),
            }
            Ok(())
        }
    }
}

fn render_gc(report: &ops::cache::GcReport) -> String {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = String::new();
    for e in &report.removed {
        out.push_str(&format!(
            "{verb} {}  {}  {}\n",
            short(&e.key, KEY_WIDTH),
            e.id,
            human_bytes(e.bytes)
        ));
    }
    for sha in &report.artifacts_removed {
        out.push_str(&format!("{verb} artifact {}\n", short(sha, KEY_WIDTH)));
    }
    for tree in &report.source_trees_removed {
        out.push_str(&format!("{verb} source tree {}\n", short(tree, KEY_WIDTH)));
    }
    out.push_str(&format!(
        "{verb} {} entries ({}), kept {}\n",
        report.removed.len(),
        human_bytes(report.bytes_freed),
        report.kept
    ));
    out
}

fn render_verify(report: &ops::cache::VerifyReport) -> String {
    let mut out = String::new();
    for v in &report.entries {
        if let (true, Some(note)) = (v.ok, &v.unrecorded) {
            out.push_str(&format!(
                "ok      {}  {}: {note}\n",
                short(&v.key, KEY_WIDTH),
                v.id
            ));
        } else if v.ok {
            out.push_str(&format!("ok      {}  {}\n", short(&v.key, KEY_WIDTH), v.id));
        } else {
            out.push_str(&format!(
                "BROKEN  {}  {}: {}\n",
                short(&v.key, KEY_WIDTH),
                v.id,
                v.problems.join("; ")
            ));
        }
    }
    out.push_str(&format!(
        "{} entries verified, {} broken\n",
        report.entries.len(),
        report.broken()
    ));
    out
}

fn render_rm(report: &ops::cache::RmReport) -> String {
    let mut out = String::new();
    for r in &report.removed {
        out.push_str(&format!(
            "removed {}  {}{}\n",
            short(&r.key, KEY_WIDTH),
            r.id,
            if r.dependent {
                " (stacked on a removed layer)"
            } else {
                ""
            }
        ));
    }
    out
}

fn render_ls(report: &ops::cache::LsReport) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let width = report.entries.iter().map(|e| e.id.len()).max().unwrap_or(2);
    let mut out = String::new();
    for e in &report.entries {
        out.push_str(&format!(
            "{}  {:width$}  {:4}  {:>9}  {:>8}{}\n",
            short(&e.key, KEY_WIDTH),
            e.id,
            e.mode.as_deref().unwrap_or("-"),
            human_bytes(e.bytes),
            human_age(now.saturating_sub(e.built_at)),
            if e.current { "" } else { "  (stale)" }
        ));
    }
    out.push_str(&format!(
        "{} entries, {} in {}\n",
        report.entries.len(),
        human_bytes(report.bytes()),
        report.store.display()
    ));
    out
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}
