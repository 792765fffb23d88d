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
use std::time::Duration;

use super::ElementError;
use super::view::Script;

/// The PATH element scripts get, inside and outside the chroot.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables the runner itself sets for every script: not inputs of a build, so not captured.
const RUNNER_VARS: [&str; 6] = ["PATH", "LC_ALL", "PWD", "OLDPWD", "SHLVL", "_"];

const MARK: &str = "\u{1}ccb-sourcing ";

/// What a fragment prints goes to stderr (fd 1 is pointed there first): only the final
/// `env -0`, written to the saved stdout (fd 3), is the captured environment. A fragment that
/// echoes can no longer inject `KEY=value` lines or hide a variable.
const SCRIPT: &str = r#"exec 3>&1 1>&2
set -eu
set -o pipefail
for f in "$@"; do
    printf '\001ccb-sourcing %s\n' "$f" >&2
    source "$f"
done
printf '\001ccb-sourcing \n' >&2
exec env -0 >&3 3>&-
"#;

/// How long sourcing every environment.d fragment of an image may take. DIB's take
/// milliseconds; a fragment that loops forever must not hang `ccb check`. Overridable with
/// `CCB_ENVIRONMENT_TIMEOUT` (seconds).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

fn timeout() -> Duration {
    std::env::var("CCB_ENVIRONMENT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

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
    // PID 1 of a namespace of its own: whatever a fragment starts, even in a session of its
    // own (`setsid`), ends with the shell, so nothing outlives ccb and no pipe stays open.
    let limit = timeout();
    let crate::process::Bounded {
        output: out,
        timed_out,
    } = cmd
        .output_bounded(limit, crate::process::Confine::PidNamespace)
        .map_err(ElementError::Bash)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if timed_out || !out.status.success() {
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
        let status = if timed_out {
            format!(
                "did not finish within {} s (CCB_ENVIRONMENT_TIMEOUT sets the limit)",
                limit.as_secs()
            )
        } else {
            out.status
                .code()
                .map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed".into())
        };
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
    Ok(parse_captured(&out.stdout))
}

/// The environment in `env -0`'s output (NUL-separated `KEY=value`), without the runner's own
/// variables. Public for the fuzz target.
pub fn parse_captured(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for entry in bytes.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        if let Some((k, v)) = entry.split_once('=')
            && !RUNNER_VARS.contains(&k)
        {
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragments(dir: &std::path::Path, bodies: &[(&str, &str)]) -> Vec<(Script, PathBuf)> {
        bodies
            .iter()
            .map(|(name, body)| {
                let p = dir.join(name);
                std::fs::write(&p, body).unwrap();
                (
                    Script {
                        name: (*name).into(),
                        element: "hostile".into(),
                        dir: None,
                    },
                    p,
                )
            })
            .collect()
    }

    fn declared() -> BTreeMap<String, String> {
        [("DIB_RELEASE".to_string(), "bookworm".to_string())].into()
    }

    #[test]
    fn what_a_fragment_prints_is_not_taken_for_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let files = fragments(
            dir.path(),
            &[(
                "10-chatty",
                "echo hello\nprintf 'DIB_RELEASE=sid\\0FAKE=1\\0'\nexport GREETING=hi\n",
            )],
        );
        let env = source(&files, &declared()).unwrap();
        assert_eq!(env["DIB_RELEASE"], "bookworm");
        assert_eq!(env["GREETING"], "hi");
        assert!(!env.contains_key("FAKE"), "{env:?}");
        assert!(env.keys().all(|k| !k.contains('\n')), "{env:?}");
    }

    #[test]
    fn a_fragment_that_never_ends_is_stopped_at_the_limit_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = fragments(dir.path(), &[("20-forever", "while true; do :; done\n")]);
        let cmd_env = declared();
        // The limit is read from ccb's environment; a short one keeps the test quick.
        let start = std::time::Instant::now();
        let err = with_limit("1", || source(&files, &cmd_env)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(30));
        let text = err.to_string();
        assert!(text.contains("20-forever"), "{text}");
        assert!(text.contains("did not finish within 1 s"), "{text}");
    }

    #[test]
    fn a_background_job_of_a_fragment_does_not_outlive_the_capture() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The job leaves the shell's process group and session (`setsid`); it writes the pid
        // the host sees (fields of /proc/self/stat are in the host's terms, $! is not), then
        // becomes the `sleep`.
        let files = fragments(
            dir.path(),
            &[(
                "30-daemon",
                &format!(
                    "setsid sh -c 'cut -d\" \" -f4 /proc/self/stat > {p}; exec sleep 300' \
                     </dev/null >/dev/null 2>&1 &\n\
                     while [ ! -s {p} ]; do sleep 0.01; done\nexport OK=1\n",
                    p = pidfile.display()
                ),
            )],
        );
        let env = source(&files, &declared()).unwrap();
        assert_eq!(env["OK"], "1");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed with the namespace; allow it a moment to disappear.
        let gone = (0..100).any(|_| {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the background `sleep` ({pid}) is still running");
    }

    fn with_limit<T>(secs: &str, f: impl FnOnce() -> T) -> T {
        // SAFETY: only this test sets the variable, and only `timeout()` reads it.
        unsafe { std::env::set_var("CCB_ENVIRONMENT_TIMEOUT", secs) };
        let out = f();
        unsafe { std::env::remove_var("CCB_ENVIRONMENT_TIMEOUT") };
        out
    }
}
