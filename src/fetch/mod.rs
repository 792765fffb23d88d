//! Artifacts: files a build needs that are not packages, pinned by SHA-256.
//!
//! A `fetch` action puts one artifact into the store at `artifacts/<sha256>` (read-only), with
//! `artifacts/<sha256>.json` recording its blake3, where the layer actions that use it find it.
//! The file is looked for, in order:
//! 1. in the store (fetched before: nothing to do);
//! 2. in the distdirs (`CCB_DISTDIR`, colon-separated), by the file name of its URL or Swift
//!    object, or by the artifact's key, as Bazel's `--distdir` does: how an operator supplies an
//!    input on a machine that cannot reach its upstream (read even with `--offline`);
//! 3. at its source: an `http`, `https` or `file` URL, or a Swift object of a site (through the
//!    site's credentials).
//!
//! Whatever the origin, the bytes are hashed (SHA-256 for the pin, blake3 for the store) as they
//! are written, and the file is renamed into place only when the SHA-256 matches the manifest's:
//! a mismatch stores nothing and names the artifact, the expected and the actual digest.
//!
//! Downloads survive interruptions: the bytes so far stay in `artifacts/.partial/<sha256>`, and
//! the next attempt (in this run, or the next run) asks for the rest with an HTTP range. A
//! server that ignores ranges gets a clean restart, and a resumed file whose digest does not
//! match is fetched once more from the first byte before the mismatch is reported.
//!
//! Before a build uses an artifact, its blake3 is checked against the record, through a stat
//! cache ([`hash::StatCache`]): a multi-GB runfile is read once, not on every build.

pub mod hash;

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{Artifact, SwiftObject};
use crate::readat::ReadAt;
use crate::store::{Layout, Store, StoreError};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FetchError {
    #[error(
        "artifact `{name}`: SHA-256 mismatch for {origin}\n  expected {expected}\n  actual   {actual}"
    )]
    #[diagnostic(code(ccb::fetch::mismatch))]
    Mismatch {
        name: String,
        origin: String,
        expected: String,
        actual: String,
        /// What to do about it, which depends on where the pin came from (see
        /// `FetchError::for_pinned_url`).
        #[help]
        advice: Box<str>,
    },
    #[error("artifact `{name}`: {sums} has no SHA-256 for {file}")]
    #[diagnostic(
        code(ccb::fetch::sums),
        help(
            "the artifact's `sums` must be the publisher's checksum file of the directory its `url` is in"
        )
    )]
    NotInSums {
        name: String,
        sums: String,
        file: String,
    },
    #[error("artifact `{name}`: cannot download {url}")]
    #[diagnostic(
        code(ccb::fetch::download),
        help(
            "{overrides}, or, on a machine that cannot reach it, put the file in a directory \
             named by CCB_DISTDIR; the bytes received so far are kept and the next build resumes \
             from them"
        )
    )]
    Download {
        name: String,
        url: String,
        #[source]
        cause: TransferError,
        /// What to change to fetch it from elsewhere (see `Fetcher::overrides`); boxed to
        /// keep the error small.
        overrides: Box<str>,
    },
    #[error("artifact `{name}` is not in the store, and --offline forbids fetching it")]
    #[diagnostic(
        code(ccb::fetch::offline),
        help(
            "fetch it once without --offline, or put the file in a directory named by CCB_DISTDIR"
        )
    )]
    Offline { name: String },
    #[error(
        "artifact `{name}`: the store's copy {} is damaged (blake3 {actual}, recorded {expected}); it was removed",
        path.display()
    )]
    #[diagnostic(code(ccb::fetch::corrupt), help("the next build fetches it again"))]
    Corrupt {
        name: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("artifact `{name}`: `{url}` is not an http, https or file URL")]
    #[diagnostic(code(ccb::fetch::unsupported))]
    Scheme { name: String, url: String },
    #[error("artifact `{name}` has neither `url` nor `swift`")]
    #[diagnostic(code(ccb::fetch::unsupported))]
    NoOrigin { name: String },
    #[error("artifact `{name}` is a Swift object, and this command opens no site")]
    #[diagnostic(code(ccb::fetch::unsupported))]
    NoSwift { name: String },
    #[error("artifact `{name}`: cannot read {}: {source}", path.display())]
    #[diagnostic(code(ccb::fetch::io))]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
}

impl FetchError {
    /// A mismatch of a file fetched from `url` against its pin: a URL that follows the
    /// publisher's newest file (Ubuntu's `current/`, CentOS's `-latest`) serves another file
    /// once the publisher republishes, so the advice is the three ways on, not "fix the sha256".
    fn for_pinned_url(self, url: &str) -> Self {
        match self {
            FetchError::Mismatch {
                name,
                origin,
                expected,
                actual,
                ..
            } => {
                let moving = url.contains("/current/") || url.contains("-latest");
                let advice = if moving {
                    format!(
                        "the publisher republished this URL (it follows its newest file) since \
                         the pin was made; nothing was stored. `ccb update {name}` pins the new \
                         file (the images built on it change); to keep the pinned one, put a \
                         copy of it in a directory named by CCB_DISTDIR, or point the \
                         artifact's `url` at the publisher's dated copy (e.g. `<release>/\
                         <YYYYMMDD>/` instead of `current/`) and `ccb update {name}`"
                    )
                } else {
                    format!(
                        "the file changed upstream, or the pin is wrong; nothing was stored. \
                         `ccb update {name}` pins what the URL serves now (an artifact whose \
                         sha256 is \"latest\"), else correct the manifest's sha256; a copy of \
                         the pinned file in a directory named by CCB_DISTDIR is used instead"
                    )
                };
                FetchError::Mismatch {
                    name,
                    origin,
                    expected,
                    actual,
                    advice: advice.into_boxed_str(),
                }
            }
            other => other,
        }
    }
}

/// Where an artifact with this digest lives in the store.
pub fn store_path(store: &Store, sha256: &str) -> PathBuf {
    store.path(&Layout::artifact(sha256))
}

fn meta_name(sha256: &str) -> String {
    Layout::artifact_record(sha256)
}

fn partial_path(store: &Store, sha256: &str) -> PathBuf {
    store.path(&Layout::artifact_partial(sha256))
}

/// What the store records about an artifact next to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub sha256: String,
    pub blake3: String,
    pub bytes: u64,
}

/// Whether the artifact is in the store already.
pub fn is_fetched(store: &Store, sha256: &str) -> bool {
    // Only a digest names a stored file (an unpinned artifact's key holds "latest <url>").
    sha256.len() == 64
        && sha256.bytes().all(|b| b.is_ascii_hexdigit())
        && store_path(store, sha256).is_file()
}

/// Whether this host holds artifact `key` or can reach its source: in the store at its pin,
/// in a distdir (as [`Fetcher::fetch`] looks there), or at a `file://` URL that exists. An
/// `http` URL or a Swift object counts as reachable: only a fetch finds out.
pub fn within_reach(store: &Store, distdirs: &[PathBuf], key: &str, artifact: &Artifact) -> bool {
    if is_fetched(store, &artifact.sha256.to_ascii_lowercase()) {
        return true;
    }
    let file_name = match (&artifact.url, &artifact.swift) {
        (Some(u), _) => url_file_name(u),
        (None, Some(o)) => o.object.rsplit('/').next().filter(|n| !n.is_empty()),
        _ => None,
    };
    if distdirs.iter().any(|dir| {
        file_name
            .into_iter()
            .chain([key])
            .any(|f| dir.join(f).is_file())
    }) {
        return true;
    }
    match (&artifact.url, &artifact.swift) {
        (Some(url), _) => url
            .strip_prefix("file://")
            .is_none_or(|path| Path::new(path).is_file()),
        (None, swift) => swift.is_some(),
    }
}

/// The directories of `CCB_DISTDIR`.
pub fn distdirs_from_env() -> Vec<PathBuf> {
    std::env::var_os("CCB_DISTDIR")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Where a fetched artifact came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Store,
    Distdir(PathBuf),
    Url(String),
    Swift(String),
}

/// Opens a Swift object of a site for reading (the CLI knows clouds.yaml and Keystone).
pub type SwiftOpener<'a> = dyn Fn(&SwiftObject) -> Result<Arc<dyn ReadAt>, Box<dyn std::error::Error + Send + Sync>>
    + Send
    + Sync
    + 'a;

/// Fetches artifacts into a store.
pub struct Fetcher<'a> {
    pub store: &'a Store,
    pub distdirs: Vec<PathBuf>,
    pub offline: bool,
    pub swift: Option<&'a SwiftOpener<'a>>,
    /// The upstream servers of `manifests/artifacts.ncl` (see [`mirror_variables`]), so that a
    /// failed download names the variable that points it elsewhere.
    pub mirrors: Vec<(String, String)>,
}

/// The manifests' upstream servers, each a `let NAME = "URL" in` of `manifests/artifacts.ncl`
/// (`ubuntu_cloud_images`, `nvidia`, …): (NAME, URL). The evaluated artifacts no longer say
/// which variable their URL came from; the source does.
pub fn mirror_variables(root: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(root.join("manifests/artifacts.ncl")) else {
        return vec![];
    };
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.trim().strip_prefix("let ")?.split_once('=')?;
            let value = value.trim().strip_suffix(" in")?.trim();
            let url = value.strip_prefix('"')?.strip_suffix('"')?;
            (url.contains("://") && !url.contains("%{"))
                .then(|| (name.trim().to_string(), url.to_string()))
        })
        .collect()
}

/// How many times one fetch tries a source before giving up (the partial file stays).
const ATTEMPTS: u32 = 5;
const CHUNK: usize = 4 << 20;

/// Why a transfer from an artifact's origin failed: typed, so that a refused connection, a
/// short read and a server's refusal stay apart from the store's own failures (a full disk is
/// a [`FetchError::Io`] on the store's path, never a download error).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The HTTP exchange failed: no connection, TLS, a status the fetch cannot use. The error
    /// is kept for callers to match on but is not offered as `source()`: its own text can
    /// carry the URL, credentials included, so it is only ever shown redacted.
    #[error("{}", crate::redact::text(&.0.to_string()))]
    Http(Box<ureq::Error>),
    /// The connection broke while the body was read.
    #[error("the connection broke")]
    Read(#[source] std::io::Error),
    /// A `file://` source is not there (or not readable): a site's file not installed yet.
    #[error("the file cannot be opened")]
    Open(#[source] std::io::Error),
    /// The server closed the body before the length it announced.
    #[error("the transfer ended at byte {received} of {total}")]
    Truncated { received: u64, total: u64 },
    /// A site's object store refused or failed the read (its error is redacted where it is
    /// made: Keystone and Swift bodies never reach a message unredacted).
    #[error("the object could not be read")]
    Object(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Every attempt failed; the last attempt's failure.
    #[error("{attempts} attempts failed")]
    Attempts {
        attempts: u32,
        #[source]
        last: Box<TransferError>,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A URL for messages (see [`crate::redact::url`]).
pub fn redact_url(url: &str) -> String {
    crate::redact::url(url)
}

fn url_file_name(url: &str) -> Option<&str> {
    let no_query = url.split(['?', '#']).next().unwrap_or(url);
    no_query.rsplit('/').next().filter(|n| !n.is_empty())
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// A file being written into `artifacts/`, hashed as it grows.
struct Ingest<'s> {
    store: &'s Store,
    path: PathBuf,
    file: std::fs::File,
    /// A temporary file (removed when dropped unfinished), not a kept partial download.
    temp: Option<tempfile::TempPath>,
    sha256: Sha256,
    blake3: blake3::Hasher,
    len: u64,
}

impl<'s> Ingest<'s> {
    fn io(name: &str, path: &Path) -> impl Fn(std::io::Error) -> FetchError + use<> {
        let (name, path) = (name.to_string(), path.to_path_buf());
        move |source| FetchError::Io {
            name: name.clone(),
            path: path.clone(),
            source,
        }
    }

    /// A fresh temporary file in `artifacts/`.
    fn temp(store: &'s Store, name: &str) -> Result<Self, FetchError> {
        let dir = store.path(Layout::ARTIFACTS);
        crate::fsutil::create_dir_all(&dir).map_err(StoreError::from)?;
        let tmp = tempfile::Builder::new()
            .prefix(Layout::FETCH_TEMP_PREFIX)
            .tempfile_in(&dir)
            .map_err(Self::io(name, &dir))?;
        let (file, temp) = tmp.into_parts();
        Ok(Self {
            store,
            path: temp.to_path_buf(),
            file,
            temp: Some(temp),
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// The kept partial download of `sha256`, with the bytes it already holds hashed.
    fn partial(store: &'s Store, name: &str, sha256: &str) -> Result<Self, FetchError> {
        let path = partial_path(store, sha256);
        let dir = path.parent().expect("partial/ has a parent");
        crate::fsutil::create_dir_all(dir).map_err(StoreError::from)?;
        let io = Self::io(name, &path);
        let mut file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(&io)?;
        let mut me = Self {
            store,
            path: path.clone(),
            file: file.try_clone().map_err(&io)?,
            temp: None,
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
            len: 0,
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(&io)?;
            if n == 0 {
                break;
            }
            me.sha256.update(&buf[..n]);
            me.blake3.update(&buf[..n]);
            me.len += n as u64;
        }
        Ok(me)
    }

    /// Drops what was written: the next bytes are the file's first.
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(std::io::SeekFrom::Start(0))?;
        self.sha256 = Sha256::new();
        self.blake3 = blake3::Hasher::new();
        self.len = 0;
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk)?;
        self.sha256.update(chunk);
        self.blake3.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Copies `reader` to the end; an error leaves what was written in place. Reading and
    /// writing fail apart: a dropped connection is retried, a full disk is not.
    fn copy_from(
        &mut self,
        mut reader: impl Read,
        total: Option<u64>,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<(), CopyError> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if crate::interrupt::requested() {
                // Not a read error (those are retried): the bytes so far stay for a resume.
                return Err(CopyError::Write(crate::interrupt::io_error()));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.write(&buf[..n]).map_err(CopyError::Write)?;
            crate::fault::point("fetch.copy");
            progress(self.len, total);
        }
    }

    /// A copy error as a fetch error: a read error is the source's (`from`), a write error
    /// the store's.
    fn copy_error(&self, name: &str, from: &Path, e: CopyError) -> FetchError {
        match e {
            CopyError::Read(e) => Self::io(name, from)(e),
            CopyError::Write(e) => Self::io(name, &self.path)(e),
        }
    }

    fn discard(self) {
        if self.temp.is_none() {
            let _ = std::fs::remove_file(&self.path);
            // `.partial/` goes too when it was the only one: nothing of it stays stored.
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// Checks the SHA-256 (`expected`, or whatever it is when `None`) and moves the file into
    /// place, read-only, with its record. A mismatch removes the file.
    fn finish(
        mut self,
        name: &str,
        origin: &str,
        expected: Option<&str>,
    ) -> Result<(PathBuf, String), FetchError> {
        let actual = hex(&self.sha256.finalize_reset());
        let blake3 = self.blake3.finalize().to_hex().to_string();
        self.commit(name, origin, expected, actual, blake3)
    }

    /// [`Ingest::finish`] with the digests computed elsewhere.
    fn commit(
        mut self,
        name: &str,
        origin: &str,
        expected: Option<&str>,
        actual: String,
        blake3: String,
    ) -> Result<(PathBuf, String), FetchError> {
        if let Some(expected) = expected
            && !actual.eq_ignore_ascii_case(expected)
        {
            let e = FetchError::Mismatch {
                name: name.into(),
                origin: origin.into(),
                expected: expected.to_ascii_lowercase(),
                actual,
                advice: "the file changed upstream, or the manifest's sha256 is wrong; nothing \
                         was stored"
                    .into(),
            };
            self.discard();
            return Err(e);
        }
        let io = Self::io(name, &self.path);
        self.file.sync_all().map_err(&io)?;
        // Read-only: builds get it through a hard link, and must never change the store's copy.
        let mut perms = self.file.metadata().map_err(&io)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        self.file.set_permissions(perms).map_err(&io)?;
        let dest = store_path(self.store, &actual);
        let meta = ArtifactMeta {
            sha256: actual.clone(),
            blake3,
            bytes: self.len,
        };
        // The record first: a blob is never in place without it.
        self.store.write_json(&meta_name(&actual), &meta)?;
        crate::fault::point("fetch.commit");
        std::fs::rename(&self.path, &dest).map_err(Self::io(name, &dest))?;
        if let Some(t) = self.temp.take() {
            // Renamed away: nothing left to remove.
            let _ = t.keep();
        }
        let mut cache = hash::StatCache::load(self.store);
        if let Ok(md) = std::fs::metadata(&dest) {
            cache.remember(&dest, crate::fsutil::Stamp::of(&md), &meta.blake3);
            cache.save(self.store);
        }
        Ok((dest, actual))
    }
}

fn transient(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::StatusCode(code) => *code >= 500 || *code == 429 || *code == 408,
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound => true,
        _ => false,
    }
}

fn backoff(attempt: u32) {
    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
}

/// `Content-Range: bytes 100-199/1000` → (100, Some(1000)).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// The SHA-256 a checksum file gives for `file`: GNU coreutils lines (`HEX  name`,
/// `HEX *name`) or BSD/`--tag` lines (`SHA256 (name) = HEX`), as Ubuntu's SHA256SUMS and
/// CentOS's CHECKSUM files are written.
pub fn sums_lookup(text: &str, file: &str) -> Option<String> {
    let is_hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    text.lines().find_map(|line| {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("SHA256 (") {
            let (name, hex) = rest.split_once(") = ")?;
            return (name == file && is_hex(hex.trim())).then(|| hex.trim().to_ascii_lowercase());
        }
        let (hex, name) = line.split_once(char::is_whitespace)?;
        let name = name.trim_start().trim_start_matches('*');
        (name == file && is_hex(hex)).then(|| hex.to_ascii_lowercase())
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        // A large file legitimately takes long: only the wait for the response is bounded.
        .timeout_recv_body(None)
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

impl Fetcher<'_> {
    /// What points `url` elsewhere: the variable of `manifests/artifacts.ncl` it is built
    /// from, else the artifact's own `url`.
    fn overrides(&self, url: &str) -> Box<str> {
        self.mirrors
            .iter()
            .filter(|(_, prefix)| url.starts_with(prefix.as_str()))
            .max_by_key(|(_, prefix)| prefix.len())
            .map(|(name, _)| {
                format!(
                    "the URL is built from `{name}` in manifests/artifacts.ncl: point it at a \
                     mirror with the same paths (then `ccb update` the artifact)"
                )
            })
            .unwrap_or_else(|| "point the artifact's `url` at a mirror in the manifests".into())
            .into_boxed_str()
    }

    /// Puts artifact `name` into the store; `progress` gets (bytes so far, total if known).
    pub fn fetch(
        &self,
        name: &str,
        artifact: &Artifact,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<(PathBuf, Origin), FetchError> {
        let sha = artifact.sha256.to_ascii_lowercase();
        let dest = store_path(self.store, &sha);
        if dest.is_file() {
            return Ok((dest, Origin::Store));
        }
        let file_name = match (&artifact.url, &artifact.swift) {
            (Some(u), _) => url_file_name(u),
            (None, Some(o)) => o.object.rsplit('/').next().filter(|n| !n.is_empty()),
            _ => None,
        };
        for dir in &self.distdirs {
            for candidate in file_name.into_iter().chain([name]) {
                let path = dir.join(candidate);
                if !path.is_file() {
                    continue;
                }
                // A distdir file with another digest is someone else's file of that name.
                match self.copy_local(name, &path, &sha, progress) {
                    Ok(p) => return Ok((p, Origin::Distdir(path))),
                    Err(FetchError::Mismatch { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        if self.offline {
            return Err(FetchError::Offline { name: name.into() });
        }
        match (&artifact.url, &artifact.swift) {
            (Some(url), _) => {
                if let Some(path) = url.strip_prefix("file://") {
                    let p = self
                        .copy_local(name, Path::new(path), &sha, progress)
                        .map_err(|e| e.for_pinned_url(url))?;
                    Ok((p, Origin::Url(redact_url(url))))
                } else if url.starts_with("http://") || url.starts_with("https://") {
                    let p = self
                        .download(name, url, &sha, progress)
                        .map_err(|e| e.for_pinned_url(url))?;
                    Ok((p, Origin::Url(redact_url(url))))
                } else {
                    Err(FetchError::Scheme {
                        name: name.into(),
                        url: redact_url(url),
                    })
                }
            }
            (None, Some(object)) => {
                let p = self.read_swift(name, object, &sha, progress)?;
                Ok((
                    p,
                    Origin::Swift(format!(
                        "{}:{}/{}",
                        object.site, object.container, object.object
                    )),
                ))
            }
            (None, None) => Err(FetchError::NoOrigin { name: name.into() }),
        }
    }

    /// Downloads `url` whatever it holds (`ccb update` of a "latest" artifact); its SHA-256.
    pub fn fetch_latest(
        &self,
        name: &str,
        url: &str,
        sums: Option<&str>,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<String, FetchError> {
        // An operator's copy in a distdir (a machine that cannot reach the publisher) is
        // pinned as it is: putting it there vouches for it, as a pinned digest would.
        for dir in &self.distdirs {
            for candidate in url_file_name(url).into_iter().chain([name]) {
                let path = dir.join(candidate);
                if path.is_file() {
                    let sha = hash::sha256_file(&path).map_err(Ingest::io(name, &path))?;
                    self.copy_local(name, &path, &sha, progress)?;
                    return Ok(sha);
                }
            }
        }
        if self.offline {
            return Err(FetchError::Offline { name: name.into() });
        }
        // The publisher's SHA256SUMS first: the file is then verified before it enters the
        // store, exactly as a pinned artifact is.
        let expected = match sums {
            Some(sums) => Some(self.sums_entry(name, url, sums)?),
            None => None,
        };
        let mut ingest = Ingest::temp(self.store, name)?;
        if let Some(path) = url.strip_prefix("file://") {
            // Named as a download: the same ways out (another `url`, CCB_DISTDIR) apply.
            let file =
                crate::fsutil::open_regular(Path::new(path)).map_err(|e| FetchError::Download {
                    name: name.into(),
                    url: redact_url(url),
                    cause: TransferError::Open(e),
                    overrides: self.overrides(url),
                })?;
            let total = file.metadata().ok().map(|m| m.len());
            if let Err(e) = ingest.copy_from(file, total, progress) {
                return Err(ingest.copy_error(name, Path::new(path), e));
            }
        } else {
            let mut response = agent().get(url).call().map_err(|e| FetchError::Download {
                name: name.into(),
                url: redact_url(url),
                cause: TransferError::Http(Box::new(e)),
                overrides: self.overrides(url),
            })?;
            let total = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            match ingest.copy_from(response.body_mut().as_reader(), total, progress) {
                Ok(()) => {}
                Err(CopyError::Read(e)) => {
                    return Err(FetchError::Download {
                        name: name.into(),
                        url: redact_url(url),
                        cause: TransferError::Read(e),
                        overrides: self.overrides(url),
                    });
                }
                Err(e) => return Err(ingest.copy_error(name, Path::new(url), e)),
            }
        }
        let (_, sha) = ingest.finish(name, &redact_url(url), expected.as_deref())?;
        Ok(sha)
    }

    /// The digest `sums` (a SHA256SUMS or CHECKSUM file) gives for the file `url` names.
    fn sums_entry(&self, name: &str, url: &str, sums: &str) -> Result<String, FetchError> {
        let file = url.rsplit('/').next().unwrap_or(url);
        let file = file.split(['?', '#']).next().unwrap_or(file);
        let listed = self.read_sums(name, sums).map(|text| {
            sums_lookup(&text, file).ok_or_else(|| FetchError::NotInSums {
                name: name.into(),
                sums: redact_url(sums),
                file: file.into(),
            })
        });
        match listed {
            Ok(Ok(hex)) => Ok(hex),
            // CentOS's directory CHECKSUM has at times listed only the dated names, never the
            // `-latest` one: DIB then reads the file's own `<file>.SHA256SUM` beside it.
            Ok(Err(e)) | Err(e) => {
                let own = format!("{}.SHA256SUM", url.split(['?', '#']).next().unwrap_or(url));
                self.read_sums(name, &own)
                    .ok()
                    .and_then(|text| sums_lookup(&text, file))
                    .ok_or(e)
            }
        }
    }

    /// A checksum file's text (16 MiB at most).
    fn read_sums(&self, name: &str, sums: &str) -> Result<String, FetchError> {
        let download = |cause: TransferError| FetchError::Download {
            name: name.into(),
            url: redact_url(sums),
            cause,
            overrides: self.overrides(sums),
        };
        if let Some(path) = sums.strip_prefix("file://") {
            return crate::fsutil::read_regular(Path::new(path))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(Ingest::io(name, Path::new(path)));
        }
        let mut response = agent()
            .get(sums)
            .call()
            .map_err(|e| download(TransferError::Http(Box::new(e))))?;
        response
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| download(TransferError::Http(Box::new(e))))
    }

    /// A local file (distdir, `file://`): copied by the kernel (`copy_file_range`, a reflink
    /// where the filesystem can), then SHA-256 and blake3 (memory-mapped, on every core) side
    /// by side on the copy: what is verified is what the store keeps.
    fn copy_local(
        &self,
        name: &str,
        path: &Path,
        sha: &str,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, FetchError> {
        // Only a regular file: a FIFO would block the copy (and ccb) forever, a device would
        // copy the host's hardware into the store.
        let mut src = crate::fsutil::open_regular(path).map_err(Ingest::io(name, path))?;
        let mut ingest = Ingest::temp(self.store, name)?;
        // File to file: std copies with copy_file_range (a reflink where it can); a failure
        // now is the store's (a full disk).
        let copied =
            std::io::copy(&mut src, &mut ingest.file).map_err(Ingest::io(name, &ingest.path))?;
        ingest.len = copied;
        progress(copied, Some(copied));
        let copy = ingest.path.clone();
        let (sha256, blake3) = std::thread::scope(|scope| {
            let blake3 = scope.spawn(|| hash::blake3_file(&copy));
            let sha256 = hash::sha256_file(&copy);
            (
                sha256,
                blake3
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panicked"))),
            )
        });
        let io = Ingest::io(name, &copy);
        let (sha256, blake3) = (sha256.map_err(&io)?, blake3.map_err(&io)?);
        Ok(ingest
            .commit(name, &path.display().to_string(), Some(sha), sha256, blake3)?
            .0)
    }

    fn download(
        &self,
        name: &str,
        url: &str,
        sha: &str,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, FetchError> {
        let fail = |cause: TransferError| FetchError::Download {
            name: name.into(),
            url: redact_url(url),
            cause,
            overrides: self.overrides(url),
        };
        let agent = agent();
        let mut ingest = Ingest::partial(self.store, name, sha)?;
        let mut resumed = false;
        let mut restarted = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let offset = ingest.len;
            let mut req = agent.get(url);
            if offset > 0 {
                req = req.header("Range", format!("bytes={offset}-"));
            }
            let mut response = match req.call() {
                Ok(r) => r,
                // The partial file is as long as the whole (or longer): start again.
                Err(ureq::Error::StatusCode(416)) if offset > 0 => {
                    ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
                    continue;
                }
                Err(e) if transient(&e) && attempt < ATTEMPTS => {
                    backoff(attempt);
                    continue;
                }
                Err(e) => return Err(fail(TransferError::Http(Box::new(e)))),
            };
            let header = |h: &str| {
                response
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let total = if response.status().as_u16() == 206 {
                match header("content-range").as_deref().and_then(content_range) {
                    Some((start, total)) if start == offset => {
                        resumed = true;
                        total
                    }
                    // A range we did not ask for: take nothing from it.
                    _ => {
                        ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
                        continue;
                    }
                }
            } else {
                if offset > 0 {
                    // The server ignores ranges: the whole file again, from its first byte.
                    ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
                }
                header("content-length").and_then(|v| v.parse().ok())
            };
            if let Err(e) = ingest.copy_from(response.body_mut().as_reader(), total, progress) {
                let e = match e {
                    CopyError::Read(e) => e,
                    write => return Err(ingest.copy_error(name, Path::new(url), write)),
                };
                if attempt < ATTEMPTS {
                    backoff(attempt);
                    continue;
                }
                return Err(fail(TransferError::Attempts {
                    attempts: attempt,
                    last: Box::new(TransferError::Read(e)),
                }));
            }
            if total.is_some_and(|t| ingest.len < t) {
                if attempt < ATTEMPTS {
                    continue;
                }
                return Err(fail(TransferError::Truncated {
                    received: ingest.len,
                    total: total.unwrap_or_default(),
                }));
            }
            let sha_now = ingest.sha256.clone().finalize();
            if resumed && !restarted && !hex(&sha_now).eq_ignore_ascii_case(sha) {
                // The bytes kept from before may be another version's: once more, whole.
                ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
                restarted = true;
                resumed = false;
                attempt = 0;
                continue;
            }
            return Ok(ingest.finish(name, &redact_url(url), Some(sha))?.0);
        }
    }

    fn read_swift(
        &self,
        name: &str,
        object: &SwiftObject,
        sha: &str,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, FetchError> {
        let origin = format!(
            "swift object {}/{} of site `{}`",
            object.container, object.object, object.site
        );
        let fail = |cause: TransferError| FetchError::Download {
            name: name.into(),
            url: origin.clone(),
            cause,
            overrides: "point the artifact at another object or a `url`".into(),
        };
        let open = self
            .swift
            .ok_or_else(|| FetchError::NoSwift { name: name.into() })?;
        let reader = open(object).map_err(|e| fail(TransferError::Object(e)))?;
        let size = reader.size();
        let mut ingest = Ingest::partial(self.store, name, sha)?;
        let mut resumed = ingest.len > 0;
        if ingest.len > size {
            ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
            resumed = false;
        }
        loop {
            let mut buf = vec![0u8; CHUNK];
            while ingest.len < size {
                let n = (size - ingest.len).min(CHUNK as u64) as usize;
                reader
                    .read_at(ingest.len, &mut buf[..n])
                    .map_err(|e| fail(TransferError::Object(Box::new(e))))?;
                ingest
                    .write(&buf[..n])
                    .map_err(Ingest::io(name, &ingest.path))?;
                progress(ingest.len, Some(size));
            }
            let sha_now = ingest.sha256.clone().finalize();
            if resumed && !hex(&sha_now).eq_ignore_ascii_case(sha) {
                ingest.restart().map_err(Ingest::io(name, &ingest.path))?;
                resumed = false;
                continue;
            }
            return Ok(ingest.finish(name, &origin, Some(sha))?.0);
        }
    }
}

/// The store's copy of an artifact, checked against its recorded blake3 (through the stat
/// cache: unchanged files are not read). A damaged copy is removed and reported.
pub fn verified_path(
    store: &Store,
    cache: &mut hash::StatCache,
    name: &str,
    sha256: &str,
) -> Result<PathBuf, FetchError> {
    let path = store_path(store, sha256);
    let io = Ingest::io(name, &path);
    let meta = match store.read_json::<ArtifactMeta>(&meta_name(sha256)) {
        Some(m) => m,
        None => {
            // Fetched before the store recorded blake3: check the pin once, then record.
            let actual = hash::sha256_file(&path).map_err(&io)?;
            if actual != sha256.to_ascii_lowercase() {
                return Err(damaged(store, cache, name, &path, sha256.into(), actual));
            }
            let blake3 = hash::blake3_file(&path).map_err(&io)?;
            let meta = ArtifactMeta {
                sha256: actual,
                blake3,
                bytes: std::fs::metadata(&path).map_err(&io)?.len(),
            };
            store.write_json(&meta_name(sha256), &meta)?;
            meta
        }
    };
    let actual = cache.blake3(&path).map_err(&io)?;
    if actual != meta.blake3 {
        return Err(damaged(store, cache, name, &path, meta.blake3, actual));
    }
    Ok(path)
}

fn damaged(
    store: &Store,
    cache: &mut hash::StatCache,
    name: &str,
    path: &Path,
    expected: String,
    actual: String,
) -> FetchError {
    let _ = std::fs::remove_file(path);
    cache.forget(path);
    if let Some(sha) = path.file_name().and_then(|n| n.to_str()) {
        let _ = store.remove(&meta_name(sha));
    }
    FetchError::Corrupt {
        name: name.into(),
        path: path.to_path_buf(),
        expected,
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(
        store: &Store,
        name: &str,
        artifact: &Artifact,
        distdirs: &[PathBuf],
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<(PathBuf, Origin), FetchError> {
        Fetcher {
            store,
            distdirs: distdirs.to_vec(),
            offline: false,
            swift: None,
            mirrors: vec![],
        }
        .fetch(name, artifact, progress)
    }

    #[test]
    fn checksum_files_are_read_in_gnu_and_bsd_formats() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let text = format!(
            "{a} *noble-server-cloudimg-amd64.squashfs\n{a}  other.img\nSHA256 (CentOS-9.tar.xz) = {b}\n"
        );
        assert_eq!(
            sums_lookup(&text, "noble-server-cloudimg-amd64.squashfs").as_deref(),
            Some(a.as_str())
        );
        assert_eq!(sums_lookup(&text, "other.img").as_deref(), Some(a.as_str()));
        assert_eq!(
            sums_lookup(&text, "CentOS-9.tar.xz"),
            Some("b".repeat(64)),
            "digests are lowercased"
        );
        // A name is matched whole, and a line that is not a SHA-256 is no answer.
        assert_eq!(sums_lookup(&text, "noble"), None);
        assert_eq!(sums_lookup("abc *short.img\n", "short.img"), None);
    }

    fn artifact(url: Option<String>, content: &[u8]) -> Artifact {
        Artifact {
            url,
            swift: None,
            sha256: hex(&Sha256::digest(content)),
            sums: None,
            description: None,
            secret: false,
            arch: None,
        }
    }

    #[test]
    fn a_file_url_is_verified_and_stored_read_only_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool.sh");
        std::fs::write(&src, b"#!/bin/sh\necho hi\n").unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(
            Some(format!("file://{}", src.display())),
            b"#!/bin/sh\necho hi\n",
        );
        let (path, origin) = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(path, store_path(&store, &art.sha256));
        assert!(matches!(origin, Origin::Url(_)));
        assert_eq!(std::fs::read(&path).unwrap(), b"#!/bin/sh\necho hi\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o444);
        // Second time: from the store, without reading the source.
        std::fs::remove_file(&src).unwrap();
        let (_, origin) = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(origin, Origin::Store);
    }

    #[test]
    fn a_mismatch_names_both_digests_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool.sh");
        std::fs::write(&src, b"changed upstream").unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(Some(format!("file://{}", src.display())), b"pinned bytes");
        let err = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("artifact `tool`"), "{msg}");
        assert!(msg.contains(&art.sha256), "{msg}");
        assert!(
            msg.contains(&hex(&Sha256::digest(b"changed upstream"))),
            "{msg}"
        );
        let left: Vec<_> = std::fs::read_dir(store.path(Layout::ARTIFACTS))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().unwrap().is_file())
            .collect();
        assert!(left.is_empty(), "nothing stored: {left:?}");
    }

    #[test]
    fn a_distdir_file_with_the_right_digest_is_used_and_a_wrong_one_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (wrong, right) = (dir.path().join("d1"), dir.path().join("d2"));
        std::fs::create_dir_all(&wrong).unwrap();
        std::fs::create_dir_all(&right).unwrap();
        std::fs::write(wrong.join("tool.sh"), b"other").unwrap();
        std::fs::write(right.join("tool.sh"), b"pinned").unwrap();
        let store = Store::at(dir.path().join("store"));
        // The URL is unreachable: the distdir must answer first.
        let art = artifact(Some("http://127.0.0.1:9/x/tool.sh".into()), b"pinned");
        let (_, origin) = fetch(
            &store,
            "tool",
            &art,
            &[wrong, right.clone()],
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(origin, Origin::Distdir(right.join("tool.sh")));
    }

    #[test]
    fn an_unreachable_url_is_a_download_error_naming_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(Some("http://127.0.0.1:9/tool.sh".into()), b"x");
        let err = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::Download {
                    cause: TransferError::Http(_),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("http://127.0.0.1:9/tool.sh"));
    }

    /// How the test server answers one connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Honour a Range header; send all it promises.
        Full,
        /// Honour a Range header, promise the whole rest, send `n` bytes and hang up.
        Cut(usize),
        /// Ignore any Range header: 200 and the whole file.
        IgnoreRange,
    }

    /// An HTTP/1.1 server on 127.0.0.1 for one file, answering connection `i` with
    /// `answers[i]`; returns the URL and the Range header of every request (or "").
    fn serve(
        body: Vec<u8>,
        answers: Vec<Answer>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file.bin", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut range = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').to_string();
                    }
                }
                log.lock().unwrap().push(range.clone());
                let start: usize = match answer {
                    Answer::IgnoreRange => 0,
                    _ => range.parse().unwrap_or(0),
                };
                let rest = &body[start..];
                let status = if start > 0 {
                    format!(
                        "206 Partial Content\r\nContent-Range: bytes {start}-{}/{}",
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    "200 OK".to_string()
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                let n = match answer {
                    Answer::Cut(n) => n.min(rest.len()),
                    _ => rest.len(),
                };
                let _ = stream.write_all(&rest[..n]);
            }
        });
        (url, seen)
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn an_interrupted_download_resumes_from_the_bytes_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let body = data();
        let (url, seen) = serve(body.clone(), vec![Answer::Cut(1_000_000), Answer::Full]);
        let art = artifact(Some(url), &body);
        let (path, _) = fetch(&store, "big", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["".to_string(), "1000000".into()]
        );
        assert!(!partial_path(&store, &art.sha256).exists());
    }

    #[test]
    fn a_server_that_ignores_ranges_gets_a_clean_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let body = data();
        let (url, seen) = serve(
            body.clone(),
            vec![Answer::Cut(1_000_000), Answer::IgnoreRange],
        );
        let art = artifact(Some(url), &body);
        let (path, _) = fetch(&store, "big", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_partial_download_of_another_version_is_fetched_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let body = data();
        let art = artifact(None, &body);
        // What an earlier run kept of a file that has changed since.
        let partial = partial_path(&store, &art.sha256);
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, vec![0xAA; 500_000]).unwrap();
        let (url, seen) = serve(body.clone(), vec![Answer::Full, Answer::Full]);
        let art = Artifact {
            url: Some(url),
            ..art
        };
        let (path, _) = fetch(&store, "big", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(*seen.lock().unwrap(), vec!["500000".to_string(), "".into()]);
    }

    #[test]
    fn a_download_that_never_completes_keeps_its_bytes_for_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let body = data();
        let cuts = vec![Answer::Cut(100_000); ATTEMPTS as usize];
        let (url, _) = serve(body.clone(), cuts);
        let art = artifact(Some(url), &body);
        let err = fetch(&store, "big", &art, &[], &mut |_, _| {}).unwrap_err();
        // Each attempt broke off mid-body: the network's failure, said as such.
        assert!(
            matches!(
                &err,
                FetchError::Download {
                    cause: TransferError::Attempts { attempts: ATTEMPTS, last },
                    ..
                } if matches!(**last, TransferError::Read(_))
            ) || matches!(
                &err,
                FetchError::Download {
                    cause: TransferError::Truncated {
                        received: 100_000,
                        ..
                    },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!is_fetched(&store, &art.sha256));
        let kept = std::fs::metadata(partial_path(&store, &art.sha256))
            .unwrap()
            .len();
        assert_eq!(kept, 100_000 * u64::from(ATTEMPTS));
        // The next run asks only for the rest.
        let (url, seen) = serve(body.clone(), vec![Answer::Full]);
        let art = Artifact {
            url: Some(url),
            ..art
        };
        fetch(&store, "big", &art, &[], &mut |_, _| {}).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![kept.to_string()]);
    }

    /// A base pinned from Ubuntu's `current/` breaks when Ubuntu republishes: the error says
    /// the three ways on (move the pin, supply the pinned file, follow a dated URL).
    #[test]
    fn a_republished_current_url_says_how_to_move_or_keep_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let file = dir
            .path()
            .join("noble/current/noble-server-cloudimg-amd64.squashfs");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "republished").unwrap();
        let art = artifact(Some(format!("file://{}", file.display())), b"pinned");
        let name = "ubuntu-noble-rootfs:amd64";
        let err = fetch(&store, name, &art, &[], &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        for needle in [
            "republished",
            "`ccb update ubuntu-noble-rootfs:amd64`",
            "CCB_DISTDIR",
            "dated",
        ] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
    }

    #[test]
    fn a_downloaded_mismatch_stores_nothing_not_even_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let (url, _) = serve(b"upstream changed".to_vec(), vec![Answer::Full]);
        let art = artifact(Some(url), b"pinned");
        let err = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("`ccb update tool`"), "{help}");
        let left: Vec<_> = std::fs::read_dir(store.path(Layout::ARTIFACTS))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_failed_download_names_the_manifest_variable_its_url_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        std::fs::write(
            dir.path().join("manifests/artifacts.ncl"),
            "let nvidia = \"http://127.0.0.1:9/cuda\" in\nlet images = \"http://127.0.0.1:9\" in\n\
             let f = fun x => \"%{x}\" in\n{}\n",
        )
        .unwrap();
        let mirrors = mirror_variables(dir.path());
        assert_eq!(mirrors.len(), 2, "{mirrors:?}");
        let store = Store::at(dir.path().join("store"));
        let fetcher = Fetcher {
            store: &store,
            distdirs: vec![],
            offline: false,
            swift: None,
            mirrors,
        };
        // The longest prefix names it.
        let art = artifact(Some("http://127.0.0.1:9/cuda/key.pub".into()), b"k");
        let err = fetcher.fetch("key", &art, &mut |_, _| {}).unwrap_err();
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(
            help.contains("`nvidia` in manifests/artifacts.ncl"),
            "{help}"
        );
        assert!(help.contains("CCB_DISTDIR"), "{help}");
        let art = artifact(Some("http://127.0.0.2:9/other".into()), b"k");
        let err = fetcher.fetch("other", &art, &mut |_, _| {}).unwrap_err();
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("the artifact's `url`"), "{help}");
    }

    #[test]
    fn offline_only_the_store_and_the_distdirs_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(Some("http://127.0.0.1:9/tool".into()), b"tool");
        let offline = Fetcher {
            store: &store,
            distdirs: vec![],
            offline: true,
            swift: None,
            mirrors: vec![],
        };
        let err = offline.fetch("tool", &art, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, FetchError::Offline { .. }), "{err}");
        let dist = dir.path().join("dist");
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::write(dist.join("tool"), b"tool").unwrap();
        let offline = Fetcher {
            distdirs: vec![dist],
            ..offline
        };
        offline.fetch("tool", &art, &mut |_, _| {}).unwrap();
        let again = Fetcher {
            distdirs: vec![],
            ..offline
        };
        assert_eq!(
            again.fetch("tool", &art, &mut |_, _| {}).unwrap().1,
            Origin::Store
        );
    }

    #[test]
    fn a_damaged_store_copy_is_caught_by_its_blake3_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tool");
        std::fs::write(&src, b"pinned bytes").unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(Some(format!("file://{}", src.display())), b"pinned bytes");
        let (path, _) = fetch(&store, "tool", &art, &[], &mut |_, _| {}).unwrap();
        let mut cache = hash::StatCache::load(&store);
        verified_path(&store, &mut cache, "tool", &art.sha256).unwrap();
        assert_eq!(
            cache.files_read, 0,
            "the fetch recorded its blake3: nothing to re-read"
        );
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, b"pinned bytez!").unwrap();
        let err = verified_path(&store, &mut cache, "tool", &art.sha256).unwrap_err();
        assert!(matches!(err, FetchError::Corrupt { .. }), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn a_temp_url_signature_never_reaches_a_message() {
        let url = "https://swift.example/v1/AUTH_x/c/cuda.run?temp_url_sig=abc123&temp_url_expires=1700000000";
        let shown = redact_url(url);
        assert!(!shown.contains("abc123"), "{shown}");
        assert!(shown.contains("temp_url_expires=1700000000"), "{shown}");
        assert_eq!(url_file_name(url), Some("cuda.run"));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("store"));
        let art = artifact(
            Some("http://127.0.0.1:9/c/x?temp_url_sig=s3cret&temp_url_expires=1".into()),
            b"x",
        );
        let err = fetch(&store, "x", &art, &[], &mut |_, _| {}).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
