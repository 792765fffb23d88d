//! Build scripts run with `fsync` and its kin answered "done" without touching the disk, as
//! eatmydata does, but by a seccomp filter instead of `LD_PRELOAD`: it holds for static
//! programs, for mmdebstrap's own chroot and for emulated foreign-arch programs (qemu-user
//! makes the host's calls), and needs nothing installed in the image.
//!
//! Why it is safe: a step's tree is thrown away when the build fails or the host crashes
//! (an action is committed to the store only after it finished), so a script's sync only
//! makes it wait for the disk. dpkg's `force-unsafe-io` covers the unpacking of files, not its
//! database: dpkg still syncs `/var/lib/dpkg` at every state change of every package, apt
//! syncs its lists and archives, and on a shared build host each sync waits for everyone's
//! writes (5–6 ms here, thousands of times per cold layer). ccb's own writes (the store, the
//! disk's outputs) are made outside the filter.

use std::io;

/// `AUDIT_ARCH_*` of the host: the filter applies only to the host's own system calls (the
/// numbers below are the host's), never to a 32-bit or other ABI a program might enter.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// The system calls that wait for data to reach the disk.
const SYNCS: [libc::c_long; 6] = [
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_syncfs,
    libc::SYS_sync_file_range,
    libc::SYS_msync,
];

/// A seccomp filter, built before a fork so that installing it allocates nothing.
pub struct NoSync {
    program: Vec<libc::sock_filter>,
}

impl Default for NoSync {
    fn default() -> Self {
        Self::new()
    }
}

impl NoSync {
    pub fn new() -> Self {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
        // struct seccomp_data { int nr; __u32 arch; ... }
        let (nr, arch) = (0, 4);
        let n = SYNCS.len() as u8;
        let mut program = vec![
            load(arch),
            // Another ABI: allowed (jump over the loads and tests to ALLOW).
            jeq(AUDIT_ARCH, 0, n + 1),
            load(nr),
        ];
        for (i, call) in SYNCS.iter().enumerate() {
            let i = i as u8;
            // A match jumps to ERRNO(0), past the rest of the tests and ALLOW.
            program.push(jeq(*call as u32, n - i, 0));
        }
        program.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
        // "errno 0": the call returns 0, success, and the kernel never runs it.
        program.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO));
        Self { program }
    }

    /// Installs the filter on the calling thread; what it runs inherits it. Async-signal-safe
    /// (one `prctl`), for `pre_exec`. Without the right to install one (no `CAP_SYS_ADMIN`
    /// and no `no_new_privs`), the program runs with real syncs: slower, never wrong.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: prctl reads `prog` and the instructions it points at, both alive here.
        let done = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if done == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EACCES) {
            Ok(())
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Runs `script` in python3 under the filter, as build steps run.
    fn python_under_filter(script: &str) -> String {
        let filter = NoSync::new();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(script);
        // SAFETY: install is one prctl.
        unsafe {
            cmd.pre_exec(move || filter.install());
        }
        let out = cmd.output().expect("run python3");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn a_sync_under_the_filter_succeeds_without_reaching_the_kernel() {
        // fsync of a closed descriptor fails with EBADF in the kernel: a success proves the
        // call never got there.
        let got = python_under_filter(
            "import os\n\
             for f in (os.fsync, os.fdatasync):\n\
             \ttry:\n\t\tf(987); print('ok', end=' ')\n\
             \texcept OSError as e: print(e.errno, end=' ')\n\
             os.sync(); print('synced')",
        );
        assert_eq!(got, "ok ok synced");
    }

    #[test]
    fn every_other_call_works_under_the_filter() {
        let got = python_under_filter(
            "import os, tempfile\n\
             with tempfile.TemporaryDirectory() as d:\n\
             \tp = os.path.join(d, 'f'); open(p, 'w').write('kept')\n\
             \tprint(open(p).read(), os.getpid() > 0)",
        );
        assert_eq!(got, "kept True");
    }
}
