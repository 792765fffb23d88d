//! `update`: resolve the manifests' open inputs and rewrite `ccb.lock` (the algorithm is
//! [`lock::update`]); the lock is written only when it changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use super::CommandError;
use crate::lock::{self, Change, Lock};
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
    let fetcher = crate::fetch::Fetcher {
        store,
        distdirs: vec![],
        offline: req.offline,
        swift: None,
        mirrors: crate::fetch::mirror_variables(&model.root),
    };
    let updated = lock::update(model, old, &names, &fetcher, &mut |m| shell.status(m))?;
    let up_to_date = updated.new == updated.old;
    let written = !up_to_date && !req.dry_run;
    if written {
        lock::save(&root, &updated.new)?;
    }
    Ok(UpdateReport {
        lock: lock::path(&root),
        written,
        changed: updated.changes,
        removed: updated.removed,
        pins: updated.new.pins(),
        up_to_date,
    })
}
