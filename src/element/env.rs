//! The environment a build sees: environment.d sourced in bash over only the declared
//! variables, and the exported result captured.
//!
//! The host environment never reaches the shell (`env_clear`): scripts see the manifest's
//! `env`, ccb's own variables, and what environment.d exports. Sourcing runs under `set -eu`
//! and `pipefail` like DIB's runner, so a fragment that reads an unset variable, or exits
//! non-zero on purpose (dib-init-system does), fails with the file named.

use crate::process::Process;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ElementError;
use super::view::Script;

/// The PATH element scripts get, inside and outside the chroot.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables the runner itself sets for every script: not inputs of a build, so not captured.
const RUNNER_VARS: [&str; 6] = ["PATH", "LC_ALL", "PWD", "OLDPWD", "SHLVL", "_"];

const MARK: &str = "\u{1}ccb-sourcing ";

const SCRIPT: &str = r#"set -eu
set -o pipefail
for f in "$@"; do
    printf '\001ccb-sourcing %s\n' "$f" >&2
    source "$f"
done
printf '\001ccb-sourcing \n' >&2
exec env -0
"#;

/// Sources `files` in order over `declared` and returns the exported environment.
pub fn source(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ElementError> {
    if files.is_empty() {
        return Ok(declared.clone());
    }
    let mut cmd = Process::new("bash");
    cmd.env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .envs(declared)
        .arg("--noprofile")
        .arg("--norc")
        .arg("-c")
        .arg(SCRIPT)
        .arg("ccb-environment")
        .args(files.iter().map(|(_, p)| p))
        .current_dir("/");
    let out = cmd.output_any_status().map_err(ElementError::Bash)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The last marker names the file being sourced when the shell stopped.
        let mut current = String::new();
        let mut detail = Vec::new();
        for line in stderr.lines() {
            if let Some(f) = line.strip_prefix(MARK) {
                current = f.to_string();
                detail.clear();
            } else {
                detail.push(line.to_string());
            }
        }
        let (element, file) = files
            .iter()
            .find(|(_, p)| p.to_string_lossy() == current)
            .map(|(s, _)| (s.element.clone(), format!("environment.d/{}", s.name)))
            .unwrap_or_else(|| ("?".into(), current.clone()));
        let status = out
            .status
            .code()
            .map(|c| format!("exited with status {c}"))
            .unwrap_or_else(|| "was killed".into());
        let tail: Vec<String> = detail.iter().rev().take(10).rev().cloned().collect();
        return Err(ElementError::Environment {
            element,
            file,
            detail: if tail.is_empty() {
                status
            } else {
                format!("{status}: {}", tail.join("\n"))
            },
        });
    }
    let mut env = BTreeMap::new();
    for entry in out.stdout.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        if let Some((k, v)) = entry.split_once('=')
            && !RUNNER_VARS.contains(&k)
        {
            env.insert(k.to_string(), v.to_string());
        }
    }
    Ok(env)
}
