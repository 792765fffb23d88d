//! `ccb cache ls|gc|verify|rm`: look after the store.

use std::collections::BTreeSet;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, Context};
use crate::store::{Store, Wait, cache};
use crate::ui::{self, OutputFormat};

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
    dry_run: bool,
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
    match cmd {
        CacheCommand::Ls(a) => ls(&store, a.format),
        CacheCommand::Gc(a) => {
            let _lock = exclusive(&store)?;
            let report = cache::gc(&store, a.all, a.dry_run)?;
            match a.format {
                OutputFormat::Json => ui::out_json(&json!({
                    "version": 1,
                    "dry_run": a.dry_run,
                    "removed": report.removed,
                    "kept": report.kept,
                    "bytes_freed": report.bytes_freed,
                    "scratch_removed": report.scratch_removed,
                    "artifacts_removed": report.artifacts_removed,
                    "source_trees_removed": report.trees_removed,
                })),
                OutputFormat::Text => {
                    let mut out = String::new();
                    for e in &report.removed {
                        out.push_str(&format!(
                            "{} {}  {}  {}\n",
                            if a.dry_run { "would remove" } else { "removed" },
                            &e.key[..16],
                            e.id,
                            crate::ui::progress::human_bytes(e.bytes)
                        ));
                    }
                    for sha in &report.artifacts_removed {
                        out.push_str(&format!(
                            "{} artifact {}\n",
                            if a.dry_run { "would remove" } else { "removed" },
                            &sha[..16]
                        ));
                    }
                    for tree in &report.trees_removed {
                        out.push_str(&format!(
                            "{} source tree {}\n",
                            if a.dry_run { "would remove" } else { "removed" },
                            &tree[..16.min(tree.len())]
                        ));
                    }
                    out.push_str(&format!(
                        "{} {} entries ({}), kept {}\n",
                        if a.dry_run { "would remove" } else { "removed" },
                        report.removed.len(),
                        crate::ui::progress::human_bytes(report.bytes_freed),
                        report.kept
                    ));
                    ui::out(&out);
                }
            }
            Ok(())
        }
        CacheCommand::Verify(a) => {
            let quiet = ctx.quiet;
            let verdicts = cache::verify(&store, &mut |id| {
                ui::status(quiet, &format!("verifying {id}"));
            });
            let bad = verdicts.iter().filter(|v| !v.ok).count();
            match a.format {
                OutputFormat::Json => ui::out_json(&json!({
                    "version": 1,
                    "entries": verdicts,
                    "ok": bad == 0,
                })),
                OutputFormat::Text => {
                    let mut out = String::new();
                    for v in &verdicts {
                        if v.ok {
                            out.push_str(&format!("ok      {}  {}\n", &v.key[..16], v.id));
                        } else {
                            out.push_str(&format!(
                                "BROKEN  {}  {}: {}\n",
                                &v.key[..16],
                                v.id,
                                v.problems.join("; ")
                            ));
                        }
                    }
                    out.push_str(&format!(
                        "{} entries verified, {} broken\n",
                        verdicts.len(),
                        bad
                    ));
                    ui::out(&out);
                }
            }
            if bad > 0 {
                return Err(CliError::msg(format!(
                    "{bad} broken store entr{}: remove with `ccb cache rm KEY` (they are rebuilt on demand)",
                    if bad == 1 { "y" } else { "ies" }
                )));
            }
            Ok(())
        }
        CacheCommand::Rm(a) => {
            let keys = keys_for(ctx, &store, &a.what)?;
            let _lock = exclusive(&store)?;
            let all = cache::with_dependents(&store, &keys);
            let entries = cache::entries(&store);
            let mut removed = Vec::new();
            for k in &all {
                cache::remove_key(&store, k)?;
                let id = entries
                    .iter()
                    .find(|e| &e.key == k)
                    .map(|e| e.id.clone())
                    .unwrap_or_default();
                removed.push(json!({"key": k, "id": id, "dependent": !keys.contains(k)}));
            }
            match a.format {
                OutputFormat::Json => ui::out_json(&json!({"version": 1, "removed": removed})),
                OutputFormat::Text => {
                    let mut out = String::new();
                    for r in &removed {
                        let key = r["key"].as_str().unwrap_or_default();
                        out.push_str(&format!(
                            "removed {}  {}{}\n",
                            &key[..16.min(key.len())],
                            r["id"].as_str().unwrap_or_default(),
                            if r["dependent"] == true {
                                " (stacked on a removed layer)"
                            } else {
                                ""
                            }
                        ));
                    }
                    ui::out(&out);
                }
            }
            Ok(())
        }
    }
}

fn exclusive(store: &Store) -> Result<crate::store::Lock, CliError> {
    store.lock_store(true, Wait::Try)?.ok_or_else(|| {
        CliError::msg("the store is in use by a running build; try again when it ends")
    })
}

/// Keys named by key prefixes, or by targets (their own actions' current keys).
fn keys_for(
    ctx: &mut Context,
    store: &Store,
    what: &[String],
) -> Result<BTreeSet<String>, CliError> {
    let entries = cache::entries(store);
    let mut keys = BTreeSet::new();
    let mut targets = Vec::new();
    for w in what {
        let is_hex = w.len() >= 8 && w.chars().all(|c| c.is_ascii_hexdigit());
        if is_hex {
            let hits: Vec<&cache::Entry> = entries
                .iter()
                .filter(|e| e.key.starts_with(w.as_str()))
                .collect();
            match hits.len() {
                1 => {
                    keys.insert(hits[0].key.clone());
                }
                0 => {
                    return Err(CliError::msg(format!(
                        "no store entry has a key starting with `{w}`"
                    )));
                }
                n => {
                    return Err(CliError::msg(format!(
                        "`{w}` is the start of {n} keys; give more characters"
                    )));
                }
            }
        } else {
            targets.push(w.clone());
        }
    }
    if !targets.is_empty() {
        let shell = ctx.shell();
        let model = ctx.model()?;
        let opts = crate::ops::SessionOptions {
            offline: ctx.offline,
            remote: ctx.remote.clone(),
            ..Default::default()
        };
        let session = crate::ops::Session::open(model, store, &opts, &shell)?;
        let planned = session.plan(&targets, &[])?;
        for t in &planned.targets {
            for act in planned.graph.actions_of(t) {
                if entries.iter().any(|e| e.key == act.key) {
                    keys.insert(act.key.clone());
                }
            }
        }
        if keys.is_empty() {
            ui::status(ctx.quiet, "nothing of these targets is in the store");
        }
    }
    Ok(keys)
}

fn ls(store: &Store, format: OutputFormat) -> Result<(), CliError> {
    let entries = cache::entries(store);
    match format {
        OutputFormat::Json => ui::out_json(&json!({"version": 1, "entries": entries})),
        OutputFormat::Text => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let width = entries.iter().map(|e| e.id.len()).max().unwrap_or(2);
            let mut out = String::new();
            let mut total = 0;
            for e in &entries {
                total += e.bytes;
                out.push_str(&format!(
                    "{}  {:width$}  {:4}  {:>9}  {:>8}{}\n",
                    &e.key[..16.min(e.key.len())],
                    e.id,
                    e.mode.as_deref().unwrap_or("-"),
                    crate::ui::progress::human_bytes(e.bytes),
                    human_age(now.saturating_sub(e.built_at)),
                    if e.current { "" } else { "  (stale)" }
                ));
            }
            out.push_str(&format!(
                "{} entries, {} in {}\n",
                entries.len(),
                crate::ui::progress::human_bytes(total),
                store.root().display()
            ));
            ui::out(&out);
        }
    }
    Ok(())
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}
