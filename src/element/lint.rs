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
    if !el.dir.join("README.rst").is_file() && !el.dir.join("README.md").is_file() {
        findings.push(Finding {
            element: el.name.clone(),
            file: String::new(),
            line: None,
            rule: "readme",
            message: "the element has no README.rst (or README.md)".into(),
        });
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
        let file = File {
            first_dir,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            exec: std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0),
            rel: &rel,
            text: &text,
        };
        let mut out = Out {
            element: &el.name,
            file: &rel,
            disabled: text
                .lines()
                .filter_map(|l| l.split("dib-lint: disable=").nth(1))
                .flat_map(|l| l.split(',').map(|s| s.trim().to_string()))
                .collect(),
            findings: &mut findings,
        };
        file.lint(&mut out);
    }
    Ok(findings)
}

/// Where one file's findings go, less the rules the file disables (`dib-lint: disable=`).
struct Out<'a> {
    element: &'a str,
    file: &'a str,
    disabled: Vec<String>,
    findings: &'a mut Vec<Finding>,
}

impl Out<'_> {
    fn add(&mut self, line: Option<usize>, rule: &'static str, message: String) {
        if !self.disabled.iter().any(|d| d == rule) {
            self.findings.push(Finding {
                element: self.element.to_string(),
                file: self.file.to_string(),
                line,
                rule,
                message,
            })
        }
    }
}

/// One text file of an element.
struct File<'a> {
    /// Relative to the element directory.
    rel: &'a str,
    /// The top directory of `rel` (a phase, `environment.d`, …), or the file's own name.
    first_dir: &'a str,
    name: String,
    exec: bool,
    text: &'a str,
}

impl File<'_> {
    fn lint(&self, out: &mut Out) {
        self.lint_name(out);
        if self.lint_data(out) {
            return;
        }
        let (first_dir, text) = (self.first_dir, self.text);
        if first_dir == "environment.d" {
            if self.exec {
                out.add(
                    None,
                    "environment.d",
                    "environment.d files are sourced and must not be executable".into(),
                );
            }
            for (i, l) in text.lines().enumerate() {
                if l.trim_start().starts_with("set -x") {
                    out.add(
                        Some(i + 1),
                        "environment.d",
                        "environment.d files must not `set -x`".into(),
                    );
                }
            }
        }
        let shebang = text.lines().next().filter(|l| l.starts_with("#!"));
        if shebang.is_some() && !self.exec && first_dir != "environment.d" {
            out.add(
                None,
                "executable",
                "a script with a #! line must be executable".into(),
            );
        }
        let is_python = shebang.is_some_and(|s| s.contains("python"));
        if is_python || !text.is_empty() && !text.is_ascii() && shebang.is_none() {
            return;
        }
        if let Some(s) = shebang {
            self.lint_bash_header(s, out);
        }
        if shebang.is_some() || first_dir == "environment.d" {
            self.lint_lines(out);
            if !text.is_empty() && !text.ends_with('\n') {
                out.add(None, "newline", "the file must end with a newline".into());
            }
        }
    }

    /// Names: phase scripts that never run, documentation outside README.rst.
    fn lint_name(&self, out: &mut Out) {
        let name = &self.name;
        if super::PHASES.contains(&self.first_dir)
            && self.rel.matches('/').count() == 1
            && !super::view::runnable_name(name)
        {
            // dib-run-parts (and ccb) skip such names without a word: say it here.
            out.add(
                None,
                "runparts",
                format!("`{name}` never runs: phase scripts are named with [0-9A-Za-z_-] only"),
            );
        }
        if name.ends_with(".md") && !self.rel.contains('/') && name != "README.md" {
            out.add(None, "mddocs", "documentation belongs in README.rst".into());
        }
    }

    /// The element's data files (element-deps, pkg-map, YAML); true when this was one.
    fn lint_data(&self, out: &mut Out) -> bool {
        let (rel, text) = (self.rel, self.text);
        if rel == "element-deps" || rel == "element-provides" {
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let mut sorted = lines.clone();
            sorted.sort();
            if rel == "element-deps" && lines != sorted {
                out.add(None, "element-deps", "element-deps is not sorted".into());
            }
            return true;
        }
        if rel == "pkg-map" {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
                out.add(None, "pkg-map", format!("pkg-map is not valid JSON: {e}"));
            }
            return true;
        }
        if self.name.ends_with(".yaml") || self.name.ends_with(".yml") {
            if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
                out.add(None, "yaml", format!("does not parse as YAML: {e}"));
            }
            return true;
        }
        false
    }

    /// A bash script's `#!/bin/bash` and its `set -eu -o pipefail` and DIB_DEBUG_TRACE.
    fn lint_bash_header(&self, shebang: &str, out: &mut Out) {
        if !shebang.contains("bash") {
            return;
        }
        if shebang.trim_end() != "#!/bin/bash" {
            out.add(
                Some(1),
                "shebang",
                format!("bash scripts must start with exactly `#!/bin/bash`, not `{shebang}`"),
            );
        }
        let has = |re: &regex::Regex| self.text.lines().any(|l| re.is_match(l));
        if !has(&SETE) {
            out.add(None, "sete", "bash scripts must `set -e`".into());
        }
        if !has(&SETU) {
            out.add(None, "setu", "bash scripts must `set -u`".into());
        }
        if !has(&PIPEFAIL) {
            out.add(
                None,
                "setpipefail",
                "bash scripts must `set -o pipefail`".into(),
            );
        }
        if !self.text.contains("DIB_DEBUG_TRACE") {
            out.add(None, "dibdebugtrace", "bash scripts must honour DIB_DEBUG_TRACE (`if [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then set -x; fi`)".into());
        }
    }

    /// Line rules of scripts (outside here-documents): indentation, exports, which, sudo.
    fn lint_lines(&self, out: &mut Out) {
        let mut in_heredoc: Option<String> = None;
        for (i, l) in self.text.lines().enumerate() {
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
            self.lint_line(Some(i + 1), l, out);
        }
    }

    fn lint_line(&self, line: Option<usize>, l: &str, out: &mut Out) {
        if l.starts_with('\t') {
            out.add(line, "tabindent", "indent with spaces, not tabs".into());
        }
        let spaces = l.len() - l.trim_start_matches(' ').len();
        if !spaces.is_multiple_of(4) && !l.trim_start().starts_with('#') && !l.trim().is_empty() {
            out.add(
                line,
                "indent",
                format!("indent by multiples of 4 spaces (found {spaces})"),
            );
        }
        let t = l.trim_start();
        if t.starts_with("export ") && t.contains("=$(") {
            out.add(line, "exports", "split `export X=$(...)` into an assignment and an export, so a failure is not hidden".into());
        }
        let is_comment = t.starts_with('#');
        if !is_comment
            && (t.starts_with("which ") || t.contains(" which ") || t.contains("$(which "))
            && !t.contains("dib-lint: which")
        {
            out.add(
                line,
                "which",
                "use `command -v` or `type -p`, not `which`".into(),
            );
        }
        if !is_comment
            && SAFE_SUDO_PHASES.contains(&self.first_dir)
            && (t.starts_with("sudo ") || t.contains(" sudo "))
            && !SAFE_SUDO_WORDS.iter().any(|w| t.contains(w))
        {
            out.add(line, "safe_sudo", "sudo outside the chroot must name TARGET_ROOT (or similar), or carry `# dib-lint: safe_sudo`".into());
        }
    }
}
