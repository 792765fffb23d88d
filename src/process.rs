//! One way to run a program: [`Process`] keeps the program, its arguments, environment and
//! directory together with the command line shown in errors, captures its output, and stops
//! it the one way ccb stops anything (SIGTERM to its process group, a grace period, SIGKILL).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod bounded;
mod landlock;
pub mod nosync;
pub use bounded::{Bounded, Confine, Resident};

/// The ccb binary that helper processes re-execute (the sandbox and the manifest evaluator
/// are ccb started with a hidden first argument, see `cli::main`). By default the running
/// program itself; a program that links the library without dispatching those arguments in
/// its `main` (the integration tests do) names the ccb binary with [`use_ccb_binary`].
pub fn ccb_binary() -> PathBuf {
    CCB_BINARY
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

static CCB_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`ccb_binary`] return `path` for the rest of the process. The first call wins: the
/// helpers of one process are one binary.
pub fn use_ccb_binary(path: impl Into<PathBuf>) {
    let _ = CCB_BINARY.set(path.into());
}

/// A program that could not run, or ran and failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ProcessError {
    /// Not started: a missing tool (`NotFound`) is the host's to fix.
    #[error("cannot run `{command}`")]
    #[diagnostic(code(ccb::process::spawn))]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// Started, but waiting for it failed.
    #[error("waiting for `{command}`")]
    #[diagnostic(code(ccb::process::wait))]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// Ran and exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    #[diagnostic(code(ccb::process::failed))]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        /// The last lines of its stderr.
        stderr: String,
    },
}

impl ProcessError {
    /// The program is not installed.
    pub fn is_missing_tool(&self) -> bool {
        matches!(self, ProcessError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A program to run. Built like [`std::process::Command`] (`&mut self` setters), so a spawn
/// site reads the same as before.
#[derive(Debug, Clone)]
pub struct Process {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    /// Bytes of address space the program may map (`RLIMIT_AS`), for bounded runs.
    memory_limit: Option<u64>,
    /// Its `fsync` and kin answered without waiting ([`nosync`]).
    without_syncs: bool,
    /// In a PID namespace, also a mount namespace with the host's tree read-only.
    read_only_host: bool,
}

impl Process {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_os_string(),
            args: vec![],
            env: vec![],
            env_clear: false,
            cwd: None,
            memory_limit: None,
            without_syncs: false,
            read_only_host: false,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((name.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Starts the program with only the variables set here (a build step must not see the
    /// operator's environment).
    pub fn env_clear(&mut self) -> &mut Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Limits the address space of a bounded run ([`Process::output_bounded`]).
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// When it runs as PID 1 of a namespace ([`Confine::PidNamespace`] as root, or
    /// [`Process::spawn_resident`]): in a mount namespace of its own where every mount of the
    /// host is read-only (recursively, `mount_setattr`) and /tmp writes into a private tmpfs,
    /// so that it reads what it likes and writes nothing that outlives it. In a process group
    /// (a user without the privilege for namespaces), Landlock allows writes only to
    /// `/dev/null` and a scratch directory that is its `TMPDIR` (`process::landlock`); a kernel
    /// without Landlock runs it unconfined.
    pub fn read_only_host(&mut self) -> &mut Self {
        self.read_only_host = true;
        self
    }

    /// Runs it with its syncs answered "done" without waiting for the disk ([`nosync`]): for
    /// a program whose output the caller makes durable itself, or throws away on failure.
    pub fn without_syncs(&mut self) -> &mut Self {
        self.without_syncs = true;
        self
    }

    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The command line as shown in errors: redacted (a git URL may carry user-info), and
    /// without the environment (it may hold credentials).
    pub fn command_line(&self) -> String {
        crate::redact::text(&self.raw_command_line())
    }

    fn raw_command_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("'{}'", a.replace('\'', r"'\''"))
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `std` command, for the few callers that wire pipes or pre-exec hooks themselves.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null());
        if self.env_clear {
            c.env_clear();
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        if self.without_syncs {
            use std::os::unix::process::CommandExt;
            let filter = nosync::NoSync::new();
            // SAFETY: installing the filter is one prctl; nothing is allocated after the fork.
            unsafe {
                c.pre_exec(move || filter.install());
            }
        }
        c
    }

    /// Runs to the end with stdout and stderr captured; a failed exit is an error carrying the
    /// end of stderr.
    pub fn output(&self) -> Result<Output, ProcessError> {
        let out = self
            .command()
            .output()
            .map_err(|source| ProcessError::Spawn {
                command: self.command_line(),
                source,
            })?;
        if !out.status.success() {
            return Err(self.failed(&out));
        }
        Ok(out)
    }

    /// Runs to the end with stdout and stderr captured, whatever its exit status (for the
    /// callers that read a failure's output themselves).
    pub fn output_any_status(&self) -> Result<Output, ProcessError> {
        self.command()
            .output()
            .map_err(|source| ProcessError::Spawn {
                command: self.command_line(),
                source,
            })
    }

    /// The error for a run of this program that ended with `out`.
    pub fn failed(&self, out: &Output) -> ProcessError {
        ProcessError::Failed {
            command: self.command_line(),
            status: out.status,
            // A tool echoes its arguments and its server's answers: the same redaction.
            stderr: crate::redact::text(&tail(&out.stderr, 8)),
        }
    }

    /// Runs to the end and returns its stdout, trimmed.
    pub fn read(&self) -> Result<String, ProcessError> {
        let out = self.output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts it in a process group of its own (so that [`stop`] reaches its children).
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Result<Child, ProcessError> {
        use std::os::unix::process::CommandExt;
        self.command()
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                command: self.command_line(),
                source,
            })
    }
}

/// A program started by [`Process::start`], with the command line its errors name. Its pipes
/// are the caller's to take; [`Running::stop`] is the one way to end it early.
pub struct Running {
    pub child: Child,
    command: String,
}

impl Process {
    /// Starts it in a process group of its own (so that [`Running::stop`] reaches its
    /// children), with its three streams as given.
    pub fn start(
        &self,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Running, ProcessError> {
        use std::os::unix::process::CommandExt;
        let child = self
            .command()
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                command: self.command_line(),
                source,
            })?;
        Ok(Running {
            child,
            command: self.command_line(),
        })
    }
}

impl Running {
    /// Collects its piped stderr on a thread: a chatty program must not block on a full pipe.
    pub fn drain_stderr(&mut self) -> std::thread::JoinHandle<Vec<u8>> {
        let err = self.child.stderr.take();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = err {
                let _ = std::io::Read::read_to_end(&mut e, &mut buf);
            }
            buf
        })
    }

    /// Waits for it to exit, whatever its status.
    pub fn wait(&mut self) -> Result<std::process::ExitStatus, ProcessError> {
        self.child.wait().map_err(|source| ProcessError::Wait {
            command: self.command.clone(),
            source,
        })
    }

    /// Whether it has exited (reaped if so).
    pub fn exited(&mut self) -> Result<bool, ProcessError> {
        match self.child.try_wait() {
            Ok(status) => Ok(status.is_some()),
            Err(source) => Err(ProcessError::Wait {
                command: self.command.clone(),
                source,
            }),
        }
    }

    /// Waits for it with its piped stdout and stderr collected, whatever its status.
    pub fn output(self) -> Result<Output, ProcessError> {
        let command = self.command;
        self.child
            .wait_with_output()
            .map_err(|source| ProcessError::Wait { command, source })
    }

    /// Waits for it; a failed exit is an error carrying the end of `stderr` (what
    /// [`Running::drain_stderr`] collected).
    pub fn finish(mut self, stderr: std::thread::JoinHandle<Vec<u8>>) -> Result<(), ProcessError> {
        let status = self.wait()?;
        let err = stderr.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(ProcessError::Failed {
            command: self.command,
            status,
            stderr: crate::redact::text(&tail(&err, 8)),
        })
    }

    /// Stops it: SIGTERM to its process group, up to `grace` for it to exit, then SIGKILL to
    /// what is left of the group. Reaps it.
    pub fn stop(&mut self, grace: Duration) {
        stop(&mut self.child, grace);
    }
}

/// The last `n` lines of a program's output.
pub fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops a child started by [`Process::spawn`]: SIGTERM to its process group, up to `grace`
/// for it to exit, then SIGKILL to what is left of the group. Reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(child.id()) else {
        return;
    };
    let pgid = Pid::from_raw(raw);
    match leader(pgid) {
        // Reaped before: its pid may name another process's group by now.
        Leader::Reaped => return,
        Leader::Exited => {}
        Leader::Running => {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && leader(pgid) == Leader::Running {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // The group can outlive its leader (a member that ignores SIGTERM, or one started in the
    // background), so it is killed whether or not the leader went. Until the leader is reaped
    // its pid cannot be reused, so the group id still names only this program's processes.
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
}

#[derive(PartialEq)]
enum Leader {
    Running,
    /// Exited and not yet reaped: a zombie that keeps its pid reserved.
    Exited,
    Reaped,
}

/// The state of a child started as its group's leader, without reaping it.
fn leader(pid: nix::unistd::Pid) -> Leader {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Leader::Running,
        Ok(_) => Leader::Exited,
        Err(nix::errno::Errno::EINTR) => Leader::Running,
        Err(_) => Leader::Reaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_program_names_its_command_line_and_the_end_of_its_stderr() {
        let e = Process::new("sh")
            .args(["-c", "echo one >&2; echo two >&2; exit 3"])
            .output()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("`sh -c 'echo one >&2; echo two >&2; exit 3'`"),
            "{text}"
        );
        assert!(text.ends_with("one\ntwo"), "{text}");
    }

    #[test]
    fn env_clear_leaves_only_the_variables_set_here() {
        let out = Process::new("/bin/sh")
            .env_clear()
            .env("CCB_Y", "y")
            .args(["-c", "echo ${HOME-unset} $CCB_Y"])
            .read()
            .unwrap();
        assert_eq!(out, "unset y");
    }

    #[test]
    fn a_missing_program_is_a_missing_tool() {
        let e = Process::new("ccb-no-such-tool").output().unwrap_err();
        assert!(e.is_missing_tool());
    }

    #[test]
    fn env_and_directory_reach_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let out = Process::new("sh")
            .args(["-c", "echo $CCB_X; pwd"])
            .env("CCB_X", "set")
            .current_dir(dir.path())
            .read()
            .unwrap();
        let canon = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("set\n{}", canon.display()));
    }

    #[test]
    fn stop_ends_a_program_that_ignores_sigterm_after_the_grace_period() {
        let mut child = Process::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .spawn(Stdio::null(), Stdio::null())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        stop(&mut child, Duration::from_millis(200));
        use std::os::unix::process::ExitStatusExt;
        let status = child.try_wait().unwrap().expect("reaped");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn stop_lets_a_program_that_heeds_sigterm_end_by_it() {
        let mut child = Process::new("sleep")
            .arg("30")
            .spawn(Stdio::null(), Stdio::null())
            .unwrap();
        stop(&mut child, Duration::from_secs(30));
        use std::os::unix::process::ExitStatusExt;
        let status = child.try_wait().unwrap().expect("reaped");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn a_started_program_s_failure_names_it_and_the_end_of_what_it_wrote_to_stderr() {
        let mut tar = Process::new("sh")
            .args(["-c", "echo first >&2; echo last >&2; exit 2"])
            .start(Stdio::null(), Stdio::null(), Stdio::piped())
            .unwrap();
        let stderr = tar.drain_stderr();
        let e = tar.finish(stderr).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("`sh -c "), "{text}");
        assert!(text.ends_with("first\nlast"), "{text}");
        let missing = Process::new("ccb-no-such-tool")
            .start(Stdio::null(), Stdio::null(), Stdio::null())
            .err()
            .unwrap();
        assert!(missing.is_missing_tool());
    }

    #[test]
    fn a_started_program_is_stopped_the_one_way_children_included() {
        // A shell that ignores SIGTERM and a child of it: both go at the end of the grace.
        let mut running = Process::new("sh")
            .args(["-c", "trap '' TERM; sleep 60 & wait"])
            .start(Stdio::null(), Stdio::null(), Stdio::null())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        running.stop(Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(running.exited().unwrap());
        assert_group_ends(&running.child.id().to_string());
    }

    #[test]
    fn a_program_run_without_syncs_runs_under_the_filter_and_others_do_not() {
        let seccomp = |p: &mut Process| {
            let out = p.args(["Seccomp:", "/proc/self/status"]).read().unwrap();
            out.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(seccomp(Process::new("grep").without_syncs()), "2");
        assert_eq!(seccomp(&mut Process::new("grep")), "0");
    }

    #[test]
    fn a_program_whose_leader_obeys_sigterm_leaves_no_member_of_its_group_behind() {
        // The shell exits at SIGTERM; its background child ignores it and would outlive it.
        let mut running = Process::new("sh")
            .args(["-c", "(trap '' TERM; exec sleep 60) & wait"])
            .start(Stdio::null(), Stdio::null(), Stdio::null())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        running.stop(Duration::from_secs(5));
        assert!(running.exited().unwrap());
        assert_group_ends(&running.child.id().to_string());
    }

    /// Nothing of the group runs once SIGKILL has been delivered. Delivery is asynchronous (a
    /// killed process can still show as running for a moment under load), so it is given a
    /// few seconds; a killed child may stay a zombie until init reaps it.
    fn assert_group_ends(group: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let live: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid pgrp ...: the fields after the command's ')'.
                    let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
                    let fields: Vec<&str> = after.split_whitespace().collect();
                    fields.get(2) == Some(&group) && fields.first() != Some(&"Z")
                })
                .collect();
            if live.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "still running: {live:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
