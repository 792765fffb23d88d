//! `ccb lint`: dib-lint's rules over the project's elements (or the named ones).

use clap::Args;

use super::{CliError, Context};
use crate::element::{self, ForTarget, lint};
use crate::ui::{self, OutputFormat};

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Elements to lint (default: every element in the project's `elements/`)
    elements: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub fn run(ctx: &mut Context, a: LintArgs) -> Result<(), CliError> {
    let root = ctx.root_if_any();
    let path =
        element::project_search_path(None, root.as_deref(), &a.element_path, None, &mut |w| {
            ui::warn(w)
        })
        .map_err(|e| ForTarget::new(None, e))?;
    let mut picked = Vec::new();
    if a.elements.is_empty() {
        let own = root.as_ref().map(|r| r.join("elements"));
        for el in path.elements() {
            let in_project = own
                .as_ref()
                .is_some_and(|o| el.dir.starts_with(o.canonicalize().unwrap_or(o.clone())));
            if in_project || !a.element_path.is_empty() {
                picked.push(el.clone());
            }
        }
    } else {
        for name in &a.elements {
            let el = path.get(name).ok_or_else(|| {
                CliError::from_diag(element::ElementError::NotFound {
                    name: name.clone(),
                    wanted_by: None,
                    help: crate::diag::did_you_mean(name, &path.names()),
                })
            })?;
            picked.push(el.clone());
        }
    }
    let mut findings = Vec::new();
    for el in &picked {
        findings.extend(lint::lint_element(el)?);
    }
    match a.format {
        OutputFormat::Json => {
            ui::out_json(&serde_json::json!({"elements": picked.len(), "findings": findings}))
        }
        OutputFormat::Text => {
            let mut out = String::new();
            for f in &findings {
                let loc = match (f.file.as_str(), f.line) {
                    ("", _) => f.element.clone(),
                    (file, Some(l)) => format!("{}/{file}:{l}", f.element),
                    (file, None) => format!("{}/{file}", f.element),
                };
                out.push_str(&format!("{loc}: [{}] {}\n", f.rule, f.message));
            }
            ui::out(&out);
            ui::status(
                ctx.quiet,
                &format!(
                    "{} elements linted, {} findings",
                    picked.len(),
                    findings.len()
                ),
            );
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::silent())
    }
}
