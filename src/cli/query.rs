//! `ccb query …`: targets, manifests, elements, dependencies, the graph, keys, explain.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, Context};
use crate::element::{self, ElementView, ForTarget, PHASES};
use crate::graph::{self, ActionId, Graph, rdeps};
use crate::label::{self, Target};
use crate::manifest::{Arch, Model};
use crate::ui::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// List every image target: label, published name per arch, parent, arches, formats
    Targets(TargetsArgs),
    /// Show an image's evaluated manifest record, after inheritance
    Manifest(OneTargetArgs),
    /// Show the expanded elements of a target (or of `-e` elements): scripts per phase,
    /// environment.d files, environment and packages
    Elements(ElementsArgs),
    /// List what a target depends on: parent images, elements, artifacts, actions
    Deps(OneTargetArgs),
    /// List the targets that depend on a target, `element:NAME`, `artifact:NAME` or `source:NAME`
    Rdeps(RdepsArgs),
    /// Print the action graph of targets (default: all) as DOT or JSON
    Graph(GraphArgs),
    /// Print the keys and key documents of a target's actions
    Hash(OneTargetArgs),
    /// Say why a target's actions would run: what changed since their last build
    Explain(OneTargetArgs),
}

#[derive(Debug, Args)]
pub struct TargetsArgs {
    /// Only images built for these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct OneTargetArgs {
    /// The target: `//images:NAME`, `NAME` or a published name
    target: String,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ElementsArgs {
    /// The target whose elements to show
    #[arg(conflicts_with = "elements", required_unless_present = "elements")]
    target: Option<String>,
    /// Expand these elements instead of a target's (no implicit element is added)
    #[arg(short = 'e', long = "element", num_args = 1.., value_name = "NAME")]
    elements: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    /// The architecture (default: amd64, or the target's first)
    #[arg(long)]
    arch: Option<String>,
    /// Declare a variable for environment.d and package conditions (repeatable)
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RdepsArgs {
    /// A target, `element:NAME`, `artifact:NAME` or `source:NAME`
    what: String,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Json,
}

#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Targets (default: every image)
    targets: Vec<String>,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    #[arg(long, value_enum, default_value = "dot")]
    format: GraphFormat,
}

pub fn run(ctx: &mut Context, cmd: QueryCommand) -> Result<(), CliError> {
    match cmd {
        QueryCommand::Targets(a) => targets(ctx, a),
        QueryCommand::Manifest(a) => manifest(ctx, a),
        QueryCommand::Elements(a) => elements(ctx, a),
        QueryCommand::Deps(a) => deps(ctx, a),
        QueryCommand::Rdeps(a) => rdeps(ctx, a),
        QueryCommand::Graph(a) => graph_cmd(ctx, a),
        QueryCommand::Hash(a) => hash(ctx, a),
        QueryCommand::Explain(a) => explain(ctx, a),
    }
}

/// The model, a resolver over the project's search path, and a graph of `targets`.
pub(super) fn load_graph(
    ctx: &mut Context,
    model: &Model,
    targets: &[Target],
    element_path: &[String],
    with_publish: bool,
) -> Result<Graph, CliError> {
    let store = ctx.store()?;
    let resolver = element::project_resolver(model, element_path, &store, ctx.offline, &mut |w| {
        ui::warn(w)
    })?;
    Ok(Graph::build(model, &resolver, targets, with_publish)?)
}

fn targets(ctx: &mut Context, a: TargetsArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let arches = label::parse_arches(&a.arch)?;
    let mut rows = Vec::new();
    for img in model.images.values() {
        let arch: Vec<Arch> = img
            .arch
            .iter()
            .copied()
            .filter(|x| arches.as_ref().is_none_or(|s| s.contains(x)))
            .collect();
        if arch.is_empty() {
            continue;
        }
        rows.push((img, arch));
    }
    match a.format {
        OutputFormat::Json => {
            let targets: Vec<_> = rows
                .iter()
                .map(|(img, arch)| {
                    let published: BTreeMap<&str, String> = arch
                        .iter()
                        .map(|a| (a.as_str(), img.published_name(*a)))
                        .collect();
                    json!({
                        "label": format!("//images:{}", img.key),
                        "key": img.key,
                        "name": img.name,
                        "published": published,
                        "from": img.from.as_ref().map(|p| format!("//images:{p}")),
                        "arch": arch,
                        "formats": img.formats,
                        "baremetal_only": img.baremetal_only,
                    })
                })
                .collect();
            ui::out_json(&json!({ "version": 1, "targets": targets }));
        }
        OutputFormat::Text => {
            let mut out = String::new();
            for (img, arch) in rows {
                let published: Vec<String> = arch
                    .iter()
                    .map(|a| format!("{} ({a})", img.published_name(*a)))
                    .collect();
                let from = img
                    .from
                    .as_ref()
                    .map(|p| format!("  from //images:{p}"))
                    .unwrap_or_default();
                let formats: Vec<&str> = img.formats.iter().map(|f| f.as_str()).collect();
                out.push_str(&format!(
                    "//images:{}  {}  [{}]{from}\n",
                    img.key,
                    published.join(", "),
                    formats.join(",")
                ));
            }
            ui::out(&out);
        }
    }
    Ok(())
}

/// Resolves exactly one image (any arch) from a word.
fn one_image<'m>(
    model: &'m Model,
    word: &str,
    arch: &[String],
) -> Result<(&'m crate::manifest::Image, Vec<Target>), CliError> {
    let arches = label::parse_arches(arch)?;
    let targets = label::resolve(model, &[word.to_string()], arches.as_ref())?;
    let image = &model.images[&targets[0].image];
    Ok((image, targets))
}

fn manifest(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let (image, _) = one_image(&model, &a.target, &a.arch)?;
    match a.format {
        OutputFormat::Json => ui::out_json(image),
        OutputFormat::Text => {
            let mut out = format!("//images:{}\n", image.key);
            out.push_str(&format!("  name: {}\n", image.name));
            if let Some(d) = &image.description {
                out.push_str(&format!("  description: {d}\n"));
            }
            if let Some(p) = &image.from {
                out.push_str(&format!("  from: //images:{p}\n"));
            }
            out.push_str(&format!("  elements: {}\n", image.elements.join(" ")));
            if image.from.is_some() {
                out.push_str(&format!(
                    "  own elements: {}\n",
                    image.own_elements.join(" ")
                ));
            }
            let arch: Vec<String> = image
                .arch
                .iter()
                .map(|a| format!("{a} ({})", image.published_name(*a)))
                .collect();
            out.push_str(&format!("  arch: {}\n", arch.join(", ")));
            out.push_str(&format!("  baremetal_only: {}\n", image.baremetal_only));
            let p = &image.provenance;
            out.push_str(&format!(
                "  provenance: distro={} release={} variant={}\n",
                p.distro.as_deref().unwrap_or("-"),
                p.release.as_deref().unwrap_or("-"),
                p.variant.as_deref().unwrap_or("-")
            ));
            let formats: Vec<&str> = image.formats.iter().map(|f| f.as_str()).collect();
            out.push_str(&format!("  formats: {}\n", formats.join(", ")));
            out.push_str(&format!(
                "  size: {}\n",
                image.size.as_deref().unwrap_or("computed")
            ));
            for (k, v) in &image.env {
                out.push_str(&format!("  env {k}={v}\n"));
            }
            for (k, v) in &image.artifacts {
                out.push_str(&format!("  artifact {k} = {v}\n"));
            }
            ui::out(&out);
        }
    }
    Ok(())
}

fn view_json(elements: &[String], view: &ElementView) -> serde_json::Value {
    let phases: serde_json::Map<String, serde_json::Value> = PHASES
        .iter()
        .filter_map(|p| {
            view.phases.get(*p).map(|s| {
                (
                    p.to_string(),
                    json!(s.iter().map(|s| &s.name).collect::<Vec<_>>()),
                )
            })
        })
        .collect();
    let scripts: serde_json::Map<String, serde_json::Value> = PHASES
        .iter()
        .filter_map(|p| view.phases.get(*p).map(|s| (p.to_string(), json!(s))))
        .collect();
    json!({
        "elements": elements,
        "phases": phases,
        "environment": view.environment.iter().map(|s| &s.name).collect::<Vec<_>>(),
        "packages": view.packages,
        "scripts": scripts,
        "environment_files": view.environment,
        "env": view.env,
        "overwrites": view.overwrites,
        "skipped": view.skipped,
        "block_device": view.block_device.as_ref().map(|(e, f)| json!({"element": e, "file": f})),
    })
}

fn view_text(elements: &[String], view: &ElementView) -> String {
    let mut out = format!("elements: {}\n", elements.join(" "));
    for phase in PHASES {
        if let Some(scripts) = view.phases.get(phase) {
            out.push_str(&format!("{phase}:\n"));
            for s in scripts {
                out.push_str(&format!("  {} ({})\n", s.name, s.element));
            }
        }
    }
    if !view.environment.is_empty() {
        out.push_str("environment.d:\n");
        for s in &view.environment {
            out.push_str(&format!("  {} ({})\n", s.name, s.element));
        }
    }
    if !view.packages.is_empty() {
        out.push_str("packages:\n");
        for phase in PHASES {
            if let Some(p) = view.packages.get(phase) {
                if !p.install.is_empty() {
                    out.push_str(&format!("  {phase} install: {}\n", p.install.join(" ")));
                }
                if !p.uninstall.is_empty() {
                    out.push_str(&format!("  {phase} uninstall: {}\n", p.uninstall.join(" ")));
                }
            }
        }
    }
    out.push_str("environment:\n");
    for (k, v) in &view.env {
        out.push_str(&format!("  {k}={v}\n"));
    }
    for o in &view.overwrites {
        out.push_str(&format!(
            "overwrite: {} from {} replaces {}'s\n",
            o.path, o.winner, o.loser
        ));
    }
    for s in &view.skipped {
        out.push_str(&format!(
            "skipped: {}/{} ({})\n",
            s.element, s.path, s.reason
        ));
    }
    out
}

fn elements(ctx: &mut Context, a: ElementsArgs) -> Result<(), CliError> {
    let store = ctx.store()?;
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--env expects K=V, got `{kv}`")))?;
        declared.insert(k.to_string(), v.to_string());
    }
    let arch = match &a.arch {
        Some(s) => Some(
            Arch::parse(s)
                .ok_or_else(|| CliError::from_diag(label::LabelError::BadArch(s.clone())))?,
        ),
        None => None,
    };
    if let Some(word) = &a.target {
        let model = ctx.model()?;
        let (image, targets) = one_image(
            &model,
            word,
            &arch.map(|a| vec![a.to_string()]).unwrap_or_default(),
        )?;
        let arch = targets[0].arch;
        let resolver =
            element::project_resolver(&model, &a.element_path, &store, ctx.offline, &mut |w| {
                ui::warn(w)
            })?;
        let mut env = image.env.clone();
        env.extend(declared);
        let r = resolver
            .resolve(
                &element::requested_elements(image),
                arch,
                Some(&image.published_name(arch)),
                &env,
                false,
            )
            .map_err(|e| ForTarget::new(Some(targets[0].to_string()), e))?;
        render_view(a.format, &r.elements, &r.view);
        return Ok(());
    }
    // The `-e` form: like DIB's element-info, no project needed and nothing implicit added.
    let arch = arch.unwrap_or(Arch::Amd64);
    let root = ctx.root_if_any();
    let model = match &root {
        Some(_) => ctx.model().ok(),
        None => None,
    };
    let store = ctx.store().ok();
    let path = element::project_search_path(
        model.as_ref(),
        root.as_deref(),
        &a.element_path,
        store.as_ref(),
        &mut |w| ui::warn(w),
    )
    .map_err(|e| ForTarget::new(None, e))?;
    let closure = element::expand(&path, &a.elements).map_err(|e| ForTarget::new(None, e))?;
    let dirs: Vec<&element::ElementDir> = closure.iter().filter_map(|n| path.get(n)).collect();
    let mut env = element::engine_env(arch, None, &closure);
    env.extend(declared);
    let view = ElementView::build(&dirs, &env).map_err(|e| ForTarget::new(None, e))?;
    render_view(a.format, &closure, &view);
    Ok(())
}

fn render_view(format: OutputFormat, elements: &[String], view: &ElementView) {
    match format {
        OutputFormat::Json => ui::out_json(&view_json(elements, view)),
        OutputFormat::Text => ui::out(&view_text(elements, view)),
    }
}

fn deps(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let (image, targets) = one_image(&model, &a.target, &a.arch)?;
    let graph = load_graph(ctx, &model, &targets, &a.element_path, false)?;
    let mut parents = Vec::new();
    let mut cur = image.from.clone();
    while let Some(p) = cur {
        parents.push(format!("//images:{p}"));
        cur = model.images[&p].from.clone();
    }
    let artifacts: Vec<&String> = image.artifacts.values().collect();
    // One build per arch: (arch, elements, locked sources → commit, actions the disk needs).
    type Build<'g> = (
        Arch,
        &'g Vec<String>,
        BTreeMap<String, String>,
        Vec<&'g graph::Action>,
    );
    let builds: Vec<Build> = targets
        .iter()
        .map(|t| {
            let r = &graph.resolved[&(t.image.clone(), t.arch)];
            let disk = ActionId::disk(&t.image, t.arch).to_string();
            let sources = match graph.get(&disk).and_then(|d| d.doc.get("sources")) {
                Some(crate::keydoc::Value::Map(m)) => m.clone(),
                _ => BTreeMap::new(),
            };
            (t.arch, &r.elements, sources, graph.closure(&disk))
        })
        .collect();
    match a.format {
        OutputFormat::Json => {
            let builds: Vec<_> = builds
                .iter()
                .map(|(arch, elements, sources, actions)| {
                    let actions: Vec<_> = actions
                        .iter()
                        .map(|a| json!({"id": a.id, "kind": a.kind, "key": a.key}))
                        .collect();
                    json!({"arch": arch, "elements": elements, "artifacts": artifacts, "sources": sources, "actions": actions})
                })
                .collect();
            ui::out_json(&json!({
                "target": format!("//images:{}", image.key),
                "parents": parents,
                "builds": builds,
            }))
        }
        OutputFormat::Text => {
            let mut out = format!("//images:{}\n", image.key);
            if !parents.is_empty() {
                out.push_str(&format!("  parents: {}\n", parents.join(" ")));
            }
            for (arch, elements, sources, actions) in &builds {
                out.push_str(&format!(
                    "  {arch}:\n    elements: {}\n",
                    elements.join(" ")
                ));
                if !sources.is_empty() {
                    let pins: Vec<String> = sources
                        .iter()
                        .map(|(n, c)| format!("{n}@{}", &c[..12.min(c.len())]))
                        .collect();
                    out.push_str(&format!("    sources: {}\n", pins.join(" ")));
                }
                if !artifacts.is_empty() {
                    let names: Vec<&str> = artifacts.iter().map(|s| s.as_str()).collect();
                    out.push_str(&format!("    artifacts: {}\n", names.join(" ")));
                }
                out.push_str("    actions:\n");
                for act in actions {
                    out.push_str(&format!("      {} {}\n", act.id, &act.key[..16]));
                }
            }
            ui::out(&out);
        }
    }
    Ok(())
}

fn rdeps(ctx: &mut Context, a: RdepsArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let all = label::resolve(&model, &[], None)?;
    let store = ctx.store()?;
    let resolver =
        element::project_resolver(&model, &[], &store, ctx.offline, &mut |w| ui::warn(w))?;
    let graph = Graph::build(&model, &resolver, &all, false)?;
    let unknown = |name: &str, known: Vec<String>| {
        CliError::from_diag(label::LabelError::Unknown {
            word: a.what.clone(),
            help: label::did_you_mean(name, &known),
        })
    };
    let input = if let Some(name) = a.what.strip_prefix("element:") {
        if resolver.path.get(name).is_none() {
            return Err(CliError::from_diag(element::ElementError::NotFound {
                name: name.to_string(),
                wanted_by: None,
                help: label::did_you_mean(name, &resolver.path.names()),
            }));
        }
        rdeps::Input::Element(name.to_string())
    } else if let Some(name) = a.what.strip_prefix("artifact:") {
        if !model.artifacts.contains_key(name) {
            return Err(unknown(name, model.artifacts.keys().cloned().collect()));
        }
        rdeps::Input::Artifact(name.to_string())
    } else if let Some(name) = a.what.strip_prefix("source:") {
        if !model.sources.contains_key(name) {
            return Err(unknown(name, model.sources.keys().cloned().collect()));
        }
        rdeps::Input::Source(name.to_string())
    } else {
        rdeps::Input::Images(label::resolve(&model, std::slice::from_ref(&a.what), None)?)
    };
    let hits = rdeps::rdeps(&graph, &resolver, &all, &input);
    match a.format {
        OutputFormat::Json => {
            let rows: Vec<_> = hits
                .iter()
                .map(|(t, acts)| json!({"target": t.label(), "arch": t.arch, "actions": acts}))
                .collect();
            ui::out_json(&json!({ "of": a.what, "dependents": rows }));
        }
        OutputFormat::Text => {
            let mut out = String::new();
            for (t, acts) in &hits {
                out.push_str(&format!("{t}  {}\n", acts.join(" ")));
            }
            ui::out(&out);
            if hits.is_empty() {
                ui::status(ctx.quiet, &format!("nothing depends on {}", a.what));
            }
        }
    }
    Ok(())
}

fn graph_cmd(ctx: &mut Context, a: GraphArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let arches = label::parse_arches(&a.arch)?;
    let targets = label::resolve(&model, &a.targets, arches.as_ref())?;
    let graph = load_graph(ctx, &model, &targets, &[], true)?;
    match a.format {
        GraphFormat::Json => {
            let nodes: Vec<_> = graph.actions.iter().collect();
            ui::out_json(&json!({ "version": 1, "actions": nodes }));
        }
        GraphFormat::Dot => {
            let mut out = String::from(
                "digraph ccb {\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n",
            );
            for act in &graph.actions {
                out.push_str(&format!(
                    "  \"{}\" [label=\"{}\\n{}\"];\n",
                    act.id,
                    act.id,
                    &act.key[..12]
                ));
                for d in &act.deps {
                    out.push_str(&format!("  \"{d}\" -> \"{}\";\n", act.id));
                }
            }
            out.push_str("}\n");
            ui::out(&out);
        }
    }
    Ok(())
}

fn hash(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let (_, targets) = one_image(&model, &a.target, &a.arch)?;
    let graph = load_graph(ctx, &model, &targets, &a.element_path, false)?;
    let mut rows = Vec::new();
    for t in &targets {
        for act in graph.actions_of(t) {
            rows.push(act);
        }
    }
    match a.format {
        OutputFormat::Json => {
            let out: Vec<_> = rows
                .iter()
                .map(|act| json!({"id": act.id, "key": act.key, "document": act.doc.fields.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()}))
                .collect();
            ui::out_json(&json!({ "actions": out }));
        }
        OutputFormat::Text => {
            let mut out = String::new();
            for act in rows {
                out.push_str(&format!("{} {}\n", act.id, act.key));
                for line in act.doc.render().lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            ui::out(&out);
        }
    }
    Ok(())
}

fn explain(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let (_, targets) = one_image(&model, &a.target, &a.arch)?;
    let store = ctx.store()?;
    let resolver =
        element::project_resolver(&model, &a.element_path, &store, ctx.offline, &mut |w| {
            ui::warn(w)
        })?;
    let graph = Graph::build(&model, &resolver, &targets, false)?;
    let mut rows = Vec::new();
    for t in &targets {
        let disk = ActionId::disk(&t.image, t.arch).to_string();
        for act in graph.closure(&disk) {
            let mut status = graph::status(&store, act);
            if let graph::Status::ToRun { reasons } = &mut status
                && let Some(line) =
                    crate::action::checkpoint::explain(&model, &graph, &resolver, &store, act)
            {
                reasons.push(line);
            }
            rows.push((act, status));
        }
    }
    super::render::plan(&rows, a.format, true);
    Ok(())
}
