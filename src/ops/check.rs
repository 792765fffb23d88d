//! `check`: evaluate and validate every manifest and element reference.

use std::time::Instant;

use serde::Serialize;

use super::CommandError;
use crate::manifest::Model;
use crate::store::Store;
use crate::ui::Shell;

/// What a check found: the model's size and the elements checked.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub images: usize,
    /// Images times their architectures.
    pub builds: usize,
    pub sites: usize,
    pub artifacts: usize,
    pub sources: usize,
    pub elements: usize,
    pub duration_ms: u64,
}

/// What to check the model with.
#[derive(Debug, Clone, Default)]
pub struct CheckRequest {
    /// Extra element directories, searched first.
    pub element_path: Vec<String>,
    /// Fetch no source.
    pub offline: bool,
}

/// Checks that every image's elements resolve (the model is already validated when loaded);
/// `started` is when the command began (the model's load counts).
pub fn check(
    model: &Model,
    store: &Store,
    req: &CheckRequest,
    shell: &Shell,
    started: Instant,
) -> Result<CheckReport, CommandError> {
    let summary =
        crate::element::check_model(model, &req.element_path, store, req.offline, &mut |w| {
            shell.warn(w)
        })?;
    Ok(CheckReport {
        images: model.images.len(),
        builds: model.images.values().map(|i| i.arch.len()).sum(),
        sites: model.sites.len(),
        artifacts: model.artifacts.len(),
        sources: model.sources.len(),
        elements: summary.elements,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
