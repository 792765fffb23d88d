//! A Swift (object storage v1) client for the data path, over ureq.
//!
//! Every object is verified. Files are read once: their MD5 is computed while they stream and
//! compared with the ETag Swift computed of what it stored (a mismatch removes the object and
//! fails). Small bodies (manifests, pointers, `current`) go with their MD5 as `ETag`, which
//! Swift checks before storing (422, nothing stored). Large files become Static Large Objects
//! whose manifest carries the SLO etag; that etag is not a content digest, so the whole file's
//! SHA-256 goes along as `X-Object-Meta-Sha256`.
//!
//! Requests are retried with exponential backoff on 5xx, 498 (rate limited), 429 and dropped
//! connections; a 401 renews the token once. Segment names derive from the file's SHA-256 and
//! the segment size, so a re-run after an interruption lists what is there and sends only the
//! segments that are missing or different.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use md5::{Digest, Md5};

use super::{ObjectInfo, ObjectStore, PublishError, PutOutcome, layout};
use crate::secret::Secret;
use crate::ui::progress::Transfer;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SwiftError {
    #[error("{site}: {method} {object}: HTTP {status}{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    #[diagnostic(code(ccb::swift::http))]
    Http {
        site: String,
        method: String,
        object: String,
        status: u16,
        detail: Option<String>,
    },
    /// The transport's error as redacted text, not as a `#[source]`: ureq's errors can carry
    /// the request's URL (a temporary URL's signature, a token in a query) and a source chain
    /// is printed unredacted by every renderer.
    #[error("{site}: {method} {object}: {message}")]
    #[diagnostic(code(ccb::swift::transport))]
    Transport {
        site: String,
        method: String,
        object: String,
        message: String,
    },
    #[error("{site}: container `{container}` does not exist")]
    #[diagnostic(
        code(ccb::swift::no_container),
        help("create it first (as upstream expects): `openstack container create {container}`")
    )]
    NoContainer { site: String, container: String },
    #[error("{site}: {message}")]
    #[diagnostic(code(ccb::swift::invalid))]
    Invalid { site: String, message: String },
}

/// Where tokens come from: Keystone (renewed before they expire) or a fixed token.
pub trait Auth: Send + Sync {
    /// A token valid for a while yet, and the storage URL (`…/v1/AUTH_<project>`).
    fn credentials(&self) -> Result<(Secret, String), PublishError>;
    /// The token was refused: the next call must get a new one.
    fn invalidate(&self);
}

/// Swift's limits, from `GET /info`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_size: u64,
    pub max_manifest_segments: u64,
}

pub struct SwiftSite {
    site: String,
    container: String,
    auth: std::sync::Arc<dyn Auth>,
    agent: ureq::Agent,
    segment_size: u64,
    jobs: usize,
    limits: Limits,
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
    /// The MD5 of a file range as it was sent (computed while streaming it).
    sent_md5: Option<String>,
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A range of a file, re-read from the start on every attempt.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        progress: Option<&'a Transfer>,
    },
}

const ATTEMPTS: u32 = 6;

fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes an object name for a URL path (keeping `/`).
fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_query(v: &str) -> String {
    encode_path(v).replace('/', "%2F")
}

/// Reads a file range, counting bytes into a progress bar.
struct RangeReader<'a> {
    file: std::io::Take<std::fs::File>,
    progress: Option<&'a Transfer>,
    sent: u64,
    md5: Md5,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.sent += n as u64;
        self.md5.update(&buf[..n]);
        if let Some(p) = self.progress {
            p.add(n as u64);
        }
        Ok(n)
    }
}

impl SwiftSite {
    /// Connects: checks the container exists and reads Swift's limits.
    pub fn connect(
        site: &str,
        container: &str,
        auth: Box<dyn Auth>,
        agent: ureq::Agent,
        segment_size: u64,
        jobs: usize,
    ) -> Result<Self, PublishError> {
        let mut s = Self {
            site: site.to_string(),
            container: container.to_string(),
            auth: std::sync::Arc::from(auth),
            agent,
            segment_size,
            jobs: jobs.max(1),
            limits: Limits {
                max_file_size: 5 * (1 << 30),
                max_manifest_segments: 1000,
            },
        };
        s.limits = s.info()?;
        if s.segment_size == 0 || s.segment_size > s.limits.max_file_size {
            return Err(SwiftError::Invalid {
                site: s.site.clone(),
                message: format!(
                    "segment size {} is not between 1 byte and the site's max_file_size ({})",
                    s.segment_size, s.limits.max_file_size
                ),
            }
            .into());
        }
        let r = s.request("HEAD", "", &[], &[], Body::Empty)?;
        match r.status {
            200..=299 => Ok(s),
            404 => Err(SwiftError::NoContainer {
                site: s.site.clone(),
                container: s.container.clone(),
            }
            .into()),
            status => Err(s.http_error("HEAD", "", status, &r.body)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn info(&self) -> Result<Limits, PublishError> {
        let (_, storage) = self.auth.credentials()?;
        // /info lives at the proxy's root: strip `/v1/AUTH_…`.
        let root = match storage.find("/v1/") {
            Some(i) => &storage[..i],
            None => storage.trim_end_matches('/'),
        };
        let url = format!("{root}/info");
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.transport("GET", "/info", e))?;
        let body = resp.body_mut().read_to_vec().unwrap_or_default();
        let mut limits = Limits {
            max_file_size: 5 * (1 << 30),
            max_manifest_segments: 1000,
        };
        if resp.status().is_success()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            if let Some(n) = v["swift"]["max_file_size"].as_u64() {
                limits.max_file_size = n;
            }
            if let Some(n) = v["slo"]["max_manifest_segments"].as_u64() {
                limits.max_manifest_segments = n;
            }
        }
        Ok(limits)
    }

    fn transport(&self, method: &str, object: &str, e: ureq::Error) -> PublishError {
        SwiftError::Transport {
            site: self.site.clone(),
            method: method.into(),
            object: object.into(),
            message: crate::redact::text(&e.to_string()),
        }
        .into()
    }

    fn http_error(&self, method: &str, object: &str, status: u16, body: &[u8]) -> PublishError {
        // A server may echo the request (its token, the password of a token request).
        let text = crate::redact::text(&String::from_utf8_lossy(body));
        let detail = text.trim();
        SwiftError::Http {
            site: self.site.clone(),
            method: method.into(),
            object: if object.is_empty() {
                self.container.clone()
            } else {
                format!("{}/{object}", self.container)
            },
            status,
            detail: (!detail.is_empty() && !detail.starts_with('<'))
                .then(|| detail.chars().take(300).collect()),
        }
        .into()
    }

    /// One request with retries. `object` is relative to the container ("" for the
    /// container itself); `query` is appended as is.
    fn request(
        &self,
        method: &str,
        object: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Reply, PublishError> {
        let mut renewed = false;
        let mut delay = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (token, storage) = self.auth.credentials()?;
            let mut req = ureq::http::Request::builder()
                .method(method)
                .uri(self.url(&storage, object, query))
                .header("X-Auth-Token", token.expose());
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let (result, sent_md5) = self.send(method, object, req, &body);
            let retryable = match &result {
                Err(PublishError::Swift(SwiftError::Transport { .. })) => true,
                Ok(resp) => {
                    let s = resp.status().as_u16();
                    s >= 500 || s == 498 || s == 429
                }
                Err(_) => false,
            };
            let result = match result {
                Ok(resp) if resp.status().as_u16() == 401 && !renewed => {
                    // An expired or revoked token: renew once.
                    self.auth.invalidate();
                    renewed = true;
                    continue;
                }
                r => r,
            };
            if retryable && attempt < ATTEMPTS {
                std::thread::sleep(delay);
                delay *= 2;
                continue;
            }
            let mut resp = result?;
            let headers = resp.headers().clone();
            let body = if method == "HEAD" {
                Vec::new()
            } else {
                resp.body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()
                    .map_err(|e| self.transport(method, object, e))?
            };
            return Ok(Reply {
                status: resp.status().as_u16(),
                headers,
                body,
                sent_md5,
            });
        }
    }

    /// The URL of `object` (the container itself when empty) with its query.
    fn url(&self, storage: &str, object: &str, query: &[(&str, String)]) -> String {
        let mut url = format!(
            "{}/{}",
            storage.trim_end_matches('/'),
            encode_path(&self.container)
        );
        if !object.is_empty() {
            url.push('/');
            url.push_str(&encode_path(object));
        }
        if !query.is_empty() {
            url.push('?');
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.to_string()
                    } else {
                        format!("{k}={}", encode_query(v))
                    }
                })
                .collect();
            url.push_str(&q.join("&"));
        }
        url
    }

    /// One attempt: the request with its body. A file range counts its bytes into its
    /// progress (taken back when nothing was stored) and returns the MD5 of what it sent
    /// when it sent it all.
    fn send(
        &self,
        method: &str,
        object: &str,
        req: ureq::http::request::Builder,
        body: &Body,
    ) -> (
        Result<ureq::http::Response<ureq::Body>, PublishError>,
        Option<String>,
    ) {
        match body {
            Body::Empty => {
                let req = if method == "PUT" || method == "POST" {
                    req.header("Content-Length", "0")
                } else {
                    req
                };
                (self.run(method, object, req.body(())), None)
            }
            Body::Bytes(b) => (
                self.run(
                    method,
                    object,
                    req.header("Content-Length", b.len().to_string())
                        .body(b.to_vec()),
                ),
                None,
            ),
            Body::File {
                path,
                offset,
                len,
                progress,
            } => {
                let opened = std::fs::File::open(path)
                    .map_err(|e| self.invalid(format!("open {}: {e}", path.display())))
                    .and_then(|mut f| {
                        f.seek(SeekFrom::Start(*offset))
                            .map_err(|e| self.invalid(format!("seek {}: {e}", path.display())))?;
                        Ok(f)
                    });
                let f = match opened {
                    Ok(f) => f,
                    Err(e) => return (Err(e), None),
                };
                let mut reader = RangeReader {
                    file: f.take(*len),
                    progress: *progress,
                    sent: 0,
                    md5: Md5::new(),
                };
                let r = self.run(
                    method,
                    object,
                    req.header("Content-Length", len.to_string())
                        .body(ureq::SendBody::from_reader(&mut reader)),
                );
                // An attempt that stored nothing will be sent again: take back its bytes.
                let stored = r.as_ref().is_ok_and(|resp| resp.status().is_success());
                if !stored && let Some(p) = progress {
                    p.sub(reader.sent);
                }
                let sent_md5 = (reader.sent == *len).then(|| hex(&reader.md5.clone().finalize()));
                (r, sent_md5)
            }
        }
    }

    fn run(
        &self,
        method: &str,
        object: &str,
        req: Result<ureq::http::Request<impl ureq::AsSendBody>, ureq::http::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, PublishError> {
        req.map_err(|e| self.invalid(e.to_string())).and_then(|r| {
            self.agent
                .run(r)
                .map_err(|e| self.transport(method, object, e))
        })
    }

    fn invalid(&self, message: String) -> PublishError {
        SwiftError::Invalid {
            site: self.site.clone(),
            message,
        }
        .into()
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Lists objects under `prefix`, following `marker` paging; entries carry the raw listing
    /// fields (name, bytes, hash).
    fn list_raw(&self, prefix: &str) -> Result<Vec<(String, u64, String)>, PublishError> {
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = vec![
                ("format", "json".to_string()),
                ("limit", "10000".to_string()),
            ];
            if !prefix.is_empty() {
                query.push(("prefix", prefix.to_string()));
            }
            if !marker.is_empty() {
                query.push(("marker", marker.clone()));
            }
            let r = self.request("GET", "", &query, &[], Body::Empty)?;
            if r.status == 404 {
                return Err(SwiftError::NoContainer {
                    site: self.site.clone(),
                    container: self.container.clone(),
                }
                .into());
            }
            if !(200..300).contains(&r.status) {
                return Err(self.http_error("GET", "", r.status, &r.body));
            }
            let page: Vec<serde_json::Value> = if r.body.is_empty() {
                vec![]
            } else {
                serde_json::from_slice(&r.body)
                    .map_err(|e| self.invalid(format!("listing is not JSON: {e}")))?
            };
            let n = page.len();
            for e in page {
                if let Some(name) = e["name"].as_str() {
                    out.push((
                        name.to_string(),
                        e["bytes"].as_u64().unwrap_or(0),
                        e["hash"].as_str().unwrap_or("").to_string(),
                    ));
                    marker = name.to_string();
                }
            }
            if n < 10000 {
                return Ok(out);
            }
        }
    }

    fn put_single(
        &self,
        name: &str,
        file: &Path,
        size: u64,
        sha256: &str,
        progress: &Transfer,
    ) -> Result<(), PublishError> {
        let r = self.request(
            "PUT",
            name,
            &[],
            &[
                ("X-Object-Meta-Sha256", sha256.to_string()),
                ("Content-Type", "application/octet-stream".into()),
            ],
            Body::File {
                path: file,
                offset: 0,
                len: size,
                progress: Some(progress),
            },
        )?;
        if r.status != 201 {
            return Err(self.http_error("PUT", name, r.status, &r.body));
        }
        self.check_etag(name, &r)
    }

    /// Files are streamed once: their MD5 is computed on the way and compared with the ETag
    /// Swift computed of what it stored (one read instead of two). An object that does not
    /// match is removed and the upload fails.
    fn check_etag(&self, name: &str, r: &Reply) -> Result<(), PublishError> {
        let stored = Self::header(r, "etag").map(|e| e.trim_matches('"').to_ascii_lowercase());
        if stored.is_some() && stored == r.sent_md5 {
            return Ok(());
        }
        let _ = self.request("DELETE", name, &[], &[], Body::Empty);
        Err(self.invalid(format!(
            "{name}: Swift stored MD5 {} but ccb sent {}: the object was removed",
            stored.as_deref().unwrap_or("(none)"),
            r.sent_md5.as_deref().unwrap_or("(incomplete)")
        )))
    }

    fn put_large(
        &self,
        name: &str,
        file: &Path,
        size: u64,
        sha256: &str,
        progress: &Transfer,
    ) -> Result<(), PublishError> {
        let seg = self.segment_size;
        let count = size.div_ceil(seg);
        if count > self.limits.max_manifest_segments {
            return Err(self.invalid(format!(
                "{} would need {count} segments of {seg} bytes; the site allows {}: use a \
                 larger --segment-size",
                file.display(),
                self.limits.max_manifest_segments
            )));
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        let prefix = layout::segments_prefix(base, sha256, seg);
        let md5s = self.put_segments(name, file, &prefix, size, progress)?;
        self.put_manifest(name, &prefix, size, sha256, &md5s)
    }

    /// Uploads the segments of `file` (for object `name`) under `prefix`, `jobs` at a time,
    /// keeping those an interrupted run already sent; their MD5s in order.
    fn put_segments(
        &self,
        name: &str,
        file: &Path,
        prefix: &str,
        size: u64,
        progress: &Transfer,
    ) -> Result<Vec<String>, PublishError> {
        let count = size.div_ceil(self.segment_size);
        // What an earlier, interrupted run already sent.
        let existing: Segments = self
            .list_raw(prefix)?
            .into_iter()
            .map(|(n, b, h)| (n, (b, h)))
            .collect();
        let etags: Vec<Mutex<Option<String>>> = (0..count).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let failure: Mutex<Option<PublishError>> = Mutex::new(None);
        let fail = |e: PublishError| {
            if let Ok(mut f) = failure.lock() {
                f.get_or_insert(e);
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.min(count as usize) {
                scope.spawn(|| {
                    loop {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            return;
                        }
                        if crate::interrupt::requested() {
                            // The segments sent so far stay: the next run resumes from them.
                            fail(self.invalid(crate::interrupt::io_error().to_string()));
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if i >= count {
                            return;
                        }
                        match self.put_segment(file, prefix, i, size, &existing, progress) {
                            Ok(md5) => {
                                if let Ok(mut slot) = etags[i as usize].lock() {
                                    *slot = Some(md5);
                                }
                                crate::fault::point("swift.segment");
                            }
                            Err(e) => return fail(e),
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().ok().flatten() {
            return Err(e);
        }
        etags
            .into_iter()
            .enumerate()
            .map(|(i, slot)| {
                slot.into_inner()
                    .ok()
                    .flatten()
                    .ok_or_else(|| self.invalid(format!("segment {i} of {name} was not uploaded")))
            })
            .collect()
    }

    /// Uploads segment `i` of `file` (unless an interrupted run already sent this range, byte
    /// for byte: same size and MD5); its MD5.
    fn put_segment(
        &self,
        file: &Path,
        prefix: &str,
        i: u64,
        size: u64,
        existing: &Segments,
        progress: &Transfer,
    ) -> Result<String, PublishError> {
        let offset = i * self.segment_size;
        let len = self.segment_size.min(size - offset);
        let seg_name = format!("{prefix}{i:08}");
        if let Some((bytes, hash)) = existing.get(&seg_name)
            && *bytes == len
        {
            let md5 = md5_of_range(file, offset, len).map_err(|e| self.invalid(e))?;
            if *hash == md5 {
                progress.add(len);
                return Ok(md5);
            }
        }
        let r = self.request(
            "PUT",
            &seg_name,
            &[],
            &[("Content-Type", "application/octet-stream".into())],
            Body::File {
                path: file,
                offset,
                len,
                progress: Some(progress),
            },
        )?;
        if r.status != 201 {
            return Err(self.http_error("PUT", &seg_name, r.status, &r.body));
        }
        self.check_etag(&seg_name, &r)?;
        Ok(r.sent_md5.clone().unwrap_or_default())
    }

    /// The static large object's manifest: the segments under `prefix` with their MD5s,
    /// checked by Swift against the MD5 of their concatenation.
    fn put_manifest(
        &self,
        name: &str,
        prefix: &str,
        size: u64,
        sha256: &str,
        md5s: &[String],
    ) -> Result<(), PublishError> {
        let seg = self.segment_size;
        let mut manifest = Vec::new();
        let mut concat = String::new();
        for (i, md5) in md5s.iter().enumerate() {
            let offset = i as u64 * seg;
            manifest.push(serde_json::json!({
                "path": format!("/{}/{prefix}{i:08}", self.container),
                "etag": md5,
                "size_bytes": seg.min(size - offset),
            }));
            concat.push_str(md5);
        }
        let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
        crate::fault::point("swift.slo");
        let r = self.request(
            "PUT",
            name,
            &[("multipart-manifest", "put".into())],
            &[
                ("ETag", md5_hex(concat.as_bytes())),
                ("X-Object-Meta-Sha256", sha256.to_string()),
                ("Content-Type", "application/octet-stream".into()),
            ],
            Body::Bytes(&body),
        )?;
        if r.status != 201 {
            return Err(self.http_error("PUT", name, r.status, &r.body));
        }
        Ok(())
    }
}

/// Segments already in the container, by name: their size and MD5.
type Segments = std::collections::BTreeMap<String, (u64, String)>;

impl SwiftSite {
    /// A PUT of `data` that Swift verifies against `etag` (its MD5): a mismatch is refused
    /// with 422 and nothing is stored. Public for the tests that prove it.
    pub fn put_bytes_with_etag(
        &self,
        name: &str,
        data: &[u8],
        etag: &str,
        content_type: &str,
        create_only: bool,
    ) -> Result<PutOutcome, PublishError> {
        let mut headers = vec![
            ("ETag", etag.to_string()),
            ("Content-Type", content_type.to_string()),
        ];
        if create_only {
            // An overwrite guard, not a lock: Swift checks existence and writes without one.
            headers.push(("If-None-Match", "*".into()));
        }
        let r = self.request("PUT", name, &[], &headers, Body::Bytes(data))?;
        match r.status {
            201 => Ok(PutOutcome::Written),
            412 if create_only => Ok(PutOutcome::Exists),
            // Two PUTs of one name at once: Swift keeps the newer timestamp and answers the
            // older with 202. Not an error: the name holds a newer write (a create-only
            // writer lost the race), and whoever needs the value reads it back.
            202 if create_only => Ok(PutOutcome::Exists),
            202 => Ok(PutOutcome::Written),
            s => Err(self.http_error("PUT", name, s, &r.body)),
        }
    }
}

fn md5_of_range(path: &Path, offset: u64, len: u64) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("seek {}: {e}", path.display()))?;
    let mut r = f.take(len);
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    if n_total != len {
        return Err(format!(
            "{} is shorter than expected ({n_total} of {len} bytes at offset {offset})",
            path.display()
        ));
    }
    Ok(hex(&h.finalize()))
}

impl ObjectStore for SwiftSite {
    fn describe(&self) -> String {
        format!("{} (container {})", self.site, self.container)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PublishError> {
        let r = self.request(
            "GET",
            name,
            &[],
            &[("X-Newest", "true".into())],
            Body::Empty,
        )?;
        match r.status {
            200 => Ok(Some(r.body)),
            404 => Ok(None),
            s => Err(self.http_error("GET", name, s, &r.body)),
        }
    }

    fn head(&self, name: &str) -> Result<Option<ObjectInfo>, PublishError> {
        let r = self.request(
            "HEAD",
            name,
            &[],
            &[("X-Newest", "true".into())],
            Body::Empty,
        )?;
        match r.status {
            200 | 204 => Ok(Some(ObjectInfo {
                name: name.to_string(),
                bytes: Self::header(&r, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                sha256: Self::header(&r, "x-object-meta-sha256").map(str::to_string),
            })),
            404 => Ok(None),
            s => Err(self.http_error("HEAD", name, s, &r.body)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PublishError> {
        Ok(self
            .list_raw(prefix)?
            .into_iter()
            .map(|(name, bytes, _)| ObjectInfo {
                name,
                bytes,
                sha256: None,
            })
            .collect())
    }

    fn put_bytes(
        &self,
        name: &str,
        data: &[u8],
        content_type: &str,
        create_only: bool,
    ) -> Result<PutOutcome, PublishError> {
        self.put_bytes_with_etag(name, data, &md5_hex(data), content_type, create_only)
    }

    fn put_file(
        &self,
        name: &str,
        file: &Path,
        size: u64,
        sha256: &str,
        progress: &Transfer,
    ) -> Result<(), PublishError> {
        if size > self.segment_size {
            self.put_large(name, file, size, sha256, progress)
        } else {
            self.put_single(name, file, size, sha256, progress)
        }
    }

    fn copy(&self, from: &str, to: &str) -> Result<(), PublishError> {
        let source = format!("/{}/{}", self.container, from);
        // A large object: copy its manifest (the segments are shared), not its content.
        let is_slo = {
            let r = self.request("HEAD", from, &[], &[], Body::Empty)?;
            if r.status == 404 {
                return Err(self.http_error("HEAD", from, 404, &[]));
            }
            Self::header(&r, "x-static-large-object")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        let query: Vec<(&str, String)> = if is_slo {
            vec![("multipart-manifest", "get".into())]
        } else {
            vec![]
        };
        let r = self.request(
            "PUT",
            to,
            &query,
            &[("X-Copy-From", encode_path(&source))],
            Body::Empty,
        )?;
        if r.status != 201 {
            return Err(self.http_error("PUT", to, r.status, &r.body));
        }
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), PublishError> {
        let r = self.request("DELETE", name, &[], &[], Body::Empty)?;
        match r.status {
            200..=299 | 404 => Ok(()),
            s => Err(self.http_error("DELETE", name, s, &r.body)),
        }
    }

    fn open_read(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::readat::ReadAt>, PublishError> {
        use crate::inspect::remote::{self, HttpRange, Opened};
        let (_, storage) = self.auth.credentials()?;
        let url = format!(
            "{}/{}/{}",
            storage.trim_end_matches('/'),
            encode_path(&self.container),
            encode_path(name)
        );
        let auth = self.auth.clone();
        let headers: remote::Headers = Box::new(move || {
            let (token, _) = auth.credentials().map_err(|e| e.to_string())?;
            Ok(vec![("X-Auth-Token".to_string(), token)])
        });
        let site_err = |source| PublishError::Remote {
            site: self.site.clone(),
            source,
        };
        match HttpRange::open(&url, headers).map_err(site_err)? {
            Opened::Ranges(r) => Ok(std::sync::Arc::new(r)),
            Opened::WholeOnly { .. } => Err(PublishError::NoRanges {
                site: self.site.clone(),
                name: name.to_string(),
            }),
        }
    }

    fn read_acl(&self) -> Result<Option<(String, String)>, PublishError> {
        let r = self.request("HEAD", "", &[], &[], Body::Empty)?;
        match r.status {
            200..=299 => Ok(Some((
                self.container.clone(),
                Self::header(&r, "x-container-read")
                    .unwrap_or_default()
                    .to_string(),
            ))),
            s => Err(self.http_error("HEAD", "", s, &r.body)),
        }
    }

    fn segment_sets(&self) -> Result<Vec<(String, String)>, PublishError> {
        let mut sets = std::collections::BTreeMap::new();
        for (name, _, _) in self.list_raw(layout::SEGMENTS)? {
            // segments/<file>/<sha256>/<size>/<index>
            let parts: Vec<&str> = name.split('/').collect();
            if parts.len() == 5 {
                sets.insert(
                    format!("{}/{}/{}/{}/", parts[0], parts[1], parts[2], parts[3]),
                    parts[2].to_string(),
                );
            }
        }
        Ok(sets.into_iter().collect())
    }
}
