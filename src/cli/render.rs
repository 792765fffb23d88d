//! Renderings more than one command shares.

use crate::graph::Status;
use crate::ops::build::PlanReport;
use crate::ui::{KEY_WIDTH, OutputFormat, Shell, short};

/// A plan: every action, its key, cached or to run and why (`build --dry-run`,
/// `query explain`).
pub fn plan(shell: &Shell, plan: &PlanReport, format: OutputFormat, all_reasons: bool) {
    match format {
        OutputFormat::Json => shell.out_json(plan),
        OutputFormat::Text => shell.out(&plan_text(plan, all_reasons)),
    }
}

fn plan_text(plan: &PlanReport, all_reasons: bool) -> String {
    let width = plan.actions.iter().map(|a| a.id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for a in &plan.actions {
        let key = short(&a.key, KEY_WIDTH);
        let secret = a
            .not_shared
            .map(|why| format!(" ({why})"))
            .unwrap_or_default();
        match &a.status {
            Status::Cached { remote } => out.push_str(&format!(
                "{:width$}  {key}  cached{}{secret}\n",
                a.id,
                if *remote { " (remote)" } else { "" }
            )),
            Status::ToRun { reasons } => {
                let shown = if all_reasons {
                    reasons.len()
                } else {
                    reasons.len().min(3)
                };
                out.push_str(&format!(
                    "{:width$}  {key}  to run: {}",
                    a.id,
                    reasons[..shown].join("; ")
                ));
                if reasons.len() > shown {
                    out.push_str(&format!("; and {} more (-v)", reasons.len() - shown));
                }
                out.push_str(&secret);
                out.push('\n');
            }
        }
    }
    let s = &plan.summary;
    out.push_str(&format!(
        "{} actions: {} cached, {} to run\n",
        s.total, s.cached, s.to_run
    ));
    out
}
