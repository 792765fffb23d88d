//! Publishing finished images to sites, and managing the versions there.
//!
//! A site is an [`ObjectStore`]: a Swift container ([`swift::SwiftSite`], reached through
//! clouds.yaml and Keystone) or a directory ([`local::LocalSite`]). The layout and the reasons
//! for it are in [`layout`]; in short, a publish:
//! 0. turns the provenance record into the manifest the sites' puller reads
//!    ([`contract::site_manifest`]), refusing one a site could not deploy;
//! 1. reads the image's pointer: if the live version already has these exact files (same
//!    SHA-256 per format), nothing is sent;
//! 2. picks the version (`--version`, else the first of the day free for the image) and
//!    refuses one that holds or claims it, or whose name a puller would confuse with one that
//!    does ([`layout::Version::prefix_collides`]); claims the image in that version,
//!    create-only and read back ([`claim`]), so that a concurrent publisher of the same image
//!    takes another version before either writes an object; then makes sure the version's
//!    marker object exists ([`layout::marker`]);
//! 3. uploads each format (Swift: a Static Large Object above the segment size, segments named
//!    by content so an interrupted upload resumes), each verified by the store;
//! 4. writes `<Name>.spdx.json` (the SBOM, when the build made one), `<Name>.SHA256SUMS` over
//!    every file of the image and its signature `<Name>.SHA256SUMS.sig` ([`signing`]), then
//!    `<Name>.manifest` last, create-only: from then on the version holds the image;
//! 5. checks every object back (size and SHA-256 metadata);
//! 6. writes the image's pointer, then settles `current` ([`settle_current`]).

pub mod clouds;
pub mod keystone;
pub mod layout;
pub mod local;
pub mod signing;
pub mod sites;
pub mod swift;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::contract;
use crate::ui::progress::Transfer;
use layout::{Pointer, Version};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PublishError {
    /// A file of the image or of a local site could not be read or written (a full disk, a
    /// permission): the host's to fix, found by its `io::Error` kind.
    #[error("{what} {}: {source}", path.display())]
    #[diagnostic(code(ccb::publish::io))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    /// An object of a Swift site could not be opened for reading by ranges.
    #[error("{site}: {source}")]
    #[diagnostic(code(ccb::publish::remote))]
    Remote {
        site: String,
        #[source]
        source: crate::inspect::remote::RemoteError,
    },
    #[error("{site}: {name}: the server does not serve byte ranges")]
    #[diagnostic(code(ccb::publish::no_ranges))]
    NoRanges { site: String, name: String },
    /// A name with an empty, `.` or `..` segment, which would leave a local site's directory.
    #[error("invalid object name `{name}`")]
    #[diagnostic(code(ccb::publish::invalid_name))]
    InvalidName { name: String },
    #[error("{} changed while it was published ({written} bytes, expected {expected})", path.display())]
    #[diagnostic(code(ccb::publish::changed))]
    Changed {
        path: PathBuf,
        written: u64,
        expected: u64,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Signing(#[from] signing::SigningError),
    /// A record ccb keeps on the site (a pointer, `current`) does not parse.
    #[error("{site}: {object} is not {expected}: {source}")]
    #[diagnostic(code(ccb::publish::record))]
    Record {
        site: String,
        object: String,
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{site}: {object} did not settle after {rounds} rounds (too many concurrent publishers?)"
    )]
    #[diagnostic(code(ccb::publish::not_settled))]
    NotSettled {
        site: String,
        object: String,
        rounds: usize,
    },
    #[error("{site}: {version} does not hold {name}")]
    #[diagnostic(code(ccb::publish::not_held))]
    NotHeld {
        site: String,
        version: String,
        name: String,
    },
    /// A state ccb rules out: a bug (exit 70).
    #[error("internal error: {0}")]
    #[diagnostic(code(ccb::publish::internal))]
    Internal(&'static str),
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
    #[error(
        "{site}: version {version} is claimed for {name} by another publisher (one in progress, \
         or one that stopped before writing its manifest) with other files"
    )]
    #[diagnostic(
        code(ccb::publish::version_claimed),
        help("publish without --version to take the next free version of the day")
    )]
    VersionClaimed {
        site: String,
        version: String,
        name: String,
    },
    #[error("{site}: {message}")]
    #[diagnostic(code(ccb::publish::verify))]
    Verify { site: String, message: String },
    #[error("{name}: its manifest cannot be deployed by the sites: {message}")]
    #[diagnostic(code(ccb::publish::manifest))]
    Manifest { name: String, message: String },
    #[error(
        "{site}: version {version} would be confused with {other}, which holds or claims {name}: \
         the sites list a version by prefix, so one name must not start with the other"
    )]
    #[diagnostic(
        code(ccb::publish::prefix_collision),
        help(
            "pick a version whose name neither starts nor ends the other's, or publish without --version"
        )
    )]
    PrefixCollision {
        site: String,
        version: String,
        other: String,
        name: String,
    },
    #[error("{site}: no version of {date} is free for {name}")]
    #[diagnostic(
        code(ccb::publish::no_free_version),
        help(
            "every name of the day is taken or would be confused by prefix with a taken one; publish tomorrow or pass --version with another date"
        )
    )]
    NoFreeVersion {
        site: String,
        date: String,
        name: String,
    },
    #[error(
        "{site}: container {container} is not publicly readable and listable (read ACL: {acl}); \
         every site's puller reads it anonymously"
    )]
    #[diagnostic(
        code(ccb::publish::not_public),
        help(
            "run `swift post -r '.r:*,.rlistings' {container}`, declare the site `public = false`, or pass --no-public-check"
        )
    )]
    NotPublic {
        site: String,
        container: String,
        acl: String,
    },
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
        progress: &Transfer,
    ) -> Result<(), PublishError>;
    /// Server-side copy (metadata kept; Swift large objects: the manifest only).
    fn copy(&self, from: &str, to: &str) -> Result<(), PublishError>;
    /// Removes an object (Swift large objects: the manifest only; see [`gc_segments`]).
    fn delete(&self, name: &str) -> Result<(), PublishError>;
    /// An object opened for random reads (`ccb inspect --site`): a file, or HTTP ranges.
    fn open_read(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::readat::ReadAt>, PublishError>;
    /// Makes sure a marker object exists: zero bytes, named like a "directory" other objects
    /// live under (Swift has no directories; a local site does, see [`local::LocalSite`]).
    fn put_marker(&self, name: &str) -> Result<(), PublishError> {
        self.put_bytes(name, b"", "application/directory", true)
            .map(|_| ())
    }
    /// Whether a create-only write is atomic (a local link(2) is; Swift checks `If-None-Match`
    /// before it writes, so two writers at once may both succeed and the newer wins).
    fn create_only_is_atomic(&self) -> bool {
        false
    }
    /// The container and its read ACL (`X-Container-Read`, "" when unset), for stores that
    /// sites read anonymously; `None` for stores without one (a directory).
    fn read_acl(&self) -> Result<Option<(String, String)>, PublishError> {
        Ok(None)
    }
    /// Segment sets a large object of this store may use, for [`gc_segments`].
    fn segment_sets(&self) -> Result<Vec<(String, String)>, PublishError> {
        Ok(vec![])
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
    /// The SBOM, published as `<Name>.spdx.json`.
    pub sbom: Option<Vec<u8>>,
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
    /// Signs `<Name>.SHA256SUMS` (unsigned without one).
    pub signer: Option<&'a signing::Signer>,
}

fn now_rfc3339() -> String {
    crate::contract::utc_now().0
}

/// Publishes one image to one site: finish an interrupted publish of the same files, else
/// claim a version, upload the files (re-hashed on the way), write the SBOM, checksums,
/// signature and manifest, check every object back, and make the version live.
pub fn publish_image(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let scope = opts.scope;
    let manifest = contract::site_manifest(&image.name, &image.manifest).map_err(|p| {
        PublishError::Manifest {
            name: image.name.clone(),
            message: p.0,
        }
    })?;
    let local: BTreeMap<String, String> = image
        .files
        .iter()
        .map(|f| (f.format.clone(), f.sha256.clone()))
        .collect();
    if let Some(done) = finish_interrupted(site, image, opts, &local)? {
        return Ok(done);
    }
    // An earlier publish of these very files that stopped before its manifest (killed, a
    // network failure) left its claim: resume in its version, where whatever it sent is
    // these same bytes (segments are named by content, so nothing is sent twice).
    let resume = resumable_claim(site, scope, &image.name, &local, opts.version.as_ref())?;
    let version = match &resume {
        Some((v, _)) => v.clone(),
        None => pick_version(site, image, opts)?,
    };
    if opts.dry_run {
        return Ok(Outcome::DryRun {
            objects: dry_run_objects(image, opts, &version),
            version: version.to_string(),
        });
    }
    let (version, token) = match resume {
        Some((_, token)) => (version, token),
        None => claim_version(site, image, opts, version, claim_token(&local))?,
    };
    site.put_marker(&layout::marker(scope, &version))?;
    crate::fault::point("publish.claimed");
    let name_of = |file: &str| layout::object(scope, &version, file);

    let objects: Vec<String> = image
        .files
        .iter()
        .map(|f| name_of(&format!("{}.{}", image.name, f.format)))
        .collect();
    upload_verified(site, image, &objects, opts.show_progress)?;
    // A claim that changed hands (it cannot, short of someone deleting it) must not end in a
    // manifest over another publisher's files.
    if site
        .get(&layout::claim(scope, &version, &image.name))?
        .as_deref()
        != Some(token.as_bytes())
    {
        return Err(PublishError::Verify {
            site: site.describe(),
            message: format!(
                "the claim on {} in {scope}/versions/{version} is no longer this publisher's; \
                 the version does not hold the image",
                image.name
            ),
        });
    }
    put_records(site, image, opts, &version, &manifest)?;
    check_uploaded(site, image, &objects)?;
    let pointer = Pointer {
        name: image.name.clone(),
        version: version.to_string(),
        sha256: local,
        published_at: now_rfc3339(),
    };
    crate::fault::point("publish.pointer");
    write_pointer(site, scope, &pointer)?;
    crate::fault::point("publish.current");
    settle_current(site, scope)?;
    Ok(Outcome::Published {
        version: version.to_string(),
        bytes: image.files.iter().map(|f| f.size).sum(),
    })
}

/// The outcome when these very files are already published (or were, by a publisher that
/// stopped before its end): nothing to upload, at most the pointer and `current` to settle.
fn finish_interrupted(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
    local: &BTreeMap<String, String>,
) -> Result<Option<Outcome>, PublishError> {
    let scope = opts.scope;
    let live = read_pointer(site, scope, &image.name)?;
    if let Some(p) = &live
        && &p.sha256 == local
        && opts.version.is_none()
    {
        // A publisher stopped between the pointer and `current` (killed, a network failure)
        // left the image live by its pointer but not in `current`, which is what the sites
        // read: this run finishes its job.
        if !opts.dry_run && read_current(site, scope)?.get(&image.name) != Some(&p.version) {
            settle_current(site, scope)?;
        }
        return Ok(Some(Outcome::AlreadyLive {
            version: p.version.clone(),
        }));
    }
    // A publisher of these very files stopped after the manifest and before the pointer:
    // the version holds the image, whole, and only has to go live (publishing it again as a
    // new version would upload the whole image twice). Only a version newer than the live
    // one: going back to an older version of the same content stays a new publish.
    if opts.dry_run || opts.version.is_some() {
        return Ok(None);
    }
    let live_version = live
        .as_ref()
        .and_then(|p| layout::Version::parse(&p.version));
    let Some(version) = finished_claim(site, scope, image, local)?
        .filter(|v| live_version.as_ref().is_none_or(|l| v > l))
    else {
        return Ok(None);
    };
    let pointer = Pointer {
        name: image.name.clone(),
        version: version.to_string(),
        sha256: local.clone(),
        published_at: now_rfc3339(),
    };
    write_pointer(site, scope, &pointer)?;
    crate::fault::point("publish.current");
    settle_current(site, scope)?;
    Ok(Some(Outcome::Published {
        version: version.to_string(),
        bytes: 0,
    }))
}

/// The version to publish in: `--version` when free (and no prefix of another), else the
/// next free one of today.
fn pick_version(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
) -> Result<Version, PublishError> {
    let scope = opts.scope;
    let taken = versions_taken(site, scope, &image.name)?;
    let Some(v) = &opts.version else {
        return layout::next_free(&opts.today, &taken).ok_or_else(|| PublishError::NoFreeVersion {
            site: site.describe(),
            date: opts.today.clone(),
            name: image.name.clone(),
        });
    };
    if taken.contains(v) && !versions_holding(site, scope, &image.name)?.contains(v) {
        return Err(PublishError::VersionClaimed {
            site: site.describe(),
            version: v.to_string(),
            name: image.name.clone(),
        });
    }
    if taken.contains(v) {
        return Err(PublishError::VersionTaken {
            site: site.describe(),
            version: v.to_string(),
            name: image.name.clone(),
        });
    }
    if let Some(other) = taken.iter().find(|t| t.prefix_collides(v)) {
        return Err(PublishError::PrefixCollision {
            site: site.describe(),
            version: v.to_string(),
            other: other.to_string(),
            name: image.name.clone(),
        });
    }
    Ok(v.clone())
}

/// Every object a publish in `version` would write, in the order it writes them.
fn dry_run_objects(image: &ImageFiles, opts: &PublishOptions, version: &Version) -> Vec<String> {
    let scope = opts.scope;
    let name_of = |file: &str| layout::object(scope, version, file);
    let mut objects = vec![layout::claim(scope, version, &image.name)];
    objects.push(layout::marker(scope, version));
    objects.extend(
        image
            .files
            .iter()
            .map(|f| name_of(&format!("{}.{}", image.name, f.format))),
    );
    if image.sbom.is_some() {
        objects.push(name_of(&crate::sbom::file_name(&image.name)));
    }
    objects.push(name_of(&signing::sums_file(&image.name)));
    if opts.signer.is_some() {
        objects.push(name_of(&signing::signature_file(&image.name)));
    }
    objects.push(name_of(&layout::manifest_file(&image.name)));
    objects.push(layout::pointer(scope, &image.name));
    objects.push(layout::current(scope));
    objects
}

/// Claims a version before anything is written in it. A lost claim means a concurrent
/// publisher of this image took the version: take the next free one (or, for an explicit
/// --version, stop).
fn claim_version(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
    mut version: Version,
    token: String,
) -> Result<(Version, String), PublishError> {
    let mut attempts = 0;
    while !claim(site, opts.scope, &version, &image.name, &token)? {
        attempts += 1;
        if opts.version.is_some() || attempts >= 50 {
            return Err(PublishError::VersionTaken {
                site: site.describe(),
                version: version.to_string(),
                name: image.name.clone(),
            });
        }
        version = pick_version(site, image, opts)?;
    }
    Ok((version, token))
}

/// Uploads the files to `objects`. The files must still be what the build recorded: a file
/// changed since (or a bad disk) would otherwise be published under the recorded digest.
/// They are re-hashed while they upload (the upload reads them anyway, in segments, out of
/// order), and a mismatch removes what was sent before the version can hold the image.
fn upload_verified(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    objects: &[String],
    show_progress: bool,
) -> Result<(), PublishError> {
    std::thread::scope(|scope| -> Result<(), PublishError> {
        let hashers: Vec<_> = image
            .files
            .iter()
            .map(|f| scope.spawn(move || sha256_file(&f.path)))
            .collect();
        let uploaded = (|| {
            for (f, object) in image.files.iter().zip(objects) {
                let progress = Transfer::new(
                    &format!("{}.{}", image.name, f.format),
                    f.size,
                    show_progress,
                );
                let result = site.put_file(object, &f.path, f.size, &f.sha256, &progress);
                progress.finish();
                result?;
            }
            Ok(())
        })();
        for ((f, object), hasher) in image.files.iter().zip(objects).zip(hashers) {
            let actual = hasher
                .join()
                .map_err(|_| PublishError::Internal("the hashing thread panicked"))??;
            if actual != f.sha256 {
                for o in objects {
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
    })
}

/// The SBOM and the signed checksums of every file, then the manifest: once the version
/// holds the image (its manifest is there), they are there.
fn put_records(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    opts: &PublishOptions,
    version: &Version,
    manifest: &[u8],
) -> Result<(), PublishError> {
    let name_of = |file: &str| layout::object(opts.scope, version, file);
    let mut sums: BTreeMap<String, String> = image
        .files
        .iter()
        .map(|f| (format!("{}.{}", image.name, f.format), f.sha256.clone()))
        .collect();
    sums.insert(
        layout::manifest_file(&image.name),
        crate::fetch::hash::sha256_bytes(manifest),
    );
    if let Some(sbom) = &image.sbom {
        let file = crate::sbom::file_name(&image.name);
        sums.insert(file.clone(), crate::fetch::hash::sha256_bytes(sbom));
        site.put_bytes(&name_of(&file), sbom, "application/spdx+json", false)?;
    }
    let sums = signing::sums_text(&sums);
    if let Some(signer) = opts.signer {
        let sig = signer.sign(sums.as_bytes())?;
        site.put_bytes(
            &name_of(&signing::signature_file(&image.name)),
            sig.as_bytes(),
            "text/plain",
            false,
        )?;
    }
    site.put_bytes(
        &name_of(&signing::sums_file(&image.name)),
        sums.as_bytes(),
        "text/plain",
        false,
    )?;
    crate::fault::point("publish.manifest");
    match site.put_bytes(
        &name_of(&layout::manifest_file(&image.name)),
        manifest,
        "application/json",
        true,
    )? {
        PutOutcome::Written => Ok(()),
        PutOutcome::Exists => Err(PublishError::VersionTaken {
            site: site.describe(),
            version: version.to_string(),
            name: image.name.clone(),
        }),
    }
}

/// Every uploaded file back: present, whole, and the content we meant.
fn check_uploaded(
    site: &dyn ObjectStore,
    image: &ImageFiles,
    objects: &[String],
) -> Result<(), PublishError> {
    for (f, object) in image.files.iter().zip(objects) {
        let info = site.head(object)?.ok_or_else(|| PublishError::Verify {
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
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, PublishError> {
    crate::fetch::hash::sha256_file(path).map_err(|source| PublishError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_pointer(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
) -> Result<Option<Pointer>, PublishError> {
    let Some(bytes) = site.get(&layout::pointer(scope, name))? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PublishError::Record {
            site: site.describe(),
            object: layout::pointer(scope, name),
            expected: "a pointer record",
            source,
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

/// The newest version that holds `image` with exactly the files `local` (by its claim, and
/// each object present with its size and SHA-256).
fn finished_claim(
    site: &dyn ObjectStore,
    scope: &str,
    image: &ImageFiles,
    local: &BTreeMap<String, String>,
) -> Result<Option<Version>, PublishError> {
    let mut holding = versions_holding(site, scope, &image.name)?;
    holding.sort();
    for v in holding.into_iter().rev() {
        let Some(body) = site.get(&layout::claim(scope, &v, &image.name))? else {
            continue;
        };
        let same = serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|c| c["sha256"] == serde_json::json!(local));
        if !same {
            continue;
        }
        let mut whole = true;
        for f in &image.files {
            let object = layout::object(scope, &v, &format!("{}.{}", image.name, f.format));
            whole &= site.head(&object)?.is_some_and(|info| {
                info.bytes == f.size && info.sha256.as_deref() == Some(f.sha256.as_str())
            });
        }
        if whole {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// The newest claim on `name` whose version does not hold it yet and whose files are `local`
/// (the wanted version only, when one is given): (its version, its body).
fn resumable_claim(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
    local: &BTreeMap<String, String>,
    wanted: Option<&Version>,
) -> Result<Option<(Version, String)>, PublishError> {
    let holding = versions_holding(site, scope, name)?;
    let claims: Vec<String> = site
        .list(&layout::claims_prefix(scope))?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let mut mine: Vec<Version> = layout::claims_in(scope, &claims)
        .into_iter()
        .filter(|(v, image)| image == name && !holding.contains(v))
        .filter(|(v, _)| wanted.is_none_or(|w| w == v))
        .map(|(v, _)| v)
        .collect();
    mine.sort();
    for v in mine.into_iter().rev() {
        let Some(body) = site.get(&layout::claim(scope, &v, name))? else {
            continue;
        };
        let same = serde_json::from_slice::<serde_json::Value>(&body)
            .is_ok_and(|c| c["sha256"] == serde_json::json!(local));
        if same && let Ok(body) = String::from_utf8(body) {
            return Ok(Some((v, body)));
        }
    }
    Ok(None)
}

/// A unique claim body: host, process, thread and time (read back to tell claims apart), and
/// the files' digests (a later publish of the same files resumes in the claimed version).
fn claim_token(sha256: &BTreeMap<String, String>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    serde_json::json!({
        "host": host.trim(),
        "pid": std::process::id(),
        "thread": format!("{:?}", std::thread::current().id()),
        "nanos": nanos.to_string(),
        "claimed_at": now_rfc3339(),
        "sha256": sha256,
    })
    .to_string()
}

/// Claims `name` in `version`: a create-only write of the claim object, then (on a store
/// whose create-only is not atomic) a pause and a consistent read back, since two Swift PUTs
/// with `If-None-Match: *` can both pass the check: the newer write wins, and both writers
/// see which one did once the pause let both land. `false`: someone else holds the claim.
pub fn claim(
    site: &dyn ObjectStore,
    scope: &str,
    version: &Version,
    name: &str,
    token: &str,
) -> Result<bool, PublishError> {
    let object = layout::claim(scope, version, name);
    if site.put_bytes(&object, token.as_bytes(), "application/json", true)? == PutOutcome::Exists {
        return Ok(false);
    }
    if site.create_only_is_atomic() {
        return Ok(true);
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(site.get(&object)?.as_deref() == Some(token.as_bytes()))
}

/// The versions `name` may not go into: those holding it and those claimed for it.
pub fn versions_taken(
    site: &dyn ObjectStore,
    scope: &str,
    name: &str,
) -> Result<Vec<Version>, PublishError> {
    let mut taken = versions_holding(site, scope, name)?;
    let claims: Vec<String> = site
        .list(&layout::claims_prefix(scope))?
        .into_iter()
        .map(|o| o.name)
        .collect();
    taken.extend(
        layout::claims_in(scope, &claims)
            .into_iter()
            .filter(|(_, image)| image == name)
            .map(|(v, _)| v),
    );
    taken.sort();
    taken.dedup();
    Ok(taken)
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
        Some(b) => serde_json::from_slice(&b).map_err(|source| PublishError::Record {
            site: site.describe(),
            object: layout::current(scope),
            expected: "a JSON map of image names to versions",
            source,
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
    Err(PublishError::NotSettled {
        site: site.describe(),
        object: layout::current(scope),
        rounds: ROUNDS,
    })
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
        return Err(PublishError::NotHeld {
            site: site.describe(),
            version: format!("{scope}/versions/{version}"),
            name: name.to_string(),
        });
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
        if format == "manifest" || layout::is_extra_file(format) {
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
        return Err(PublishError::NotHeld {
            site: site.describe(),
            version: format!("{from_scope}/versions/{version}"),
            name: name.to_string(),
        });
    }
    let taken = versions_taken(site, to_scope, name)?;
    let digests = pointer_for(site, from_scope, name, version)?.sha256;
    if taken.contains(version) || !claim(site, to_scope, version, name, &claim_token(&digests))? {
        return Err(PublishError::VersionTaken {
            site: site.describe(),
            version: format!("{to_scope}/versions/{version}"),
            name: name.to_string(),
        });
    }
    if let Some(other) = taken.iter().find(|t| t.prefix_collides(version)) {
        let _ = site.delete(&layout::claim(to_scope, version, name));
        return Err(PublishError::PrefixCollision {
            site: site.describe(),
            version: format!("{to_scope}/versions/{version}"),
            other: other.to_string(),
            name: name.to_string(),
        });
    }
    site.put_marker(&layout::marker(to_scope, version))?;
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
    let mut emptied = std::collections::BTreeSet::new();
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
                site.delete(&layout::claim(scope, &v, &image))?;
                emptied.insert(v.clone());
            }
            removed.push((v.to_string(), image.clone()));
        }
    }
    // A version left with nothing in it loses its marker too (a puller never reads it again,
    // and a marker alone is what upstream's prune leaves behind as clutter).
    for v in emptied {
        let inside = format!("{}/", layout::marker(scope, &v));
        if site.list(&inside)?.is_empty() {
            site.delete(&layout::marker(scope, &v))?;
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

/// Refuses a store the sites could not read anonymously: a Swift container whose read ACL
/// does not grant `.r:*,.rlistings` (stores without an ACL pass).
pub fn check_public(site: &dyn ObjectStore) -> Result<(), PublishError> {
    match site.read_acl()? {
        Some((container, acl)) if !contract::acl_is_public(&acl) => Err(PublishError::NotPublic {
            site: site.describe(),
            container,
            acl: if acl.is_empty() { "none".into() } else { acl },
        }),
        _ => Ok(()),
    }
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
    let names = image.secret_names();
    Some(format!(
        "image `{}` holds secret inputs ({}) and {} is public: not published there \
         (publish it to a private site (`public = false`), or set \
         `public_with_secrets = true` on the image to allow it)",
        image.key,
        names.join(", "),
        site.name
    ))
}
