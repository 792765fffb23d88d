//! Renderings more than one command shares.

use serde_json::json;

use crate::graph::{Action, Status};
use crate::ui::{self, OutputFormat};

/// A plan: every action, its key, cached or to run and why (`build --dry-run`, `query plan`).
pub fn plan(plan: &[(&Action, Status)], format: OutputFormat, all_reasons: bool) {
    match format {
        OutputFormat::Json => {
            let rows: Vec<_> = plan
                .iter()
                .map(|(a, s)| {
                    let mut row = json!({"id": a.id, "kind": a.kind, "key": a.key, "deps": a.deps, "status": s});
                    if a.secret {
                        row["not_shared"] = json!(crate::graph::NOT_SHARED);
                    }
                    row
                })
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
                let secret = if a.secret {
                    format!(" ({})", crate::graph::NOT_SHARED)
                } else {
                    String::new()
                };
                match s {
                    Status::Cached { remote } => out.push_str(&format!(
                        "{:width$}  {}  cached{}{secret}\n",
                        a.id,
                        &a.key[..16],
                        if *remote { " (remote)" } else { "" }
                    )),
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
                        out.push_str(&secret);
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
