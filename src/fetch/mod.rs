//! Artifacts: files a build needs that are not packages, pinned by SHA-256.
//!
//! A `fetch` action puts one artifact into the store at `artifacts/<sha256>`, where the layer
//! actions that use it find it. The file is looked for, in order:
//! 1. in the store (fetched before: nothing to do);
//! 2. in the distdirs (`CCB_DISTDIR`, colon-separated), by the file name of its URL or by the
//!    artifact's key, as Bazel's `--distdir` does: how an operator supplies an input on a
//!    machine that cannot reach its upstream;
//! 3. at its URL (`http`, `https` or `file`).
//!
//! Whatever the origin, the bytes are hashed as they are copied into a temporary file of the
//! store, and the file is renamed into place only when the digest matches the manifest's: a
//! mismatch stores nothing and names the artifact, the expected and the actual digest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::manifest::Artifact;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FetchError {
    #[error(
        "artifact `{name}`: SHA-256 mismatch for {origin}\n  expected {expected}\n  actual   {actual}"
    )]
    #[diagnostic(
        code(ccb::fetch::mismatch),
        help("the file changed upstream, or the manifest's sha256 is wrong; nothing was stored")
    )]
    Mismatch {
        name: String,
        origin: String,
        expected: String,
        actual: String,
    },
    #[error("artifact `{name}`: cannot download {url}: {message}")]
    #[diagnostic(
        code(ccb::fetch::download),
        help(
            "on a machine that cannot reach it, put the file in a directory named by CCB_DISTDIR"
        )
    )]
    Download {
        name: String,
        url: String,
        message: String,
    },
    #[error("artifact `{name}`: {message}")]
    #[diagnostic(code(ccb::fetch::unsupported))]
    Unsupported { name: String, message: String },
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

/// Where an artifact with this digest lives in the store.
pub fn store_path(store: &Store, sha256: &str) -> PathBuf {
    store.path(&format!("artifacts/{}", sha256.to_ascii_lowercase()))
}

/// Whether the artifact is in the store already.
pub fn is_fetched(store: &Store, sha256: &str) -> bool {
    store_path(store, sha256).is_file()
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
}

/// Puts artifact `name` into the store; `progress` gets (bytes so far, total if known).
pub fn fetch(
    store: &Store,
    name: &str,
    artifact: &Artifact,
    distdirs: &[PathBuf],
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(PathBuf, Origin), FetchError> {
    let dest = store_path(store, &artifact.sha256);
    if dest.is_file() {
        return Ok((dest, Origin::Store));
    }
    let file_name = artifact
        .url
        .as_deref()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty());
    for dir in distdirs {
        for candidate in file_name.into_iter().chain([name]) {
            let path = dir.join(candidate);
            if !path.is_file() {
                continue;
            }
            let file = std::fs::File::open(&path).map_err(|source| FetchError::Io {
                name: name.into(),
                path: path.clone(),
                source,
            })?;
            let total = file.metadata().ok().map(|m| m.len());
            // A distdir file with another digest is someone else's file of that name: skip it.
            match store_verified(
                store,
                name,
                artifact,
                file,
                total,
                &path.display().to_string(),
                progress,
            ) {
                Ok(p) => return Ok((p, Origin::Distdir(path))),
                Err(FetchError::Mismatch { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let Some(url) = artifact.url.as_deref() else {
        return Err(FetchError::Unsupported {
            name: name.into(),
            message: "fetching from a Swift site is not supported yet (issue [8/8]); \
                      put the file in CCB_DISTDIR"
                .into(),
        });
    };
    if let Some(path) = url.strip_prefix("file://") {
        let file = std::fs::File::open(path).map_err(|source| FetchError::Io {
            name: name.into(),
            path: path.into(),
            source,
        })?;
        let total = file.metadata().ok().map(|m| m.len());
        let p = store_verified(store, name, artifact, file, total, url, progress)?;
        return Ok((p, Origin::Url(url.into())));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::Unsupported {
            name: name.into(),
            message: format!("`{url}` is not an http, https or file URL"),
        });
    }
    let download = |message: String| FetchError::Download {
        name: name.into(),
        url: url.into(),
        message,
    };
    let agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer, not a slow one, is an error.
        .timeout_recv_body(None)
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut response = agent.get(url).call().map_err(|e| download(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let reader = response.body_mut().as_reader();
    let p = store_verified(store, name, artifact, reader, total, url, progress).map_err(
        |e| match e {
            FetchError::Io { source, .. } => download(source.to_string()),
            e => e,
        },
    )?;
    Ok((p, Origin::Url(url.into())))
}

/// Copies `reader` into a temporary file of the store while hashing it, and renames it into
/// place if the digest matches.
fn store_verified(
    store: &Store,
    name: &str,
    artifact: &Artifact,
    mut reader: impl Read,
    total: Option<u64>,
    origin: &str,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, FetchError> {
    let dest = store_path(store, &artifact.sha256);
    let dir = dest.parent().expect("artifacts/ has a parent");
    crate::fsutil::create_dir_all(dir).map_err(StoreError::from)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io {
            name: name.into(),
            path,
            source,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(Path::new(origin))(e)),
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
        done += n as u64;
        progress(done, total);
    }
    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(FetchError::Mismatch {
            name: name.into(),
            origin: origin.into(),
            expected: artifact.sha256.to_ascii_lowercase(),
            actual,
        });
    }
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    // Read-only: builds get it through a hard link, and must never change the store's copy.
    let mut perms = tmp
        .as_file()
        .metadata()
        .map_err(io(tmp.path()))?
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    tmp.as_file()
        .set_permissions(perms)
        .map_err(io(tmp.path()))?;
    tmp.persist(&dest).map_err(|e| io(&dest)(e.error))?;
    Ok(dest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(url: Option<String>, content: &[u8]) -> Artifact {
        Artifact {
            url,
            swift: None,
            sha256: hex(&Sha256::digest(content)),
            description: None,
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
        let left: Vec<_> = std::fs::read_dir(store.path("artifacts"))
            .unwrap()
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
        assert!(matches!(err, FetchError::Download { .. }), "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:9/tool.sh"));
    }
}
