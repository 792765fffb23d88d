//! Where the remote cache lives, chosen by URL. Every backend stores two namespaces of
//! immutable entries, named as Bazel's HTTP remote-caching protocol names them:
//! `ac/<key>` (action results) and `cas/<sha256>` (blobs, named by the SHA-256 of their bytes).
//!
//! - `http://…`, `https://…`: the protocol itself (`GET`/`PUT`/`HEAD <base>/ac/<key>` and
//!   `<base>/cas/<sha256>`), as bazel-remote, nginx with WebDAV and others serve it. Basic
//!   credentials may sit in the URL (`https://user:password@host/cache`); they go in a header
//!   and never into a message.
//! - `swift://<cloud>/<container>[/<prefix>]`: a Swift container, authenticated through the
//!   `clouds.yaml` entry `<cloud>` like a publishing site. Chunking bounds every blob well
//!   below Swift's object size limit, so no blob needs to be a large object.
//! - `file:///dir` or an absolute path: a plain directory (a shared mount), written atomically.

use std::path::PathBuf;
use std::time::Duration;

use super::RemoteError;
use crate::fsutil;

/// One remote-cache store.
pub trait Backend: Send + Sync {
    /// The store for messages, without credentials.
    fn describe(&self) -> String;
    /// An entry's bytes; `None` when absent.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// Whether an entry exists.
    fn head(&self, path: &str) -> Result<bool, RemoteError>;
    /// Stores an entry; a reader sees the whole entry or none.
    fn put(&self, path: &str, data: &[u8]) -> Result<(), RemoteError>;
}

/// Opens the backend a URL names.
pub fn open(url: &str) -> Result<Box<dyn Backend>, RemoteError> {
    open_in(url, &crate::publish::clouds::Env::from_process())
}

/// Opens the backend a URL names, reading clouds.yaml (and [`super::TIMEOUT_ENV`]) where
/// `env` says.
pub fn open_in(
    url: &str,
    env: &crate::publish::clouds::Env,
) -> Result<Box<dyn Backend>, RemoteError> {
    let bad = |message: &str| RemoteError::Url {
        url: redact(url),
        message: message.to_string(),
    };
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad(
                "a file:// URL needs an absolute path (file:///srv/cache)",
            ));
        }
        return Ok(Box::new(Dir::new(PathBuf::from(rest))));
    }
    if url.starts_with('/') {
        return Ok(Box::new(Dir::new(PathBuf::from(url))));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Box::new(Http::new(url, env.vars.get(super::TIMEOUT_ENV))?));
    }
    if let Some(rest) = url.strip_prefix("swift://") {
        let mut parts = rest.splitn(3, '/');
        let cloud = parts.next().filter(|c| !c.is_empty());
        let container = parts.next().filter(|c| !c.is_empty());
        let (Some(cloud), Some(container)) = (cloud, container) else {
            return Err(bad(
                "a Swift cache is swift://<clouds.yaml entry>/<container>[/<prefix>]",
            ));
        };
        let prefix = parts.next().unwrap_or("").trim_matches('/');
        return Ok(Box::new(Swift::open(cloud, container, prefix, env)?));
    }
    Err(bad(
        "use http(s)://host/path (Bazel's HTTP cache protocol), swift://cloud/container or a \
         directory (file:///path)",
    ))
}

/// A URL for messages (see [`crate::redact::url`]).
pub fn redact(url: &str) -> String {
    crate::redact::url(url)
}

/// A name is one of the two namespaces and a hex digest: nothing else reaches a server or the
/// filesystem (a hostile answer cannot steer a path).
fn check_name(path: &str) -> Result<(), RemoteError> {
    let ok = match path.split_once('/') {
        Some(("ac" | "cas", hex)) => hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(RemoteError::EntryName(path.to_string()))
    }
}

/// A directory: `<root>/ac/<key>`, `<root>/cas/<sha256>`.
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }
}

impl Backend for Dir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        check_name(path)?;
        let p = self.root.join(path);
        // Never `read` a FIFO or device someone named like a blob: it would block forever.
        match fsutil::read_regular(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fsutil::FsError::new("read", p, e).into()),
        }
    }

    fn head(&self, path: &str) -> Result<bool, RemoteError> {
        check_name(path)?;
        Ok(self.root.join(path).is_file())
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<(), RemoteError> {
        check_name(path)?;
        fsutil::write_atomic(&self.root.join(path), data)?;
        Ok(())
    }
}

/// Bazel's HTTP remote-caching protocol.
pub struct Http {
    base: String,
    shown: String,
    authorization: Option<crate::secret::Secret>,
    agent: ureq::Agent,
}

const ATTEMPTS: u32 = 4;

impl Http {
    fn new(url: &str, timeout: Option<&String>) -> Result<Self, RemoteError> {
        let shown = redact(url);
        let (scheme, rest) = url.split_once("://").expect("checked by the caller");
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(RemoteError::Url {
                url: shown,
                message: "no host".into(),
            });
        }
        let authorization = userinfo.map(|u| {
            use base64::Engine as _;
            let decoded = percent_decode(u);
            // The password may be echoed by a server: cut from whatever ccb prints.
            if let Some((_, password)) = String::from_utf8_lossy(&decoded).split_once(':') {
                crate::redact::register(password);
            }
            crate::secret::Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            ))
        });
        let stall = stall_timeout(timeout).map_err(|message| RemoteError::Url {
            url: shown.clone(),
            message,
        })?;
        // A server that stops sending (or reading) mid-body fails the request, which the
        // build takes as a cache miss, instead of hanging it.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(stall))
            .timeout_per_read(Some(stall))
            .timeout_per_write(Some(stall))
            .build()
            .new_agent();
        Ok(Self {
            base: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            shown: shown.trim_end_matches('/').to_string(),
            authorization,
            agent,
        })
    }

    /// One request with retries on dropped connections and 5xx; the status and the body
    /// (`GET` only).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), RemoteError> {
        check_name(path)?;
        let url = format!("{}/{path}", self.base);
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = ureq::http::Request::builder().method(method).uri(&url);
            if let Some(a) = &self.authorization {
                req = req.header("Authorization", a.expose());
            }
            let result = match body {
                Some(b) => req
                    .header("Content-Type", "application/octet-stream")
                    .body(b.to_vec())
                    .map_err(ureq::Error::from)
                    .and_then(|r| self.agent.run(r)),
                None => req
                    .body(())
                    .map_err(ureq::Error::from)
                    .and_then(|r| self.agent.run(r)),
            };
            let retry = match &result {
                Err(_) => true,
                Ok(r) => r.status().is_server_error(),
            };
            if retry && attempt < ATTEMPTS {
                std::thread::sleep(delay);
                delay *= 2;
                continue;
            }
            let mut resp = result.map_err(|source| RemoteError::Transport {
                server: self.shown.clone(),
                method: method.into(),
                path: path.into(),
                source: Box::new(source),
            })?;
            let status = resp.status().as_u16();
            let data = if method == "GET" && status == 200 {
                resp.body_mut()
                    .with_config()
                    .limit(super::pack::MAX_BLOB)
                    .read_to_vec()
                    .map_err(|source| RemoteError::Transport {
                        server: self.shown.clone(),
                        method: method.into(),
                        path: path.into(),
                        source: Box::new(source),
                    })?
            } else {
                Vec::new()
            };
            return Ok((status, data));
        }
    }

    fn http_error(&self, method: &str, path: &str, status: u16) -> RemoteError {
        RemoteError::Http {
            server: self.shown.clone(),
            method: method.into(),
            path: path.into(),
            status,
        }
    }
}

/// How long a server may send or take nothing: [`super::TIMEOUT_ENV`] seconds, else two
/// minutes (generous: a busy cache on a slow link is not a stalled one).
fn stall_timeout(setting: Option<&String>) -> Result<Duration, String> {
    match setting {
        None => Ok(Duration::from_secs(120)),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!(
                "{}=`{v}` is not a number of seconds above 0",
                super::TIMEOUT_ENV
            )),
        },
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

impl Backend for Http {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        match self.request("GET", path, None)? {
            (200, data) => Ok(Some(data)),
            (404, _) => Ok(None),
            (s, _) => Err(self.http_error("GET", path, s)),
        }
    }

    fn head(&self, path: &str) -> Result<bool, RemoteError> {
        match self.request("HEAD", path, None)? {
            (200, _) => Ok(true),
            (404, _) => Ok(false),
            (s, _) => Err(self.http_error("HEAD", path, s)),
        }
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<(), RemoteError> {
        match self.request("PUT", path, Some(data))? {
            (200..=204, _) => Ok(()),
            (s, _) => Err(self.http_error("PUT", path, s)),
        }
    }
}

/// A Swift container through clouds.yaml, with the publish client.
pub struct Swift {
    site: crate::publish::swift::SwiftSite,
    prefix: String,
    shown: String,
}

impl Swift {
    fn open(
        cloud: &str,
        container: &str,
        prefix: &str,
        env: &crate::publish::clouds::Env,
    ) -> Result<Self, RemoteError> {
        use crate::publish::{clouds, keystone};
        let shown = format!("swift://{cloud}/{container}/{prefix}")
            .trim_end_matches('/')
            .to_string();
        let err = |e: crate::publish::PublishError| RemoteError::Swift {
            server: shown.clone(),
            source: Box::new(e),
        };
        let cloud = clouds::load(Some(cloud), env).map_err(|e| err(e.into()))?;
        let session = keystone::Session::new(cloud, None).map_err(|e| err(e.into()))?;
        let agent = session.agent();
        let site = crate::publish::swift::SwiftSite::connect(
            &shown,
            container,
            Box::new(session),
            agent,
            // Blobs are chunks (at most MAX_BLOB): never a large object.
            super::pack::MAX_BLOB,
            1,
        )
        .map_err(err)?;
        Ok(Self {
            site,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            shown,
        })
    }

    fn swift_err(&self, e: crate::publish::PublishError) -> RemoteError {
        RemoteError::Swift {
            server: self.shown.clone(),
            source: Box::new(e),
        }
    }
}

impl Backend for Swift {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        use crate::publish::ObjectStore;
        check_name(path)?;
        self.site
            .get(&format!("{}{path}", self.prefix))
            .map_err(|e| self.swift_err(e))
    }

    fn head(&self, path: &str) -> Result<bool, RemoteError> {
        use crate::publish::ObjectStore;
        check_name(path)?;
        self.site
            .head(&format!("{}{path}", self.prefix))
            .map(|o| o.is_some())
            .map_err(|e| self.swift_err(e))
    }

    fn put(&self, path: &str, data: &[u8]) -> Result<(), RemoteError> {
        use crate::publish::ObjectStore;
        check_name(path)?;
        // Swift checks the body against its MD5 (sent as ETag) before storing anything.
        self.site
            .put_bytes(
                &format!("{}{path}", self.prefix),
                data,
                "application/octet-stream",
                false,
            )
            .map(|_| ())
            .map_err(|e| self.swift_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_a_cache_url() {
        assert_eq!(
            redact("https://ci:s3cret@cache.example/ccb"),
            "https://***@cache.example/ccb"
        );
        assert_eq!(redact("http://h:8080/c"), "http://h:8080/c");
        assert!(!redact("https://u:p%40ss@h/x?token=abc").contains("p%40ss"));
        assert!(!redact("https://u:p%40ss@h/x?token=abc").contains("abc"));
    }

    #[test]
    fn only_cache_entry_names_reach_a_backend() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::new(d.path().to_path_buf());
        assert!(dir.put("cas/../../etc/passwd", b"x").is_err());
        assert!(dir.get("ac/abc").is_err());
        let name = format!("cas/{}", "0".repeat(64));
        dir.put(&name, b"blob").unwrap();
        assert_eq!(dir.get(&name).unwrap().as_deref(), Some(&b"blob"[..]));
        assert!(dir.head(&name).unwrap());
        assert!(!dir.head(&format!("ac/{}", "1".repeat(64))).unwrap());
    }

    #[test]
    fn urls_choose_the_backend() {
        assert!(open("file:///srv/cache").is_ok());
        assert!(open("/srv/cache").is_ok());
        assert!(open("http://127.0.0.1:1/x").is_ok());
        for bad in ["ftp://x/y", "file://rel", "swift://cloud", "cache"] {
            assert!(matches!(open(bad), Err(RemoteError::Url { .. })), "{bad}");
        }
    }
}
