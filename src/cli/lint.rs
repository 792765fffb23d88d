//! `ccb lint`: dib-lint's rules over the project's elements (or the named ones).

use clap::Args;

use super::{CliError, Context};
use crate::ops;
use crate::ui::OutputFormat;

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
    let shell = ctx.shell();
    let root = ctx.root_if_any();
    let req = ops::lint::LintRequest {
        elements: a.elements,
        element_path: a.element_path,
    };
    let report = ops::lint::lint(root.as_deref(), &req, &mut |w| shell.warn(w))?;
    match a.format {
        OutputFormat::Json => shell.out_json(&report),
        OutputFormat::Text => {
            let mut out = String::new();
            for f in &report.findings {
                let loc = match (f.file.as_str(), f.line) {
                    ("", _) => f.element.clone(),
                    (file, Some(l)) => format!("{}/{file}:{l}", f.element),
                    (file, None) => format!("{}/{file}", f.element),
                };
                out.push_str(&format!("{loc}: [{}] {}\n", f.rule, f.message));
            }
            shell.out(&out);
            shell.status(&format!(
                "{} elements linted, {} findings",
                report.elements,
                report.findings.len()
            ));
        }
    }
    if report.findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::silent())
    }
}
