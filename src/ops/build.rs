//! `build`: plan the targets' actions up to a stage, then run the ones not in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CommandError, Planned, Session};
use crate::action::event::Blame;
use crate::action::event::{Event, StepRecord};
use crate::action::{self, BuildContext, BuildError};
use crate::exec::{self, Fate, JobEnd, Node};
use crate::graph::{self, Action, ActionId, Kind, Status};
use crate::label::Target;
use crate::manifest::Arch;
use crate::store::TreeSummary;
use crate::store::{Store, Wait};
use crate::ui::Shell;
use crate::ui::progress::{Progress, human_duration};

/// How far a build goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Stage {
    /// The inputs only: artifacts into the store (and the sources resolution needs), so that
    /// later builds run with --offline
    Fetch,
    /// The base root filesystems (root.d)
    Base,
    /// The finished root filesystems (through post-root.d)
    Layer,
    /// The disk images
    Disk,
}

fn stage_of(kind: Kind) -> Stage {
    match kind {
        Kind::Fetch => Stage::Fetch,
        Kind::Base => Stage::Base,
        Kind::Layer => Stage::Layer,
        Kind::Disk | Kind::Publish => Stage::Disk,
    }
}

/// A default cost per kind for actions never built here: only the ratios matter.
fn default_weight(kind: Kind) -> u64 {
    match kind {
        Kind::Fetch => 10_000,
        Kind::Base => 60_000,
        Kind::Layer => 120_000,
        Kind::Disk => 60_000,
        Kind::Publish => 30_000,
    }
}

/// What to build and how.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// Targets (all images when empty).
    pub targets: Vec<String>,
    /// Only these architectures (all when empty).
    pub arch: Vec<String>,
    /// Refuse to add a pin to ccb.lock: a "latest" artifact with no pin is an error (CI).
    pub locked: bool,
    /// Plan only: the report is the plan, nothing runs (nothing is pinned unless `locked`,
    /// which then checks the pins).
    pub dry_run: bool,
    /// Stop after this stage.
    pub until: Stage,
    /// Actions run at once.
    pub jobs: usize,
    /// After a failure, go on with everything that does not depend on it.
    pub keep_going: bool,
    /// Targets whose own actions are rebuilt even when cached.
    pub force: Vec<String>,
    /// Keep the working tree of a failed action.
    pub keep_failed: bool,
    /// Where the finished disks go (default: `out/images` in the project).
    pub out: Option<PathBuf>,
    /// Announce each disk's files on stderr as it is materialized.
    pub announce_outputs: bool,
    /// A `command not found` in a step's output fails the action (else it is a warning).
    pub strict: bool,
}

impl BuildRequest {
    /// The targets' disks, one action at a time, nothing forced: what `ccb test`, `publish` and
    /// `inspect` build first.
    pub fn disks(targets: &[String], arch: &[String]) -> Self {
        Self {
            targets: targets.to_vec(),
            arch: arch.to_vec(),
            locked: false,
            dry_run: false,
            until: Stage::Disk,
            jobs: 1,
            keep_going: false,
            force: vec![],
            keep_failed: false,
            out: None,
            announce_outputs: true,
            strict: false,
        }
    }
}

/// What a built action left.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltInfo {
    pub duration_ms: u64,
    pub steps: Vec<StepRecord>,
    /// Commands the element scripts called that were not found (DIB passes these silently).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<action::dib::MissingCommand>,
    pub tree: TreeSummary,
}

/// One action of a build: how it ended, and what it left or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub id: String,
    pub kind: Kind,
    pub key: String,
    /// `built`, `cached`, `failed`, `cancelled`, `skipped` or `not-started`.
    pub status: &'static str,
    /// Where a cached result came from: `remote` when this build took it from the remote cache,
    /// `builder` when a remote builder built it for this build (through the cache).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'static str>,
    /// The remote builder that built it (`ssh://user@host[:port]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// Why the action was kept off the remote cache and builders (`holds a secret: not
    /// shared`), when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_shared: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub built: Option<BuiltInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who has to act on the failure: the image's input, the host, a missing tool, or ccb.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blame: Option<Blame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub because: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildSummary {
    pub total: usize,
    pub built: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub not_started: usize,
    pub cancelled: usize,
    /// Of the cached ones, those this build took from the remote cache.
    pub remote: usize,
    pub duration_ms: u64,
}

/// A finished disk of a target: its outputs in the store.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltDisk {
    pub target: Target,
    pub key: String,
    /// The disk action's outputs directory in the store.
    pub dir: PathBuf,
}

/// The outcome of a build: every action planned, a summary, and the targets' finished disks.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub version: u32,
    pub actions: Vec<ActionReport>,
    pub summary: BuildSummary,
    /// The remote cache, when one is configured: what came from it, what went to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::remote::Report>,
    #[serde(skip)]
    pub disks: Vec<BuiltDisk>,
    #[serde(skip)]
    pub cancelled: bool,
}

impl BuildReport {
    /// The one-line summary: `7 actions: 2 built, 5 cached in 3 s`.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let parts: Vec<String> = [
            (s.built, "built"),
            (s.cached, "cached"),
            (s.failed, "failed"),
            (s.skipped, "skipped"),
            (s.not_started, "not-started"),
            (s.cancelled, "cancelled"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, k)| {
            if *k == "cached" && s.remote > 0 {
                format!("{n} {k} ({} remote)", s.remote)
            } else {
                format!("{n} {k}")
            }
        })
        .collect();
        format!(
            "{} actions: {} in {}",
            s.total,
            if parts.is_empty() {
                "nothing to do".to_string()
            } else {
                parts.join(", ")
            },
            human_duration(Duration::from_millis(s.duration_ms))
        )
    }

    /// The build as a command's result: cancelled or failed actions are an error.
    pub fn ok(&self) -> Result<(), CommandError> {
        if self.cancelled {
            return Err(CommandError::msg("build cancelled"));
        }
        let failed = self.summary.failed;
        if failed > 0 {
            let text = format!(
                "{failed} action{} failed",
                if failed == 1 { "" } else { "s" }
            );
            // The failure that needs the most attention decides the kind: a bug over the
            // host over the input.
            let blames: Vec<Blame> = self.actions.iter().filter_map(|a| a.blame).collect();
            return Err(if blames.contains(&Blame::Bug) {
                CommandError::internal(text)
            } else if blames.contains(&Blame::MissingTool) {
                CommandError::environment(
                    text,
                    "a program ccb runs is not installed: `ccb doctor` lists what this host lacks",
                )
            } else if blames.contains(&Blame::Network) {
                CommandError::environment(
                    text,
                    "a download failed: check the network, or put the files in a directory \
                     named by CCB_DISTDIR",
                )
            } else if blames.contains(&Blame::Host) {
                CommandError::environment(
                    text,
                    "the host refused (a full disk, a permission, a read-only file system): \
                     see the error above",
                )
            } else {
                CommandError::msg(text)
            });
        }
        Ok(())
    }
}

/// The targets' own actions up to the stage, and what they need (a child image needs its
/// parent's layer, not its parent's disk), each with its status in the store.
pub fn plan<'g>(planned: &'g Planned, store: &Store, until: Stage) -> Vec<(&'g Action, Status)> {
    let graph = &planned.graph;
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    for t in &planned.targets {
        for act in graph.actions_of(t) {
            if act.kind == Kind::Publish {
                continue;
            }
            let closure = graph.closure(&act.id);
            if stage_of(act.kind) <= until {
                needed.extend(closure.iter().map(|a| a.id.as_str()));
            } else if until == Stage::Fetch {
                needed.extend(
                    closure
                        .iter()
                        .filter(|a| a.kind == Kind::Fetch)
                        .map(|a| a.id.as_str()),
                );
            }
        }
    }
    graph::plan(graph, store)
        .into_iter()
        .filter(|(act, _)| needed.contains(act.id.as_str()))
        .collect()
}

/// One action of a plan: its key, its deps, and whether it is cached or would run (and why).
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub id: String,
    pub kind: Kind,
    pub key: String,
    pub deps: Vec<String>,
    pub status: Status,
    /// Why the action never goes to a remote cache or builder (it holds a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_shared: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub total: usize,
    pub cached: usize,
    pub to_run: usize,
}

/// What a build would do: `build --dry-run` and `query explain`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub version: u32,
    pub actions: Vec<PlanRow>,
    pub summary: PlanSummary,
}

impl PlanReport {
    pub fn new<'a>(rows: impl IntoIterator<Item = (&'a Action, Status)>) -> Self {
        let actions: Vec<PlanRow> = rows
            .into_iter()
            .map(|(a, status)| PlanRow {
                id: a.id.to_string(),
                kind: a.kind,
                key: a.key.clone(),
                deps: a.deps.iter().map(ToString::to_string).collect(),
                status,
                not_shared: a.secret.then_some(crate::graph::NOT_SHARED),
            })
            .collect();
        let to_run = actions
            .iter()
            .filter(|r| matches!(r.status, Status::ToRun { .. }))
            .count();
        Self {
            version: 1,
            summary: PlanSummary {
                total: actions.len(),
                cached: actions.len() - to_run,
                to_run,
            },
            actions,
        }
    }
}

/// The plan of a build that does not run (`build --dry-run`).
pub fn dry_run(planned: &Planned, store: &Store, until: Stage) -> PlanReport {
    PlanReport::new(plan(planned, store, until))
}

/// What `ccb build` did: the plan of a dry run, or the build.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BuildOutcome {
    Planned(PlanReport),
    Built(BuildReport),
}

/// `ccb build` (and `ccb fetch`): an arch asked for by name that this host cannot build is
/// refused first, then the new "latest" artifacts are pinned (their digests enter the keys),
/// then the targets are planned once, and the plan is either reported (`dry_run`) or run.
pub fn run(
    session: &mut Session,
    req: &BuildRequest,
    shell: &Shell,
) -> Result<BuildOutcome, CommandError> {
    // A wildcard leaves out, with a note, the images whose secrets this host lacks.
    let targets = session.buildable_here(&req.targets, shell);
    // A dry run pins nothing; with --locked it still checks that nothing needs a pin.
    if req.locked || !req.dry_run {
        session.pin_new_artifacts(&targets, &req.arch, req.locked, req.until, shell)?;
    }
    let planned = session.plan(&targets, &req.arch)?;
    if req.dry_run {
        return Ok(BuildOutcome::Planned(dry_run(
            &planned,
            session.store,
            req.until,
        )));
    }
    build(session, &planned, req, shell).map(BuildOutcome::Built)
}

/// The foreign arches whose root filesystems the plan runs on this host (not on a builder,
/// unless native here), each with what the host can do about it.
fn foreign_arches(
    plan: &[(&Action, Status)],
    remote: &BTreeSet<Arch>,
) -> Vec<(Arch, crate::doctor::ArchReport)> {
    let foreign: BTreeSet<Arch> = plan
        .iter()
        .filter(|(act, s)| {
            matches!(act.kind, Kind::Base | Kind::Layer) && matches!(s, Status::ToRun { .. })
        })
        // Sent to a remote builder (unless native here, or holding a secret: then built here).
        .filter(|(act, _)| {
            act.arch.is_some_and(|arch| {
                act.secret || !remote.contains(&arch) || crate::manifest::Arch::host() == Some(arch)
            })
        })
        .filter_map(|(act, _)| act.arch)
        .collect();
    foreign
        .into_iter()
        .map(|arch| (arch, crate::doctor::arch_report(arch)))
        .collect()
}

/// The refusal of an arch asked for by name that this host cannot build.
fn cannot_build(report: &crate::doctor::ArchReport) -> CommandError {
    CommandError::environment(
        crate::doctor::cannot_build(report),
        "run `ccb doctor` for the command that registers the emulation, or build another --arch",
    )
}

/// Whether an arch asked for by name may be refused: this host cannot run its code and no
/// builder is configured for it. Cheap (no plan), so the pre-pin check runs only then.
pub(super) fn may_refuse(named: &BTreeSet<Arch>, remote: &BTreeSet<Arch>) -> bool {
    named.iter().any(|arch| {
        !remote.contains(arch)
            && crate::doctor::arch_report(*arch).mode == crate::doctor::ArchMode::Missing
    })
}

/// Refuses an arch asked for by name whose root filesystems the plan would run on a host
/// that cannot run its code; says nothing otherwise (the warnings are [`check_arches`]'s).
pub(super) fn refuse_unbuildable(
    plan: &[(&Action, Status)],
    named: &BTreeSet<Arch>,
    remote: &BTreeSet<Arch>,
) -> Result<(), CommandError> {
    for (arch, report) in foreign_arches(plan, remote) {
        if report.mode == crate::doctor::ArchMode::Missing && named.contains(&arch) {
            return Err(cannot_build(&report));
        }
    }
    Ok(())
}

/// Foreign architectures: emulated (slowly) when qemu-user is registered. An arch the host
/// cannot build is refused before anything runs when it was asked for by name, and left out
/// (with a warning) when it only came with `//...` or an image's arch list. Returns the arches
/// left out.
fn check_arches(
    plan: &[(&Action, Status)],
    named: &BTreeSet<Arch>,
    remote: &BTreeSet<Arch>,
    shell: &Shell,
) -> Result<BTreeSet<Arch>, CommandError> {
    let mut skipped = BTreeSet::new();
    for (arch, report) in foreign_arches(plan, remote) {
        match report.mode {
            crate::doctor::ArchMode::Native => {}
            crate::doctor::ArchMode::Emulated => shell.warn(&format!(
                "{arch} root filesystems run under qemu-user emulation ({}): expect them to \
                 take several times longer than native builds",
                report.handler.as_deref().unwrap_or("qemu-user")
            )),
            crate::doctor::ArchMode::Missing if named.contains(&arch) => {
                return Err(cannot_build(&report));
            }
            crate::doctor::ArchMode::Missing => {
                shell.warn(&format!(
                    "{}; leaving {arch} out (ask for it with --arch {arch} to make this an error)",
                    crate::doctor::cannot_build(&report)
                ));
                skipped.insert(arch);
            }
        }
    }
    Ok(skipped)
}

/// Runs the planned targets' actions up to `req.until` and materializes their finished disks
/// (the graph is `planned`, not `req.targets`: what the ops that build first call, after
/// `Session::plan_to_build`). Failed actions are in the report (see [`BuildReport::ok`]); an
/// error here means the build could not run at all.
pub fn build(
    session: &Session,
    planned: &Planned,
    req: &BuildRequest,
    shell: &Shell,
) -> Result<BuildReport, CommandError> {
    let store = session.store;
    let model = &session.model;
    let graph = &planned.graph;
    let mut plan = plan(planned, store, req.until);
    // Before the remote cache or a builder is opened: an arch this host cannot build fails
    // here having touched nothing.
    let remote_arches = crate::remote::builder::Builders::configured_arches(
        model.project.builders.as_ref(),
        &session.remote,
    );
    let skipped = check_arches(&plan, &planned.named_arches, &remote_arches, shell)?;
    plan.retain(|(act, _)| act.arch.is_none_or(|arch| !skipped.contains(&arch)));
    let remote = open_remote(session, shell)?;
    let remote = remote.as_ref();
    let builders = crate::remote::builder::Builders::open(
        model.project.builders.as_ref(),
        &session.remote,
        remote,
        session.env.clone(),
        shell.verbose > 0,
    )
    .map_err(CommandError::from_diag)?;
    let builders = builders.as_ref();

    let forced = forced_ids(planned, model, &req.force)?;
    // Builds share the store; `ccb cache gc` takes it alone.
    let _store_lock = lock_store(store, shell)?;

    // Ctrl-C cancels the running actions; a second one exits at once.
    let cancel = crate::interrupt::flag();

    let swift = crate::publish::sites::swift_opener(model);
    let bctx = BuildContext {
        model,
        graph,
        resolver: &session.resolver,
        store,
        overlay: action::overlay_available(),
        stream_output: shell.verbose > 0,
        keep_failed: req.keep_failed,
        distdirs: crate::fetch::distdirs_from_env(),
        offline: session.offline,
        swift: Some(&swift),
        strict: req.strict,
    };
    let progress = shell.progress();
    if let Some(r) = remote
        && req.until == Stage::Disk
    {
        disks_first(r, store, &mut plan, &forced, &progress)?;
    }
    let started = Instant::now();
    let run = Run {
        bctx: &bctx,
        forced: &forced,
        cancel: &cancel,
        progress: &progress,
        remote,
        builders,
    };
    let (fates, results) = run.schedule(&plan, req);

    // Every finished disk of the targets goes to the output directory.
    let out_dir = match &req.out {
        Some(d) => d.clone(),
        None => model.root.join("out/images"),
    };
    let outputs = materialize(store, &plan, &fates, &out_dir, req.announce_outputs, shell)?;
    let (actions, summary) = action_reports(
        &plan,
        &fates,
        results,
        outputs,
        remote,
        builders,
        started.elapsed(),
    );
    // A failed action counts even when the scheduler saw it cancelled by a later failure.
    let disks = if summary.failed == 0 && !cancel.load(Ordering::SeqCst) {
        built_disks(planned, store, req.until)?
    } else {
        vec![]
    };
    Ok(BuildReport {
        version: 1,
        actions,
        summary,
        remote: remote.map(|r| r.report()),
        disks,
        cancelled: cancel.load(Ordering::SeqCst),
    })
}

/// What running the plan's actions shares.
struct Run<'a> {
    bctx: &'a BuildContext<'a>,
    forced: &'a BTreeSet<String>,
    cancel: &'a AtomicBool,
    progress: &'a Progress,
    remote: Option<&'a crate::remote::Remote>,
    builders: Option<&'a crate::remote::builder::Builders>,
}

type Results = BTreeMap<String, Result<action::Built, BuildError>>;

impl Run<'_> {
    /// Runs the plan's actions, `req.jobs` at a time, critical path first: how each ended,
    /// and what each that ran left (or why it failed).
    fn schedule(
        &self,
        plan: &[(&Action, Status)],
        req: &BuildRequest,
    ) -> (BTreeMap<String, Fate>, Results) {
        let store = self.bctx.store;
        let nodes = nodes(plan, store);
        let results: Mutex<Results> = Mutex::new(BTreeMap::new());
        let fates = exec::schedule(&nodes, req.jobs, req.keep_going, self.cancel, |id| {
            let Some(action) = self.bctx.graph.get(id) else {
                return JobEnd::Failed;
            };
            let force = self.forced.contains(id);
            if !force && graph::is_cached(store, action) {
                // A result built before the cache was set up goes there too.
                share(self.remote, store, action, self.progress);
                return JobEnd::Cached;
            }
            let outcome = run_one(
                self.bctx,
                action,
                force,
                self.cancel,
                self.progress,
                self.remote,
                self.builders,
            );
            let end = match &outcome {
                Ok(None) => JobEnd::Cached,
                Ok(Some(_)) => JobEnd::Built,
                Err(BuildError::Cancelled { .. }) => JobEnd::Cancelled,
                Err(_) => JobEnd::Failed,
            };
            if let Some(r) = outcome.transpose() {
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), r);
            }
            end
        });
        (
            fates,
            results.into_inner().unwrap_or_else(|e| e.into_inner()),
        )
    }
}

/// The ids of the actions `--force` names (every architecture: only those in the plan run).
fn forced_ids(
    planned: &Planned,
    model: &crate::manifest::Model,
    force: &[String],
) -> Result<BTreeSet<String>, CommandError> {
    if force.is_empty() {
        return Ok(BTreeSet::new());
    }
    Ok(crate::label::resolve(model, force, None)?
        .iter()
        .flat_map(|t| planned.graph.actions_of(t))
        .map(|act| act.id.to_string())
        .collect())
}

/// The store's shared lock (builds share it; `ccb cache gc` takes it alone), waiting, and
/// saying so, while a `ccb cache` holds it.
fn lock_store(store: &Store, shell: &Shell) -> Result<crate::store::Lock, CommandError> {
    match store.lock_store(false, Wait::Try)? {
        Some(l) => Ok(l),
        None => {
            shell.status("waiting for `ccb cache` to release the store...");
            store
                .lock_store(false, Wait::Block)?
                .ok_or_else(|| CommandError::internal("a blocking store lock returned none"))
        }
    }
}

/// Copies every disk that was built or cached to `out_dir`; returns each disk action's files.
fn materialize(
    store: &Store,
    plan: &[(&Action, Status)],
    fates: &BTreeMap<String, Fate>,
    out_dir: &std::path::Path,
    announce: bool,
    shell: &Shell,
) -> Result<BTreeMap<String, Vec<String>>, CommandError> {
    let mut outputs = BTreeMap::new();
    for (act, _) in plan {
        if act.kind == Kind::Disk
            && matches!(
                fates.get(act.id.as_str()),
                Some(Fate::Ran(JobEnd::Built | JobEnd::Cached))
            )
        {
            let files = action::materialize(store, &act.key, out_dir)?;
            if announce {
                let shown: Vec<String> = files
                    .iter()
                    .filter(|f| f.extension().is_some_and(|e| e == "qcow2" || e == "raw"))
                    .map(|f| crate::fsutil::display_path(f))
                    .collect();
                shell.status(&format!("{}: {}", act.id, shown.join(", ")));
            }
            outputs.insert(
                act.id.to_string(),
                files.iter().map(|f| f.display().to_string()).collect(),
            );
        }
    }
    Ok(outputs)
}

/// One row per planned action (how it ended, what it left or why it failed) and the counts.
fn action_reports(
    plan: &[(&Action, Status)],
    fates: &BTreeMap<String, Fate>,
    mut results: Results,
    mut outputs: BTreeMap<String, Vec<String>>,
    remote: Option<&crate::remote::Remote>,
    builders: Option<&crate::remote::builder::Builders>,
    elapsed: Duration,
) -> (Vec<ActionReport>, BuildSummary) {
    let mut summary = BuildSummary {
        total: plan.len(),
        duration_ms: elapsed.as_millis() as u64,
        ..Default::default()
    };
    let mut actions = Vec::new();
    for (act, _) in plan {
        let fate = fates
            .get(act.id.as_str())
            .cloned()
            .unwrap_or(Fate::NotStarted);
        let (status, counter) = match &fate {
            Fate::Ran(JobEnd::Cached) => ("cached", &mut summary.cached),
            Fate::Ran(JobEnd::Built) => ("built", &mut summary.built),
            Fate::Ran(JobEnd::Failed) => ("failed", &mut summary.failed),
            Fate::Ran(JobEnd::Cancelled) => ("cancelled", &mut summary.cancelled),
            Fate::Skipped { .. } => ("skipped", &mut summary.skipped),
            Fate::NotStarted => ("not-started", &mut summary.not_started),
        };
        *counter += 1;
        let served = remote.is_some_and(|r| r.served(&act.id));
        if matches!(fate, Fate::Ran(JobEnd::Cached)) && served {
            summary.remote += 1;
        }
        let mut row = ActionReport {
            id: act.id.to_string(),
            kind: act.kind,
            key: act.key.clone(),
            status,
            from: if builders.is_some_and(|b| b.built_by(&act.id).is_some()) {
                Some("builder")
            } else {
                (status == "cached" && served).then_some("remote")
            },
            builder: builders.and_then(|b| b.built_by(&act.id)),
            not_shared: (act.secret && (remote.is_some() || builders.is_some()))
                .then_some(graph::NOT_SHARED),
            built: None,
            error: None,
            blame: None,
            log: None,
            because: None,
            outputs: outputs.remove(act.id.as_str()),
        };
        match results.remove(act.id.as_str()) {
            Some(Ok(b)) => {
                row.built = Some(BuiltInfo {
                    duration_ms: b.duration.as_millis() as u64,
                    steps: b.steps,
                    warnings: b.warnings,
                    tree: b.tree,
                })
            }
            Some(Err(e)) => {
                row.error = Some(e.message());
                row.blame = Some(e.blame());
                row.log = e.log().map(|l| l.to_path_buf());
            }
            None => {}
        }
        if let Fate::Skipped { because } = fate {
            row.because = Some(because);
        }
        actions.push(row);
    }
    (actions, summary)
}

/// The targets' finished disks in the store (none before the disk stage).
fn built_disks(
    planned: &Planned,
    store: &Store,
    until: Stage,
) -> Result<Vec<BuiltDisk>, CommandError> {
    if until < Stage::Disk {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for t in &planned.targets {
        let disk = planned
            .graph
            .actions_of(t)
            .into_iter()
            .find(|a| a.kind == Kind::Disk)
            .ok_or_else(|| CommandError::internal(format!("{} has no disk action", t.label())))?;
        if store.outputs_meta(&disk.key).is_none() {
            return Err(CommandError::msg(format!(
                "{}: the disk is not in the store after the build",
                t.label()
            )));
        }
        out.push(BuiltDisk {
            target: t.clone(),
            key: disk.key.clone(),
            dir: store.outputs_dir(&disk.key),
        });
    }
    Ok(out)
}

/// The scheduler's nodes: each action weighted by its last build time here (else by kind), so
/// that the critical path starts first.
fn nodes(plan: &[(&Action, Status)], store: &Store) -> Vec<Node> {
    plan.iter()
        .map(|(act, _)| Node {
            id: act.id.to_string(),
            deps: act.deps.iter().map(ActionId::to_string).collect(),
            weight: store
                .read_json::<graph::LastBuild>(&graph::last_record_name(&act.id))
                .map(|l| l.duration_ms)
                .filter(|d| *d > 0)
                .unwrap_or_else(|| default_weight(act.kind)),
            light: act.kind == Kind::Fetch,
        })
        .collect()
}

/// Builds one action under its key's lock. `Ok(None)`: another ccb built it meanwhile.
fn run_one(
    bctx: &BuildContext,
    action: &Action,
    force: bool,
    cancel: &AtomicBool,
    progress: &Progress,
    remote: Option<&crate::remote::Remote>,
    builders: Option<&crate::remote::builder::Builders>,
) -> Result<Option<action::Built>, BuildError> {
    let store = bctx.store;
    if action.kind == Kind::Publish {
        let e = BuildError::Unsupported {
            id: action.id.to_string(),
            what: "publish actions run under `ccb publish`",
        };
        progress.block(&format!("error: {e}"));
        return Err(e);
    }
    let _lock = lock_key(store, action, progress)?;
    if !force && graph::is_cached(store, action) {
        return Ok(None);
    }
    if !force
        && let Some(remote) = remote
        && take_from_remote(store, action, remote, progress)
    {
        return Ok(None);
    }
    if let (Some(builders), Some(remote)) = (builders, remote)
        && builders.wants(action)
    {
        return build_remotely(bctx, action, cancel, progress, remote, builders).map(|()| None);
    }
    build_here(bctx, action, cancel, progress, remote).map(Some)
}

/// The key's lock, waiting (and saying so) while another ccb holds it.
fn lock_key(
    store: &Store,
    action: &Action,
    progress: &Progress,
) -> Result<crate::store::Lock, BuildError> {
    if let Some(l) = store.lock_key(&action.key, Wait::Try)? {
        return Ok(l);
    }
    progress.warn(&action.id, "waiting for another ccb building the same key");
    store
        .lock_key(&action.key, Wait::Block)?
        .ok_or_else(|| BuildError::Internal {
            id: action.id.to_string(),
            what: "a blocking key lock returned none".into(),
        })
}

/// Whether the remote cache had the action's result (now in the store). A cache that fails
/// is a warning: the action is built.
fn take_from_remote(
    store: &Store,
    action: &Action,
    remote: &crate::remote::Remote,
    progress: &Progress,
) -> bool {
    let started = Instant::now();
    let mut on_bytes = |done, total| progress.transfer(&action.id, done, Some(total));
    match remote.fetch(store, action, &mut on_bytes) {
        Ok(true) => {
            progress.finished(&action.id, "cached (remote)", Some(started.elapsed()));
            true
        }
        Ok(false) => false,
        Err(e) => {
            progress.warn(
                &action.id,
                &format!("not taken from the remote cache ({e}); building it"),
            );
            false
        }
    }
}

/// Runs the action on this host, records it and shares it with the remote cache.
fn build_here(
    bctx: &BuildContext,
    action: &Action,
    cancel: &AtomicBool,
    progress: &Progress,
    remote: Option<&crate::remote::Remote>,
) -> Result<action::Built, BuildError> {
    let store = bctx.store;
    progress.started(&action.id);
    let mut on_event = |ev: &Event| match ev {
        Event::Step {
            phase,
            element,
            name,
        } => progress.step(&action.id, phase, element, name),
        Event::Output { line } => progress.output(&action.id, line),
        Event::Transfer { done, total } => progress.transfer(&action.id, *done, *total),
        Event::Warning { message } => progress.warn(&action.id, message),
        Event::MissingCommand(m) => progress.warn(&action.id, &m.to_string()),
        _ => {}
    };
    let started = Instant::now();
    let built = action::run_action(bctx, action, cancel, &mut on_event)
        .map_err(|e| failed(progress, action, e, bctx.keep_failed, started))?;
    crate::fault::point(&format!("{}.record", action.kind.as_str()));
    graph::record_build(store, action, built.duration, &built.steps, &built.tree)?;
    crate::fault::point(&format!("{}.recorded", action.kind.as_str()));
    let verb = if action.secret && remote.is_some() {
        format!("built ({})", graph::NOT_SHARED)
    } else {
        "built".to_string()
    };
    progress.finished(&action.id, &verb, Some(built.duration));
    share(remote, store, action, progress);
    Ok(built)
}

/// Shows an action's failure (a cancellation only as such) and ends its progress line.
fn failed(
    progress: &Progress,
    action: &Action,
    e: BuildError,
    keep_failed: bool,
    started: Instant,
) -> BuildError {
    let verb = if matches!(e, BuildError::Cancelled { .. }) {
        "cancelled"
    } else {
        progress.block(&render_failure(&e, keep_failed));
        "failed"
    };
    progress.finished(&action.id, verb, Some(started.elapsed()));
    e
}

/// A remote builder's failure as the action's (a cancellation stays one).
fn builder_failure(action: &Action, e: crate::remote::builder::BuilderError) -> BuildError {
    match e {
        crate::remote::builder::BuilderError::Cancelled { .. } => BuildError::Cancelled {
            id: action.id.to_string(),
        },
        e => BuildError::Builder {
            id: action.id.to_string(),
            source: Box::new(e),
        },
    }
}

/// Sends `action` to a remote builder, then takes its result from the remote cache (where
/// the builder stored it). The builder's stderr is this action's log here, line by line.
fn build_remotely(
    bctx: &BuildContext,
    action: &Action,
    cancel: &AtomicBool,
    progress: &Progress,
    remote: &crate::remote::Remote,
    builders: &crate::remote::builder::Builders,
) -> Result<(), BuildError> {
    let store = bctx.store;
    progress.started(&action.id);
    let started = Instant::now();
    let builder = send_to_builder(bctx, action, cancel, progress, remote, builders)
        .map_err(|e| failed(progress, action, builder_failure(action, e), false, started))?;
    let mut on_bytes = |done, total| progress.transfer(&action.id, done, Some(total));
    let taken = match remote.fetch(store, action, &mut on_bytes) {
        Ok(true) => Ok(()),
        Ok(false) => Err(builders.not_shared(&builder, action)),
        Err(e) => Err(crate::remote::builder::BuilderError::Download {
            builder: builder.clone(),
            source: Box::new(e),
        }),
    };
    taken.map_err(|e| failed(progress, action, builder_failure(action, e), false, started))?;
    progress.finished(
        &action.id,
        &format!("built on {builder}"),
        Some(started.elapsed()),
    );
    Ok(())
}

/// Has a remote builder build `action` (with the artifacts this host fetched shared through
/// the cache) and keeps its stderr as the action's log; the builder that built it.
fn send_to_builder(
    bctx: &BuildContext,
    action: &Action,
    cancel: &AtomicBool,
    progress: &Progress,
    remote: &crate::remote::Remote,
    builders: &crate::remote::builder::Builders,
) -> Result<String, crate::remote::builder::BuilderError> {
    let store = bctx.store;
    let log_path = store.path(&crate::store::Layout::log(&action.key));
    // Written beside, renamed into place when the builder is done (a log is never half of
    // one build and half of another).
    let logs = log_path.parent().unwrap_or(store.root()).to_path_buf();
    let mut log = crate::fsutil::create_dir_all(&logs)
        .ok()
        .and_then(|()| tempfile::NamedTempFile::new_in(&logs).ok());
    let built = {
        let mut on_line = |line: &str| {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            progress.output(&action.id, line);
        };
        let inputs = crate::remote::builder::Inputs {
            graph: bctx.graph,
            model: bctx.model,
            resolver: bctx.resolver,
            store,
        };
        // The artifacts this host fetched go to the builder through the cache (uploaded
        // even when this build only reads it: the builder writes there too), so that it
        // never downloads them again from their servers.
        for dep in bctx.graph.closure(&action.id) {
            if dep.kind == Kind::Fetch
                && let Err(e) = remote.share_with_builder(store, dep)
            {
                progress.warn(
                    &dep.id,
                    &format!("not stored in the remote cache for the builder: {e}"),
                );
            }
        }
        builders.build(&inputs, action, cancel, &mut on_line)
    };
    if let Some(f) = log {
        let _ = f.persist(&log_path);
    }
    built
}

/// The remote cache of this build: the command line's choice over the project's setting. A
/// malformed URL stops the build; a cache that cannot be reached is a warning (the build goes
/// on without it, as Bazel's does).
fn open_remote(
    session: &Session,
    shell: &Shell,
) -> Result<Option<crate::remote::Remote>, CommandError> {
    match crate::remote::open(
        session.model.project.cache.as_ref(),
        &session.remote,
        session.offline,
    ) {
        Ok(Some(r)) => {
            shell.status(&format!(
                "remote cache: {}{}",
                r.describe(),
                if r.uploads() {
                    " (read-write)"
                } else {
                    " (read-only)"
                }
            ));
            Ok(Some(r))
        }
        Ok(None) => Ok(None),
        Err(e @ crate::remote::RemoteError::Url { .. }) => Err(CommandError::from_diag(e)),
        Err(e) => {
            shell.warn(&format!("{e}; building without the remote cache"));
            Ok(None)
        }
    }
}

/// With a remote cache, the targets' disks are looked up before anything else: a disk that
/// comes from the cache needs neither its layer nor its base here, so what only it needed
/// leaves the plan (Bazel's "build without the bytes": the warm build of an image downloads
/// the image, not the trees it was made from). Actions already in the store stay in the plan
/// (reported cached); a disk the cache does not have, or holds corrupt, builds as usual.
fn disks_first(
    remote: &crate::remote::Remote,
    store: &Store,
    plan: &mut Vec<(&Action, Status)>,
    forced: &BTreeSet<String>,
    progress: &Progress,
) -> Result<(), CommandError> {
    let disks: Vec<&Action> = plan
        .iter()
        .filter(|(a, s)| a.kind == Kind::Disk && matches!(s, Status::ToRun { .. }))
        .filter(|(a, _)| !forced.contains(a.id.as_str()))
        .map(|(a, _)| *a)
        .collect();
    if disks.is_empty() {
        return Ok(());
    }
    for disk in disks {
        let Some(_lock) = store.lock_key(&disk.key, Wait::Block)? else {
            continue;
        };
        if graph::is_cached(store, disk) {
            continue;
        }
        let started = Instant::now();
        let mut on_bytes = |done, total| progress.transfer(&disk.id, done, Some(total));
        match remote.fetch(store, disk, &mut on_bytes) {
            Ok(true) => progress.finished(&disk.id, "cached (remote)", Some(started.elapsed())),
            Ok(false) => {}
            Err(e) => progress.warn(
                &disk.id,
                &format!("not taken from the remote cache ({e}); building it"),
            ),
        }
    }
    for (a, s) in plan.iter_mut() {
        *s = graph::status(store, a);
    }
    // What the disks still to build need, through actions the store does not hold.
    let by_id: BTreeMap<&str, &Action> = plan.iter().map(|(a, _)| (a.id.as_str(), *a)).collect();
    let cached: BTreeSet<&str> = plan
        .iter()
        .filter(|(_, s)| matches!(s, Status::Cached { .. }))
        .map(|(a, _)| a.id.as_str())
        .collect();
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<&str> = plan
        .iter()
        .filter(|(a, _)| a.kind == Kind::Disk)
        .map(|(a, _)| a.id.as_str())
        .collect();
    while let Some(id) = stack.pop() {
        if !needed.insert(id) || cached.contains(id) {
            continue;
        }
        if let Some(a) = by_id.get(id) {
            stack.extend(a.deps.iter().map(|d| d.as_str()));
        }
    }
    plan.retain(|(a, s)| matches!(s, Status::Cached { .. }) || needed.contains(a.id.as_str()));
    Ok(())
}

/// Stores a result in the remote cache when this build uploads; a failure is a warning.
fn share(
    remote: Option<&crate::remote::Remote>,
    store: &Store,
    action: &Action,
    progress: &Progress,
) {
    let Some(remote) = remote.filter(|r| r.uploads()) else {
        return;
    };
    if let Err(e) = remote.upload(store, action) {
        progress.warn(&action.id, &format!("not stored in the remote cache: {e}"));
    }
}

fn render_failure(e: &BuildError, kept: bool) -> String {
    let mut out = format!("error: {}", e.message());
    if let BuildError::StepFailed(f) = e
        && !f.tail.is_empty()
    {
        out.push_str(&format!("\n  last {} lines of output:", f.tail.len()));
        for l in &f.tail {
            out.push_str(&format!("\n  | {l}"));
        }
    }
    if let Some(log) = e.log() {
        out.push_str(&format!("\n  log: {}", log.display()));
    }
    if kept {
        out.push_str("\n  the working tree was kept (--keep-failed) under the store's tmp/");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::error::ErrorKind;

    fn report(blames: &[Option<Blame>]) -> BuildReport {
        let actions: Vec<ActionReport> = blames
            .iter()
            .enumerate()
            .map(|(i, b)| ActionReport {
                id: format!("layer:img{i}:amd64"),
                kind: Kind::Layer,
                key: format!("{i:064}"),
                status: if b.is_some() { "failed" } else { "built" },
                from: None,
                builder: None,
                not_shared: None,
                built: None,
                error: b.map(|_| "it failed".to_string()),
                blame: *b,
                log: None,
                because: None,
                outputs: None,
            })
            .collect();
        BuildReport {
            version: 1,
            summary: BuildSummary {
                total: actions.len(),
                failed: blames.iter().filter(|b| b.is_some()).count(),
                ..Default::default()
            },
            actions,
            remote: None,
            disks: vec![],
            cancelled: false,
        }
    }

    #[test]
    fn a_failed_build_is_the_error_of_whoever_must_act_first() {
        let kind = |b: &[Option<Blame>]| report(b).ok().unwrap_err().kind;
        assert_eq!(kind(&[Some(Blame::Input), None]), ErrorKind::User);
        assert_eq!(
            kind(&[Some(Blame::Input), Some(Blame::Host)]),
            ErrorKind::Environment
        );
        assert_eq!(kind(&[Some(Blame::MissingTool)]), ErrorKind::Environment);
        assert_eq!(kind(&[Some(Blame::Network)]), ErrorKind::Environment);
        assert_eq!(
            kind(&[Some(Blame::Host), Some(Blame::Bug)]),
            ErrorKind::Internal
        );
        assert!(report(&[None]).ok().is_ok());
    }
}
