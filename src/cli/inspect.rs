//! `ccb inspect`: checks on images read directly from their files, local or remote.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, Context};
use crate::inspect::remote::{self, HttpRange, Opened};
use crate::inspect::{ReadAt, check, disk, drivers, fs::Filesystem, image};
use crate::label;
use crate::manifest::Model;
use crate::publish::layout;
use crate::ui::{self, OutputFormat};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InspectArgs {
    #[command(subcommand)]
    command: Option<InspectCommand>,
    /// Images: files (.qcow2, .raw), targets (built first when missing) or, with --site or
    /// --url, published names (default: every image live in the scope)
    images: Vec<String>,
    /// Inspect the images live on this site (`current` of --scope)
    #[arg(long, conflicts_with = "url")]
    site: Option<String>,
    /// Inspect the images live in a public container (its URL)
    #[arg(long)]
    url: Option<String>,
    /// The scope of --site or --url
    #[arg(long, default_value = "prod")]
    scope: String,
    /// Only these architectures (targets)
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// List a directory of an image (like virt-ls)
    Ls {
        /// An image file or a target
        image: String,
        /// A path inside the image
        path: String,
    },
    /// Print a file of an image (like virt-cat)
    Cat {
        /// An image file or a target
        image: String,
        /// A path inside the image
        path: String,
    },
}

/// An image to inspect: where its bytes are, and the build's dpkg manifest when local.
struct Subject {
    name: String,
    source: String,
    disk: Arc<dyn ReadAt>,
    dpkg_manifest: Option<Vec<u8>>,
    rpm_manifest: Option<Vec<u8>>,
    /// Bytes fetched over the network for it, read after the checks.
    fetched: Option<Arc<HttpRange>>,
}

fn inspect_err(e: impl miette::Diagnostic + Send + Sync + 'static) -> CliError {
    CliError::from_diag(e)
}

/// The package manifest (`dpkg`, `rpm`) next to an image laid out as `ccb build --out` writes it.
fn sibling_manifest(file: &Path, kind: &str) -> Option<Vec<u8>> {
    let name = file.file_stem()?.to_str()?;
    let dir = file.parent()?;
    std::fs::read(
        dir.join(format!("{name}.d"))
            .join("dib-manifests")
            .join(format!("dib-manifest-{kind}-{name}")),
    )
    .ok()
}

fn local_subjects(
    ctx: &mut Context,
    model: &Model,
    images: &[String],
    arch: &[String],
) -> Result<Vec<Subject>, CliError> {
    let (files, targets): (Vec<&String>, Vec<&String>) =
        images.iter().partition(|i| Path::new(i).is_file());
    let mut out = Vec::new();
    for f in files {
        let path = PathBuf::from(f);
        out.push(Subject {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| f.clone()),
            source: path.display().to_string(),
            disk: image::open_path(&path).map_err(inspect_err)?,
            dpkg_manifest: sibling_manifest(&path, "dpkg"),
            rpm_manifest: sibling_manifest(&path, "rpm"),
            fetched: None,
        });
    }
    if targets.is_empty() && !images.is_empty() {
        return Ok(out);
    }
    let targets: Vec<String> = targets.into_iter().cloned().collect();
    for (t, dir) in super::build::built_disks(ctx, model, &targets, arch, &[])? {
        let name = model.images[&t.image].published_name(t.arch);
        let file = ["qcow2", "raw"]
            .iter()
            .map(|f| dir.join(format!("{name}.{f}")))
            .find(|p| p.is_file())
            .ok_or_else(|| CliError::msg(format!("{}: no disk in the store", t.label())))?;
        out.push(Subject {
            source: format!("{} ({})", t.label(), file.display()),
            disk: image::open_path(&file).map_err(inspect_err)?,
            dpkg_manifest: sibling_manifest(&file, "dpkg"),
            rpm_manifest: sibling_manifest(&file, "rpm"),
            fetched: None,
            name,
        });
    }
    Ok(out)
}

/// Images live in a scope: `current`'s entries, filtered by the names asked for.
fn wanted_live(
    current: &std::collections::BTreeMap<String, String>,
    model: &Model,
    images: &[String],
) -> Result<Vec<(String, String)>, CliError> {
    let names: Vec<String> = images
        .iter()
        .map(
            |i| match label::resolve(model, std::slice::from_ref(i), None) {
                Ok(t) if t.len() == 1 => model.images[&t[0].image].published_name(t[0].arch),
                _ => i.clone(),
            },
        )
        .collect();
    let mut out = Vec::new();
    for (name, version) in current {
        if names.is_empty() || names.contains(name) {
            out.push((name.clone(), version.clone()));
        }
    }
    for n in &names {
        if !current.contains_key(n) {
            return Err(CliError::msg(format!("{n} is not live in this scope")));
        }
    }
    Ok(out)
}

fn site_subjects(
    model: &mut Model,
    site_key: &str,
    scope: &str,
    images: &[String],
) -> Result<Vec<Subject>, CliError> {
    let store = super::publish::open_site_by_name(model, site_key)?;
    let current = crate::publish::read_current(store.as_ref(), scope).map_err(inspect_err)?;
    let mut out = Vec::new();
    for (name, version) in wanted_live(&current, model, images)? {
        let v = layout::Version::parse(&version).ok_or_else(|| {
            CliError::msg(format!("current names {name} {version}: not a version"))
        })?;
        let object = ["qcow2", "raw"]
            .iter()
            .map(|f| layout::object(scope, &v, &format!("{name}.{f}")))
            .find(|o| store.head(o).ok().flatten().is_some())
            .ok_or_else(|| CliError::msg(format!("{name} {version}: no qcow2 or raw object")))?;
        let src = store.open_read(&object).map_err(inspect_err)?;
        out.push(Subject {
            source: format!("{} {object}", store.describe()),
            disk: image::open_source(src, &|b| {
                Err(crate::inspect::qcow2::Qcow2Error::Backing(format!(
                    "a published image has a backing file ({b})"
                )))
            })
            .map_err(inspect_err)?,
            dpkg_manifest: None,
            rpm_manifest: None,
            fetched: None,
            name,
        });
    }
    Ok(out)
}

fn url_subjects(
    model: &Model,
    base: &str,
    scope: &str,
    images: &[String],
    quiet: bool,
) -> Result<(Vec<Subject>, Vec<tempfile::NamedTempFile>), CliError> {
    let base = base.trim_end_matches('/');
    let no_headers = || -> remote::Headers { Box::new(|| Ok(vec![])) };
    let current_url = format!("{base}/{}", layout::current(scope));
    let tmp = remote::download(&current_url, &no_headers(), &mut |_, _| {}).map_err(inspect_err)?;
    let current: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(tmp.path()).unwrap_or_default())
            .map_err(|e| CliError::msg(format!("{current_url}: not a JSON map: {e}")))?;
    let mut out = Vec::new();
    let mut downloads = Vec::new();
    for (name, version) in wanted_live(&current, model, images)? {
        let mut opened = None;
        for f in ["qcow2", "raw"] {
            let url = format!("{base}/{scope}/versions/{version}/{name}.{f}");
            match HttpRange::open(&url, no_headers()) {
                Ok(o) => {
                    opened = Some((url, o));
                    break;
                }
                Err(_) => continue,
            }
        }
        let (url, opened) = opened.ok_or_else(|| {
            CliError::msg(format!(
                "{name} {version}: no qcow2 or raw object at {base}"
            ))
        })?;
        let (disk, fetched): (Arc<dyn ReadAt>, Option<Arc<HttpRange>>) = match opened {
            Opened::Ranges(r) => {
                let r = Arc::new(r);
                (r.clone(), Some(r))
            }
            Opened::WholeOnly { size } => {
                // No ranges: the whole image, once, with progress.
                let bar = (!quiet).then(|| {
                    let b = indicatif::ProgressBar::new(size.unwrap_or(0));
                    b.set_message(format!("downloading {name}"));
                    b
                });
                let file = remote::download(&url, &no_headers(), &mut |done, _| {
                    if let Some(b) = &bar {
                        b.set_position(done);
                    }
                })
                .map_err(inspect_err)?;
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                let f = file.reopen().map_err(|e| CliError::msg(e.to_string()))?;
                downloads.push(file);
                (Arc::new(f), None)
            }
        };
        out.push(Subject {
            source: url,
            disk: image::open_source(disk, &|b| {
                Err(crate::inspect::qcow2::Qcow2Error::Backing(format!(
                    "a published image has a backing file ({b})"
                )))
            })
            .map_err(inspect_err)?,
            dpkg_manifest: None,
            rpm_manifest: None,
            fetched,
            name,
        });
    }
    Ok((out, downloads))
}

fn open_fs(disk: Arc<dyn ReadAt>) -> Result<(String, Box<dyn Filesystem>), CliError> {
    let (location, fs) = disk::find_root(disk).map_err(inspect_err)?;
    Ok((format!("{location} ({})", fs.kind()), fs))
}

pub fn run(ctx: &mut Context, a: InspectArgs) -> Result<(), CliError> {
    let mut model = ctx.model()?;
    if let Some(cmd) = a.command {
        let (image, path) = match &cmd {
            InspectCommand::Ls { image, path } | InspectCommand::Cat { image, path } => {
                (image.clone(), path.clone())
            }
        };
        let mut subjects = local_subjects(ctx, &model, &[image], &[])?;
        let s = subjects.remove(0);
        let (_, fs) = open_fs(s.disk)?;
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        match cmd {
            InspectCommand::Ls { .. } => {
                let mut entries = fs.read_dir(&path).map_err(inspect_err)?;
                entries.sort_by(|x, y| x.name.cmp(&y.name));
                for e in entries {
                    let child = format!("{}/{}", path.trim_end_matches('/'), e.name);
                    match fs.symlink_metadata(&child) {
                        Ok(m) => {
                            let link = if m.kind == crate::inspect::fs::FileKind::Symlink {
                                fs.read_link(&child)
                                    .map(|t| format!(" -> {t}"))
                                    .unwrap_or_default()
                            } else {
                                String::new()
                            };
                            println!(
                                "{:06o} {:>5} {:>5} {:>12} {}{link}",
                                m.mode, m.uid, m.gid, m.size, e.name
                            );
                        }
                        Err(_) => println!("{:>32} {}", "?", e.name),
                    }
                }
            }
            InspectCommand::Cat { .. } => {
                let data = fs.read(&path).map_err(inspect_err)?;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&data);
            }
        }
        return Ok(());
    }

    let started = Instant::now();
    let mut downloads = Vec::new();
    let subjects = if let Some(site) = &a.site {
        site_subjects(&mut model, site, &a.scope, &a.images)?
    } else if let Some(url) = &a.url {
        let (s, d) = url_subjects(&model, url, &a.scope, &a.images, ctx.quiet)?;
        downloads = d;
        s
    } else {
        local_subjects(ctx, &model, &a.images, &a.arch)?
    };
    let mut report = Vec::new();
    let mut failures = 0;
    for s in subjects {
        let t0 = Instant::now();
        let mut results = Vec::new();
        let mut root_desc = String::new();
        match open_fs(s.disk.clone()) {
            Ok((desc, fs)) => {
                root_desc = desc;
                results.extend(check::executables(fs.as_ref(), &model.inspect, &s.name));
                results.extend(drivers::check(fs.as_ref(), &model.inspect.initramfs));
                if model.inspect.compare_dpkg_manifest {
                    let rpm = check::is_rpm_image(fs.as_ref());
                    let (kind, manifest) = if rpm {
                        ("rpm", &s.rpm_manifest)
                    } else {
                        ("dpkg", &s.dpkg_manifest)
                    };
                    match manifest {
                        Some(m) if rpm => results.push(check::rpm_manifest(fs.as_ref(), m)),
                        Some(m) => results.push(check::dpkg_manifest(fs.as_ref(), m)),
                        None => {
                            if a.format == OutputFormat::Text {
                                ui::status(
                                    ctx.quiet,
                                    &format!(
                                        "{}: no {kind} manifest of the build here: package check skipped",
                                        s.name
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            Err(e) => results.push(check::CheckResult {
                name: "root-filesystem".into(),
                passed: false,
                detail: e.message(),
            }),
        }
        let failed = results.iter().filter(|r| !r.passed).count();
        failures += failed;
        let fetched = s.fetched.as_ref().map(|f| f.fetched());
        if a.format == OutputFormat::Text {
            println!(
                "{} ({}){}",
                s.name,
                s.source,
                if root_desc.is_empty() {
                    String::new()
                } else {
                    format!(": root {root_desc}")
                }
            );
            for r in &results {
                println!(
                    "  {} {:<44} {}",
                    if r.passed { "ok  " } else { "FAIL" },
                    r.name,
                    r.detail
                );
            }
            println!(
                "  {}: {} checks, {failed} failed in {} ms{}",
                if failed == 0 { "PASS" } else { "FAIL" },
                results.len(),
                t0.elapsed().as_millis(),
                fetched
                    .map(|b| format!(", {} fetched", crate::ui::progress::human_bytes(b)))
                    .unwrap_or_default()
            );
        }
        report.push(json!({
            "name": s.name,
            "source": s.source,
            "root": root_desc,
            "passed": failed == 0,
            "checks": results,
            "fetched_bytes": fetched,
        }));
    }
    drop(downloads);
    if a.format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "version": 1,
                "passed": failures == 0,
                "images": report,
                "duration_ms": started.elapsed().as_millis() as u64,
            }))
            .unwrap_or_default()
        );
    } else {
        println!(
            "{}: {} image{}, {failures} failed check{} in {} ms",
            if failures == 0 { "PASS" } else { "FAIL" },
            report.len(),
            if report.len() == 1 { "" } else { "s" },
            if failures == 1 { "" } else { "s" },
            started.elapsed().as_millis()
        );
    }
    if failures > 0 {
        return Err(CliError::silent());
    }
    Ok(())
}
