//! Step checkpoints inside a layer, Docker's per-instruction reuse within DIB's semantics.
//!
//! A layer's steps run in DIB's order on an overlayfs over the layers under it. After a step
//! that took a while (or installed packages), the sandbox closes the overlay's upper directory
//! as a *segment* and stacks a fresh one on top (see `runner`'s `cut`): the closed segment is
//! the checkpoint of that step, committed to the store under the step's key. No byte is copied
//! to make one: the segments of a build are the layer, split at its slow steps.
//!
//! A step's key chains the key of the step before it (the state before) with the step itself
//! (its script's bytes, or its package lists); the chain starts from what every step can read:
//! the layer under it, the environment, and every element file that is not one of the layer's
//! step scripts (`static/`, package lists, `environment.d`, helpers...). So an edit to the
//! script at position k changes the keys of steps k..n only, and the next build resumes from
//! the newest checkpoint before k; an edit to anything every script can read reruns the layer.
//!
//! When the steps end, the layer's tree is the segments merged into one upper directory (hard
//! links to the checkpoints' files, which nothing ever writes in place), exactly what a single
//! overlay would have held: whiteouts of paths the stack under the layer does not have are
//! dropped, directories recreated over something the stack has are opaque.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{ActionSpec, Place, SpecKind, Step};
use super::tree::TreeError;
use super::{BuildContext, BuildError};
use crate::graph::{Action, ActionId};
use crate::keydoc::{hash_bytes, hash_list, hash_map, hash_str};
use crate::store::{CheckpointChain, CheckpointMeta, Layout, Store, StoreError};

/// What the parent tells the sandbox (`<work>/checkpoints.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Every step's checkpoint key, in run order across the phases.
    pub keys: Vec<String>,
    /// Checkpoint trees to stack over the layer's lowers, top first.
    pub reuse: Vec<PathBuf>,
    /// The steps before this one are in `reuse` and do not run.
    pub resume_at: usize,
    /// A step that ran at least this long is followed by a checkpoint (package steps always
    /// are): rerunning a quicker one costs less than the overlay layer it would add.
    pub min_ms: u64,
    /// At most this many checkpoints stacked in one layer.
    pub max: usize,
}

/// The plan's file in an action's working directory.
pub const PLAN_FILE: &str = "checkpoints.json";
/// Where the sandbox leaves the segment it closed after step `i`: `<work>/ckpt/<i>/tree`.
pub const SEGMENTS_DIR: &str = "ckpt";
/// Written into a segment's directory once its tree is complete.
pub const SEGMENT_DONE: &str = "done";
/// A segment's files (the overlayfs upper directory it closed), committed as a checkpoint.
pub const SEGMENT_TREE: &str = "tree";

/// Checkpoints after steps of at least this long (`CCB_CHECKPOINT_MIN_MS` overrides it).
const DEFAULT_MIN_MS: u64 = 1500;
use crate::store::MAX_CHECKPOINTS;

/// A checkpoint's identity: the step of a layer it follows. Spelled
/// `checkpoint:<image>:<arch>:<phase>/<step>`, here only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointId {
    pub layer: ActionId,
    pub phase: String,
    pub step: String,
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.layer.image_arch() {
            Some((image, arch)) => {
                write!(f, "checkpoint:{image}:{arch}:{}/{}", self.phase, self.step)
            }
            None => write!(f, "checkpoint:{}:{}/{}", self.layer, self.phase, self.step),
        }
    }
}

impl CheckpointId {
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("checkpoint:")?;
        let (layer, step) = rest.rsplit_once(':')?;
        let (phase, step) = step.split_once('/')?;
        let layer = ActionId::parse_of(crate::graph::Kind::Layer, layer)?;
        (!phase.is_empty() && !step.is_empty()).then(|| CheckpointId {
            layer,
            phase: phase.into(),
            step: step.into(),
        })
    }
}

/// Whether checkpoints are on (`CCB_CHECKPOINTS=0` turns them off: every layer runs whole).
pub fn enabled() -> bool {
    !std::env::var("CCB_CHECKPOINTS").is_ok_and(|v| v == "0")
}

/// The steps of a layer spec in run order, with their phase.
pub fn steps(spec: &ActionSpec) -> Vec<(&str, Place, &Step)> {
    spec.phases
        .iter()
        .flat_map(|p| p.steps.iter().map(move |s| (p.phase.as_str(), p.place, s)))
        .collect()
}

/// The file a script step runs, in its element's directory.
fn script_path(spec: &ActionSpec, phase: &str, step: &Step) -> Option<PathBuf> {
    let Step::Script { element, name, dir } = step else {
        return None;
    };
    let el = spec.elements.iter().find(|e| &e.name == element)?;
    let mut p = el.dir.join(phase);
    if let Some(d) = dir {
        p.push(d);
    }
    Some(p.join(name))
}

/// Every step's key, or `None` when the layer cannot be checkpointed (its secrets are read
/// at build time into the working directory, and must not reach a key).
pub fn step_keys(spec: &ActionSpec, parent_key: &str) -> std::io::Result<Option<Vec<String>>> {
    if spec.kind != SpecKind::Layer || spec.artifacts.values().any(|p| p.starts_with(&spec.work)) {
        return Ok(None);
    }
    let steps = steps(spec);
    let scripts: Vec<PathBuf> = steps
        .iter()
        .filter_map(|(phase, _, s)| script_path(spec, phase, s))
        .collect();
    // What every step can read.
    let mut h = blake3::Hasher::new();
    hash_str(&mut h, "ccb-checkpoint-v1");
    hash_str(&mut h, crate::ENGINE_VERSION);
    hash_str(&mut h, parent_key);
    hash_str(&mut h, &spec.arch);
    hash_map(&mut h, &spec.env);
    hash_list(&mut h, &spec.env_files);
    for el in &spec.elements {
        hash_str(&mut h, &el.name);
        hash_str(&mut h, if el.own { "own" } else { "parent" });
        hash_dir(&mut h, &el.dir, &scripts).map_err(|e| {
            std::io::Error::new(e.kind(), format!("read element `{}`: {e}", el.name))
        })?;
    }
    for (el, map) in &spec.pkg_maps {
        hash_str(&mut h, el);
        hash_map(&mut h, map);
    }
    let artifacts: BTreeMap<String, String> = spec
        .artifacts
        .iter()
        .map(|(var, p)| {
            // Store artifacts are named by their SHA-256.
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (var.clone(), name.unwrap_or_default())
        })
        .collect();
    hash_map(&mut h, &artifacts);
    let mut prev = h.finalize().to_hex().to_string();

    let mut keys = Vec::with_capacity(steps.len());
    for (phase, place, step) in steps {
        let mut h = blake3::Hasher::new();
        hash_str(&mut h, "ccb-checkpoint-step-v1");
        hash_str(&mut h, &prev);
        hash_str(&mut h, phase);
        hash_str(&mut h, if place == Place::Inside { "in" } else { "out" });
        hash_str(&mut h, step.element());
        hash_str(&mut h, step.name());
        match step {
            Step::Script { dir, .. } => {
                hash_str(&mut h, dir.as_deref().unwrap_or(""));
                let path = script_path(spec, phase, step).unwrap_or_default();
                let bytes = std::fs::read(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("read {}: {e}", path.display()))
                })?;
                let exec = std::fs::metadata(&path)
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false);
                hash_bytes(&mut h, &bytes);
                hash_str(&mut h, if exec { "x" } else { "-" });
            }
            Step::Packages {
                install, uninstall, ..
            } => {
                hash_list(&mut h, install);
                hash_list(&mut h, uninstall);
            }
            Step::InitScripts { init_system, .. } => hash_str(&mut h, init_system),
            Step::InstallBin { .. } | Step::InstallStatic { .. } => {}
        }
        prev = h.finalize().to_hex().to_string();
        keys.push(prev.clone());
    }
    Ok(Some(keys))
}

/// Sorted relative paths, exec bits, symlink targets and contents of a directory, but the
/// files (and directories) in `skip`. walkdir's order is the one the keys were made with:
/// each directory's entries sorted by their name's bytes, a directory's before the next entry.
fn hash_dir(h: &mut blake3::Hasher, root: &Path, skip: &[PathBuf]) -> std::io::Result<()> {
    let entries = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !skip.iter().any(|s| s == e.path()));
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(path);
        hash_bytes(h, rel.as_os_str().as_encoded_bytes());
        let ft = entry.file_type();
        if ft.is_symlink() {
            hash_str(h, "l");
            hash_bytes(h, std::fs::read_link(path)?.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            hash_str(h, "d");
        } else {
            let mode = entry.metadata()?.mode();
            hash_str(h, if mode & 0o111 != 0 { "x" } else { "f" });
            hash_bytes(h, &std::fs::read(path)?);
        }
    }
    Ok(())
}

/// Where a layer resumes: the newest checkpoint whose whole stack is in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Checkpoint keys to stack, top first.
    pub reuse: Vec<String>,
    /// The first step that runs.
    pub resume_at: usize,
}

pub fn resume_point(store: &Store, keys: &[String]) -> Resume {
    for (i, key) in keys.iter().enumerate().rev() {
        if let Some(meta) = store.checkpoint_stack(key) {
            let mut reuse = vec![meta.key.clone()];
            reuse.extend(meta.lowers.iter().cloned());
            return Resume {
                reuse,
                resume_at: i + 1,
            };
        }
    }
    Resume {
        reuse: vec![],
        resume_at: 0,
    }
}

/// What [`prepare`] decided for one run of a layer.
pub struct Prepared {
    pub keys: Vec<String>,
    pub resume: Resume,
    pub parent: String,
}

fn parent_key(ctx: &BuildContext, action: &Action) -> Option<String> {
    let dep = ctx.graph.get(action.deps.first()?)?;
    Some(dep.key.clone())
}

/// Plans a layer's checkpoints and writes the plan for the sandbox; `None` when the layer
/// runs whole (not a layer, no overlayfs, secrets, or `CCB_CHECKPOINTS=0`).
pub fn prepare(
    ctx: &BuildContext,
    action: &Action,
    spec: &ActionSpec,
) -> Result<Option<Prepared>, BuildError> {
    if spec.kind != SpecKind::Layer || !spec.overlay || !enabled() {
        return Ok(None);
    }
    let Some(parent) = parent_key(ctx, action) else {
        return Ok(None);
    };
    let Some(keys) = step_keys(spec, &parent).map_err(BuildError::io(
        &action.id,
        "compute the step checkpoints' keys",
    ))?
    else {
        return Ok(None);
    };
    let resume = resume_point(ctx.store, &keys);
    let min_ms = std::env::var("CCB_CHECKPOINT_MIN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MIN_MS);
    let plan = Plan {
        keys: keys.clone(),
        reuse: resume
            .reuse
            .iter()
            .map(|k| ctx.store.checkpoint_tree(k))
            .collect(),
        resume_at: resume.resume_at,
        min_ms,
        max: MAX_CHECKPOINTS,
    };
    let bytes = serde_json::to_vec_pretty(&plan)
        .map_err(|_| BuildError::internal(&action.id, "the checkpoint plan does not encode"))?;
    crate::fsutil::write_atomic(&spec.work.join(PLAN_FILE), &bytes).map_err(StoreError::from)?;
    Ok(Some(Prepared {
        keys,
        resume,
        parent,
    }))
}

/// Commits the segments the sandbox closed (whether the layer then succeeded or not: the
/// checkpoint before a failing step is what the next attempt starts from). Returns the whole
/// chain under the layer's last segment, top first.
pub fn collect(
    ctx: &BuildContext,
    action: &Action,
    spec: &ActionSpec,
    prepared: &Prepared,
) -> Result<Vec<String>, BuildError> {
    let dir = spec.work.join(SEGMENTS_DIR);
    let mut done: Vec<usize> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join(SEGMENT_DONE).exists())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    done.sort_unstable();
    let steps = steps(spec);
    let mut chain = prepared.resume.reuse.clone();
    for i in done {
        let (Some(key), Some((phase, _, step))) = (prepared.keys.get(i), steps.get(i)) else {
            continue;
        };
        let tree_dir = dir.join(i.to_string()).join(SEGMENT_TREE);
        let summary = crate::store::summarize(&tree_dir).map_err(|source| BuildError::Tree {
            id: action.id.to_string(),
            source: source.into(),
        })?;
        let id = match (&action.image, action.arch) {
            (Some(image), Some(arch)) => CheckpointId {
                layer: ActionId::layer(image, arch),
                phase: phase.to_string(),
                step: step.name().to_string(),
            }
            .to_string(),
            _ => format!("checkpoint:{}", action.id),
        };
        let meta = CheckpointMeta {
            key: key.clone(),
            id,
            steps: i + 1,
            lowers: chain.clone(),
            parent: prepared.parent.clone(),
            tree: summary,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        ctx.store.commit_checkpoint(&tree_dir, &meta)?;
        chain.insert(0, key.clone());
    }
    Ok(chain)
}

/// Makes `<work>/upper` the layer's whole upper directory: the checkpoints of `chain` (top
/// first) and the last segment merged, as one overlay would have left it.
pub fn merge_into_upper(
    store: &Store,
    spec: &ActionSpec,
    chain: &[String],
) -> Result<(), TreeError> {
    if chain.is_empty() {
        return Ok(());
    }
    let merged = spec.work.join("merged");
    std::fs::create_dir_all(&merged).map_err(|e| TreeError::Io {
        action: "create directory",
        path: merged.clone(),
        source: e,
    })?;
    let below = &spec.lowers;
    for key in chain.iter().rev() {
        merge_segment(&store.checkpoint_tree(key), &merged, below)?;
    }
    let last = spec.work.join("upper");
    merge_segment(&last, &merged, below)?;
    let old = spec.work.join("upper.last");
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| TreeError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::rename(&last, &old).map_err(io("move aside", &last))?;
    std::fs::rename(&merged, &last).map_err(io("move into place", &merged))?;
    Ok(())
}

/// Records which checkpoints a committed layer was built through.
pub fn record_chain(store: &Store, layer_key: &str, chain: &[String]) -> Result<(), StoreError> {
    if chain.is_empty() {
        // Built whole: an older build's chain no longer describes this layer.
        return store.remove(&Layout::checkpoint_chain(layer_key));
    }
    store.write_json(
        &Layout::checkpoint_chain(layer_key),
        &CheckpointChain {
            checkpoints: chain.to_vec(),
        },
    )
}

/// The first step of a layer that must run, by the checkpoints in the store: `None` when
/// no checkpoint applies (the whole layer runs).
pub fn first_rerun(
    ctx: &BuildContext,
    action: &Action,
    spec: &ActionSpec,
) -> Option<(String, usize)> {
    if !spec.overlay || !enabled() {
        return None;
    }
    let keys = step_keys(spec, &parent_key(ctx, action)?).ok()??;
    let resume = resume_point(ctx.store, &keys);
    if resume.resume_at == 0 {
        return None;
    }
    let steps = steps(spec);
    let (phase, _, step) = steps.get(resume.resume_at)?;
    Some((format!("{phase}/{}", step.name()), resume.resume_at))
}

/// `explain`'s line for a layer that must run: which step it resumes at, if a checkpoint
/// applies.
pub fn explain(
    model: &crate::manifest::Model,
    graph: &crate::graph::Graph,
    resolver: &crate::element::Resolver,
    store: &Store,
    action: &Action,
) -> Option<String> {
    if action.kind != crate::graph::Kind::Layer {
        return None;
    }
    let ctx = BuildContext {
        model,
        graph,
        resolver,
        store,
        overlay: super::overlay_available(),
        stream_output: false,
        keep_failed: false,
        distdirs: vec![],
        offline: true,
        swift: None,
        strict: false,
    };
    let work = store.work_dir(&format!("{}.explain", action.key)).ok()?;
    let spec = super::spec_for(&ctx, action, work.clone());
    let _ = crate::store::remove_tree(&work);
    let spec = spec.ok()?;
    let (step, n) = first_rerun(&ctx, action, &spec)?;
    Some(format!(
        "steps 1-{n} come from checkpoints; the first step to rerun is {step} (step {} of {})",
        n + 1,
        steps(&spec).len()
    ))
}

// ---- merging segments ----------------------------------------------------------------------

const OVERLAY_XATTRS: &str = "trusted.overlay.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeError {
    let path = path.to_path_buf();
    move |source| TreeError::Io {
        action,
        path,
        source,
    }
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    matches!(xattr::get(p, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Whether `rel` is visible in the overlay of `below` (top first).
fn visible_below(below: &[PathBuf], rel: &Path) -> bool {
    for layer in below {
        match std::fs::symlink_metadata(layer.join(rel)) {
            Ok(m) => return !is_whiteout(&m),
            Err(_) => {
                // Hidden further down by an ancestor this layer replaces.
                let mut anc = rel.parent();
                while let Some(a) = anc.filter(|a| !a.as_os_str().is_empty()) {
                    if let Ok(m) = std::fs::symlink_metadata(layer.join(a))
                        && (!m.is_dir() || is_opaque(&layer.join(a)))
                    {
                        return false;
                    }
                    anc = a.parent();
                }
            }
        }
    }
    false
}

fn remove_any(p: &Path) -> Result<(), TreeError> {
    match std::fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(io_err("remove", p)),
        Ok(_) => std::fs::remove_file(p).map_err(io_err("remove", p)),
    }
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<(), TreeError> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    // Too many links, or another filesystem: a copy keeps the same bytes and metadata.
    super::tree::cp_a(src, src, dst, &[])
}

/// A directory's mode, owner and xattrs (but overlayfs' own) onto another.
fn copy_dir_meta(src: &Path, m: &std::fs::Metadata, dst: &Path) -> Result<(), TreeError> {
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))
        .map_err(io_err("chmod", dst))?;
    std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid())).map_err(io_err("chown", dst))?;
    if let Ok(names) = xattr::list(dst) {
        for n in names {
            if !n.to_string_lossy().starts_with(OVERLAY_XATTRS) {
                let _ = xattr::remove(dst, &n);
            }
        }
    }
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if n.to_string_lossy().starts_with(OVERLAY_XATTRS) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n) {
                xattr::set(dst, &n, &v).map_err(io_err("set an xattr on", dst))?;
            }
        }
    }
    Ok(())
}

fn set_mtime(dst: &Path, m: &std::fs::Metadata) {
    if let (Ok(f), Ok(t)) = (std::fs::File::open(dst), m.modified()) {
        let _ = f.set_times(std::fs::FileTimes::new().set_modified(t));
    }
}

/// Applies one overlayfs upper directory onto a merged upper directory, keeping it the upper
/// directory a single overlay over `below` would have: hard links for everything but
/// directories, which are made anew.
pub fn merge_segment(seg: &Path, dst: &Path, below: &[PathBuf]) -> Result<(), TreeError> {
    merge_dir(seg, dst, Path::new(""), below)
}

fn merge_dir(seg: &Path, dst: &Path, rel: &Path, below: &[PathBuf]) -> Result<(), TreeError> {
    let mut names: Vec<_> = std::fs::read_dir(seg)
        .map_err(io_err("read directory", seg))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let sp = seg.join(&name);
        let dp = dst.join(&name);
        let rel = rel.join(&name);
        let m = std::fs::symlink_metadata(&sp).map_err(io_err("inspect", &sp))?;
        if is_whiteout(&m) {
            remove_any(&dp)?;
            // A whiteout of a path only an earlier segment made hides nothing: one overlay
            // would have removed the path outright.
            if visible_below(below, &rel) {
                link_or_copy(&sp, &dp)?;
            }
        } else if m.is_dir() {
            let existing = std::fs::symlink_metadata(&dp).ok();
            let replace = is_opaque(&sp) || existing.as_ref().is_some_and(|e| !e.is_dir());
            if replace {
                remove_any(&dp)?;
            }
            let fresh = replace || existing.is_none();
            if fresh {
                std::fs::create_dir(&dp).map_err(io_err("create directory", &dp))?;
                // Recreated over something the stack below shows: one overlay marks it opaque.
                if (replace || is_opaque(&sp)) && visible_below(below, &rel) {
                    xattr::set(&dp, OPAQUE_XATTR, b"y").map_err(io_err("mark opaque", &dp))?;
                }
            }
            copy_dir_meta(&sp, &m, &dp)?;
            merge_dir(&sp, &dp, &rel, below)?;
            set_mtime(&dp, &m);
        } else {
            remove_any(&dp)?;
            link_or_copy(&sp, &dp)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_id_reads_back_what_it_writes() {
        let id = CheckpointId {
            layer: ActionId::layer("debian12", crate::manifest::Arch::Amd64),
            phase: "post-install.d".into(),
            step: "00-package-installs".into(),
        };
        assert_eq!(
            id.to_string(),
            "checkpoint:debian12:amd64:post-install.d/00-package-installs"
        );
        assert_eq!(CheckpointId::parse(&id.to_string()), Some(id));
        for bad in [
            "checkpoint:",
            "checkpoint:debian12:amd64",
            "checkpoint:debian12:amd64:install.d",
            "layer:debian12:amd64:install.d/x",
        ] {
            assert_eq!(CheckpointId::parse(bad), None, "{bad}");
        }
    }

    fn whiteout(p: &Path) {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    /// Two segments merged give what one overlay upper would hold (needs root: whiteouts and
    /// trusted xattrs).
    #[test]
    fn merged_segments_are_the_upper_one_overlay_would_leave() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (below, s1, s2, out) = (
            t.path().join("below"),
            t.path().join("s1"),
            t.path().join("s2"),
            t.path().join("out"),
        );
        for d in [&below, &s1, &s2, &out] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(below.join("etc/old")).unwrap();
        std::fs::write(below.join("etc/keep"), "k").unwrap();
        // Segment 1: a new file, a deleted lower file, a deleted lower directory.
        std::fs::create_dir_all(s1.join("etc")).unwrap();
        std::fs::write(s1.join("etc/tmpfile"), "t").unwrap();
        whiteout(&s1.join("etc/keep"));
        whiteout(&s1.join("etc/old"));
        // Segment 2: the new file deleted again, the lower directory recreated.
        std::fs::create_dir_all(s2.join("etc/old")).unwrap();
        xattr::set(s2.join("etc/old"), OPAQUE_XATTR, b"y").unwrap();
        std::fs::write(s2.join("etc/old/new"), "n").unwrap();
        whiteout(&s2.join("etc/tmpfile"));
        let below = vec![below];
        merge_segment(&s1, &out, &below).unwrap();
        merge_segment(&s2, &out, &below).unwrap();

        let m = |p: &str| std::fs::symlink_metadata(out.join(p));
        assert!(m("etc/tmpfile").is_err(), "made and removed: no trace");
        assert!(
            is_whiteout(&m("etc/keep").unwrap()),
            "a lower file stays hidden"
        );
        assert!(m("etc/old").unwrap().is_dir());
        assert!(
            is_opaque(&out.join("etc/old")),
            "recreated over a lower dir"
        );
        assert_eq!(std::fs::read(out.join("etc/old/new")).unwrap(), b"n");
        // Files are the checkpoint's own inodes, never copies.
        assert_eq!(
            m("etc/old/new").unwrap().ino(),
            std::fs::metadata(s2.join("etc/old/new")).unwrap().ino()
        );
    }
}
