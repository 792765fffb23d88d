//! `ccb query …`: targets, manifests, elements, dependencies, the graph, keys, explain.

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::element::{ElementView, PHASES};
use crate::ops;
use crate::ops::query::{TargetQuery, TargetsQuery};
use crate::ui::{COMMIT_WIDTH, KEY_WIDTH, OutputFormat, Shell, short};

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

impl OneTargetArgs {
    fn query(&self) -> TargetQuery {
        TargetQuery {
            target: self.target.clone(),
            arch: self.arch.clone(),
        }
    }
}

fn targets(ctx: &mut Context, a: TargetsArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.model()?;
    let report = ops::query::targets(&model, &ops::query::TargetsListing { arch: a.arch })?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => {
            let mut out = String::new();
            for t in &report.targets {
                let published: Vec<String> = t
                    .published
                    .iter()
                    .map(|(a, name)| format!("{name} ({a})"))
                    .collect();
                let from = t
                    .from
                    .as_ref()
                    .map(|p| format!("  from {p}"))
                    .unwrap_or_default();
                let formats: Vec<&str> = t.formats.iter().map(|f| f.as_str()).collect();
                out.push_str(&format!(
                    "{}  {}  [{}]{from}\n",
                    t.label,
                    published.join(", "),
                    formats.join(",")
                ));
            }
            shell.out(&out);
        }
    }
    Ok(())
}

fn manifest(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.model()?;
    let image = ops::query::manifest(&model, &a.query())?;
    match a.format {
        OutputFormat::Json => shell.out_json(image),
        OutputFormat::Text => shell.out(&manifest_text(image)),
    }
    Ok(())
}

fn manifest_text(image: &crate::manifest::Image) -> String {
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
    out
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
    let shell = ctx.shell();
    let format = a.format;
    let req = ops::query::ElementsRequest {
        target: a.target,
        elements: a.elements,
        arch: a.arch,
        env: a.env,
        scope: ops::query::Scope {
            element_path: a.element_path,
            offline: ctx.offline,
        },
    };
    let report = if let Some(target) = &req.target {
        let store = ctx.store()?;
        let session = ctx.session(&store, req.scope.element_path.clone(), vec![])?;
        ops::query::target_elements(&session, target, &req)?
    } else {
        // `-e` elements use the project's search path when there is one.
        let root = ctx.root_if_any();
        let model = match &root {
            Some(_) => ctx.model().ok(),
            None => None,
        };
        let store = ctx.store().ok();
        ops::query::named_elements(
            model.as_ref(),
            root.as_deref(),
            store.as_ref(),
            &req,
            &mut |w| shell.warn(w),
        )?
    };
    match format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => shell.out(&view_text(&report.elements, &report.view)),
    }
    Ok(())
}

/// The session of a query: the locked model and its resolver (`element_path` searched first).
fn with_session<T>(
    ctx: &mut Context,
    element_path: Vec<String>,
    op: impl FnOnce(&ops::Session) -> Result<T, CliError>,
) -> Result<(Shell, T), CliError> {
    let shell = ctx.shell();
    let store = ctx.store()?;
    let session = ctx.session(&store, element_path, vec![])?;
    Ok((shell, op(&session)?))
}

fn deps(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let q = a.query();
    let (shell, report) = with_session(ctx, a.element_path, |s| ops::query::deps(s, &q))?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => {
            let mut out = format!("{}\n", report.target);
            if !report.parents.is_empty() {
                out.push_str(&format!("  parents: {}\n", report.parents.join(" ")));
            }
            for b in &report.builds {
                out.push_str(&format!(
                    "  {}:\n    elements: {}\n",
                    b.arch,
                    b.elements.join(" ")
                ));
                if !b.sources.is_empty() {
                    let pins: Vec<String> = b
                        .sources
                        .iter()
                        .map(|(n, c)| format!("{n}@{}", short(c, COMMIT_WIDTH)))
                        .collect();
                    out.push_str(&format!("    sources: {}\n", pins.join(" ")));
                }
                if !b.artifacts.is_empty() {
                    out.push_str(&format!("    artifacts: {}\n", b.artifacts.join(" ")));
                }
                out.push_str("    actions:\n");
                for act in &b.actions {
                    out.push_str(&format!(
                        "      {} {}\n",
                        act.id,
                        short(&act.key, KEY_WIDTH)
                    ));
                }
            }
            shell.out(&out);
        }
    }
    Ok(())
}

fn rdeps(ctx: &mut Context, a: RdepsArgs) -> Result<(), CliError> {
    let q = ops::query::RdepsQuery { of: a.what.clone() };
    let (shell, report) = with_session(ctx, vec![], |s| ops::query::rdeps(s, &q))?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => {
            let mut out = String::new();
            for d in &report.dependents {
                out.push_str(&format!("{}  {}\n", d.shown, d.actions.join(" ")));
            }
            shell.out(&out);
            if report.dependents.is_empty() {
                shell.status(&format!("nothing depends on {}", a.what));
            }
        }
    }
    Ok(())
}

fn graph_cmd(ctx: &mut Context, a: GraphArgs) -> Result<(), CliError> {
    let q = TargetsQuery {
        targets: a.targets,
        arch: a.arch,
    };
    let (shell, report) = with_session(ctx, vec![], |s| ops::query::graph(s, &q))?;
    match a.format {
        GraphFormat::Json => shell.out_json(&report),
        GraphFormat::Dot => {
            let mut out = String::from(
                "digraph ccb {\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n",
            );
            for act in &report.actions {
                out.push_str(&format!(
                    "  \"{}\" [label=\"{}\\n{}\"];\n",
                    act.id,
                    act.id,
                    short(&act.key, COMMIT_WIDTH)
                ));
                for d in &act.deps {
                    out.push_str(&format!("  \"{d}\" -> \"{}\";\n", act.id));
                }
            }
            out.push_str("}\n");
            shell.out(&out);
        }
    }
    Ok(())
}

fn hash(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let q = a.query();
    let (shell, report) = with_session(ctx, a.element_path, |s| ops::query::hash(s, &q))?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => {
            let mut out = String::new();
            for act in &report.actions {
                out.push_str(&format!("{} {}\n", act.id, act.key));
                let doc = crate::keydoc::KeyDoc {
                    fields: act.document.clone(),
                };
                for line in doc.render().lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            shell.out(&out);
        }
    }
    Ok(())
}

fn explain(ctx: &mut Context, a: OneTargetArgs) -> Result<(), CliError> {
    let q = a.query();
    let (shell, report) = with_session(ctx, a.element_path, |s| ops::query::explain(s, &q))?;
    super::render::plan(&shell, &report, a.format, true);
    Ok(())
}
