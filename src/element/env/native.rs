//! environment.d fragments simple enough to evaluate without bash.
//!
//! Sourcing costs about a millisecond of bash per image and architecture, and every image has
//! its own declared variables (IMAGE_NAME, DIB_RELEASE), so thousands of images mean thousands
//! of captures. Most fragments only export defaults: `export NAME="${NAME:-word}"`. Like
//! systemd's environment.d parser, this reads a strict subset of the shell language and
//! answers only when every line of every fragment is in it, and when nothing could make bash
//! fail or see something ccb does not model; anything else is `None` and goes to bash, which
//! then reports errors exactly as before. A line is blank, a comment, or
//! `export NAME=VALUE` with VALUE one of: a word of safe characters; a single-quoted string;
//! a double-quoted string whose only specials are `$NAME`, `${NAME}`, `${NAME-word}` and
//! `${NAME:-word}` (word: safe characters and spaces).

use std::collections::BTreeMap;

type Env = BTreeMap<String, String>;

/// Characters of an unquoted word that no expansion, quoting or splitting touches.
fn safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./:,+=@%-".contains(c)
}

fn identifier(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Names bash sets or gives a meaning to (`compgen -v` of a bare bash, the variables bash
/// reads, the capture's loop variable and its own): reading or assigning one is not modelled.
pub(super) fn reserved(name: &str) -> bool {
    const NAMES: [&str; 41] = [
        "_",
        "f",
        "REPLY",
        "CDPATH",
        "COLUMNS",
        "DIRSTACK",
        "ENV",
        "EPOCHREALTIME",
        "EPOCHSECONDS",
        "EUID",
        "EXECIGNORE",
        "FCEDIT",
        "FIGNORE",
        "FUNCNAME",
        "FUNCNEST",
        "GLOBIGNORE",
        "GLOBSORT",
        "GROUPS",
        "HOME",
        "HOSTFILE",
        "HOSTNAME",
        "HOSTTYPE",
        "IFS",
        "IGNOREEOF",
        "INPUTRC",
        "LANG",
        "LINENO",
        "LINES",
        "MACHTYPE",
        "MAIL",
        "MAILCHECK",
        "MAILPATH",
        "OLDPWD",
        "OPTARG",
        "OPTERR",
        "OPTIND",
        "OSTYPE",
        "PIPESTATUS",
        "POSIXLY_CORRECT",
        "PPID",
        "PWD",
    ];
    const MORE: [&str; 13] = [
        "PATH",
        "RANDOM",
        "SECONDS",
        "SHELL",
        "SHELLOPTS",
        "SHLVL",
        "SRANDOM",
        "TERM",
        "TIMEFORMAT",
        "TMOUT",
        "TMPDIR",
        "UID",
        "PROMPT_COMMAND",
    ];
    const PREFIXES: [&str; 6] = ["BASH", "LC_", "COMP", "HIST", "PS", "__ccb"];
    NAMES.contains(&name) || MORE.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The environment bash would capture after sourcing `bodies` in order over `start` (the
/// variables the shell begins with, all exported), or `None` when a fragment is not in the
/// subset.
pub(super) fn evaluate(bodies: &[&str], start: Env) -> Option<Env> {
    // ccb's own PATH and LC_ALL (or the manifest's) are the only reserved names the shell may
    // start with: fragments can neither read nor assign them here.
    if start
        .keys()
        .any(|k| !identifier(k) || (reserved(k) && k != "LC_ALL" && k != "PATH"))
        || start.values().any(|v| v.contains('\0'))
    {
        return None;
    }
    let mut env = start;
    for body in bodies {
        if body.contains(['\r', '\0']) {
            return None;
        }
        for line in body.lines() {
            let line = line.trim_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rest = line.strip_prefix("export")?;
            let assignment = rest.trim_start_matches([' ', '\t']);
            if assignment.len() == rest.len() {
                return None;
            }
            let (name, value) = assignment.split_once('=')?;
            if !identifier(name) || reserved(name) {
                return None;
            }
            let value = self::value(value, &env)?;
            env.insert(name.to_string(), value);
        }
    }
    Some(env)
}

/// The value of the text after `NAME=`, to the end of the line.
fn value(text: &str, env: &Env) -> Option<String> {
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'')?;
        return (!inner.contains('\'')).then(|| inner.to_string());
    }
    if let Some(inner) = text.strip_prefix('"') {
        return double_quoted(inner.strip_suffix('"')?, env);
    }
    text.chars().all(safe).then(|| text.to_string())
}

/// The inside of a double-quoted string.
fn double_quoted(text: &str, env: &Env) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '"' | '\\' | '`' | '!' => return None,
            '$' => {
                let (expanded, after) = expansion(&rest[1..], env)?;
                out.push_str(&expanded);
                rest = after;
            }
            c => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    Some(out)
}

/// The expansion after a `$`, and the text after it.
fn expansion<'t>(text: &'t str, env: &Env) -> Option<(String, &'t str)> {
    let name_end = |s: &str| {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let lookup = |name: &str| (identifier(name) && !reserved(name)).then(|| env.get(name));
    let Some(braced) = text.strip_prefix('{') else {
        let end = name_end(text);
        // Unset under `set -u` is bash's error to report.
        let value = lookup(&text[..end])??;
        return Some((value.clone(), &text[end..]));
    };
    let end = name_end(braced);
    let value = lookup(&braced[..end])?;
    let after_name = &braced[end..];
    if let Some(after) = after_name.strip_prefix('}') {
        return Some((value?.clone(), after));
    }
    let (if_empty, operand) = if let Some(o) = after_name.strip_prefix(":-") {
        (true, o)
    } else {
        (false, after_name.strip_prefix('-')?)
    };
    let close = operand.find('}')?;
    let word = &operand[..close];
    if !word.chars().all(|c| safe(c) || c == ' ') {
        return None;
    }
    let expanded = match value {
        Some(v) if !(if_empty && v.is_empty()) => v.clone(),
        _ => word.to_string(),
    };
    Some((expanded, &operand[close + 1..]))
}
