//! `package-installs.yaml` / `.json` and `pkg-map`, evaluated against an image's environment.
//!
//! The schema is diskimage-builder's: a package maps to nothing (install in install.d), to a
//! parameter map, or to a list of parameter maps, each judged on its own. Parameters: `phase`,
//! `uninstall`, `build-only`, `installtype`, `arch`/`not-arch`, `dib_python_version`, `when`.
//! Elements are processed in sorted order (DIB uses set order), so conflicts resolve the same
//! way every time: a plain install cancels an earlier uninstall of the package in the same
//! phase, and an uninstall is dropped when another element installs the package for good.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use super::view::PackageLists;
use super::{ElementDir, ElementError};

const PACKAGE_PHASES: [&str; 3] = ["pre-install.d", "install.d", "post-install.d"];
const KNOWN_KEYS: [&str; 7] = [
    "phase",
    "uninstall",
    "build-only",
    "installtype",
    "arch",
    "not-arch",
    "when",
];

struct Ctx<'a> {
    element: &'a str,
    file: &'a str,
    env: &'a BTreeMap<String, String>,
}

impl Ctx<'_> {
    fn err(&self, message: impl Into<String>) -> ElementError {
        ElementError::Packages {
            element: self.element.to_string(),
            file: self.file.to_string(),
            message: message.into(),
        }
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Whether one parameter map applies; `Ok(Some((phase, install, uninstall)))` if it does.
fn judge(
    ctx: &Ctx,
    package: &str,
    params: &serde_yaml::Mapping,
) -> Result<Option<(String, bool, bool)>, ElementError> {
    for key in params.keys() {
        let k = as_text(key).unwrap_or_default();
        if !KNOWN_KEYS.contains(&k.as_str()) && k != "dib_python_version" {
            return Err(ctx.err(format!("package `{package}`: unknown parameter `{k}`")));
        }
    }
    let get = |k: &str| params.get(Value::String(k.to_string()));
    let phase = match get("phase") {
        None | Some(Value::Null) => "install.d".to_string(),
        Some(v) => as_text(v)
            .ok_or_else(|| ctx.err(format!("package `{package}`: `phase` must be a string")))?,
    };
    if !PACKAGE_PHASES.contains(&phase.as_str()) {
        return Err(ctx.err(format!(
            "package `{package}`: phase `{phase}` does not install packages (use {})",
            PACKAGE_PHASES.join(", ")
        )));
    }
    let uninstall = get("uninstall").is_some();
    let build_only = get("build-only").is_some();
    let arch = ctx.env.get("ARCH").cloned().unwrap_or_default();
    let (only, not) = (get("arch"), get("not-arch"));
    if only.is_some() && not.is_some() {
        return Err(ctx.err(format!(
            "package `{package}`: `arch` and `not-arch` cannot both be given"
        )));
    }
    if let Some(v) = only {
        let list = split_list(&as_text(v).unwrap_or_default());
        if !list.contains(&arch) {
            return Ok(None);
        }
    }
    if let Some(v) = not {
        let list = split_list(&as_text(v).unwrap_or_default());
        if list.contains(&arch) {
            return Ok(None);
        }
    }
    if let Some(v) = get("installtype") {
        let wanted = as_text(v).unwrap_or_default();
        let var = format!("DIB_INSTALLTYPE_{}", ctx.element.replace('-', "_"));
        let actual = ctx
            .env
            .get(&var)
            .or_else(|| ctx.env.get("DIB_DEFAULT_INSTALLTYPE"))
            .map(String::as_str)
            .unwrap_or("source");
        if actual != wanted {
            return Ok(None);
        }
    }
    if let Some(v) = get("dib_python_version") {
        let wanted = as_text(v).unwrap_or_default();
        let actual = ctx
            .env
            .get("DIB_PYTHON_VERSION")
            .ok_or_else(|| ElementError::WhenUnset {
                element: ctx.element.to_string(),
                package: package.to_string(),
                variable: "DIB_PYTHON_VERSION".into(),
            })?;
        if *actual != wanted {
            return Ok(None);
        }
    }
    if let Some(v) = get("when") {
        // Every item must be a condition: a map or a list in `when` was silently ignored.
        let not_a_condition = || {
            ctx.err(format!(
                "package `{package}`: `when` must be a `VAR = value` string or a list of them"
            ))
        };
        let conds: Vec<String> = match v {
            Value::Sequence(items) => items
                .iter()
                .map(|i| as_text(i).ok_or_else(not_a_condition))
                .collect::<Result<_, _>>()?,
            other => vec![as_text(other).ok_or_else(not_a_condition)?],
        };
        for cond in conds {
            if !when_holds(ctx, package, &cond)? {
                return Ok(None);
            }
        }
    }
    Ok(Some((
        phase,
        !uninstall || build_only,
        uninstall || build_only,
    )))
}

/// One `when` item: `VAR = value` or `VAR != value`, spaces optional, exact string compare.
fn when_holds(ctx: &Ctx, package: &str, cond: &str) -> Result<bool, ElementError> {
    let (var, op, value) = if let Some((l, r)) = cond.split_once("!=") {
        (l, "!=", r)
    } else if let Some((l, r)) = cond.split_once('=') {
        (l, "=", r)
    } else {
        return Err(ctx.err(format!(
            "package `{package}`: `when: {cond}` is not `VAR = value` or `VAR != value`"
        )));
    };
    if value.trim_start().starts_with('=') {
        // `A == b` split at the first `=` compared A with "= b": never true, so the package
        // was dropped without a word.
        return Err(ctx.err(format!(
            "package `{package}`: `when: {cond}`: compare with `=` or `!=` (not `==`)"
        )));
    }
    let var = var.trim();
    if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ctx.err(format!(
            "package `{package}`: `when: {cond}` does not start with a variable name"
        )));
    }
    let actual = ctx.env.get(var).ok_or_else(|| ElementError::WhenUnset {
        element: ctx.element.to_string(),
        package: package.to_string(),
        variable: var.to_string(),
    })?;
    let equal = actual == value.trim();
    Ok(if op == "=" { equal } else { !equal })
}

/// (phase, package, element) → install / uninstall, before pkg-map.
type Squashed = BTreeMap<String, (Vec<(String, String)>, Vec<(String, String)>)>;

fn read_file(
    el: &ElementDir,
    file: &str,
    env: &BTreeMap<String, String>,
    out: &mut Squashed,
) -> Result<(), ElementError> {
    let Some(text) = el.reads.text(&el.dir.join(file))? else {
        return Ok(());
    };
    squash_text(&el.name, file, &text, env, out)
}

/// The package lists of one `package-installs` file's text, judged for `env` (no pkg-map):
/// what [`evaluate`] makes of a single element. Public for the fuzz target.
pub fn parse_installs(
    element: &str,
    file: &str,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, PackageLists>, ElementError> {
    let mut squashed = Squashed::new();
    squash_text(element, file, text, env, &mut squashed)?;
    Ok(squashed
        .into_iter()
        .map(|(phase, (install, uninstall))| {
            let names = |v: Vec<(String, String)>| -> Vec<String> {
                let set: BTreeSet<String> = v.into_iter().map(|(p, _)| p).collect();
                set.into_iter().collect()
            };
            (
                phase,
                PackageLists {
                    install: names(install),
                    uninstall: names(uninstall),
                },
            )
        })
        .collect())
}

fn squash_text(
    element: &str,
    file: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    out: &mut Squashed,
) -> Result<(), ElementError> {
    let ctx = Ctx { element, file, env };
    // YAML is a superset of JSON: one parser serves both files.
    let doc: Value =
        serde_yaml::from_str(text).map_err(|e| ctx.err(format!("does not parse: {e}")))?;
    let map = match doc {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => return Err(ctx.err("the top level must map package names to parameters")),
    };
    for (pkg, params) in map {
        let package = as_text(&pkg).ok_or_else(|| ctx.err("package names must be strings"))?;
        if package.trim().is_empty() || package.chars().any(char::is_whitespace) {
            return Err(ctx.err(format!(
                "`{package}` is not a package name (empty, or with spaces)"
            )));
        }
        let maps: Vec<serde_yaml::Mapping> = match params {
            Value::Null => vec![serde_yaml::Mapping::new()],
            Value::Mapping(m) => vec![m],
            Value::Sequence(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::Mapping(m) => Ok(m),
                    Value::Null => Ok(serde_yaml::Mapping::new()),
                    _ => Err(ctx.err(format!(
                        "package `{package}`: list items must be parameter maps"
                    ))),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ctx.err(format!(
                    "package `{package}`: parameters must be a map or a list of maps"
                )));
            }
        };
        for params in maps {
            let Some((phase, install, uninstall)) = judge(&ctx, &package, &params)? else {
                continue;
            };
            let entry = out.entry(phase).or_default();
            let item = (package.clone(), element.to_string());
            if install && !uninstall {
                // A plain install cancels an earlier uninstall of the package.
                entry.1.retain(|(p, _)| *p != package);
                entry.0.push(item);
            } else if install && uninstall {
                entry.0.push(item.clone());
                entry.1.push(item);
            } else if !entry.0.iter().any(|(p, _)| *p == package) {
                entry.1.push(item);
            }
        }
    }
    Ok(())
}

/// A parsed `pkg-map`, applied default → family → distro → release.
pub fn pkg_map(
    el: &ElementDir,
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ElementError> {
    let Some(text) = el.reads.text(&el.dir.join("pkg-map"))? else {
        return Ok(BTreeMap::new());
    };
    let err = |m: String| ElementError::Packages {
        element: el.name.clone(),
        file: "pkg-map".into(),
        message: m,
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("is not valid JSON: {e}")))?;
    let distro = env.get("DISTRO_NAME").cloned().unwrap_or_default();
    let release = env
        .get("DIB_RELEASE")
        .cloned()
        .unwrap_or_default()
        .replace("-stream", "");
    let family = match distro.as_str() {
        "almalinux" | "fedora" | "rhel" | "centos" | "openeuler" | "rocky" => "redhat",
        "debian" | "ubuntu" => "debian",
        "opensuse" => "suse",
        "gentoo" => "gentoo",
        _ => "",
    };
    let mut out = BTreeMap::new();
    let mut apply = |section: Option<&serde_json::Value>| -> Result<(), ElementError> {
        let Some(section) = section else {
            return Ok(());
        };
        let obj = section
            .as_object()
            .ok_or_else(|| err("sections must be objects".into()))?;
        for (k, v) in obj {
            let v = v
                .as_str()
                .ok_or_else(|| err(format!("the mapping of `{k}` must be a string")))?;
            out.insert(k.clone(), v.to_string());
        }
        Ok(())
    };
    apply(doc.get("default"))?;
    apply(doc.get("family").and_then(|f| f.get(family)))?;
    apply(doc.get("distro").and_then(|d| d.get(&distro)))?;
    apply(
        doc.get("release")
            .and_then(|r| r.get(&distro))
            .and_then(|d| d.get(&release)),
    )?;
    Ok(out)
}

/// Evaluates every element's package lists for `env`, with pkg-map applied per element.
pub fn evaluate(
    elements: &[&ElementDir],
    env: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, PackageLists>, ElementError> {
    let mut squashed: Squashed = BTreeMap::new();
    for el in elements {
        read_file(el, "package-installs.json", env, &mut squashed)?;
        read_file(el, "package-installs.yaml", env, &mut squashed)?;
    }
    let mut maps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for el in elements {
        maps.insert(el.name.clone(), pkg_map(el, env)?);
    }
    let map_one = |pkg: &str, element: &str| -> Vec<String> {
        match maps.get(element).and_then(|m| m.get(pkg)) {
            // An empty mapping means "not on this distro".
            Some(mapped) => mapped.split_whitespace().map(str::to_string).collect(),
            None => vec![pkg.to_string()],
        }
    };
    let mut out = BTreeMap::new();
    for (phase, (install, uninstall)) in squashed {
        let inst: BTreeSet<String> = install.iter().flat_map(|(p, e)| map_one(p, e)).collect();
        let uninst: BTreeSet<String> = uninstall.iter().flat_map(|(p, e)| map_one(p, e)).collect();
        out.insert(
            phase,
            PackageLists {
                install: inst.into_iter().collect(),
                uninstall: uninst.into_iter().collect(),
            },
        );
    }
    Ok(out)
}
