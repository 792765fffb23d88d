//! `ccb cache`: list, collect, verify and remove the store's entries. Anything that removes
//! holds the store exclusively (no build runs meanwhile).

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use super::{CommandError, Session};
use crate::store::{Lock, Store, Wait};

mod entries;
pub use entries::{Entry, Verdict};

/// Every entry of the store.
#[derive(Debug, Serialize)]
pub struct LsReport {
    pub version: u32,
    pub entries: Vec<Entry>,
    /// The store's directory.
    #[serde(skip)]
    pub store: PathBuf,
}

impl LsReport {
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }
}

pub fn ls(store: &Store) -> LsReport {
    LsReport {
        version: 1,
        entries: entries::entries(store),
        store: store.root().to_path_buf(),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GcRequest {
    /// Every entry, current or not.
    pub all: bool,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub version: u32,
    pub dry_run: bool,
    pub removed: Vec<Entry>,
    pub kept: usize,
    pub bytes_freed: u64,
    pub scratch_removed: usize,
    pub artifacts_removed: Vec<String>,
    pub source_trees_removed: Vec<String>,
}

pub fn gc(store: &Store, req: GcRequest) -> Result<GcReport, CommandError> {
    let _lock = exclusive(store)?;
    let r = entries::gc(store, req.all, req.dry_run)?;
    Ok(GcReport {
        version: 1,
        dry_run: req.dry_run,
        removed: r.removed,
        kept: r.kept,
        bytes_freed: r.bytes_freed,
        scratch_removed: r.scratch_removed,
        artifacts_removed: r.artifacts_removed,
        source_trees_removed: r.trees_removed,
    })
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub version: u32,
    pub entries: Vec<Verdict>,
    pub ok: bool,
}

impl VerifyReport {
    pub fn broken(&self) -> usize {
        self.entries.iter().filter(|v| !v.ok).count()
    }

    /// Broken entries fail the command.
    pub fn result(&self) -> Result<(), CommandError> {
        match self.broken() {
            0 => Ok(()),
            bad => Err(CommandError::msg(format!(
                "{bad} broken store entr{}: remove with `ccb cache rm KEY` (they are rebuilt on demand)",
                if bad == 1 { "y" } else { "ies" }
            ))),
        }
    }
}

/// Re-reads every entry; `on_progress` hears each one's name as it starts.
pub fn verify(store: &Store, on_progress: &mut dyn FnMut(&str)) -> VerifyReport {
    let entries = entries::verify(store, on_progress);
    VerifyReport {
        version: 1,
        ok: entries.iter().all(|v| v.ok),
        entries,
    }
}

/// What `ccb cache rm` was given: key prefixes (8 hex digits or more) and targets.
#[derive(Debug, Clone, Default)]
pub struct RmRequest {
    pub what: Vec<String>,
}

impl RmRequest {
    /// The words that name targets (the rest are key prefixes): removing by target needs a
    /// session to plan them.
    pub fn targets(&self) -> Vec<String> {
        self.what
            .iter()
            .filter(|w| !is_key_prefix(w))
            .cloned()
            .collect()
    }
}

fn is_key_prefix(word: &str) -> bool {
    word.len() >= 8 && word.chars().all(|c| c.is_ascii_hexdigit())
}

#[derive(Debug, Serialize)]
pub struct Removed {
    pub key: String,
    pub id: String,
    /// Stacked on a removed layer, not named.
    pub dependent: bool,
}

#[derive(Debug, Serialize)]
pub struct RmReport {
    pub version: u32,
    pub removed: Vec<Removed>,
    /// The targets named had nothing in the store.
    #[serde(skip)]
    pub nothing_of_targets: bool,
}

/// Removes the named entries and the layers stacked on them. `session` plans the targets
/// named (required when [`RmRequest::targets`] is not empty).
pub fn rm(
    store: &Store,
    session: Option<&Session>,
    req: &RmRequest,
) -> Result<RmReport, CommandError> {
    let entries = entries::entries(store);
    let mut keys = BTreeSet::new();
    for w in req.what.iter().filter(|w| is_key_prefix(w)) {
        let hits: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.key.starts_with(w.as_str()))
            .collect();
        match hits.as_slice() {
            [one] => {
                keys.insert(one.key.clone());
            }
            [] => {
                return Err(CommandError::msg(format!(
                    "no store entry has a key starting with `{w}`"
                )));
            }
            many => {
                return Err(CommandError::msg(format!(
                    "`{w}` is the start of {} keys; give more characters",
                    many.len()
                )));
            }
        }
    }
    let targets = req.targets();
    let mut nothing_of_targets = false;
    if !targets.is_empty() {
        let session = session
            .ok_or_else(|| CommandError::internal("cache rm of targets without a session"))?;
        let planned = session.plan(&targets, &[])?;
        for t in &planned.targets {
            for act in planned.graph.actions_of(t) {
                if entries.iter().any(|e| e.key == act.key) {
                    keys.insert(act.key.clone());
                }
            }
        }
        nothing_of_targets = keys.is_empty();
    }
    let _lock = exclusive(store)?;
    let mut removed = Vec::new();
    for k in &entries::with_dependents(store, &keys) {
        entries::remove_key(store, k)?;
        removed.push(Removed {
            key: k.clone(),
            id: entries
                .iter()
                .find(|e| &e.key == k)
                .map(|e| e.id.clone())
                .unwrap_or_default(),
            dependent: !keys.contains(k),
        });
    }
    Ok(RmReport {
        version: 1,
        removed,
        nothing_of_targets,
    })
}

fn exclusive(store: &Store) -> Result<Lock, CommandError> {
    store.lock_store(true, Wait::Try)?.ok_or_else(|| {
        CommandError::msg("the store is in use by a running build; try again when it ends")
    })
}
