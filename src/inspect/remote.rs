//! Images over HTTP: a [`ReadAt`] that fetches only the blocks a check touches, with range
//! requests, so inspecting a multi-GiB image reads a few MiB of it. A server that does not
//! serve ranges gets the whole file downloaded once into a temporary file instead.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use super::ReadAt;
use crate::secret::Secret;

/// Fetch granularity: large enough that a qcow2 L2 table or a directory costs one request.
const BLOCK: u64 = 1 << 20;
/// Blocks kept in memory (64 MiB at most).
const CACHE_BLOCKS: usize = 64;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RemoteError {
    #[error("{url}: {message}")]
    #[diagnostic(code(ccb::inspect::remote))]
    Http { url: String, message: String },
}

impl RemoteError {
    /// Built only here, so no URL reaches a message with its password or signature, and no
    /// server's or HTTP client's words with a credential they echo.
    fn http(url: &str, message: &str) -> Self {
        Self::Http {
            url: crate::redact::url(url),
            message: crate::redact::text(message),
        }
    }
}

/// Extra request headers (an `X-Auth-Token`), asked for on every request so a renewed token
/// is used.
pub type Headers = Box<dyn Fn() -> Result<Vec<(String, Secret)>, String> + Send + Sync>;

/// Fetched blocks by index, and their order of arrival (the oldest is dropped first).
type BlockCache = (HashMap<u64, Vec<u8>>, Vec<u64>);

pub struct HttpRange {
    agent: ureq::Agent,
    url: String,
    size: u64,
    headers: Headers,
    cache: Mutex<BlockCache>,
    /// Bytes fetched so far (for the report).
    fetched: std::sync::atomic::AtomicU64,
}

/// How an object can be read: by ranges, or only whole.
pub enum Opened {
    Ranges(HttpRange),
    WholeOnly { size: Option<u64> },
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

impl HttpRange {
    /// Asks the server (one `bytes=0-0` request) whether it serves ranges and how big the
    /// object is.
    pub fn open(url: &str, headers: Headers) -> Result<Opened, RemoteError> {
        let agent = agent();
        let err = |message: String| RemoteError::http(url, &message);
        let mut req = agent.get(url).header("Range", "bytes=0-0");
        for (k, v) in headers().map_err(err)? {
            req = req.header(k, v.expose());
        }
        let mut resp = req.call().map_err(|e| err(e.to_string()))?;
        let status = resp.status().as_u16();
        let content_range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Drain a little: a server ignoring the range sends the whole body.
        let _ = resp.body_mut().with_config().limit(1 << 16).read_to_vec();
        match status {
            206 => {
                let size = content_range
                    .as_deref()
                    .and_then(|c| c.rsplit('/').next())
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| {
                        err("a 206 reply without a total size in Content-Range".into())
                    })?;
                Ok(Opened::Ranges(HttpRange {
                    agent,
                    url: url.to_string(),
                    size,
                    headers,
                    cache: Mutex::new((HashMap::new(), Vec::new())),
                    fetched: 0.into(),
                }))
            }
            200 => Ok(Opened::WholeOnly { size: length }),
            404 => Err(err("not found (HTTP 404)".into())),
            s => Err(err(format!("HTTP {s}"))),
        }
    }

    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn block(&self, index: u64) -> std::io::Result<Vec<u8>> {
        if let Ok(c) = self.cache.lock()
            && let Some(b) = c.0.get(&index)
        {
            return Ok(b.clone());
        }
        let start = index * BLOCK;
        let end = (start + BLOCK).min(self.size) - 1;
        let io = |m: String| {
            std::io::Error::other(format!(
                "{}: {}",
                crate::redact::url(&self.url),
                crate::redact::text(&m)
            ))
        };
        let mut attempt = 0;
        let data = loop {
            attempt += 1;
            let mut req = self
                .agent
                .get(&self.url)
                .header("Range", format!("bytes={start}-{end}"));
            for (k, v) in (self.headers)().map_err(io)? {
                req = req.header(k, v.expose());
            }
            let result = req.call();
            match result {
                Ok(mut resp) if resp.status().as_u16() == 206 => {
                    let data = resp
                        .body_mut()
                        .with_config()
                        .limit(BLOCK + 1)
                        .read_to_vec()
                        .map_err(|e| io(e.to_string()))?;
                    if data.len() as u64 != end - start + 1 {
                        return Err(io(format!(
                            "asked for bytes {start}-{end}, got {} bytes",
                            data.len()
                        )));
                    }
                    break data;
                }
                Ok(resp) if resp.status().is_server_error() && attempt < 4 => {}
                Ok(resp) => return Err(io(format!("range request: HTTP {}", resp.status()))),
                Err(_) if attempt < 4 => {}
                Err(e) => return Err(io(e.to_string())),
            }
            std::thread::sleep(Duration::from_millis(200 << attempt));
        };
        self.fetched
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut c) = self.cache.lock() {
            if c.1.len() >= CACHE_BLOCKS {
                let old = c.1.remove(0);
                c.0.remove(&old);
            }
            c.0.insert(index, data.clone());
            c.1.push(index);
        }
        Ok(data)
    }
}

impl ReadAt for HttpRange {
    fn size(&self) -> u64 {
        self.size
    }

    fn fetched_bytes(&self) -> Option<u64> {
        Some(self.fetched())
    }

    /// One plain GET whose body goes through the hash as it arrives: no copy on disk, one
    /// buffer in memory, and one request where reading by blocks would make one per MiB
    /// (5 120 for a 5 GiB image) and empty the block cache on the way.
    fn sha256(&self) -> std::io::Result<String> {
        use sha2::Digest;
        let io = |m: String| {
            std::io::Error::other(format!(
                "{}: {}",
                crate::redact::url(&self.url),
                crate::redact::text(&m)
            ))
        };
        let mut req = self.agent.get(&self.url);
        for (k, v) in (self.headers)().map_err(io)? {
            req = req.header(k, v.expose());
        }
        let mut resp = req.call().map_err(|e| io(e.to_string()))?;
        if resp.status().as_u16() != 200 {
            return Err(io(format!("HTTP {}", resp.status())));
        }
        let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            total += n as u64;
        }
        self.fetched
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        if total != self.size {
            return Err(io(format!(
                "the object is {total} bytes, its ranges said {}",
                self.size
            )));
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("read of {} bytes at {offset} is past the end", buf.len()),
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let index = pos / BLOCK;
            let block = self.block(index)?;
            let within = (pos - index * BLOCK) as usize;
            let n = ((end - pos) as usize).min(block.len() - within);
            let at = (pos - offset) as usize;
            buf[at..at + n].copy_from_slice(&block[within..within + n]);
            pos += n as u64;
        }
        Ok(())
    }
}

/// Downloads a whole object into a temporary file (servers without ranges), calling
/// `progress(done, total)` as it goes.
pub fn download(
    url: &str,
    headers: &Headers,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<tempfile::NamedTempFile, RemoteError> {
    let err = |message: String| RemoteError::http(url, &message);
    let mut req = agent().get(url);
    for (k, v) in headers().map_err(err)? {
        req = req.header(k, v.expose());
    }
    let mut resp = req.call().map_err(|e| err(e.to_string()))?;
    if resp.status().as_u16() != 200 {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut tmp = tempfile::NamedTempFile::new().map_err(|e| err(e.to_string()))?;
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        tmp.write_all(&buf[..n]).map_err(|e| err(e.to_string()))?;
        done += n as u64;
        progress(done, total);
    }
    Ok(tmp)
}
