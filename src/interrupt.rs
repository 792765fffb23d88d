//! Ctrl-C and SIGTERM for the commands that install it (build, fetch, publish): the first
//! signal asks each long operation to stop at its next safe point (a build cancels its running
//! actions, a download or an upload stops between chunks and keeps what resumes it), and ccb
//! exits 130 once it has cleaned up; a second signal exits 130 at once (the sandboxes die with
//! ccb).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The exit code of an interrupted command (128 + SIGINT, as shells report it).
pub const EXIT_CODE: u8 = 130;

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The process's interrupt flag; the signal handlers are installed on the first call.
pub fn flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered first, so it sees the flag before the second handler sets it.
            let _ = signal_hook::flag::register_conditional_shutdown(
                sig,
                i32::from(EXIT_CODE),
                flag.clone(),
            );
            let _ = signal_hook::flag::register(sig, flag.clone());
        }
        flag
    })
    .clone()
}

/// Whether Ctrl-C (or SIGTERM) has been received.
pub fn requested() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// The error a transfer stops with when interrupted: not retried, not a failure of the
/// source or the store.
pub fn io_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted (Ctrl-C)")
}
