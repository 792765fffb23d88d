//! Third-party element sources: git repositories pinned by `ccb.lock`.
//!
//! Store layout:
//! - `sources/git/<url-hash>.git`: a bare mirror per URL, fetched by `ccb update` and when a
//!   build needs a locked commit it does not hold yet;
//! - `sources/trees/<tree>`: the locked `path` of a commit, extracted with `git archive`
//!   (content-addressed by git's tree id: two commits with the same elements share it),
//!   renamed into place when complete.
//!
//! Git itself does the transport (https, ssh, file, with the user's credential helpers): a
//! re-implementation would lose exactly the setups operators rely on. A source whose URL is a
//! plain local directory (not a git repository) is used in place, like a Cargo path dependency:
//! it is not locked.
//!
//! A source is fetched only when a build needs an element no earlier search-path directory
//! has (as Bazel fetches external repositories): building the Debian image never clones a
//! repository that only the CentOS images use. Sources already in the store always join the
//! path; that cannot change a resolution, because a source is consulted only for names the
//! directories before it lack.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::manifest::LockedSource;
use crate::manifest::Source;
use crate::process::ProcessError;
use crate::store::{Store, StoreError, Wait};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SourceError {
    /// git or tar failed; the command line and its stderr are redacted by [`Process`].
    ///
    /// [`Process`]: crate::process::Process
    #[error("source `{name}`: {what} failed")]
    #[diagnostic(code(ccb::source::git))]
    Git {
        name: String,
        what: String,
        #[source]
        source: ProcessError,
    },
    #[error("source `{name}`: commit {commit} has no `{path}`")]
    #[diagnostic(code(ccb::source::not_found))]
    NoPath {
        name: String,
        commit: String,
        path: String,
    },
    #[error("source `{name}`: `{path}` at commit {commit} is a {kind}, not a directory")]
    #[diagnostic(code(ccb::source::not_found))]
    NotADirectory {
        name: String,
        commit: String,
        path: String,
        kind: String,
    },
    #[error(
        "source `{name}`: nothing of it is in the store yet, and --offline forbids fetching it"
    )]
    #[diagnostic(code(ccb::source::offline))]
    OfflineEmpty { name: String },
    #[error("source `{name}`: {url} has no branch, tag or commit `{git_ref}`")]
    #[diagnostic(code(ccb::source::not_found))]
    NoRef {
        name: String,
        url: String,
        git_ref: String,
    },
    #[error("source `{name}`: {url} no longer has commit {commit} (pinned in ccb.lock)")]
    #[diagnostic(
        code(ccb::source::not_found),
        help("was its branch rewritten? `ccb update {name}` pins what it has now")
    )]
    CommitGone {
        name: String,
        url: String,
        commit: String,
    },
    #[error(
        "source `{name}`: commit {commit} is not in the store, and --offline forbids fetching it"
    )]
    #[diagnostic(
        code(ccb::source::offline),
        help("run once without --offline (or `ccb update {name}`) to fetch it into the store")
    )]
    Offline { name: String, commit: String },
    #[error(
        "source `{name}`: ccb.lock says `{path}` at {commit} is tree {expected}, the repository says {actual}"
    )]
    #[diagnostic(
        code(ccb::source::tree_mismatch),
        help(
            "the lock file was edited by hand or the commit was rewritten; run `ccb update {name}`"
        )
    )]
    TreeMismatch {
        name: String,
        path: String,
        commit: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    #[diagnostic(code(ccb::source::io))]
    Fs(#[from] crate::fsutil::FsError),
}

/// Whether a source is a git repository (locked) rather than a plain local directory (one
/// that exists and is not a repository).
pub fn is_git(root: &Path, source: &Source) -> bool {
    match local_dir(root, &source.url) {
        None => true,
        // A path that is gone is a repository the lock and the store still answer for.
        Some(dir) if !dir.is_dir() => true,
        Some(dir) => {
            dir.join(".git").exists()
                || (dir.join("HEAD").is_file() && dir.join("objects").is_dir())
        }
    }
}

/// The directory a URL names when it is a local path (absolute or relative to the root).
fn local_dir(root: &Path, url: &str) -> Option<PathBuf> {
    if url.contains("://") || scp_like(url) {
        return None;
    }
    let p = Path::new(url);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    })
}

/// `git@host:org/repo.git`: git's scp-like syntax (a colon before any slash).
fn scp_like(url: &str) -> bool {
    match (url.find(':'), url.find('/')) {
        (Some(c), Some(s)) => c < s,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The element directory of a plain local source, used in place.
pub fn path_source_dir(root: &Path, source: &Source) -> Option<PathBuf> {
    if is_git(root, source) {
        return None;
    }
    let dir = local_dir(root, &source.url)?.join(&source.path);
    dir.is_dir().then_some(dir)
}

/// The URL git is given: local paths relative to the project root made absolute.
fn git_url(root: &Path, url: &str) -> String {
    match local_dir(root, url) {
        Some(dir) => dir.display().to_string(),
        None => url.to_string(),
    }
}

/// A URL for messages (see [`crate::redact::url`]).
pub fn redact(url: &str) -> String {
    crate::redact::url(url)
}

/// Where the bare mirror of a URL lives.
pub fn mirror_dir(store: &Store, url: &str) -> PathBuf {
    let h = blake3::hash(url.as_bytes()).to_hex();
    store.path(&crate::store::Layout::git_mirror(&h[..32]))
}

/// Where the locked tree of a source lives.
pub fn tree_dir(store: &Store, tree: &str) -> PathBuf {
    store.path(&crate::store::Layout::source_tree(tree))
}

/// Whether the locked tree is in the store.
pub fn is_checked_out(store: &Store, locked: &LockedSource) -> bool {
    tree_dir(store, &locked.tree).is_dir()
}

fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

struct Git<'a> {
    name: &'a str,
    mirror: PathBuf,
}

impl Git<'_> {
    fn process(&self) -> crate::process::Process {
        let mut git = crate::process::Process::new("git");
        git.arg("--git-dir")
            .arg(&self.mirror)
            // Never prompt: a build is not interactive; credential helpers still answer.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C");
        git
    }

    fn run(&self, what: &str, args: &[&str]) -> Result<String, SourceError> {
        self.process()
            .args(args)
            .read()
            .map_err(|source| SourceError::Git {
                name: self.name.into(),
                what: what.into(),
                source,
            })
    }

    /// `rev` as a full id, or `None` when the mirror lacks it.
    fn rev_parse(&self, rev: &str) -> Option<String> {
        self.run("rev-parse", &["rev-parse", "--verify", "--quiet", rev])
            .ok()
            .filter(|s| is_commit_id(s))
    }

    fn has_commit(&self, commit: &str) -> bool {
        self.rev_parse(&format!("{commit}^{{commit}}")).is_some()
    }

    /// Every branch and tag of `url`, pruned: the mirror says what the remote says now.
    fn fetch_refs(&self, url: &str) -> Result<(), SourceError> {
        self.run(
            &format!("fetching {}", redact(url)),
            &[
                "fetch",
                "--quiet",
                "--prune",
                "--no-tags",
                url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
        .map(|_| ())
    }

    /// Asks `url` for a commit by id (servers allow reachable commits no branch or tag names);
    /// whether the mirror has it now.
    fn fetch_commit(&self, url: &str, commit: &str) -> bool {
        if !self.has_commit(commit) {
            let _ = self.run("fetch", &["fetch", "--quiet", url, commit]);
        }
        self.has_commit(commit)
    }

    /// The tree id of `path` at `commit`.
    fn tree_of(&self, commit: &str, path: &str) -> Result<String, SourceError> {
        let rel = path.trim_matches('/').trim_start_matches("./");
        let rev = if rel.is_empty() || rel == "." {
            format!("{commit}^{{tree}}")
        } else {
            format!("{commit}:{rel}")
        };
        let id = self.rev_parse(&rev).ok_or_else(|| SourceError::NoPath {
            name: self.name.into(),
            commit: commit.into(),
            path: path.into(),
        })?;
        let kind = self.run("cat-file", &["cat-file", "-t", &id])?;
        if kind != "tree" {
            return Err(SourceError::NotADirectory {
                name: self.name.into(),
                commit: commit.into(),
                path: path.into(),
                kind,
            });
        }
        Ok(id)
    }
}

/// Opens (creating when needed) the bare mirror of a source's URL, under its lock.
fn open_mirror<'a>(
    store: &Store,
    name: &'a str,
    url: &str,
) -> Result<(Git<'a>, crate::store::Lock), SourceError> {
    let mirror = mirror_dir(store, url);
    let lock = store
        .lock_key(
            &format!(
                "source-{}",
                mirror.file_name().unwrap_or_default().to_string_lossy()
            ),
            Wait::Block,
        )?
        .expect("a blocking lock is always taken");
    if !mirror.join("HEAD").is_file() {
        let parent = mirror.parent().expect("the mirror has a parent");
        crate::fsutil::create_dir_all(parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(".init-")
            .tempdir_in(parent)
            .map_err(|e| crate::fsutil::FsError::new("create a directory in", parent, e))?;
        let init = Git {
            name,
            mirror: tmp.path().to_path_buf(),
        };
        init.run("git init", &["init", "--quiet", "--bare"])?;
        let tmp = tmp.keep();
        std::fs::rename(&tmp, &mirror)
            .map_err(|e| crate::fsutil::FsError::new("rename into", &mirror, e))?;
    }
    Ok((Git { name, mirror }, lock))
}

/// Resolves a source's ref to a commit and the tree of its `path` (what `ccb update` pins).
/// Offline, the mirror's last fetch answers (as `cargo update --offline` uses its cache).
pub fn resolve(
    store: &Store,
    root: &Path,
    name: &str,
    source: &Source,
    offline: bool,
) -> Result<LockedSource, SourceError> {
    let url = git_url(root, &source.url);
    let (git, _lock) = open_mirror(store, name, &url)?;
    if !offline {
        git.fetch_refs(&url)?;
    } else if git.rev_parse("HEAD").is_none() && git.run("refs", &["for-each-ref"])?.is_empty() {
        return Err(SourceError::OfflineEmpty { name: name.into() });
    }
    let r = &source.git_ref;
    let commit = if is_commit_id(r) {
        let found = if offline {
            git.has_commit(r)
        } else {
            git.fetch_commit(&url, r)
        };
        found.then(|| r.to_ascii_lowercase())
    } else {
        [format!("refs/heads/{r}"), format!("refs/tags/{r}")]
            .iter()
            .find_map(|full| git.rev_parse(&format!("{full}^{{commit}}")))
    }
    .ok_or_else(|| SourceError::NoRef {
        name: name.into(),
        url: redact(&source.url),
        git_ref: r.clone(),
    })?;
    let tree = git.tree_of(&commit, &source.path)?;
    Ok(LockedSource {
        // Without credentials, as `crate::lock::source_url` pins it.
        url: redact(&source.url),
        git_ref: source.git_ref.clone(),
        path: source.path.clone(),
        commit,
        tree,
    })
}

/// The locked tree of a source in the store, fetched and extracted when it is not there yet,
/// from `url`, the manifests' URL (the lock's has no credentials). `on_fetch` is told before
/// anything is downloaded.
pub fn checkout(
    store: &Store,
    root: &Path,
    name: &str,
    url: &str,
    locked: &LockedSource,
    offline: bool,
    on_fetch: &mut dyn FnMut(&str),
) -> Result<PathBuf, SourceError> {
    let dest = tree_dir(store, &locked.tree);
    if dest.is_dir() {
        return Ok(dest);
    }
    let url = git_url(root, url);
    let (git, _lock) = open_mirror(store, name, &url)?;
    if dest.is_dir() {
        // Another ccb extracted it while this one waited for the lock.
        return Ok(dest);
    }
    if !git.has_commit(&locked.commit) {
        if offline {
            return Err(SourceError::Offline {
                name: name.into(),
                commit: locked.commit.clone(),
            });
        }
        on_fetch(&format!(
            "fetching source `{name}` ({} at {})",
            redact(&locked.url),
            crate::ui::short(&locked.commit, crate::ui::COMMIT_WIDTH)
        ));
        git.fetch_refs(&url)?;
        if !git.fetch_commit(&url, &locked.commit) {
            return Err(SourceError::CommitGone {
                name: name.into(),
                url: redact(&locked.url),
                commit: locked.commit.clone(),
            });
        }
    }
    let actual = git.tree_of(&locked.commit, &locked.path)?;
    if actual != locked.tree {
        return Err(SourceError::TreeMismatch {
            name: name.into(),
            path: locked.path.clone(),
            commit: locked.commit.clone(),
            expected: locked.tree.clone(),
            actual,
        });
    }
    extract(&git, &locked.tree, &dest)?;
    Ok(dest)
}

/// `git archive <tree> | tar -x` into a temporary directory renamed into place.
fn extract(git: &Git, tree: &str, dest: &Path) -> Result<(), SourceError> {
    let parent = dest.parent().expect("trees/ has a parent");
    crate::fsutil::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(parent)
        .map_err(|e| crate::fsutil::FsError::new("create a directory in", parent, e))?;
    let fail = |source: ProcessError| SourceError::Git {
        name: git.name.into(),
        what: format!("extracting tree {tree}"),
        source,
    };
    let mut git_archive = git.process();
    git_archive.args(["archive", "--format=tar", tree]);
    let mut archive = git_archive
        .start(Stdio::null(), Stdio::piped(), Stdio::piped())
        .map_err(fail)?;
    let archive_stderr = archive.drain_stderr();
    let stdout = archive.child.stdout.take().expect("piped");
    let mut tar = crate::process::Process::new("tar");
    tar.args(["-x", "--no-same-owner", "-C"]).arg(tmp.path());
    let mut untar = match tar.start(Stdio::from(stdout), Stdio::null(), Stdio::piped()) {
        Ok(u) => u,
        Err(e) => {
            archive.stop(std::time::Duration::ZERO);
            return Err(fail(e));
        }
    };
    let untar_stderr = untar.drain_stderr();
    let untarred = untar.finish(untar_stderr);
    archive.finish(archive_stderr).map_err(fail)?;
    untarred.map_err(fail)?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dest.is_dir() {
            return Err(crate::fsutil::FsError::new("rename into", dest, e).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_git_unless_they_name_a_plain_local_directory() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let bare = dir.path().join("bare.git");
        std::fs::create_dir_all(bare.join("objects")).unwrap();
        std::fs::write(bare.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        let s = |url: &str| Source {
            url: url.into(),
            git_ref: "main".into(),
            path: ".".into(),
        };
        assert!(is_git(dir.path(), &s("https://git.example/x.git")));
        assert!(is_git(dir.path(), &s("git@git.example:org/x.git")));
        assert!(is_git(dir.path(), &s("file:///srv/x.git")));
        assert!(is_git(dir.path(), &s("bare.git")));
        assert!(!is_git(dir.path(), &s("plain")));
        assert!(!is_git(dir.path(), &s(&plain.display().to_string())));
    }

    #[test]
    fn credentials_in_urls_never_reach_messages() {
        assert_eq!(
            redact("https://user:tok3n@git.example/x.git"),
            "https://***@git.example/x.git"
        );
        assert_eq!(
            redact("https://git.example/x.git"),
            "https://git.example/x.git"
        );
        // git's command line and its stderr both hold the URL: neither reaches the error.
        let dir = tempfile::tempdir().unwrap();
        let git = Git {
            name: "s",
            mirror: dir.path().join("mirror"),
        };
        let err = git
            .run(
                "ls-remote",
                &["ls-remote", "https://u:s3cret-pass@127.0.0.1:9/x.git"],
            )
            .unwrap_err();
        let mut shown = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(e) = cause {
            shown.push_str(&format!(": {e}"));
            cause = e.source();
        }
        assert!(shown.contains("ls-remote"), "{shown}");
        assert!(!shown.contains("s3cret-pass"), "{shown}");
    }
}
