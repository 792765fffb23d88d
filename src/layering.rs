//! The layering paragraph of the crate map, checked: no two top-level modules reach each other
//! through `crate::` paths, directly or around a longer circle. Read from the sources (comments
//! aside), so a new import that closes a circle fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules its files name with `crate::`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let module_of = |path: &Path| {
        let rel = path.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        first.strip_suffix(".rs").unwrap_or(first).to_string()
    };
    let files: Vec<_> = walkdir::WalkDir::new(src)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.path().extension() == Some("rs".as_ref()))
        .map(|e| e.into_path())
        .collect();
    let modules: BTreeSet<String> = files
        .iter()
        .map(|p| module_of(p))
        .filter(|m| !matches!(m.as_str(), "lib" | "main" | "layering"))
        .collect();
    let path = regex::Regex::new(r"crate::(\w+)").unwrap();
    let group = regex::Regex::new(r"crate::\{([^}]*)").unwrap();
    let first_word = regex::Regex::new(r"(?:^|,)\s*(\w+)").unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file);
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let edges = out.entry(from.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let named = path.captures_iter(line).map(|c| c[1].to_string());
            let grouped = group.captures_iter(line).flat_map(|g| {
                first_word
                    .captures_iter(&g[1])
                    .map(|c| c[1].to_string())
                    .collect::<Vec<_>>()
            });
            edges.extend(
                named
                    .chain(grouped)
                    .filter(|m| *m != from && modules.contains(m)),
            );
        }
    }
    out
}

/// A circle through `from`, if one returns to it.
fn circle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in graph.get(&here).into_iter().flatten() {
        if next == from {
            let mut c = path.clone();
            c.push(next.clone());
            return Some(c);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = circle(graph, from, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let graph = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph["ops"].contains("store"), "the reader sees imports");
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|m| circle(&graph, m, &mut vec![m.clone()], &mut BTreeSet::new()))
        .map(|c| c.join(" → "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}
