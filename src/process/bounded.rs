//! Runs of untrusted programs that must end: a time limit, an optional memory limit, and
//! nothing they start left behind.
//!
//! With [`Confine::PidNamespace`] the program is PID 1 of a fresh PID namespace, created by
//! `clone(CLONE_NEWPID | CLONE_VM | CLONE_VFORK)` straight from ccb (no helper process, and no
//! copy of ccb's page tables as a `fork` would make, which grew with the size of the project
//! and made a cold `ccb check` quadratic). When PID 1 exits, or is killed at the limit, the
//! kernel kills every other process of the namespace, including one that left the process
//! group or the session (`setsid`). Without the privilege to make a namespace (not root),
//! and with [`Confine::ProcessGroup`], the program runs in a process group of its own,
//! killed when it ends.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use super::{Process, ProcessError};

/// Where a bounded run is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confine {
    /// A process group of its own, killed when the program ends.
    ProcessGroup,
    /// PID 1 of a fresh PID namespace (as root; a process group otherwise).
    PidNamespace,
}

/// The end of a bounded run.
#[derive(Debug)]
pub struct Bounded {
    pub output: Output,
    /// The time limit was reached and the program killed.
    pub timed_out: bool,
}

/// A started program: its pid, how to end it, and its output pipes.
struct Started {
    pid: libc::pid_t,
    end: End,
    stdout: File,
    stderr: File,
    /// The only place a read-only program in a process group may write (its TMPDIR),
    /// removed once it has ended.
    _scratch: Option<tempfile::TempDir>,
}

/// How a started program is ended.
enum End {
    /// PID 1 of its namespace, by a pidfd ([`kill_pid1`]).
    Pid1(OwnedFd),
    /// Its process group, also after it exited (what it left in the group goes too).
    Group(libc::pid_t),
}

impl End {
    fn kill(&self) {
        match self {
            End::Pid1(fd) => kill_pid1(fd.as_raw_fd()),
            // SAFETY: a system call on a group we made; no memory effects.
            End::Group(pgid) => unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            },
        }
    }
}

impl Process {
    /// Runs the program to its end or to `limit`, whichever comes first, with stdout and
    /// stderr captured, confined as `confine` says; in every case, nothing it started is left
    /// running when this returns. A failed exit is not an error here: the caller reads
    /// `output.status`.
    pub fn output_bounded(
        &self,
        limit: Duration,
        confine: Confine,
    ) -> Result<Bounded, ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            command: self.command_line(),
            source,
        };
        let started = match confine {
            Confine::PidNamespace if nix::unistd::geteuid().is_root() => {
                self.spawn_pid1().map_err(spawn_error)?
            }
            _ => self.spawn_group().map_err(spawn_error)?,
        };
        let reader = |mut pipe: File| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = reader(started.stdout);
        let stderr = reader(started.stderr);
        // The wait happens on its own thread so this one can give up at the limit without
        // polling.
        let pid = started.pid;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(wait(pid));
        });
        let (status, timed_out) = match rx.recv_timeout(limit) {
            Ok(status) => (status, false),
            Err(_) => {
                started.end.kill();
                let status = rx
                    .recv()
                    .map_err(|_| spawn_error(std::io::Error::other("the waiter vanished")))?;
                (status, true)
            }
        };
        // PID 1 is gone, and with it its namespace; a process group may not be.
        if let End::Group(_) = started.end {
            started.end.kill();
        }
        let status = status.map_err(spawn_error)?;
        Ok(Bounded {
            output: Output {
                status,
                stdout: stdout.join().unwrap_or_default(),
                stderr: stderr.join().unwrap_or_default(),
            },
            timed_out,
        })
    }

    fn spawn_group(&self) -> std::io::Result<Started> {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // Without the privilege for a mount namespace, Landlock keeps a read-only program's
        // writes to a scratch directory; a kernel without Landlock runs it as before.
        let (scratch, ruleset) = if self.read_only_host {
            let scratch = tempfile::Builder::new().prefix("ccb-ro-").tempdir()?;
            let ruleset = super::landlock::ReadOnly::new(scratch.path())?;
            cmd.env("TMPDIR", scratch.path());
            (Some(scratch), ruleset)
        } else {
            (None, None)
        };
        let landlock = ruleset.as_ref().map(super::landlock::ReadOnly::raw);
        let memory = self.memory_limit;
        // SAFETY: prctl, setrlimit and landlock_restrict_self are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // ccb's death ends the run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(bytes) = memory {
                    set_memory_limit(bytes)?;
                }
                match landlock {
                    Some(fd) => super::landlock::restrict_self(fd),
                    None => Ok(()),
                }
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id() as libc::pid_t;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(std::io::Error::other("no pipes to the child"));
        };
        drop(ruleset);
        Ok(Started {
            pid,
            end: End::Group(pid),
            stdout: File::from(OwnedFd::from(out)),
            stderr: File::from(OwnedFd::from(err)),
            _scratch: scratch,
        })
    }

    fn spawn_pid1(&self) -> std::io::Result<Started> {
        let stdin = File::open("/dev/null")?;
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (pid, pidfd) = self.clone_pid1(&[
            (stdin.as_raw_fd(), 0),
            (out_w.as_raw_fd(), 1),
            (err_w.as_raw_fd(), 2),
        ])?;
        drop((stdin, out_w, err_w));
        Ok(Started {
            pid,
            end: End::Pid1(pidfd),
            stdout: File::from(out_r),
            stderr: File::from(err_r),
            _scratch: None,
        })
    }

    /// Starts the program as PID 1 of a fresh PID namespace with each `(fd, target)` of `fds`
    /// as its descriptor `target` (and no other of ccb's); returns its pid and a pidfd.
    fn clone_pid1(&self, fds: &[(RawFd, RawFd)]) -> std::io::Result<(libc::pid_t, OwnedFd)> {
        let cstr = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a NUL byte in an argument",
                )
            })
        };
        let env_path = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                (!self.env_clear)
                    .then(|| std::env::var_os("PATH"))
                    .flatten()
            });
        let program = cstr(find_program(&self.program, env_path.as_deref())?.as_os_str())?;
        let argv: Vec<CString> = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| cstr(a))
            .collect::<Result<_, _>>()?;
        let mut vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = if self.env_clear {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in &self.env {
            vars.retain(|(name, _)| name != k);
            vars.push((k.clone(), v.clone()));
        }
        let envp: Vec<CString> = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(OsStr::from_bytes(&kv))
            })
            .collect::<Result<_, _>>()?;
        let cwd = self.cwd.as_ref().map(|d| cstr(d.as_os_str())).transpose()?;
        let pointers = |v: &[CString]| {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        // Copies above every target, so that no dup2 in the child overwrites a descriptor a
        // later one still reads, and none is its own target (which would keep close-on-exec).
        let above = fds.iter().map(|(_, t)| *t).max().unwrap_or(0) + 1;
        let sources: Vec<OwnedFd> = fds
            .iter()
            .map(|(fd, _)| {
                // SAFETY: duplicates a descriptor the caller keeps open; we own the copy.
                let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above) };
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: fcntl returned a new descriptor, owned from here on.
                Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) })
            })
            .collect::<std::io::Result<_>>()?;
        let args = ChildArgs {
            program: program.as_ptr(),
            argv: pointers(&argv),
            envp: pointers(&envp),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            fds: sources
                .iter()
                .zip(fds)
                .map(|(s, (_, t))| (s.as_raw_fd(), *t))
                .collect(),
            memory_limit: self.memory_limit,
            read_only_host: self.read_only_host,
            errno: AtomicI32::new(0),
        };
        let mount_ns = if self.read_only_host {
            libc::CLONE_NEWNS
        } else {
            0
        };
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the child shares this memory (CLONE_VM) while this thread is suspended
        // (CLONE_VFORK) until it execs or exits; it only reads `args` (alive until then) and
        // makes async-signal-safe system calls on its own stack.
        let pid = unsafe {
            let top = stack.as_mut_ptr().add(stack.len());
            let top = top.sub(top as usize % 16);
            libc::clone(
                pid1_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_NEWPID | mount_ns | libc::SIGCHLD,
                std::ptr::addr_of!(args) as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(sources);
        let errno = args.errno.load(Ordering::SeqCst);
        if errno != 0 {
            let _ = wait(pid);
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        // Opened before anything can reap the child, so it refers to this process only.
        // SAFETY: a system call returning a new fd that we then own.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: our own, unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = wait(pid);
            return Err(err);
        }
        // SAFETY: pidfd_open returned a new fd, owned from here on.
        let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd as RawFd) };
        Ok((pid, pidfd))
    }

    /// Starts the program as a [`Resident`]: PID 1 of a fresh PID namespace, reading requests
    /// on its stdin and answering one line each on its stdout, with `fds` passed as
    /// `(fd, target)` and stderr at /dev/null. Root only (a namespace needs the privilege).
    pub fn spawn_resident(&self, fds: &[(RawFd, RawFd)]) -> Result<Resident, ProcessError> {
        let spawn_error = |source| ProcessError::Spawn {
            command: self.command_line(),
            source,
        };
        let started = (|| {
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            let (in_r, in_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let mut all = vec![
                (in_r.as_raw_fd(), 0),
                (out_w.as_raw_fd(), 1),
                (null.as_raw_fd(), 2),
            ];
            all.extend_from_slice(fds);
            let (pid, pidfd) = self.clone_pid1(&all)?;
            Ok::<_, std::io::Error>(Resident {
                pid,
                pidfd,
                stdin: File::from(in_w),
                stdout: File::from(out_r),
                pending: Vec::new(),
            })
        })();
        started.map_err(spawn_error)
    }
}

/// A long-lived program in a PID namespace of its own, asked one thing at a time (see
/// [`Process::spawn_resident`]). Dropping it kills it, and with it everything it started.
pub struct Resident {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    stdin: File,
    stdout: File,
    /// Bytes read past the last answer.
    pending: Vec<u8>,
}

impl Resident {
    /// Sends `request` and waits at most `limit` for the answer line (without its newline):
    /// `Ok(None)` when the limit passed first; an error when the program ended.
    pub fn ask(&mut self, request: &[u8], limit: Duration) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Write;
        self.stdin.write_all(request)?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line = self.pending[..end].to_vec();
                self.pending.drain(..=end);
                return Ok(Some(line));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut poll = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: polls one descriptor we own, described by a local struct.
            let r = unsafe { libc::poll(&mut poll, 1, ms) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if r == 0 {
                continue;
            }
            let mut buf = [0u8; 512];
            let n = self.stdout.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        kill_pid1(self.pidfd.as_raw_fd());
        let _ = wait(self.pid);
    }
}

/// SIGKILL to PID 1 of a namespace through its pidfd: a signal through it can never reach
/// another process that reused the pid after the waiter reaped it.
fn kill_pid1(pidfd: RawFd) {
    // SAFETY: a system call on an fd we own; no memory effects.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// What the cloned child reads: prepared before `clone`, since the child may not allocate.
struct ChildArgs {
    program: *const libc::c_char,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: *const libc::c_char,
    /// (descriptor, the number it gets in the child).
    fds: Vec<(RawFd, RawFd)>,
    memory_limit: Option<u64>,
    /// In a mount namespace of its own (`CLONE_NEWNS`): make the host read-only there
    /// ([`read_only_host`]).
    read_only_host: bool,
    /// Set by the child when it cannot exec.
    errno: AtomicI32,
}

/// PID 1 of the new namespace until it execs the program.
extern "C" fn pid1_main(data: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `data` is the parent's `ChildArgs`, alive while the parent is suspended.
    let args = unsafe { &*(data as *const ChildArgs) };
    let fail = || {
        args.errno.store(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(1),
            Ordering::SeqCst,
        );
        // SAFETY: leaves the child without unwinding or running the parent's exit handlers.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: async-signal-safe system calls on the child's own stack and file table.
    unsafe {
        // Signal masks and ignored signals survive exec: give the program the defaults
        // (Rust's runtime ignores SIGPIPE).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        for (fd, target) in &args.fds {
            if libc::dup2(*fd, *target) < 0 {
                fail();
            }
        }
        if args.read_only_host && read_only_host().is_err() {
            fail();
        }
        if !args.cwd.is_null() && libc::chdir(args.cwd) < 0 {
            fail();
        }
        if let Some(bytes) = args.memory_limit
            && set_memory_limit(bytes).is_err()
        {
            fail();
        }
        // ccb's death ends the namespace.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            fail();
        }
        libc::execve(args.program, args.argv.as_ptr(), args.envp.as_ptr());
    }
    fail();
    127
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// In the child's fresh mount namespace: nothing it mounts reaches the host (private
/// propagation), every mount it inherited is read-only, and /tmp takes writes into a tmpfs of
/// its own (bash writes here-documents there) while still showing the host's files (element
/// trees can live there): an overlay whose upper layer is a tmpfs mounted over /dev/shm.
/// Only system calls on static strings and the stack: the child shares ccb's memory until it
/// execs.
fn read_only_host() -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: system calls on NUL-terminated literals and a local struct.
    unsafe {
        check(libc::c_long::from(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )))?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        check(libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        ))?;
        check(libc::c_long::from(libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev/shm".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=1777,size=64m".as_ptr().cast(),
        )))?;
        for dir in [c"/dev/shm/.ccb-tmp", c"/dev/shm/.ccb-work"] {
            check(libc::c_long::from(libc::mkdir(dir.as_ptr(), 0o1777)))?;
        }
        check(libc::c_long::from(libc::mount(
            c"overlay".as_ptr(),
            c"/tmp".as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"lowerdir=/tmp,upperdir=/dev/shm/.ccb-tmp,workdir=/dev/shm/.ccb-work"
                .as_ptr()
                .cast(),
        )))?;
    }
    Ok(())
}

fn set_memory_limit(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: a plain system call on a local value.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The path to exec for `program`: itself when it names a path, else the first executable of
/// that name on `path` (execve does not search).
fn find_program(program: &OsStr, path: Option<&OsStr>) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.as_bytes().contains(&b'/') {
        return Ok(program.into());
    }
    std::env::split_paths(path.unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
}

/// Reaps `pid`.
fn wait(pid: libc::pid_t) -> std::io::Result<ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(pid: i32) -> bool {
        (0..250).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        })
    }

    #[test]
    fn output_status_and_environment_reach_the_caller() {
        let out = Process::new("sh")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CCB_X", "x")
            .args(["-c", "echo $CCB_X; echo err >&2; exit 3"])
            .current_dir("/")
            .output_bounded(Duration::from_secs(30), Confine::PidNamespace)
            .unwrap();
        assert!(!out.timed_out);
        assert_eq!(out.output.status.code(), Some(3));
        assert_eq!(out.output.stdout, b"x\n");
        assert_eq!(out.output.stderr, b"err\n");
    }

    #[test]
    fn a_missing_program_is_a_missing_tool() {
        let e = Process::new("ccb-no-such-tool")
            .output_bounded(Duration::from_secs(5), Confine::PidNamespace)
            .unwrap_err();
        assert!(e.is_missing_tool(), "{e}");
    }

    #[test]
    fn a_program_that_runs_past_the_limit_is_killed() {
        let start = std::time::Instant::now();
        let out = Process::new("sleep")
            .arg("60")
            .output_bounded(Duration::from_millis(200), Confine::PidNamespace)
            .unwrap();
        assert!(out.timed_out);
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_process_that_escapes_into_its_own_session_ends_with_the_program() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "setsid sleep 3171 </dev/null >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        );
        // The pid inside the namespace is not the host's: find the sleep from outside.
        let out = Process::new("sh")
            .args(["-c", &format!("{script}; sleep 0.2")])
            .output_bounded(Duration::from_secs(30), Confine::PidNamespace)
            .unwrap();
        assert!(out.output.status.success());
        let leftover = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x003171\x00")
            })
            .filter(|pid| !gone(*pid))
            .collect::<Vec<_>>();
        assert!(leftover.is_empty(), "still running: {leftover:?}");
    }
}
