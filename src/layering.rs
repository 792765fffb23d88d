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
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file);
        if !modules.contains(&from) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        out.entry(from.clone()).or_default().extend(
            named_modules(&text)
                .into_iter()
                .filter(|m| *m != from && modules.contains(m)),
        );
    }
    out
}

/// The first path segments a source text names after `crate::`: in paths (`crate::a::b`)
/// and in groups (`use crate::{a, b::{c, d}};`, over as many lines as rustfmt wraps it to).
/// Comment lines are not read.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| [l, "\n"])
        .collect();
    let path = regex::Regex::new(r"crate::(\w+)").unwrap();
    let mut out: BTreeSet<String> = path.captures_iter(&code).map(|c| c[1].into()).collect();
    for (at, _) in code.match_indices("crate::{") {
        // The group's items at its own depth: each one's first word is a module.
        let (mut depth, mut items) = (0, vec![String::new()]);
        for ch in code[at + "crate::{".len()..].chars() {
            match ch {
                '}' if depth == 0 => break,
                ',' if depth == 0 => items.push(String::new()),
                _ => {
                    depth += usize::from(ch == '{');
                    depth -= usize::from(ch == '}');
                    items.last_mut().unwrap().push(ch);
                }
            }
        }
        out.extend(items.iter().filter_map(|item| {
            let word: String = item
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!word.is_empty()).then_some(word)
        }));
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
fn the_reader_sees_imports_in_paths_and_in_groups_over_several_lines() {
    let text = "use crate::store::Layout;\n\
                use crate::{\n    fetch::{self, Fetcher},\n    graph,\n    ui::{short,\n        KEY_WIDTH},\n    remote};\n\
                // use crate::commented;\n\
                let x = crate::lock::read();\n";
    let named: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(named, ["fetch", "graph", "lock", "remote", "store", "ui"]);
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
