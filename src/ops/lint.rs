//! `lint`: dib-lint's rules over the project's elements (or the named ones).

use std::path::Path;

use serde::Serialize;

use super::CommandError;
use crate::element::{self, ElementDir, ForTarget, lint::Finding};

/// Which elements to lint.
#[derive(Debug, Clone, Default)]
pub struct LintRequest {
    /// By name (default: every element of the project's `elements/`, or of `element_path`).
    pub elements: Vec<String>,
    /// Extra element directories, searched first.
    pub element_path: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LintReport {
    /// Elements linted.
    pub elements: usize,
    pub findings: Vec<Finding>,
}

/// Lints the elements asked for; `root` is the project's, when there is one.
pub fn lint(
    root: Option<&Path>,
    req: &LintRequest,
    warn: &mut dyn FnMut(&str),
) -> Result<LintReport, CommandError> {
    let path = element::project_search_path(None, root, &req.element_path, None, warn)
        .map_err(|e| ForTarget::new(None, e))?;
    let picked: Vec<&ElementDir> = if req.elements.is_empty() {
        let own = root.map(|r| r.join("elements"));
        let own = own.map(|o| o.canonicalize().unwrap_or(o));
        path.elements()
            .filter(|el| {
                own.as_ref().is_some_and(|o| el.dir.starts_with(o)) || !req.element_path.is_empty()
            })
            .collect()
    } else {
        req.elements
            .iter()
            .map(|name| {
                path.get(name).ok_or_else(|| {
                    CommandError::from_diag(element::ElementError::NotFound {
                        name: name.clone(),
                        wanted_by: None,
                        help: crate::diag::did_you_mean(name, &path.names()),
                    })
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut findings = Vec::new();
    for el in &picked {
        findings.extend(element::lint::lint_element(el)?);
    }
    Ok(LintReport {
        elements: picked.len(),
        findings,
    })
}
