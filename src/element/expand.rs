//! Dependency expansion (`element-deps` / `element-provides`), with DIB's semantics and error
//! classes but a deterministic result.
//!
//! DIB's breadth-first walk depends on set order: when an element is reached before its
//! provider has been seen, the element's own dependencies stay in the result even though the
//! element is dropped (LP #1303911). Here the walk is repeated until the set of provided names
//! settles, so a provided element never leaves dependencies behind, and every set is sorted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{ElementDir, ElementError, SearchPath};

/// Reads a list file (`element-deps`, `element-provides`) of `el`: one name per line,
/// trimmed, blank lines dropped. Like DIB, `#` lines are not comments here.
fn read_list(el: &ElementDir, file: &str) -> Result<Vec<String>, ElementError> {
    let text = el.reads.text(&el.dir.join(file))?.unwrap_or_default();
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

struct Info {
    deps: Vec<String>,
    provides: Vec<String>,
}

/// Expands `requested` into the sorted element closure, with provided names removed.
pub fn expand(path: &SearchPath, requested: &[String]) -> Result<Vec<String>, ElementError> {
    let mut infos: BTreeMap<String, Info> = BTreeMap::new();
    let info = |infos: &mut BTreeMap<String, Info>,
                name: &str,
                wanted_by: Option<&str>|
     -> Result<(), ElementError> {
        if infos.contains_key(name) {
            return Ok(());
        }
        let Some(el) = path.get(name) else {
            return Err(ElementError::NotFound {
                name: name.to_string(),
                wanted_by: wanted_by.map(str::to_string),
                help: crate::diag::did_you_mean(name, &path.names()),
            });
        };
        let mut deps = read_list(el, "element-deps")?;
        deps.sort();
        deps.dedup();
        let mut provides = read_list(el, "element-provides")?;
        provides.sort();
        provides.dedup();
        infos.insert(name.to_string(), Info { deps, provides });
        Ok(())
    };

    let mut provided: BTreeMap<String, String> = BTreeMap::new();
    let mut history: Vec<BTreeMap<String, String>> = Vec::new();
    loop {
        // Walk from the requested elements, not expanding names that are provided.
        let mut members: BTreeSet<String> = BTreeSet::new();
        // Names not on the path may be virtual names provided by another element: judged
        // once the walk settles.
        let mut missing: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut queue: VecDeque<(String, Option<String>)> =
            requested.iter().map(|r| (r.clone(), None)).collect();
        while let Some((name, by)) = queue.pop_front() {
            if provided.contains_key(&name)
                || members.contains(&name)
                || missing.contains_key(&name)
            {
                continue;
            }
            if path.get(&name).is_none() {
                missing.insert(name, by);
                continue;
            }
            info(&mut infos, &name, by.as_deref())?;
            members.insert(name.clone());
            for dep in &infos[&name].deps {
                if !members.contains(dep) {
                    queue.push_back((dep.clone(), Some(name.clone())));
                }
            }
        }
        let mut now: BTreeMap<String, String> = BTreeMap::new();
        for name in &members {
            for p in &infos[name].provides {
                if let Some(first) = now.get(p) {
                    return Err(ElementError::ProvidedTwice {
                        name: p.clone(),
                        first: first.clone(),
                        second: name.clone(),
                    });
                }
                now.insert(p.clone(), name.clone());
            }
        }
        for r in requested {
            if let Some(provider) = now.get(r)
                && provider != r
            {
                return Err(ElementError::RequestedButProvided {
                    name: r.clone(),
                    provider: provider.clone(),
                });
            }
        }
        if now == provided {
            if let Some((name, by)) = missing.into_iter().find(|(m, _)| !provided.contains_key(m)) {
                return Err(ElementError::NotFound {
                    help: crate::diag::did_you_mean(&name, &path.names()),
                    name,
                    wanted_by: by,
                });
            }
            if !provided.contains_key("operating-system") {
                return Err(ElementError::MissingOs);
            }
            // An element that provides its own name stays; other provided names go.
            let mut out: Vec<String> = members
                .into_iter()
                .filter(|m| provided.get(m).is_none_or(|p| p == m))
                .collect();
            out.sort();
            return Ok(out);
        }
        if history.contains(&now) {
            return Err(ElementError::ProvidesCycle(format!(
                "providers of {} are only reachable through the names they provide",
                now.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        history.push(now.clone());
        provided = now;
    }
}
