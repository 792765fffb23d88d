//! `verify`: rebuild a target's actions in a scratch store and compare them, action by action,
//! with what the store holds (or with a site's published copy): equal keys must give equal
//! bytes (see [`crate::action::repro`]).
//!
//! The scratch store lives under the store's `tmp/` and is removed afterwards. It starts with
//! hard links to the store's fetched artifacts, sources and package downloads (each verified
//! by its digest when used), never with an action result, and builds without a remote cache:
//! every base, layer and disk is built again. Differences are reported as files inside the
//! trees and filesystems: added, removed, changed content (a text diff for short text files,
//! sizes and hashes otherwise) or changed metadata.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::build::BuildRequest;
use super::{CommandError, Session, SessionOptions};
use crate::graph::{self, Action, Kind};
use crate::inspect::fs::{FileKind, Filesystem};
use crate::inspect::{ReadAt, disk, image};
use crate::store::{Layout, Store};
use crate::ui::Shell;

/// Differing files listed per action; the count covers them all.
const MAX_LISTED: usize = 200;
/// Text files up to this size get a line diff.
const MAX_TEXT: u64 = 64 << 10;
/// Lines of one file's diff kept in the report.
const MAX_DIFF_LINES: usize = 40;

/// What to rebuild and what to compare it with.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    pub targets: Vec<String>,
    pub arch: Vec<String>,
    /// Compare the rebuilt disk with a site's published copy instead of the store's.
    pub published: Option<Published>,
    /// Keep the rebuilt disks here (else they go with the scratch store).
    pub keep: Option<PathBuf>,
    pub jobs: usize,
}

#[derive(Debug, Clone)]
pub struct Published {
    pub site: String,
    pub scope: String,
}

/// One file that differs.
#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// `added`, `removed`, `content`, `metadata` or `kind`.
    pub change: &'static str,
    /// Sizes and hashes, or the metadata fields that differ.
    pub detail: String,
    /// A unified diff of a short text file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// One action's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ActionVerdict {
    pub id: String,
    pub kind: Kind,
    pub key: String,
    /// `identical`, `different`, or `not-in-store` (nothing to compare with).
    pub verdict: &'static str,
    /// Files (or outputs) that differ, at most `MAX_LISTED`.
    pub files: Vec<FileDiff>,
    /// How many differ in all.
    pub differing: usize,
    /// What the comparison looked at: `tree`, `outputs`, `published <object>`.
    pub compared: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub version: u32,
    pub identical: bool,
    pub actions: Vec<ActionVerdict>,
    /// The rebuild in the scratch store.
    pub rebuild_ms: u64,
    pub compare_ms: u64,
    /// Where the rebuilt disks were kept (`--keep`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<PathBuf>,
}

impl VerifyReport {
    pub fn differing(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| a.verdict == "different")
            .count()
    }

    /// Any difference is the command's failure (exit 1).
    pub fn ok(&self) -> Result<(), CommandError> {
        match self.differing() {
            0 => Ok(()),
            n => Err(CommandError::msg(format!(
                "{n} action{} rebuilt differently: equal keys gave different bytes",
                if n == 1 { "" } else { "s" }
            ))),
        }
    }
}

/// The store's fetched files could not be linked into the scratch store. The `cp` error stays
/// the source, so a missing `cp` is found as the host's to fix (see [`CommandError::from_diag`]).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("linking the store's {dir} into the scratch store: {source}")]
#[diagnostic(
    code(ccb::verify::scratch),
    help("the scratch store is under the store's tmp/: is the disk full?")
)]
pub struct ScratchError {
    dir: &'static str,
    #[source]
    source: crate::process::ProcessError,
}

/// The scratch store, removed with everything in it when dropped.
struct Scratch {
    store: Store,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(self.store.root());
    }
}

impl Scratch {
    /// A new store under `store`'s `tmp/`, with hard links to what was fetched (the same
    /// filesystem, so no byte is copied).
    fn new(store: &Store) -> Result<Self, CommandError> {
        let root = store.path(&Layout::scratch(&format!("verify-{}", std::process::id())));
        let _ = crate::store::remove_tree(&root);
        crate::fsutil::create_dir_all(&root)?;
        let scratch = Self {
            store: Store::at(root),
        };
        for dir in Layout::FETCHED {
            let src = store.path(dir);
            if !src.is_dir() {
                continue;
            }
            crate::process::Process::new("cp")
                .args(["-al", "--no-target-directory"])
                .arg(&src)
                .arg(scratch.store.path(dir))
                .output()
                .map_err(|source| ScratchError { dir, source })?;
        }
        Ok(scratch)
    }
}

/// Rebuilds the targets in a scratch store and compares every base, layer and disk.
pub fn verify(
    session: &Session,
    opts: &SessionOptions,
    req: &VerifyRequest,
    shell: &Shell,
) -> Result<VerifyReport, CommandError> {
    let planned = session.plan(&req.targets, &req.arch)?;
    let mut actions: Vec<&Action> = Vec::new();
    for t in &planned.targets {
        let own = planned.graph.actions_of(t);
        let disk = own
            .iter()
            .find(|a| a.kind == Kind::Disk)
            .ok_or_else(|| CommandError::internal(format!("{} has no disk action", t.label())))?;
        for a in planned.graph.closure(&disk.id) {
            if matches!(a.kind, Kind::Base | Kind::Layer | Kind::Disk)
                && !actions.iter().any(|b| b.id == a.id)
            {
                actions.push(a);
            }
        }
        if req.published.is_none() && !graph::is_cached(session.store, disk) {
            return Err(CommandError::msg(format!(
                "{}: the store holds no disk to compare with: `ccb build {}` first",
                t.label(),
                t.label()
            )));
        }
    }

    let scratch = Scratch::new(session.store)?;
    let scratch_opts = SessionOptions {
        remote: crate::remote::Choice {
            disabled: true,
            ..Default::default()
        },
        ..opts.clone()
    };
    let rebuilt = Session::open(session.model.clone(), &scratch.store, &scratch_opts, shell)?;
    let planned2 = rebuilt.plan(&req.targets, &req.arch)?;
    for a in &actions {
        if planned2.graph.get(&a.id).map(|b| b.key.as_str()) != Some(a.key.as_str()) {
            return Err(CommandError::internal(format!(
                "{}: the scratch store computes another key",
                a.id
            )));
        }
    }
    shell.status(&format!(
        "verify: rebuilding {} action{} in a scratch store",
        actions.len(),
        if actions.len() == 1 { "" } else { "s" }
    ));
    let started = Instant::now();
    let out = req
        .keep
        .clone()
        .unwrap_or_else(|| scratch.store.path(Layout::SCRATCH_OUTPUTS));
    let build_req = BuildRequest {
        jobs: req.jobs,
        out: Some(out),
        announce_outputs: req.keep.is_some(),
        ..BuildRequest::disks(&req.targets, &req.arch)
    };
    let build = super::build::build(&rebuilt, &planned2, &build_req, shell)?;
    shell.status(&build.summary_line());
    build.ok()?;
    let rebuild_ms = started.elapsed().as_millis() as u64;

    let started = Instant::now();
    let mut verdicts = Vec::new();
    if let Some(p) = &req.published {
        for a in actions.iter().filter(|a| a.kind == Kind::Disk) {
            verdicts.push(compare_published(session, &scratch.store, a, p)?);
        }
    } else {
        for a in &actions {
            shell.status(&format!("verify: comparing {}", a.id));
            verdicts.push(compare_action(session.store, &scratch.store, a)?);
        }
    }
    Ok(VerifyReport {
        version: 1,
        identical: verdicts.iter().all(|v| v.verdict != "different"),
        actions: verdicts,
        rebuild_ms,
        compare_ms: started.elapsed().as_millis() as u64,
        kept: req.keep.clone(),
    })
}

fn verdict(a: &Action, compared: String, mut files: Vec<FileDiff>) -> ActionVerdict {
    let differing = files.len();
    files.truncate(MAX_LISTED);
    ActionVerdict {
        id: a.id.to_string(),
        kind: a.kind,
        key: a.key.clone(),
        verdict: if differing == 0 {
            "identical"
        } else {
            "different"
        },
        files,
        differing,
        compared,
        note: None,
    }
}

fn compare_action(
    local: &Store,
    scratch: &Store,
    a: &Action,
) -> Result<ActionVerdict, CommandError> {
    if !graph::is_cached(local, a) {
        return Ok(ActionVerdict {
            note: Some("the store no longer holds this action's result".into()),
            verdict: "not-in-store",
            ..verdict(a, "nothing".into(), vec![])
        });
    }
    match a.kind {
        Kind::Base | Kind::Layer => {
            let (l, r) = (local.layer_tree(&a.key), scratch.layer_tree(&a.key));
            let files = diff_listings(&host_listing(&l, true)?, &host_listing(&r, true)?, &|p| {
                (std::fs::read(l.join(p)).ok(), std::fs::read(r.join(p)).ok())
            });
            Ok(verdict(a, "tree".into(), files))
        }
        _ => compare_disk(local, scratch, a),
    }
}

/// A disk: its output files byte for byte; where a disk file differs, the files inside its
/// root filesystem.
fn compare_disk(local: &Store, scratch: &Store, a: &Action) -> Result<ActionVerdict, CommandError> {
    let (l, r) = (local.outputs_dir(&a.key), scratch.outputs_dir(&a.key));
    // The output files' own times are when they were written, not part of the disk.
    let outputs = diff_listings(&host_listing(&l, false)?, &host_listing(&r, false)?, &|p| {
        (std::fs::read(l.join(p)).ok(), std::fs::read(r.join(p)).ok())
    });
    let disk_files: Vec<&FileDiff> = outputs
        .iter()
        .filter(|f| f.path.ends_with(".raw") || f.path.ends_with(".qcow2"))
        .collect();
    let mut files: Vec<FileDiff> = outputs
        .iter()
        .map(|f| FileDiff {
            path: format!("outputs: {}", f.path),
            ..f.clone()
        })
        .collect();
    let mut note = None;
    // The raw disk when there is one (no decompression), else the qcow2.
    if let Some(f) = disk_files
        .iter()
        .find(|f| f.path.ends_with(".raw"))
        .or_else(|| disk_files.first())
    {
        let (dl, dr) = (open_disk(&l.join(&f.path))?, open_disk(&r.join(&f.path))?);
        let inside = diff_filesystems(dl, dr)?;
        if inside.is_empty() {
            note = Some(
                "every file of the root filesystem is the same: the disks differ in \
                 filesystem metadata, layout, the ESP or the boot code"
                    .to_string(),
            );
        }
        files.extend(inside);
    }
    Ok(ActionVerdict {
        note,
        ..verdict(a, "outputs".into(), files)
    })
}

fn compare_published(
    session: &Session,
    scratch: &Store,
    a: &Action,
    p: &Published,
) -> Result<ActionVerdict, CommandError> {
    let meta = scratch.outputs_meta(&a.key).ok_or_else(|| {
        CommandError::internal(format!(
            "{}: the rebuilt disk is not in the scratch store",
            a.id
        ))
    })?;
    let dir = scratch.outputs_dir(&a.key);
    let rebuilt = ["raw", "qcow2"]
        .iter()
        .map(|f| dir.join(format!("{}.{f}", meta.name)))
        .find(|f| f.is_file())
        .ok_or_else(|| CommandError::msg(format!("{}: no disk was rebuilt", a.id)))?;
    let (object, remote) = super::inspect::published_disk(session, &p.site, &p.scope, &meta.name)?;
    let files = diff_filesystems(open_disk(&rebuilt)?, remote)?;
    Ok(ActionVerdict {
        note: Some(
            "compared file by file with the published image (its bytes are read by range)".into(),
        ),
        ..verdict(a, format!("published {object}"), files)
    })
}

fn open_disk(path: &Path) -> Result<Arc<dyn ReadAt>, CommandError> {
    image::open_path(path).map_err(CommandError::from_diag)
}

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    /// A regular file's content hash, a link's target, a device's number.
    content: String,
}

impl Entry {
    fn metadata_changes(&self, other: &Entry) -> Vec<String> {
        let mut out = Vec::new();
        if self.mode != other.mode {
            out.push(format!("mode {:04o} → {:04o}", self.mode, other.mode));
        }
        if (self.uid, self.gid) != (other.uid, other.gid) {
            out.push(format!(
                "owner {}:{} → {}:{}",
                self.uid, self.gid, other.uid, other.gid
            ));
        }
        if self.mtime != other.mtime {
            out.push(format!("mtime {} → {}", self.mtime, other.mtime));
        }
        out
    }
}

type Listing = BTreeMap<String, Entry>;

/// Both sides' bytes of a path (for a text diff), where they can be read.
type ReadBoth<'a> = &'a dyn Fn(&str) -> (Option<Vec<u8>>, Option<Vec<u8>>);

/// An I/O failure on a path, its kind kept (a full disk or a permission is the host's).
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CommandError {
    move |e| CommandError::from_diag(crate::fsutil::FsError::new(action, path, e))
}

/// Every entry under a host directory (a layer's tree, a disk's outputs), files hashed in
/// parallel; modification times compared only with `times`.
fn host_listing(root: &Path, times: bool) -> Result<Listing, CommandError> {
    let mut paths = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            match e.into_io_error() {
                Some(io) => CommandError::from_diag(crate::fsutil::FsError::new("read", path, io)),
                None => CommandError::msg(format!("read {}: a directory loop", path.display())),
            }
        })?;
        paths.push(e.into_path());
    }
    paths
        .par_iter()
        .map(|p| {
            let m = p.symlink_metadata().map_err(io_error("stat", p))?;
            let ft = m.file_type();
            let (kind, content) = if ft.is_file() {
                let mut h = blake3::Hasher::new();
                h.update_mmap(p).map_err(io_error("read", p))?;
                ("file", h.finalize().to_hex().to_string())
            } else if ft.is_dir() {
                ("dir", String::new())
            } else if ft.is_symlink() {
                let t = std::fs::read_link(p).map_err(io_error("read", p))?;
                ("symlink", t.display().to_string())
            } else {
                ("other", format!("device {:x}", m.rdev()))
            };
            let rel = p
                .strip_prefix(root)
                .map_err(|_| CommandError::internal("a walked path outside its root"))?
                .display()
                .to_string();
            Ok((
                rel,
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_file() { m.len() } else { 0 },
                    mtime: if times { m.mtime() } else { 0 },
                    content,
                },
            ))
        })
        .collect()
}

/// Every entry of a disk's root filesystem, read through ccb's readers (no mount).
fn fs_listing(fs: &dyn Filesystem) -> Result<Listing, CommandError> {
    let err = |e: crate::inspect::fs::FsError| CommandError::from_diag(e);
    let mut out = Listing::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        for e in fs.read_dir(&dir).map_err(err)? {
            let path = if dir == "/" {
                format!("/{}", e.name)
            } else {
                format!("{dir}/{}", e.name)
            };
            let m = fs.symlink_metadata(&path).map_err(err)?;
            let (kind, content) = match m.kind {
                FileKind::File => {
                    let bytes = fs.read_limited(&path, u64::MAX).map_err(err)?;
                    ("file", blake3::hash(&bytes).to_hex().to_string())
                }
                FileKind::Dir => {
                    stack.push(path.clone());
                    ("dir", String::new())
                }
                FileKind::Symlink => ("symlink", fs.read_link(&path).map_err(err)?),
                FileKind::Other => ("other", String::new()),
            };
            out.insert(
                path.trim_start_matches('/').to_string(),
                Entry {
                    kind,
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    size: if kind == "file" { m.size } else { 0 },
                    mtime: m.mtime,
                    content,
                },
            );
        }
    }
    Ok(out)
}

fn diff_filesystems(a: Arc<dyn ReadAt>, b: Arc<dyn ReadAt>) -> Result<Vec<FileDiff>, CommandError> {
    let open = |d: Arc<dyn ReadAt>| -> Result<Box<dyn Filesystem>, CommandError> {
        disk::find_root(d)
            .map(|(_, fs)| fs)
            .map_err(CommandError::from_diag)
    };
    let (fa, fb) = (open(a)?, open(b)?);
    let (la, lb) = (fs_listing(&*fa)?, fs_listing(&*fb)?);
    let read = |fs: &dyn Filesystem, p: &str| fs.read_limited(&format!("/{p}"), MAX_TEXT).ok();
    Ok(diff_listings(&la, &lb, &|p| (read(&*fa, p), read(&*fb, p))))
}

/// The entries that differ between two listings; `read` gives both sides' bytes of a path
/// for a text diff.
fn diff_listings(a: &Listing, b: &Listing, read: ReadBoth) -> Vec<FileDiff> {
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(FileDiff {
                path: k.clone(),
                change: "removed",
                detail: format!("only in the store ({})", x.kind),
                diff: None,
            }),
            (None, Some(y)) => out.push(FileDiff {
                path: k.clone(),
                change: "added",
                detail: format!("only in the rebuild ({})", y.kind),
                diff: None,
            }),
            (Some(x), Some(y)) if x != y => {
                if x.kind != y.kind {
                    out.push(FileDiff {
                        path: k.clone(),
                        change: "kind",
                        detail: format!("{} → {}", x.kind, y.kind),
                        diff: None,
                    });
                } else if x.content != y.content || x.size != y.size {
                    let meta = x.metadata_changes(y);
                    let mut detail = if x.kind == "file" {
                        format!(
                            "{} → {} bytes, blake3 {} → {}",
                            x.size,
                            y.size,
                            &x.content[..x.content.len().min(12)],
                            &y.content[..y.content.len().min(12)]
                        )
                    } else {
                        format!("{} → {}", x.content, y.content)
                    };
                    if !meta.is_empty() {
                        detail.push_str(&format!("; {}", meta.join(", ")));
                    }
                    let diff = (x.kind == "file" && x.size <= MAX_TEXT && y.size <= MAX_TEXT)
                        .then(|| read(k))
                        .and_then(|(l, r)| text_diff(&l?, &r?));
                    out.push(FileDiff {
                        path: k.clone(),
                        change: "content",
                        detail,
                        diff,
                    });
                } else {
                    out.push(FileDiff {
                        path: k.clone(),
                        change: "metadata",
                        detail: x.metadata_changes(y).join(", "),
                        diff: None,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// A unified diff of two texts (`None` when either is binary), at most [`MAX_DIFF_LINES`].
fn text_diff(a: &[u8], b: &[u8]) -> Option<String> {
    fn text(x: &[u8]) -> Option<&str> {
        if x.contains(&0) {
            return None;
        }
        std::str::from_utf8(x).ok()
    }
    let (a, b) = (text(a)?, text(b)?);
    let diff = similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(1)
        .header("store", "rebuild")
        .to_string();
    let mut lines: Vec<&str> = diff.lines().collect();
    let more = lines.len().saturating_sub(MAX_DIFF_LINES);
    lines.truncate(MAX_DIFF_LINES);
    let mut out = lines.join("\n");
    if more > 0 {
        out.push_str(&format!("\n… {more} more lines"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(content: &str, mtime: i64) -> Entry {
        Entry {
            kind: "file",
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: content.len() as u64,
            mtime,
            content: blake3::hash(content.as_bytes()).to_hex().to_string(),
        }
    }

    #[test]
    fn differences_name_the_file_and_what_changed() {
        let a: Listing = [
            ("etc/hostname".to_string(), entry("a\nb\n", 10)),
            ("etc/gone".to_string(), entry("x", 10)),
            ("etc/same".to_string(), entry("s", 10)),
            ("etc/touched".to_string(), entry("t", 10)),
        ]
        .into();
        let b: Listing = [
            ("etc/hostname".to_string(), entry("a\nc\n", 10)),
            ("etc/new".to_string(), entry("y", 10)),
            ("etc/same".to_string(), entry("s", 10)),
            ("etc/touched".to_string(), entry("t", 20)),
        ]
        .into();
        let read = |p: &str| match p {
            "etc/hostname" => (Some(b"a\nb\n".to_vec()), Some(b"a\nc\n".to_vec())),
            _ => (None, None),
        };
        let d = diff_listings(&a, &b, &read);
        let by: BTreeMap<&str, &FileDiff> = d.iter().map(|f| (f.path.as_str(), f)).collect();
        assert_eq!(by.len(), 4, "{d:#?}");
        assert_eq!(by["etc/gone"].change, "removed");
        assert_eq!(by["etc/new"].change, "added");
        assert_eq!(by["etc/touched"].change, "metadata");
        assert_eq!(by["etc/touched"].detail, "mtime 10 → 20");
        let diff = by["etc/hostname"].diff.as_deref().unwrap();
        assert!(diff.contains("-b") && diff.contains("+c"), "{diff}");
    }

    #[test]
    fn binary_files_get_sizes_and_hashes_not_a_diff() {
        assert_eq!(text_diff(b"\0\x01", b"\0\x02"), None);
        assert!(text_diff(b"one\n", b"two\n").is_some());
    }
}
