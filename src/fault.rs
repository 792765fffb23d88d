//! Named fault points for the fault campaign (`tests/cli/faults.rs`): with
//! `CCB_FAULT_POINT=<name>` set, ccb stops itself at that point the way an operator or the
//! host would: `kill -9` (the default), or Ctrl-C to its process group with
//! `CCB_FAULT_SIGNAL=INT`. A point fires on its first hit, or on its n-th with `<name>#n`.
//!
//! Compiled in only with `debug_assertions`: the test suite drives the debug binary it
//! builds (no extra feature build, so no second copy of ccb in target/), while the release
//! binary operators run holds no trace of it: [`point`] is an empty inline function there, and
//! no environment variable can make a production ccb kill itself.

#[cfg(debug_assertions)]
mod imp {
    use std::sync::atomic::{AtomicU32, Ordering};

    static HITS: AtomicU32 = AtomicU32::new(0);

    pub fn point(name: &str) {
        let Ok(want) = std::env::var("CCB_FAULT_POINT") else {
            return;
        };
        let (want, nth) = match want.split_once('#') {
            Some((w, n)) => (w.to_string(), n.parse::<u32>().unwrap_or(1)),
            None => (want, 1),
        };
        if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != nth {
            return;
        }
        let int = std::env::var("CCB_FAULT_SIGNAL").is_ok_and(|s| s == "INT");
        // SAFETY: kill and getpgrp have no memory preconditions.
        unsafe {
            if int {
                // What a terminal sends: the whole foreground group, ccb included.
                libc::kill(-libc::getpgrp(), libc::SIGINT);
            } else {
                libc::kill(libc::getpid(), libc::SIGKILL);
                // SIGKILL to oneself is delivered before kill returns; never go on.
                libc::abort();
            }
        }
    }
}

/// A named point where the fault campaign may stop ccb (see the module's documentation).
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    imp::point(name);
}

/// Release builds: no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
