//! `ccb build`: the plan (`--dry-run`); execution arrives with the executor.

use clap::Args;
use serde_json::json;

use super::{CliError, Context};
use crate::graph::{self, Action, Status};
use crate::label;
use crate::ui::{self, OutputFormat};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Targets (default: every image)
    targets: Vec<String>,
    /// Print the plan (every action, its key, cached or to run, and why) without building
    #[arg(long)]
    dry_run: bool,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: BuildArgs) -> Result<(), CliError> {
    let model = ctx.model()?;
    let arches = label::parse_arches(&a.arch)?;
    let targets = label::resolve(&model, &a.targets, arches.as_ref())?;
    let graph = super::query::load_graph(ctx, &model, &targets, &a.element_path, false)?;
    let store = ctx.store()?;
    let plan = graph::plan(&graph, &store);
    render_plan(&plan, a.format, ctx.verbose > 0);
    if a.dry_run {
        return Ok(());
    }
    Err(CliError::msg(
        "executing the plan is not implemented yet (the executor is issue [3/8]); the plan above is what would run",
    ))
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
