//! Finding where in a manifest an entry or field is written, for ccb's own (Rust-side) errors.
//!
//! Nickel's JSON export carries no positions, so errors found after evaluation locate their
//! target textually: the entry's key (quoted or bare), then the field name after it. Both the
//! Nickel and the TOML syntax write keys that way; when the text cannot be found, the error
//! still names the file and the entry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diag::SourceDiagnostic;
use crate::fsutil;

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '\'')
}

/// The byte range of the first whole-token occurrence of `key` at or after `from`.
fn find_key(text: &str, key: &str, from: usize) -> Option<std::ops::Range<usize>> {
    let quoted = format!("\"{key}\"");
    let mut best: Option<std::ops::Range<usize>> = None;
    if let Some(i) = text[from..].find(&quoted) {
        best = Some(from + i..from + i + quoted.len());
    }
    let mut pos = from;
    while let Some(i) = text[pos..].find(key) {
        let start = pos + i;
        let end = start + key.len();
        let before_ok = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_key_char(c) && c != '"');
        let after_ok = text[end..]
            .chars()
            .next()
            .is_none_or(|c| !is_key_char(c) && c != '"');
        if before_ok && after_ok {
            if best.as_ref().is_none_or(|b| start < b.start) {
                best = Some(start..end);
            }
            break;
        }
        pos = end;
    }
    best
}

pub(super) fn diagnostic(
    files: &BTreeMap<String, Vec<PathBuf>>,
    category: &str,
    path: &[&str],
    message: String,
    label: &str,
) -> SourceDiagnostic {
    for file in files.get(category).into_iter().flatten() {
        let Ok(text) = fsutil::read_to_string(file) else {
            continue;
        };
        let mut pos = 0;
        let mut span = None;
        for key in path {
            match find_key(&text, key, pos) {
                Some(r) => {
                    pos = r.end;
                    span = Some(r);
                }
                None if span.is_some() => break,
                None => {
                    span = None;
                    break;
                }
            }
        }
        if let Some(span) = span {
            let name = fsutil::display_path(file);
            return SourceDiagnostic::new(message).with_source(&name, text, span, label);
        }
    }
    let where_ = files
        .get(category)
        .and_then(|f| f.first())
        .map(|f| format!(" (in {})", fsutil::display_path(f)))
        .unwrap_or_default();
    SourceDiagnostic::new(format!("{message}{where_}"))
}

#[cfg(test)]
mod tests {
    use super::find_key;

    #[test]
    fn finds_quoted_and_bare_keys_as_whole_tokens() {
        let text =
            "{ debian12-devtools = { from = \"debian12\" }, debian12 = {}, \"ubuntu24.04\" = {} }";
        let r = find_key(text, "debian12", 0).unwrap();
        assert_eq!(
            &text[r.clone()],
            "\"debian12\"",
            "the quoted value comes first here"
        );
        let r = find_key(text, "ubuntu24.04", 0).unwrap();
        assert_eq!(&text[r], "\"ubuntu24.04\"");
        assert!(
            find_key(text, "debian", 0).is_none(),
            "a prefix is not a key"
        );
    }
}
