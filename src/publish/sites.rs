//! Opening the sites of the manifests: a directory, or a Swift container through clouds.yaml
//! and Keystone. `ccb publish`, `ccb versions`, `ccb inspect --site` and artifacts kept in a
//! site's object store all open them here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::{Model, Site, SiteKind};
use crate::publish::{ObjectStore, clouds, keystone, local::LocalSite, swift::SwiftSite};

/// How to upload to Swift sites.
#[derive(Debug, Clone)]
pub struct SwiftSettings {
    /// Files above this size are uploaded as Static Large Objects in segments of this size.
    pub segment_size: String,
    /// Segments uploaded at once.
    pub jobs: usize,
}

impl Default for SwiftSettings {
    fn default() -> Self {
        Self {
            segment_size: "1GiB".into(),
            jobs: 4,
        }
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SiteError {
    #[error("unknown site `{wanted}` (known: {known})")]
    #[diagnostic(code(ccb::publish::unknown_site))]
    Unknown { wanted: String, known: String },
    #[error("site `{site}` is not a Swift site: artifacts can name objects of Swift sites only")]
    #[diagnostic(code(ccb::publish::not_swift))]
    NotSwift { site: String },
    #[error("--segment-size {0}: expected bytes or a size such as 64MiB")]
    #[diagnostic(code(ccb::publish::segment_size))]
    SegmentSize(String),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Open(Box<dyn miette::Diagnostic + Send + Sync>),
}

impl SiteError {
    pub(crate) fn open(e: impl miette::Diagnostic + Send + Sync + 'static) -> Self {
        SiteError::Open(Box::new(e))
    }

    /// A mistake on the command line (an unknown site, a bad size), not a failure to connect.
    pub fn is_usage(&self) -> bool {
        matches!(self, SiteError::Unknown { .. } | SiteError::SegmentSize(_))
    }
}

/// A project that declares no site publishes to `out/publish` (a local site), so `ccb publish`
/// works with no cloud at all.
pub fn with_default_site(model: &mut Model) {
    if model.sites.is_empty() {
        model.sites.insert(
            "local".into(),
            Site {
                name: "Local directory".into(),
                baremetal: true,
                formats: vec![crate::manifest::Format::Qcow2, crate::manifest::Format::Raw],
                kind: SiteKind::Local,
                cloud: None,
                container: "chameleon-supported-images".into(),
                region: None,
                path: Some("out/publish".into()),
                public: false,
            },
        );
    }
}

/// Finds a site by key or display name.
pub fn find_site<'m>(model: &'m Model, wanted: &str) -> Result<(&'m String, &'m Site), SiteError> {
    model
        .sites
        .iter()
        .find(|(k, s)| *k == wanted || s.name == wanted)
        .ok_or_else(|| {
            let known: Vec<&str> = model.sites.keys().map(String::as_str).collect();
            SiteError::Unknown {
                wanted: wanted.to_string(),
                known: known.join(", "),
            }
        })
}

/// Opens a site's store: its directory, or its Swift container through clouds.yaml.
pub fn open_site(
    model: &Model,
    key: &str,
    site: &Site,
    swift: &SwiftSettings,
) -> Result<Box<dyn ObjectStore>, SiteError> {
    match site.kind {
        SiteKind::Local => {
            let path = site.path.as_deref().unwrap_or("out/publish");
            let root = if Path::new(path).is_absolute() {
                PathBuf::from(path)
            } else {
                model.root.join(path)
            };
            Ok(Box::new(LocalSite::new(root).map_err(SiteError::open)?))
        }
        SiteKind::Swift => {
            let segment_size = crate::units::parse_size(&swift.segment_size)
                .filter(|n| *n > 0)
                .ok_or_else(|| SiteError::SegmentSize(swift.segment_size.clone()))?;
            let cloud = clouds::load(site.cloud.as_deref(), &clouds::Env::from_process())
                .map_err(SiteError::open)?;
            let session =
                keystone::Session::new(cloud, site.region.clone()).map_err(SiteError::open)?;
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
                .map_err(SiteError::open)?,
            ))
        }
    }
}

/// Opens a site by key or name with the default Swift settings (`ccb inspect --site`).
pub fn open_site_by_name(
    model: &mut Model,
    wanted: &str,
) -> Result<Box<dyn ObjectStore>, SiteError> {
    with_default_site(model);
    let (key, site) = find_site(model, wanted)?;
    open_site(model, key, site, &SwiftSettings::default())
}

/// Opens the Swift objects artifacts name (`swift = { site, container, object }`) through the
/// site's credentials; each artifact opens its own session, only when it must be fetched.
pub fn swift_opener(
    model: &Model,
) -> impl Fn(
    &crate::manifest::SwiftObject,
) -> Result<Arc<dyn crate::readat::ReadAt>, Box<dyn std::error::Error + Send + Sync>>
+ Send
+ Sync
+ use<> {
    let model = model.clone();
    move |object| {
        let (key, site) = find_site(&model, &object.site)?;
        if site.kind != SiteKind::Swift {
            return Err(SiteError::NotSwift { site: key.clone() }.into());
        }
        let mut site = site.clone();
        site.container = object.container.clone();
        let swift = SwiftSettings {
            segment_size: "1GiB".into(),
            jobs: 1,
        };
        let store = open_site(&model, key, &site, &swift)?;
        Ok(store.open_read(&object.object)?)
    }
}
