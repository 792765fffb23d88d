//! What `ccb cache` sees and does: the store's entries (read through the records of the
//! fetcher, the graph and the actions, so this sits above all of them, not in the store), garbage collection, verification and
//! removal. Callers hold the store lock exclusively for anything that removes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::graph::{ActionRecord, LastBuild};
use crate::store::{LayerMeta, Layout, Store, StoreError, remove_tree};

/// One cached action result.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub id: String,
    pub kind: String,
    /// `full` or `diff` for layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub bytes: u64,
    /// Seconds since the epoch.
    pub built_at: u64,
    /// The last build of its action id used this key.
    pub current: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lowers: Vec<String>,
}

/// What a store directory's file name names (`None`: not an entry), e.g.
/// [`Layout::record_stem`].
type NameReader = fn(&str) -> Option<&str>;

/// The names of a store directory's entries, as `name` reads them.
fn list_names(store: &Store, dir: &str, name: NameReader) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(store.path(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| name(&n).map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// For [`list_names`] of a directory whose every entry is named by its key.
fn any_name(name: &str) -> Option<&str> {
    Some(name)
}

/// Whether a store name is an action key (64 lowercase hex digits, as blake3 prints it).
pub fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Names in the store's keyed directories that are not keys: not ccb's making (an operator's
/// copy, a crash of something else). Listings and `gc` leave them alone; `verify` names them.
pub fn foreign_names(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let key_of: [(&str, NameReader); 3] = [
        (Layout::LAYERS, any_name),
        (Layout::OUTPUTS, |n| Some(Layout::outputs_key(n))),
        (Layout::ACTIONS, Layout::record_stem),
    ];
    for (dir, key_of) in key_of {
        let Ok(rd) = std::fs::read_dir(store.path(dir)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if !key_of(&name).is_some_and(is_key) {
                out.push(format!("{dir}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// The keys the last build of every action id used: what `gc` keeps.
pub fn current_keys(store: &Store) -> BTreeSet<String> {
    list_names(store, Layout::LAST, Layout::record_stem)
        .iter()
        .filter_map(|n| store.read_json::<LastBuild>(&Layout::last_record(n)))
        .map(|l| l.key)
        .collect()
}

pub fn entries(store: &Store) -> Vec<Entry> {
    let current = current_keys(store);
    let mut by_key: BTreeMap<String, Entry> = BTreeMap::new();
    for key in list_names(store, Layout::ACTIONS, Layout::record_stem) {
        if !is_key(&key) {
            continue;
        }
        if let Some(r) = store.read_json::<ActionRecord>(&Layout::action_record(&key)) {
            by_key.insert(
                key.clone(),
                Entry {
                    current: current.contains(&key),
                    key,
                    id: r.id,
                    kind: r.kind.as_str().into(),
                    mode: None,
                    bytes: r.tree.map(|t| t.bytes).unwrap_or(0),
                    built_at: r.built_at,
                    lowers: vec![],
                },
            );
        }
    }
    for key in list_names(store, Layout::LAYERS, any_name) {
        if !is_key(&key) {
            continue;
        }
        let meta = store.layer_meta(&key);
        let e = by_key.entry(key.clone()).or_insert_with(|| Entry {
            current: current.contains(&key),
            key: key.clone(),
            id: meta
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_else(|| "?".into()),
            kind: "layer".into(),
            mode: None,
            bytes: 0,
            built_at: 0,
            lowers: vec![],
        });
        if let Some(m) = meta {
            e.mode = Some(format!("{:?}", m.mode).to_lowercase());
            e.bytes = m.tree.bytes;
            e.lowers = m.lowers;
            if e.built_at == 0 {
                e.built_at = m.created;
            }
        }
    }
    // Step checkpoints: current while a current layer was built through them.
    let in_use = checkpoints_of(store, &current);
    for key in store.checkpoint_keys() {
        let meta = store.checkpoint_meta(&key);
        by_key.entry(key.clone()).or_insert_with(|| Entry {
            current: in_use.contains(&key),
            id: meta
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_else(|| "?".into()),
            kind: CHECKPOINT.into(),
            mode: Some("diff".into()),
            bytes: meta.as_ref().map(|m| m.tree.bytes).unwrap_or(0),
            built_at: meta.as_ref().map(|m| m.created).unwrap_or(0),
            lowers: meta.map(|m| m.lowers).unwrap_or_default(),
            key,
        });
    }
    by_key.into_values().collect()
}

/// The kind of a step checkpoint's entry.
pub const CHECKPOINT: &str = "checkpoint";

/// The checkpoints the layers of `keys` were built through.
fn checkpoints_of(store: &Store, keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .flat_map(|k| store.checkpoint_chain(k).checkpoints)
        .collect()
}

/// Every key that depends on one of `keys` through layer stacking, `keys` included.
pub fn with_dependents(store: &Store, keys: &BTreeSet<String>) -> BTreeSet<String> {
    let all = entries(store);
    let mut out = keys.clone();
    loop {
        let before = out.len();
        for e in &all {
            if e.lowers.iter().any(|l| out.contains(l)) {
                out.insert(e.key.clone());
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Removes one key's entries: the action record first (so the key stops looking cached),
/// then the layer, then the log.
pub fn remove_key(store: &Store, key: &str) -> Result<(), StoreError> {
    store.remove(&Layout::action_record(key))?;
    store.remove_layer(key)?;
    store.remove(&Layout::outputs_record(key))?;
    store.remove_outputs(key)?;
    store.remove(&Layout::log(key))?;
    store.remove_checkpoint(key)?;
    store.remove(&Layout::checkpoint_chain(key))?;
    Ok(())
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: Vec<Entry>,
    pub kept: usize,
    pub bytes_freed: u64,
    pub scratch_removed: usize,
    /// Artifacts (by SHA-256) and source trees (by git tree id) no kept action uses.
    pub artifacts_removed: Vec<String>,
    pub trees_removed: Vec<String>,
}

/// Removes every entry that no current build uses (all of them with `all`), and every
/// working directory (no build runs while the caller holds the store exclusively).
pub fn gc(store: &Store, all: bool, dry_run: bool) -> Result<GcReport, StoreError> {
    let entries = entries(store);
    let mut keep: BTreeSet<String> = if all {
        BTreeSet::new()
    } else {
        current_keys(store)
    };
    // A kept layer keeps the checkpoints it was built through (the next edit resumes there).
    let used = checkpoints_of(store, &keep);
    keep.extend(used);
    // A kept layer needs the layers under it.
    let lowers: BTreeMap<&str, &Vec<String>> = entries
        .iter()
        .map(|e| (e.key.as_str(), &e.lowers))
        .collect();
    let mut stack: Vec<String> = keep.iter().cloned().collect();
    while let Some(k) = stack.pop() {
        if let Some(ls) = lowers.get(k.as_str()) {
            for l in ls.iter() {
                if keep.insert(l.clone()) {
                    stack.push(l.clone());
                }
            }
        }
    }
    let mut report = GcReport::default();
    // What the kept actions read: their artifacts and source trees stay.
    let (mut blobs, mut trees) = (BTreeSet::new(), BTreeSet::new());
    for key in &keep {
        let Some(r) = store.read_json::<ActionRecord>(&Layout::action_record(key)) else {
            continue;
        };
        if let Some(crate::keydoc::Value::Str(d)) = r.doc.get("sha256") {
            blobs.insert(d.to_ascii_lowercase());
        }
        if let Some(crate::keydoc::Value::Map(m)) = r.doc.get("source trees") {
            trees.extend(m.values().cloned());
        }
    }
    // Blobs are named by their SHA-256; their records go with them.
    for sha in list_names(store, Layout::ARTIFACTS, any_name) {
        if !is_key(&sha) || blobs.contains(&sha) {
            continue;
        }
        if let Ok(md) = std::fs::metadata(store.path(&Layout::artifact(&sha))) {
            report.bytes_freed += md.len();
        }
        if !dry_run {
            // The blob first: a record without its blob is harmless, the reverse is refetched.
            store.remove(&Layout::artifact(&sha))?;
            store.remove(&Layout::artifact_record(&sha))?;
        }
        report.artifacts_removed.push(sha);
    }
    for tree in list_names(store, Layout::SOURCE_TREES, any_name) {
        if trees.contains(&tree) {
            continue;
        }
        if !dry_run {
            remove_tree(&store.path(&Layout::source_tree(&tree)))?;
        }
        report.trees_removed.push(tree);
    }
    for e in entries {
        if keep.contains(&e.key) {
            report.kept += 1;
            continue;
        }
        if !dry_run {
            remove_key(store, &e.key)?;
        }
        report.bytes_freed += e.bytes;
        report.removed.push(e);
    }
    if !dry_run {
        if all {
            for n in list_names(store, Layout::LAST, Layout::record_stem) {
                store.remove(&Layout::last_record(&n))?;
            }
        }
        if let Ok(rd) = std::fs::read_dir(store.path(Layout::ARTIFACTS)) {
            // Downloads of a killed ccb (a live one holds the store shared: none runs now).
            for e in rd.filter_map(Result::ok) {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(Layout::FETCH_TEMP_PREFIX)
                {
                    let _ = std::fs::remove_file(e.path());
                    report.scratch_removed += 1;
                }
            }
        }
        // Bundles a remote builder received: the next client that needs one sends it again.
        for scratch in Layout::SCRATCH {
            if let Ok(rd) = std::fs::read_dir(store.path(scratch)) {
                for e in rd.filter_map(Result::ok) {
                    remove_tree(&e.path())?;
                    report.scratch_removed += 1;
                }
            }
        }
        if all {
            // Mirrors are the only copy of what a lock pins offline: kept unless asked.
            remove_tree(&store.path(Layout::GIT_MIRRORS))?;
        }
        // Resolutions are cheap to redo and keyed by inputs that change often.
        remove_tree(&store.path(Layout::RESOLVE))?;
        // Logs of keys that are gone.
        for n in list_names(store, Layout::LOGS, Layout::log_key) {
            if !store.exists(&Layout::action_record(&n)) && !store.layer_dir(&n).exists() {
                store.remove(&Layout::log(&n))?;
            }
        }
    }
    Ok(report)
}

/// One entry's verification.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub key: String,
    pub id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// A whole entry a stopped build committed but did not record: not used (only recorded
    /// entries count as cached); the next build of its key replaces it, `cache gc` removes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<String>,
}

/// Re-reads every entry: records parse, layers have their lowers, and every tree still has
/// the digest it had when committed.
pub fn verify(store: &Store, on_progress: &mut dyn FnMut(&str)) -> Vec<Verdict> {
    let mut out = Vec::new();
    for e in entries(store) {
        on_progress(&e.id);
        let mut problems = Vec::new();
        if e.kind == CHECKPOINT {
            check_checkpoint(store, &e.key, &mut problems);
            out.push(Verdict {
                key: e.key,
                id: e.id,
                ok: problems.is_empty(),
                problems,
                unrecorded: None,
            });
            continue;
        }
        let record = store.read_json::<ActionRecord>(&Layout::action_record(&e.key));
        match &record {
            None if store.exists(&Layout::action_record(&e.key)) => {
                problems.push("the action record does not parse".into())
            }
            // Committed, then stopped before its record (kill -9, power loss): the tree is
            // checked below like any other; it is not used, so it is not broken.
            None => {}
            Some(r) if r.key != e.key => {
                problems.push(format!("the action record is for key {}", r.key))
            }
            Some(r) if r.doc.key() != e.key => {
                problems.push("the recorded key document does not hash to the key".into())
            }
            Some(_) => {}
        }
        let layer_dir = store.layer_dir(&e.key);
        if e.kind == "disk" {
            match (store.outputs_meta(&e.key), &record) {
                (None, _) => problems.push("the disk outputs are missing".into()),
                (Some(_), Some(r)) => match crate::store::summarize(&store.outputs_dir(&e.key)) {
                    Err(err) => problems.push(format!("cannot read the outputs: {err}")),
                    Ok(s) if r.tree.as_ref().is_some_and(|t| t.digest != s.digest) => {
                        problems.push("the outputs changed since they were built".into());
                        problems.push(set_aside(store, &e.key));
                    }
                    Ok(_) => {}
                },
                (Some(_), None) => {}
            }
        } else if layer_dir.exists() {
            match store.layer_meta(&e.key) {
                None => problems.push("layer.json is missing or does not parse".into()),
                Some(meta) => {
                    if !check_layer(store, &meta, &mut problems) {
                        problems.push(set_aside(store, &e.key));
                    }
                }
            }
        } else if matches!(e.kind.as_str(), "base" | "layer") {
            problems.push("the layer tree is missing".into());
        }
        let unrecorded = (record.is_none() && !store.exists(&Layout::action_record(&e.key)))
            .then(|| "not recorded (a build stopped after committing it): not used; the next build of its key replaces it".to_string());
        out.push(Verdict {
            key: e.key,
            id: e.id,
            ok: problems.is_empty(),
            problems,
            unrecorded,
        });
    }
    // Artifacts: re-hashed whatever the stat cache says (this is the thorough check).
    for name in list_names(store, Layout::ARTIFACTS, any_name) {
        if !is_key(&name) {
            continue;
        }
        let id = format!("artifact {}", crate::ui::short(&name, crate::ui::KEY_WIDTH));
        on_progress(&id);
        let path = store.path(&Layout::artifact(&name));
        let mut problems = Vec::new();
        match store.read_json::<crate::fetch::ArtifactMeta>(&Layout::artifact_record(&name)) {
            // Fetched before the store recorded blake3: its name is its SHA-256.
            None => match crate::fetch::hash::sha256_file(&path) {
                Err(e) => problems.push(format!("cannot read it: {e}")),
                Ok(d) if d != name => problems.push(format!("its SHA-256 is {d}")),
                Ok(_) => {}
            },
            Some(meta) => match crate::fetch::hash::blake3_file(&path) {
                Err(e) => problems.push(format!("cannot read it: {e}")),
                Ok(b) if b != meta.blake3 => {
                    problems.push(format!("its blake3 is {b}, recorded {}", meta.blake3))
                }
                Ok(_) => {}
            },
        }
        if !problems.is_empty() {
            problems.push(format!(
                "remove {} and its .json: the next build fetches it again",
                path.display()
            ));
        }
        out.push(Verdict {
            key: name,
            id,
            ok: problems.is_empty(),
            problems,
            unrecorded: None,
        });
    }
    for name in foreign_names(store) {
        out.push(Verdict {
            problems: vec![format!(
                "`{name}` is not named by a key: ccb did not make it (remove it by hand)"
            )],
            key: name,
            id: "not a store entry".into(),
            ok: false,
            unrecorded: None,
        });
    }
    out
}

fn check_checkpoint(store: &Store, key: &str, problems: &mut Vec<String>) {
    let Some(meta) = store.checkpoint_meta(key) else {
        problems.push("checkpoint.json is missing or does not parse".into());
        return;
    };
    for l in &meta.lowers {
        if store.checkpoint_meta(l).is_none() {
            problems.push(format!(
                "lower checkpoint {} is missing",
                crate::ui::short(l, crate::ui::KEY_WIDTH)
            ));
        }
    }
    let tree = store.checkpoint_tree(key);
    match crate::store::summarize(&tree) {
        Err(e) => problems.push(format!("cannot read the tree: {e}")),
        Ok(s) if s.digest != meta.tree.digest => {
            problems.push("the tree changed since it was made".into())
        }
        Ok(_) => {}
    }
}

/// A tree or outputs that no longer match their digest must not be built on or published:
/// the action record goes (it is what makes an entry count as cached), so the next build
/// makes the entry again under the same key and replaces it. Returns what was done.
fn set_aside(store: &Store, key: &str) -> String {
    match store.remove(&crate::graph::action_record_name(key)) {
        Ok(()) => "its action record was removed: the next build makes it again".into(),
        Err(e) => format!("its action record could not be removed ({e}): remove the entry"),
    }
}

/// Checks a layer's lowers and tree; `false` when the tree is not what was built.
fn check_layer(store: &Store, meta: &LayerMeta, problems: &mut Vec<String>) -> bool {
    for l in &meta.lowers {
        if store.layer_meta(l).is_none() {
            problems.push(format!(
                "lower layer {} is missing",
                crate::ui::short(l, crate::ui::KEY_WIDTH)
            ));
        }
    }
    let tree = store.layer_tree(&meta.key);
    match crate::store::summarize(&tree) {
        Err(e) => problems.push(format!("cannot read the tree: {e}")),
        Ok(s) if s.digest != meta.tree.digest => {
            problems.push(format!(
                "the tree changed since it was built ({} entries, {} bytes; recorded {} entries, {} bytes)",
                s.entries, s.bytes, meta.tree.entries, meta.tree.bytes
            ));
            return false;
        }
        Ok(_) => {}
    }
    true
}
