//! A read-only host without privileges, by Landlock (Linux 5.13+): what the mount namespace
//! of [`super::Process::read_only_host`] gives as root, for a ccb that runs as a user (an
//! element's `environment.d` captured by `ccb check` or `query`): the program reads and runs
//! what it likes and writes nowhere but `/dev/null` and a scratch directory of its own.
//!
//! Raw system calls rather than the `landlock` crate: the ruleset is built before the fork,
//! but the last step (`landlock_restrict_self`) runs between fork and exec, where only
//! async-signal-safe calls are allowed, and the crate's `restrict_self` neither promises
//! that nor lets the two halves be split; what is needed here is three calls and two
//! structures from the kernel's `uapi/linux/landlock.h`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

const WRITE_FILE: u64 = 1 << 1;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
/// ABI 2.
const REFER: u64 = 1 << 13;
/// ABI 3.
const TRUNCATE: u64 = 1 << 14;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// A ruleset that forbids every write but beneath its allowed paths, ready to be applied to
/// a child between fork and exec.
#[derive(Debug)]
pub struct ReadOnly {
    fd: OwnedFd,
}

/// Every access that changes the filesystem, of those this kernel's Landlock knows.
fn writes(abi: i64) -> u64 {
    let mut w = WRITE_FILE
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        w |= REFER;
    }
    if abi >= 3 {
        w |= TRUNCATE;
    }
    w
}

impl ReadOnly {
    /// Writes only to `/dev/null` and beneath `scratch`. `None` when this kernel has no
    /// Landlock (built without it, or turned off at boot).
    pub fn new(scratch: &Path) -> std::io::Result<Option<ReadOnly>> {
        // SAFETY: the version query takes no pointer.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if abi < 1 {
            return Ok(None);
        }
        let handled = writes(abi);
        let attr = RulesetAttr {
            handled_access_fs: handled,
        };
        // SAFETY: `attr` is a valid ruleset attribute of the size given.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just handed this descriptor over.
        let ruleset = ReadOnly {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        };
        ruleset.allow(Path::new("/dev/null"), WRITE_FILE | (handled & TRUNCATE))?;
        ruleset.allow(scratch, handled)?;
        Ok(Some(ruleset))
    }

    fn allow(&self, path: &Path, access: u64) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
        // SAFETY: a NUL-terminated path; O_PATH opens nothing but a reference.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `open` just returned it.
        let parent = unsafe { OwnedFd::from_raw_fd(raw) };
        let rule = PathBeneathAttr {
            allowed_access: access,
            parent_fd: parent.as_raw_fd(),
        };
        // SAFETY: a valid rule for a ruleset descriptor this value owns.
        let done = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                self.fd.as_raw_fd(),
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor [`restrict_self`] takes in the child.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Applies the ruleset to the calling process and every process it starts from then on.
/// Async-signal-safe (two system calls): for a `pre_exec` hook.
pub fn restrict_self(ruleset: RawFd) -> std::io::Result<()> {
    // SAFETY: prctl and the Landlock call take plain integers.
    unsafe {
        // Required of an unprivileged caller, and right anyway: nothing the program runs
        // may gain privileges (setuid) that would let it out.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
