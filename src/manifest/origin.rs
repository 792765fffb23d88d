//! Where the project's files come from: the repository and commit an image's provenance
//! records (`build-repo`, `build-repo-commit`). The disk writes them into the image, so the
//! disk's key covers them: two commits give two disks (layers stay shared across commits).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Set by a remote builder for the build it runs on a bundle (which is no git checkout): the
/// client's origin, carried by the bundle, as JSON.
pub const ENV: &str = "CCB_BUILD_ORIGIN";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The project's declared `build_repo`, else its git remote (never a credential it carries).
    pub repo: String,
    /// git HEAD, with `-dirty` when tracked files differ from it; empty outside a checkout.
    pub commit: String,
}

impl Origin {
    /// The origin of the project at `root`: [`ENV`] when a builder set it, else git's answer.
    pub fn of(root: &Path, declared_repo: Option<&str>) -> Self {
        if let Some(o) = std::env::var(ENV)
            .ok()
            .and_then(|v| serde_json::from_str::<Origin>(&v).ok())
        {
            return o;
        }
        let git = |args: &[&str]| {
            crate::process::Process::new("git")
                .arg("-C")
                .arg(root)
                .args(args)
                .read()
                .unwrap_or_default()
        };
        let mut commit = git(&["rev-parse", "HEAD"]);
        if !commit.is_empty() && !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty()
        {
            commit.push_str("-dirty");
        }
        let repo = declared_repo
            .map(str::to_string)
            .or_else(|| crate::contract::public_repo_url(&git(&["remote", "get-url", "origin"])))
            .unwrap_or_default();
        Self { repo, commit }
    }
}
