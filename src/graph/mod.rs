//! The build graph: actions, their key documents and keys, the plan and `explain`.
//!
//! For each image and arch:
//! - `base` (root images only): the root filesystem from `root.d`, made by the elements that
//!   have a `root.d` (the OS elements), under the environment of those elements alone, so
//!   editing a Chameleon element never re-runs debootstrap;
//! - `layer`: phases extra-data → post-root of the image's own elements, on top of `base`, or of
//!   the parent image's `layer` for an image with `from` (its closure minus its parent's);
//! - `disk`: block-device → cleanup over the full closure, conversion to the formats;
//! - `fetch`: one per artifact an image uses, keyed by the artifact's pinned digest;
//! - `publish` (in `query graph` only): per site; never cached.
//!
//! A key is the blake3 of the action's key document (see [`crate::keydoc`]); documents hold
//! element digests, the environment, package lists, artifact digests and the parent's key,
//! never an absolute path, a timestamp or a host detail.

pub mod rdeps;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::element::{ForTarget, Resolved, Resolver, requested_elements};
use crate::keydoc::KeyDoc;
use crate::label::Target;
use crate::manifest::{Arch, Model};
use crate::store::{self, Layout, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Fetch,
    Base,
    Layer,
    Disk,
    Publish,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fetch => "fetch",
            Kind::Base => "base",
            Kind::Layer => "layer",
            Kind::Disk => "disk",
            Kind::Publish => "publish",
        }
    }
}

/// What an action makes: the parts of its [`ActionId`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Made {
    Fetch {
        artifact: String,
    },
    Base {
        image: String,
        arch: Arch,
    },
    Layer {
        image: String,
        arch: Arch,
    },
    Disk {
        image: String,
        arch: Arch,
    },
    Publish {
        image: String,
        arch: Arch,
        site: String,
    },
}

/// An action's identity, stable across builds: its kind and what it makes. Its string form
/// (`layer:debian12:amd64`, `fetch:cuda-runfile`, `publish:debian12:amd64:uc`) is spelled
/// and parsed here only; it is what JSON reports and records hold (serde writes and reads
/// that form), and what the id reads as where a `&str` is wanted (logs, maps by id).
#[derive(Debug, Clone)]
pub struct ActionId {
    made: Made,
    text: String,
}

impl ActionId {
    fn new(made: Made) -> Self {
        let text = match &made {
            Made::Fetch { artifact } => format!("fetch:{artifact}"),
            Made::Base { image, arch } => format!("base:{image}:{arch}"),
            Made::Layer { image, arch } => format!("layer:{image}:{arch}"),
            Made::Disk { image, arch } => format!("disk:{image}:{arch}"),
            Made::Publish { image, arch, site } => format!("publish:{image}:{arch}:{site}"),
        };
        Self { made, text }
    }

    pub fn made(&self) -> &Made {
        &self.made
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn kind(&self) -> Kind {
        match self.made {
            Made::Fetch { .. } => Kind::Fetch,
            Made::Base { .. } => Kind::Base,
            Made::Layer { .. } => Kind::Layer,
            Made::Disk { .. } => Kind::Disk,
            Made::Publish { .. } => Kind::Publish,
        }
    }

    /// The image and arch of any action but a fetch.
    pub fn image_arch(&self) -> Option<(&str, Arch)> {
        match &self.made {
            Made::Fetch { .. } => None,
            Made::Base { image, arch }
            | Made::Layer { image, arch }
            | Made::Disk { image, arch }
            | Made::Publish { image, arch, .. } => Some((image, *arch)),
        }
    }

    /// The artifact a fetch action fetches.
    pub fn artifact(&self) -> Option<&str> {
        match &self.made {
            Made::Fetch { artifact } => Some(artifact),
            _ => None,
        }
    }

    pub fn base(image: &str, arch: Arch) -> Self {
        Self::new(Made::Base {
            image: image.to_string(),
            arch,
        })
    }

    pub fn disk(image: &str, arch: Arch) -> Self {
        Self::new(Made::Disk {
            image: image.to_string(),
            arch,
        })
    }

    pub fn layer(image: &str, arch: Arch) -> Self {
        Self::new(Made::Layer {
            image: image.to_string(),
            arch,
        })
    }

    pub fn fetch(artifact: &str) -> Self {
        Self::new(Made::Fetch {
            artifact: artifact.to_string(),
        })
    }

    pub fn publish(image: &str, arch: Arch, site: &str) -> Self {
        Self::new(Made::Publish {
            image: image.to_string(),
            arch,
            site: site.to_string(),
        })
    }

    /// Reads an id's string form; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        let kind = [
            Kind::Fetch,
            Kind::Base,
            Kind::Layer,
            Kind::Disk,
            Kind::Publish,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
        Self::parse_of(kind, rest)
    }

    /// Reads the part after `kind:` of an id of that kind (what a checkpoint id embeds).
    pub fn parse_of(kind: Kind, rest: &str) -> Option<Self> {
        let image_arch = |rest: &str| -> Option<(String, Arch, Option<String>)> {
            let mut parts = rest.splitn(3, ':');
            let image = parts.next().filter(|i| !i.is_empty())?.to_string();
            let arch = parts.next()?;
            let arch = Arch::ALL.into_iter().find(|a| a.as_str() == arch)?;
            Some((image, arch, parts.next().map(str::to_string)))
        };
        Some(Self::new(match kind {
            Kind::Fetch if !rest.is_empty() => Made::Fetch {
                artifact: rest.to_string(),
            },
            Kind::Fetch => return None,
            Kind::Base | Kind::Layer | Kind::Disk => {
                let (image, arch, None) = image_arch(rest)? else {
                    return None;
                };
                match kind {
                    Kind::Base => Made::Base { image, arch },
                    Kind::Layer => Made::Layer { image, arch },
                    _ => Made::Disk { image, arch },
                }
            }
            Kind::Publish => {
                let (image, arch, Some(site)) = image_arch(rest)? else {
                    return None;
                };
                Made::Publish { image, arch, site }
            }
        }))
    }
}

impl std::fmt::Display for ActionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::ops::Deref for ActionId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for ActionId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

// Equality, order and hash are the string form's, so maps keyed by id answer a `&str`.
impl std::borrow::Borrow<str> for ActionId {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl PartialEq for ActionId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ActionId {}

impl PartialOrd for ActionId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ActionId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for ActionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl PartialEq<str> for ActionId {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for ActionId {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<String> for ActionId {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

impl From<ActionId> for String {
    fn from(id: ActionId) -> String {
        id.text
    }
}

impl Serialize for ActionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for ActionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ActionId::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not an action id")))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// A stable identity across builds: `layer:debian12:amd64`, `fetch:cuda-runfile`.
    pub id: ActionId,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    pub key: String,
    /// Ids of the actions this one needs first.
    pub deps: Vec<ActionId>,
    /// Its inputs include a secret (a secret input, a `secret` artifact, or a layer holding
    /// one): it builds here and stays here, never taken from or stored in a remote cache nor
    /// sent to a remote builder. Its presence is keyed, never its bytes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    #[serde(skip)]
    pub doc: KeyDoc,
}

/// Why a secret-holding action is neither shared nor taken from a cache, as reports say it.
pub const NOT_SHARED: &str = "holds a secret: not shared";

impl Action {
    /// The pinned digest of a `fetch` action's artifact.
    pub fn artifact_sha256(&self) -> Option<&str> {
        match self.doc.get("sha256") {
            Some(crate::keydoc::Value::Str(d)) if self.kind == Kind::Fetch => Some(d),
            _ => None,
        }
    }

    /// The artifact key of a `fetch` action.
    pub fn artifact_name(&self) -> Option<String> {
        self.id.artifact().map(str::to_string)
    }
}

/// Actions in dependency order (every action after its dependencies), and the element
/// resolution of every (image, arch) involved.
pub struct Graph {
    pub actions: Vec<Action>,
    pub resolved: BTreeMap<(String, Arch), Resolved>,
    /// Each layer's own elements (see [`Graph::layer_elements`]).
    layer_elements: BTreeMap<(String, Arch), Vec<String>>,
}

/// One (image, arch) while its actions are added.
struct ImageAt<'a> {
    model: &'a Model,
    resolver: &'a Resolver<'a>,
    image: &'a crate::manifest::Image,
    arch: Arch,
    resolved: &'a Resolved,
}

/// What a layer stacks on: the base or the parent's layer, and the elements it adds.
struct Foundation<'a> {
    id: ActionId,
    key: String,
    own: &'a [String],
}

/// The element resolution of every (image, arch) wanted. They are independent of each other
/// (a child resolves its own closure, parents' elements included), and a cold one sources
/// environment.d through bash, so they run in parallel.
fn resolve_all(
    model: &Model,
    resolver: &Resolver,
    wanted: &BTreeSet<(String, Arch)>,
) -> BTreeMap<(String, Arch), Result<Resolved, ForTarget>> {
    use rayon::prelude::*;
    wanted
        .par_iter()
        .map(|(key, arch)| {
            let image = &model.images[key];
            let resolved = resolver
                .resolve(
                    &requested_elements(image),
                    *arch,
                    Some(&image.published_name(*arch)),
                    &image.env,
                    image.from.is_none(),
                )
                .map_err(|e| ForTarget::new(Some(format!("//images:{key} ({arch})")), e));
            ((key.clone(), *arch), resolved)
        })
        .collect()
}

/// The targets' (image, arch) pairs and their parents'.
fn with_parents(model: &Model, targets: &[Target]) -> BTreeSet<(String, Arch)> {
    let mut wanted = BTreeSet::new();
    for t in targets {
        let mut cur = Some(t.image.clone());
        while let Some(key) = cur {
            wanted.insert((key.clone(), t.arch));
            cur = model.images[&key].from.clone();
        }
    }
    wanted
}

fn digests_of(resolved: &Resolved, names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|n| resolved.digests.get(n).map(|d| (n.clone(), d.clone())))
        .collect()
}

/// The locked sources that supply any of `names`: (name → commit, name → tree).
fn sources_of(
    model: &Model,
    resolver: &Resolver,
    names: &[String],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut commits, mut trees) = (BTreeMap::new(), BTreeMap::new());
    for n in names {
        let Some(source) = resolver.path.get(n).and_then(|d| d.source.as_ref()) else {
            continue;
        };
        if let Some(locked) = model.pins.sources.get(source) {
            commits.insert(source.clone(), locked.commit.clone());
            trees.insert(source.clone(), locked.tree.clone());
        }
    }
    (commits, trees)
}

/// The provenance record's fields a disk's key covers (see [`crate::action::provenance`]).
fn provenance_of(model: &Model, image: &crate::manifest::Image) -> BTreeMap<String, String> {
    let origin = model.origin();
    let p = &image.provenance;
    [
        ("build-distro", p.distro.clone().unwrap_or_default()),
        ("build-release", p.release.clone().unwrap_or_default()),
        ("build-variant", p.variant.clone().unwrap_or_default()),
        ("build-repo", origin.repo.clone()),
        ("build-repo-commit", origin.commit.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn package_map(view: &crate::element::ElementView) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (phase, lists) in &view.packages {
        if !lists.install.is_empty() {
            out.insert(format!("{phase} install"), lists.install.join(" "));
        }
        if !lists.uninstall.is_empty() {
            out.insert(format!("{phase} uninstall"), lists.uninstall.join(" "));
        }
    }
    out
}

impl Graph {
    pub fn get(&self, id: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.id == id)
    }

    /// Builds the graph for `targets` and everything they need (parents' actions included).
    pub fn build(
        model: &Model,
        resolver: &Resolver,
        targets: &[Target],
        with_publish: bool,
    ) -> Result<Self, ForTarget> {
        let wanted = with_parents(model, targets);
        let mut graph = Graph {
            actions: Vec::new(),
            resolved: BTreeMap::new(),
            layer_elements: BTreeMap::new(),
        };
        let mut resolutions = resolve_all(model, resolver, &wanted);
        let mut fetched: BTreeSet<String> = BTreeSet::new();
        for image in model.images_parents_first() {
            for &arch in &image.arch {
                let Some(resolved) = resolutions.remove(&(image.key.clone(), arch)) else {
                    continue;
                };
                let resolved = resolved?;
                let at = ImageAt {
                    model,
                    resolver,
                    image,
                    arch,
                    resolved: &resolved,
                };
                let (artifact_digests, fetch_ids) =
                    graph.add_fetches(&at, &image.artifacts, &mut fetched);
                let (parent_id, parent_key, own) = graph.add_foundation(&at, &mut fetched);
                let layer_key = graph.add_layer(
                    &at,
                    Foundation {
                        id: parent_id,
                        key: parent_key,
                        own: &own,
                    },
                    artifact_digests,
                    fetch_ids,
                );
                let disk_id = graph.add_disk(&at, layer_key);
                if with_publish {
                    graph.add_publishes(&at, &disk_id);
                }
                graph.layer_elements.insert((image.key.clone(), arch), own);
                graph.resolved.insert((image.key.clone(), arch), resolved);
            }
        }
        Ok(graph)
    }

    /// The elements a `layer` action runs (and its key digests): the image's closure, less
    /// its parent's for an image with `from`. Computed once, in [`Graph::build`].
    pub fn layer_elements(&self, image: &str, arch: Arch) -> Option<&[String]> {
        self.layer_elements
            .get(&(image.to_string(), arch))
            .map(Vec::as_slice)
    }

    /// A `fetch` action for each artifact of `vars` (variable → artifact, the image's
    /// `artifacts` or `base_artifacts`) not fetched yet, its arch's file for one declared per
    /// arch; the artifacts' digests (as the key names them) and the ids of their fetch actions.
    fn add_fetches(
        &mut self,
        at: &ImageAt,
        vars: &BTreeMap<String, String>,
        fetched: &mut BTreeSet<String>,
    ) -> (BTreeMap<String, String>, Vec<ActionId>) {
        let mut artifact_digests = BTreeMap::new();
        let mut fetch_ids = Vec::new();
        for (var, name) in vars {
            let art_key = at.model.artifact_key(name, at.arch);
            let art = &at.model.artifacts[&art_key];
            // Named by the artifact, so `explain` says which one changed.
            // An artifact not pinned yet (the build that runs it adds the pin) is named
            // by its URL, so that two of them never share a key in a plan.
            let digest = if crate::lock::follows_latest(&art.sha256) && art.secret {
                // A site's URL of a licensed file (maybe a signed temp URL) stays out of keys.
                format!("latest secret artifact {art_key}")
            } else if crate::lock::follows_latest(&art.sha256) {
                // As the lock names it: a temp URL's signature or a password is no identity of
                // the content (the pin is), and keys reach `query hash`, `explain` and the
                // store's records.
                format!(
                    "latest {}",
                    crate::lock::artifact_url(art.url.as_deref().unwrap_or_default())
                )
            } else {
                art.sha256.clone()
            };
            artifact_digests.insert(format!("{art_key} ({var})"), digest.clone());
            let id = ActionId::fetch(&art_key);
            if fetched.insert(art_key.clone()) {
                let doc = KeyDoc::new().str("action", "fetch").str("sha256", digest);
                self.actions.push(Action {
                    id: id.clone(),
                    kind: Kind::Fetch,
                    image: None,
                    arch: None,
                    key: doc.key(),
                    deps: vec![],
                    secret: art.secret,
                    doc,
                });
            }
            fetch_ids.push(id);
        }
        (artifact_digests, fetch_ids)
    }

    /// The layer's foundation: a `base` action for a root image, else the parent's layer.
    /// Returns its id, its key and the layer's own elements.
    fn add_foundation(
        &mut self,
        at: &ImageAt,
        fetched: &mut BTreeSet<String>,
    ) -> (ActionId, String, Vec<String>) {
        let (image, arch, resolved) = (at.image, at.arch, at.resolved);
        match &image.from {
            None => {
                let base = resolved.base.as_ref().expect("root images resolve a base");
                let (commits, trees) = sources_of(at.model, at.resolver, &base.elements);
                let (artifact_digests, fetch_ids) =
                    self.add_fetches(at, &image.base_artifacts, fetched);
                let doc = KeyDoc::new()
                    .str("action", "base")
                    .str("engine", crate::ENGINE_VERSION)
                    .str("arch", arch.as_str())
                    .map("elements", digests_of(resolved, &base.elements))
                    .map("environment", base.view.env.clone())
                    .map_if_any("sources", commits)
                    .map_if_any("source trees", trees)
                    .map_if_any("artifacts", artifact_digests);
                let id = ActionId::base(&image.key, arch);
                let key = doc.key();
                self.actions.push(Action {
                    id: id.clone(),
                    kind: Kind::Base,
                    image: Some(image.key.clone()),
                    arch: Some(arch),
                    key: key.clone(),
                    deps: fetch_ids,
                    secret: image
                        .base_artifacts
                        .values()
                        .any(|name| at.model.artifact_is_secret(name)),
                    doc,
                });
                (id, key, resolved.elements.clone())
            }
            Some(parent) => {
                let parent_resolved = &self.resolved[&(parent.clone(), arch)];
                let own: Vec<String> = resolved
                    .elements
                    .iter()
                    .filter(|e| !parent_resolved.elements.contains(e))
                    .cloned()
                    .collect();
                let id = ActionId::layer(parent, arch);
                let key = self.get(&id).map(|a| a.key.clone()).unwrap_or_default();
                (id, key, own)
            }
        }
    }

    /// The `layer` action; returns its key.
    fn add_layer(
        &mut self,
        at: &ImageAt,
        under: Foundation,
        artifact_digests: BTreeMap<String, String>,
        fetch_ids: Vec<ActionId>,
    ) -> String {
        let (image, arch, resolved) = (at.image, at.arch, at.resolved);
        let (commits, trees) = sources_of(at.model, at.resolver, under.own);
        let layer_doc = KeyDoc::new()
            .str("action", "layer")
            .str("engine", crate::ENGINE_VERSION)
            .str("arch", arch.as_str())
            .str("parent", under.key)
            .map("elements", digests_of(resolved, under.own))
            .map_if_any("sources", commits)
            .map_if_any("source trees", trees)
            .map("environment", resolved.view.env.clone())
            .map("packages", package_map(&resolved.view))
            .map("artifacts", artifact_digests)
            // A secret's presence, never its bytes (or where it is read from, which
            // differs between hosts).
            .map_if_any(
                "secrets",
                image
                    .secrets
                    .keys()
                    .map(|v| (v.clone(), "present".to_string()))
                    .collect(),
            );
        let layer_key = layer_doc.key();
        let mut deps = vec![under.id];
        deps.extend(fetch_ids);
        self.actions.push(Action {
            id: ActionId::layer(&image.key, arch),
            kind: Kind::Layer,
            image: Some(image.key.clone()),
            arch: Some(arch),
            key: layer_key.clone(),
            deps,
            secret: image.holds_secrets(),
            doc: layer_doc,
        });
        layer_key
    }

    /// The `disk` action over the layer; returns its id.
    fn add_disk(&mut self, at: &ImageAt, layer_key: String) -> ActionId {
        let (image, arch, resolved) = (at.image, at.arch, at.resolved);
        let disk_doc = KeyDoc::new()
            .str("action", "disk")
            .str("engine", crate::ENGINE_VERSION)
            .str("writer", crate::DISK_WRITER)
            .str("arch", arch.as_str())
            .str("layer", layer_key)
            .str("name", image.published_name(arch))
            .map("elements", resolved.digests.clone())
            .map_if_any(
                "sources",
                sources_of(at.model, at.resolver, &resolved.elements).0,
            )
            .map("environment", resolved.view.env.clone())
            .list(
                "formats",
                image
                    .formats
                    .iter()
                    .map(|f| f.as_str().to_string())
                    .collect(),
            )
            .str("size", image.size.clone().unwrap_or_else(|| "auto".into()))
            .str(
                "block-device",
                resolved
                    .view
                    .block_device
                    .as_ref()
                    .map(|(e, f)| format!("{e}/{f}"))
                    .unwrap_or_else(|| "none".into()),
            )
            // What the disk writes into /opt/chameleon/provenance.json (its date comes from
            // the layer and environment, covered above): a disk built at another commit holds
            // other bytes, so it has another key.
            .map("provenance", provenance_of(at.model, image));
        let disk_id = ActionId::disk(&image.key, arch);
        self.actions.push(Action {
            id: disk_id.clone(),
            kind: Kind::Disk,
            image: Some(image.key.clone()),
            arch: Some(arch),
            key: disk_doc.key(),
            deps: vec![ActionId::layer(&image.key, arch)],
            secret: image.holds_secrets(),
            doc: disk_doc,
        });
        disk_id
    }

    /// A `publish` action per site that takes one of the image's formats.
    fn add_publishes(&mut self, at: &ImageAt, disk_id: &ActionId) {
        let (image, arch) = (at.image, at.arch);
        let disk_key = self.get(disk_id).map(|a| a.key.clone()).unwrap_or_default();
        for (site_key, site) in &at.model.sites {
            if image.baremetal_only_for(arch) && !site.baremetal {
                continue;
            }
            let formats: Vec<String> = image
                .formats
                .iter()
                .filter(|f| site.formats.contains(f))
                .map(|f| f.as_str().to_string())
                .collect();
            if formats.is_empty() {
                continue;
            }
            let doc = KeyDoc::new()
                .str("action", "publish")
                .str("disk", disk_key.clone())
                .str("site", site_key.clone())
                .list("formats", formats);
            self.actions.push(Action {
                id: ActionId::publish(&image.key, arch, site_key),
                kind: Kind::Publish,
                image: Some(image.key.clone()),
                arch: Some(arch),
                key: doc.key(),
                deps: vec![disk_id.clone()],
                secret: image.holds_secrets(),
                doc,
            });
        }
    }

    /// The ids of the actions `id` needs, transitively, in graph order, `id` included.
    pub fn closure(&self, id: &str) -> Vec<&Action> {
        let mut need: BTreeSet<String> = BTreeSet::new();
        let mut stack = vec![id.to_string()];
        while let Some(cur) = stack.pop() {
            if need.insert(cur.clone())
                && let Some(a) = self.get(&cur)
            {
                stack.extend(a.deps.iter().map(ActionId::to_string));
            }
        }
        self.actions
            .iter()
            .filter(|a| need.contains(a.id.as_str()))
            .collect()
    }

    /// The actions of one target: its own (`base`, `layer`, `disk`, `publish`), not its parent's.
    pub fn actions_of(&self, target: &Target) -> Vec<&Action> {
        self.actions
            .iter()
            .filter(|a| a.image.as_deref() == Some(&target.image) && a.arch == Some(target.arch))
            .collect()
    }
}

/// What the store says about one action.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum Status {
    /// The store holds a result for this key (`remote`: another host built it; it came
    /// from the remote cache).
    Cached {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        remote: bool,
    },
    /// The action must run; `reasons` says why.
    ToRun { reasons: Vec<String> },
}

/// The record `explain` diffs against: the key document of the last build of an action id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastBuild {
    pub id: String,
    pub key: String,
    pub doc: KeyDoc,
    /// How long the build took: the scheduler's estimate for the next one.
    #[serde(default)]
    pub duration_ms: u64,
}

/// What the action record keeps of every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub phase: String,
    pub element: String,
    pub name: String,
    pub status: i32,
    pub duration_ms: u64,
}

/// `actions/<key>.json`: what the store knows about a built action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionRecord {
    pub id: String,
    pub key: String,
    pub kind: Kind,
    pub doc: KeyDoc,
    pub duration_ms: u64,
    /// Seconds since the epoch.
    pub built_at: u64,
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<store::TreeSummary>,
    /// The result came from the remote cache (another host built it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote: bool,
}

/// Records a finished build: the action cache entry, then the `last` record `explain` and the
/// scheduler read.
pub fn record_build(
    store: &Store,
    action: &Action,
    duration: std::time::Duration,
    steps: &[StepRecord],
    tree: &store::TreeSummary,
) -> Result<(), store::StoreError> {
    let duration_ms = duration.as_millis() as u64;
    let record = ActionRecord {
        id: action.id.to_string(),
        key: action.key.clone(),
        kind: action.kind,
        doc: action.doc.clone(),
        duration_ms,
        built_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        steps: steps.to_vec(),
        tree: Some(tree.clone()),
        remote: false,
    };
    store.write_json(&action_record_name(&action.key), &record)?;
    store.write_json(
        &last_record_name(&action.id),
        &LastBuild {
            id: action.id.to_string(),
            key: action.key.clone(),
            doc: action.doc.clone(),
            duration_ms,
        },
    )
}

/// Whether the store holds a finished result for this action's key. The records must read
/// back (a truncated or corrupt `layer.json` or action record is a miss, so the action is
/// rebuilt and the record replaced, instead of "cached" and then "not in the store").
pub fn is_cached(store: &Store, action: &Action) -> bool {
    store
        .read_json::<ActionRecord>(&action_record_name(&action.key))
        .is_some_and(|r| r.key == action.key)
        && match action.kind {
            Kind::Base | Kind::Layer => store
                .layer_meta(&action.key)
                .is_some_and(|m| m.key == action.key && store.layer_tree(&action.key).is_dir()),
            Kind::Disk => store
                .outputs_meta(&action.key)
                .is_some_and(|m| m.key == action.key && store.outputs_dir(&action.key).is_dir()),
            Kind::Fetch => action
                .artifact_sha256()
                .is_some_and(|d| crate::fetch::is_fetched(store, d)),
            _ => true,
        }
}

pub fn last_record_name(id: &str) -> String {
    Layout::last_record(&store::name_for(id))
}

pub fn action_record_name(key: &str) -> String {
    Layout::action_record(key)
}

/// Why an action would run: its inputs' changes since its last build, or "never built".
pub fn status(store: &Store, action: &Action) -> Status {
    if is_cached(store, action) {
        let remote = store
            .read_json::<ActionRecord>(&action_record_name(&action.key))
            .is_some_and(|r| r.remote);
        return Status::Cached { remote };
    }
    let reasons = match store.read_json::<LastBuild>(&last_record_name(&action.id)) {
        Some(last) => {
            let d = action.doc.diff(&last.doc);
            if d.is_empty() {
                vec!["its output is missing from the store".into()]
            } else {
                d
            }
        }
        None => vec!["never built".into()],
    };
    Status::ToRun { reasons }
}

/// The plan: every action in order with its status.
pub fn plan<'g>(graph: &'g Graph, store: &Store) -> Vec<(&'g Action, Status)> {
    graph
        .actions
        .iter()
        .filter(|a| a.kind != Kind::Publish)
        .map(|a| (a, status(store, a)))
        .collect()
}

#[cfg(test)]
mod action_id_tests {
    use super::{ActionId, Arch, Kind};

    #[test]
    fn an_action_id_reads_back_what_it_writes() {
        for id in [
            ActionId::fetch("cuda-runfile"),
            ActionId::base("debian12", Arch::Amd64),
            ActionId::layer("ubuntu24.04", Arch::Arm64),
            ActionId::disk("debian12", Arch::Amd64),
            ActionId::publish("debian12", Arch::Amd64, "uc"),
        ] {
            let parsed = ActionId::parse(id.as_str()).unwrap();
            assert_eq!(parsed.made(), id.made());
            assert_eq!(parsed, id);
            // JSON reports and records hold the string form.
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{id}\""));
            assert_eq!(serde_json::from_str::<ActionId>(&json).unwrap(), id);
        }
        assert!(serde_json::from_str::<ActionId>("\"disk:d:sparc\"").is_err());
        assert_eq!(ActionId::disk("d", Arch::Arm64).to_string(), "disk:d:arm64");
        assert_eq!(ActionId::fetch("a").kind(), Kind::Fetch);
    }

    #[test]
    fn strings_that_are_not_action_ids_do_not_parse() {
        for bad in [
            "",
            "disk",
            "disk:",
            "disk:d",
            "disk:d:sparc",
            "disk:d:amd64:x",
            "publish:d:amd64",
            "tarball:x",
            "fetch:",
        ] {
            assert_eq!(ActionId::parse(bad), None, "{bad}");
        }
    }
}
