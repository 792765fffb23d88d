//! The remote cache: results shared between build hosts, after the local store and before
//! building. ccb's keys are content keys that hold no path, host, user or time, so a result
//! one host built is valid on every other; a host looks an action up here when its own store
//! misses, and (when uploading) stores what it built.
//!
//! The protocol is Bazel's HTTP remote cache ([`backend`]): `ac/<id>` holds a REAPI
//! `ActionResult` ([`reapi`]) naming two CAS blobs, the action's record (its key document,
//! steps, and the layer's, outputs' or artifact's metadata) and the manifest of its data
//! ([`pack`]). Uploads store the blobs first and the action entry last, so an interrupted
//! upload leaves unreferenced blobs, never an entry without its data. Downloads verify every
//! blob, then the unpacked result against the digest recorded when it was built, in a
//! private working directory of the store, before committing it like a local build: a corrupt,
//! truncated or missing blob is a cache miss with a warning, never a bad build.

pub mod backend;
pub mod builder;
pub mod pack;
pub mod reapi;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::graph::{self, Action, ActionRecord, Kind, LastBuild};
use crate::store::{LayerMeta, Layout, OutputsMeta, Store};
use backend::Backend;
use pack::{Counters, Existing, PackKind};

/// What goes wrong talking to a remote cache. A lookup or an upload that fails is a warning
/// (the build goes on without the cache); only a malformed setting stops a command.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RemoteError {
    #[error("remote cache `{url}`: {message}")]
    #[diagnostic(
        code(ccb::remote::url),
        help("set `cache.url` in manifests/project.ncl or pass --remote-cache URL")
    )]
    Url { url: String, message: String },
    #[error("remote cache {server}: {method} {path}: HTTP {status}")]
    #[diagnostic(code(ccb::remote::http))]
    Http {
        server: String,
        method: String,
        path: String,
        status: u16,
    },
    /// The request did not get an answer (ureq's error says why: a refused connection, a
    /// timeout, a name that does not resolve).
    #[error("remote cache {server}: {method} {path}: {source}")]
    #[diagnostic(code(ccb::remote::transport))]
    Transport {
        server: String,
        method: String,
        path: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("remote cache {server}: {source}")]
    #[diagnostic(code(ccb::remote::swift))]
    Swift {
        server: String,
        #[source]
        source: Box<crate::publish::PublishError>,
    },
    #[error("the remote cache's entry is corrupt: {what}{}", suffix(.source))]
    #[diagnostic(code(ccb::remote::corrupt))]
    Corrupt {
        what: String,
        /// What could not decode it (JSON, zstd), when something tried.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The stream to upload (a file, tar's output) could not be read.
    #[error("reading what to upload: {0}")]
    #[diagnostic(code(ccb::remote::read))]
    Read(#[source] std::io::Error),
    /// What was downloaded could not be written (a full disk, tar gone).
    #[error("writing what was downloaded: {0}")]
    #[diagnostic(code(ccb::remote::write))]
    Write(#[source] std::io::Error),
    #[error("compressing a chunk: {0}")]
    #[diagnostic(code(ccb::remote::compress))]
    Compress(#[source] std::io::Error),
    /// tar, which packs and unpacks trees, could not run or failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tar(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A state ccb rules out: a bug.
    #[error("internal error: {0}")]
    #[diagnostic(code(ccb::remote::internal))]
    Internal(&'static str),
    /// ccb asked its backend for a name that is not a cache entry's: a bug.
    #[error("internal error: `{0}` is not a cache entry name")]
    #[diagnostic(code(ccb::remote::internal))]
    EntryName(String),
}

/// `: cause` after a message, when there is a cause.
fn suffix(source: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

impl RemoteError {
    /// Data the cache holds is not what it claims.
    pub fn corrupt(what: impl Into<String>) -> Self {
        RemoteError::Corrupt {
            what: what.into(),
            source: None,
        }
    }

    /// Data the cache holds does not decode.
    pub fn undecodable(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RemoteError::Corrupt {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A bug in ccb rather than a fault of the cache or the host.
    pub fn is_internal(&self) -> bool {
        matches!(self, RemoteError::Internal(_) | RemoteError::EntryName(_))
    }
}

/// The command line's say over the project's `cache` setting.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// `--remote-cache URL`: this cache instead of the project's.
    pub url: Option<String>,
    /// `--remote-cache-upload`: store what this build makes (else read-only, unless the
    /// project's setting says `upload = true`).
    pub upload: bool,
    /// `--no-remote-cache`.
    pub disabled: bool,
    /// `--remote-builders-only`: every root filesystem and disk goes to a builder.
    pub builders_only: bool,
    /// `--no-remote-builders`: build everything here.
    pub no_builders: bool,
}

use crate::manifest::CacheSettings as Settings;

/// A remote cache opened for one build.
pub struct Remote {
    backend: Box<dyn Backend>,
    /// As configured, credentials included: what a remote builder is told to use.
    url: String,
    upload: bool,
    jobs: usize,
    pub counters: Counters,
    /// Action ids served from the cache, and those this build uploaded.
    hits: Mutex<Vec<String>>,
    uploaded: Mutex<Vec<String>>,
    /// Keys whose entry a lookup found damaged (a blob corrupt or gone): uploading one
    /// stores the entry and every blob it needs again instead of trusting what exists, else
    /// every host would warn and rebuild it forever. Shared with the builders, which pass
    /// it on to theirs ([`REPAIR_ENV`]).
    damaged: Arc<Mutex<BTreeSet<String>>>,
}

/// The keys a builder's ccb must repair in the cache (its client found their entries
/// damaged), comma-separated. A builder whose own store holds such a result would otherwise
/// see the entry exists and skip it, and the client could never take it from the cache.
pub const REPAIR_ENV: &str = "CCB_REMOTE_CACHE_REPAIR";

/// How long a remote cache may send nothing (mid-body included) before the request fails
/// as a cache error, in seconds: a server that stalls must not hang the build.
pub const TIMEOUT_ENV: &str = "CCB_REMOTE_CACHE_TIMEOUT";

/// What the build report says about the remote cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The cache, without credentials.
    pub url: String,
    pub upload: bool,
    /// Actions that came from the cache.
    pub hits: usize,
    /// Actions this build stored in the cache.
    pub uploaded: usize,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Chunks sent, and chunks the cache already had (shared with another result).
    pub chunks_sent: u64,
    pub chunks_present: u64,
    /// Stored bytes of the chunks the cache already had: what was not sent.
    pub bytes_present: u64,
}

/// The entry format: bump when what an entry holds changes meaning. It enters the action
/// cache's names, so two formats never read each other's entries.
const FORMAT: &str = "ccb-remote-v1";
const RECORD: &str = "ccb/record.json";
const DATA: &str = "ccb/data";

/// The record an entry's `ccb/record.json` blob holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    format: String,
    action: ActionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<LayerMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outputs: Option<OutputsMeta>,
}

/// The action-cache name of a key: 64 hex digits as Bazel's caches require, tagged with the
/// format.
pub fn ac_name(key: &str) -> String {
    format!(
        "ac/{}",
        pack::sha256_hex(format!("{FORMAT}\0{key}").as_bytes())
    )
}

/// The remote cache a command uses: `--remote-cache` over the project's setting, none with
/// `--no-remote-cache` or `--offline`.
pub fn open(
    settings: Option<&Settings>,
    choice: &Choice,
    offline: bool,
) -> Result<Option<Remote>, RemoteError> {
    if choice.disabled || offline {
        return Ok(None);
    }
    let Some(url) = choice
        .url
        .clone()
        .or_else(|| settings.map(|s| s.url.clone()))
    else {
        return Ok(None);
    };
    let upload = choice.upload || settings.is_some_and(|s| s.upload);
    let backend = backend::open(&url)?;
    Ok(Some(Remote {
        backend,
        url,
        upload,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8),
        counters: Counters::default(),
        hits: Mutex::new(Vec::new()),
        uploaded: Mutex::new(Vec::new()),
        damaged: Arc::new(Mutex::new(keys_to_repair(
            &std::env::var(REPAIR_ENV).unwrap_or_default(),
        ))),
    }))
}

/// The keys [`REPAIR_ENV`] names (only key-shaped words: it is never a path or a command).
fn keys_to_repair(list: &str) -> BTreeSet<String> {
    list.split(',')
        .filter(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

/// A download in the store's scratch space that is removed unless committed.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.0);
    }
}

impl Remote {
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The URL as configured (with any credentials: never for display).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn uploads(&self) -> bool {
        self.upload
    }

    pub fn report(&self) -> Report {
        let c = &self.counters;
        Report {
            url: self.describe(),
            upload: self.upload,
            hits: self.hits.lock().map(|h| h.len()).unwrap_or(0),
            uploaded: self.uploaded.lock().map(|h| h.len()).unwrap_or(0),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            chunks_sent: c.chunks_sent.load(Ordering::Relaxed),
            chunks_present: c.chunks_present.load(Ordering::Relaxed),
            bytes_present: c.bytes_present.load(Ordering::Relaxed),
        }
    }

    /// Whether this build took `id` from the cache.
    pub fn served(&self, id: &str) -> bool {
        self.hits
            .lock()
            .map(|h| h.iter().any(|x| x == id))
            .unwrap_or(false)
    }

    /// The damaged keys, shared: what a builder is told to repair.
    pub fn damaged(&self) -> Arc<Mutex<BTreeSet<String>>> {
        self.damaged.clone()
    }

    fn is_damaged(&self, key: &str) -> bool {
        self.damaged.lock().is_ok_and(|d| d.contains(key))
    }

    /// Looks `action` up and, on a hit, commits it to the local store (call with the key's
    /// lock held). `Ok(false)`: a miss. An error is a miss too, for the caller to warn about;
    /// when the entry proved damaged, this build's upload of the action repairs it.
    pub fn fetch(
        &self,
        store: &Store,
        action: &Action,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> Result<bool, RemoteError> {
        let found = self.lookup(store, action, on_bytes);
        if let Err(RemoteError::Corrupt { .. }) = &found
            && let Ok(mut d) = self.damaged.lock()
        {
            d.insert(action.key.clone());
        }
        found
    }

    fn lookup(
        &self,
        store: &Store,
        action: &Action,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> Result<bool, RemoteError> {
        // A secret-holding result is never looked up: even a hit would be someone's secret.
        if action.kind == Kind::Publish || action.secret {
            return Ok(false);
        }
        if action.kind == Kind::Fetch && action.artifact_sha256().is_none_or(|d| d.len() != 64) {
            // An artifact that follows "latest" has no pinned digest to verify against.
            return Ok(false);
        }
        let Some(ac) = self.backend.get(&ac_name(&action.key))? else {
            return Ok(false);
        };
        self.counters
            .bytes_down
            .fetch_add(ac.len() as u64, Ordering::Relaxed);
        let result = reapi::ActionResult::decode_bytes(&ac)
            .ok_or_else(|| RemoteError::corrupt("the action entry is not an ActionResult"))?;
        let (Some(rec), Some(data)) = (result.output(RECORD), result.output(DATA)) else {
            return Err(RemoteError::corrupt(
                "the action entry does not name ccb's record and data",
            ));
        };
        let rec_bytes = pack::get_blob(
            &*self.backend,
            &rec.hash,
            Some(rec.size_bytes as u64),
            &self.counters,
        )?
        .ok_or_else(|| RemoteError::corrupt("the action's record is missing"))?;
        let entry: Entry = serde_json::from_slice(&rec_bytes)
            .map_err(|e| RemoteError::undecodable("the action's record", e))?;
        // The record must be this action's, and its key document must hash to the key.
        if entry.format != FORMAT
            || entry.action.key != action.key
            || entry.action.kind != action.kind
            || entry.action.doc.key() != action.key
        {
            return Err(RemoteError::corrupt(
                "the action's record is for another key",
            ));
        }
        let manifest = pack::manifest(
            &*self.backend,
            &data.hash,
            data.size_bytes as u64,
            &self.counters,
        )?
        .ok_or_else(|| RemoteError::corrupt("the action's data manifest is missing"))?;
        store.remove_stale_work(&action.key)?;
        match action.kind {
            Kind::Fetch => self.fetch_artifact(store, action, &manifest, on_bytes)?,
            Kind::Base | Kind::Layer => {
                let Some(meta) = entry.layer.as_ref().filter(|m| m.key == action.key) else {
                    return Err(RemoteError::corrupt("no layer metadata"));
                };
                // A diff goes on its lowers: the scheduler fetched or built them first; one
                // missing (a local gc raced) is a miss, and the layer builds.
                if meta.lowers.iter().any(|l| store.layer_meta(l).is_none()) {
                    return Ok(false);
                }
                let work = Scratch(store.work_dir(&action.key)?);
                let tree = work.0.join("tree");
                self.unpack_tree(&manifest, &tree, &meta.tree.digest, on_bytes)?;
                crate::fault::point("remote.unpacked");
                store.commit_layer(&tree, meta)?;
            }
            Kind::Disk => {
                let (Some(meta), Some(summary)) = (
                    entry.outputs.as_ref().filter(|m| m.key == action.key),
                    entry.action.tree.as_ref(),
                ) else {
                    return Err(RemoteError::corrupt("no outputs metadata"));
                };
                let work = Scratch(store.work_dir(&action.key)?);
                let dir = work.0.join("outputs");
                self.unpack_tree(&manifest, &dir, &summary.digest, on_bytes)?;
                crate::fault::point("remote.unpacked");
                store.commit_outputs(&dir, meta)?;
            }
            Kind::Publish => return Ok(false),
        }
        crate::fault::point("remote.committed");
        let mut record = entry.action;
        record.remote = true;
        store.write_json(&graph::action_record_name(&action.key), &record)?;
        store.write_json(
            &graph::last_record_name(&action.id),
            &LastBuild {
                id: action.id.to_string(),
                key: action.key.clone(),
                doc: action.doc.clone(),
                duration_ms: record.duration_ms,
            },
        )?;
        if let Ok(mut h) = self.hits.lock() {
            h.push(action.id.to_string());
        }
        Ok(true)
    }

    fn unpack_tree(
        &self,
        manifest: &pack::Manifest,
        dir: &std::path::Path,
        digest: &str,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> Result<(), RemoteError> {
        pack::download_tree(
            &*self.backend,
            manifest,
            dir,
            self.jobs,
            &self.counters,
            on_bytes,
        )?;
        let got = crate::store::summarize(dir)?;
        if got.digest != digest {
            return Err(RemoteError::corrupt(format!(
                "the unpacked tree's digest is {}, it was built as {digest}",
                got.digest
            )));
        }
        Ok(())
    }

    fn fetch_artifact(
        &self,
        store: &Store,
        action: &Action,
        manifest: &pack::Manifest,
        on_bytes: &mut dyn FnMut(u64, u64),
    ) -> Result<(), RemoteError> {
        let sha = action
            .artifact_sha256()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if manifest.kind != PackKind::File || manifest.sha256 != sha {
            return Err(RemoteError::corrupt(format!(
                "the data is not the artifact with SHA-256 {sha}"
            )));
        }
        let dest = crate::fetch::store_path(store, &sha);
        let dir = dest.parent().expect("an artifact's path has a parent");
        crate::fsutil::create_dir_all(dir)?;
        // Named as the fetcher's are: what `ccb cache gc` removes after a killed download.
        let prefix = format!("{}remote-", Layout::FETCH_TEMP_PREFIX);
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(dir)
            .map_err(|e| crate::fsutil::FsError::new("create a file in", dir, e))?;
        let tmp_path = tmp.path().to_path_buf();
        let mut b3 = Blake3Writer {
            inner: std::io::BufWriter::new(tmp.as_file_mut()),
            hasher: blake3::Hasher::new(),
        };
        pack::download(
            &*self.backend,
            manifest,
            &mut b3,
            self.jobs,
            &self.counters,
            on_bytes,
        )?;
        b3.flush()
            .map_err(|e| crate::fsutil::FsError::new("write", &tmp_path, e))?;
        let blake3 = b3.hasher.finalize().to_hex().to_string();
        drop(b3);
        tmp.as_file()
            .sync_data()
            .map_err(|e| crate::fsutil::FsError::new("sync", &tmp_path, e))?;
        // Read-only like every fetched artifact.
        let _ = std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        );
        tmp.persist(&dest)
            .map_err(|e| crate::fsutil::FsError::new("rename into place", &dest, e.error))?;
        store.write_json(
            &crate::store::Layout::artifact_record(&sha),
            &crate::fetch::ArtifactMeta {
                sha256: sha.clone(),
                blake3,
                bytes: manifest.size,
            },
        )?;
        Ok(())
    }

    /// Stores a result the local store holds, unless the cache has it already (an entry a
    /// lookup found damaged is stored again, blobs and all). Blobs first, the action entry
    /// last.
    pub fn upload(&self, store: &Store, action: &Action) -> Result<bool, RemoteError> {
        if !self.upload {
            return Ok(false);
        }
        self.put(store, action)
    }

    /// Stores an input of an action sent to a remote builder (a fetched artifact), even when
    /// this build only reads the cache: the builder takes it from there.
    pub fn share_with_builder(&self, store: &Store, action: &Action) -> Result<bool, RemoteError> {
        self.put(store, action)
    }

    fn put(&self, store: &Store, action: &Action) -> Result<bool, RemoteError> {
        // Every path to the cache (upload, sharing with a builder) ends here.
        if action.kind == Kind::Publish || action.secret {
            return Ok(false);
        }
        let ac = ac_name(&action.key);
        let existing = if self.is_damaged(&action.key) {
            Existing::Replace
        } else if self.backend.head(&ac)? {
            return Ok(false);
        } else {
            Existing::Reuse
        };
        let Some(mut record) =
            store.read_json::<ActionRecord>(&graph::action_record_name(&action.key))
        else {
            return Ok(false);
        };
        record.remote = false;
        let mut entry = Entry {
            format: FORMAT.into(),
            action: record,
            layer: None,
            outputs: None,
        };
        let (digest, size) = match action.kind {
            Kind::Fetch => {
                let Some(sha) = action.artifact_sha256().filter(|d| d.len() == 64) else {
                    return Ok(false);
                };
                let path = crate::fetch::store_path(store, sha);
                let file = std::fs::File::open(&path)
                    .map_err(|e| crate::fsutil::FsError::new("read", &path, e))?;
                pack::upload(
                    &*self.backend,
                    PackKind::File,
                    std::io::BufReader::new(file),
                    self.jobs,
                    existing,
                    &self.counters,
                )?
            }
            Kind::Base | Kind::Layer => {
                let Some(meta) = store.layer_meta(&action.key) else {
                    return Ok(false);
                };
                let tree = store.layer_tree(&action.key);
                entry.layer = Some(meta);
                self.upload_tree(&tree, existing)?
            }
            Kind::Disk => {
                let Some(meta) = store.outputs_meta(&action.key) else {
                    return Ok(false);
                };
                entry.outputs = Some(meta);
                self.upload_tree(&store.outputs_dir(&action.key), existing)?
            }
            Kind::Publish => return Ok(false),
        };
        crate::fault::point("remote.data-sent");
        let rec = serde_json::to_vec(&entry).expect("a record serializes");
        let (rec_digest, rec_size) =
            pack::put_blob(&*self.backend, &rec, existing, &self.counters)?;
        let result = reapi::ActionResult {
            output_files: vec![
                reapi::OutputFile {
                    path: RECORD.into(),
                    digest: Some(reapi::Digest {
                        hash: rec_digest,
                        size_bytes: rec_size as i64,
                    }),
                    is_executable: false,
                },
                reapi::OutputFile {
                    path: DATA.into(),
                    digest: Some(reapi::Digest {
                        hash: digest,
                        size_bytes: size as i64,
                    }),
                    is_executable: false,
                },
            ],
            exit_code: 0,
        };
        let bytes = result.encode_vec();
        crate::fault::point("remote.ac");
        self.backend.put(&ac, &bytes)?;
        self.counters
            .bytes_up
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Ok(mut u) = self.uploaded.lock() {
            u.push(action.id.to_string());
        }
        if let Ok(mut d) = self.damaged.lock() {
            d.remove(&action.key);
        }
        Ok(true)
    }

    fn upload_tree(
        &self,
        dir: &std::path::Path,
        existing: Existing,
    ) -> Result<(String, u64), RemoteError> {
        pack::upload_tree(&*self.backend, dir, self.jobs, existing, &self.counters)
    }
}

/// Hashes what it writes (an artifact's blake3, recorded beside it like a fetch does).
struct Blake3Writer<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Blake3Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(upload: bool) -> Settings {
        Settings {
            url: "file:///srv/project-cache".into(),
            upload,
        }
    }

    #[test]
    fn the_command_line_overrides_the_project_s_cache() {
        let none = Choice::default();
        let r = open(Some(&settings(false)), &none, false).unwrap().unwrap();
        assert_eq!(r.describe(), "/srv/project-cache");
        assert!(!r.uploads(), "read-only unless asked");
        let other = Choice {
            url: Some("/srv/other".into()),
            upload: true,
            ..Choice::default()
        };
        let r = open(Some(&settings(false)), &other, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.describe(), "/srv/other");
        assert!(r.uploads());
        assert!(
            open(Some(&settings(true)), &none, false)
                .unwrap()
                .unwrap()
                .uploads()
        );
        let off = Choice {
            disabled: true,
            ..Choice::default()
        };
        assert!(open(Some(&settings(true)), &off, false).unwrap().is_none());
        assert!(
            open(Some(&settings(true)), &none, true).unwrap().is_none(),
            "--offline"
        );
        assert!(open(None, &none, false).unwrap().is_none());
    }

    #[test]
    fn a_builder_repairs_only_key_shaped_words() {
        let (a, b) = ("a".repeat(64), "0123456789abcdef".repeat(4));
        let keys = keys_to_repair(&format!("{a},../etc,,{b},{}", "f".repeat(63)));
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), [b, a], "sorted");
        assert!(keys_to_repair("").is_empty());
    }

    #[test]
    fn action_cache_names_are_what_bazel_caches_accept() {
        let n = ac_name(&"b".repeat(64));
        let hex = n.strip_prefix("ac/").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(n, ac_name(&"c".repeat(64)));
    }
}
