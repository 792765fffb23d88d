//! The environment a build sees: environment.d sourced in bash over only the declared
//! variables, and the exported result captured.
//!
//! The host environment never reaches the shell (`env_clear`): scripts see the manifest's
//! `env`, ccb's own variables, and what environment.d exports. Sourcing runs under `set -eu`
//! and `pipefail` like DIB's runner, so a fragment that reads an unset variable, or exits
//! non-zero on purpose (dib-init-system does), fails with the file named.

use crate::process::{Process, ProcessError};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::ElementError;
use super::reads::Reads;
use super::view::Script;

mod native;

/// The PATH element scripts get, inside and outside the chroot.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables the runner itself sets for every script: not inputs of a build, so not captured.
const RUNNER_VARS: [&str; 6] = ["PATH", "LC_ALL", "PWD", "OLDPWD", "SHLVL", "_"];

const MARK: &str = "\u{1}ccb-sourcing ";

/// The script of a capture in a bash of its own ([`capture_once`]). What a fragment prints
/// goes to stderr (fd 1 is pointed there first): only the final
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

/// How much address space each process of a capture may map (`RLIMIT_AS`): DIB's fragments
/// need a few MiB; one that allocates without end must fail, not take the host's memory.
/// Overridable with `CCB_ENVIRONMENT_MEMORY` (bytes, or `512M`, `8G`).
const DEFAULT_MEMORY: u64 = 4 << 30;

/// A capture's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub time: Duration,
    pub memory: u64,
}

impl Limits {
    /// `CCB_ENVIRONMENT_TIMEOUT` and `CCB_ENVIRONMENT_MEMORY`, each its default when unset;
    /// set to something that is not a limit, an error naming the variable.
    pub fn from_env() -> Result<Self, ElementError> {
        let bad = |e: crate::units::BadLimit| ElementError::BadLimit {
            var: e.var,
            value: e.value,
            expected: e.expected,
        };
        let time = crate::units::seconds_from_env("CCB_ENVIRONMENT_TIMEOUT")
            .map_err(bad)?
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let memory = crate::units::memory_from_env("CCB_ENVIRONMENT_MEMORY")
            .map_err(bad)?
            .unwrap_or(DEFAULT_MEMORY);
        Ok(Self { time, memory })
    }
}

/// Sources `files` in order over `declared` and returns the exported environment, under the
/// limits ccb's environment sets ([`Limits::from_env`]).
pub fn source(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    reads: &Reads,
) -> Result<BTreeMap<String, String>, ElementError> {
    source_limited(files, declared, reads, Limits::from_env()?)
}

/// [`source`] under `limits`.
///
/// The result is a pure function of the fragments (paths and contents, in order) and the
/// declared variables, so it is computed once per run for each distinct input. As root, the
/// capture runs in a resident shell (see `SERVER`) that cannot write to the host; otherwise
/// in a bash of its own.
pub fn source_limited(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    reads: &Reads,
    limits: Limits,
) -> Result<BTreeMap<String, String>, ElementError> {
    if files.is_empty() {
        return Ok(declared.clone());
    }
    if let Some(env) = evaluate_natively(files, declared, reads) {
        return Ok(env);
    }
    let key = memo_key(files, declared, reads);
    if let Some(key) = &key
        && let Some(env) = lock(&MEMO).get(key)
    {
        return Ok(env.clone());
    }
    let env = if nix::unistd::geteuid().is_root() {
        capture_resident(files, declared, limits)?
    } else {
        capture_once(files, declared, limits)?
    };
    if let Some(key) = key {
        lock(&MEMO).insert(key, env.clone());
    }
    Ok(env)
}

/// What bash would capture, computed without it when every fragment is in the subset
/// [`native`] reads; `None` sends the set to bash.
fn evaluate_natively(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    reads: &Reads,
) -> Option<Env> {
    let mut bodies = Vec::with_capacity(files.len());
    for (_, path) in files {
        // `source` looks a relative name up in PATH.
        if !path.is_absolute() {
            return None;
        }
        bodies.push(reads.bytes(path).ok()??);
    }
    let texts = bodies
        .iter()
        .map(|b| std::str::from_utf8(b).ok())
        .collect::<Option<Vec<&str>>>()?;
    evaluate_native(&texts, declared)
}

/// What bash would capture after sourcing the fragment texts `bodies` over `declared`,
/// computed by ccb (`native`); `None` when a fragment is outside the subset it reads.
/// Public for the fuzz target.
pub fn evaluate_native(bodies: &[&str], declared: &BTreeMap<String, String>) -> Option<Env> {
    let mut start: Env = [("PATH", PATH), ("LC_ALL", "C")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    start.extend(declared.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut env = native::evaluate(bodies, start)?;
    env.retain(|k, _| !RUNNER_VARS.contains(&k.as_str()));
    Some(env)
}

/// A captured environment.
type Env = BTreeMap<String, String>;

/// Captures already made in this run, by [`memo_key`].
static MEMO: std::sync::LazyLock<Mutex<HashMap<[u8; 32], Env>>> =
    std::sync::LazyLock::new(Default::default);

/// Idle resident shells, one per thread that captured at the same time (rayon's workers).
static SHELLS: Mutex<Vec<Shell>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere leaves the data as sound as it was: a map of finished captures, a
    // list of idle shells.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The digest of everything a capture depends on; `None` when a fragment cannot be read (the
/// capture itself then says so).
fn memo_key(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    reads: &Reads,
) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    for (_, path) in files {
        crate::keydoc::hash_str(&mut h, &path.to_string_lossy());
        let body = reads.bytes(path).ok()??;
        h.update(&(body.len() as u64).to_le_bytes());
        h.update(&body);
    }
    crate::keydoc::hash_map(&mut h, declared);
    Some(*h.finalize().as_bytes())
}

/// The descriptors of a resident shell's request, output and environment (memfds): high
/// enough that a fragment's own `exec 3>…` (or `{fd}>…`, from 10 up) never meets them.
const REQUEST_FD: i32 = 200;
const OUTPUT_FD: i32 = 201;
const ENV_FD: i32 = 202;

/// The resident shell: PID 1 of a PID namespace of its own, it forks a subshell per request
/// line, which sources the request (a script ccb wrote into the request memfd: the declared
/// variables, the fragments, the capture) with everything it prints going to the output
/// memfd. Forking a shell that is already running costs a fraction of starting bash and
/// `env` per image. Each subshell starts from the same untouched state, so no capture sees
/// another's variables or functions; after each, whatever the fragments left running is
/// killed (`kill -9 -1` as PID 1 reaches every other process of the namespace, and only
/// them; the guard keeps it from ever running anywhere else). The answer is the subshell's
/// exit status.
const SERVER: &str = r#"while read -r; do
    (exec </dev/null >/proc/self/fd/201 2>&1; unset REPLY; . /proc/self/fd/200)
    REPLY=$?
    [[ $$ == 1 ]] && kill -9 -1 2>/dev/null
    echo "$REPLY"
done
"#;

/// The part of a request after the variables and `set -- FRAGMENTS`. What a fragment prints
/// goes to the output memfd with the markers; the environment is written to its own memfd
/// only after the last fragment, by builtins (an `env -0` would cost an exec per capture):
/// exported variables that are set, arrays excluded, as `env` would print them. Exported
/// functions are in bash's own encoding (`BASH_FUNC_<name>%%`) that only `env` prints:
/// rare, so only then is it run.
const CAPTURE: &str = r#"set -eu
set -o pipefail
for f in "$@"; do
    printf '\001ccb-sourcing %s\n' "$f" >&2
    source "$f"
done
printf '\001ccb-sourcing \n' >&2
set +eu
{ builtin declare -Fx; builtin compgen -e; } >/proc/self/fd/202 || exit 70
builtin mapfile -t __ccb_names </proc/self/fd/202 || exit 70
case ${__ccb_names[0]-} in "declare "*) exec env -0 >/proc/self/fd/202 ;; esac
for __ccb_name in "${__ccb_names[@]}"; do
    case ${!__ccb_name@a} in *[aA]*) continue ;; esac
    if [[ -v $__ccb_name ]]; then
        builtin printf '%s=%s\0' "$__ccb_name" "${!__ccb_name}"
    fi
done >/proc/self/fd/202
"#;

/// A resident shell and its memfds.
struct Shell {
    /// Its address-space limit, set when it started.
    memory: u64,
    resident: crate::process::Resident,
    request: File,
    output: File,
    env: File,
}

impl Shell {
    /// A resident shell whose every process may map `memory` bytes, and whose writes never
    /// reach the host (its mounts are read-only, its /tmp its own): a fragment reads the
    /// element tree and the host's tools as DIB's do, and sets variables.
    fn start(memory: u64) -> Result<Self, ProcessError> {
        let mut cmd = Process::new("bash");
        cmd.memory_limit(memory).read_only_host();
        cmd.env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(SERVER)
            .arg("ccb-environment")
            .current_dir("/");
        let spawn_error = |source| ProcessError::Spawn {
            command: cmd.command_line(),
            source,
        };
        let request = memfd("ccb-env-request").map_err(spawn_error)?;
        let output = memfd("ccb-env-output").map_err(spawn_error)?;
        let env = memfd("ccb-env").map_err(spawn_error)?;
        let resident = cmd.spawn_resident(&[
            (request.as_raw_fd(), REQUEST_FD),
            (output.as_raw_fd(), OUTPUT_FD),
            (env.as_raw_fd(), ENV_FD),
        ])?;
        Ok(Self {
            memory,
            resident,
            request,
            output,
            env,
        })
    }

    /// Runs one capture: the subshell's exit status, `None` past `limit`.
    fn run(&mut self, request: &[u8], limit: Duration) -> std::io::Result<Option<i32>> {
        use std::os::unix::fs::FileExt;
        for f in [&self.request, &self.output, &self.env] {
            f.set_len(0)?;
        }
        self.request.write_all_at(request, 0)?;
        let Some(answer) = self.resident.ask(b"\n", limit)? else {
            return Ok(None);
        };
        std::str::from_utf8(&answer)
            .ok()
            .and_then(|a| a.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| std::io::Error::other("the environment shell answered nonsense"))
    }
}

fn memfd(name: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a system call with a valid C string; the fd it returns is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor, owned from here on.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn read_all(f: &File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    let mut f = f;
    // A memfd: reading it fails only if the system is out of memory, and then the capture
    // reads as empty and fails on its own.
    if f.seek(std::io::SeekFrom::Start(0)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

/// The script a resident shell sources for one capture: ccb's and the declared variables,
/// the fragments as positional parameters (as `bash -c SCRIPT ccb-environment FILES…` had
/// them), then [`CAPTURE`].
fn request(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
) -> Result<Vec<u8>, std::io::Error> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let quote = |out: &mut Vec<u8>, word: &[u8]| -> Result<(), std::io::Error> {
        if word.contains(&0) {
            return Err(invalid(format!(
                "a NUL byte in `{}`",
                String::from_utf8_lossy(word)
            )));
        }
        out.push(b' ');
        out.push(b'\'');
        for &b in word {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.push(b'\'');
        Ok(())
    };
    let mut out = b"export --".to_vec();
    let ours = [("PATH", PATH), ("LC_ALL", "C")];
    for (k, v) in ours
        .into_iter()
        .chain(declared.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        let name_ok = k.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(invalid(format!("`{k}` is not a variable name")));
        }
        quote(&mut out, format!("{k}={v}").as_bytes())?;
    }
    out.extend_from_slice(b"\nset --");
    for (_, path) in files {
        quote(&mut out, path.as_os_str().as_bytes())?;
    }
    out.push(b'\n');
    out.extend_from_slice(CAPTURE.as_bytes());
    Ok(out)
}

/// One capture in a resident shell from the pool (a new one when none is idle).
fn capture_resident(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    limits: Limits,
) -> Result<BTreeMap<String, String>, ElementError> {
    let request = request(files, declared).map_err(|source| {
        ElementError::Bash(ProcessError::Spawn {
            command: "bash (environment.d)".into(),
            source,
        })
    })?;
    let limit = limits.time;
    let idle = {
        let mut idle = lock(&SHELLS);
        let i = idle.iter().rposition(|s| s.memory == limits.memory);
        i.map(|i| idle.swap_remove(i))
    };
    let (mut shell, reused) = match idle {
        Some(shell) => (shell, true),
        None => (
            Shell::start(limits.memory).map_err(ElementError::Bash)?,
            false,
        ),
    };
    let mut outcome = shell.run(&request, limit);
    if outcome.is_err() && reused {
        // An idle shell can have ended with the thread that started it (its parent-death
        // signal follows that thread): a fresh one, once.
        shell = Shell::start(limits.memory).map_err(ElementError::Bash)?;
        outcome = shell.run(&request, limit);
    }
    let why = match outcome {
        Ok(Some(0)) => {
            let env = parse_captured(&read_all(&shell.env));
            lock(&SHELLS).push(shell);
            return Ok(env);
        }
        Ok(Some(code)) => format!("exited with status {code}"),
        Ok(None) => timed_out(limit),
        Err(_) => "was killed".into(),
    };
    let output = read_all(&shell.output);
    let why = out_of_memory(&why, &output, limits.memory);
    if matches!(outcome, Ok(Some(_))) {
        // It ran to its end: the shell is sound for the next capture.
        lock(&SHELLS).push(shell);
    }
    // Otherwise the shell goes: dropping it kills its namespace, and with it the fragment
    // and everything it started.
    Err(failure(files, &String::from_utf8_lossy(&output), why))
}

/// `why` a capture failed, naming the memory limit when what it printed says an allocation
/// failed (bash's `xmalloc: cannot allocate`, a program's ENOMEM): the fragment did not fail
/// on its own, the limit stopped it.
fn out_of_memory(why: &str, output: &[u8], memory: u64) -> String {
    let text = String::from_utf8_lossy(output);
    let hints = [
        "cannot allocate",
        "Cannot allocate memory",
        "out of memory",
        "MemoryError",
    ];
    if hints.iter().any(|h| text.contains(h)) {
        format!(
            "{why}: ran out of memory at its limit of {} (CCB_ENVIRONMENT_MEMORY sets the limit)",
            crate::ui::progress::human_bytes(memory)
        )
    } else {
        why.to_string()
    }
}

fn timed_out(limit: Duration) -> String {
    format!(
        "did not finish within {} s (CCB_ENVIRONMENT_TIMEOUT sets the limit)",
        limit.as_secs()
    )
}

/// The error for a capture that stopped with `status`: the last marker in its output names
/// the file being sourced, and the lines after it say why.
fn failure(files: &[(Script, PathBuf)], output: &str, status: String) -> ElementError {
    let mut current = String::new();
    let mut detail = Vec::new();
    for line in output.lines() {
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
    let tail: Vec<String> = detail.iter().rev().take(10).rev().cloned().collect();
    ElementError::Environment {
        element,
        file,
        detail: if tail.is_empty() {
            status
        } else {
            format!("{status}: {}", tail.join("\n"))
        },
    }
}

/// One capture in a bash of its own (without the privilege for a PID namespace, where a
/// resident shell could not end what fragments leave running).
fn capture_once(
    files: &[(Script, PathBuf)],
    declared: &BTreeMap<String, String>,
    limits: Limits,
) -> Result<BTreeMap<String, String>, ElementError> {
    let mut cmd = Process::new("bash");
    cmd.memory_limit(limits.memory).read_only_host();
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
    let limit = limits.time;
    let crate::process::Bounded {
        output: out,
        timed_out: late,
    } = cmd
        .output_bounded(limit, crate::process::Confine::PidNamespace)
        .map_err(ElementError::Bash)?;
    if late || !out.status.success() {
        let status = if late {
            timed_out(limit)
        } else {
            out.status
                .code()
                .map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed".into())
        };
        let status = out_of_memory(&status, &out.stderr, limits.memory);
        return Err(failure(
            files,
            &String::from_utf8_lossy(&out.stderr),
            status,
        ));
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
        let env = source(&files, &declared(), &Reads::default()).unwrap();
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
        // A short limit keeps the test quick.
        let start = std::time::Instant::now();
        let limits = Limits {
            time: Duration::from_secs(1),
            ..Limits::from_env().unwrap()
        };
        let err = source_limited(&files, &cmd_env, &Reads::default(), limits).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(30));
        let text = err.to_string();
        assert!(text.contains("20-forever"), "{text}");
        assert!(text.contains("did not finish within 1 s"), "{text}");
    }

    #[test]
    fn a_background_job_of_a_fragment_does_not_outlive_the_capture() {
        let dir = tempfile::tempdir().unwrap();
        // The job leaves the shell's process group and session (`setsid`); it writes the pid
        // the host sees (fields of /proc/self/stat are in the host's terms, $! is not) into
        // the capture's own /tmp, then becomes the `sleep`; the fragment exports that pid.
        let pidfile = format!("/tmp/ccb-daemon-{}", std::process::id());
        let files = fragments(
            dir.path(),
            &[(
                "30-daemon",
                &format!(
                    "rm -f {p}\nsetsid sh -c 'cut -d\" \" -f4 /proc/self/stat > {p}; exec sleep 300' \
                     </dev/null >/dev/null 2>&1 &\n\
                     while [ ! -s {p} ]; do sleep 0.01; done\nexport OK=1 DAEMON=$(cat {p})\n",
                    p = pidfile
                ),
            )],
        );
        let env = source(&files, &declared(), &Reads::default()).unwrap();
        assert_eq!(env["OK"], "1");
        let pid: i32 = env["DAEMON"].trim().parse().unwrap();
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

    #[test]
    fn the_resident_shell_captures_what_a_bash_of_its_own_does() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files = fragments(
            dir.path(),
            &[
                (
                    "10-values",
                    "export QUOTED=\"it's \\\"quoted\\\" \\$HOME\"\n\
                     export MULTI=$'line one\\nline two\\ttab'\n\
                     export UNICODE='ünïcødé ✓' EMPTY=\n\
                     export DECLARED_ONLY\n\
                     declare -ax ARRAY=(a b)\n\
                     declare -ix NUMBER=6*7\n\
                     LOCAL_ONLY=1\n\
                     export DIB_RELEASE=${DIB_RELEASE}-updated\n",
                ),
                ("20-function", "greet() { echo hi; }\nexport -f greet\n"),
            ],
        );
        let resident = capture_resident(&files, &declared(), Limits::from_env().unwrap()).unwrap();
        let once = capture_once(&files, &declared(), Limits::from_env().unwrap()).unwrap();
        assert_eq!(resident, once);
        assert_eq!(resident["MULTI"], "line one\nline two\ttab");
        assert_eq!(resident["NUMBER"], "42");
        assert!(resident.contains_key("BASH_FUNC_greet%%"), "{resident:?}");
        // Without an exported function the builtins write the environment, not `env`.
        let plain = &files[..1];
        assert_eq!(
            capture_resident(plain, &declared(), Limits::from_env().unwrap()).unwrap(),
            capture_once(plain, &declared(), Limits::from_env().unwrap()).unwrap()
        );
    }

    #[test]
    fn a_capture_starts_from_nothing_a_previous_one_left_in_the_resident_shell() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let first = fragments(
            dir.path(),
            &[(
                "10-leave",
                "export LEFT=1\nset +o pipefail\nleft() { :; }\ncd /tmp\numask 077\n",
            )],
        );
        let second = fragments(
            dir.path(),
            &[(
                "20-look",
                "export SAW=\"${LEFT-none} $(type -t left || echo none) $PWD $(umask)\"\n\
                 export PIPEFAIL=$(set -o | grep pipefail | tr -s ' \\t' ' ')\n",
            )],
        );
        // Both on the same thread, one after the other: the second takes the idle shell.
        capture_resident(&first, &declared(), Limits::from_env().unwrap()).unwrap();
        let env = capture_resident(&second, &declared(), Limits::from_env().unwrap()).unwrap();
        let umask = capture_once(&second, &declared(), Limits::from_env().unwrap()).unwrap()["SAW"]
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(env["SAW"], format!("none none / {umask}"));
        assert_eq!(env["PIPEFAIL"], "pipefail on");
        assert!(!env.contains_key("LEFT"));
    }

    #[test]
    fn the_same_fragments_over_the_same_variables_are_sourced_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        // Each sourcing draws a new value: the same value twice means one sourcing.
        let files = fragments(
            dir.path(),
            &[(
                "10-count",
                "export DRAWN=$(cat /proc/sys/kernel/random/uuid)\n",
            )],
        );
        let first = source(&files, &declared(), &Reads::default()).unwrap();
        let again = source(&files, &declared(), &Reads::default()).unwrap();
        assert_eq!(first, again);
        // Another input is another capture.
        let other: BTreeMap<String, String> = [("DIB_RELEASE".into(), "trixie".into())].into();
        let third = source(&files, &other, &Reads::default()).unwrap();
        assert_eq!(third["DIB_RELEASE"], "trixie");
        assert_ne!(third["DRAWN"], first["DRAWN"]);
    }

    /// The native answer for `files` over `declared`, checked against the real capture: a
    /// bash of its own, and (as root) the resident shell.
    fn native_matches_bash(files: &[(Script, PathBuf)], declared: &BTreeMap<String, String>) {
        let native = evaluate_natively(files, declared, &Reads::default())
            .unwrap_or_else(|| panic!("not evaluated natively: {files:?}"));
        let once = capture_once(files, declared, Limits::from_env().unwrap()).unwrap();
        assert_eq!(native, once, "{files:?} over {declared:?}");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                native,
                capture_resident(files, declared, Limits::from_env().unwrap()).unwrap()
            );
        }
    }

    /// Declared environments a fragment may meet: nothing, empty values, values with spaces,
    /// quotes and `=`.
    fn declared_variants(names: &[&str]) -> Vec<BTreeMap<String, String>> {
        let all = |v: &str| {
            names
                .iter()
                .map(|n| (n.to_string(), v.to_string()))
                .collect()
        };
        vec![
            BTreeMap::new(),
            declared(),
            all(""),
            all("set"),
            all("it's a \"value\" with = and $X"),
            [
                ("IMAGE_NAME".to_string(), "Scale-7".to_string()),
                ("DIB_RELEASE".to_string(), "".to_string()),
            ]
            .into(),
        ]
    }

    fn names_in(body: &str) -> Vec<&str> {
        body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.bytes().next().is_some_and(|b| b.is_ascii_uppercase()))
            .collect()
    }

    #[test]
    fn every_environment_d_file_of_the_repository_read_natively_is_what_bash_captures() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut accepted = Vec::new();
        for top in ["elements", "examples", "tests/fixtures"] {
            for entry in walkdir::WalkDir::new(root.join(top)).sort_by_file_name() {
                let entry = entry.unwrap();
                let path = entry.path();
                if !entry.file_type().is_file()
                    || path.parent().and_then(|p| p.file_name()) != Some("environment.d".as_ref())
                {
                    continue;
                }
                let script = Script {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    element: "repo".into(),
                    dir: None,
                };
                let files = vec![(script, path.to_path_buf())];
                if evaluate_natively(&files, &BTreeMap::new(), &Reads::default()).is_none() {
                    continue;
                }
                let body = std::fs::read_to_string(path).unwrap();
                for declared in declared_variants(&names_in(&body)) {
                    native_matches_bash(&files, &declared);
                }
                accepted.extend(files);
            }
        }
        // The defaults-only fragments (tinyos, cc-users, debian-minimal, ...) are read
        // natively; the ones with `case` or `if` are not.
        assert!(accepted.len() >= 10, "{accepted:?}");
        assert!(
            accepted
                .iter()
                .all(|(_, p)| !p.ends_with("10-initramfs.bash")),
            "{accepted:?}"
        );
        // All of them in a row: later fragments see what earlier ones exported.
        for declared in declared_variants(&["DIB_RELEASE", "CC_ADMIN_SSH_KEY", "DISTRO_NAME"]) {
            native_matches_bash(&accepted, &declared);
        }
    }

    #[test]
    fn the_subset_read_natively_gives_what_bash_captures() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[&[(&str, &str)]] = &[
            &[("10-empty", "export EMPTY=\nexport Q=\"\"\nexport S=''\n")],
            &[(
                "10-defaults",
                "export A=\"${X:-}\"\nexport B=\"${X-}\"\nexport C=\"${X:-d}\"\n\
                 export D=\"${X-d}\"\nexport E=\"${Y:-two words}\"\nexport F=\"${Y-}\"\n",
            )],
            &[(
                "10-quotes",
                "export S='single quoted with spaces \"and\" $NOT ${EXPANDED} `x`'\n\
                 export U=\"ünïcødé 'q' #x * ? [a] ~ {b,c}\"\n",
            )],
            &[(
                "10-equals",
                "export EQ=a=b=c\nexport URL=https://host:8080/p/a.b,c+d@e%f-g_h\n\
                 export EQ2=\"x=${EQ}\"\n",
            )],
            &[(
                "10-layout",
                "# a comment\n\n   # an indented one\n\texport T=1   \n  export  U=2\t\n\
                 export NO_NEWLINE=\"${T}$U\"",
            )],
            &[(
                "10-refs",
                "export R=\"$X$Y-${X}/${Y-none}:${Z:-d e}/$X.$Y\"\n",
            )],
            &[
                (
                    "10-first",
                    "export OVER=first\nexport OVER=\"${OVER}-again\"\nexport X=\"${X:-x0}\"\n",
                ),
                (
                    "20-second",
                    "export OVER=\"${OVER}-second\"\nexport DIB_RELEASE=\"${DIB_RELEASE:-bookworm}\"\n",
                ),
            ],
            &[("10-empty-file", ""), ("20-comments", "# nothing\n")],
        ];
        for (i, bodies) in cases.iter().enumerate() {
            let case = dir.path().join(i.to_string());
            std::fs::create_dir(&case).unwrap();
            let files = fragments(&case, bodies);
            let bare_refs = bodies.iter().any(|(_, b)| b.contains("$X$Y"));
            for declared in declared_variants(&["X", "Y", "Z", "DIB_RELEASE"]) {
                // `$X` of an unset X is bash's error: not read natively.
                if bare_refs && !(declared.contains_key("X") && declared.contains_key("Y")) {
                    assert!(evaluate_natively(&files, &declared, &Reads::default()).is_none());
                    continue;
                }
                native_matches_bash(&files, &declared);
            }
        }
    }

    #[test]
    fn fragments_outside_the_subset_go_to_bash() {
        let dir = tempfile::tempdir().unwrap();
        let outside = [
            "export A=$(echo hi)\n",
            "export A=\"$(echo hi)\"\n",
            "export A=\"$((1+2))\"\n",
            "if true; then export A=1; fi\n",
            "greet() { :; }\nexport A=1\n",
            "export A=\"$UNSET_X\"\n",
            "export A=\"${UNSET_X}\"\n",
            "export A=1\r\n",
            "export A=~\n",
            "export A=a*\n",
            "export A=\"${X:-${Y:-}}\"\n",
            "export A=\"${X:=y}\"\n",
            "export A=\"${X:+y}\"\n",
            "export A=\"a\\$b\"\n",
            "export A=\"`id`\"\n",
            "export A=\"a!b\"\n",
            "export A=$DIB_RELEASE\n",
            "A=1\nexport A\n",
            "export A=1 B=2\n",
            "export A=1 # why\n",
            "export A='multi\nline'\n",
            "export PATH=/nowhere\n",
            "export A=\"$HOSTNAME\"\n",
            "export A=\"${f-}\"\n",
            "export A=\"${BASH_VERSION-}\"\n",
            "export A=\"$1\"\n",
            "export A=(a b)\n",
            "declare -x A=1\n",
            "exportA=1\n",
            "export 1A=1\n",
            "source /dev/null\n",
        ];
        for (i, body) in outside.iter().enumerate() {
            let case = dir.path().join(i.to_string());
            std::fs::create_dir(&case).unwrap();
            let files = fragments(
                &case,
                &[("10-outside", body), ("20-inside", "export B=2\n")],
            );
            assert!(
                evaluate_natively(&files, &declared(), &Reads::default()).is_none(),
                "read natively: {body:?}"
            );
        }
        // Bash then answers as before: a value, or the error naming the file.
        let files = fragments(dir.path(), &[("10-subst", "export A=$(echo hi)\n")]);
        assert_eq!(
            source(&files, &declared(), &Reads::default()).unwrap()["A"],
            "hi"
        );
        let files = fragments(dir.path(), &[("10-unset", "export A=\"$UNSET_X\"\n")]);
        let err = source(&files, &declared(), &Reads::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("10-unset") && err.contains("UNSET_X"), "{err}");
        // A declared variable bash gives a meaning to is not modelled either.
        let files = fragments(dir.path(), &[("10-plain", "export A=1\n")]);
        let odd: BTreeMap<String, String> = [("IFS".to_string(), ":".to_string())].into();
        assert!(evaluate_natively(&files, &odd, &Reads::default()).is_none());
    }

    #[test]
    fn every_variable_bash_sets_itself_is_reserved_from_native_reading() {
        let mut cmd = Process::new("bash");
        cmd.env_clear().env("PATH", PATH).env("LC_ALL", "C").args([
            "--noprofile",
            "--norc",
            "-c",
            "compgen -v",
            "ccb-environment",
        ]);
        let out = cmd.output().unwrap();
        let names = String::from_utf8(out.stdout).unwrap();
        let unreserved: Vec<&str> = names.lines().filter(|n| !native::reserved(n)).collect();
        assert!(unreserved.is_empty(), "{unreserved:?}");
        assert!(names.lines().count() > 20, "{names}");
    }

    #[test]
    fn a_fragment_that_allocates_without_end_is_stopped_at_the_memory_limit_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = fragments(
            dir.path(),
            &[("40-greedy", "x=a\nwhile true; do x=$x$x; done\n")],
        );
        let limits = Limits {
            time: Duration::from_secs(120),
            memory: 256 << 20,
        };
        let err = source_limited(&files, &declared(), &Reads::default(), limits).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("40-greedy"), "{text}");
        assert!(
            text.contains("ran out of memory at its limit of 256"),
            "{text}"
        );
        assert!(text.contains("CCB_ENVIRONMENT_MEMORY"), "{text}");
    }

    #[test]
    fn a_fragment_cannot_write_to_the_host() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let escape = format!("/var/tmp/ccb-envd-escape-{}", std::process::id());
        let files = fragments(
            dir.path(),
            &[(
                "50-escape",
                &format!(
                    "touch {escape} || true\necho x > /etc/ccb-envd-escape || true\nexport WROTE=no\n"
                ),
            )],
        );
        let env = source(&files, &declared(), &Reads::default()).unwrap();
        assert_eq!(env["WROTE"], "no");
        assert!(!std::path::Path::new(&escape).exists());
        assert!(!std::path::Path::new("/etc/ccb-envd-escape").exists());
        // Its own /tmp works, and here-documents with it.
        let files = fragments(
            dir.path(),
            &[(
                "60-tmp",
                "echo scratch > /tmp/ccb-scratch\nexport FROM_TMP=$(cat /tmp/ccb-scratch)\nexport DOC=$(cat <<EOF\nheredoc\nEOF\n)\n",
            )],
        );
        let env = source(&files, &declared(), &Reads::default()).unwrap();
        assert_eq!(env["FROM_TMP"], "scratch");
        assert_eq!(env["DOC"], "heredoc");
        assert!(!std::path::Path::new("/tmp/ccb-scratch").exists());
        // A fragment that must write fails, naming itself.
        let files = fragments(
            dir.path(),
            &[("70-must-write", &format!("touch {escape}\n"))],
        );
        let err = source(&files, &declared(), &Reads::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("70-must-write"), "{text}");
        assert!(text.contains("Read-only file system"), "{text}");
        assert!(!std::path::Path::new(&escape).exists());
    }
}
