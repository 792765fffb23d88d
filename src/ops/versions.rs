//! `ccb versions`: list, promote, roll back and prune the published versions of a site. Each
//! opens only the one site named; a listing of a directory site that does not exist yet finds
//! it empty and creates nothing.

use serde::Serialize;

use super::CommandError;
use super::publish::{parse_version, site_error};
use crate::label;
use crate::manifest::Model;
use crate::publish::sites::{self, SwiftSettings};
use crate::publish::{self, ObjectStore, VersionEntry, layout};

/// A site and a scope on it.
#[derive(Debug, Clone)]
pub struct At {
    /// A key of manifests/sites.ncl, or a site's name.
    pub site: String,
    pub scope: String,
}

/// One site opened: its key, its name and its objects.
struct Opened {
    key: String,
    name: String,
    store: Box<dyn ObjectStore>,
}

fn open(model: &Model, wanted: &str) -> Result<Opened, CommandError> {
    let (key, site) = sites::find_site(model, wanted).map_err(site_error)?;
    let store =
        sites::open_site(model, key, site, &SwiftSettings::default()).map_err(site_error)?;
    Ok(Opened {
        key: key.clone(),
        name: site.name.clone(),
        store,
    })
}

/// The model with the default site when the manifests declare none.
fn with_sites(mut model: Model) -> Model {
    sites::with_default_site(&mut model);
    model
}

/// A published name from a name or a target label.
fn image_name(model: &Model, given: &str) -> String {
    match label::resolve(model, &[given.to_string()], None) {
        Ok(t) if t.len() == 1 => model.images[&t[0].image].published_name(t[0].arch),
        _ => given.to_string(),
    }
}

#[derive(Debug, Serialize)]
pub struct VersionsList {
    pub version: u32,
    /// The site's key.
    pub site: String,
    pub scope: String,
    pub versions: Vec<VersionEntry>,
    /// The site's name, for text.
    #[serde(skip)]
    pub site_name: String,
}

pub fn list(model: Model, at: &At) -> Result<VersionsList, CommandError> {
    let model = with_sites(model);
    let site = open(&model, &at.site)?;
    let versions = publish::list_versions(site.store.as_ref(), &at.scope)?;
    Ok(VersionsList {
        version: 1,
        site: site.key,
        scope: at.scope.clone(),
        versions,
        site_name: site.name,
    })
}

#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub site: String,
    pub from: String,
    pub to: String,
    /// A published name or a target.
    pub image: String,
    pub version: String,
}

/// An image's version made live in a scope.
#[derive(Debug, Serialize)]
pub struct Live {
    pub image: String,
    pub scope: String,
    pub version: String,
}

pub fn promote(model: Model, req: &PromoteRequest) -> Result<Live, CommandError> {
    for s in [&req.from, &req.to] {
        if !layout::valid_scope(s) {
            return Err(CommandError::usage(format!(
                "scope `{s}` is not a valid scope"
            )));
        }
    }
    let version = parse_version(&req.version)?;
    let model = with_sites(model);
    let name = image_name(&model, &req.image);
    let site = open(&model, &req.site)?;
    publish::promote(site.store.as_ref(), &req.from, &req.to, &name, &version)?;
    Ok(Live {
        image: name,
        scope: req.to.clone(),
        version: version.to_string(),
    })
}

/// Which earlier version of an image to make live again, where.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub at: At,
    /// A published name or a target.
    pub image: String,
    pub version: String,
}

pub fn rollback(model: Model, req: &RollbackRequest) -> Result<Live, CommandError> {
    let at = &req.at;
    let version = parse_version(&req.version)?;
    let model = with_sites(model);
    let name = image_name(&model, &req.image);
    let site = open(&model, &at.site)?;
    publish::rollback(site.store.as_ref(), &at.scope, &name, &version)?;
    Ok(Live {
        image: name,
        scope: at.scope.clone(),
        version: version.to_string(),
    })
}

#[derive(Debug, Serialize)]
pub struct Pruned {
    pub dry_run: bool,
    pub keep: usize,
    /// (version, image) pairs removed, or that would be.
    pub removed: Vec<(String, String)>,
}

/// Which versions to remove: all but the newest `keep` of each image (and the live ones).
#[derive(Debug, Clone)]
pub struct PruneRequest {
    pub at: At,
    pub keep: usize,
    pub dry_run: bool,
}

pub fn prune(model: Model, req: &PruneRequest) -> Result<Pruned, CommandError> {
    let model = with_sites(model);
    let site = open(&model, &req.at.site)?;
    let removed = publish::prune(site.store.as_ref(), &req.at.scope, req.keep, req.dry_run)?;
    Ok(Pruned {
        dry_run: req.dry_run,
        keep: req.keep,
        removed,
    })
}
