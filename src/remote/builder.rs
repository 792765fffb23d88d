//! Remote builders: an action this host should not build (its arch is not native here, or the
//! build asked for `--remote-builders-only`) is built by another host over OpenSSH, and its
//! result comes back through the shared remote cache like any other host's.
//!
//! The system `ssh` client runs with BatchMode and the operator's own config and keys (ccb
//! never holds a password). For one action: the builder's `ccb --version` must equal ours
//! (once per builder and build); the project's inputs that the action's key covers go over
//! as a content-addressed [`Bundle`] unless the builder's store holds it already; then the
//! builder's ccb builds the action's image up to the action's stage with the cache set to
//! upload, its stderr streamed here line by line. The remote cache URL and `--env` values go
//! over ssh's stdin, never on a command line; when ssh's stdin closes (this ccb stopped or was
//! killed) the builder cancels its build.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::graph::{Action, Graph, Kind};
use crate::manifest::Arch;
use crate::manifest::origin::Origin;
use crate::process::Process;
use crate::store::{Layout, Store};

/// The hidden subcommand a builder runs (`ccb remote-builder …`).
pub const COMMAND: &str = "remote-builder";

/// What goes wrong sending an action to a builder. Each says which builder, never a secret.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuilderError {
    #[error("builder `{url}`: {problem}")]
    #[diagnostic(
        code(ccb::builder::url),
        help("builders are ssh://user@host[:port][/path/to/ccb], listed per arch in `builders`")
    )]
    Url { url: String, problem: String },
    #[error("builder {builder} cannot be reached: {detail}")]
    #[diagnostic(code(ccb::builder::unreachable))]
    Unreachable { builder: String, detail: String },
    #[error("builder {builder} refused the login: {detail}")]
    #[diagnostic(
        code(ccb::builder::auth),
        help("ccb runs `ssh -o BatchMode=yes`: the key must be in your ssh agent or config")
    )]
    Auth { builder: String, detail: String },
    #[error("builder {builder} runs {theirs}, this is {ours}: both must run the same ccb")]
    #[diagnostic(code(ccb::builder::version))]
    Version {
        builder: String,
        ours: String,
        theirs: String,
    },
    #[error("builder {builder}: {action} failed there (exit {code})\n{tail}")]
    #[diagnostic(code(ccb::builder::failed))]
    Failed {
        builder: String,
        action: String,
        code: i32,
        tail: String,
    },
    #[error(
        "builder {builder} built {action} but the remote cache does not hold it: does the \
         builder reach the same cache ({cache})?"
    )]
    #[diagnostic(code(ccb::builder::not_shared))]
    NotShared {
        builder: String,
        action: String,
        cache: String,
    },
    #[error(
        "builder {builder} built it, but it could not be taken from the remote cache: {source}"
    )]
    #[diagnostic(code(ccb::builder::download))]
    Download {
        builder: String,
        #[source]
        source: Box<super::RemoteError>,
    },
    /// A source the project keeps outside its directory: a bundle cannot carry it.
    #[error(
        "the project's inputs for a builder: source `{source_name}` is a directory outside the \
         project: a builder cannot find it (lock it as a git source, or move it into the project)"
    )]
    #[diagnostic(code(ccb::builder::outside))]
    SourceOutside { source_name: String },
    /// The project's files could not be read into a bundle.
    #[error("the project's inputs for a builder: {0}")]
    #[diagnostic(code(ccb::builder::walk))]
    Walk(#[source] walkdir::Error),
    /// What a builder received is not a whole bundle of this format.
    #[error("the project's inputs for a builder: {what}{}", super::suffix(.source))]
    #[diagnostic(code(ccb::builder::bundle))]
    Corrupt {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stream of the builder's own side (its stdin, its stderr, the bundle's compression).
    #[error("{what}: {source}")]
    #[diagnostic(code(ccb::builder::io))]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("running ssh for builder {builder}")]
    #[diagnostic(code(ccb::builder::ssh))]
    Ssh {
        builder: String,
        #[source]
        source: crate::process::ProcessError,
    },
    /// The ccb this builder runs for a request could not run.
    #[error("running this builder's ccb")]
    #[diagnostic(code(ccb::builder::local))]
    Local(#[source] crate::process::ProcessError),
    #[error("no builder for {0}")]
    #[diagnostic(code(ccb::builder::none))]
    NoBuilder(Arch),
    /// A state ccb rules out: a bug.
    #[error("internal error: {0}")]
    #[diagnostic(code(ccb::builder::internal))]
    Internal(&'static str),
    #[error("{action}: cancelled")]
    Cancelled { action: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// One build host: `ssh://user@host[:port][/path/to/ccb]` (the path, when given, is ccb on
/// the builder; else `ccb` on its PATH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub program: String,
}

impl BuilderUrl {
    pub fn parse(url: &str) -> Result<Self, BuilderError> {
        let bad = |problem: &str| BuilderError::Url {
            url: crate::redact::url(url),
            problem: problem.into(),
        };
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("not an ssh:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => {
                if u.contains(':') {
                    return Err(bad(
                        "holds a password: ccb logs in with ssh keys only (BatchMode)",
                    ));
                }
                (Some(u.to_string()).filter(|u| !u.is_empty()), h)
            }
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
            return Err(bad("no host name"));
        }
        if user
            .as_deref()
            .is_some_and(|u| u.starts_with('-') || u.contains(char::is_whitespace))
        {
            return Err(bad("a user name cannot start with '-' or hold spaces"));
        }
        let program = if path.is_empty() || path == "/" {
            "ccb".to_string()
        } else {
            path.to_string()
        };
        Ok(Self {
            user,
            host: host.to_string(),
            port,
            program,
        })
    }
}

impl std::fmt::Display for BuilderUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

use crate::manifest::BuilderHosts as Settings;

/// Where a bundle's files come from: the project as this build sees it.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub graph: &'a Graph,
    pub model: &'a crate::manifest::Model,
    pub resolver: &'a crate::element::Resolver<'a>,
    /// The local store: the locked sources' trees come from it.
    pub store: &'a Store,
}

/// What goes to the builder on ssh's stdin before the build: what must not be on a command
/// line.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The remote cache the builder uploads to.
    cache: String,
    /// `--env` settings, applied there as here (they enter the keys).
    env: Vec<(String, String)>,
    /// Stream every step's output (`-v` here).
    verbose: bool,
    /// Keys whose cache entries this host found damaged: the builder stores them again even
    /// when its own store holds them (see [`super::REPAIR_ENV`]).
    #[serde(default)]
    repair: Vec<String>,
}

/// The builders of one build.
pub struct Builders {
    by_arch: BTreeMap<Arch, Vec<BuilderUrl>>,
    /// `--remote-builders-only`: every action goes to a builder.
    only: bool,
    /// The cache the builders upload to (the one this build reads).
    cache: String,
    cache_shown: String,
    env: Vec<(String, String)>,
    verbose: bool,
    ssh: Vec<String>,
    /// Builders whose version was checked, and bundles each holds.
    checked: Mutex<BTreeSet<String>>,
    sent: Mutex<BTreeSet<(String, String)>>,
    next: AtomicUsize,
    /// Actions built remotely, with their builder.
    built: Mutex<BTreeMap<String, String>>,
    /// The remote cache's damaged keys, as this build's lookups find them.
    damaged: std::sync::Arc<Mutex<BTreeSet<String>>>,
}

impl BuilderError {
    /// What a builder received is damaged or not a bundle.
    fn corrupt(what: impl Into<String>) -> Self {
        BuilderError::Corrupt {
            what: what.into(),
            source: None,
        }
    }

    fn undecodable(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BuilderError::Corrupt {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl Builders {
    /// The arches builders serve, from the settings alone (nothing is opened or parsed): what
    /// the arch check needs before anything is pinned, downloaded or connected to. The same
    /// set [`Builders::arches`] has once [`Builders::open`] succeeds.
    pub fn configured_arches(
        settings: Option<&Settings>,
        choice: &super::Choice,
    ) -> BTreeSet<Arch> {
        if choice.no_builders {
            return BTreeSet::new();
        }
        settings
            .into_iter()
            .flatten()
            .filter(|(_, urls)| !urls.is_empty())
            .map(|(arch, _)| *arch)
            .collect()
    }

    /// The builders this build may use: none without a setting or with `--no-remote-builders`.
    /// They return results through the remote cache, so they need one.
    pub fn open(
        settings: Option<&Settings>,
        choice: &super::Choice,
        remote: Option<&super::Remote>,
        env: Vec<(String, String)>,
        verbose: bool,
    ) -> Result<Option<Self>, BuilderError> {
        if choice.no_builders {
            return Ok(None);
        }
        let mut by_arch = BTreeMap::new();
        for (arch, urls) in settings.into_iter().flatten() {
            let parsed = urls
                .iter()
                .map(|u| BuilderUrl::parse(u))
                .collect::<Result<Vec<_>, _>>()?;
            if !parsed.is_empty() {
                by_arch.insert(*arch, parsed);
            }
        }
        if by_arch.is_empty() {
            if choice.builders_only {
                return Err(BuilderError::Url {
                    url: "--remote-builders-only".into(),
                    problem: "the project lists no `builders`".into(),
                });
            }
            return Ok(None);
        }
        let Some(remote) = remote else {
            return Err(BuilderError::Url {
                url: by_arch
                    .values()
                    .flatten()
                    .next()
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                problem: "builders return their results through the remote cache: set the \
                          project's `cache` or pass --remote-cache URL"
                    .into(),
            });
        };
        let ssh = std::env::var("CCB_SSH_COMMAND")
            .ok()
            .map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec!["ssh".into()]);
        Ok(Some(Self {
            by_arch,
            only: choice.builders_only,
            cache: remote.url().to_string(),
            cache_shown: remote.describe(),
            env,
            verbose,
            ssh,
            checked: Mutex::new(BTreeSet::new()),
            sent: Mutex::new(BTreeSet::new()),
            next: AtomicUsize::new(0),
            built: Mutex::new(BTreeMap::new()),
            damaged: remote.damaged(),
        }))
    }

    /// The arches some builder serves.
    pub fn arches(&self) -> BTreeSet<Arch> {
        self.by_arch.keys().copied().collect()
    }

    /// Whether `action` goes to a builder: a root filesystem or disk of an arch this host does
    /// not build natively, or any with `--remote-builders-only`. Downloads stay here.
    pub fn wants(&self, action: &Action) -> bool {
        let Some(arch) = action.arch else {
            return false;
        };
        // A secret-holding action builds here: its secret never leaves this host.
        matches!(action.kind, Kind::Base | Kind::Layer | Kind::Disk)
            && !action.secret
            && self.by_arch.contains_key(&arch)
            && (self.only || crate::manifest::Arch::host() != Some(arch))
    }

    /// The builder that built `id` in this build.
    pub fn built_by(&self, id: &str) -> Option<String> {
        self.built.lock().ok()?.get(id).cloned()
    }

    /// Builds `action` on a builder of its arch; its stderr goes to `on_line` as it comes.
    /// Returns the builder. The result is then in the remote cache (for the caller to fetch).
    pub fn build(
        &self,
        inputs: &Inputs,
        action: &Action,
        cancel: &AtomicBool,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<String, BuilderError> {
        let (Some(arch), Some(image)) = (action.arch, action.image.as_deref()) else {
            return Err(BuilderError::Internal(
                "an action without an image or arch sent to a builder",
            ));
        };
        let builder = self.choose(arch, on_line)?;
        let name = builder.to_string();
        let bundle = Bundle::collect(inputs, action)?;
        let digest = bundle.digest();
        self.send_bundle(builder, &bundle, &digest)?;
        let until = match action.kind {
            Kind::Base => "base",
            Kind::Layer => "layer",
            _ => "disk",
        };
        let args = [
            COMMAND,
            "run",
            &digest,
            "--image",
            image,
            "--arch",
            arch.as_str(),
            "--until",
            until,
        ];
        let ssh_failed = |source| BuilderError::Ssh {
            builder: name.clone(),
            source,
        };
        let mut child = self
            .ssh(builder, &args)
            .start(Stdio::piped(), Stdio::null(), Stdio::piped())
            .map_err(ssh_failed)?;
        let (tail, cancelled) = self.follow(&mut child, cancel, on_line);
        let status = child.wait().map_err(ssh_failed)?;
        if cancelled {
            return Err(BuilderError::Cancelled {
                action: action.id.to_string(),
            });
        }
        if !status.success() {
            return Err(run_failure(&name, action, status.code(), &tail));
        }
        if let Ok(mut b) = self.built.lock() {
            b.insert(action.id.to_string(), name.clone());
        }
        Ok(name)
    }

    /// A builder of `arch`, round robin; a builder that cannot be reached is passed over for
    /// the next one (nothing was sent to it yet), any other refusal stops the action.
    fn choose(
        &self,
        arch: Arch,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<&BuilderUrl, BuilderError> {
        let list = self.by_arch.get(&arch).map(Vec::as_slice).unwrap_or(&[]);
        if list.is_empty() {
            return Err(BuilderError::NoBuilder(arch));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut unreachable = None;
        for i in 0..list.len() {
            let b = &list[(start + i) % list.len()];
            match self.check_version(b) {
                Ok(()) => return Ok(b),
                Err(e @ BuilderError::Unreachable { .. }) if i + 1 < list.len() => {
                    on_line(&format!("{e}; trying the next builder"));
                    unreachable = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.unwrap_or(BuilderError::NoBuilder(arch)))
    }

    /// Sends the build's request to a started `ccb builder run` and follows its stderr (to
    /// `on_line`, redacted) until it ends; closes the session when `cancel` is set. Its last
    /// lines, and whether it was cancelled.
    fn follow(
        &self,
        child: &mut crate::process::Running,
        cancel: &AtomicBool,
        on_line: &mut dyn FnMut(&str),
    ) -> (Vec<String>, bool) {
        let request = Request {
            cache: self.cache.clone(),
            env: self.env.clone(),
            verbose: self.verbose,
            repair: self
                .damaged
                .lock()
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
        };
        // Kept open for the whole build: its end tells the builder to stop.
        let mut stdin = child.child.stdin.take();
        if let Some(s) = stdin.as_mut() {
            let line = serde_json::to_string(&request).expect("a request serializes");
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.child.stderr.take();
        let reader = std::thread::spawn(move || {
            if let Some(e) = stderr {
                for line in std::io::BufReader::new(e).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let mut tail: Vec<String> = Vec::new();
        let mut cancelled = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let line = crate::redact::text(&line);
                    on_line(&line);
                    tail.push(line);
                    if tail.len() > 40 {
                        tail.remove(0);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::SeqCst) && !cancelled {
                        cancelled = true;
                        drop(stdin.take());
                        child.stop(Duration::from_secs(10));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = reader.join();
        drop(stdin);
        (tail, cancelled)
    }

    /// The error for a builder whose result is not in the cache after it succeeded.
    pub fn not_shared(&self, builder: &str, action: &Action) -> BuilderError {
        BuilderError::NotShared {
            builder: builder.into(),
            action: action.id.to_string(),
            cache: self.cache_shown.clone(),
        }
    }

    /// `ssh … builder -- <ccb> args`, each word quoted for the remote shell. Started with
    /// [`Process::start`]: a process group of its own, so a Ctrl-C here is ccb's to handle
    /// (it closes the session).
    fn ssh(&self, b: &BuilderUrl, args: &[&str]) -> Process {
        let mut c = Process::new(&self.ssh[0]);
        c.args(&self.ssh[1..])
            .args(["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15"]);
        if let Some(p) = b.port {
            c.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &b.user {
            c.arg("-l").arg(u);
        }
        let mut remote = shell_quote(&b.program);
        for a in args {
            remote.push(' ');
            remote.push_str(&shell_quote(a));
        }
        c.arg("--").arg(&b.host).arg(remote);
        c
    }

    /// Runs a short command on the builder and returns its stdout.
    fn call(
        &self,
        b: &BuilderUrl,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<String, BuilderError> {
        let name = b.to_string();
        let cannot_run = |source| BuilderError::Ssh {
            builder: name.clone(),
            source,
        };
        let mut child = self
            .ssh(b, args)
            .start(
                if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                },
                Stdio::piped(),
                Stdio::piped(),
            )
            .map_err(cannot_run)?;
        let writer = match (input, child.child.stdin.take()) {
            (Some(data), Some(mut stdin)) => {
                let data = data.to_vec();
                Some(std::thread::spawn(move || {
                    let _ = stdin.write_all(&data);
                }))
            }
            _ => None,
        };
        let out = child.output().map_err(cannot_run)?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        let stderr = crate::redact::text(&crate::process::tail(&out.stderr, 8));
        match out.status.code() {
            Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Some(255) => Err(ssh_error(&name, &stderr)),
            Some(127) => Err(BuilderError::Unreachable {
                builder: name,
                detail: format!("`{}` is not installed there ({stderr})", b.program),
            }),
            code => Err(BuilderError::Failed {
                builder: name,
                action: args.get(1).copied().unwrap_or("").to_string(),
                code: code.unwrap_or(-1),
                tail: stderr,
            }),
        }
    }

    fn check_version(&self, b: &BuilderUrl) -> Result<(), BuilderError> {
        let name = b.to_string();
        if self.checked.lock().is_ok_and(|c| c.contains(&name)) {
            return Ok(());
        }
        let theirs = self.call(b, &["--version"], None)?;
        let ours = version();
        if theirs != ours {
            return Err(BuilderError::Version {
                builder: name,
                ours,
                theirs: theirs
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
            });
        }
        if let Ok(mut c) = self.checked.lock() {
            c.insert(name);
        }
        Ok(())
    }

    fn send_bundle(
        &self,
        b: &BuilderUrl,
        bundle: &Bundle,
        digest: &str,
    ) -> Result<(), BuilderError> {
        let pair = (b.to_string(), digest.to_string());
        if self.sent.lock().is_ok_and(|s| s.contains(&pair)) {
            return Ok(());
        }
        if self.call(b, &[COMMAND, "has", digest], None)? != "yes" {
            let packed = bundle.pack()?;
            self.call(b, &[COMMAND, "receive", digest], Some(&packed))?;
        }
        if let Ok(mut s) = self.sent.lock() {
            s.insert(pair);
        }
        Ok(())
    }
}

/// What `ccb --version` prints: the builder's must be the same.
pub fn version() -> String {
    format!("ccb {}", env!("CARGO_PKG_VERSION"))
}

/// A `ccb builder run` that exited `code`: ssh's own failure (255), or the build's, with the
/// last lines of its stderr.
fn run_failure(name: &str, action: &Action, code: Option<i32>, tail: &[String]) -> BuilderError {
    let code = code.unwrap_or(-1);
    if code == 255 {
        return ssh_error(name, &tail.join("\n"));
    }
    let shown = tail[tail.len().saturating_sub(12)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    BuilderError::Failed {
        builder: name.into(),
        action: action.id.to_string(),
        code,
        tail: shown,
    }
}

/// ssh's own failure (exit 255): a refused login or an unreachable host.
fn ssh_error(builder: &str, stderr: &str) -> BuilderError {
    let detail = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("ssh failed")
        .trim()
        .to_string();
    if stderr.contains("Permission denied")
        || stderr.contains("Host key verification failed")
        || stderr.contains("Too many authentication failures")
    {
        BuilderError::Auth {
            builder: builder.into(),
            detail,
        }
    } else {
        BuilderError::Unreachable {
            builder: builder.into(),
            detail,
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The project's inputs an action's key covers: the manifests (and the project's stdlib and
/// lock) and the elements named in the key documents of the action, what it builds on, and
/// its image's disk (the builder resolves the image whole).
/// Elements of locked git sources are left out: the builder checks them out by the lock.
/// On the builder, `bundles/<digest>/` holds the files under `project/` and the origin in
/// `origin.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    format: String,
    /// The client's repository and commit: the builder has no checkout, and the disk's key
    /// and provenance need them (the builder's key equals the client's).
    origin: Origin,
    files: Vec<BundleEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BundleEntry {
    path: String,
    #[serde(flatten)]
    kind: EntryKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    Dir,
    File { exec: bool, data: String },
    Link { target: String },
}

const BUNDLE_FORMAT: &str = "ccb-bundle-v2";
/// Under `bundles/<digest>/` on a builder.
const PROJECT_DIR: &str = "project";
/// Locked sources' trees in a bundle (by git tree id), moved into the builder's store.
const TREES_DIR: &str = ".ccb-source-trees";
const ORIGIN_FILE: &str = "origin.json";
/// A bundle holds manifests and elements: far less than this.
const MAX_BUNDLE: u64 = 512 << 20;

impl Bundle {
    pub fn collect(inputs: &Inputs, action: &Action) -> Result<Self, BuilderError> {
        let Inputs {
            graph,
            model,
            resolver,
            store,
        } = *inputs;
        let (root, pins) = (model.root.as_path(), &model.pins);
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut stack = vec![action.id.clone()];
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(a) = graph.get(&id) else { continue };
            if let Some(crate::keydoc::Value::Map(m)) = a.doc.get("elements") {
                names.extend(m.keys().cloned());
            }
            stack.extend(a.deps.iter().cloned());
            // The builder resolves the whole image, so its every element goes (the disk's
            // key names them all), not only the ones this stage's key covers.
            if let (Some(image), Some(arch), true) = (&a.image, a.arch, a.kind != Kind::Disk) {
                stack.push(crate::graph::ActionId::disk(image, arch));
            }
        }
        let mut b = Bundle {
            format: BUNDLE_FORMAT.into(),
            origin: model.origin().clone(),
            files: Vec::new(),
        };
        for dir in ["manifests", "stdlib"] {
            if root.join(dir).is_dir() {
                b.add_tree(&root.join(dir), dir)?;
            }
        }
        if root.join("ccb.lock").is_file() {
            b.add_tree(&root.join("ccb.lock"), "ccb.lock")?;
        }
        // Each element where the builder's search path finds it as this host's does (the
        // SBOM names an element's source): a locked source's tree for its store (this host
        // fetched it: the builder never goes to the source's server), a plain local source at
        // its place in the project, any other element in the project's `elements/`.
        let mut sources_sent = BTreeSet::new();
        for el in resolver.path.elements() {
            if !names.contains(&el.name) {
                continue;
            }
            let Some(source) = el.source.as_ref() else {
                b.add_tree(&el.dir, &format!("elements/{}", el.name))?;
                continue;
            };
            if !sources_sent.insert(source.clone()) {
                continue;
            }
            if let Some(locked) = pins.sources.get(source) {
                let tree = crate::sources::tree_dir(store, &locked.tree);
                b.add_tree(&tree, &format!("{TREES_DIR}/{}", locked.tree))?;
                continue;
            }
            let dir = model
                .sources
                .get(source)
                .and_then(|s| crate::sources::path_source_dir(root, s));
            let rel = dir
                .as_deref()
                .and_then(|d| d.strip_prefix(root).ok())
                .filter(|r| !r.as_os_str().is_empty())
                .ok_or_else(|| BuilderError::SourceOutside {
                    source_name: source.to_string(),
                })?;
            if let Some(dir) = &dir {
                b.add_tree(dir, &rel.display().to_string())?;
            }
        }
        b.files.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(b)
    }

    fn add_tree(&mut self, src: &Path, at: &str) -> Result<(), BuilderError> {
        for entry in walkdir::WalkDir::new(src).sort_by_file_name() {
            let entry = entry.map_err(BuilderError::Walk)?;
            let rel = entry
                .path()
                .strip_prefix(src)
                .map_err(|_| BuilderError::Internal("a walk left the directory it walks"))?;
            let path = if rel.as_os_str().is_empty() {
                at.to_string()
            } else {
                format!("{at}/{}", rel.display())
            };
            let ft = entry.file_type();
            let kind = if ft.is_symlink() {
                let t = std::fs::read_link(entry.path())
                    .map_err(|e| crate::fsutil::FsError::new("read", entry.path(), e))?;
                EntryKind::Link {
                    target: t.display().to_string(),
                }
            } else if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                use base64::Engine;
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(entry.path())
                    .map_err(|e| crate::fsutil::FsError::new("read", entry.path(), e))?;
                let mode = entry
                    .metadata()
                    .map_err(BuilderError::Walk)?
                    .permissions()
                    .mode();
                EntryKind::File {
                    exec: mode & 0o111 != 0,
                    data: base64::engine::general_purpose::STANDARD.encode(data),
                }
            } else {
                continue;
            };
            self.files.push(BundleEntry { path, kind });
        }
        Ok(())
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a bundle serializes")
    }

    /// The bundle's name: SHA-256 of its canonical bytes.
    pub fn digest(&self) -> String {
        crate::remote::pack::sha256_hex(&self.to_bytes())
    }

    /// zstd-compressed, as it travels.
    pub fn pack(&self) -> Result<Vec<u8>, BuilderError> {
        zstd::encode_all(&self.to_bytes()[..], 3).map_err(|source| BuilderError::Io {
            what: "compressing the bundle",
            source,
        })
    }

    /// Reads a packed bundle and checks it is the one named `digest`.
    pub fn unpack(packed: impl Read, digest: &str) -> Result<Self, BuilderError> {
        let mut bytes = Vec::new();
        zstd::Decoder::new(packed)
            .map_err(|source| BuilderError::Io {
                what: "reading a bundle",
                source,
            })?
            .take(MAX_BUNDLE)
            .read_to_end(&mut bytes)
            .map_err(|e| BuilderError::undecodable("not a bundle", e))?;
        if crate::remote::pack::sha256_hex(&bytes) != digest {
            return Err(BuilderError::corrupt(format!(
                "what arrived is not bundle {digest} (truncated or damaged)"
            )));
        }
        let b: Bundle = serde_json::from_slice(&bytes)
            .map_err(|e| BuilderError::undecodable("not a bundle", e))?;
        if b.format != BUNDLE_FORMAT {
            return Err(BuilderError::corrupt(format!(
                "format {} (this ccb reads {BUNDLE_FORMAT})",
                b.format
            )));
        }
        // Every path stays inside the project: no `..`, and nothing under a link the
        // bundle itself makes (a link to /etc, then a file "through" it).
        let links: BTreeSet<&Path> = b
            .files
            .iter()
            .filter(|f| matches!(f.kind, EntryKind::Link { .. }))
            .map(|f| Path::new(&f.path))
            .collect();
        for f in &b.files {
            let p = Path::new(&f.path);
            if f.path.is_empty()
                || !p.components().all(|c| matches!(c, Component::Normal(_)))
                || p.ancestors().skip(1).any(|a| links.contains(a))
            {
                return Err(BuilderError::corrupt(format!(
                    "`{}` is not a path inside the project",
                    f.path
                )));
            }
        }
        Ok(b)
    }

    /// Writes the files under `dir/project` and the origin as `dir/origin.json` (`dir` is
    /// a fresh directory).
    fn write(&self, dir: &Path) -> Result<(), BuilderError> {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        crate::fsutil::create_dir_all(dir)?;
        let origin = dir.join(ORIGIN_FILE);
        let json = serde_json::to_vec(&self.origin).expect("an origin serializes");
        std::fs::write(&origin, json)
            .map_err(|e| crate::fsutil::FsError::new("write", &origin, e))?;
        let dir = dir.join(PROJECT_DIR);
        crate::fsutil::create_dir_all(&dir)?;
        for f in &self.files {
            let p = dir.join(&f.path);
            if let Some(parent) = p.parent() {
                crate::fsutil::create_dir_all(parent)?;
            }
            match &f.kind {
                EntryKind::Dir => crate::fsutil::create_dir_all(&p)?,
                EntryKind::Link { target } => std::os::unix::fs::symlink(target, &p)
                    .map_err(|e| crate::fsutil::FsError::new("create", &p, e))?,
                EntryKind::File { exec, data } => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| BuilderError::undecodable(f.path.clone(), e))?;
                    std::fs::write(&p, bytes)
                        .map_err(|e| crate::fsutil::FsError::new("write", &p, e))?;
                    let mode = if *exec { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| crate::fsutil::FsError::new("chmod", &p, e))?;
                }
            }
        }
        Ok(())
    }
}

/// The builder's side of `has`: whether its store holds the bundle.
pub fn has(store: &Store, digest: &str) -> bool {
    valid_digest(digest) && store.path(&Layout::bundle(digest)).is_dir()
}

fn valid_digest(d: &str) -> bool {
    d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The builder's side of `receive`: a packed bundle on `input` into the store, atomically (a
/// private working directory renamed into place).
pub fn receive(store: &Store, digest: &str, input: impl Read) -> Result<(), BuilderError> {
    if !valid_digest(digest) {
        return Err(BuilderError::corrupt(format!("`{digest}` is not a digest")));
    }
    let bundle = Bundle::unpack(input, digest)?;
    let dest = store.path(&Layout::bundle(digest));
    if dest.is_dir() {
        return Ok(());
    }
    store.remove_stale_work(digest)?;
    let work = store.work_dir(digest)?;
    let tree = work.join("bundle");
    let result = bundle.write(&tree).and_then(|()| {
        crate::fsutil::create_dir_all(dest.parent().unwrap_or(store.root()))?;
        match std::fs::rename(&tree, &dest) {
            // Another sender won the race with the same bytes.
            Err(_) if dest.is_dir() => Ok(()),
            r => r.map_err(|e| crate::fsutil::FsError::new("rename into place", &dest, e).into()),
        }
    });
    let _ = crate::store::remove_tree(&work);
    result?;
    adopt_trees(store, &dest.join(PROJECT_DIR).join(TREES_DIR))
}

/// Moves the locked sources' trees a bundle carried into the store, where the build looks
/// for them (a tree id names its content: one already there is the same).
fn adopt_trees(store: &Store, trees: &Path) -> Result<(), BuilderError> {
    let Ok(entries) = std::fs::read_dir(trees) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let tree = entry.file_name().to_string_lossy().into_owned();
        let dest = crate::sources::tree_dir(store, &tree);
        if dest.is_dir() || !tree.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        crate::fsutil::create_dir_all(dest.parent().unwrap_or(store.root()))?;
        match std::fs::rename(entry.path(), &dest) {
            Err(_) if dest.is_dir() => {}
            r => r.map_err(|e| crate::fsutil::FsError::new("rename into place", &dest, e))?,
        }
    }
    Ok(())
}

/// The builder's side of `run`: reads the `Request` line, then runs this ccb's `build` on
/// the bundle with the cache set to upload, its output on stderr (ssh carries it back). The
/// end of stdin stops the build. Returns the build's exit code.
pub fn run(
    store: &Store,
    digest: &str,
    image: &str,
    arch: &str,
    until: &str,
) -> Result<i32, BuilderError> {
    if !has(store, digest) {
        return Err(BuilderError::corrupt(format!(
            "bundle {digest} is not in this builder's store"
        )));
    }
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(|source| BuilderError::Io {
            what: "reading the request",
            source,
        })?;
    let req: Request = serde_json::from_str(line.trim())
        .map_err(|e| BuilderError::undecodable("reading the request", e))?;
    let exe = std::env::current_exe()
        .map_err(|e| crate::fsutil::FsError::new("find", "/proc/self/exe", e))?;
    let bundle: PathBuf = store.path(&Layout::bundle(digest));
    let root = bundle.join(PROJECT_DIR);
    let origin_path = bundle.join(ORIGIN_FILE);
    let origin = std::fs::read_to_string(&origin_path)
        .map_err(|e| crate::fsutil::FsError::new("read", &origin_path, e))?;
    let mut cmd = Process::new(exe);
    cmd.env(crate::manifest::origin::ENV, origin.trim());
    cmd.arg("--root")
        .arg(&root)
        .args(["--remote-cache-upload", "--no-remote-builders"]);
    if req.verbose {
        cmd.arg("-v");
    }
    // The images stay in the builder's store (the client takes them from the cache): its
    // materialized copies go to scratch, not into the bundle.
    let out = store.work_dir(digest)?;
    cmd.args(["build", image, "--arch", arch, "--until", until, "--out"])
        .arg(&out);
    for (k, v) in &req.env {
        cmd.arg("--env").arg(k).env(k, v);
    }
    cmd.env("CCB_REMOTE_CACHE", &req.cache);
    if !req.repair.is_empty() {
        cmd.env(super::REPAIR_ENV, req.repair.join(","));
    }
    // The report is part of the log: everything goes back on stderr.
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| BuilderError::Io {
            what: "duplicating stderr",
            source,
        })?;
    let mut child = cmd
        .start(Stdio::null(), Stdio::from(stdout), Stdio::inherit())
        .map_err(BuilderError::Local)?;
    // The client went away (its ssh closed): stop the build as Ctrl-C would, the one way
    // ccb stops a program (SIGTERM, then SIGKILL after a grace for its cleanup).
    let gone = std::sync::Arc::new(AtomicBool::new(false));
    let watcher = gone.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdin.read_to_end(&mut sink);
        watcher.store(true, Ordering::SeqCst);
    });
    let status = loop {
        if gone.load(Ordering::SeqCst) {
            child.stop(CLIENT_GONE_GRACE);
        }
        match child.exited() {
            Ok(false) => std::thread::sleep(Duration::from_millis(100)),
            Ok(true) => break child.wait(),
            Err(e) => break Err(e),
        }
    };
    let _ = crate::store::remove_tree(&out);
    Ok(status.map_err(BuilderError::Local)?.code().unwrap_or(1))
}

/// How long the builder's ccb has to cancel its actions (unmount, remove its work) once the
/// client is gone, before it is killed.
const CLIENT_GONE_GRACE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_urls_name_a_user_host_port_and_program() {
        let b = BuilderUrl::parse("ssh://ci@arm1.example:2222/opt/ccb/bin/ccb").unwrap();
        assert_eq!(b.user.as_deref(), Some("ci"));
        assert_eq!(b.host, "arm1.example");
        assert_eq!(b.port, Some(2222));
        assert_eq!(b.program, "/opt/ccb/bin/ccb");
        assert_eq!(b.to_string(), "ssh://ci@arm1.example:2222");
        let plain = BuilderUrl::parse("ssh://arm2").unwrap();
        assert_eq!((plain.user, plain.port), (None, None));
        assert_eq!(plain.program, "ccb");
    }

    #[test]
    fn a_builder_url_with_a_password_or_no_host_is_refused_without_echoing_it() {
        let e = BuilderUrl::parse("ssh://ci:hunter2@arm1").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("password"), "{e}");
        assert!(BuilderUrl::parse("ssh://").is_err());
        assert!(BuilderUrl::parse("http://arm1").is_err());
        assert!(BuilderUrl::parse("ssh://-oProxyCommand=x").is_err());
        assert!(BuilderUrl::parse("ssh://arm1:port").is_err());
    }

    #[test]
    fn remote_words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/opt/ccb"), "/opt/ccb");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn a_bundle_is_named_by_its_bytes_and_refuses_paths_outside_the_project() {
        let b = Bundle {
            format: BUNDLE_FORMAT.into(),
            origin: Origin::default(),
            files: vec![BundleEntry {
                path: "manifests/images.ncl".into(),
                kind: EntryKind::File {
                    exec: false,
                    data: "e30K".into(),
                },
            }],
        };
        let d = b.digest();
        let packed = b.pack().unwrap();
        assert!(Bundle::unpack(&packed[..], &d).is_ok());
        assert!(Bundle::unpack(&packed[..], &"0".repeat(64)).is_err());
        assert!(Bundle::unpack(&packed[..packed.len() / 2], &d).is_err());
        let evil = Bundle {
            format: BUNDLE_FORMAT.into(),
            origin: Origin::default(),
            files: vec![BundleEntry {
                path: "../etc/passwd".into(),
                kind: EntryKind::Dir,
            }],
        };
        let e = Bundle::unpack(&evil.pack().unwrap()[..], &evil.digest()).unwrap_err();
        assert!(e.to_string().contains("not a path inside"), "{e}");
        let through_a_link = Bundle {
            format: BUNDLE_FORMAT.into(),
            origin: Origin::default(),
            files: vec![
                BundleEntry {
                    path: "elements/x".into(),
                    kind: EntryKind::Link {
                        target: "/etc".into(),
                    },
                },
                BundleEntry {
                    path: "elements/x/passwd".into(),
                    kind: EntryKind::File {
                        exec: false,
                        data: String::new(),
                    },
                },
            ],
        };
        let packed = through_a_link.pack().unwrap();
        assert!(Bundle::unpack(&packed[..], &through_a_link.digest()).is_err());
    }
}
