//! A head start for the qcow2: clusters compressed while the raw disk is still being written.
//!
//! `mkfs.ext4 -d` fills the root filesystem on one core for seconds, and the qcow2's
//! compression, most of a disk action's CPU, could only start after it. Meanwhile the other
//! core compresses every cluster that mkfs has written and left alone since the last look,
//! keeping with each the BLAKE3 hash of the bytes it compressed. The conversion afterwards
//! reuses a cluster's result only where the disk's bytes still hash the same, and compresses
//! the rest (metadata mkfs rewrote, what ccb wrote after it): the qcow2 is byte for byte the
//! one written without a head start, only sooner.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::{CLUSTER, Compression, Stored};

/// How long the writer must have left a cluster alone (one look to the next) before it is
/// compressed ahead: a cluster compressed while it is still being written is work thrown away.
/// Each look also holds the file's inode lock for a moment, which the writer then waits for.
const SETTLE: Duration = Duration::from_millis(100);

/// The memory the results may hold at most: the head start stops there rather than hold a
/// disk's worth, as several disk actions may run at once (CC-Debian12's whole qcow2 is
/// ~500 MiB, of which the head start holds about half).
const MAX_HELD: usize = 1 << 30;

/// One cluster compressed ahead: its guest cluster, the hash of the bytes it was compressed
/// from, how it is stored.
type Ahead1 = (u64, blake3::Hash, Stored);

/// Clusters compressed ahead: per guest cluster, the hash of the bytes it was compressed
/// from and how it is stored.
#[derive(Default)]
pub struct HeadStart {
    /// What they were compressed for: a conversion to anything else ignores them.
    compression: Option<Compression>,
    clusters: HashMap<u64, (blake3::Hash, Stored)>,
    /// Clusters the conversion took from here.
    reused: AtomicU64,
}

impl HeadStart {
    /// How guest cluster `index` is stored, if it was compressed ahead, for `compression`,
    /// from these very bytes.
    pub(super) fn reuse(
        &self,
        index: u64,
        bytes: &[u8],
        compression: Compression,
    ) -> Option<Stored> {
        if self.compression != Some(compression) {
            return None;
        }
        let (hash, stored) = self.clusters.get(&index)?;
        if blake3::hash(bytes) != *hash {
            return None;
        }
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(stored.clone())
    }

    /// How many clusters a conversion took from here (of [`Self::len`]).
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// How many clusters were compressed ahead.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// Compression running ahead of a writer, on a thread of its own.
pub struct Ahead {
    compression: Compression,
    stop: Arc<AtomicBool>,
    /// Clusters compressed so far.
    done: Arc<AtomicU64>,
    results: mpsc::Receiver<Ahead1>,
}

impl Ahead {
    /// Starts compressing the clusters of `raw` in `[from, to)` as they are written. An image
    /// stored uncompressed has nothing to gain: no thread is started for it.
    pub fn start(
        raw: &Path,
        from: u64,
        to: u64,
        compression: Compression,
    ) -> std::io::Result<Ahead> {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (tx, results) = mpsc::channel();
        if compression != Compression::None {
            let f = File::open(raw)?;
            let (flag, count) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::Builder::new()
                .name("ccb-qcow2-ahead".into())
                .spawn(move || run(&f, (from, to), compression, &flag, &count, &tx))?;
        }
        Ok(Ahead {
            compression,
            stop,
            done,
            results,
        })
    }

    /// How many clusters are compressed so far.
    pub fn compressed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops (the writer is done) and hands over what was compressed so far, without waiting
    /// for the thread: on a busy host a low-priority thread may not run again for a while,
    /// and the conversion must not wait for it. It ends at its next look (its results then
    /// go nowhere).
    pub fn finish(self) -> HeadStart {
        self.stop.store(true, Ordering::SeqCst);
        HeadStart {
            compression: Some(self.compression),
            clusters: self
                .results
                .try_iter()
                .map(|(c, hash, stored)| (c, (hash, stored)))
                .collect(),
            reused: AtomicU64::new(0),
        }
    }
}

impl Drop for Ahead {
    /// A disk action that fails before its qcow2 leaves no thread compressing behind it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn run(
    f: &File,
    (from, to): (u64, u64),
    compression: Compression,
    stop: &AtomicBool,
    count: &AtomicU64,
    results: &mpsc::Sender<Ahead1>,
) {
    // Work on the side, out of the writer's way: the lowest priority of the normal class, so
    // that mkfs and the kernel's write-back come first, yet a look preempted while it holds
    // the inode lock gets to finish soon (the idle class could wait for seconds on a busy
    // host, and mkfs with it). Where it cannot be set, it runs as any thread.
    // SAFETY: a system call about the calling thread (its id from gettid); no memory passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
    let (first, last) = (from.div_ceil(CLUSTER), to / CLUSTER);
    let mut done = vec![false; last.saturating_sub(first) as usize];
    let mut held = 0usize;
    let mut buf = vec![0u8; CLUSTER as usize];
    // Clusters written at the last look: only those are taken at the next one.
    let mut before = Vec::new();
    while !stop.load(Ordering::SeqCst) && held < MAX_HELD {
        std::thread::sleep(SETTLE);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let now = clusters_written(f, first, last);
        for &c in &now {
            if stop.load(Ordering::SeqCst) || held >= MAX_HELD {
                return;
            }
            if done[(c - first) as usize] || before.binary_search(&c).is_err() {
                continue;
            }
            if f.read_exact_at(&mut buf, c * CLUSTER).is_err() {
                return;
            }
            if super::is_zero(&buf) {
                continue; // allocated, not written yet (or zeros: nothing to compress)
            }
            let mut stored = super::store_cluster(&buf, compression);
            if let Stored::Compressed(bytes) = &mut stored {
                // Held for seconds, many thousands of them: only their bytes, not the
                // cluster's worth each was compressed into.
                bytes.shrink_to_fit();
                held += bytes.capacity();
            }
            if results.send((c, blake3::hash(&buf), stored)).is_err() {
                return;
            }
            done[(c - first) as usize] = true;
            count.fetch_add(1, Ordering::Relaxed);
        }
        before = now;
    }
}

/// The guest clusters in `[first, last)` that hold written data, in order, each once (two
/// ranges may share a cluster).
fn clusters_written(f: &File, first: u64, last: u64) -> Vec<u64> {
    let mut clusters: Vec<u64> = crate::fsutil::data_ranges(f, first * CLUSTER, last * CLUSTER)
        .into_iter()
        .flat_map(|(a, b)| a / CLUSTER..b.div_ceil(CLUSTER))
        .collect();
    clusters.dedup();
    clusters
}
