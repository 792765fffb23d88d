//! `inspect`: checks on images read directly from their files (no root, no mounts), local,
//! on a site or behind a public URL.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::build::{BuildReport, BuildRequest};
use super::{CommandError, Session, SessionOptions};
use crate::inspect::remote::{self, HttpRange, Opened};
use crate::inspect::{ReadAt, check, disk, drivers, fs::Filesystem, image};
use crate::label;
use crate::manifest::Model;
use crate::publish::layout;
use crate::store::Store;
use crate::ui::Shell;
use crate::ui::progress::Transfer;

/// An image to inspect: where its bytes are, and the build's dpkg manifest when local.
struct Subject {
    name: String,
    source: String,
    disk: Arc<dyn ReadAt>,
    dpkg_manifest: Option<Vec<u8>>,
    rpm_manifest: Option<Vec<u8>>,
    /// The image's SBOM (`<Name>.spdx.json`), next to it or in its version.
    sbom: Option<Vec<u8>>,
    /// A published image: what its signed checksums are checked against.
    published: Option<Published>,
    /// The network source under it, whose fetched bytes are read after the checks.
    fetched: Option<Arc<dyn ReadAt>>,
}

/// A published image's files in its version: the disk object inspected (read whole to check
/// its digest) and the small files, fetched once (`None`: absent).
struct Published {
    disk_file: String,
    disk: Arc<dyn ReadAt>,
    small: std::collections::BTreeMap<String, Option<Vec<u8>>>,
}

/// The small files of an image's version that the checks read.
fn small_files(name: &str) -> [String; 4] {
    use crate::publish::signing;
    [
        layout::manifest_file(name),
        crate::sbom::file_name(name),
        signing::sums_file(name),
        signing::signature_file(name),
    ]
}

fn inspect_err(e: impl miette::Diagnostic + Send + Sync + 'static) -> CommandError {
    CommandError::from_diag(e)
}

/// Where the images to inspect are.
#[derive(Debug, Clone)]
pub enum Images {
    /// Files (`.qcow2`, `.raw`) or targets (built first when missing).
    Local {
        images: Vec<String>,
        arch: Vec<String>,
    },
    /// The images live on a site in a scope.
    Site {
        site: String,
        scope: String,
        images: Vec<String>,
    },
    /// The images live in a public container (its URL) in a scope.
    Url {
        base: String,
        scope: String,
        images: Vec<String>,
    },
}

/// What the checks found in one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub name: String,
    pub source: String,
    /// Where the root file system is, and its kind.
    pub root: String,
    pub passed: bool,
    pub checks: Vec<check::CheckResult>,
    pub fetched_bytes: Option<u64>,
    #[serde(skip)]
    pub duration_ms: u64,
    /// A check skipped for want of the build's package manifest.
    #[serde(skip)]
    pub skipped: Option<String>,
}

/// Every image.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub version: u32,
    pub passed: bool,
    pub images: Vec<ImageReport>,
    pub duration_ms: u64,
    /// The build of the disks inspected (none for files, sites and URLs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildReport>,
}

impl InspectReport {
    pub fn failed_checks(&self) -> usize {
        self.images
            .iter()
            .map(|i| i.checks.iter().filter(|c| !c.passed).count())
            .sum()
    }
}

/// The SBOM next to an image laid out as `ccb build --out` writes it.
fn sibling_sbom(file: &Path) -> Option<Vec<u8>> {
    let name = file.file_stem()?.to_str()?;
    std::fs::read(file.parent()?.join(crate::sbom::file_name(name))).ok()
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
    model: &Model,
    store: &Store,
    opts: &SessionOptions,
    images: &[String],
    arch: &[String],
    shell: &Shell,
) -> Result<(Vec<Subject>, Option<BuildReport>), CommandError> {
    let (files, targets): (Vec<&String>, Vec<&String>) =
        images.iter().partition(|i| names_a_file(i));
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
            sbom: sibling_sbom(&path),
            published: None,
            fetched: None,
        });
    }
    if targets.is_empty() && !images.is_empty() {
        return Ok((out, None));
    }
    let targets: Vec<String> = targets.into_iter().cloned().collect();
    // Build what is missing, through the graph; the disks come from the build report.
    let mut session = Session::open(model.clone(), store, opts, shell)?;
    let planned = session.plan_to_build(&targets, arch, shell)?;
    let build = super::build::build(
        &session,
        &planned,
        &BuildRequest::disks(&targets, arch),
        shell,
    )?;
    shell.status(&build.summary_line());
    build.ok()?;
    for d in &build.disks {
        let (t, dir) = (&d.target, &d.dir);
        let name = model.images[&t.image].published_name(t.arch);
        let file = ["qcow2", "raw"]
            .iter()
            .map(|f| dir.join(format!("{name}.{f}")))
            .find(|p| p.is_file())
            .ok_or_else(|| CommandError::msg(format!("{}: no disk in the store", t.label())))?;
        out.push(Subject {
            source: format!("{} ({})", t.label(), file.display()),
            disk: image::open_path(&file).map_err(inspect_err)?,
            dpkg_manifest: sibling_manifest(&file, "dpkg"),
            rpm_manifest: sibling_manifest(&file, "rpm"),
            sbom: sibling_sbom(&file),
            published: None,
            fetched: None,
            name,
        });
    }
    Ok((out, Some(build)))
}

/// Images live in a scope: `current`'s entries, filtered by the names asked for.
fn wanted_live(
    current: &std::collections::BTreeMap<String, String>,
    model: &Model,
    images: &[String],
) -> Result<Vec<(String, String)>, CommandError> {
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
            return Err(CommandError::msg(format!("{n} is not live in this scope")));
        }
    }
    Ok(out)
}

fn site_subjects(
    model: &mut Model,
    site_key: &str,
    scope: &str,
    images: &[String],
) -> Result<Vec<Subject>, CommandError> {
    let store = crate::publish::sites::open_site_by_name(model, site_key)
        .map_err(super::publish::site_error)?;
    let current = crate::publish::read_current(store.as_ref(), scope).map_err(inspect_err)?;
    let mut out = Vec::new();
    for (name, version) in wanted_live(&current, model, images)? {
        let v = layout::Version::parse(&version).ok_or_else(|| {
            CommandError::msg(format!("current names {name} {version}: not a version"))
        })?;
        let object = ["qcow2", "raw"]
            .iter()
            .map(|f| layout::object(scope, &v, &format!("{name}.{f}")))
            .find(|o| store.head(o).ok().flatten().is_some())
            .ok_or_else(|| {
                CommandError::msg(format!("{name} {version}: no qcow2 or raw object"))
            })?;
        let src = store.open_read(&object).map_err(inspect_err)?;
        let small: std::collections::BTreeMap<String, Option<Vec<u8>>> = small_files(&name)
            .into_iter()
            .map(|f| {
                let got = store.get(&layout::object(scope, &v, &f)).ok().flatten();
                (f, got)
            })
            .collect();
        out.push(Subject {
            sbom: small.get(&crate::sbom::file_name(&name)).cloned().flatten(),
            published: Some(Published {
                disk_file: object.rsplit('/').next().unwrap_or_default().to_string(),
                disk: src.clone(),
                small,
            }),
            source: format!("{} {object}", store.describe()),
            // A Swift site's object is read by ranges: its bytes count (a local file's none).
            fetched: src.fetched_bytes().is_some().then(|| src.clone()),
            disk: image::open_source(src, &|b| {
                Err(crate::inspect::qcow2::Qcow2Error::Backing(format!(
                    "a published image has a backing file ({b})"
                )))
            })
            .map_err(inspect_err)?,
            dpkg_manifest: None,
            rpm_manifest: None,
            name,
        });
    }
    Ok(out)
}

/// The disk of `name` live in `scope` on a site (its object name, and its bytes read by
/// range): what `ccb verify --site` compares a rebuild with.
pub fn published_disk(
    session: &Session,
    site: &str,
    scope: &str,
    name: &str,
) -> Result<(String, Arc<dyn ReadAt>), CommandError> {
    let mut model = session.model.clone();
    let subject = site_subjects(&mut model, site, scope, &[name.to_string()])?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| CommandError::msg(format!("{name} is not live in {scope} on {site}")))?;
    Ok((subject.source, subject.disk))
}

fn url_subjects(
    model: &Model,
    base: &str,
    scope: &str,
    images: &[String],
    quiet: bool,
) -> Result<(Vec<Subject>, Vec<tempfile::NamedTempFile>), CommandError> {
    let base = base.trim_end_matches('/');
    let no_headers = || -> remote::Headers { Box::new(|| Ok(vec![])) };
    let current_url = format!("{base}/{}", layout::current(scope));
    let tmp = remote::download(&current_url, &no_headers(), &mut |_, _| {}).map_err(inspect_err)?;
    let current: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(tmp.path()).unwrap_or_default()).map_err(|e| {
            CommandError::msg(format!(
                "{}: not a JSON map: {e}",
                crate::redact::url(&current_url)
            ))
        })?;
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
            CommandError::msg(format!(
                "{name} {version}: no qcow2 or raw object at {}",
                crate::redact::url(base)
            ))
        })?;
        let small: std::collections::BTreeMap<String, Option<Vec<u8>>> = small_files(&name)
            .into_iter()
            .map(|f| {
                let got = remote::download(
                    &format!("{base}/{scope}/versions/{version}/{f}"),
                    &no_headers(),
                    &mut |_, _| {},
                )
                .ok()
                .and_then(|t| std::fs::read(t.path()).ok());
                (f, got)
            })
            .collect();
        let (disk, fetched): (Arc<dyn ReadAt>, Option<Arc<dyn ReadAt>>) = match opened {
            Opened::Ranges(r) => {
                let r: Arc<dyn ReadAt> = Arc::new(r);
                (r.clone(), Some(r))
            }
            Opened::WholeOnly { size } => {
                // No ranges: the whole image, once, with progress.
                let bar = Transfer::new(&format!("downloading {name}"), size.unwrap_or(0), !quiet);
                let file = remote::download(&url, &no_headers(), &mut |done, _| bar.set(done))
                    .map_err(inspect_err)?;
                bar.finish();
                let f = file.reopen().map_err(|e| {
                    CommandError::from_diag(crate::fsutil::FsError::new("reopen", file.path(), e))
                })?;
                downloads.push(file);
                (Arc::new(f), None)
            }
        };
        out.push(Subject {
            sbom: small.get(&crate::sbom::file_name(&name)).cloned().flatten(),
            published: Some(Published {
                disk_file: url.rsplit('/').next().unwrap_or_default().to_string(),
                disk: disk.clone(),
                small,
            }),
            source: crate::redact::url(&url),
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

/// With a public key configured: the signature of the image's `<Name>.SHA256SUMS`, then each
/// file it lists that the inspection reads (the disk object inspected, read whole, and the
/// small files) against it. Without a key: nothing (the checksums alone prove nothing).
fn signed_checksums(model: &Model, name: &str, p: &Published) -> Vec<check::CheckResult> {
    use crate::publish::signing;
    let result = |name: &str, passed: bool, detail: String| check::CheckResult {
        name: name.to_string(),
        passed,
        detail,
    };
    let settings = model.project.signing.clone().unwrap_or_default();
    let public = match signing::public_key(&settings) {
        Ok(Some(k)) => k,
        Ok(None) => return vec![],
        Err(e) => return vec![result("signature", false, e.to_string())],
    };
    let get = |f: &str| p.small.get(f).cloned().flatten();
    let (sums_name, sig_name) = (signing::sums_file(name), signing::signature_file(name));
    let Some(sums) = get(&sums_name) else {
        return vec![result(
            "signature",
            false,
            format!("{sums_name} is not published"),
        )];
    };
    let Some(sig) = get(&sig_name) else {
        return vec![result(
            "signature",
            false,
            format!("{sig_name} is not published"),
        )];
    };
    if let Err(e) = signing::verify(&public, &sums, &sig) {
        return vec![result("signature", false, format!("{sig_name}: {e}"))];
    }
    let mut out = vec![result(
        "signature",
        true,
        format!(
            "{sums_name} signed by the configured key ({})",
            public.fingerprint(Default::default())
        ),
    )];
    let listed = signing::parse_sums(&String::from_utf8_lossy(&sums));
    let mut bad = Vec::new();
    let mut checked = Vec::new();
    for (file, want) in &listed {
        let actual = if *file == p.disk_file {
            p.disk.sha256().map_err(|e| e.to_string())
        } else if let Some(bytes) = p.small.get(file) {
            bytes
                .as_deref()
                .map(crate::fetch::hash::sha256_bytes)
                .ok_or_else(|| "not published".to_string())
        } else {
            continue; // another format of the image, not read by this inspection
        };
        match actual {
            Ok(got) if got == *want => checked.push(file.clone()),
            Ok(got) => bad.push(format!("{file}: sha256 {got}, signed {want}")),
            Err(e) => bad.push(format!("{file}: {e}")),
        }
    }
    if !listed.contains_key(&p.disk_file) {
        bad.push(format!("{} is not in {sums_name}", p.disk_file));
    }
    out.push(if bad.is_empty() {
        result(
            "checksums",
            true,
            format!("as signed: {}", checked.join(", ")),
        )
    } else {
        result("checksums", false, bad.join("; "))
    });
    out
}

pub fn open_fs(disk: Arc<dyn ReadAt>) -> Result<(String, Box<dyn Filesystem>), CommandError> {
    let (location, fs) = disk::find_root(disk).map_err(inspect_err)?;
    Ok((format!("{location} ({})", fs.kind()), fs))
}

/// Whether an argument names an image file rather than a target: anything at that path,
/// so that a FIFO or a device is refused as a file (not mistaken for a target's name).
pub fn names_a_file(arg: &str) -> bool {
    Path::new(arg).symlink_metadata().is_ok()
}

/// The file system of an image file, for `ccb inspect ls|cat` outside any project.
pub fn open_file(path: &Path) -> Result<Box<dyn Filesystem>, CommandError> {
    let (_, fs) = open_fs(image::open_path(path).map_err(inspect_err)?)?;
    Ok(fs)
}

/// The file system of one image (a file or a target, built first when missing), for
/// `ccb inspect ls|cat`.
pub fn open_one(
    model: &Model,
    store: &Store,
    opts: &SessionOptions,
    image: &str,
    shell: &Shell,
) -> Result<Box<dyn Filesystem>, CommandError> {
    let (mut subjects, _) = local_subjects(model, store, opts, &[image.to_string()], &[], shell)?;
    if subjects.is_empty() {
        return Err(CommandError::msg(format!("{image}: no such image")));
    }
    let s = subjects.remove(0);
    let (_, fs) = open_fs(s.disk)?;
    Ok(fs)
}

/// Runs the checks of the manifests' `inspect` on every image; `on_image` sees each report as
/// it is made.
pub fn inspect(
    mut model: Model,
    store: &Store,
    opts: &SessionOptions,
    images: &Images,
    shell: &Shell,
    on_image: &mut dyn FnMut(&ImageReport),
) -> Result<InspectReport, CommandError> {
    let started = Instant::now();
    let mut downloads = Vec::new();
    let mut build = None;
    let subjects = match images {
        Images::Site {
            site,
            scope,
            images,
        } => site_subjects(&mut model, site, scope, images)?,
        Images::Url {
            base,
            scope,
            images,
        } => {
            let (s, d) = url_subjects(&model, base, scope, images, shell.quiet)?;
            downloads = d;
            s
        }
        Images::Local { images, arch } => {
            let (subjects, built) = local_subjects(&model, store, opts, images, arch, shell)?;
            build = built;
            subjects
        }
    };
    let mut reports = Vec::new();
    for s in subjects {
        let t0 = Instant::now();
        let mut results = Vec::new();
        let mut root_desc = String::new();
        let mut skipped = None;
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
                            skipped = Some(format!(
                                "{}: no {kind} manifest of the build here: package check skipped",
                                s.name
                            ))
                        }
                    }
                }
                if let Some(doc) = &s.sbom {
                    results.push(crate::sbom::check_result(fs.as_ref(), doc));
                }
            }
            Err(e) => results.push(check::CheckResult {
                name: "root-filesystem".into(),
                passed: false,
                detail: e.message(),
            }),
        }
        if let Some(p) = &s.published {
            results.extend(signed_checksums(&model, &s.name, p));
        }
        let report = ImageReport {
            passed: results.iter().all(|r| r.passed),
            fetched_bytes: s.fetched.as_ref().and_then(|f| f.fetched_bytes()),
            name: s.name,
            source: s.source,
            root: root_desc,
            checks: results,
            duration_ms: t0.elapsed().as_millis() as u64,
            skipped,
        };
        on_image(&report);
        reports.push(report);
    }
    drop(downloads);
    Ok(InspectReport {
        version: 1,
        passed: reports.iter().all(|r| r.passed),
        images: reports,
        duration_ms: started.elapsed().as_millis() as u64,
        build,
    })
}
