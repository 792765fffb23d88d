//! `ccb publish` and `ccb versions`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::ops::build::BuildReport;
use crate::ops::publish::{PublishObserver, PublishRequest};
use crate::ops::{self, SessionOptions};
use crate::publish::sites::SwiftSettings;
use crate::ui::{OutputFormat, Shell};

/// How to reach Swift sites.
#[derive(Debug, Args, Clone)]
pub struct SwiftArgs {
    /// Files above this size are uploaded as Static Large Objects in segments of this size
    /// (bytes, or with a unit: 64MiB, 1GiB)
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    segment_size: String,
    /// Segments uploaded at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    jobs: usize,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Images to publish (default: every image); built first when missing
    targets: Vec<String>,
    /// The scope: `prod`, `staging`, `dev`, …
    #[arg(long)]
    scope: String,
    /// Only these sites (keys of manifests/sites.ncl or their names; repeatable)
    #[arg(long = "site", value_name = "SITE")]
    sites: Vec<String>,
    /// The version: `vN` (of today, UTC) or `YYYYMMDD-vN`, with upstream's optional suffix
    /// (`v1-arm`, `20250422-v1-arm`) (default: the next free one today)
    #[arg(long)]
    version: Option<String>,
    /// Say what would be uploaded, upload nothing
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Publish to a Swift site declared public even when its container's read ACL does not
    /// let the sites read and list it anonymously (`.r:*,.rlistings`)
    #[arg(long)]
    no_public_check: bool,
    /// Publish images already built elsewhere: a directory as `ccb build --out` writes it
    /// (`<Name>.qcow2|raw`, `<Name>.d/<Name>_provenance.json`, `SHA256SUMS`); the targets are
    /// then published names found there
    #[arg(long, value_name = "DIR")]
    outputs: Option<PathBuf>,
    /// Only these architectures (comma-separated)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Extra element directories, searched first (colon-separated)
    #[arg(long, value_name = "A:B")]
    element_path: Vec<String>,
    #[command(flatten)]
    swift: SwiftArgs,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// Every version of a scope with its images, sizes and digests
    List(VersionsListArgs),
    /// Copy a version of an image to another scope (server-side) and make it live there
    Promote(PromoteArgs),
    /// Make an earlier version of an image live again
    Rollback(RollbackArgs),
    /// Remove old versions, keeping the newest N of each image and always the live one
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct SiteScope {
    /// The site (a key of manifests/sites.ncl or its name)
    #[arg(long)]
    site: String,
    /// The scope
    #[arg(long)]
    scope: String,
}

#[derive(Debug, Args)]
pub struct VersionsListArgs {
    #[command(flatten)]
    at: SiteScope,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The site
    #[arg(long)]
    site: String,
    /// The scope the version is in
    #[arg(long)]
    from: String,
    /// The scope to make it live in
    #[arg(long)]
    to: String,
    /// The image (published name or target)
    image: String,
    /// The version (`YYYYMMDD-vN`)
    version: String,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    at: SiteScope,
    /// The image (published name or target)
    image: String,
    /// The version to make live (`YYYYMMDD-vN`)
    version: String,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    at: SiteScope,
    /// Versions of each image to keep (the live one is always kept)
    #[arg(long)]
    keep: usize,
    /// Say what would be removed, remove nothing
    #[arg(long)]
    pub(super) dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

impl From<&SwiftArgs> for SwiftSettings {
    fn from(a: &SwiftArgs) -> Self {
        SwiftSettings {
            segment_size: a.segment_size.clone(),
            jobs: a.jobs,
        }
    }
}

/// Tells the publishing as it goes, in text.
struct Text {
    shell: Shell,
    text: bool,
}

impl PublishObserver for Text {
    fn built(&mut self, report: &BuildReport) {
        self.shell.status(&report.summary_line());
    }

    fn line(&mut self, text: &str) {
        if self.text {
            self.shell.out(&format!("{text}\n"));
        }
    }

    fn failed(&mut self, error: miette::Report) {
        if self.text {
            self.shell.error_report(&error);
        }
    }
}

pub fn run(ctx: &mut Context, a: PublishArgs) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.model()?;
    let store = ctx.store()?;
    let text = a.format == OutputFormat::Text;
    let opts = SessionOptions {
        element_path: a.element_path.clone(),
        env: vec![],
        offline: ctx.offline,
        remote: ctx.remote.clone(),
    };
    let req = PublishRequest {
        swift: SwiftSettings::from(&a.swift),
        targets: a.targets,
        arch: a.arch,
        scope: a.scope,
        sites: a.sites,
        version: a.version,
        dry_run: a.dry_run,
        no_public_check: a.no_public_check,
        outputs: a.outputs,
        show_progress: !ctx.quiet && text && crate::ui::progress::live_terminal(),
        stop_on_site_error: text,
    };
    let mut observer = Text { shell, text };
    let report = ops::publish::publish(model, &store, &opts, &req, &shell, &mut observer)?;
    if !text {
        shell.out_json(&report);
    }
    if report.bug {
        return Err(CliError::silent_internal());
    }
    if report.failed > 0 {
        return Err(CliError::silent());
    }
    Ok(())
}

pub fn versions(ctx: &mut Context, cmd: VersionsCommand) -> Result<(), CliError> {
    let shell = ctx.shell();
    let model = ctx.model()?;
    let at = |a: SiteScope| ops::versions::At {
        site: a.site,
        scope: a.scope,
    };
    match cmd {
        VersionsCommand::List(a) => {
            let list = ops::versions::list(model, &at(a.at))?;
            match a.format {
                OutputFormat::Json => shell.out_json(&list),
                OutputFormat::Text => shell.out(&render_versions(&list)),
            }
        }
        VersionsCommand::Promote(a) => {
            let req = ops::versions::PromoteRequest {
                site: a.site,
                from: a.from,
                to: a.to,
                image: a.image,
                version: a.version,
            };
            let live = ops::versions::promote(model, &req)?;
            match a.format {
                OutputFormat::Json => shell.out_json(&live),
                OutputFormat::Text => shell.out(&format!(
                    "{}: {} {} promoted to {} (live)\n",
                    live.image, req.from, live.version, live.scope
                )),
            }
        }
        VersionsCommand::Rollback(a) => {
            let req = ops::versions::RollbackRequest {
                at: at(a.at),
                image: a.image,
                version: a.version,
            };
            let live = ops::versions::rollback(model, &req)?;
            match a.format {
                OutputFormat::Json => shell.out_json(&live),
                OutputFormat::Text => shell.out(&format!(
                    "{}: {} now live as {}\n",
                    live.image, live.scope, live.version
                )),
            }
        }
        VersionsCommand::Prune(a) => {
            let req = ops::versions::PruneRequest {
                at: at(a.at),
                keep: a.keep,
                dry_run: a.dry_run,
            };
            let pruned = ops::versions::prune(model, &req)?;
            match a.format {
                OutputFormat::Json => shell.out_json(&pruned),
                OutputFormat::Text => shell.out(&render_pruned(&pruned)),
            }
        }
    }
    Ok(())
}

fn render_pruned(pruned: &ops::versions::Pruned) -> String {
    let verb = if pruned.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = String::new();
    for (v, image) in &pruned.removed {
        out.push_str(&format!("{verb} {image} {v}\n"));
    }
    if pruned.removed.is_empty() {
        out.push_str(&format!(
            "nothing to prune (keeping {} per image and the live ones)\n",
            pruned.keep
        ));
    }
    out
}

fn render_versions(list: &ops::versions::VersionsList) -> String {
    let mut out = String::new();
    if list.versions.is_empty() {
        out.push_str(&format!(
            "no versions in {} {}\n",
            list.site_name, list.scope
        ));
    }
    for v in &list.versions {
        out.push_str(&format!("{}\n", v.version));
        for i in &v.images {
            out.push_str(&format!(
                "  {}{}\n",
                i.name,
                if i.live { "  (live)" } else { "" }
            ));
            for o in &i.objects {
                let file = o.name.rsplit('/').next().unwrap_or(&o.name);
                out.push_str(&format!(
                    "    {:<36} {:>10}  {}\n",
                    file,
                    crate::ui::progress::human_bytes(o.bytes),
                    o.sha256.as_deref().unwrap_or("-")
                ));
            }
        }
    }
    out
}
