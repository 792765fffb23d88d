//! `ccb.lock`: the exact inputs the manifests leave open.
//!
//! The manifests name a git source by a ref (`stable/train`) and may let an artifact follow its
//! URL (`sha256 = "latest"`); the lock pins each to a commit (+ the git tree of its `path`) or a
//! digest, so a key means the same thing on every machine and on every day. Like Cargo.lock, it
//! is moved only by `ccb update`: a build that meets a "latest" artifact with no pin yet adds
//! one (saying so; `--locked` refuses instead), never changes an existing pin, and fails —
//! naming the entry and the command that fixes it — when an entry no longer matches the
//! manifests (a URL, ref or path edited since the last update).
//!
//! The format is TOML with sorted tables, so a change to one source is a small diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::Model;

pub const FILE: &str = "ccb.lock";
/// The `sha256` of an artifact whose digest the lock holds (`ccb update` resolves it).
pub const LATEST: &str = "latest";
const VERSION: u32 = 1;
const HEADER: &str = "# ccb.lock: the commits and digests the manifests resolve to.\n\
# Written by `ccb update`, and by a build that meets a new \"latest\" artifact (it adds the pin,\n\
# never changes one). Commit it with the manifests.\n";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, LockedSource>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, LockedArtifact>,
}

use crate::manifest::{LockedSource, Pins};

/// An artifact that follows its URL, at the digest `ccb update` last saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedArtifact {
    /// The manifest's URL as [`artifact_url`] writes it: without credentials (a temp URL's
    /// signature is one), which the fetch takes from the manifests, never from here.
    pub url: String,
    pub sha256: String,
}

/// The form of an artifact's URL the lock holds and compares: redacted, so a lock file
/// committed to git never carries a signature or a password, and a renewed signature does
/// not make the pin stale.
pub fn artifact_url(url: &str) -> String {
    crate::redact::url(url)
}

/// The form of a git source's URL the lock holds and compares, for the same reasons as
/// [`artifact_url`]: `https://user:token@host/repo.git` is pinned as `https://***@host/…`,
/// and fetched with the manifests' URL (credentials included) when the tree is checked out.
/// A new token is not a new repository.
pub fn source_url(url: &str) -> String {
    crate::redact::url(url)
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    #[error("{} is missing; the manifests need it for {}", path.display(), needed.join(", "))]
    #[diagnostic(
        code(ccb::lock::missing),
        help("run `ccb update` to resolve them and write the lock file, then commit it")
    )]
    Missing { path: PathBuf, needed: Vec<String> },
    #[error("{} is stale: {entry}: {reason}", path.display())]
    #[diagnostic(
        code(ccb::lock::stale),
        help("run `ccb update {name}` to pin it again (a build never moves an existing pin)")
    )]
    Stale {
        path: PathBuf,
        entry: String,
        name: String,
        reason: String,
    },
    #[error("{}: {message}", path.display())]
    #[diagnostic(
        code(ccb::lock::invalid),
        help("the lock file is written by `ccb update`; run it again rather than editing by hand")
    )]
    Invalid { path: PathBuf, message: String },
    #[error("{} has no digest for {}, and --locked forbids adding one", path.display(), names.iter().map(|n| format!("artifact `{n}`")).collect::<Vec<_>>().join(", "))]
    #[diagnostic(
        code(ccb::lock::unpinned),
        help("run `ccb update {}` (or build without --locked) to pin it, then commit ccb.lock", names.join(" "))
    )]
    Unpinned { path: PathBuf, names: Vec<String> },
    /// Pins that could not be resolved, every one of them (the others were added to the lock
    /// all the same: a later run does not download them again).
    #[error(
        "cannot pin {}{}",
        names.iter().map(|n| format!("artifact `{n}`")).collect::<Vec<_>>().join(", "),
        if pinned.is_empty() { String::new() } else {
            format!("; {} kept the {} pinned meanwhile ({})", path.display(), pinned.len(), pinned.join(", "))
        }
    )]
    #[diagnostic(
        code(ccb::lock::pin),
        help(
            "each failure below names its URL and what overrides it; build again once they are reachable"
        )
    )]
    Pins {
        path: PathBuf,
        names: Vec<String>,
        pinned: Vec<String>,
        #[related]
        causes: Vec<crate::fetch::FetchError>,
    },
    #[error("artifact `{name}`: \"latest\" needs a `url` (a Swift object is pinned by its sha256)")]
    #[diagnostic(code(ccb::lock::no_url))]
    NoUrl { name: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error(transparent)]
    #[diagnostic(code(ccb::lock::io))]
    Fs(#[from] crate::fsutil::FsError),
}

pub fn path(root: &Path) -> PathBuf {
    root.join(FILE)
}

/// Reads the project's lock file; `None` when there is none.
pub fn load(root: &Path) -> Result<Option<Lock>, LockError> {
    let file = path(root);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::fsutil::FsError::new("read", &file, e).into()),
    };
    parse(&text, &file).map(Some)
}

/// Parses and validates the text of a lock file; `file` names it in errors. Every value comes
/// back checked for its syntax (see `validate`), so callers may use digests as file names.
pub fn parse(text: &str, file: &Path) -> Result<Lock, LockError> {
    let lock: Lock = toml::from_str(text).map_err(|e| LockError::Invalid {
        path: file.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    if lock.version != VERSION {
        return Err(LockError::Invalid {
            path: file.to_path_buf(),
            message: format!(
                "version {} is not one this ccb reads (it writes version {VERSION})",
                lock.version
            ),
        });
    }
    validate(&lock).map_err(|message| LockError::Invalid {
        path: file.to_path_buf(),
        message,
    })?;
    Ok(lock)
}

/// Every value the lock holds is checked for its syntax before anything uses it: a digest
/// names a file in the store and a tree id a directory, so `sha256 = "../../etc/hostname"`
/// must never reach a path, and a commit id is sliced for display.
fn validate(lock: &Lock) -> Result<(), String> {
    for (name, s) in &lock.sources {
        for (field, value) in [("commit", &s.commit), ("tree", &s.tree)] {
            if !is_git_object_id(value) {
                return Err(format!(
                    "sources.{name}.{field} = {value:?} is not a git object id \
                     (40 or 64 lowercase hexadecimal digits)"
                ));
            }
        }
    }
    for (name, a) in &lock.artifacts {
        if !is_sha256(&a.sha256) {
            return Err(format!(
                "artifacts.{name}.sha256 = {:?} is not a sha256 digest \
                 (64 lowercase hexadecimal digits)",
                a.sha256
            ));
        }
    }
    Ok(())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A sha256 digest as ccb writes and compares them: 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    is_lower_hex(s, 64)
}

/// A git object id: SHA-1 (40) or SHA-256 (64) repositories, lowercase as git prints them.
pub fn is_git_object_id(s: &str) -> bool {
    is_lower_hex(s, 40) || is_lower_hex(s, 64)
}

/// Writes the lock file atomically (a reader sees the old file or the new, never half).
pub fn save(root: &Path, lock: &Lock) -> Result<(), LockError> {
    let file = path(root);
    let body = toml::to_string(lock).map_err(|e| LockError::Invalid {
        path: file.clone(),
        message: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&file, format!("{HEADER}\n{body}").as_bytes())?;
    Ok(())
}

/// Whether an artifact's digest comes from the lock.
pub fn follows_latest(sha256: &str) -> bool {
    sha256 == LATEST
}

/// What the manifests leave open, so the lock must pin: (git sources, "latest" artifacts).
pub fn open_inputs(model: &Model) -> (Vec<&String>, Vec<&String>) {
    let git = model
        .sources
        .iter()
        .filter(|(_, s)| crate::sources::is_git(&model.root, s))
        .map(|(k, _)| k)
        .collect();
    let latest = model
        .artifacts
        .iter()
        .filter(|(_, a)| follows_latest(&a.sha256))
        .map(|(k, _)| k)
        .collect();
    (git, latest)
}

/// Checks the lock against the model and applies it: "latest" artifacts get their locked
/// digest, the model's `pins` the locked sources. Entries the manifests no longer declare are
/// stale too (as `cargo --locked` treats them): the lock says exactly what a build uses.
pub fn apply(model: &mut Model, lock: Option<&Lock>) -> Result<(), LockError> {
    let file = path(&model.root);
    let (git, latest) = open_inputs(model);
    let empty = Lock::default();
    let lock = match lock {
        Some(lock) => lock,
        // Only "latest" artifacts open: they are pinned by the first build that needs them.
        None if git.is_empty() => &empty,
        None => {
            let needed = git.iter().map(|k| format!("source `{k}`")).collect();
            return Err(LockError::Missing { path: file, needed });
        }
    };
    let stale = |entry: String, name: &str, reason: String| LockError::Stale {
        path: file.clone(),
        entry,
        name: name.to_string(),
        reason,
    };
    let mut pins = Pins::default();
    for name in &git {
        let source = &model.sources[*name];
        let Some(locked) = lock.sources.get(*name) else {
            return Err(stale(
                format!("source `{name}`"),
                name,
                "not pinned (new in the manifests)".into(),
            ));
        };
        if !locked.matches(source) {
            return Err(stale(
                format!("source `{name}`"),
                name,
                format!(
                    "the manifests ask for {} (ref {}, path {}), the lock pins {} (ref {}, path {})",
                    source_url(&source.url),
                    source.git_ref,
                    source.path,
                    source_url(&locked.url),
                    locked.git_ref,
                    locked.path
                ),
            ));
        }
        pins.sources.insert((*name).clone(), locked.clone());
    }
    for name in lock.sources.keys() {
        if !git.contains(&name) {
            return Err(stale(
                format!("source `{name}`"),
                name,
                "pinned, but the manifests no longer declare it as a git source".into(),
            ));
        }
    }
    for name in &latest {
        let url = artifact_url(model.artifacts[*name].url.as_deref().unwrap_or_default());
        let Some(locked) = lock.artifacts.get(*name) else {
            pins.unpinned.insert((*name).clone());
            continue;
        };
        if locked.url != url {
            return Err(stale(
                format!("artifact `{name}`"),
                name,
                format!("the manifests fetch {url}, the lock pins {}", locked.url),
            ));
        }
    }
    for name in lock.artifacts.keys() {
        if !latest.contains(&name) {
            return Err(stale(
                format!("artifact `{name}`"),
                name,
                "pinned, but the manifests no longer let it follow \"latest\"".into(),
            ));
        }
    }
    for name in latest.into_iter().cloned().collect::<Vec<_>>() {
        let Some(locked) = lock.artifacts.get(&name) else {
            continue;
        };
        let digest = locked.sha256.clone();
        if let Some(a) = model.artifacts.get_mut(&name) {
            a.sha256 = digest;
        }
    }
    model.pins = pins;
    Ok(())
}

/// The unpinned "latest" artifacts the builds of `targets` use ((image key, arch) pairs of
/// the model), their bases' included: each arch's file of one declared per arch.
pub fn unpinned_for<'a>(
    model: &Model,
    targets: impl IntoIterator<Item = (&'a str, crate::manifest::Arch)>,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (image, arch) in targets {
        // A child's build needs its ancestors' bases, whose artifacts it does not inherit.
        let mut cur = model.images.get(image);
        while let Some(img) = cur {
            for name in img.artifacts.values().chain(img.base_artifacts.values()) {
                let key = model.artifact_key(name, arch);
                if model.pins.unpinned.contains(&key) {
                    out.insert(key);
                }
            }
            cur = img.from.as_ref().and_then(|p| model.images.get(p));
        }
    }
    out
}

/// Pins `names` (unpinned "latest" artifacts) the way Cargo adds a new dependency to
/// Cargo.lock: each is downloaded, verified against its publisher's checksum file when the
/// manifests name one, stored, and its digest added to the lock, whose other entries are kept
/// as they are. `locked` refuses instead (CI). Returns (artifact, digest) for each new pin.
pub fn pin_new(
    model: &mut Model,
    names: &std::collections::BTreeSet<String>,
    fetcher: &crate::fetch::Fetcher,
    locked: bool,
) -> Result<Vec<(String, String)>, LockError> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    if locked {
        return Err(LockError::Unpinned {
            path: path(&model.root),
            names: names.iter().cloned().collect(),
        });
    }
    let mut lock = load(&model.root)?.unwrap_or(Lock {
        version: VERSION,
        ..Default::default()
    });
    // Every pin is tried, and those resolved are kept even when another fails: a base of
    // several GB is not downloaded again because a site's file was missing.
    let mut added = Vec::new();
    let (mut failed, mut causes) = (Vec::new(), Vec::new());
    for name in names {
        let Some(art) = model.artifacts.get(name) else {
            continue;
        };
        let url = art.url.clone().unwrap_or_default();
        match fetcher.fetch_latest(name, &url, art.sums.as_deref(), &mut |_, _| {}) {
            Ok(sha) => {
                lock.artifacts.insert(
                    name.clone(),
                    LockedArtifact {
                        url: artifact_url(&url),
                        sha256: sha.clone(),
                    },
                );
                added.push((name.clone(), sha));
            }
            Err(e) => {
                failed.push(name.clone());
                causes.push(e);
            }
        }
    }
    // One atomic write for all of them: the lock is never half-written.
    if !added.is_empty() {
        save(&model.root, &lock)?;
    }
    for (name, sha) in &added {
        if let Some(a) = model.artifacts.get_mut(name) {
            a.sha256 = sha.clone();
        }
        model.pins.unpinned.remove(name);
    }
    if !causes.is_empty() {
        return Err(LockError::Pins {
            path: path(&model.root),
            names: failed,
            pinned: added.into_iter().map(|(n, _)| n).collect(),
            causes,
        });
    }
    Ok(added)
}

/// One pin an update changed (or added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `source `NAME`` or `artifact `NAME``.
    pub entry: String,
    pub before: Option<String>,
    pub after: String,
}

/// A lock resolved again from the manifests, beside the one it replaces.
#[derive(Debug, Clone)]
pub struct Updated {
    pub old: Lock,
    pub new: Lock,
    pub changes: Vec<Change>,
    /// Entries the manifests no longer declare.
    pub removed: Vec<String>,
}

/// Resolves the manifests' open inputs against `old`, as `cargo update -p`: the `names`
/// entries are resolved again (all when empty), the others keep their pin unless the
/// manifests changed them (then they are stale and resolved too), and entries the manifests
/// no longer declare are dropped. `model` is the unlocked one; `status` hears each network
/// resolution before it starts. Writes nothing.
pub fn update(
    model: &Model,
    old: Lock,
    names: &[String],
    fetcher: &crate::fetch::Fetcher,
    status: &mut dyn FnMut(&str),
) -> Result<Updated, LockError> {
    let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
    let (git, latest) = open_inputs(model);
    let mut new = Lock {
        version: VERSION,
        ..Default::default()
    };
    let mut changes: Vec<Change> = Vec::new();
    for name in git {
        let source = &model.sources[name];
        let kept = old.sources.get(name).filter(|l| l.matches(source));
        let locked = match kept {
            // A pin written before URLs were locked without credentials loses them here.
            Some(l) if !wanted(name) => LockedSource {
                url: source_url(&l.url),
                ..l.clone()
            },
            _ => {
                status(&format!("resolving source `{name}` ({})", source.git_ref));
                crate::sources::resolve(fetcher.store, &model.root, name, source, fetcher.offline)?
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
    for name in latest {
        let art = &model.artifacts[name];
        let url = art
            .url
            .clone()
            .ok_or_else(|| LockError::NoUrl { name: name.clone() })?;
        let shown = artifact_url(&url);
        let kept = old.artifacts.get(name).filter(|l| l.url == shown);
        let sha256 = match kept {
            Some(l) if !wanted(name) => l.sha256.clone(),
            _ => {
                status(&format!("fetching artifact `{name}` ({shown})"));
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
    Ok(Updated {
        old,
        new,
        changes,
        removed,
    })
}

impl Lock {
    /// Every pin: commits of sources, digests of artifacts.
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.sources
            .iter()
            .map(|(k, l)| (k.clone(), l.commit.clone()))
            .chain(
                self.artifacts
                    .iter()
                    .map(|(k, l)| (k.clone(), l.sha256.clone())),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Source;

    fn source(url: &str, r: &str) -> Source {
        Source {
            url: url.into(),
            git_ref: r.into(),
            path: "elements".into(),
        }
    }

    fn locked(url: &str, r: &str) -> LockedSource {
        LockedSource {
            url: url.into(),
            git_ref: r.into(),
            path: "elements".into(),
            commit: "a".repeat(40),
            tree: "b".repeat(40),
        }
    }

    fn model(dir: &Path) -> Model {
        let mut m = Model::empty(dir.to_path_buf());
        m.sources
            .insert("tie".into(), source("https://git.example/tie.git", "main"));
        m
    }

    #[test]
    fn a_model_with_git_sources_needs_a_lock_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let err = apply(&mut model(dir.path()), None).unwrap_err();
        assert!(matches!(err, LockError::Missing { .. }));
        assert!(err.to_string().contains("source `tie`"), "{err}");
    }

    #[test]
    fn a_model_without_git_sources_or_latest_artifacts_needs_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::empty(dir.path().to_path_buf());
        apply(&mut m, None).unwrap();
    }

    #[test]
    fn an_edited_ref_makes_the_entry_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = Lock {
            version: VERSION,
            ..Default::default()
        };
        lock.sources.insert(
            "tie".into(),
            locked("https://git.example/tie.git", "stable/train"),
        );
        let err = apply(&mut model(dir.path()), Some(&lock)).unwrap_err();
        let LockError::Stale { name, reason, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(name, "tie");
        assert!(reason.contains("stable/train"), "{reason}");
    }

    /// An artifact that follows "latest" at a URL nothing answers.
    fn latest_tool() -> crate::manifest::Artifact {
        crate::manifest::Artifact {
            url: Some("http://127.0.0.1:1/tool".into()),
            swift: None,
            sha256: LATEST.into(),
            sums: None,
            description: None,
            secret: false,
            arch: None,
        }
    }

    #[test]
    fn a_matching_lock_pins_the_sources_and_latest_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(dir.path());
        m.artifacts.insert("tool".into(), latest_tool());
        let mut lock = Lock {
            version: VERSION,
            ..Default::default()
        };
        lock.sources
            .insert("tie".into(), locked("https://git.example/tie.git", "main"));
        lock.artifacts.insert(
            "tool".into(),
            LockedArtifact {
                url: "http://127.0.0.1:1/tool".into(),
                sha256: "c".repeat(64),
            },
        );
        apply(&mut m, Some(&lock)).unwrap();
        assert_eq!(m.pins.sources["tie"].commit, "a".repeat(40));
        assert_eq!(m.artifacts["tool"].sha256, "c".repeat(64));
    }

    /// A temp URL's signature is a credential: the lock (committed to git) holds the URL
    /// without it, and a renewed signature leaves the pin as it is.
    #[test]
    fn the_lock_holds_an_artifacts_url_without_its_signature() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::empty(dir.path().to_path_buf());
        let mut tool = latest_tool();
        tool.url = Some(
            "https://swift.example/v1/AUTH_p/c/tool?temp_url_sig=s3cr3t&temp_url_expires=1".into(),
        );
        m.artifacts.insert("tool".into(), tool);
        let url = artifact_url(m.artifacts["tool"].url.as_deref().unwrap());
        assert!(!url.contains("s3cr3t"), "{url}");
        let mut lock = Lock {
            version: VERSION,
            ..Default::default()
        };
        lock.artifacts.insert(
            "tool".into(),
            LockedArtifact {
                url,
                sha256: "c".repeat(64),
            },
        );
        save(dir.path(), &lock).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        m.artifacts.get_mut("tool").unwrap().url = Some(
            "https://swift.example/v1/AUTH_p/c/tool?temp_url_sig=renewed&temp_url_expires=1".into(),
        );
        apply(&mut m, load(dir.path()).unwrap().as_ref()).unwrap();
        assert_eq!(m.artifacts["tool"].sha256, "c".repeat(64));
    }

    #[test]
    fn a_latest_artifact_with_no_pin_yet_is_left_open_and_locked_refuses_to_pin_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::empty(dir.path().to_path_buf());
        m.artifacts.insert("tool".into(), latest_tool());
        // No lock file at all: nothing to refuse yet, the artifact simply has no pin.
        apply(&mut m, None).unwrap();
        assert!(m.pins.unpinned.contains("tool"));
        assert_eq!(m.artifacts["tool"].sha256, LATEST);

        let store = crate::store::Store::at(dir.path().join("store"));
        let fetcher = crate::fetch::Fetcher {
            store: &store,
            distdirs: vec![],
            offline: true,
            swift: None,
            mirrors: vec![],
        };
        let names = m.pins.unpinned.clone();
        let err = pin_new(&mut m, &names, &fetcher, true).unwrap_err();
        assert!(matches!(&err, LockError::Unpinned { names, .. } if names == &["tool"]));
        assert!(!path(dir.path()).exists(), "--locked writes no lock");
        // Offline, the pin cannot be resolved: an error, and still no lock file.
        assert!(pin_new(&mut m, &names, &fetcher, false).is_err());
        assert!(!path(dir.path()).exists());
    }

    /// A base of several GB resolved before the site's missing driver is not lost with it:
    /// every pin is tried, the resolved ones are written, and the error names every failure.
    #[test]
    fn a_failing_pin_keeps_the_others_and_every_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::empty(dir.path().to_path_buf());
        let here = dir.path().join("base.img");
        std::fs::write(&here, "a base\n").unwrap();
        let at = |url: String| crate::manifest::Artifact {
            url: Some(url),
            ..latest_tool()
        };
        m.artifacts.insert(
            "a-driver".into(),
            at("file:///nonexistent/driver.run".into()),
        );
        m.artifacts
            .insert("b-base".into(), at(format!("file://{}", here.display())));
        m.artifacts
            .insert("c-key".into(), at("file:///nonexistent/key.gpg".into()));
        apply(&mut m, None).unwrap();
        let store = crate::store::Store::at(dir.path().join("store"));
        let fetcher = crate::fetch::Fetcher {
            store: &store,
            distdirs: vec![],
            offline: false,
            swift: None,
            mirrors: vec![],
        };
        let names = m.pins.unpinned.clone();
        let err = pin_new(&mut m, &names, &fetcher, false).unwrap_err();
        let LockError::Pins {
            names: failed,
            pinned,
            causes,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(failed, &["a-driver", "c-key"]);
        assert_eq!(pinned, &["b-base"]);
        let why: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        assert!(why[0].contains("a-driver"), "{why:?}");
        assert!(why[1].contains("c-key"), "{why:?}");
        let lock = load(dir.path())
            .unwrap()
            .expect("the resolved pin is written");
        let sha = crate::fetch::hash::sha256_file(&here).unwrap();
        assert_eq!(lock.artifacts["b-base"].sha256, sha);
        assert_eq!(lock.artifacts.len(), 1);
        assert_eq!(m.artifacts["b-base"].sha256, sha);
        assert!(m.pins.unpinned.contains("a-driver") && !m.pins.unpinned.contains("b-base"));
    }

    /// The committed lock and the README say what the code does: a build adds a missing pin,
    /// never moves one (they once said a build never writes the lock).
    #[test]
    fn the_committed_lock_and_the_readme_describe_pin_on_first_use() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(repo.join(FILE)).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
        assert!(!readme.contains("written only by `ccb update`"));
        assert!(!readme.contains("a build never changes it"));
    }

    #[test]
    fn the_lock_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut lock = Lock {
            version: VERSION,
            ..Default::default()
        };
        lock.sources
            .insert("tie".into(), locked("https://git.example/tie.git", "main"));
        save(dir.path(), &lock).unwrap();
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.starts_with("# ccb.lock"), "{text}");
        assert_eq!(load(dir.path()).unwrap(), Some(lock));
    }

    #[test]
    fn a_lock_from_another_version_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "version = 7\n").unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ccb.lock"), "{err}");
        assert!(err.to_string().contains("version 7"), "{err}");
    }
    /// What a hand-edited or hostile lock may hold: paths where digests belong, and bytes
    /// that would split a string in the middle of a character.
    #[test]
    fn a_lock_value_that_is_not_a_digest_of_its_kind_is_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let tree = "b".repeat(40);
        let commit = "a".repeat(40);
        let sha = "c".repeat(64);
        let cases = [
            (
                format!(
                    "[sources.tie]\nurl = \"u\"\nref = \"main\"\npath = \"e\"\ncommit = \"{commit}\"\ntree = \"../../../../var/tmp/evil\"\n"
                ),
                "sources.tie.tree",
            ),
            (
                format!(
                    "[sources.tie]\nurl = \"u\"\nref = \"main\"\npath = \"e\"\ncommit = \"ééééééééééééééééééééé\"\ntree = \"{tree}\"\n"
                ),
                "sources.tie.commit",
            ),
            (
                "[artifacts.tool]\nurl = \"u\"\nsha256 = \"../../../../etc/hostname\"\n"
                    .to_string(),
                "artifacts.tool.sha256",
            ),
            (
                format!(
                    "[artifacts.tool]\nurl = \"u\"\nsha256 = \"{}\"\n",
                    sha.to_uppercase()
                ),
                "artifacts.tool.sha256",
            ),
        ];
        for (body, field) in cases {
            std::fs::write(path(dir.path()), format!("version = 1\n{body}")).unwrap();
            let err = load(dir.path()).unwrap_err();
            assert!(matches!(err, LockError::Invalid { .. }), "{field}: {err}");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        std::fs::write(
            path(dir.path()),
            format!("version = 1\n[artifacts.tool]\nurl = \"u\"\nsha256 = \"{sha}\"\n"),
        )
        .unwrap();
        assert!(load(dir.path()).unwrap().is_some());
    }
}
