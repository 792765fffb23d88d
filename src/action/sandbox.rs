//! The process model of an action (ARCHITECTURE.md, "Building safely").
//!
//! ```text
//! ccb (worker thread) ──spawn──▶ ccb __sandbox SPEC      own process group, dies with ccb
//!                                  │ unshare(mount, pid); mounts made private
//!                                  └─fork──▶ PID 1 of the new namespace: runs the action
//! ```
//!
//! Both sandbox processes carry PR_SET_PDEATHSIG=SIGKILL, so `kill -9` of ccb takes the
//! sandbox with it; when PID 1 dies the kernel kills everything else in the PID namespace,
//! and when the last process of the mount namespace is gone every mount made in it (the
//! overlay, proc, sys, dev, bind mounts) goes too. Nothing is ever mounted in the host's
//! namespace, so there is nothing to clean up after a crash.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getppid};

use super::runner::{self, RunError};
use super::spec::ActionSpec;
use crate::process::Process;

/// The hidden argument that turns the ccb binary into a sandbox.
pub const SANDBOX_ARG: &str = "__sandbox";

/// Exit codes of the sandbox, read by the parent.
pub const EXIT_OK: i32 = 0;
pub const EXIT_STEP_FAILED: i32 = 10;
pub const EXIT_ENGINE: i32 = 11;
pub const EXIT_CANCELLED: i32 = 12;

/// Starts the sandbox for the spec at `spec_path`; its stdout carries events, its stderr goes
/// to `log`.
pub fn spawn(spec_path: &Path, log: &Path) -> io::Result<Child> {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)?;
    let parent = std::process::id() as i32;
    let mut cmd = Process::new(crate::process::ccb_binary())
        .arg(SANDBOX_ARG)
        .arg(spec_path)
        .command();
    cmd.stdout(Stdio::piped()).stderr(log).process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, unshare) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the line above: then nobody would kill us.
            if getppid().as_raw() != parent {
                return Err(io::Error::other("ccb exited while starting a sandbox"));
            }
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Says why the sandbox could not start, on its stderr: the action's log, not ccb's Shell. A
/// log that is gone (its reader killed) must not turn the failure into a panic.
fn setup_failed(what: std::fmt::Arguments) -> i32 {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "ccb sandbox: {what}");
    EXIT_ENGINE
}

/// `ccb __sandbox SPEC`: the sandbox's own main. Returns the process exit code.
pub fn main(spec_path: &Path) -> i32 {
    let spec: ActionSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            return setup_failed(format_args!("cannot read {}: {e}", spec_path.display()));
        }
    };
    // Mounts made from here on must never propagate back to the host.
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    ) {
        return setup_failed(format_args!("cannot make mounts private: {e}"));
    }
    // PID 1 cannot see its parent from inside the new PID namespace: it learns whether the
    // parent is still alive from this pipe, whose write end only the parent keeps open.
    let (alive_r, alive_w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => {
            return setup_failed(format_args!("pipe failed: {e}"));
        }
    };
    // SAFETY: the process is single-threaded here (the sandbox main has started nothing).
    match unsafe { fork() } {
        Err(e) => setup_failed(format_args!("fork failed: {e}")),
        Ok(ForkResult::Child) => {
            let _ = prctl::set_pdeathsig(Signal::SIGKILL);
            drop(alive_w);
            // The parent may have died before prctl: then the pipe has no writer left.
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&alive_r),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0) {
                std::process::exit(EXIT_CANCELLED);
            }
            drop(alive_r);
            let cancelled = Arc::new(AtomicBool::new(false));
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                let _ = signal_hook::flag::register(sig, cancelled.clone());
            }
            let code = match runner::run(&spec, cancelled) {
                Ok(()) => EXIT_OK,
                Err(RunError::StepFailed) => EXIT_STEP_FAILED,
                Err(RunError::Cancelled) => EXIT_CANCELLED,
                Err(e) => {
                    super::event::emit(&super::event::Event::Error(e.failure()));
                    EXIT_ENGINE
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            let code = wait_forwarding(child);
            drop(alive_w);
            code
        }
    }
}

/// Waits for PID 1, passing on the signals that ask the action to stop.
fn wait_forwarding(child: Pid) -> i32 {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let raw = child.as_raw();
        // SAFETY: kill is async-signal-safe.
        let _ = unsafe {
            signal_hook::low_level::register(sig, move || {
                libc::kill(raw, libc::SIGTERM);
            })
        };
    }
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return EXIT_ENGINE,
        }
    }
}
