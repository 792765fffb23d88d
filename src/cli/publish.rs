//! `ccb publish` and `ccb versions`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, Context};
use crate::label;
use crate::manifest::{Model, Site, SiteKind};
use crate::publish::layout::{self, Version};
use crate::publish::{
    self, FileToPublish, ImageFiles, ObjectStore, Outcome, PublishOptions, clouds, keystone,
    local::LocalSite, swift::SwiftSite,
};
use crate::ui::{self, OutputFormat};

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
    /// The version: `vN` (of today, UTC) or `YYYYMMDD-vN` (default: the next free one today)
    #[arg(long)]
    version: Option<String>,
    /// Say what would be uploaded, upload nothing
    #[arg(long)]
    dry_run: bool,
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
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    at: SiteScope,
    /// The image (published name or target)
    image: String,
    /// The version to make live (`YYYYMMDD-vN`)
    version: String,
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
    dry_run: bool,
}

fn site_error(e: impl miette::Diagnostic + Send + Sync + 'static) -> CliError {
    CliError::from_diag(e)
}

/// A project that declares no site publishes to `out/publish` (a local site), so `ccb publish`
/// works with no cloud at all.
fn with_default_site(model: &mut Model) {
    if model.sites.is_empty() {
        model.sites.insert(
            "local".into(),
            Site {
                name: "Local directory".into(),
                baremetal: true,
                public: false,
                formats: vec![crate::manifest::Format::Qcow2, crate::manifest::Format::Raw],
                kind: SiteKind::Local,
                cloud: None,
                container: "chameleon-supported-images".into(),
                region: None,
                path: Some("out/publish".into()),
            },
        );
    }
}

/// Finds a site by key or display name.
fn find_site<'m>(model: &'m Model, wanted: &str) -> Result<(&'m String, &'m Site), CliError> {
    model
        .sites
        .iter()
        .find(|(k, s)| *k == wanted || s.name == wanted)
        .ok_or_else(|| {
            let known: Vec<&str> = model.sites.keys().map(String::as_str).collect();
            CliError::usage(format!(
                "unknown site `{wanted}` (known: {})",
                known.join(", ")
            ))
        })
}

/// Opens a site's store: its directory, or its Swift container through clouds.yaml.
fn open_site(
    model: &Model,
    key: &str,
    site: &Site,
    swift: &SwiftArgs,
) -> Result<Box<dyn ObjectStore>, CliError> {
    match site.kind {
        SiteKind::Local => {
            let path = site.path.as_deref().unwrap_or("out/publish");
            let root = if Path::new(path).is_absolute() {
                PathBuf::from(path)
            } else {
                model.root.join(path)
            };
            Ok(Box::new(LocalSite::new(root).map_err(site_error)?))
        }
        SiteKind::Swift => {
            let segment_size = crate::build::layout::parse_bytes(&swift.segment_size)
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "--segment-size {}: expected bytes or a size such as 64MiB",
                        swift.segment_size
                    ))
                })?;
            let cloud = clouds::load(site.cloud.as_deref(), &clouds::Env::from_process())
                .map_err(site_error)?;
            let session = keystone::Session::new(cloud, site.region.clone()).map_err(site_error)?;
            let agent = session.agent();
            let name = format!("{} ({key})", site.name);
            Ok(Box::new(
                SwiftSite::connect(
                    &name,
                    &site.container,
                    Box::new(session),
                    agent,
                    segment_size,
                    swift.jobs,
                )
                .map_err(site_error)?,
            ))
        }
    }
}

/// Opens the Swift objects artifacts name (`swift = { site, container, object }`) through the
/// site's credentials; each artifact opens its own session, only when it must be fetched.
pub(super) fn swift_opener(
    model: &Model,
) -> impl Fn(&crate::manifest::SwiftObject) -> Result<Arc<dyn crate::inspect::ReadAt>, String>
+ Send
+ Sync
+ use<> {
    let model = model.clone();
    move |object| {
        let site = model
            .sites
            .get(&object.site)
            .ok_or_else(|| format!("site `{}` is not declared", object.site))?;
        if site.kind != SiteKind::Swift {
            return Err(format!("site `{}` is not a Swift site", object.site));
        }
        let mut site = site.clone();
        site.container = object.container.clone();
        let swift = SwiftArgs {
            segment_size: "1GiB".into(),
            jobs: 1,
        };
        let store = open_site(&model, &object.site, &site, &swift).map_err(|e| e.message())?;
        store.open_read(&object.object).map_err(|e| e.to_string())
    }
}

/// Opens a site by key or name with the default Swift settings (`ccb inspect --site`).
pub(super) fn open_site_by_name(
    model: &mut Model,
    wanted: &str,
) -> Result<Box<dyn ObjectStore>, CliError> {
    with_default_site(model);
    let (key, site) = find_site(model, wanted)?;
    let swift = SwiftArgs {
        segment_size: "1GiB".into(),
        jobs: 4,
    };
    open_site(model, key, site, &swift)
}

fn today() -> String {
    crate::build::utc_now().1[..8].to_string()
}

fn parse_version(v: &str) -> Result<Version, CliError> {
    let full = if v.starts_with('v') {
        format!("{}-{v}", today())
    } else {
        v.to_string()
    };
    Version::parse(&full).ok_or_else(|| {
        CliError::usage(format!(
            "version `{v}`: expected vN or YYYYMMDD-vN (e.g. v2, 20261127-v2)"
        ))
    })
}

/// The digests of SHA256SUMS: file name → sha256.
fn read_sums(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (sum, file) = l.split_once("  ")?;
            Some((file.trim_start_matches('*').to_string(), sum.to_string()))
        })
        .collect()
}

/// An image's files in a directory laid out like `ccb build --out`.
fn image_in(dir: &Path, name: &str, formats: &[&str]) -> Result<ImageFiles, CliError> {
    let sums = read_sums(&dir.join("SHA256SUMS"));
    let mut files = Vec::new();
    for f in formats {
        let file = format!("{name}.{f}");
        let path = dir.join(&file);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let sha256 = sums.get(&file).cloned().ok_or_else(|| {
            CliError::msg(format!(
                "{}: no digest for {file} in SHA256SUMS",
                dir.display()
            ))
        })?;
        files.push(FileToPublish {
            format: f.to_string(),
            path,
            size: meta.len(),
            sha256,
        });
    }
    if files.is_empty() {
        return Err(CliError::msg(format!(
            "{}: no {} file of {name}",
            dir.display(),
            formats.join(" or ")
        )));
    }
    let manifest_path = dir.join(format!("{name}.d/{name}_provenance.json"));
    let manifest = std::fs::read(&manifest_path).map_err(|e| {
        CliError::msg(format!(
            "{}: the provenance record is missing: {e}",
            manifest_path.display()
        ))
    })?;
    Ok(ImageFiles {
        name: name.to_string(),
        files,
        manifest,
    })
}

/// An image to publish and whether it may go to sites that are not bare metal.
struct Candidate {
    image: ImageFiles,
    baremetal_only: bool,
    /// The manifests' image, when the candidate is one (its secrets guard public sites).
    key: Option<String>,
}

fn candidates(
    ctx: &mut Context,
    a: &PublishArgs,
    model: &Model,
) -> Result<Vec<Candidate>, CliError> {
    const ALL: [&str; 2] = ["qcow2", "raw"];
    if let Some(dir) = &a.outputs {
        if a.targets.is_empty() {
            return Err(CliError::usage(
                "--outputs needs the published names of the images to publish",
            ));
        }
        return a
            .targets
            .iter()
            .map(|name| {
                // Images of the manifests keep their bare-metal flag; others count as bare metal only.
                let baremetal_only = model
                    .images
                    .values()
                    .flat_map(|i| i.arch.iter().map(move |arch| (i, *arch)))
                    .find(|(i, arch)| i.published_name(*arch) == *name)
                    .map(|(i, arch)| i.baremetal_only_for(arch))
                    .unwrap_or(true);
                Ok(Candidate {
                    image: image_in(dir, name, &ALL)?,
                    baremetal_only,
                    key: model
                        .images
                        .values()
                        .find(|i| i.arch.iter().any(|a| i.published_name(*a) == *name))
                        .map(|i| i.key.clone()),
                })
            })
            .collect();
    }
    // Build what is missing, through the graph.
    let mut out = Vec::new();
    for (t, dir) in super::build::built_disks(ctx, model, &a.targets, &a.arch, &a.element_path)? {
        let image = &model.images[&t.image];
        let formats: Vec<&str> = image.formats.iter().map(|f| f.as_str()).collect();
        out.push(Candidate {
            image: image_in(&dir, &image.published_name(t.arch), &formats)?,
            baremetal_only: image.baremetal_only_for(t.arch),
            key: Some(image.key.clone()),
        });
    }
    Ok(out)
}

pub fn run(ctx: &mut Context, a: PublishArgs) -> Result<(), CliError> {
    if !layout::valid_scope(&a.scope) {
        return Err(CliError::usage(format!(
            "--scope {}: a scope is one path segment of letters, digits, `-` and `_`",
            a.scope
        )));
    }
    let version = a.version.as_deref().map(parse_version).transpose()?;
    let mut model = ctx.model()?;
    with_default_site(&mut model);
    let model = model;
    let sites: Vec<(&String, &Site)> = if a.sites.is_empty() {
        model.sites.iter().collect()
    } else {
        a.sites
            .iter()
            .map(|s| find_site(&model, s))
            .collect::<Result<_, _>>()?
    };
    let candidates = candidates(ctx, &a, &model)?;
    let show_progress =
        !ctx.quiet && a.format == OutputFormat::Text && std::io::stderr().is_terminal();
    let mut report = Vec::new();
    let mut failed = 0;
    for (key, site) in sites {
        let wanted: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| site.baremetal || !c.baremetal_only)
            .collect();
        for c in candidates
            .iter()
            .filter(|c| !site.baremetal && c.baremetal_only)
        {
            ui::status(
                ctx.quiet,
                &format!(
                    "{}: skipped on {} (bare-metal only; the site is not)",
                    c.image.name, site.name
                ),
            );
        }
        if wanted.is_empty() {
            continue;
        }
        if let Some(refusal) = wanted.iter().find_map(|c| {
            let image = model.images.get(c.key.as_deref()?)?;
            crate::publish::secrets_refusal(image, site)
        }) {
            return Err(CliError::msg(refusal));
        }
        let store = match open_site(&model, key, site, &a.swift) {
            Ok(s) => s,
            Err(e) => {
                if a.format == OutputFormat::Json {
                    report.push(json!({"site": key, "error": e.message()}));
                    failed += 1;
                    continue;
                }
                return Err(e);
            }
        };
        let site_formats: Vec<&str> = site.formats.iter().map(|f| f.as_str()).collect();
        for c in wanted {
            let mut image = c.image.clone();
            image
                .files
                .retain(|f| site_formats.contains(&f.format.as_str()));
            if image.files.is_empty() {
                ui::status(
                    ctx.quiet,
                    &format!(
                        "{}: skipped on {} (none of its formats: {})",
                        image.name,
                        site.name,
                        site_formats.join(", ")
                    ),
                );
                continue;
            }
            let opts = PublishOptions {
                scope: &a.scope,
                version: version.clone(),
                today: today(),
                dry_run: a.dry_run,
                show_progress,
            };
            let started = std::time::Instant::now();
            match publish::publish_image(store.as_ref(), &image, &opts) {
                Ok(outcome) => {
                    let line = match &outcome {
                        Outcome::Published { version, bytes } => format!(
                            "{}: published to {} {}/versions/{version} ({}, {:.1} s)",
                            image.name,
                            site.name,
                            a.scope,
                            crate::ui::progress::human_bytes(*bytes),
                            started.elapsed().as_secs_f64()
                        ),
                        Outcome::AlreadyLive { version } => format!(
                            "{}: already live on {} as {}/versions/{version} (same content): nothing to do",
                            image.name, site.name, a.scope
                        ),
                        Outcome::DryRun { version, objects } => format!(
                            "{}: would publish to {} as {}/versions/{version}: {}",
                            image.name,
                            site.name,
                            a.scope,
                            objects.join(", ")
                        ),
                    };
                    if a.format == OutputFormat::Text {
                        println!("{line}");
                    }
                    let mut row = serde_json::to_value(&outcome).unwrap_or_default();
                    row["image"] = json!(image.name);
                    row["site"] = json!(key);
                    row["scope"] = json!(a.scope);
                    report.push(row);
                }
                Err(e) => {
                    failed += 1;
                    let msg = format!("publishing {} to {} failed", image.name, site.name);
                    report.push(json!({"image": image.name, "site": key, "scope": a.scope, "error": e.to_string()}));
                    if a.format == OutputFormat::Text {
                        eprintln!("{:?}", miette::Report::new(e).wrap_err(msg));
                    }
                }
            }
        }
    }
    if a.format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"version": 1, "results": report}))
                .unwrap_or_default()
        );
    }
    if failed > 0 {
        return Err(CliError::silent());
    }
    Ok(())
}

/// A published name from a name or a target label.
fn image_name(model: &Model, given: &str) -> String {
    match label::resolve(model, &[given.to_string()], None) {
        Ok(t) if t.len() == 1 => model.images[&t[0].image].published_name(t[0].arch),
        _ => given.to_string(),
    }
}

pub fn versions(ctx: &mut Context, cmd: VersionsCommand) -> Result<(), CliError> {
    let mut model = ctx.model()?;
    with_default_site(&mut model);
    let model = model;
    let swift = SwiftArgs {
        segment_size: "1GiB".into(),
        jobs: 4,
    };
    match cmd {
        VersionsCommand::List(a) => {
            let (key, site) = find_site(&model, &a.at.site)?;
            let store = open_site(&model, key, site, &swift)?;
            let versions =
                publish::list_versions(store.as_ref(), &a.at.scope).map_err(site_error)?;
            if a.format == OutputFormat::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"version": 1, "site": key, "scope": a.at.scope, "versions": versions}))
                        .unwrap_or_default()
                );
                return Ok(());
            }
            if versions.is_empty() {
                println!("no versions in {} {}", site.name, a.at.scope);
            }
            for v in versions {
                println!("{}", v.version);
                for i in v.images {
                    println!("  {}{}", i.name, if i.live { "  (live)" } else { "" });
                    for o in i.objects {
                        let file = o.name.rsplit('/').next().unwrap_or(&o.name).to_string();
                        println!(
                            "    {:<36} {:>10}  {}",
                            file,
                            crate::ui::progress::human_bytes(o.bytes),
                            o.sha256.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
            Ok(())
        }
        VersionsCommand::Promote(a) => {
            let (key, site) = find_site(&model, &a.site)?;
            for s in [&a.from, &a.to] {
                if !layout::valid_scope(s) {
                    return Err(CliError::usage(format!("scope `{s}` is not a valid scope")));
                }
            }
            let version = parse_version(&a.version)?;
            let name = image_name(&model, &a.image);
            let store = open_site(&model, key, site, &swift)?;
            publish::promote(store.as_ref(), &a.from, &a.to, &name, &version)
                .map_err(site_error)?;
            println!("{name}: {} {version} promoted to {} (live)", a.from, a.to);
            Ok(())
        }
        VersionsCommand::Rollback(a) => {
            let (key, site) = find_site(&model, &a.at.site)?;
            let version = parse_version(&a.version)?;
            let name = image_name(&model, &a.image);
            let store = open_site(&model, key, site, &swift)?;
            publish::rollback(store.as_ref(), &a.at.scope, &name, &version).map_err(site_error)?;
            println!("{name}: {} now live as {version}", a.at.scope);
            Ok(())
        }
        VersionsCommand::Prune(a) => {
            let (key, site) = find_site(&model, &a.at.site)?;
            let store = open_site(&model, key, site, &swift)?;
            let removed = publish::prune(store.as_ref(), &a.at.scope, a.keep, a.dry_run)
                .map_err(site_error)?;
            let verb = if a.dry_run { "would remove" } else { "removed" };
            for (v, image) in &removed {
                println!("{verb} {image} {v}");
            }
            if removed.is_empty() {
                println!(
                    "nothing to prune (keeping {} per image and the live ones)",
                    a.keep
                );
            }
            Ok(())
        }
    }
}
