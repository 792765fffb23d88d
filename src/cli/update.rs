//! `ccb update [NAME…]`: resolve the manifests' open inputs and rewrite `ccb.lock`.
//!
//! As `cargo update -p`: named entries are resolved again, the others keep their pin unless the
//! manifests changed them (then they are stale and resolved too), entries the manifests no
//! longer declare are dropped. The lock is written only when it changes.

use std::collections::BTreeMap;

use clap::Args;
use serde_json::json;

use super::{CliError, Context};
use crate::lock::{self, Lock, LockedArtifact};
use crate::ui::{self, OutputFormat};

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Sources (keys of `sources`) or "latest" artifacts to resolve again (default: all)
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Show what would change without writing ccb.lock
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: UpdateArgs) -> Result<(), CliError> {
    let model = ctx.unlocked_model()?;
    let store = ctx.store()?;
    let root = model.root.clone();
    let old = match lock::load(&root) {
        Ok(l) => l.unwrap_or_default(),
        Err(e @ lock::LockError::Invalid { .. }) => {
            ui::warn(&format!("{e}; writing a new one"));
            Lock::default()
        }
        Err(e) => return Err(e.into()),
    };
    let (git, latest) = lock::open_inputs(&model);
    for n in &a.names {
        if !git.contains(&n) && !latest.contains(&n) {
            let known: Vec<String> = git.iter().chain(&latest).map(|s| s.to_string()).collect();
            let hint = crate::label::did_you_mean(n, &known).unwrap_or_else(|| {
                if known.is_empty() {
                    "the manifests declare no git source and no \"latest\" artifact".into()
                } else {
                    format!("known: {}", known.join(", "))
                }
            });
            return Err(CliError::usage(format!(
                "`{n}` is neither a git source nor an artifact following \"latest\"; {hint}"
            )));
        }
    }
    let wanted = |n: &str| a.names.is_empty() || a.names.iter().any(|x| x == n);

    let mut new = Lock {
        version: 1,
        ..Default::default()
    };
    let mut changes: Vec<(String, Option<String>, String)> = Vec::new();
    for name in git {
        let source = &model.sources[name];
        let kept = old.sources.get(name).filter(|l| l.matches(source));
        let locked = match kept {
            Some(l) if !wanted(name) => l.clone(),
            _ => {
                ui::status(
                    ctx.quiet,
                    &format!("resolving source `{name}` ({})", source.git_ref),
                );
                crate::sources::resolve(&store, &root, name, source, ctx.offline)?
            }
        };
        let before = old.sources.get(name).map(|l| l.commit.clone());
        if before.as_deref() != Some(&locked.commit) || kept.is_none() {
            changes.push((format!("source `{name}`"), before, locked.commit.clone()));
        }
        new.sources.insert(name.clone(), locked);
    }
    let fetcher = crate::fetch::Fetcher {
        store: &store,
        distdirs: vec![],
        offline: ctx.offline,
        swift: None,
    };
    for name in latest {
        let art = &model.artifacts[name];
        let Some(url) = art.url.clone() else {
            return Err(CliError::msg(format!(
                "artifact `{name}`: \"latest\" needs a `url` (a Swift object is pinned by its sha256)"
            )));
        };
        let kept = old.artifacts.get(name).filter(|l| l.url == url);
        let sha256 = match kept {
            Some(l) if !wanted(name) => l.sha256.clone(),
            _ => {
                ui::status(ctx.quiet, &format!("fetching artifact `{name}` ({url})"));
                fetcher.fetch_latest(name, &url, art.sums.as_deref(), &mut |_, _| {})?
            }
        };
        let before = old.artifacts.get(name).map(|l| l.sha256.clone());
        if before.as_deref() != Some(&sha256) || kept.is_none() {
            changes.push((format!("artifact `{name}`"), before, sha256.clone()));
        }
        new.artifacts
            .insert(name.clone(), LockedArtifact { url, sha256 });
    }
    let removed: Vec<String> = old
        .sources
        .keys()
        .filter(|k| !new.sources.contains_key(*k))
        .map(|k| format!("source `{k}`"))
        .chain(
            old.artifacts
                .keys()
                .filter(|k| !new.artifacts.contains_key(*k))
                .map(|k| format!("artifact `{k}`")),
        )
        .collect();
    let written = new != old && !a.dry_run;
    if written {
        lock::save(&root, &new)?;
    }
    match a.format {
        OutputFormat::Json => {
            let rows: Vec<_> = changes
                .iter()
                .map(|(what, before, after)| json!({"entry": what, "before": before, "after": after}))
                .collect();
            let pins: BTreeMap<&String, &String> = new
                .sources
                .iter()
                .map(|(k, l)| (k, &l.commit))
                .chain(new.artifacts.iter().map(|(k, l)| (k, &l.sha256)))
                .collect();
            ui::out_json(&json!({
                "lock": lock::path(&root),
                "written": written,
                "changed": rows,
                "removed": removed,
                "pins": pins,
            }));
        }
        OutputFormat::Text => {
            let mut out = String::new();
            for (what, before, after) in &changes {
                match before {
                    Some(b) => out.push_str(&format!("{what}: {} → {}\n", short(b), short(after))),
                    None => out.push_str(&format!("{what}: pinned {}\n", short(after))),
                }
            }
            for what in &removed {
                out.push_str(&format!("{what}: removed\n"));
            }
            ui::out(&out);
            let verdict = if new == old {
                "ccb.lock is up to date".to_string()
            } else if a.dry_run {
                "dry run: ccb.lock not written".to_string()
            } else {
                format!("wrote {}", lock::path(&root).display())
            };
            ui::status(ctx.quiet, &verdict);
        }
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    &digest[..12.min(digest.len())]
}
