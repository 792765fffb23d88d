//! A watch on the store's filesystem while an action runs. A step that meets a full disk
//! usually fails, but not always: apt-get, after ENOSPC in its list downloads, was seen
//! waiting forever on its own download methods. Nothing can progress on a full store anyway,
//! so an action during which the store stays full for a grace period is stopped, and reported
//! as what it is: no space left, naming the store.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Below this much space available to unprivileged writers the filesystem counts as full:
/// build steps run without the capability that lets root use ext4's reserved blocks, so for
/// them the store is full while root still sees some room; and a writer meets ENOSPC with a
/// few hundred KiB still shown free (ext4 holds clusters back for its own metadata).
const FULL_BELOW: u64 = 4 << 20;
/// How long the store may stay full before the action is stopped, unless
/// `CCB_STORE_FULL_GRACE` (seconds) says otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// statvfs at most this often.
const EVERY: Duration = Duration::from_secs(1);

pub(crate) struct FullWatch {
    path: PathBuf,
    pub grace: Duration,
    full_since: Option<Instant>,
    checked: Option<Instant>,
}

impl FullWatch {
    pub fn new(path: &Path) -> Self {
        let grace = std::env::var("CCB_STORE_FULL_GRACE")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        Self {
            path: path.to_path_buf(),
            grace,
            full_since: None,
            checked: None,
        }
    }

    /// True once the filesystem has been full, at every look, for the whole grace period.
    pub fn stuck(&mut self) -> bool {
        let now = Instant::now();
        if self.checked.is_some_and(|t| now.duration_since(t) < EVERY) {
            return false;
        }
        self.checked = Some(now);
        if is_full(&self.path) {
            let since = *self.full_since.get_or_insert(now);
            now.duration_since(since) >= self.grace
        } else {
            self.full_since = None;
            false
        }
    }
}

/// Out of blocks or out of inodes. A filesystem that cannot be asked is not called full: the
/// watch only ever stops what would otherwise wait forever.
fn is_full(path: &Path) -> bool {
    let Ok(s) = nix::sys::statvfs::statvfs(path) else {
        return false;
    };
    let free = s.blocks_available().saturating_mul(s.fragment_size());
    let no_inodes = s.files() > 0 && s.files_free() == 0;
    free < FULL_BELOW || no_inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_with_room_is_never_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FullWatch::new(dir.path());
        w.grace = Duration::ZERO;
        assert!(!is_full(dir.path()));
        assert!(!w.stuck());
    }

    #[test]
    fn a_path_that_cannot_be_asked_is_not_full() {
        assert!(!is_full(Path::new("/nonexistent/ccb/store")));
    }
}
