//! `ccb query`: what the project declares and what ccb would do with it, as data. Nothing
//! here builds or writes anything but the caches of resolution.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::CommandError;
use crate::element::{self, ElementView, ForTarget, PHASES, Resolver};
use crate::graph::{self, Action, ActionId, Graph, Kind, Status, rdeps};
use crate::keydoc::Value;
use crate::label::{self, Target};
use crate::manifest::{Arch, Format, Image, Model};
use crate::store::Store;

/// Where elements are found beyond the project's own search path, and whether sources may
/// be fetched.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub element_path: Vec<String>,
    pub offline: bool,
}

fn resolver<'s>(
    model: &Model,
    store: &'s Store,
    scope: &Scope,
    warn: &mut dyn FnMut(&str),
) -> Result<Resolver<'s>, CommandError> {
    Ok(element::project_resolver(
        model,
        &scope.element_path,
        store,
        scope.offline,
        warn,
    )?)
}

/// Exactly one image (any of its arches, or those asked for) from a word.
fn one_image<'m>(
    model: &'m Model,
    word: &str,
    arch: &[String],
) -> Result<(&'m Image, Vec<Target>), CommandError> {
    let arches = label::parse_arches(arch)?;
    let targets = label::resolve(model, &[word.to_string()], arches.as_ref())?;
    Ok((&model.images[&targets[0].image], targets))
}

/// One image's targets with their graph: where deps, hash and explain all start.
struct ImageGraph<'m, 's> {
    image: &'m Image,
    targets: Vec<Target>,
    resolver: Resolver<'s>,
    graph: Graph,
}

fn image_graph<'m, 's>(
    model: &'m Model,
    store: &'s Store,
    scope: &Scope,
    word: &str,
    arch: &[String],
    warn: &mut dyn FnMut(&str),
) -> Result<ImageGraph<'m, 's>, CommandError> {
    let (image, targets) = one_image(model, word, arch)?;
    let resolver = resolver(model, store, scope, warn)?;
    let graph = Graph::build(model, &resolver, &targets, false)?;
    Ok(ImageGraph {
        image,
        targets,
        resolver,
        graph,
    })
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

/// Every image target built for one of `arch` (all when empty).
pub fn targets(model: &Model, arch: &[String]) -> Result<TargetsReport, CommandError> {
    let arches = label::parse_arches(arch)?;
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
pub fn manifest<'m>(
    model: &'m Model,
    word: &str,
    arch: &[String],
) -> Result<&'m Image, CommandError> {
    Ok(one_image(model, word, arch)?.0)
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

/// An expanded element set: its closure and the merged view.
#[derive(Debug)]
pub struct ElementsReport {
    pub elements: Vec<String>,
    pub view: ElementView,
}

impl Serialize for ElementsReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let view = &self.view;
        // In DIB's phase order (serde_json keeps insertion order here).
        let phases: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .filter_map(|p| {
                view.phases.get(*p).map(|s| {
                    (
                        p.to_string(),
                        serde_json::json!(s.iter().map(|s| &s.name).collect::<Vec<_>>()),
                    )
                })
            })
            .collect();
        let scripts: serde_json::Map<String, serde_json::Value> = PHASES
            .iter()
            .filter_map(|p| {
                view.phases
                    .get(*p)
                    .map(|s| (p.to_string(), serde_json::json!(s)))
            })
            .collect();
        serde_json::json!({
            "elements": self.elements,
            "phases": phases,
            "environment": view.environment.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "packages": view.packages,
            "scripts": scripts,
            "environment_files": view.environment,
            "env": view.env,
            "overwrites": view.overwrites,
            "skipped": view.skipped,
            "block_device": view.block_device.as_ref().map(|(e, f)| serde_json::json!({"element": e, "file": f})),
        })
        .serialize(s)
    }
}

/// Expands a target's elements (`model` is then required) or the `-e` elements (`model`
/// and `root` when inside a project: its search path).
pub fn elements(
    model: Option<&Model>,
    root: Option<&Path>,
    store: Option<&Store>,
    req: &ElementsRequest,
    warn: &mut dyn FnMut(&str),
) -> Result<ElementsReport, CommandError> {
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for kv in &req.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| CommandError::usage(format!("--env expects K=V, got `{kv}`")))?;
        declared.insert(k.to_string(), v.to_string());
    }
    let arch = match &req.arch {
        Some(s) => Some(Arch::parse(s).ok_or_else(|| label::LabelError::BadArch(s.clone()))?),
        None => None,
    };
    if let Some(word) = &req.target {
        let (model, store) = model.zip(store).ok_or_else(|| {
            CommandError::internal("query elements of a target without a project")
        })?;
        let (image, targets) = one_image(
            model,
            word,
            &arch.map(|a| vec![a.to_string()]).unwrap_or_default(),
        )?;
        let arch = targets[0].arch;
        let resolver = resolver(model, store, &req.scope, warn)?;
        let mut env = image.env.clone();
        env.extend(declared);
        let r = resolver
            .resolve(
                &element::requested_elements(image),
                arch,
                Some(&image.published_name(arch)),
                &env,
                false,
            )
            .map_err(|e| ForTarget::new(Some(targets[0].to_string()), e))?;
        return Ok(ElementsReport {
            elements: r.elements,
            view: r.view,
        });
    }
    let arch = arch.unwrap_or(Arch::Amd64);
    let path = element::project_search_path(model, root, &req.scope.element_path, store, warn)
        .map_err(|e| ForTarget::new(None, e))?;
    let closure = element::expand(&path, &req.elements).map_err(|e| ForTarget::new(None, e))?;
    let dirs: Vec<&element::ElementDir> = closure.iter().filter_map(|n| path.get(n)).collect();
    let mut env = element::engine_env(arch, None, &closure);
    env.extend(declared);
    let view = ElementView::build(&dirs, &env).map_err(|e| ForTarget::new(None, e))?;
    Ok(ElementsReport {
        elements: closure,
        view,
    })
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

pub fn deps(
    model: &Model,
    store: &Store,
    scope: &Scope,
    word: &str,
    arch: &[String],
    warn: &mut dyn FnMut(&str),
) -> Result<DepsReport, CommandError> {
    let ImageGraph {
        image,
        targets,
        graph,
        ..
    } = image_graph(model, store, scope, word, arch, warn)?;
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

/// The targets that depend on a target, `element:NAME`, `artifact:NAME` or `source:NAME`.
pub fn rdeps(
    model: &Model,
    store: &Store,
    scope: &Scope,
    what: &str,
    warn: &mut dyn FnMut(&str),
) -> Result<RdepsReport, CommandError> {
    let all = label::resolve(model, &[], None)?;
    let resolver = resolver(model, store, scope, warn)?;
    let graph = Graph::build(model, &resolver, &all, false)?;
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
    let dependents = rdeps::rdeps(&graph, &resolver, &all, &input)
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

/// The action graph of `targets` (every image when empty), publish actions included.
pub fn graph(
    model: &Model,
    store: &Store,
    scope: &Scope,
    targets: &[String],
    arch: &[String],
    warn: &mut dyn FnMut(&str),
) -> Result<GraphReport, CommandError> {
    let arches = label::parse_arches(arch)?;
    let targets = label::resolve(model, targets, arches.as_ref())?;
    let resolver = resolver(model, store, scope, warn)?;
    let graph = Graph::build(model, &resolver, &targets, true)?;
    Ok(GraphReport {
        version: 1,
        actions: graph.actions,
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
pub fn hash(
    model: &Model,
    store: &Store,
    scope: &Scope,
    word: &str,
    arch: &[String],
    warn: &mut dyn FnMut(&str),
) -> Result<HashReport, CommandError> {
    let ImageGraph { targets, graph, .. } = image_graph(model, store, scope, word, arch, warn)?;
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

/// Every action a target's disk needs, with whether it would run and why.
pub struct ExplainReport {
    pub rows: Vec<(Action, Status)>,
}

pub fn explain(
    model: &Model,
    store: &Store,
    scope: &Scope,
    word: &str,
    arch: &[String],
    warn: &mut dyn FnMut(&str),
) -> Result<ExplainReport, CommandError> {
    let ImageGraph {
        targets,
        resolver,
        graph,
        ..
    } = image_graph(model, store, scope, word, arch, warn)?;
    let mut rows = Vec::new();
    for t in &targets {
        let disk = ActionId::disk(&t.image, t.arch).to_string();
        for act in graph.closure(&disk) {
            let mut status = graph::status(store, act);
            // A layer that reruns may start from a step checkpoint: say from which step.
            if let graph::Status::ToRun { reasons } = &mut status
                && let Some(line) =
                    crate::action::checkpoint::explain(model, &graph, &resolver, store, act)
            {
                reasons.push(line);
            }
            rows.push((act.clone(), status));
        }
    }
    Ok(ExplainReport { rows })
}
