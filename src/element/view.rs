//! The merged view of a set of elements: per phase, every element's scripts in DIB's run order;
//! environment.d files in sourcing order and the environment they produce; static/ and bin/
//! merged; package lists.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::reads::{Entry, Reads};
use super::{ElementDir, ElementError};
use crate::fsutil::FsError;

/// DIB's phases, in run order.
pub const PHASES: [&str; 10] = [
    "root.d",
    "extra-data.d",
    "pre-install.d",
    "install.d",
    "post-install.d",
    "post-root.d",
    "block-device.d",
    "pre-finalise.d",
    "finalise.d",
    "cleanup.d",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    pub name: String,
    pub element: String,
    /// The install-types subdirectory of the phase directory the script is in
    /// (`install.d/<prefix>-<type>-install/`); DIB links its scripts into `install.d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub element: String,
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overwrite {
    pub path: String,
    pub winner: String,
    pub loser: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageLists {
    pub install: Vec<String>,
    pub uninstall: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementView {
    /// Phase (`install.d`) → scripts in run order. Phases without scripts are absent.
    pub phases: BTreeMap<String, Vec<Script>>,
    /// environment.d files in sourcing order (bytewise by name).
    pub environment: Vec<Script>,
    /// The exported environment after sourcing environment.d over the declared variables.
    pub env: BTreeMap<String, String>,
    /// Phase → packages to install and uninstall (after pkg-map), sorted.
    pub packages: BTreeMap<String, PackageLists>,
    /// Files of static/ and bin/ given by more than one element (the later element wins).
    pub overwrites: Vec<Overwrite>,
    /// Files in phase directories that DIB's runner ignores (not executable, or a name with
    /// characters outside `[0-9A-Za-z_-]`).
    pub skipped: Vec<Skipped>,
    /// The block-device layout: (element, file name) of the first `block-device-<arch>.yaml`
    /// or `block-device-default.yaml`, in element order.
    pub block_device: Option<(String, String)>,
}

/// Whether a phase script name is run: `^[0-9A-Za-z_-]+$` (DIB's RUN_PARTS_REGEX).
pub fn runnable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether an environment.d file is sourced: `[0-9A-Za-z_.-]+`.
pub fn env_file_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The leading number GNU `sort -n` sees: an optional `-` and digits (none counts as 0).
fn numeric_prefix(name: &str) -> (bool, &str) {
    let (neg, rest) = match name.strip_prefix('-') {
        Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => (true, r),
        _ => (false, name),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let num = rest[..digits].trim_start_matches('0');
    (neg && !num.is_empty(), num)
}

fn cmp_magnitude(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// DIB's script order: `LC_ALL=C sort -n`: the numeric prefix compared as a number, ties broken
/// by comparing the whole names bytewise. So `05-y` runs before `5-x` and `100-x` after `99-y`.
pub fn run_parts_cmp(a: &str, b: &str) -> Ordering {
    let (na, ma) = numeric_prefix(a);
    let (nb, mb) = numeric_prefix(b);
    let num = match (na, nb) {
        (false, false) => cmp_magnitude(ma, mb),
        (true, true) => cmp_magnitude(mb, ma),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    };
    num.then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// install-types: the subdirectories `<prefix>-<type>-install` of an element's `install.d`
/// whose scripts run, as DIB's install-types element chooses them: the type is
/// `DIB_INSTALLTYPE_<prefix, - as _>` if set, else `DIB_DEFAULT_INSTALLTYPE` (default `source`).
fn install_type_dirs(
    reads: &Reads,
    phase_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, FsError> {
    let listing = reads.list(phase_dir)?;
    let chosen: BTreeMap<String, &str> = env
        .iter()
        .filter_map(|(k, v)| {
            let prefix = k.strip_prefix("DIB_INSTALLTYPE_")?;
            Some((prefix.replace('_', "-"), v.as_str()))
        })
        .collect();
    let default = env
        .get("DIB_DEFAULT_INSTALLTYPE")
        .filter(|v| !v.is_empty())
        .map_or("source", String::as_str);
    let mut out = Vec::new();
    for entry in listing.iter().filter(|e| e.is_dir) {
        let name = &entry.name;
        let picked = chosen
            .iter()
            .any(|(prefix, ty)| *name == format!("{prefix}-{ty}-install"))
            || name
                .strip_suffix(&format!("-{default}-install"))
                .is_some_and(|prefix| !chosen.contains_key(prefix));
        if picked {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// Regular files (following symlinks) directly in `dir`, sorted by name.
fn files_in(reads: &Reads, dir: &Path) -> Result<Vec<Entry>, FsError> {
    Ok(reads
        .list(dir)?
        .iter()
        .filter(|e| e.is_file)
        .cloned()
        .collect())
}

impl ElementView {
    /// Builds the view of `elements` (already expanded, sorted) under the `declared` variables.
    pub fn build(
        elements: &[&ElementDir],
        declared: &BTreeMap<String, String>,
    ) -> Result<Self, ElementError> {
        let mut view = ElementView::default();
        let env_files = environment_files(elements, &mut view.skipped)?;
        // One memo serves a search path's elements: any element's is theirs.
        let reads = elements
            .first()
            .map(|el| el.reads.clone())
            .unwrap_or_default();
        view.env = super::env::source(&env_files, declared, &reads)?;
        view.environment = env_files.into_iter().map(|(s, _)| s).collect();
        for phase in PHASES {
            let scripts = phase_scripts(elements, phase, &view.env, &mut view.skipped)?;
            if !scripts.is_empty() {
                view.phases.insert(phase.to_string(), scripts);
            }
        }
        view.overwrites = overwrites(elements)?;
        view.block_device = block_device(elements, declared);
        view.packages = super::packages::evaluate(elements, &view.env)?;
        Ok(view)
    }
}

/// The environment.d files in bytewise order of names (DIB sorts full paths with `sort -n`,
/// which degenerates to a plain byte order since every path starts with `/`); files DIB
/// would not source go to `skipped`.
fn environment_files(
    elements: &[&ElementDir],
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<(Script, PathBuf)>, ElementError> {
    let mut env_files: Vec<(Script, PathBuf)> = Vec::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for el in elements {
        for Entry { name, path, .. } in files_in(&el.reads, &el.dir.join("environment.d"))? {
            if !env_file_name(&name) {
                skipped.push(Skipped {
                    element: el.name.clone(),
                    path: format!("environment.d/{name}"),
                    reason: "name has characters outside [0-9A-Za-z_.-]".into(),
                });
                continue;
            }
            if let Some(first) = owner.get(&name) {
                return Err(ElementError::DuplicateScript {
                    phase: "environment.d".into(),
                    script: name,
                    first: first.clone(),
                    second: el.name.clone(),
                });
            }
            owner.insert(name.clone(), el.name.clone());
            env_files.push((
                Script {
                    name,
                    element: el.name.clone(),
                    dir: None,
                },
                path,
            ));
        }
    }
    env_files.sort_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
    Ok(env_files)
}

/// One phase's scripts in run order (install.d's `*-<type>-install` directories chosen by
/// the environment); files DIB's runner ignores go to `skipped`.
fn phase_scripts(
    elements: &[&ElementDir],
    phase: &str,
    env: &BTreeMap<String, String>,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Script>, ElementError> {
    let mut scripts: Vec<Script> = Vec::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for el in elements {
        let phase_dir = el.dir.join(phase);
        let mut files: Vec<(Option<String>, Entry)> = files_in(&el.reads, &phase_dir)?
            .into_iter()
            .map(|e| (None, e))
            .collect();
        if phase == "install.d" {
            for sub in install_type_dirs(&el.reads, &phase_dir, env)? {
                for e in files_in(&el.reads, &phase_dir.join(&sub))? {
                    files.push((Some(sub.clone()), e));
                }
            }
        }
        for (
            dir,
            Entry {
                name, executable, ..
            },
        ) in files
        {
            if let Some(first) = owner.get(&name) {
                return Err(ElementError::DuplicateScript {
                    phase: phase.to_string(),
                    script: name,
                    first: first.clone(),
                    second: el.name.clone(),
                });
            }
            owner.insert(name.clone(), el.name.clone());
            let reason = if !runnable_name(&name) {
                Some("name has characters outside [0-9A-Za-z_-]")
            } else if !executable {
                Some("not executable")
            } else {
                None
            };
            match reason {
                Some(r) => skipped.push(Skipped {
                    element: el.name.clone(),
                    path: format!("{phase}/{name}"),
                    reason: r.to_string(),
                }),
                None => scripts.push(Script {
                    name,
                    element: el.name.clone(),
                    dir,
                }),
            }
        }
    }
    scripts.sort_by(|a, b| run_parts_cmp(&a.name, &b.name));
    Ok(scripts)
}

/// Files of static/ and bin/ that a later element (in sorted order) overwrites.
fn overwrites(elements: &[&ElementDir]) -> Result<Vec<Overwrite>, ElementError> {
    let mut out = Vec::new();
    for sub in ["static", "bin"] {
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for el in elements {
            for f in el.reads.tree(&el.dir.join(sub))?.iter() {
                let key = format!("{sub}/{f}");
                if let Some(prev) = owner.insert(key.clone(), el.name.clone()) {
                    out.push(Overwrite {
                        path: key,
                        winner: el.name.clone(),
                        loser: prev,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The first element (in order) with a block-device layout for the arch, or a default one.
fn block_device(
    elements: &[&ElementDir],
    declared: &BTreeMap<String, String>,
) -> Option<(String, String)> {
    let arch = declared.get("ARCH").cloned().unwrap_or_default();
    let arch_file = format!(
        "block-device-{}.yaml",
        if arch == "ppc64le" { "ppc64el" } else { &arch }
    );
    elements.iter().find_map(|el| {
        [arch_file.as_str(), "block-device-default.yaml"]
            .iter()
            .find(|f| el.reads.is_file(&el.dir.join(f)))
            .map(|f| (el.name.clone(), f.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        v.sort_by(|a, b| run_parts_cmp(a, b));
        v
    }

    #[test]
    fn scripts_sort_like_gnu_sort_n_in_the_c_locale() {
        // The order GNU sort -n gives for these names (checked with coreutils).
        let expected = [
            "-n", "00-a", "Zed", "_u", "foo", "1a", "05-y", "5-x", "9", "10-a", "10-b", "99-z",
            "100-q",
        ];
        let mut shuffled = expected.to_vec();
        shuffled.reverse();
        assert_eq!(sorted(&shuffled), expected);
    }

    #[test]
    fn a_leading_zero_sorts_before_the_same_number_without() {
        assert_eq!(sorted(&["5-x", "05-y"]), ["05-y", "5-x"]);
        assert_eq!(sorted(&["100-x", "99-y"]), ["99-y", "100-x"]);
    }

    #[test]
    fn only_plain_names_run() {
        assert!(runnable_name("10-foo_bar-Baz"));
        assert!(!runnable_name("10-foo.sh"));
        assert!(!runnable_name(""));
        assert!(env_file_name("10-foo.bash"));
    }

    #[test]
    fn install_types_pick_the_variable_s_type_else_the_default() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "simple-init-source-install",
            "simple-init-package-install",
            "simple-init-repo-install",
            "tpm-emulator-source-install",
            "keylime-agent-source-install",
        ] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let mut env = BTreeMap::new();
        // Nothing chosen: every `source` variant.
        assert_eq!(
            install_type_dirs(&Reads::default(), dir.path(), &env).unwrap(),
            [
                "keylime-agent-source-install",
                "simple-init-source-install",
                "tpm-emulator-source-install"
            ]
        );
        env.insert("DIB_INSTALLTYPE_simple_init".into(), "repo".into());
        env.insert("DIB_DEFAULT_INSTALLTYPE".into(), "package".into());
        // The variable decides for its prefix; the default (package) has no other takers.
        assert_eq!(
            install_type_dirs(&Reads::default(), dir.path(), &env).unwrap(),
            ["simple-init-repo-install"]
        );
    }
}
