//! The scheduler: runs a DAG of jobs, at most `jobs` at once, dependencies first, and among
//! ready jobs the one on the longest remaining path first (the critical path decides the
//! wall time, so it should never wait behind short side work).
//!
//! Failure policy, as cargo's: by default no new job starts after a failure, running ones
//! finish; with `keep_going` everything that does not depend on a failure still runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// One job of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub deps: Vec<String>,
    /// Expected cost (e.g. the last build's duration): only its relative size matters.
    pub weight: u64,
    /// Waits on the network rather than the CPU (a download): runs beside the `jobs` slots,
    /// as Bazel's fetches do not count against `--jobs`, so an artifact downloads while a
    /// bootstrap runs even with `-j 1`.
    pub light: bool,
}

/// Light jobs at once, beside the slots.
const LIGHT_JOBS: usize = 4;

/// How a job that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Cached,
    Built,
    Failed,
    Cancelled,
}

/// Every job's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Ran(JobEnd),
    /// Not run because a dependency failed (or was itself skipped).
    Skipped {
        because: String,
    },
    /// Not started: the build stopped first (a failure without `keep_going`, or Ctrl-C).
    NotStarted,
}

/// Node index by id, and for each node the indices of the nodes that depend on it.
fn index(nodes: &[Node]) -> (BTreeMap<&str, usize>, Vec<Vec<usize>>) {
    let ids: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for d in &n.deps {
            if let Some(&j) = ids.get(d.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    (ids, dependents)
}

/// Longest path (by weight) from each node to the end of the graph, the node included.
pub fn critical_path(nodes: &[Node]) -> BTreeMap<String, u64> {
    let (_, dependents) = index(nodes);
    let mut memo: Vec<Option<u64>> = vec![None; nodes.len()];
    fn visit(i: usize, nodes: &[Node], dependents: &[Vec<usize>], memo: &mut [Option<u64>]) -> u64 {
        if let Some(v) = memo[i] {
            return v;
        }
        let tail = dependents[i]
            .iter()
            .map(|&j| visit(j, nodes, dependents, memo))
            .max()
            .unwrap_or(0);
        let v = nodes[i].weight + tail;
        memo[i] = Some(v);
        v
    }
    (0..nodes.len())
        .map(|i| (nodes[i].id.clone(), visit(i, nodes, &dependents, &mut memo)))
        .collect()
}

/// Runs `run` for every node. Dependencies missing from `nodes` count as satisfied.
pub fn schedule<F>(
    nodes: &[Node],
    jobs: usize,
    keep_going: bool,
    cancel: &AtomicBool,
    run: F,
) -> BTreeMap<String, Fate>
where
    F: Fn(&str) -> JobEnd + Sync,
{
    let jobs = jobs.max(1);
    let prio = critical_path(nodes);
    let (ids, dependents) = index(nodes);
    let mut pending: Vec<usize> = nodes
        .iter()
        .map(|n| {
            n.deps
                .iter()
                .filter(|d| ids.contains_key(d.as_str()))
                .count()
        })
        .collect();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut fates: BTreeMap<String, Fate> = BTreeMap::new();
    let mut stop = false;
    let run = &run;

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, JobEnd)>();
        let (mut running, mut running_light) = (0usize, 0usize);
        loop {
            if cancel.load(Ordering::SeqCst) {
                stop = true;
            }
            // Highest critical path first, among the jobs that may start now (none after a
            // stop); ties by id for a stable order.
            while let Some((pos, _)) = ready
                .iter()
                .enumerate()
                .filter(|_| !stop)
                .filter(|(_, i)| {
                    if nodes[**i].light {
                        running_light < LIGHT_JOBS
                    } else {
                        running < jobs
                    }
                })
                .max_by(|(_, a), (_, b)| {
                    prio[&nodes[**a].id]
                        .cmp(&prio[&nodes[**b].id])
                        .then_with(|| nodes[**b].id.cmp(&nodes[**a].id))
                })
            {
                let i = ready.swap_remove(pos);
                let tx = tx.clone();
                let id = nodes[i].id.clone();
                if nodes[i].light {
                    running_light += 1;
                } else {
                    running += 1;
                }
                scope.spawn(move || {
                    let end = run(&id);
                    let _ = tx.send((i, end));
                });
            }
            if running + running_light == 0 {
                break;
            }
            let Ok((i, end)) = rx.recv() else { break };
            if nodes[i].light {
                running_light -= 1;
            } else {
                running -= 1;
            }
            fates.insert(nodes[i].id.clone(), Fate::Ran(end));
            match end {
                JobEnd::Cached | JobEnd::Built => {
                    for &j in &dependents[i] {
                        pending[j] -= 1;
                        if pending[j] == 0 {
                            ready.push(j);
                        }
                    }
                }
                JobEnd::Failed | JobEnd::Cancelled => {
                    if !keep_going || end == JobEnd::Cancelled {
                        stop = true;
                    }
                    let mut stack = vec![i];
                    while let Some(k) = stack.pop() {
                        for &j in &dependents[k] {
                            if !fates.contains_key(&nodes[j].id) {
                                fates.insert(
                                    nodes[j].id.clone(),
                                    Fate::Skipped {
                                        because: nodes[i].id.clone(),
                                    },
                                );
                                stack.push(j);
                            }
                        }
                    }
                }
            }
        }
    });
    for n in nodes {
        fates.entry(n.id.clone()).or_insert(Fate::NotStarted);
    }
    fates
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn node(id: &str, deps: &[&str], weight: u64) -> Node {
        Node {
            id: id.into(),
            deps: deps.iter().map(|s| s.to_string()).collect(),
            weight,
            light: false,
        }
    }

    #[test]
    fn dependencies_run_first_and_the_critical_path_goes_first() {
        // a → b → c is long; x is short and independent.
        let nodes = vec![
            node("x", &[], 1),
            node("a", &[], 10),
            node("b", &["a"], 10),
            node("c", &["b"], 10),
        ];
        let order = Mutex::new(Vec::new());
        let cancel = AtomicBool::new(false);
        let fates = schedule(&nodes, 1, false, &cancel, |id| {
            order.lock().unwrap().push(id.to_string());
            JobEnd::Built
        });
        assert_eq!(*order.lock().unwrap(), ["a", "b", "c", "x"]);
        assert!(fates.values().all(|f| *f == Fate::Ran(JobEnd::Built)));
    }

    #[test]
    fn a_failure_stops_new_work_unless_keep_going() {
        let nodes = vec![node("a", &[], 10), node("b", &["a"], 1), node("x", &[], 1)];
        let cancel = AtomicBool::new(false);
        let run = |id: &str| {
            if id == "a" {
                JobEnd::Failed
            } else {
                JobEnd::Built
            }
        };
        let fates = schedule(&nodes, 1, false, &cancel, run);
        assert_eq!(fates["a"], Fate::Ran(JobEnd::Failed));
        assert_eq!(
            fates["b"],
            Fate::Skipped {
                because: "a".into()
            }
        );
        assert_eq!(fates["x"], Fate::NotStarted);

        let fates = schedule(&nodes, 1, true, &cancel, run);
        assert_eq!(
            fates["b"],
            Fate::Skipped {
                because: "a".into()
            }
        );
        assert_eq!(fates["x"], Fate::Ran(JobEnd::Built));
    }

    #[test]
    fn downloads_run_beside_the_job_slots() {
        // With -j 1, the fetch runs while the base builds; the layer waits for both.
        let mut fetch = node("fetch", &[], 1);
        fetch.light = true;
        let nodes = vec![
            node("base", &[], 10),
            fetch,
            node("layer", &["base", "fetch"], 10),
            node("other", &[], 1),
        ];
        let now = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let order = Mutex::new(Vec::new());
        let cancel = AtomicBool::new(false);
        schedule(&nodes, 1, false, &cancel, |id| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(40));
            order.lock().unwrap().push(id.to_string());
            now.fetch_sub(1, Ordering::SeqCst);
            JobEnd::Built
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2, "one slot plus the download");
        let order = order.lock().unwrap();
        let at = |id: &str| order.iter().position(|x| x == id).unwrap();
        assert!(
            at("layer") > at("fetch") && at("layer") > at("base"),
            "{order:?}"
        );
    }

    #[test]
    fn jobs_run_side_by_side_up_to_the_limit() {
        let nodes: Vec<Node> = (0..6).map(|i| node(&format!("n{i}"), &[], 1)).collect();
        let now = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        schedule(&nodes, 3, false, &cancel, |_| {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            now.fetch_sub(1, Ordering::SeqCst);
            JobEnd::Built
        });
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_cancelled_build_starts_nothing_more() {
        let nodes = vec![node("a", &[], 1), node("b", &[], 1)];
        let cancel = AtomicBool::new(false);
        let fates = schedule(&nodes, 1, true, &cancel, |_| {
            cancel.store(true, Ordering::SeqCst);
            JobEnd::Cancelled
        });
        let ran = fates.values().filter(|f| matches!(f, Fate::Ran(_))).count();
        assert_eq!(ran, 1);
        assert!(fates.values().any(|f| *f == Fate::NotStarted));
    }
}
