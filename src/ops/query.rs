//! `ccb query`: what the project declares and what ccb would do with it, as data. Nothing
//! here builds or writes anything but the caches of resolution.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use indexmap::IndexMap;

use super::build::PlanReport;
use super::{CommandError, Planned, Session};
use crate::element::view::{Overwrite, PackageLists, Script, Skipped};
use crate::element::{self, ElementView, ForTarget, PHASES};
use crate::graph::{self, Action, ActionId, Kind, rdeps};
use crate::keydoc::Value;
use crate::label;
use crate::manifest::{Arch, Format, Image, Model};
use crate::store::Store;

/// Where elements are found beyond the project's own search path, and whether sources may
/// be fetched (for `-e` elements, which need no session).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub element_path: Vec<String>,
    pub offline: bool,
}

/// One image asked about (`query manifest|deps|hash|explain`): a word naming it (`//images:NAME`,
/// `NAME` or a published name) and the arches (all of its own when empty).
#[derive(Debug, Clone, Default)]
pub struct TargetQuery {
    pub target: String,
    pub arch: Vec<String>,
}

/// Exactly one image (any of its arches, or those asked for) from a word.
fn one_image<'m>(model: &'m Model, q: &TargetQuery) -> Result<&'m Image, CommandError> {
    let arches = label::parse_arches(&q.arch)?;
    let targets = label::resolve(model, std::slice::from_ref(&q.target), arches.as_ref())?;
    Ok(&model.images[&targets[0].image])
}

/// One image's targets with their graph (the session's plan): where deps, hash and explain
/// all start.
fn image_graph<'m>(
    session: &'m Session,
    q: &TargetQuery,
) -> Result<(&'m Image, Planned), CommandError> {
    let image = one_image(&session.model, q)?;
    let planned = session.plan(std::slice::from_ref(&q.target), &q.arch)?;
    Ok((image, planned))
}

/// One image target as `query targets` lists it.
#[derive(Debug, Serialize)]
pub struct TargetRow {
    pub label: String,
    pub key: String,
    pub name: String,
    /// Arch → published name.
    pub published: BTreeMap<Arch, String>,
    pub from: Option<String>,
    pub arch: Vec<Arch>,
    pub formats: Vec<Format>,
    pub baremetal_only: bool,
}

#[derive(Debug, Serialize)]
pub struct TargetsReport {
    pub version: u32,
    pub targets: Vec<TargetRow>,
}

/// The image targets to list (`query targets`).
#[derive(Debug, Clone, Default)]
pub struct TargetsListing {
    /// Only targets built for one of these arches (all when empty).
    pub arch: Vec<String>,
}

/// Every image target built for one of the arches asked for.
pub fn targets(model: &Model, q: &TargetsListing) -> Result<TargetsReport, CommandError> {
    let arches = label::parse_arches(&q.arch)?;
    let targets = model
        .images
        .values()
        .filter_map(|img| {
            let arch: Vec<Arch> = img
                .arch
                .iter()
                .copied()
                .filter(|x| arches.as_ref().is_none_or(|s| s.contains(x)))
                .collect();
            (!arch.is_empty()).then(|| TargetRow {
                label: format!("//images:{}", img.key),
                key: img.key.clone(),
                name: img.name.clone(),
                published: arch.iter().map(|a| (*a, img.published_name(*a))).collect(),
                from: img.from.as_ref().map(|p| format!("//images:{p}")),
                arch,
                formats: img.formats.clone(),
                baremetal_only: img.baremetal_only,
            })
        })
        .collect();
    Ok(TargetsReport {
        version: 1,
        targets,
    })
}

/// An image's manifest record after inheritance.
pub fn manifest<'m>(model: &'m Model, q: &TargetQuery) -> Result<&'m Image, CommandError> {
    one_image(model, q)
}

/// What `query elements` expands: a target's elements, or elements named alone (`-e`, as
/// DIB's element-info: nothing implicit added).
#[derive(Debug, Clone, Default)]
pub struct ElementsRequest {
    pub target: Option<String>,
    pub elements: Vec<String>,
    pub arch: Option<String>,
    /// `K=V` declarations for environment.d and package conditions.
    pub env: Vec<String>,
    pub scope: Scope,
}

/// An expanded element set: its closure and the merged view, phases in DIB's order.
#[derive(Debug, Serialize)]
pub struct ElementsReport {
    pub elements: Vec<String>,
    /// Phase → script names.
    pub phases: IndexMap<String, Vec<String>>,
    /// environment.d file names in sourcing order.
    pub environment: Vec<String>,
    pub packages: BTreeMap<String, PackageLists>,
    /// Phase → scripts (name, element, path).
    pub scripts: IndexMap<String, Vec<Script>>,
    pub environment_files: Vec<Script>,
    pub env: BTreeMap<String, String>,
    pub overwrites: Vec<Overwrite>,
    pub skipped: Vec<Skipped>,
    pub block_device: Option<BlockDevice>,
    /// The view the fields above come from, for text.
    #[serde(skip)]
    pub view: ElementView,
}

/// The element and file of the block-device layout.
#[derive(Debug, Serialize)]
pub struct BlockDevice {
    pub element: String,
    pub file: String,
}

impl ElementsReport {
    fn new(elements: Vec<String>, view: ElementView) -> Self {
        let scripts: IndexMap<String, Vec<Script>> = PHASES
            .iter()
            .filter_map(|p| view.phases.get(*p).map(|s| (p.to_string(), s.clone())))
            .collect();
        Self {
            elements,
            phases: scripts
                .iter()
                .map(|(p, s)| (p.clone(), s.iter().map(|s| s.name.clone()).collect()))
                .collect(),
            environment: view.environment.iter().map(|s| s.name.clone()).collect(),
            packages: view.packages.clone(),
            scripts,
            environment_files: view.environment.clone(),
            env: view.env.clone(),
            overwrites: view.overwrites.clone(),
            skipped: view.skipped.clone(),
            block_device: view
                .block_device
                .as_ref()
                .map(|(element, file)| BlockDevice {
                    element: element.clone(),
                    file: file.clone(),
                }),
            view,
        }
    }
}

/// `K=V` declarations of `--env`.
fn declared(env: &[String]) -> Result<BTreeMap<String, String>, CommandError> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CommandError::usage(format!("--env expects K=V, got `{kv}`")))
        })
        .collect()
}

fn parse_arch(arch: &Option<String>) -> Result<Option<Arch>, CommandError> {
    match arch {
        Some(s) => Ok(Some(
            Arch::parse(s).ok_or_else(|| label::LabelError::BadArch(s.clone()))?,
        )),
        None => Ok(None),
    }
}

/// Expands a target's elements (`req.target` names it) with the session's resolver.
pub fn target_elements(
    session: &Session,
    target: &str,
    req: &ElementsRequest,
) -> Result<ElementsReport, CommandError> {
    let declared = declared(&req.env)?;
    let q = TargetQuery {
        target: target.to_string(),
        arch: parse_arch(&req.arch)?
            .map(|a| vec![a.to_string()])
            .unwrap_or_default(),
    };
    let image = one_image(&session.model, &q)?;
    let targets = session.targets(std::slice::from_ref(&q.target), &q.arch)?;
    let arch = targets[0].arch;
    let mut env = image.env.clone();
    env.extend(declared);
    let r = session
        .resolver
        .resolve(
            &element::requested_elements(image),
            arch,
            Some(&image.published_name(arch)),
            &env,
            false,
        )
        .map_err(|e| ForTarget::new(Some(targets[0].to_string()), e))?;
    Ok(ElementsReport::new(r.elements, r.view))
}

/// Expands the `-e` elements alone, as DIB's element-info (`model` and `root` when inside a
/// project: its search path).
pub fn named_elements(
    model: Option<&Model>,
    root: Option<&Path>,
    store: Option<&Store>,
    req: &ElementsRequest,
    warn: &mut dyn FnMut(&str),
) -> Result<ElementsReport, CommandError> {
    let declared = declared(&req.env)?;
    let arch = parse_arch(&req.arch)?.unwrap_or(Arch::Amd64);
    let path = element::project_search_path(model, root, &req.scope.element_path, store, warn)
        .map_err(|e| ForTarget::new(None, e))?;
    let closure = element::expand(&path, &req.elements).map_err(|e| ForTarget::new(None, e))?;
    let dirs: Vec<&element::ElementDir> = closure.iter().filter_map(|n| path.get(n)).collect();
    let mut env = element::engine_env(arch, None, &closure);
    env.extend(declared);
    let view = ElementView::build(&dirs, &env).map_err(|e| ForTarget::new(None, e))?;
    Ok(ElementsReport::new(closure, view))
}

/// An action as listings name it.
#[derive(Debug, Serialize)]
pub struct ActionRef {
    pub id: String,
    pub kind: Kind,
    pub key: String,
}

impl From<&Action> for ActionRef {
    fn from(a: &Action) -> Self {
        Self {
            id: a.id.to_string(),
            kind: a.kind,
            key: a.key.clone(),
        }
    }
}

/// What one arch's build of a target needs.
#[derive(Debug, Serialize)]
pub struct DepsBuild {
    pub arch: Arch,
    pub elements: Vec<String>,
    pub artifacts: Vec<String>,
    /// Locked source → commit.
    pub sources: BTreeMap<String, String>,
    /// The actions the disk needs, in graph order.
    pub actions: Vec<ActionRef>,
}

#[derive(Debug, Serialize)]
pub struct DepsReport {
    pub target: String,
    pub parents: Vec<String>,
    pub builds: Vec<DepsBuild>,
}

pub fn deps(session: &Session, q: &TargetQuery) -> Result<DepsReport, CommandError> {
    let model = &session.model;
    let (image, Planned { targets, graph, .. }) = image_graph(session, q)?;
    let mut parents = Vec::new();
    let mut cur = image.from.clone();
    while let Some(p) = cur {
        parents.push(format!("//images:{p}"));
        cur = model.images[&p].from.clone();
    }
    let builds = targets
        .iter()
        .map(|t| {
            let r = &graph.resolved[&(t.image.clone(), t.arch)];
            let disk = ActionId::disk(&t.image, t.arch).to_string();
            let sources = match graph.get(&disk).and_then(|d| d.doc.get("sources")) {
                Some(Value::Map(m)) => m.clone(),
                _ => BTreeMap::new(),
            };
            DepsBuild {
                arch: t.arch,
                elements: r.elements.clone(),
                artifacts: image
                    .base_artifacts
                    .values()
                    .chain(image.artifacts.values())
                    .map(|a| model.artifact_key(a, t.arch))
                    .collect(),
                sources,
                actions: graph
                    .closure(&disk)
                    .into_iter()
                    .map(ActionRef::from)
                    .collect(),
            }
        })
        .collect();
    Ok(DepsReport {
        target: format!("//images:{}", image.key),
        parents,
        builds,
    })
}

/// A target that depends on what was asked about, and through which of its actions.
#[derive(Debug, Serialize)]
pub struct Dependent {
    pub target: String,
    pub arch: Arch,
    pub actions: Vec<String>,
    /// `//images:NAME (arch)`, for text.
    #[serde(skip)]
    pub shown: String,
}

#[derive(Debug, Serialize)]
pub struct RdepsReport {
    pub of: String,
    pub dependents: Vec<Dependent>,
}

/// What `query rdeps` asks about.
#[derive(Debug, Clone, Default)]
pub struct RdepsQuery {
    /// A target, `element:NAME`, `artifact:NAME` or `source:NAME`.
    pub of: String,
}

/// The targets that depend on what the query names.
pub fn rdeps(session: &Session, q: &RdepsQuery) -> Result<RdepsReport, CommandError> {
    let what = q.of.as_str();
    let model = &session.model;
    let resolver = &session.resolver;
    let Planned {
        targets: all,
        graph,
        ..
    } = session.plan(&[], &[])?;
    let unknown = |name: &str, known: Vec<String>| {
        CommandError::from_diag(label::LabelError::Unknown {
            word: what.to_string(),
            help: crate::diag::did_you_mean(name, &known),
        })
    };
    let input = if let Some(name) = what.strip_prefix("element:") {
        if resolver.path.get(name).is_none() {
            return Err(CommandError::from_diag(element::ElementError::NotFound {
                name: name.to_string(),
                wanted_by: None,
                help: crate::diag::did_you_mean(name, &resolver.path.names()),
            }));
        }
        rdeps::Input::Element(name.to_string())
    } else if let Some(name) = what.strip_prefix("artifact:") {
        if !model.artifacts.contains_key(name) && !model.per_arch.contains_key(name) {
            let mut known: Vec<String> = model.artifacts.keys().cloned().collect();
            known.extend(model.per_arch.keys().cloned());
            return Err(unknown(name, known));
        }
        rdeps::Input::Artifact(name.to_string())
    } else if let Some(name) = what.strip_prefix("source:") {
        if !model.sources.contains_key(name) {
            return Err(unknown(name, model.sources.keys().cloned().collect()));
        }
        rdeps::Input::Source(name.to_string())
    } else {
        rdeps::Input::Images(label::resolve(model, &[what.to_string()], None)?)
    };
    let dependents = rdeps::rdeps(&graph, resolver, &all, &input)
        .into_iter()
        .map(|(t, actions)| Dependent {
            target: t.label(),
            arch: t.arch,
            shown: t.to_string(),
            actions,
        })
        .collect();
    Ok(RdepsReport {
        of: what.to_string(),
        dependents,
    })
}

#[derive(Debug, Serialize)]
pub struct GraphReport {
    pub version: u32,
    pub actions: Vec<Action>,
}

/// Targets asked about (`query graph`): words (every image when none) and arches.
#[derive(Debug, Clone, Default)]
pub struct TargetsQuery {
    pub targets: Vec<String>,
    pub arch: Vec<String>,
}

/// The action graph of the targets, publish actions included.
pub fn graph(session: &Session, q: &TargetsQuery) -> Result<GraphReport, CommandError> {
    let planned = session.plan_with_publish(&q.targets, &q.arch)?;
    Ok(GraphReport {
        version: 1,
        actions: planned.graph.actions,
    })
}

/// An action's key and the document it hashes.
#[derive(Debug, Serialize)]
pub struct Hashed {
    pub id: String,
    pub key: String,
    pub document: Vec<(String, Value)>,
}

#[derive(Debug, Serialize)]
pub struct HashReport {
    pub actions: Vec<Hashed>,
}

/// The keys and key documents of a target's own actions.
pub fn hash(session: &Session, q: &TargetQuery) -> Result<HashReport, CommandError> {
    let (_, Planned { targets, graph, .. }) = image_graph(session, q)?;
    let actions = targets
        .iter()
        .flat_map(|t| graph.actions_of(t))
        .map(|a| Hashed {
            id: a.id.to_string(),
            key: a.key.clone(),
            document: a.doc.fields.clone(),
        })
        .collect();
    Ok(HashReport { actions })
}

/// Every action a target's disk needs, with whether it would run and why (for a layer that
/// reruns, the step checkpoint it would start from).
pub fn explain(session: &Session, q: &TargetQuery) -> Result<PlanReport, CommandError> {
    let (_, Planned { targets, graph, .. }) = image_graph(session, q)?;
    let store = session.store;
    let mut rows = Vec::new();
    for t in &targets {
        let disk = ActionId::disk(&t.image, t.arch).to_string();
        for act in graph.closure(&disk) {
            let mut status = graph::status(store, act);
            if let graph::Status::ToRun { reasons } = &mut status
                && let Some(line) = crate::action::checkpoint::explain(
                    &session.model,
                    &graph,
                    &session.resolver,
                    store,
                    act,
                )
            {
                reasons.push(line);
            }
            rows.push((act, status));
        }
    }
    Ok(PlanReport::new(rows))
}
