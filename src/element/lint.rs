//! `ccb lint`: diskimage-builder's dib-lint rules, so elements stay clean.
//!
//! Rules (dib-lint's names): `readme` (a README.rst or README.md), `executable` (a `#!` file
//! must be executable), `shebang` (bash scripts use exactly `#!/bin/bash`), `sete`, `setu`,
//! `setpipefail`, `dibdebugtrace`, `indent` (multiples of 4 spaces), `tabindent`, `newline`,
//! `element-deps` (sorted), `environment.d` (no `set -x`, not executable), `runparts` (a phase
//! script whose name dib-run-parts would skip, e.g. with a dot), `exports`
//! (`export X=$(...)`), `safe_sudo`, `which`, `yaml`, `pkg-map`. A file may disable rules
//! with `# dib-lint: disable=rule1,rule2`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::Serialize;

use super::ElementDir;
use crate::fsutil::FsError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub element: String,
    /// Relative to the element directory.
    pub file: String,
    pub line: Option<usize>,
    pub rule: &'static str,
    pub message: String,
}

const SAFE_SUDO_PHASES: [&str; 5] = [
    "root.d",
    "extra-data.d",
    "block-device.d",
    "finalise.d",
    "cleanup.d",
];
const SAFE_SUDO_WORDS: [&str; 6] = [
    "TARGET_ROOT",
    "TMP_MOUNT_PATH",
    "IMAGE_BLOCK_DEVICE",
    "TMP_IMAGE_PATH",
    "install-packages",
    "dib-lint: safe_sudo",
];

static SETE: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^set -[a-z]*e").expect("static regex"));
static SETU: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^set -[a-z]*u").expect("static regex"));
static PIPEFAIL: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^set -o pipefail").expect("static regex"));

/// The element's files, `__pycache__` left out (symbolic links are not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), FsError> {
    let entries = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !(e.file_type().is_dir() && e.file_name() == "__pycache__"));
    for entry in entries {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            FsError::new("list", &path, e.into())
        })?;
        if entry.file_type().is_file() {
            out.push(entry.into_path());
        }
    }
    Ok(())
}

/// Lints one element.
pub fn lint_element(el: &ElementDir) -> Result<Vec<Finding>, FsError> {
    let mut findings = Vec::new();
    let mut add = |file: &str, line: Option<usize>, rule: &'static str, message: String| {
        findings.push(Finding {
            element: el.name.clone(),
            file: file.to_string(),
            line,
            rule,
            message,
        })
    };
    if !el.dir.join("README.rst").is_file() && !el.dir.join("README.md").is_file() {
        add(
            "",
            None,
            "readme",
            "the element has no README.rst (or README.md)".into(),
        );
    }
    let mut files = Vec::new();
    walk(&el.dir, &mut files)?;
    files.sort();
    for path in files {
        let rel = path
            .strip_prefix(&el.dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let first_dir = rel.split('/').next().unwrap_or("");
        // Static trees hold files for the image, not scripts of the build.
        if first_dir == "static" || first_dir == "tests" || first_dir == "test-elements" {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| FsError::new("read", &path, e))?;
        let Ok(text) = String::from_utf8(bytes) else {
            continue;
        };
        let disabled: Vec<String> = text
            .lines()
            .filter_map(|l| l.split("dib-lint: disable=").nth(1))
            .flat_map(|l| l.split(',').map(|s| s.trim().to_string()))
            .collect();
        let on = |rule: &str| !disabled.iter().any(|d| d == rule);
        let mut add = |line: Option<usize>, rule: &'static str, message: String| {
            if on(rule) {
                findings.push(Finding {
                    element: el.name.clone(),
                    file: rel.clone(),
                    line,
                    rule,
                    message,
                })
            }
        };
        let exec = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        if super::PHASES.contains(&first_dir)
            && rel.matches('/').count() == 1
            && !super::view::runnable_name(&name)
        {
            // dib-run-parts (and ccb) skip such names without a word: say it here.
            add(
                None,
                "runparts",
                format!("`{name}` never runs: phase scripts are named with [0-9A-Za-z_-] only"),
            );
        }
        if name.ends_with(".md") && !rel.contains('/') && name != "README.md" {
            add(None, "mddocs", "documentation belongs in README.rst".into());
        }
        if rel == "element-deps" || rel == "element-provides" {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let mut sorted = lines.clone();
            sorted.sort();
            if rel == "element-deps" && lines != sorted {
                add(None, "element-deps", "element-deps is not sorted".into());
            }
            continue;
        }
        if rel == "pkg-map" {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                add(None, "pkg-map", format!("pkg-map is not valid JSON: {e}"));
            }
            continue;
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
                add(None, "yaml", format!("does not parse as YAML: {e}"));
            }
            continue;
        }
        if first_dir == "environment.d" {
            if exec {
                add(
                    None,
                    "environment.d",
                    "environment.d files are sourced and must not be executable".into(),
                );
            }
            for (i, l) in text.lines().enumerate() {
                if l.trim_start().starts_with("set -x") {
                    add(
                        Some(i + 1),
                        "environment.d",
                        "environment.d files must not `set -x`".into(),
                    );
                }
            }
        }
        let shebang = text.lines().next().filter(|l| l.starts_with("#!"));
        if shebang.is_some() && !exec && first_dir != "environment.d" {
            add(
                None,
                "executable",
                "a script with a #! line must be executable".into(),
            );
        }
        let is_python = shebang.is_some_and(|s| s.contains("python"));
        let is_bash = shebang.is_some_and(|s| s.contains("bash"))
            || (shebang.is_none() && first_dir == "environment.d");
        if is_python || !text.is_empty() && !text.is_ascii() && shebang.is_none() {
            continue;
        }
        if let Some(s) = shebang
            && s.contains("bash")
            && s.trim_end() != "#!/bin/bash"
        {
            add(
                Some(1),
                "shebang",
                format!("bash scripts must start with exactly `#!/bin/bash`, not `{s}`"),
            );
        }
        if is_bash && shebang.is_some() {
            let has = |re: &regex::Regex| text.lines().any(|l| re.is_match(l));
            if !has(&SETE) {
                add(None, "sete", "bash scripts must `set -e`".into());
            }
            if !has(&SETU) {
                add(None, "setu", "bash scripts must `set -u`".into());
            }
            if !has(&PIPEFAIL) {
                add(
                    None,
                    "setpipefail",
                    "bash scripts must `set -o pipefail`".into(),
                );
            }
            if !text.contains("DIB_DEBUG_TRACE") {
                add(None, "dibdebugtrace", "bash scripts must honour DIB_DEBUG_TRACE (`if [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then set -x; fi`)".into());
            }
        }
        if shebang.is_some() || first_dir == "environment.d" {
            let mut in_heredoc: Option<String> = None;
            for (i, l) in text.lines().enumerate() {
                if let Some(end) = &in_heredoc {
                    if l.trim() == end {
                        in_heredoc = None;
                    }
                    continue;
                }
                if let Some(pos) = l.find("<<") {
                    let rest = l[pos + 2..].trim_start_matches('-').trim_start();
                    let word: String = rest
                        .trim_matches(|c| c == '\'' || c == '"')
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !word.is_empty() {
                        in_heredoc = Some(word);
                    }
                }
                if l.starts_with('\t') {
                    add(
                        Some(i + 1),
                        "tabindent",
                        "indent with spaces, not tabs".into(),
                    );
                }
                let spaces = l.len() - l.trim_start_matches(' ').len();
                if spaces % 4 != 0 && !l.trim_start().starts_with('#') && !l.trim().is_empty() {
                    add(
                        Some(i + 1),
                        "indent",
                        format!("indent by multiples of 4 spaces (found {spaces})"),
                    );
                }
                let t = l.trim_start();
                if t.starts_with("export ") && t.contains("=$(") {
                    add(Some(i + 1), "exports", "split `export X=$(...)` into an assignment and an export, so a failure is not hidden".into());
                }
                let is_comment = t.starts_with('#');
                if !is_comment
                    && (t.starts_with("which ") || t.contains(" which ") || t.contains("$(which "))
                    && !t.contains("dib-lint: which")
                {
                    add(
                        Some(i + 1),
                        "which",
                        "use `command -v` or `type -p`, not `which`".into(),
                    );
                }
                if !is_comment
                    && SAFE_SUDO_PHASES.contains(&first_dir)
                    && (t.starts_with("sudo ") || t.contains(" sudo "))
                    && !SAFE_SUDO_WORDS.iter().any(|w| t.contains(w))
                {
                    add(Some(i + 1), "safe_sudo", "sudo outside the chroot must name TARGET_ROOT (or similar), or carry `# dib-lint: safe_sudo`".into());
                }
            }
            if !text.is_empty() && !text.ends_with('\n') {
                add(None, "newline", "the file must end with a newline".into());
            }
        }
    }
    Ok(findings)
}
