//! One redaction for everything that leaves ccb: output, logs, `--format json`, the lock.
//!
//! Three kinds of credential reach text: the user-info of a URL (`https://user:pass@host`),
//! signature-like query parameters (a Swift temp URL's `temp_url_sig`, a presigned S3 URL's
//! `X-Amz-Signature`), and the secrets ccb itself holds (passwords, application credential
//! secrets, tokens), which a server may echo back in an error body. Every [`Secret`] registers
//! its value here when it is made, so [`text`] can remove it from whatever a server says,
//! whatever the shape of the reply.
//!
//! [`Secret`]: crate::secret::Secret

use std::sync::{Mutex, PoisonError};

const MARK: &str = "***";

/// Query parameters whose values are credentials for as long as they live.
const SECRET_PARAMS: &[&str] = &[
    "sig",
    "signature",
    "token",
    "credential",
    "password",
    "secret",
];

/// Header-like and JSON-like fields a server may echo, with their values.
const SECRET_FIELDS: &[&str] = &[
    "x-auth-token",
    "x-subject-token",
    "x-storage-token",
    "authorization",
    "password",
    "secret",
];

/// Secrets shorter than this are not searched for in text: a two-letter password would
/// blank every occurrence of two common letters, and is no secret worth the name anyway.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers a secret value so that [`text`] removes it wherever it appears.
pub fn register(secret: &str) {
    if secret.len() < MIN_SECRET_LEN {
        return;
    }
    let mut all = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    if !all.iter().any(|s| s == secret) {
        all.push(secret.to_string());
        // Longest first, so a secret that contains another is removed whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// What a build's log shows where a step printed a secret input.
pub const OUTPUT_MARK: &[u8] = b"[redacted]";

/// A step's output line with every registered secret replaced by [`OUTPUT_MARK`], byte for
/// byte (a script's output need not be UTF-8).
pub fn output(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let all = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = std::borrow::Cow::Borrowed(line);
    for s in all.iter().map(String::as_bytes) {
        let Some(first) = find(&out, s) else {
            continue;
        };
        let mut next = Vec::with_capacity(out.len());
        let mut rest: &[u8] = &out;
        let mut at = Some(first);
        while let Some(i) = at {
            next.extend_from_slice(&rest[..i]);
            next.extend_from_slice(OUTPUT_MARK);
            rest = &rest[i + s.len()..];
            at = find(rest, s);
        }
        next.extend_from_slice(rest);
        out = std::borrow::Cow::Owned(next);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A URL for people and files: no user-info, no signature values, no known secret.
pub fn url(u: &str) -> String {
    known_secrets(&url_parts(u))
}

fn url_parts(u: &str) -> String {
    let (without_fragment, fragment) = match u.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (u, None),
    };
    let (base, query) = match without_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (without_fragment, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{MARK}@{host}{path}"),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_name(k, SECRET_PARAMS) => format!("{k}={MARK}"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Free text from a server, git or a tool: every URL in it redacted, the values of
/// credential fields (`X-Auth-Token: …`, `"password": "…"`) and every known secret removed.
pub fn text(t: &str) -> String {
    let words: String = t
        .split_inclusive(char::is_whitespace)
        .map(|w| {
            let trimmed = w.trim_end();
            if trimmed.contains("://") {
                let start = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
                let (lead, rest) = trimmed.split_at(start);
                format!("{lead}{}{}", url_parts(rest), &w[trimmed.len()..])
            } else {
                w.to_string()
            }
        })
        .collect();
    known_secrets(&fields(&words))
}

fn is_secret_name(name: &str, names: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    names.iter().any(|s| name.contains(s))
}

/// `Name: value` (to the end of the line) and `"name": "value"` (to the closing quote) for
/// the credential field names.
fn fields(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let hit = SECRET_FIELDS
            .iter()
            .filter_map(|f| lower[i..].find(f).map(|at| (i + at, f.len())))
            .min();
        let Some((at, len)) = hit else {
            out.push_str(&t[i..]);
            break;
        };
        let mut j = at + len;
        // The name may be quoted (JSON) and is followed by `:` or `=`.
        let bytes = t.as_bytes();
        if j < t.len() && bytes[j] == b'"' {
            j += 1;
        }
        while j < t.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < t.len() && (bytes[j] == b':' || bytes[j] == b'=') {
            j += 1;
            while j < t.len() && bytes[j] == b' ' {
                j += 1;
            }
            let quoted = j < t.len() && bytes[j] == b'"';
            let value_start = if quoted { j + 1 } else { j };
            let value_end = if quoted {
                t[value_start..]
                    .find('"')
                    .map_or(t.len(), |e| value_start + e)
            } else {
                t[value_start..]
                    .find(['\n', '\r', ',', '&', ';'])
                    .map_or(t.len(), |e| value_start + e)
            };
            out.push_str(&t[i..value_start]);
            out.push_str(MARK);
            i = value_end;
        } else {
            out.push_str(&t[i..at + len]);
            i = at + len;
        }
    }
    out
}

fn known_secrets(t: &str) -> String {
    let all = SECRETS.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = t.to_string();
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MARK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_user_info_and_signatures_are_removed_and_the_rest_kept() {
        assert_eq!(
            url("http://user:pa55@keystone.example:5000/v3?x=1"),
            "http://***@keystone.example:5000/v3?x=1"
        );
        assert_eq!(
            url("https://swift.example/v1/AUTH_x/c/o.img?temp_url_sig=abc123&temp_url_expires=9"),
            "https://swift.example/v1/AUTH_x/c/o.img?temp_url_sig=***&temp_url_expires=9"
        );
        assert_eq!(
            url("https://s3.example/b/k?X-Amz-Signature=f00d&X-Amz-Credential=AKIA"),
            "https://s3.example/b/k?X-Amz-Signature=***&X-Amz-Credential=***"
        );
        // An @ in the path is not user-info.
        assert_eq!(url("https://h.example/a@b"), "https://h.example/a@b");
        assert_eq!(url("file:///var/tmp/x"), "file:///var/tmp/x");
    }

    #[test]
    fn a_secret_printed_by_a_step_is_redacted_in_its_output() {
        register("tok-42-abcdef");
        assert_eq!(
            &*output(b"token=tok-42-abcdef, again tok-42-abcdef\xff\n"),
            b"token=[redacted], again [redacted]\xff\n"
        );
        assert_eq!(&*output(b"nothing here\n"), b"nothing here\n");
    }

    #[test]
    fn a_servers_echo_of_a_request_loses_every_credential() {
        register("correct-horse-battery");
        register("gAAAAABtoken-value-xyz");
        let body = r#"{"error": {"message": "The request you have made requires authentication. body: {\"auth\": {\"identity\": {\"password\": {\"user\": {\"name\": \"demo\", \"password\": \"correct-horse-battery\"}}}}}", "code": 401}}"#;
        let clean = text(body);
        assert!(!clean.contains("correct-horse-battery"), "{clean}");
        assert!(clean.contains("requires authentication"), "{clean}");
        let headers = "Forbidden. Headers: X-Auth-Token: gAAAAABtoken-value-xyz\nHost: swift";
        let clean = text(headers);
        assert!(!clean.contains("gAAAAABtoken"), "{clean}");
        assert!(clean.contains("Host: swift"), "{clean}");
        // A field seen without a registered value is still cut at its value.
        assert_eq!(
            text("x-storage-token: abc, next"),
            "x-storage-token: ***, next"
        );
        assert_eq!(
            text("fetching (https://u:p@git.example/r.git)"),
            "fetching (https://***@git.example/r.git)"
        );
    }
}
