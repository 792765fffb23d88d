//! `publish`: the targets' disks (from the build report, or a directory built elsewhere) onto
//! the sites, each under a new version of a scope.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::build::{BuildReport, BuildRequest};
use super::{CommandError, Session, SessionOptions};
use crate::manifest::{Model, Site, SiteKind};
use crate::publish::layout::{self, Version};
use crate::publish::sites::{self, SiteError, SwiftSettings};
use crate::publish::{self, FileToPublish, ImageFiles, Outcome, PublishOptions};
use crate::store::Store;
use crate::ui::Shell;

/// What to publish where.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub targets: Vec<String>,
    pub arch: Vec<String>,
    pub scope: String,
    /// Keys or names of sites (all when empty).
    pub sites: Vec<String>,
    /// `vN` or `YYYYMMDD-vN` (default: the next free one today).
    pub version: Option<String>,
    pub dry_run: bool,
    /// Publish to a Swift site declared public even when its container's read ACL does not let
    /// the sites read and list it anonymously.
    pub no_public_check: bool,
    /// Images built elsewhere: the targets are then published names in this directory.
    pub outputs: Option<PathBuf>,
    pub swift: SwiftSettings,
    /// Draw upload progress.
    pub show_progress: bool,
    /// A site that cannot be opened ends the command (else it is a failed row).
    pub stop_on_site_error: bool,
}

/// One image on one site (or a site that could not be opened: no image, no outcome).
#[derive(Debug, Clone, Serialize)]
pub struct PublishRow {
    /// `outcome` (`published`, `already-live`, `dry-run`) and its fields.
    #[serde(flatten)]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The site's key.
    pub site: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is a bug in ccb: the command then exits 70, not 1.
    #[serde(skip)]
    pub bug: bool,
}

/// Every image on every site.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub version: u32,
    pub results: Vec<PublishRow>,
    #[serde(skip)]
    pub failed: usize,
    /// Some failure is a bug in ccb (exit 70).
    #[serde(skip)]
    pub bug: bool,
    /// The build of the disks published (none with `--outputs` or `--dry-run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildReport>,
}

/// What publishing tells as it goes.
pub trait PublishObserver {
    /// The build of the disks (none with `--outputs`).
    fn built(&mut self, report: &BuildReport);
    /// A skipped image, a published one, or what would be.
    fn line(&mut self, text: &str);
    /// One image failed on one site; the others go on.
    fn failed(&mut self, error: miette::Report);
}

pub fn today() -> String {
    crate::contract::utc_now().1[..8].to_string()
}

/// `vN` (of today) or `YYYYMMDD-vN`.
pub fn parse_version(v: &str) -> Result<Version, CommandError> {
    let full = if v.starts_with('v') {
        format!("{}-{v}", today())
    } else {
        v.to_string()
    };
    Version::parse(&full).ok_or_else(|| {
        CommandError::usage(format!(
            "version `{v}`: expected vN or YYYYMMDD-vN, optionally with a suffix of lowercase \
             letters (e.g. v2, 20261127-v2, 20250422-v1-arm)"
        ))
    })
}

/// A site error as a command error: an unknown site is a usage error.
pub fn site_error(e: SiteError) -> CommandError {
    if e.is_usage() {
        CommandError::usage_diag(e)
    } else {
        CommandError::from_diag(e)
    }
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
fn image_in(dir: &Path, name: &str, formats: &[&str]) -> Result<ImageFiles, CommandError> {
    let sums = read_sums(&dir.join("SHA256SUMS"));
    let mut files = Vec::new();
    for f in formats {
        let file = format!("{name}.{f}");
        let path = dir.join(&file);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let sha256 = sums.get(&file).cloned().ok_or_else(|| {
            CommandError::msg(format!(
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
        return Err(CommandError::msg(format!(
            "{}: no {} file of {name}",
            dir.display(),
            formats.join(" or ")
        )));
    }
    let manifest_path = dir.join(format!("{name}.d/{name}_provenance.json"));
    let manifest = std::fs::read(&manifest_path).map_err(|e| {
        CommandError::msg(format!(
            "{}: the provenance record is missing: {e}",
            manifest_path.display()
        ))
    })?;
    // The SBOM of a ccb build; an image built elsewhere may have none.
    let sbom = std::fs::read(dir.join(crate::sbom::file_name(name))).ok();
    Ok(ImageFiles {
        name: name.to_string(),
        files,
        manifest,
        sbom,
    })
}

/// An image to publish and whether it may go to sites that are not bare metal.
/// What a publish request's words select: the targets to plan (a wildcard without the images
/// no chosen site may receive) and the images named explicitly.
struct Selection {
    targets: Vec<String>,
    named: std::collections::BTreeSet<String>,
}

struct Candidate {
    image: ImageFiles,
    baremetal_only: bool,
    /// The manifests' image, when the candidate is one (its secrets guard public sites).
    key: Option<String>,
    /// The secrets its built disk holds (the store's record of the build), beside those its
    /// manifest declares.
    built_secrets: Vec<String>,
    /// Named on the command line (not through a wildcard): refusing it is an error, not a note.
    explicit: bool,
}

impl Candidate {
    /// Why this image may not go to `site` (a public site, and it holds a secret the manifest
    /// does not allow there), from its manifest and from what its build recorded.
    fn refusal(&self, model: &Model, site: &Site) -> Option<String> {
        self.refusal_with(self.key.as_deref().and_then(|k| model.images.get(k)), site)
    }

    fn refusal_with(&self, image: Option<&crate::manifest::Image>, site: &Site) -> Option<String> {
        if let Some(image) = image {
            if let Some(r) = publish::secrets_refusal(image, site) {
                return Some(r);
            }
            if image.public_with_secrets {
                return None;
            }
        }
        (site.public && !self.built_secrets.is_empty()).then(|| {
            format!(
                "image `{}` was built holding secret inputs ({}) and {} is public: not \
                 published there (publish it to a private site (`public = false`), or set \
                 `public_with_secrets = true` on the image to allow it)",
                self.image.name,
                self.built_secrets.join(", "),
                site.name
            )
        })
    }
}

/// A wildcard (`//images:all`, `//...`) leaves out an image holding secrets that none of the
/// chosen sites may receive, or whose secrets this host lacks (as `ccb build` does): it is not
/// built for nothing, and the notes name it. Named explicitly, it stays (and is refused with
/// the reason). Returns the words to plan.
fn without_unpublishable(
    model: &Model,
    store: &Store,
    words: &[String],
    site_keys: &[String],
    shell: &Shell,
) -> Vec<String> {
    let distdirs = crate::fetch::distdirs_from_env();
    let refused_everywhere = |image: &crate::manifest::Image| {
        !site_keys.is_empty()
            && site_keys
                .iter()
                .filter_map(|k| model.sites.get(k))
                .all(|site| publish::secrets_refusal(image, site).is_some())
    };
    super::wildcard_without(model, words, shell, |image| {
        refused_everywhere(image)
            .then(|| {
                format!(
                    "holds secret inputs ({}) and the sites are public; name it to be told why, \
                     or publish it to a private site",
                    image.secret_names().join(", ")
                )
            })
            .or_else(|| super::missing_secrets_note(model, store, image, &distdirs))
    })
}

/// Images built elsewhere, by published name.
fn candidates_in(
    dir: &Path,
    names: &[String],
    model: &Model,
) -> Result<Vec<Candidate>, CommandError> {
    const ALL: [&str; 2] = ["qcow2", "raw"];
    if names.is_empty() {
        return Err(CommandError::usage(
            "--outputs needs the published names of the images to publish",
        ));
    }
    names
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
                built_secrets: vec![],
                explicit: true,
                key: model
                    .images
                    .values()
                    .find(|i| i.arch.iter().any(|a| i.published_name(*a) == *name))
                    .map(|i| i.key.clone()),
            })
        })
        .collect()
}

/// Publishes the targets' disks (built first when missing) or the images of `req.outputs`.
pub fn publish(
    mut model: Model,
    store: &Store,
    opts: &SessionOptions,
    req: &PublishRequest,
    shell: &Shell,
    observer: &mut dyn PublishObserver,
) -> Result<PublishReport, CommandError> {
    if !layout::valid_scope(&req.scope) {
        return Err(CommandError::usage(format!(
            "--scope {}: a scope is one path segment of letters, digits, `-` and `_`",
            req.scope
        )));
    }
    let version = req.version.as_deref().map(parse_version).transpose()?;
    sites::with_default_site(&mut model);
    let site_keys: Vec<String> = if req.sites.is_empty() {
        model.sites.keys().cloned().collect()
    } else {
        req.sites
            .iter()
            .map(|s| sites::find_site(&model, s).map(|(k, _)| k.clone()))
            .collect::<Result<_, _>>()
            .map_err(site_error)?
    };
    let selection = Selection {
        targets: match &req.outputs {
            Some(_) => req.targets.clone(),
            None => without_unpublishable(&model, store, &req.targets, &site_keys, shell),
        },
        named: crate::label::named_images(&model, &req.targets),
    };
    // An image named explicitly that a chosen site may not receive is refused before anything
    // is built for it.
    for image in selection.named.iter().filter_map(|k| model.images.get(k)) {
        if let Some(refusal) = site_keys
            .iter()
            .filter_map(|k| model.sites.get(k))
            .find_map(|site| publish::secrets_refusal(image, site))
        {
            return Err(CommandError::msg(refusal));
        }
    }
    let (candidates, build, model) = match &req.outputs {
        Some(dir) => (candidates_in(dir, &req.targets, &model)?, None, model),
        None if req.dry_run => {
            let (candidates, model) =
                candidates_in_store(model, store, opts, &selection, req, shell)?;
            (candidates, None, model)
        }
        None => {
            let (candidates, build, model) =
                candidates_built(model, store, opts, &selection, req, shell, observer)?;
            (candidates, Some(build), model)
        }
    };
    let mut report = PublishReport {
        version: 1,
        results: vec![],
        failed: 0,
        bug: false,
        build,
    };
    let signing = model.project.signing.clone().unwrap_or_default();
    let signer = crate::publish::signing::Signer::load(&signing, &model.root)
        .map_err(CommandError::from_diag)?;
    if signer.is_none() && signing.public_key.is_some() {
        shell.warn(
            "signing.public_key is set but signing.key is not: the checksums are published unsigned",
        );
    }
    let ctx = SiteRun {
        model: &model,
        req,
        version,
        signer: signer.as_ref(),
        shell,
    };
    for key in &site_keys {
        ctx.publish_to(key, &candidates, &mut report, observer)?;
    }
    Ok(report)
}

/// A dry run builds nothing (nor pins anything): it tells what the disks already in the store
/// would publish, and which are not built yet.
fn candidates_in_store(
    model: Model,
    store: &Store,
    opts: &SessionOptions,
    selection: &Selection,
    req: &PublishRequest,
    shell: &Shell,
) -> Result<(Vec<Candidate>, Model), CommandError> {
    let session = Session::open(model, store, opts, shell)?;
    let planned = session.plan(&selection.targets, &req.arch)?;
    let mut out = Vec::new();
    for t in &planned.targets {
        let image = &session.model.images[&t.image];
        let disk = planned
            .graph
            .actions_of(t)
            .into_iter()
            .find(|a| a.kind == crate::graph::Kind::Disk);
        match disk.and_then(|d| Some((d, store.outputs_meta(&d.key)?))) {
            Some((d, meta)) => {
                let formats: Vec<&str> = image.formats.iter().map(|f| f.as_str()).collect();
                out.push(Candidate {
                    image: image_in(
                        &store.outputs_dir(&d.key),
                        &image.published_name(t.arch),
                        &formats,
                    )?,
                    baremetal_only: image.baremetal_only_for(t.arch),
                    key: Some(image.key.clone()),
                    built_secrets: meta.secrets,
                    explicit: selection.named.contains(&image.key),
                });
            }
            None => shell.status(&format!(
                "{}: not built yet; `ccb publish` builds it first",
                t.label()
            )),
        }
    }
    Ok((out, session.model))
}

/// The targets' disks, built first when missing: taken from the build report.
fn candidates_built(
    model: Model,
    store: &Store,
    opts: &SessionOptions,
    selection: &Selection,
    req: &PublishRequest,
    shell: &Shell,
    observer: &mut dyn PublishObserver,
) -> Result<(Vec<Candidate>, BuildReport, Model), CommandError> {
    let mut session = Session::open(model, store, opts, shell)?;
    let planned = session.plan_to_build(&selection.targets, &req.arch, shell)?;
    let build = super::build::build(
        &session,
        &planned,
        &BuildRequest::disks(&selection.targets, &req.arch),
        shell,
    )?;
    observer.built(&build);
    build.ok()?;
    let mut out = Vec::new();
    for d in &build.disks {
        let image = &session.model.images[&d.target.image];
        let formats: Vec<&str> = image.formats.iter().map(|f| f.as_str()).collect();
        out.push(Candidate {
            image: image_in(&d.dir, &image.published_name(d.target.arch), &formats)?,
            baremetal_only: image.baremetal_only_for(d.target.arch),
            key: Some(image.key.clone()),
            built_secrets: store
                .outputs_meta(&d.key)
                .map(|m| m.secrets)
                .unwrap_or_default(),
            explicit: selection.named.contains(&image.key),
        });
    }
    Ok((out, build, session.model))
}

/// What publishing to each site shares.
struct SiteRun<'a> {
    model: &'a Model,
    req: &'a PublishRequest,
    version: Option<Version>,
    signer: Option<&'a crate::publish::signing::Signer>,
    shell: &'a Shell,
}

impl SiteRun<'_> {
    /// Publishes the candidates that belong on the site `key` (bare-metal-only images go to
    /// bare-metal sites only; a site takes only its formats). A site that cannot be opened is
    /// a failed row (or the command's end, with `stop_on_site_error`); an image that fails is
    /// a failed row and the others go on.
    fn publish_to(
        &self,
        key: &str,
        candidates: &[Candidate],
        report: &mut PublishReport,
        observer: &mut dyn PublishObserver,
    ) -> Result<(), CommandError> {
        let (model, req, shell) = (self.model, self.req, self.shell);
        let site: &Site = &model.sites[key];
        let mut wanted: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| site.baremetal || !c.baremetal_only)
            .collect();
        // Decided from the manifests and from what the build recorded: a disk that holds a
        // secret is refused on a public site whatever the manifests say today.
        for c in &wanted {
            if let Some(refusal) = c.refusal(model, site)
                && c.explicit
            {
                return Err(CommandError::msg(refusal));
            }
        }
        wanted.retain(|c| match c.refusal(model, site) {
            Some(refusal) => {
                shell.status(&format!(
                    "{}: left out of {}: {refusal}",
                    c.image.name, site.name
                ));
                false
            }
            None => true,
        });
        for c in candidates
            .iter()
            .filter(|c| !site.baremetal && c.baremetal_only)
        {
            shell.status(&format!(
                "{}: skipped on {} (bare-metal only; the site is not)",
                c.image.name, site.name
            ));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let opened = sites::open_site(model, key, site, &req.swift).and_then(|store| {
            if site.kind == SiteKind::Swift && site.public && !req.no_public_check {
                publish::check_public(store.as_ref()).map_err(SiteError::open)?;
            }
            Ok(store)
        });
        let store = match opened {
            Ok(s) => s,
            Err(e) if req.stop_on_site_error => return Err(site_error(e)),
            Err(e) => {
                report.results.push(PublishRow {
                    outcome: None,
                    image: None,
                    site: key.to_string(),
                    scope: None,
                    error: Some(e.to_string()),
                    bug: super::error::is_internal(&e),
                });
                report.failed += 1;
                report.bug |= super::error::is_internal(&e);
                observer.failed(miette::Report::new(e).wrap_err(format!("opening {}", site.name)));
                return Ok(());
            }
        };
        let site_formats: Vec<&str> = site.formats.iter().map(|f| f.as_str()).collect();
        for c in wanted {
            let mut image = c.image.clone();
            image
                .files
                .retain(|f| site_formats.contains(&f.format.as_str()));
            if image.files.is_empty() {
                shell.status(&format!(
                    "{}: skipped on {} (none of its formats: {})",
                    image.name,
                    site.name,
                    site_formats.join(", ")
                ));
                continue;
            }
            let row = self.publish_one(store.as_ref(), key, site, &image, observer);
            report.failed += usize::from(row.error.is_some());
            report.bug |= row.bug;
            report.results.push(row);
        }
        Ok(())
    }

    /// Publishes one image to one opened site, telling the observer how it went.
    fn publish_one(
        &self,
        store: &dyn publish::ObjectStore,
        key: &str,
        site: &Site,
        image: &ImageFiles,
        observer: &mut dyn PublishObserver,
    ) -> PublishRow {
        let req = self.req;
        let opts = PublishOptions {
            scope: &req.scope,
            version: self.version.clone(),
            today: today(),
            dry_run: req.dry_run,
            show_progress: req.show_progress,
            signer: self.signer,
        };
        let started = std::time::Instant::now();
        let mut row = PublishRow {
            outcome: None,
            image: Some(image.name.clone()),
            site: key.to_string(),
            scope: Some(req.scope.clone()),
            error: None,
            bug: false,
        };
        match publish::publish_image(store, image, &opts) {
            Ok(outcome) => {
                observer.line(&match &outcome {
                    Outcome::Published { version, bytes } => format!(
                        "{}: published to {} {}/versions/{version} ({}, {:.1} s)",
                        image.name,
                        site.name,
                        req.scope,
                        crate::ui::progress::human_bytes(*bytes),
                        started.elapsed().as_secs_f64()
                    ),
                    Outcome::AlreadyLive { version } => format!(
                        "{}: already live on {} as {}/versions/{version} (same content): nothing to do",
                        image.name, site.name, req.scope
                    ),
                    Outcome::DryRun { version, objects } => format!(
                        "{}: would publish to {} as {}/versions/{version}: {}",
                        image.name,
                        site.name,
                        req.scope,
                        objects.join(", ")
                    ),
                });
                row.outcome = Some(outcome);
            }
            Err(e) => {
                row.error = Some(e.to_string());
                row.bug = super::error::is_internal(&e);
                observer.failed(
                    miette::Report::new(e)
                        .wrap_err(format!("publishing {} to {} failed", image.name, site.name)),
                );
            }
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(public: bool) -> Site {
        Site {
            name: "Open".into(),
            baremetal: true,
            formats: vec![crate::manifest::Format::Qcow2],
            kind: SiteKind::Local,
            cloud: None,
            container: "c".into(),
            region: None,
            path: Some("pub".into()),
            public,
        }
    }

    #[test]
    fn a_disk_built_holding_a_secret_is_refused_on_a_public_site_whatever_the_manifests_say() {
        let built = |secrets: &[&str]| Candidate {
            image: ImageFiles {
                name: "Licensed".into(),
                files: vec![],
                manifest: vec![],
                sbom: None,
            },
            baremetal_only: false,
            key: None,
            built_secrets: secrets.iter().map(|s| s.to_string()).collect(),
            explicit: true,
        };
        // The manifests no longer declare the secret (or the image is gone): the build's
        // record still does.
        let refusal = built(&["LICENSE_TOKEN"])
            .refusal_with(None, &site(true))
            .unwrap();
        assert!(
            refusal.contains("built holding secret inputs (LICENSE_TOKEN)"),
            "{refusal}"
        );
        assert!(
            built(&["LICENSE_TOKEN"])
                .refusal_with(None, &site(false))
                .is_none()
        );
        assert!(built(&[]).refusal_with(None, &site(true)).is_none());
    }
}
