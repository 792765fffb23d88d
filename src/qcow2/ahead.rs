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
use std::time::Duration;

use super::{CLUSTER, Compression, Stored};

/// How long the writer must have left a cluster alone (one look to the next) before it is
/// compressed ahead: a cluster compressed while it is still being written is work thrown away.
const SETTLE: Duration = Duration::from_millis(100);

/// The compressed bytes held at most: the head start stops there rather than hold a disk's
/// worth in memory, as several disk actions may run at once (CC-Debian12's whole qcow2 is
/// ~490 MiB, of which the head start holds about half).
const MAX_HELD: usize = 1 << 30;

/// Clusters compressed ahead: per guest cluster, the hash of the bytes it was compressed
/// from and how it is stored.
#[derive(Default)]
pub struct HeadStart {
    clusters: HashMap<u64, (blake3::Hash, Stored)>,
    /// Clusters the conversion took from here.
    reused: AtomicU64,
}

impl HeadStart {
    /// How guest cluster `index` is stored, if it was compressed ahead from these very bytes.
    pub(super) fn reuse(&self, index: u64, bytes: &[u8]) -> Option<Stored> {
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
    stop: Arc<AtomicBool>,
    /// Clusters compressed so far.
    done: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<HeadStart>>,
}

impl Ahead {
    /// Starts compressing the clusters of `raw` in `[from, to)` as they are written. Nothing
    /// to do for an image stored uncompressed: the head start is then empty.
    pub fn start(
        raw: &Path,
        from: u64,
        to: u64,
        compression: Compression,
    ) -> std::io::Result<Ahead> {
        let f = File::open(raw)?;
        let stop = Arc::new(AtomicBool::new(compression == Compression::None));
        let done = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name("ccb-qcow2-ahead".into())
            .spawn(move || run(&f, from, to, &flag, &count))?;
        Ok(Ahead {
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// How many clusters are compressed so far.
    pub fn compressed(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops (the writer is done) and hands over what was compressed. A read that failed
    /// ahead only means less of a head start: the conversion reads everything again.
    pub fn finish(mut self) -> HeadStart {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Ahead {
    /// A disk action that fails before its qcow2 leaves no thread compressing behind it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn run(f: &File, from: u64, to: u64, stop: &AtomicBool, count: &AtomicU64) -> HeadStart {
    // Work on the side, never in the writer's way: this thread only gets a core that mkfs
    // and the kernel's write-back leave idle. Where it cannot be, it runs as any thread.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (0) policy from a valid parameter block.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    let mut head = HeadStart::default();
    let (first, last) = (from.div_ceil(CLUSTER), to / CLUSTER);
    let mut done = vec![false; last.saturating_sub(first) as usize];
    let mut held = 0usize;
    let mut buf = vec![0u8; CLUSTER as usize];
    // Clusters written at the last look: only those are taken at the next one.
    let mut before = Vec::new();
    while !stop.load(Ordering::SeqCst) && held < MAX_HELD {
        std::thread::sleep(SETTLE);
        let now = clusters_written(f, first, last);
        let settled: Vec<u64> = now
            .iter()
            .copied()
            .filter(|c| before.binary_search(c).is_ok() && !done[(c - first) as usize])
            .collect();
        for c in settled {
            if stop.load(Ordering::SeqCst) || held >= MAX_HELD {
                break;
            }
            if f.read_exact_at(&mut buf, c * CLUSTER).is_err() {
                return head;
            }
            if super::is_zero(&buf) {
                continue; // allocated, not written yet (or zeros: nothing to compress)
            }
            let stored = super::store_cluster(&buf, Compression::Zlib);
            held += stored.held();
            head.clusters.insert(c, (blake3::hash(&buf), stored));
            done[(c - first) as usize] = true;
            count.fetch_add(1, Ordering::Relaxed);
        }
        before = now;
    }
    head
}

/// The guest clusters in `[first, last)` that hold written data, in order.
fn clusters_written(f: &File, first: u64, last: u64) -> Vec<u64> {
    crate::fsutil::data_ranges(f, first * CLUSTER, last * CLUSTER)
        .into_iter()
        .flat_map(|(a, b)| a / CLUSTER..b.div_ceil(CLUSTER))
        .collect()
}
