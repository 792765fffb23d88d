//! Reverse dependencies: which targets' actions use an element, an artifact, a source or
//! another image (`ccb query rdeps`).

use std::collections::BTreeSet;

use super::{Action, ActionId, Graph, Kind};
use crate::element::Resolver;
use crate::label::Target;

/// What the dependents are asked of.
#[derive(Debug, Clone)]
pub enum Input {
    Element(String),
    Artifact(String),
    Source(String),
    /// Images built `from` these.
    Images(Vec<Target>),
}

/// Per target (of `all`), its actions that depend on the input.
pub fn rdeps(
    graph: &Graph,
    resolver: &Resolver,
    all: &[Target],
    input: &Input,
) -> Vec<(Target, Vec<String>)> {
    let mut hits: Vec<(Target, Vec<String>)> = Vec::new();
    match input {
        Input::Element(name) => {
            for ((image, arch), r) in &graph.resolved {
                if r.elements.iter().any(|e| e == name) {
                    let t = Target {
                        image: image.clone(),
                        arch: *arch,
                    };
                    let acts = graph
                        .actions_of(&t)
                        .iter()
                        .filter(|act| match act.kind {
                            Kind::Base => r.base.as_ref().is_some_and(|b| b.elements.iter().any(|e| e == name)),
                            Kind::Layer => matches!(act.doc.get("elements"), Some(crate::keydoc::Value::Map(m)) if m.contains_key(name)),
                            _ => true,
                        })
                        .map(|act| act.id.to_string())
                        .collect();
                    hits.push((t, acts));
                }
            }
        }
        Input::Artifact(name) => {
            let id = ActionId::fetch(name).to_string();
            // An artifact declared per arch is fetched as `NAME:ARCH`, once per arch.
            let per_arch = format!("{id}:");
            hits = dependents(graph, all, |act| {
                act.deps
                    .iter()
                    .any(|d| *d == id || d.starts_with(&per_arch))
            });
        }
        Input::Source(name) => {
            // By where the action's elements come from: that covers plain local sources too,
            // which are in no key document.
            hits = dependents(graph, all, |act| uses_source(graph, resolver, act, name));
        }
        Input::Images(targets) => {
            for t in all {
                if targets.contains(t) {
                    continue;
                }
                let disk = ActionId::disk(&t.image, t.arch).to_string();
                let closure = graph.closure(&disk);
                if targets.iter().any(|x| {
                    closure
                        .iter()
                        .any(|act| act.id == ActionId::layer(&x.image, x.arch))
                }) {
                    hits.push((
                        t.clone(),
                        graph
                            .actions_of(t)
                            .iter()
                            .map(|a| a.id.to_string())
                            .collect(),
                    ));
                }
            }
        }
    }
    hits
}

/// Per target, its actions that use something (`direct`) or need an action that does.
fn dependents(
    graph: &Graph,
    all: &[Target],
    direct: impl Fn(&Action) -> bool,
) -> Vec<(Target, Vec<String>)> {
    let users: BTreeSet<&str> = graph
        .actions
        .iter()
        .filter(|a| direct(a))
        .map(|a| a.id.as_str())
        .collect();
    let mut hits = Vec::new();
    for t in all {
        let acts: Vec<String> = graph
            .actions_of(t)
            .iter()
            .filter(|act| {
                graph
                    .closure(&act.id)
                    .iter()
                    .any(|c| users.contains(c.id.as_str()))
            })
            .map(|act| act.id.to_string())
            .collect();
        if !acts.is_empty() {
            hits.push((t.clone(), acts));
        }
    }
    hits
}

/// Whether an image action runs elements of source `name`.
fn uses_source(graph: &Graph, resolver: &Resolver, act: &Action, name: &str) -> bool {
    let (Some(image), Some(arch)) = (&act.image, act.arch) else {
        return false;
    };
    let Some(r) = graph.resolved.get(&(image.clone(), arch)) else {
        return false;
    };
    let from = |e: &String| resolver.path.get(e).and_then(|d| d.source.as_deref()) == Some(name);
    match act.kind {
        Kind::Base => r.base.as_ref().is_some_and(|b| b.elements.iter().any(from)),
        Kind::Layer => {
            matches!(act.doc.get("elements"), Some(crate::keydoc::Value::Map(m)) if m.keys().any(from))
        }
        _ => r.elements.iter().any(from),
    }
}
