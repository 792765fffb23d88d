//! `update`: resolve the manifests' open inputs and rewrite `ccb.lock`.
//!
//! As `cargo update -p`: named entries are resolved again, the others keep their pin unless the
//! manifests changed them (then they are stale and resolved too), entries the manifests no
//! longer declare are dropped. The lock is written only when it changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::CommandError;
use crate::lock::{self, Lock, LockedArtifact};
use crate::manifest::Model;
use crate::store::Store;
use crate::ui::Shell;

/// What to resolve again.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// Sources or "latest" artifacts to resolve again (all when empty).
    pub names: Vec<String>,
    /// Write nothing.
    pub dry_run: bool,
    pub offline: bool,
}

/// One pin that changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub entry: String,
    pub before: Option<String>,
    pub after: String,
}

/// What the update found and did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub lock: PathBuf,
    pub written: bool,
    pub changed: Vec<Change>,
    pub removed: Vec<String>,
    /// Every pin of the new lock: commits of sources, digests of artifacts.
    pub pins: BTreeMap<String, String>,
    /// Whether the lock was already what the manifests ask for.
    #[serde(skip)]
    pub up_to_date: bool,
}

/// The manifests' model is the unlocked one: the lock is what this computes.
pub fn update(
    model: &Model,
    store: &Store,
    req: &UpdateRequest,
    shell: &Shell,
) -> Result<UpdateReport, CommandError> {
    let root = model.root.clone();
    let old = match lock::load(&root) {
        Ok(l) => l.unwrap_or_default(),
        Err(e @ lock::LockError::Invalid { .. }) => {
            shell.warn(&format!("{e}; writing a new one"));
            Lock::default()
        }
        Err(e) => return Err(e.into()),
    };
    let (git, latest) = lock::open_inputs(model);
    // An artifact declared per arch is named once for all its arches, or `NAME:ARCH`.
    let names: Vec<String> = req
        .names
        .iter()
        .flat_map(|n| model.artifact_keys_named(n))
        .collect();
    for n in &names {
        if !git.contains(&n) && !latest.contains(&n) {
            let mut known: Vec<String> = git.iter().chain(&latest).map(|s| s.to_string()).collect();
            known.extend(model.per_arch.keys().cloned());
            let hint = crate::diag::did_you_mean(n, &known).unwrap_or_else(|| {
                if known.is_empty() {
                    "the manifests declare no git source and no \"latest\" artifact".into()
                } else {
                    format!("known: {}", known.join(", "))
                }
            });
            return Err(CommandError::usage(format!(
                "`{n}` is neither a git source nor an artifact following \"latest\"; {hint}"
            )));
        }
    }
    let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);

    let mut new = Lock {
        version: 1,
        ..Default::default()
    };
    let mut changes: Vec<Change> = Vec::new();
    for name in git {
        let source = &model.sources[name];
        let kept = old.sources.get(name).filter(|l| l.matches(source));
        let locked = match kept {
            Some(l) if !wanted(name) => l.clone(),
            _ => {
                shell.status(&format!("resolving source `{name}` ({})", source.git_ref));
                crate::sources::resolve(store, &root, name, source, req.offline)?
            }
        };
        let before = old.sources.get(name).map(|l| l.commit.clone());
        if before.as_deref() != Some(&locked.commit) || kept.is_none() {
            changes.push(Change {
                entry: format!("source `{name}`"),
                before,
                after: locked.commit.clone(),
            });
        }
        new.sources.insert(name.clone(), locked);
    }
    let fetcher = crate::fetch::Fetcher {
        store,
        distdirs: vec![],
        offline: req.offline,
        swift: None,
        mirrors: crate::fetch::mirror_variables(&model.root),
    };
    for name in latest {
        let art = &model.artifacts[name];
        let Some(url) = art.url.clone() else {
            return Err(CommandError::msg(format!(
                "artifact `{name}`: \"latest\" needs a `url` (a Swift object is pinned by its sha256)"
            )));
        };
        let shown = crate::lock::artifact_url(&url);
        let kept = old.artifacts.get(name).filter(|l| l.url == shown);
        let sha256 = match kept {
            Some(l) if !wanted(name) => l.sha256.clone(),
            _ => {
                shell.status(&format!("fetching artifact `{name}` ({shown})"));
                fetcher.fetch_latest(name, &url, art.sums.as_deref(), &mut |_, _| {})?
            }
        };
        let before = old.artifacts.get(name).map(|l| l.sha256.clone());
        if before.as_deref() != Some(&sha256) || kept.is_none() {
            changes.push(Change {
                entry: format!("artifact `{name}`"),
                before,
                after: sha256.clone(),
            });
        }
        new.artifacts
            .insert(name.clone(), LockedArtifact { url: shown, sha256 });
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
    let written = new != old && !req.dry_run;
    if written {
        lock::save(&root, &new)?;
    }
    Ok(UpdateReport {
        lock: lock::path(&root),
        written,
        changed: changes,
        removed,
        pins: new
            .sources
            .iter()
            .map(|(k, l)| (k.clone(), l.commit.clone()))
            .chain(
                new.artifacts
                    .iter()
                    .map(|(k, l)| (k.clone(), l.sha256.clone())),
            )
            .collect(),
        up_to_date: new == old,
    })
}
