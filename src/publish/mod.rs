//! Publishing finished images to sites, and managing the versions there.
//!
//! A site is an [`ObjectStore`]: a Swift container ([`swift::SwiftSite`], reached through
//! clouds.yaml and Keystone) or a directory ([`local::LocalSite`]). The layout and the reasons
//! for it are in [`layout`]; in short, a publish:
//! 1. reads the image's pointer: if the live version already has these exact files (same
//!    SHA-256 per format), nothing is sent;
//! 2. picks the version (`--version`, else the first of the day not holding the image) and
//!    refuses one that already holds it;
//! 3. uploads each format (Swift: a Static Large Object above the segment size, segments named
//!    by content so an interrupted upload resumes), each verified by the store;
//! 4. writes `<Name>.manifest` last, create-only: from then on the version holds the image;
//! 5. checks every object back (size and SHA-256 metadata);
//! 6. writes the image's pointer, then settles `current` ([`settle_current`]).

pub mod clouds;
pub mod keystone;
pub mod layout;
pub mod local;
pub mod secret;
pub mod swift;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use layout::{Pointer, Version};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PublishError {
    #[error("{0}")]
    #[diagnostic(code(ccb::publish::site))]
    Site(String),
    #[error(
        "{site}: version {version} already holds {name}; a published version is never overwritten"
    )]
    #[diagnostic(
        code(ccb::publish::version_taken),
        help("publish without --version to take the next free version of the day")
    )]
    VersionTaken {
        site: String,
        version: String,
        name: String,
    },
    #[error("{site}: {message}")]
    #[diagnostic(code(ccb::publish::verify))]
    Verify { site: String, message: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Clouds(#[from] clouds::CloudsError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Keystone(#[from] keystone::KeystoneError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Swift(#[from] swift::SwiftError),
}

/// What a listing or a HEAD says about an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectInfo {
    pub name: String,
    pub bytes: u64,
    /// The SHA-256 ccb stored with the object (`X-Object-Meta-Sha256`), when known. Listings
    /// do not carry metadata: only [`ObjectStore::head`] fills it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// A create-only write found the name taken.
    Exists,
}

/// The object operations publishing needs. Names are relative to the site (container or
/// directory).
pub trait ObjectStore: Send + Sync {
    /// For messages: `CHI@TACC (swift container chameleon-supported-images)`, a path.
    fn describe(&self) -> String;
    /// A small object, read consistently (Swift: `X-Newest`); `None` when absent.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PublishError>;
    fn head(&self, name: &str) -> Result<Option<ObjectInfo>, PublishError>;
    /// Every object whose name starts with `prefix`, sorted (without metadata).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PublishError>;
    fn put_bytes(
        &self,
        name: &str,
        data: &[u8],
        content_type: &str,
        create_only: bool,
    ) -> Result<PutOutcome, PublishError>;
    /// A file, verified by the store, with its SHA-256 as metadata.
    fn put_file(
        &self,
        name: &str,
        file: &Path,
        size: u64,
        sha256: &str,
        progress: &Progress,
    ) -> Result<(), PublishError>;
    /// Server-side copy (metadata kept; Swift large objects: the manifest only).
    fn copy(&self, from: &str, to: &str) -> Result<(), PublishError>;
    /// Removes an object (Swift large objects: the manifest only; see [`gc_segments`]).
    fn delete(&self, name: &str) -> Result<(), PublishError>;
    /// An object opened for random reads (`ccb inspect --site`): a file, or HTTP ranges.
    fn open_read(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::inspect::ReadAt>, PublishError>;
    /// Segment sets a large object of this store may use, for [`gc_segments`].
    fn segment_sets(&self) -> Result<Vec<(String, String)>, PublishError> {
        Ok(vec![])
    }
}

/// Byte counts for progress bars; shared by parallel uploads.
pub struct Progress {
    done: AtomicU64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(label: &str, total: u64, visible: bool) -> Self {
        let bar = visible.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>28} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        Self {
            done: AtomicU64::new(0),
            bar,
        }
    }

    pub fn hidden() -> Self {
        Self::new("", 0, false)
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Takes back bytes of an attempt that will be sent again.
    pub fn sub(&self, n: u64) {
        let before = self.done.fetch_sub(n.min(self.done()), Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_position(before.saturating_sub(n));
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// One file of an image to publish.
#[derive(Debug, Clone)]
pub struct FileToPublish {
    /// `qcow2`, `raw`.
    pub format: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// An image ready to publish: its files and its provenance record.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    /// The published name, e.g. `CC-Debian12`.
    pub name: String,
    pub files: Vec<FileToPublish>,
    /// The provenance JSON, published as `<Name>.manifest`.
    pub manifest: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Published {
        version: String,
        bytes: u64,
    },
    /// The live version already has these exact files.
    AlreadyLive {
        version: String,
    },
    DryRun {
        version: String,
        objects: Vec<String>,
    },
}

/// Options of one publish.
pub struct PublishOptions<'a> {
    pub scope: &'a str,
    pub version: Option<Version>,
    /// `YYYYMMDD` (UTC) for a new version.
    pub today: String,
    pub dry_run: bool,
    pub show_progress: bool,
}

fn now_rfc3339() -> String {
    crate::build::utc_now().0
}

/// Publishes one image to one site.
pub fn publish_image(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let scope = opts.scope;
    let live = read_pointer(site, scope, &image.name)?;
    let local: BTreeMap<String, String> = image
        .files
        .iter()
        .map(|f| (f.format.clone(), f.sha256.clone()))
        .collect();
    if let Some(p) = &live
        && p.sha256 == local
        && opts.version.is_none()
    {
        return Ok(Outcome::AlreadyLive {
            version: p.version.clone(),
        });
    }

    let holding = versions_holding(site, scope, &image.name)?;
    let version = match &opts.version {
        Some(v) => {
            if holding.contains(v) {
                return Err(PublishError::VersionTaken {
                    site: site.describe(),
                    version: v.to_string(),
                    name: image.name.clone(),
                });
            }
            v.clone()
        }
        None => layout::next_free(&opts.today, &holding),
    };
    let name_of = |file: &str| layout::object(scope, &version, file);
    let manifest_name = name_of(&layout::manifest_file(&image.name));

    if opts.dry_run {
        let mut objects: Vec<String> = image
            .files
            .iter()
            .map(|f| name_of(&format!("{}.{}", image.name, f.format)))
            .collect();
        objects.push(manifest_name);
        objects.push(layout::pointer(scope, &image.name));
        objects.push(layout::current(scope));
        return Ok(Outcome::DryRun {
            version: version.to_string(),
            objects,
        });
    }

    // The files must still be what the build recorded: a file changed since (or a bad disk)
    // would otherwise be published under the recorded digest. They are re-hashed while they
    // upload (the upload reads them anyway, in segments, out of order), and a mismatch removes
    // what was sent before the version can hold the image.
    let total: u64 = image.files.iter().map(|f| f.size).sum();
    let objects: Vec<String> = image
        .files
        .iter()
        .map(|f| name_of(&format!("{}.{}", image.name, f.format)))
        .collect();
    std::thread::scope(|scope| -> Result<(), PublishError> {
        let hashers: Vec<_> = image
            .files
            .iter()
            .map(|f| scope.spawn(move || sha256_file(&f.path)))
            .collect();
        let uploaded = (|| {
            for (f, object) in image.files.iter().zip(&objects) {
                let progress = Progress::new(
                    &format!("{}.{}", image.name, f.format),
                    f.size,
                    opts.show_progress,
                );
                let result = site.put_file(object, &f.path, f.size, &f.sha256, &progress);
                progress.finish();
                result?;
            }
            Ok(())
        })();
        for ((f, object), hasher) in image.files.iter().zip(&objects).zip(hashers) {
            let actual = hasher
                .join()
                .map_err(|_| PublishError::Site("the hashing thread panicked".into()))??;
            if actual != f.sha256 {
                for o in &objects {
                    let _ = site.delete(o);
                }
                return Err(PublishError::Verify {
                    site: site.describe(),
                    message: format!(
                        "{} does not match its recorded SHA-256 (recorded {}, actual {actual}); \
                         {object} was removed and the version does not hold the image",
                        f.path.display(),
                        f.sha256
                    ),
                });
            }
        }
        uploaded
    })?;
    match site.put_bytes(&manifest_name, &image.manifest, "application/json", true)? {
        PutOutcome::Written => {}
        PutOutcome::Exists => {
            return Err(PublishError::VersionTaken {
                site: site.describe(),
                version: version.to_string(),
                name: image.name.clone(),
            });
        }
    }
    // Every object back: present, whole, and the content we meant.
    for f in &image.files {
        let object = name_of(&format!("{}.{}", image.name, f.format));
        let info = site.head(&object)?.ok_or_else(|| PublishError::Verify {
            site: site.describe(),
            message: format!("{object} is missing after its upload"),
        })?;
        if info.bytes != f.size || info.sha256.as_deref() != Some(f.sha256.as_str()) {
            return Err(PublishError::Verify {
                site: site.describe(),
                message: format!(
                    "{object}: {} bytes, sha256 {}; expected {} bytes, sha256 {}",
                    info.bytes,
                    info.sha256.as_deref().unwrap_or("(none)"),
                    f.size,
                    f.sha256
                ),
            });
        }
    }
    let pointer = Pointer {
        name: image.name.clone(),
        version: version.to_string(),
        sha256: local,
        published_at: now_rfc3339(),
    };
    write_pointer(site, scope, &pointer)?;
    settle_current(site, scope)?;
    Ok(Outcome::Published {
        version: version.to_string(),
        bytes: total,
    })
}

fn sha256_file(path: &Path) -> Result<String, PublishError> {
    crate::fetch::hash::sha256_file(path)
        .map_err(|e| PublishError::Site(format!("read {}: {e}", path.display())))
}

pub fn read_pointer(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
) -> Result<Option<Pointer>, PublishError> {
    let Some(bytes) = site.get(&layout::pointer(scope, name))? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        PublishError::Site(format!(
            "{}: {} is not a pointer record: {e}",
            site.describe(),
            layout::pointer(scope, name)
        ))
    })
}

fn write_pointer(site: &dyn ObjectStore, scope: &str, p: &Pointer) -> Result<(), PublishError> {
    let body = serde_json::to_vec_pretty(p).expect("a pointer serializes");
    site.put_bytes(
        &layout::pointer(scope, &p.name),
        &body,
        "application/json",
        false,
    )?;
    Ok(())
}

/// The versions of `scope` that hold `name` (whose `<Name>.manifest` exists).
pub fn versions_holding(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
) -> Result<Vec<Version>, PublishError> {
    let names: Vec<String> = site
        .list(&layout::versions_prefix(scope))?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let manifest = layout::manifest_file(name);
    Ok(layout::versions_in(scope, &names)
        .into_iter()
        .filter(|(_, images)| {
            images
                .get(name)
                .is_some_and(|files| files.contains(&manifest))
        })
        .map(|(v, _)| v)
        .collect())
}

pub fn read_current(
    site: &dyn ObjectStore,
    scope: &str,
) -> Result<BTreeMap<String, String>, PublishError> {
    match site.get(&layout::current(scope))? {
        None => Ok(BTreeMap::new()),
        Some(b) => serde_json::from_slice(&b).map_err(|e| {
            PublishError::Site(format!(
                "{}: {} is not a JSON map of image names to versions: {e}",
                site.describe(),
                layout::current(scope)
            ))
        }),
    }
}

/// Rewrites `current` from the pointers until reading it back agrees with them.
///
/// Each round: list and read every pointer, read `current`; if it already says what the
/// pointers say, stop; else write the derived map and go round again (the read-back is what
/// catches a concurrent publisher's write landing after ours). Whoever writes `current` last
/// re-lists the pointers after that write, so a pointer it had missed is seen and put back;
/// a pointer written after that listing belongs to a publisher whose own write comes later.
pub fn settle_current(site: &dyn ObjectStore, scope: &str) -> Result<(), PublishError> {
    const ROUNDS: usize = 50;
    for round in 0..ROUNDS {
        let pointers = read_pointers(site, scope)?;
        let current = read_current(site, scope)?;
        if layout::current_settled(&current, &pointers) && round > 0 {
            return Ok(());
        }
        let derived = layout::derive_current(&current, &pointers);
        if derived != current {
            let body = serde_json::to_vec_pretty(&derived).expect("a map serializes");
            site.put_bytes(&layout::current(scope), &body, "application/json", false)?;
        }
        // A short, jittered pause lets concurrent writers' requests land before the check.
        std::thread::sleep(Duration::from_millis(
            50 + (std::process::id() as u64 % 7) * 20,
        ));
    }
    Err(PublishError::Site(format!(
        "{}: {} did not settle after {ROUNDS} rounds (too many concurrent publishers?)",
        site.describe(),
        layout::current(scope)
    )))
}

fn read_pointers(site: &dyn ObjectStore, scope: &str) -> Result<Vec<Pointer>, PublishError> {
    let mut out = Vec::new();
    for o in site.list(&layout::pointers_prefix(scope))? {
        if let Some(b) = site.get(&o.name)?
            && let Ok(p) = serde_json::from_slice::<Pointer>(&b)
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// A version of a scope as `ccb versions list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionEntry {
    pub version: String,
    pub images: Vec<VersionImage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionImage {
    pub name: String,
    /// Live: `current` names this version for the image.
    pub live: bool,
    pub objects: Vec<ObjectInfo>,
}

/// Every version of a scope with its images, sizes and digests (one HEAD per object).
pub fn list_versions(
    site: &dyn ObjectStore,
    scope: &str,
) -> Result<Vec<VersionEntry>, PublishError> {
    let current = read_current(site, scope)?;
    let listing = site.list(&layout::versions_prefix(scope))?;
    let names: Vec<String> = listing.iter().map(|o| o.name.clone()).collect();
    let mut out = Vec::new();
    for (v, images) in layout::versions_in(scope, &names) {
        let mut entry = VersionEntry {
            version: v.to_string(),
            images: vec![],
        };
        for (image, files) in images {
            let mut objects = Vec::new();
            for f in files {
                let name = layout::object(scope, &v, &f);
                if let Some(info) = site.head(&name)? {
                    objects.push(info);
                }
            }
            entry.images.push(VersionImage {
                live: current.get(&image) == Some(&v.to_string()),
                name: image,
                objects,
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// Makes `version` the live version of `name` again (it must hold the image).
pub fn rollback(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
    version: &Version,
) -> Result<(), PublishError> {
    if !versions_holding(site, scope, name)?.contains(version) {
        return Err(PublishError::Site(format!(
            "{}: {scope}/versions/{version} does not hold {name}",
            site.describe()
        )));
    }
    let pointer = pointer_for(site, scope, name, version)?;
    write_pointer(site, scope, &pointer)?;
    settle_current(site, scope)
}

fn pointer_for(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
    version: &Version,
) -> Result<Pointer, PublishError> {
    let mut sha256 = BTreeMap::new();
    let prefix = layout::object(scope, version, &format!("{name}."));
    for o in site.list(&prefix)? {
        let Some(format) = o.name.strip_prefix(&prefix) else {
            continue;
        };
        if format == "manifest" {
            continue;
        }
        if let Some(d) = site.head(&o.name)?.and_then(|i| i.sha256) {
            sha256.insert(format.to_string(), d);
        }
    }
    Ok(Pointer {
        name: name.to_string(),
        version: version.to_string(),
        sha256,
        published_at: now_rfc3339(),
    })
}

/// Copies `name`'s objects of `version` from one scope to another on the same site (server-side:
/// nothing is uploaded), then makes it live there.
pub fn promote(
    site: &dyn ObjectStore,
    from_scope: &str,
    to_scope: &str,
    name: &str,
    version: &Version,
) -> Result<(), PublishError> {
    if !versions_holding(site, from_scope, name)?.contains(version) {
        return Err(PublishError::Site(format!(
            "{}: {from_scope}/versions/{version} does not hold {name}",
            site.describe()
        )));
    }
    if versions_holding(site, to_scope, name)?.contains(version) {
        return Err(PublishError::VersionTaken {
            site: site.describe(),
            version: format!("{to_scope}/versions/{version}"),
            name: name.to_string(),
        });
    }
    let prefix = layout::object(from_scope, version, &format!("{name}."));
    let mut files: Vec<String> = site
        .list(&prefix)?
        .into_iter()
        .filter_map(|o| o.name.strip_prefix(&prefix).map(str::to_string))
        .collect();
    // The manifest last, as in a publish: it is what makes the version hold the image.
    files.sort_by_key(|f| f == "manifest");
    for ext in files {
        let file = format!("{name}.{ext}");
        site.copy(
            &layout::object(from_scope, version, &file),
            &layout::object(to_scope, version, &file),
        )?;
    }
    let pointer = pointer_for(site, to_scope, name, version)?;
    write_pointer(site, to_scope, &pointer)?;
    settle_current(site, to_scope)
}

/// Removes all but the newest `keep` versions of each image of a scope, never the live one.
/// Returns the (version, image) pairs removed.
pub fn prune(
    site: &dyn ObjectStore,
    scope: &str,
    keep: usize,
    dry_run: bool,
) -> Result<Vec<(String, String)>, PublishError> {
    let current = read_current(site, scope)?;
    let names: Vec<String> = site
        .list(&layout::versions_prefix(scope))?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let versions = layout::versions_in(scope, &names);
    let mut by_image: BTreeMap<String, Vec<(Version, Vec<String>)>> = BTreeMap::new();
    for (v, images) in versions {
        for (image, files) in images {
            by_image.entry(image).or_default().push((v.clone(), files));
        }
    }
    let mut removed = Vec::new();
    for (image, mut vs) in by_image {
        vs.sort_by(|a, b| b.0.cmp(&a.0));
        for (v, files) in vs.into_iter().skip(keep) {
            if current.get(&image) == Some(&v.to_string()) {
                continue;
            }
            if !dry_run {
                // The manifest first: the version stops holding the image before its files go.
                let mut files = files;
                files.sort_by_key(|f| !f.ends_with(".manifest"));
                for f in files {
                    site.delete(&layout::object(scope, &v, &f))?;
                }
            }
            removed.push((v.to_string(), image.clone()));
        }
    }
    if !dry_run && !removed.is_empty() {
        gc_segments(site)?;
    }
    Ok(removed)
}

/// Removes the segment sets no large object of any scope uses any more.
pub fn gc_segments(site: &dyn ObjectStore) -> Result<(), PublishError> {
    let sets = site.segment_sets()?;
    if sets.is_empty() {
        return Ok(());
    }
    // Digests still published anywhere (any scope, any version).
    let mut used = std::collections::BTreeSet::new();
    for o in site.list("")? {
        if o.name.starts_with(layout::SEGMENTS) || !o.name.contains("/versions/") {
            continue;
        }
        if let Some(d) = site.head(&o.name)?.and_then(|i| i.sha256) {
            used.insert(d);
        }
    }
    for (prefix, sha) in sets {
        if !used.contains(&sha) {
            for o in site.list(&prefix)? {
                site.delete(&o.name)?;
            }
        }
    }
    Ok(())
}

/// Why an image holding secret inputs (a license token) may not go to `site`: a public site
/// would hand the secret to anyone, so the manifest must say so (`public_with_secrets`).
pub fn secrets_refusal(
    image: &crate::manifest::Image,
    site: &crate::manifest::Site,
) -> Option<String> {
    if !site.public || !image.holds_secrets() || image.public_with_secrets {
        return None;
    }
    let names: Vec<&str> = image.secrets.keys().map(String::as_str).collect();
    Some(format!(
        "image `{}` holds secret inputs ({}) and {} is public: not published there \
         (set `public_with_secrets = true` on the image to allow it)",
        image.key,
        names.join(", "),
        site.name
    ))
}
