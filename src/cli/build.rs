//! `ccb build`: plan the targets' actions, then run the ones not in the store.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::{CliError, Context};
use crate::build::event::Event;
use crate::build::{self, BuildContext, BuildError};
use crate::element;
use crate::exec::{self, Fate, JobEnd, Node};
use crate::graph::{self, Action, Graph, Kind, Status};
use crate::label;
use crate::store::Wait;
use crate::ui::progress::{Progress, human_duration};
use crate::ui::{self, OutputFormat};

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

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Targets (default: every image)
    targets: Vec<String>,
    /// Print the plan (every action, its key, cached or to run, and why) without building
    #[arg(long)]
    dry_run: bool,
    /// Refuse to add a pin to ccb.lock (for CI): a "latest" artifact with no pin is an error
    #[arg(long)]
    locked: bool,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    /// Run up to N actions at once
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// After a failure, go on with everything that does not depend on it
    #[arg(long)]
    keep_going: bool,
    /// Rebuild this target's own actions even when they are in the store (repeatable)
    #[arg(long, value_name = "TARGET")]
    force: Vec<String>,
    /// Keep the working tree of a failed action (its path is printed)
    #[arg(long)]
    keep_failed: bool,
    /// Stop after this stage
    #[arg(long, value_enum, value_name = "STAGE")]
    pub until: Option<Stage>,
    /// Where the images go (default: `out/images` in the project)
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// Set a build variable for every image, over the manifests' `env` (repeatable; `NAME`
    /// alone takes the value from ccb's environment). Like Bazel's --action_env, the value
    /// enters the keys: how a site passes its mirrors or repository URLs without committing them
    #[arg(long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

impl BuildArgs {
    /// The build `ccb test` runs first: the targets' disks, nothing forced.
    pub fn for_test(
        targets: Vec<String>,
        arch: Vec<String>,
        element_path: Vec<String>,
        env: Vec<String>,
    ) -> Self {
        Self {
            targets,
            dry_run: false,
            locked: false,
            arch,
            element_path,
            jobs: 1,
            keep_going: false,
            force: vec![],
            keep_failed: false,
            until: Some(Stage::Disk),
            out: None,
            env,
            format: OutputFormat::Text,
        }
    }
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

/// Builds what the targets' disks need (nothing when cached) and returns each target with its
/// disk's outputs directory in the store: what `ccb publish` and `ccb inspect` read.
pub(super) fn built_disks(
    ctx: &mut Context,
    model: &crate::manifest::Model,
    targets: &[String],
    arch: &[String],
    element_path: &[String],
) -> Result<Vec<(label::Target, std::path::PathBuf)>, CliError> {
    run(
        ctx,
        BuildArgs::for_test(
            targets.to_vec(),
            arch.to_vec(),
            element_path.to_vec(),
            vec![],
        ),
    )?;
    // The build may have pinned new "latest" artifacts: the disks are keyed by those pins.
    let repinned;
    let model = if model.pins.unpinned.is_empty() {
        model
    } else {
        let mut m = model.clone();
        let lock = crate::lock::load(&m.root)?;
        crate::lock::apply(&mut m, lock.as_ref())?;
        repinned = m;
        &repinned
    };
    let arches = label::parse_arches(arch)?;
    let resolved = label::resolve(model, targets, arches.as_ref())?;
    let store = ctx.store()?;
    let resolver = element::project_resolver(model, element_path, &store, ctx.offline, &mut |w| {
        ui::warn(w)
    })?;
    let graph = Graph::build(model, &resolver, &resolved, false)?;
    let mut out = Vec::new();
    for t in resolved {
        let disk = graph
            .actions_of(&t)
            .into_iter()
            .find(|a| a.kind == Kind::Disk)
            .ok_or_else(|| CliError::msg(format!("{} has no disk action", t.label())))?;
        if store.outputs_meta(&disk.key).is_none() {
            return Err(CliError::msg(format!(
                "{}: the disk is not in the store after the build",
                t.label()
            )));
        }
        let dir = store.outputs_dir(&disk.key);
        out.push((t, dir));
    }
    Ok(out)
}

/// Applies `--env` settings to every image of the model.
pub fn apply_env(model: &mut crate::manifest::Model, settings: &[String]) -> Result<(), CliError> {
    for setting in settings {
        let (name, value) = match setting.split_once('=') {
            Some((n, v)) => (n, v.to_string()),
            None => {
                let v = std::env::var(setting).map_err(|_| {
                    CliError::usage(format!(
                        "--env {setting}: `{setting}` is not set in ccb's environment (give NAME=VALUE)"
                    ))
                })?;
                (setting.as_str(), v)
            }
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(CliError::usage(format!(
                "--env {setting}: `{name}` is not a variable name"
            )));
        }
        for image in model.images.values_mut() {
            image.env.insert(name.to_string(), value.clone());
        }
    }
    Ok(())
}

/// Pins the "latest" artifacts the targets use that ccb.lock has no digest for yet, saying so.
fn pin_new_artifacts(
    ctx: &Context,
    model: &mut crate::manifest::Model,
    targets: &[label::Target],
    store: &crate::store::Store,
    locked: bool,
) -> Result<(), CliError> {
    let unpinned = crate::lock::unpinned_for(model, targets.iter().map(|t| t.image.as_str()));
    let fetcher = crate::fetch::Fetcher {
        store,
        distdirs: crate::fetch::distdirs_from_env(),
        offline: ctx.offline,
        swift: None,
    };
    for (name, sha) in crate::lock::pin_new(model, &unpinned, &fetcher, locked)? {
        ui::status(
            ctx.quiet,
            &format!("ccb.lock: pinned artifact `{name}` at {sha} (new in the manifests)"),
        );
    }
    Ok(())
}

pub fn run(ctx: &mut Context, a: BuildArgs) -> Result<(), CliError> {
    let mut model = ctx.model()?;
    apply_env(&mut model, &a.env)?;
    let arches = label::parse_arches(&a.arch)?;
    let targets = label::resolve(&model, &a.targets, arches.as_ref())?;
    let store = ctx.store()?;
    if a.locked || !a.dry_run {
        pin_new_artifacts(ctx, &mut model, &targets, &store, a.locked)?;
    }
    let model = model;
    let resolver =
        element::project_resolver(&model, &a.element_path, &store, ctx.offline, &mut |w| {
            ui::warn(w)
        })?;
    let graph = Graph::build(&model, &resolver, &targets, false)?;
    let until = a.until.unwrap_or(Stage::Disk);
    // The targets' own actions up to the stage, and what they need (a child image needs its
    // parent's layer, not its parent's disk).
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for t in &targets {
        for act in graph.actions_of(t) {
            if act.kind == Kind::Publish {
                continue;
            }
            let closure = graph.closure(&act.id);
            if stage_of(act.kind) <= until {
                needed.extend(closure.iter().map(|a| a.id.clone()));
            } else if until == Stage::Fetch {
                needed.extend(
                    closure
                        .iter()
                        .filter(|a| a.kind == Kind::Fetch)
                        .map(|a| a.id.clone()),
                );
            }
        }
    }
    let plan: Vec<(&Action, Status)> = graph::plan(&graph, &store)
        .into_iter()
        .filter(|(act, _)| needed.contains(&act.id))
        .collect();
    if a.dry_run {
        render_plan(&plan, a.format, ctx.verbose > 0);
        return Ok(());
    }

    // Foreign architectures: emulated (slowly) when qemu-user is registered, else refused
    // before anything runs.
    let foreign: BTreeSet<crate::manifest::Arch> = plan
        .iter()
        .filter(|(act, s)| {
            matches!(act.kind, Kind::Base | Kind::Layer) && matches!(s, Status::ToRun { .. })
        })
        .filter_map(|(act, _)| act.arch)
        .collect();
    for arch in foreign {
        match build::arch_support(arch) {
            build::ArchSupport::Native => {}
            build::ArchSupport::Emulated { handler } => ui::warn(&format!(
                "{arch} root filesystems run under qemu-user emulation ({handler}): expect \
                 them to take 5-10 times longer than native builds"
            )),
            build::ArchSupport::Missing { handler } => {
                return Err(CliError::msg(format!(
                    "cannot build {arch} root filesystems on this {} host: no qemu-user \
                     emulation is registered (binfmt_misc handler `{handler}`); install \
                     qemu-user-static and binfmt-support, or build with --arch {}",
                    std::env::consts::ARCH,
                    if arch == crate::manifest::Arch::Amd64 {
                        "arm64"
                    } else {
                        "amd64"
                    }
                )));
            }
        }
    }

    let forced: BTreeSet<String> = if a.force.is_empty() {
        BTreeSet::new()
    } else {
        let ft = label::resolve(&model, &a.force, arches.as_ref())?;
        ft.iter()
            .flat_map(|t| graph.actions_of(t))
            .map(|act| act.id.clone())
            .collect()
    };

    // Builds share the store; `ccb cache gc` takes it alone.
    let _store_lock = match store.lock_store(false, Wait::Try)? {
        Some(l) => l,
        None => {
            ui::status(ctx.quiet, "waiting for `ccb cache` to release the store...");
            store
                .lock_store(false, Wait::Block)?
                .expect("a blocking lock returns a lock")
        }
    };

    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C exits at once (the sandboxes die with ccb).
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.clone());
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }

    let nodes: Vec<Node> = plan
        .iter()
        .map(|(act, _)| Node {
            id: act.id.clone(),
            deps: act.deps.clone(),
            weight: store
                .read_json::<graph::LastBuild>(&graph::last_record_name(&act.id))
                .map(|l| l.duration_ms)
                .filter(|d| *d > 0)
                .unwrap_or_else(|| default_weight(act.kind)),
            light: act.kind == Kind::Fetch,
        })
        .collect();

    let swift = super::publish::swift_opener(&model);
    let bctx = BuildContext {
        model: &model,
        graph: &graph,
        resolver: &resolver,
        store: &store,
        overlay: build::overlay_available(),
        stream_output: ctx.verbose > 0,
        keep_failed: a.keep_failed,
        distdirs: crate::fetch::distdirs_from_env(),
        offline: ctx.offline,
        swift: Some(&swift),
    };
    let progress = Progress::new(ctx.quiet, ctx.verbose > 0);
    let results: Mutex<Vec<(String, Result<build::Built, BuildError>)>> = Mutex::new(Vec::new());
    let started = Instant::now();

    let fates = exec::schedule(&nodes, a.jobs, a.keep_going, &cancel, |id| {
        let action = graph.get(id).expect("scheduled actions are in the graph");
        let force = forced.contains(id);
        if !force && graph::is_cached(&store, action) {
            return JobEnd::Cached;
        }
        let outcome = run_one(&bctx, action, force, &cancel, &progress);
        let end = match &outcome {
            Ok(None) => JobEnd::Cached,
            Ok(Some(_)) => JobEnd::Built,
            Err(BuildError::Cancelled { .. }) => JobEnd::Cancelled,
            Err(_) => JobEnd::Failed,
        };
        if let Some(r) = match outcome {
            Ok(Some(b)) => Some(Ok(b)),
            Err(e) => Some(Err(e)),
            Ok(None) => None,
        } {
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id.to_string(), r));
        }
        end
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());

    // Every finished disk of the targets goes to the output directory.
    let out_dir = match &a.out {
        Some(d) => d.clone(),
        None => model.root.join("out/images"),
    };
    let mut outputs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (act, _) in &plan {
        if act.kind == Kind::Disk
            && matches!(
                fates.get(&act.id),
                Some(Fate::Ran(JobEnd::Built | JobEnd::Cached))
            )
        {
            let files = build::materialize(&store, &act.key, &out_dir)?;
            let shown: Vec<String> = files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "qcow2" || e == "raw"))
                .map(|f| crate::fsutil::display_path(f))
                .collect();
            if a.format == OutputFormat::Text {
                ui::status(ctx.quiet, &format!("{}: {}", act.id, shown.join(", ")));
            }
            outputs.insert(
                act.id.clone(),
                files.iter().map(|f| f.display().to_string()).collect(),
            );
        }
    }
    report(
        &plan,
        &fates,
        &results,
        &outputs,
        started.elapsed(),
        a.format,
        ctx.quiet,
    );

    if cancel.load(Ordering::SeqCst) {
        return Err(CliError::msg("build cancelled"));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if failed > 0 {
        return Err(CliError::msg(format!(
            "{failed} action{} failed",
            if failed == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Builds one action under its key's lock. `Ok(None)`: another ccb built it meanwhile.
fn run_one(
    bctx: &BuildContext,
    action: &Action,
    force: bool,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<Option<build::Built>, BuildError> {
    let store = bctx.store;
    match action.kind {
        Kind::Fetch | Kind::Base | Kind::Layer | Kind::Disk => {}
        Kind::Publish => {
            let e = BuildError::Unsupported {
                id: action.id.clone(),
                message: "publish actions run under `ccb publish`".into(),
            };
            progress.block(&format!("error: {e}"));
            return Err(e);
        }
    }
    let _lock = match store.lock_key(&action.key, Wait::Try)? {
        Some(l) => l,
        None => {
            progress.warn(&action.id, "waiting for another ccb building the same key");
            store
                .lock_key(&action.key, Wait::Block)?
                .expect("a blocking lock returns a lock")
        }
    };
    if !force && graph::is_cached(store, action) {
        return Ok(None);
    }
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
        _ => {}
    };
    let started = Instant::now();
    match build::run_action(bctx, action, cancel, &mut on_event) {
        Ok(built) => {
            graph::record_build(store, action, &built)?;
            progress.finished(&action.id, "built", Some(built.duration));
            Ok(Some(built))
        }
        Err(e) => {
            let verb = if matches!(e, BuildError::Cancelled { .. }) {
                "cancelled"
            } else {
                progress.block(&render_failure(&e, bctx.keep_failed));
                "failed"
            };
            progress.finished(&action.id, verb, Some(started.elapsed()));
            Err(e)
        }
    }
}

fn render_failure(e: &BuildError, kept: bool) -> String {
    let mut out = format!("error: {e}");
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

fn report(
    plan: &[(&Action, Status)],
    fates: &std::collections::BTreeMap<String, Fate>,
    results: &[(String, Result<build::Built, BuildError>)],
    outputs: &std::collections::BTreeMap<String, Vec<String>>,
    elapsed: Duration,
    format: OutputFormat,
    quiet: bool,
) {
    let result_of = |id: &str| results.iter().find(|(i, _)| i == id).map(|(_, r)| r);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let mut rows = Vec::new();
    for (act, _) in plan {
        let fate = fates.get(&act.id).cloned().unwrap_or(Fate::NotStarted);
        let status = match &fate {
            Fate::Ran(JobEnd::Cached) => "cached",
            Fate::Ran(JobEnd::Built) => "built",
            Fate::Ran(JobEnd::Failed) => "failed",
            Fate::Ran(JobEnd::Cancelled) => "cancelled",
            Fate::Skipped { .. } => "skipped",
            Fate::NotStarted => "not-started",
        };
        *counts.entry(status).or_default() += 1;
        let mut row = json!({"id": act.id, "kind": act.kind, "key": act.key, "status": status});
        match result_of(&act.id) {
            Some(Ok(b)) => {
                row["duration_ms"] = json!(b.duration.as_millis() as u64);
                row["steps"] = json!(b.steps);
                row["tree"] = json!(b.tree);
            }
            Some(Err(e)) => {
                row["error"] = json!(e.to_string());
                if let Some(log) = e.log() {
                    row["log"] = json!(log);
                }
            }
            None => {}
        }
        if let Fate::Skipped { because } = &fate {
            row["because"] = json!(because);
        }
        if let Some(files) = outputs.get(&act.id) {
            row["outputs"] = json!(files);
        }
        rows.push(row);
    }
    match format {
        OutputFormat::Json => ui::out_json(&json!({
            "version": 1,
            "actions": rows,
            "summary": {
                "total": plan.len(),
                "built": counts.get("built").copied().unwrap_or(0),
                "cached": counts.get("cached").copied().unwrap_or(0),
                "failed": counts.get("failed").copied().unwrap_or(0),
                "skipped": counts.get("skipped").copied().unwrap_or(0),
                "not_started": counts.get("not-started").copied().unwrap_or(0),
                "cancelled": counts.get("cancelled").copied().unwrap_or(0),
                "duration_ms": elapsed.as_millis() as u64,
            },
        })),
        OutputFormat::Text => {
            let parts: Vec<String> = [
                "built",
                "cached",
                "failed",
                "skipped",
                "not-started",
                "cancelled",
            ]
            .iter()
            .filter_map(|k| counts.get(k).map(|n| format!("{n} {k}")))
            .collect();
            ui::status(
                quiet,
                &format!(
                    "{} actions: {} in {}",
                    plan.len(),
                    if parts.is_empty() {
                        "nothing to do".to_string()
                    } else {
                        parts.join(", ")
                    },
                    human_duration(elapsed)
                ),
            );
        }
    }
}

pub(super) fn render_plan(plan: &[(&Action, Status)], format: OutputFormat, all_reasons: bool) {
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = plan
                .iter()
                .map(|(a, s)| json!({"id": a.id, "kind": a.kind, "key": a.key, "deps": a.deps, "status": s}))
                .collect();
            let to_run = plan
                .iter()
                .filter(|(_, s)| matches!(s, Status::ToRun { .. }))
                .count();
            ui::out_json(&json!({
                "version": 1,
                "actions": rows,
                "summary": {"total": plan.len(), "cached": plan.len() - to_run, "to_run": to_run},
            }));
        }
        OutputFormat::Text => {
            let width = plan.iter().map(|(a, _)| a.id.len()).max().unwrap_or(0);
            let mut out = String::new();
            for (a, s) in plan {
                match s {
                    Status::Cached => {
                        out.push_str(&format!("{:width$}  {}  cached\n", a.id, &a.key[..16]))
                    }
                    Status::ToRun { reasons } => {
                        let shown: Vec<&String> = if all_reasons {
                            reasons.iter().collect()
                        } else {
                            reasons.iter().take(3).collect()
                        };
                        let more = reasons.len() - shown.len();
                        out.push_str(&format!(
                            "{:width$}  {}  to run: {}",
                            a.id,
                            &a.key[..16],
                            shown[0]
                        ));
                        for r in &shown[1..] {
                            out.push_str(&format!("; {r}"));
                        }
                        if more > 0 {
                            out.push_str(&format!("; and {more} more (-v)"));
                        }
                        out.push('\n');
                    }
                }
            }
            let to_run = plan
                .iter()
                .filter(|(_, s)| matches!(s, Status::ToRun { .. }))
                .count();
            out.push_str(&format!(
                "{} actions: {} cached, {} to run\n",
                plan.len(),
                plan.len() - to_run,
                to_run
            ));
            ui::out(&out);
        }
    }
}
