//! How a result travels: one byte stream (a tar of a tree, or an artifact's bytes) cut into
//! content-defined chunks (FastCDC), each compressed with zstd on its own and stored in the
//! CAS under the SHA-256 of its compressed bytes, plus a manifest listing them (itself a CAS
//! blob). Two streams that differ a little (a layer rebuilt with one package more, two disks
//! of related images) share most chunks, and a chunk already in the cache is not sent again.
//!
//! Nothing is copied to disk whole on either side: the stream is chunked as `tar` writes it,
//! and chunks are verified (digest, size) and decompressed straight into `tar -x` (or the
//! artifact's file). The whole stream's SHA-256 is checked at the end, and the caller checks
//! what it unpacked against the digest recorded when it was built before committing it.
//! Compression and transfers run on several threads, a bounded window of chunks at a time.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::RemoteError;
use super::backend::Backend;
use crate::process::Running;

/// Chunk sizes: small enough that related layers share most of them and that a blob is one
/// request, large enough that a GiB-sized disk is a few hundred requests.
const MIN_CHUNK: usize = 256 << 10;
const AVG_CHUNK: usize = 1 << 20;
const MAX_CHUNK: usize = 4 << 20;
/// The largest blob ccb reads from a cache (a manifest of a very large stream).
pub const MAX_BLOB: u64 = 64 << 20;
const ZSTD_LEVEL: i32 = 3;
const FORMAT: &str = "ccb-pack-v1";

/// What a pack holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackKind {
    /// A tar of a directory tree.
    Tree,
    /// A file's bytes.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub kind: PackKind,
    /// Bytes of the whole stream, uncompressed.
    pub size: u64,
    /// SHA-256 of the whole stream, uncompressed.
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkRef {
    /// SHA-256 of the compressed chunk: its CAS name.
    pub digest: String,
    /// Compressed bytes.
    pub stored: u64,
    /// Uncompressed bytes.
    pub size: u64,
}

/// Bytes and chunks moved, shared by every transfer of a build.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
    pub chunks_sent: AtomicU64,
    pub chunks_present: AtomicU64,
    /// Stored bytes of the chunks the cache already had: what sharing saved.
    pub bytes_present: AtomicU64,
}

/// What an upload does with a blob the cache already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Keep it: a blob is named by its digest, so the one there is the same (unless damaged).
    Reuse,
    /// Send it again: a lookup found the entry damaged, and a blob that exists may be the
    /// damaged one (a server-side `HEAD` cannot tell).
    Replace,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores a blob under its SHA-256 unless the cache has it (and `existing` says to reuse it);
/// returns its digest and size.
pub fn put_blob(
    backend: &dyn Backend,
    data: &[u8],
    existing: Existing,
    counters: &Counters,
) -> Result<(String, u64), RemoteError> {
    let digest = sha256_hex(data);
    let name = format!("cas/{digest}");
    if existing == Existing::Reuse && backend.head(&name)? {
        counters.chunks_present.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_present
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    } else {
        backend.put(&name, data)?;
        counters
            .bytes_up
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        counters.chunks_sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok((digest, data.len() as u64))
}

/// Reads a blob and checks it is what its name says; `None` when the cache does not have it.
pub fn get_blob(
    backend: &dyn Backend,
    digest: &str,
    size: Option<u64>,
    counters: &Counters,
) -> Result<Option<Vec<u8>>, RemoteError> {
    let Some(data) = backend.get(&format!("cas/{digest}"))? else {
        return Ok(None);
    };
    counters
        .bytes_down
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    if size.is_some_and(|s| s != data.len() as u64) || sha256_hex(&data) != digest {
        return Err(RemoteError::corrupt(format!(
            "blob {digest} does not match its name ({} bytes)",
            data.len()
        )));
    }
    Ok(Some(data))
}

/// Chunks, compresses and stores a stream; returns the manifest's digest.
pub fn upload(
    backend: &dyn Backend,
    kind: PackKind,
    source: impl Read,
    jobs: usize,
    existing: Existing,
    counters: &Counters,
) -> Result<(String, u64), RemoteError> {
    let jobs = jobs.max(1);
    let mut whole = Sha256::new();
    let mut size = 0u64;
    let chunks: Mutex<Vec<Option<ChunkRef>>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<RemoteError>> = Mutex::new(None);
    let failed = || failure.lock().map(|f| f.is_some()).unwrap_or(true);
    // A bounded queue: at most a few chunks per worker are in memory at once.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(jobs * 2);
    let rx = Mutex::new(rx);
    let read_error = std::thread::scope(|scope| -> Option<RemoteError> {
        let tx = tx;
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let next = rx.lock().ok().and_then(|r| r.recv().ok());
                    let Some((i, data)) = next else { return };
                    if failed() {
                        continue;
                    }
                    let result = zstd::bulk::compress(&data, ZSTD_LEVEL)
                        .map_err(RemoteError::Compress)
                        .and_then(|z| put_blob(backend, &z, existing, counters));
                    match result {
                        Ok((digest, stored)) => {
                            crate::fault::point("remote.upload-chunk");
                            if let Ok(mut c) = chunks.lock() {
                                c[i] = Some(ChunkRef {
                                    digest,
                                    stored,
                                    size: data.len() as u64,
                                });
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
        let cdc = fastcdc::v2020::StreamCDC::new(source, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK);
        for (i, chunk) in cdc.enumerate() {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Some(RemoteError::Read(std::io::Error::from(e))),
            };
            if failed() {
                break;
            }
            if crate::interrupt::requested() {
                return Some(RemoteError::Read(crate::interrupt::io_error()));
            }
            whole.update(&chunk.data);
            size += chunk.data.len() as u64;
            if let Ok(mut c) = chunks.lock() {
                c.push(None);
            }
            if tx.send((i, chunk.data)).is_err() {
                break;
            }
        }
        drop(tx);
        None
    });
    if let Some(e) = read_error {
        return Err(e);
    }
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let chunks: Vec<ChunkRef> = chunks
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| RemoteError::Internal("a chunk was not stored"))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        kind,
        size,
        sha256: hex(&whole.finalize()),
        chunks,
    };
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serializes");
    put_blob(backend, &bytes, existing, counters)
}

/// Reads a manifest.
pub fn manifest(
    backend: &dyn Backend,
    digest: &str,
    size: u64,
    counters: &Counters,
) -> Result<Option<Manifest>, RemoteError> {
    let Some(bytes) = get_blob(backend, digest, Some(size), counters)? else {
        return Ok(None);
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| RemoteError::undecodable(format!("manifest {digest}"), e))?;
    if m.format != FORMAT {
        return Err(RemoteError::corrupt(format!(
            "manifest {digest} is in format `{}`, not {FORMAT}",
            m.format
        )));
    }
    Ok(Some(m))
}

/// Writes a manifest's stream into `out`, every chunk verified, in order; the whole stream's
/// size and SHA-256 are checked at the end. `on_bytes(done, total)` follows the progress.
/// A chunk the cache lost is an error like a corrupt one: the caller counts it as a miss.
pub fn download(
    backend: &dyn Backend,
    m: &Manifest,
    out: &mut dyn Write,
    jobs: usize,
    counters: &Counters,
    on_bytes: &mut dyn FnMut(u64, u64),
) -> Result<(), RemoteError> {
    let window = (jobs.max(1) * 2).max(4);
    let mut whole = Sha256::new();
    let mut done = 0u64;
    for group in m.chunks.chunks(window) {
        if done > 0 {
            crate::fault::point("remote.download-chunk");
        }
        if crate::interrupt::requested() {
            return Err(RemoteError::Read(crate::interrupt::io_error()));
        }
        let fetched: Vec<Result<Vec<u8>, RemoteError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|c| {
                    scope.spawn(move || -> Result<Vec<u8>, RemoteError> {
                        let z = get_blob(backend, &c.digest, Some(c.stored), counters)?
                            .ok_or_else(|| {
                                RemoteError::corrupt(format!("chunk {} is missing", c.digest))
                            })?;
                        if c.size > MAX_CHUNK as u64 {
                            return Err(RemoteError::corrupt(format!(
                                "chunk {} claims {} bytes",
                                c.digest, c.size
                            )));
                        }
                        let data = zstd::bulk::decompress(&z, c.size as usize).map_err(|e| {
                            RemoteError::undecodable(format!("chunk {}", c.digest), e)
                        })?;
                        if data.len() as u64 != c.size {
                            return Err(RemoteError::corrupt(format!(
                                "chunk {} holds {} bytes, not {}",
                                c.digest,
                                data.len(),
                                c.size
                            )));
                        }
                        Ok(data)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(RemoteError::Internal("a download panicked")))
                })
                .collect()
        });
        for data in fetched {
            let data = data?;
            whole.update(&data);
            out.write_all(&data).map_err(RemoteError::Write)?;
            done += data.len() as u64;
            on_bytes(done, m.size);
        }
    }
    let sha = hex(&whole.finalize());
    if done != m.size || sha != m.sha256 {
        return Err(RemoteError::corrupt(format!(
            "the stream is {done} bytes with SHA-256 {sha}, its manifest says {} and {}",
            m.size, m.sha256
        )));
    }
    Ok(())
}

/// GNU tar's options that keep everything an overlayfs upper directory holds: owners by
/// number, modes, xattrs of every namespace (`trusted.overlay.opaque`, capabilities), ACLs,
/// hard links, device nodes (whiteouts are 0/0 character devices), sparse files. The archive
/// is deterministic (sorted, no atime/ctime, no pid in header names), so the same tree makes
/// the same chunks. `cp -a`'s reasoning applies: tar does all of this, well tested.
const TAR_COMMON: &[&str] = &[
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
];

/// `tar -c` of a directory's contents, its archive on stdout.
fn tar_create(dir: &Path) -> Result<Running, RemoteError> {
    Ok(crate::process::Process::new("tar")
        .arg("--create")
        .arg("--file=-")
        .arg("--directory")
        .arg(dir)
        .args(TAR_COMMON)
        .args([
            "--sort=name",
            "--format=posix",
            "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
            "--sparse",
            ".",
        ])
        .env("LC_ALL", "C")
        .start(Stdio::null(), Stdio::piped(), Stdio::piped())?)
}

/// `tar -x` into a directory, reading the archive on stdin. GNU tar refuses members that
/// leave the directory (`..`, absolute names) and does not write through links it extracted.
fn tar_extract(dir: &Path) -> Result<Running, RemoteError> {
    Ok(crate::process::Process::new("tar")
        .arg("--extract")
        .arg("--file=-")
        .arg("--directory")
        .arg(dir)
        .args(TAR_COMMON)
        .args([
            "--same-owner",
            "--same-permissions",
            "--delay-directory-restore",
        ])
        .env("LC_ALL", "C")
        .start(Stdio::piped(), Stdio::null(), Stdio::piped())?)
}

/// Packs a directory tree (as `tar` streams it) into the cache; returns its manifest's
/// digest and size.
pub fn upload_tree(
    backend: &dyn Backend,
    dir: &Path,
    jobs: usize,
    existing: Existing,
    counters: &Counters,
) -> Result<(String, u64), RemoteError> {
    let mut tar = tar_create(dir)?;
    let stderr = tar.drain_stderr();
    let stdout = tar.child.stdout.take().expect("piped");
    let sent = upload(backend, PackKind::Tree, stdout, jobs, existing, counters);
    if sent.is_err() {
        tar.stop(Duration::ZERO);
    }
    let finished = tar.finish(stderr);
    let sent = sent?;
    finished?;
    Ok(sent)
}

/// Unpacks a tree's stream into `dir` (created), straight from the cache into `tar -x`.
pub fn download_tree(
    backend: &dyn Backend,
    manifest: &Manifest,
    dir: &Path,
    jobs: usize,
    counters: &Counters,
    on_bytes: &mut dyn FnMut(u64, u64),
) -> Result<(), RemoteError> {
    if manifest.kind != PackKind::Tree {
        return Err(RemoteError::corrupt("the data is not a tree"));
    }
    crate::fsutil::create_dir_all(dir)?;
    let mut tar = tar_extract(dir)?;
    let stderr = tar.drain_stderr();
    let mut stdin = tar.child.stdin.take().expect("piped");
    let streamed = download(backend, manifest, &mut stdin, jobs, counters, on_bytes);
    drop(stdin);
    if let Err(e) = streamed {
        tar.stop(Duration::ZERO);
        return Err(e);
    }
    Ok(tar.finish(stderr)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::backend::Dir;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn a_stream_comes_back_byte_for_byte_and_an_edit_reuses_most_chunks() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path().to_path_buf());
        let c = Counters::default();
        let data = pseudo_random(12 << 20, 7);
        let (digest, size) =
            upload(&dir, PackKind::File, &data[..], 2, Existing::Reuse, &c).unwrap();
        let m = manifest(&dir, &digest, size, &c).unwrap().unwrap();
        assert!(m.chunks.len() > 4, "{} chunks", m.chunks.len());
        let mut back = Vec::new();
        download(&dir, &m, &mut back, 2, &c, &mut |_, _| {}).unwrap();
        assert_eq!(back, data);

        // A few bytes inserted near the start: the chunks after it are the same ones.
        let sent = c.chunks_sent.load(Ordering::Relaxed);
        let mut edited = data.clone();
        edited.splice(1000..1000, *b"a small edit");
        let (d2, s2) = upload(&dir, PackKind::File, &edited[..], 2, Existing::Reuse, &c).unwrap();
        let m2 = manifest(&dir, &d2, s2, &c).unwrap().unwrap();
        let new = c.chunks_sent.load(Ordering::Relaxed) - sent - 1; // the manifest
        assert!(new <= 2, "{new} of {} chunks were new", m2.chunks.len());
    }

    #[test]
    fn a_corrupt_or_missing_chunk_fails_the_download() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path().to_path_buf());
        let c = Counters::default();
        let data = pseudo_random(3 << 20, 1);
        let (digest, size) =
            upload(&dir, PackKind::File, &data[..], 1, Existing::Reuse, &c).unwrap();
        let m = manifest(&dir, &digest, size, &c).unwrap().unwrap();
        let victim = d.path().join("cas").join(&m.chunks[1].digest);
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&victim, &bytes).unwrap();
        let err = download(&dir, &m, &mut Vec::new(), 1, &c, &mut |_, _| {}).unwrap_err();
        assert!(matches!(err, RemoteError::Corrupt { .. }), "{err}");
        std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(
            download(&dir, &m, &mut Vec::new(), 1, &c, &mut |_, _| {}),
            Err(RemoteError::Corrupt { .. })
        ));
        std::fs::remove_file(&victim).unwrap();
        assert!(matches!(
            download(&dir, &m, &mut Vec::new(), 1, &c, &mut |_, _| {}),
            Err(RemoteError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_upload_that_replaces_repairs_a_damaged_chunk_that_a_reusing_one_keeps() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path().to_path_buf());
        let c = Counters::default();
        let data = pseudo_random(3 << 20, 5);
        let (digest, size) =
            upload(&dir, PackKind::File, &data[..], 1, Existing::Reuse, &c).unwrap();
        let m = manifest(&dir, &digest, size, &c).unwrap().unwrap();
        let victim = d.path().join("cas").join(&m.chunks[0].digest);
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&victim, &bytes).unwrap();
        let fails =
            |c: &Counters| download(&dir, &m, &mut Vec::new(), 1, c, &mut |_, _| {}).is_err();

        upload(&dir, PackKind::File, &data[..], 1, Existing::Reuse, &c).unwrap();
        assert!(fails(&c), "a blob that exists is not sent again");
        upload(&dir, PackKind::File, &data[..], 1, Existing::Replace, &c).unwrap();
        let mut back = Vec::new();
        download(&dir, &m, &mut back, 1, &c, &mut |_, _| {}).unwrap();
        assert!(back == data);
    }
}
