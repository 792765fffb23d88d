//! Checks Nickel leaves to Rust, and inheritance: the raw evaluated manifests become a [`Model`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::eval::Evaluated;
use super::{
    Arch, Artifact, Format, Image, InspectChecks, ManifestError, Model, ProjectSettings,
    Provenance, Site, Source,
};
use crate::diag::SourceDiagnostic;

/// The evaluated manifests as Nickel exports them, before inheritance and Rust's checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    #[serde(default)]
    images: BTreeMap<String, RawImage>,
    #[serde(default)]
    sites: BTreeMap<String, Site>,
    #[serde(default)]
    artifacts: BTreeMap<String, Artifact>,
    #[serde(default)]
    sources: BTreeMap<String, Source>,
    #[serde(default)]
    inspect: InspectChecks,
    #[serde(default)]
    project: ProjectSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: String,
    #[serde(default)]
    from: Option<String>,
    elements: Vec<String>,
    arch: Vec<Arch>,
    baremetal_only: bool,
    provenance: Provenance,
    env: BTreeMap<String, String>,
    artifacts: BTreeMap<String, String>,
    #[serde(default)]
    base_artifacts: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, super::SecretSource>,
    #[serde(default)]
    public_with_secrets: bool,
    formats: Vec<Format>,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables a build may not set: ccb sets them for every script (PATH, LC_ALL), bash keeps
/// them itself, or they change how bash and every program run (BASH_ENV sources a file,
/// IFS re-splits every word, LD_PRELOAD loads a library into each process).
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "LC_ALL",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "IFS",
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLOBIGNORE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
];

/// The kernel's limit for one `NAME=value` string of a process's environment
/// (MAX_ARG_STRLEN, 32 pages), its terminating NUL included.
const MAX_ENV_STRING: usize = 32 * 4096;

/// Why `name=value` cannot be a build's environment variable, if it cannot: said at `ccb
/// check` instead of as an OS error of the first script that runs.
pub fn env_entry_problem(name: &str, value: &str) -> Option<String> {
    if !env_name_ok(name) {
        return Some(format!(
            "`{name}` is not a valid environment variable name (letters, digits and `_`, not \
             starting with a digit)"
        ));
    }
    if RESERVED_ENV.contains(&name) || name.starts_with("BASH_FUNC_") {
        return Some(format!(
            "`{name}` is reserved: ccb or bash sets it for every script, and changing it would \
             break or redirect them"
        ));
    }
    if value.contains('\0') {
        return Some(format!(
            "the value of `{name}` contains a NUL byte, which no environment variable can hold"
        ));
    }
    let len = name.len() + 1 + value.len() + 1;
    if len > MAX_ENV_STRING {
        return Some(format!(
            "the value of `{name}` is {} bytes; the kernel allows {} for one variable \
             (pass a file as an artifact instead)",
            value.len(),
            MAX_ENV_STRING - name.len() - 2
        ));
    }
    None
}

/// Decodes Nickel's export of the manifests; an error names the field that does not fit.
pub(super) fn decode(json: &str) -> Result<RawProject, ManifestError> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json)).map_err(|e| {
        SourceDiagnostic::new(format!(
            "the evaluated manifests do not match ccb's model at `{}`: {}",
            e.path(),
            e.inner()
        ))
        .with_help("the stdlib in use may be older or newer than this ccb")
        .into()
    })
}

pub(super) fn resolve(root: &Path, evaluated: Evaluated) -> Result<Model, ManifestError> {
    let raw = evaluated.project;

    let mut model = Model {
        root: root.to_path_buf(),
        images: BTreeMap::new(),
        sites: raw.sites,
        artifacts: raw.artifacts,
        per_arch: BTreeMap::new(),
        sources: raw.sources,
        inspect: raw.inspect,
        project: raw.project,
        files: evaluated.files,
        from_cache: evaluated.from_cache,
        warnings: evaluated.warnings,
        pins: Default::default(),
        origin: Default::default(),
    };

    check_image_keys(&model, &raw.images)?;
    check_swift_artifacts(&model)?;
    split_per_arch(&mut model)?;
    check_variable_names(&model, &raw.images)?;
    let order: Vec<String> = parents_first(&model, &raw.images)?
        .into_iter()
        .map(str::to_string)
        .collect();
    // Each raw image is moved into its model image, not cloned (parents are read from the
    // model, already inherited).
    let mut raw_images = raw.images;
    for key in order {
        if let Some(img) = raw_images.remove(&key) {
            let image = inherit(&model, &key, img)?;
            model.images.insert(key, image);
        }
    }
    check_published_names(&model)?;
    check_image_artifacts(&model)?;
    Ok(model)
}

/// Image keys become labels (`//images:<key>`) and file names.
fn check_image_keys(
    model: &Model,
    images: &BTreeMap<String, RawImage>,
) -> Result<(), ManifestError> {
    for key in images.keys() {
        let ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(model
                .locate("images", &[key], format!("`{key}` is not a valid image key"), "this key")
                .with_help("image keys are target names (`//images:<key>`): letters, digits, `.`, `_` and `-`")
                .into());
        }
    }
    Ok(())
}

/// An artifact fetched from Swift needs a Swift site's credentials.
fn check_swift_artifacts(model: &Model) -> Result<(), ManifestError> {
    for (key, art) in &model.artifacts {
        if let Some(swift) = &art.swift
            && let Some(site) = model.sites.get(&swift.site)
            && site.kind != super::SiteKind::Swift
        {
            return Err(model
                .locate(
                    "artifacts",
                    &[key, "site"],
                    format!(
                        "artifact `{key}` is fetched from site `{}`, which is not a Swift site",
                        swift.site
                    ),
                    "this site",
                )
                .with_help("name a site with `kind = 'swift`, or give the artifact a `url`")
                .into());
        }
    }
    Ok(())
}

/// Variable names: Nickel's dictionary contracts cannot check keys.
fn check_variable_names(
    model: &Model,
    images: &BTreeMap<String, RawImage>,
) -> Result<(), ManifestError> {
    for (key, img) in images {
        if let Some((bad, problem)) = img
            .env
            .iter()
            // Names are checked below, with the artifacts' variables.
            .filter(|(k, _)| env_name_ok(k))
            .find_map(|(k, v)| env_entry_problem(k, v).map(|p| (k, p)))
        {
            return Err(model
                .locate(
                    "images",
                    &[key, "env", bad],
                    format!("`{key}.env`: {problem}"),
                    "this variable",
                )
                .into());
        }
        if img.from.is_some()
            && let Some(var) = img.base_artifacts.keys().next()
        {
            return Err(model
                .locate(
                    "images",
                    &[key, "base_artifacts", var],
                    format!("image `{key}` has a parent, so it has no base of its own to give `{var}` to"),
                    "this variable",
                )
                .with_help("`base_artifacts` feed the root.d phase of a root image; move it to the root of the `from` chain, or use `artifacts`")
                .into());
        }
        for (field, map) in [
            ("env", &img.env),
            ("artifacts", &img.artifacts),
            ("base_artifacts", &img.base_artifacts),
        ] {
            if let Some(bad) = map.keys().find(|k| !env_name_ok(k)) {
                return Err(model
                    .locate(
                        "images",
                        &[key, field, bad],
                        format!(
                            "`{bad}` in `{key}.{field}` is not a valid environment variable name"
                        ),
                        "this variable",
                    )
                    .with_help(
                        "variable names are letters, digits and `_`, not starting with a digit",
                    )
                    .into());
            }
        }
    }
    Ok(())
}

/// The kernel's limit on the layers of one overlayfs mount (`OVL_MAX_STACK`).
const OVERLAY_MAX_STACK: usize = 500;

/// The longest `from` chain an image may have, itself included. Its layer's overlay stacks
/// the base, one layer per ancestor and up to [`crate::store::MAX_CHECKPOINTS`]
/// step checkpoints of its own; a longer chain would pass every check and fail at mount, deep
/// in a build. (The mount's option string is not the limit: lowers are named by links of a
/// few bytes, 500 of them fit in its page.)
pub const MAX_FROM_CHAIN: usize = OVERLAY_MAX_STACK - crate::store::MAX_CHECKPOINTS;

/// Image keys, every parent before its children; a cycle in `from`, or a chain longer than
/// [`MAX_FROM_CHAIN`], is an error. Each image is visited once (a walk up stops at an image
/// already placed), so this is linear in the number of images whatever the depth.
fn parents_first<'a>(
    model: &Model,
    images: &'a BTreeMap<String, RawImage>,
) -> Result<Vec<&'a str>, ManifestError> {
    // The chain length of each placed image (itself and its ancestors).
    let mut depth: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(images.len());
    let mut order: Vec<&str> = Vec::with_capacity(images.len());
    let mut on_path: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for start in images.keys() {
        let mut path: Vec<&str> = Vec::new();
        on_path.clear();
        let mut cur = start.as_str();
        // Walk up until an image already placed, an image without a (known) parent, or back
        // onto the path (a cycle).
        let below = loop {
            if let Some(d) = depth.get(cur) {
                break *d;
            }
            if let Some(&pos) = on_path.get(cur) {
                let mut cycle: Vec<&str> = path[pos..].to_vec();
                cycle.push(cur);
                let closer = path.last().copied().unwrap_or(cur);
                return Err(model
                    .locate(
                        "images",
                        &[closer, "from"],
                        format!(
                            "images inherit from each other in a cycle: {}",
                            cycle.join(" → ")
                        ),
                        "this parent closes the cycle",
                    )
                    .with_help("`from` must lead to an image without a parent")
                    .into());
            }
            on_path.insert(cur, path.len());
            path.push(cur);
            match images.get(cur).and_then(|i| i.from.as_deref()) {
                Some(parent) if images.contains_key(parent) => cur = parent,
                _ => break 0,
            }
        };
        for (i, key) in path.iter().rev().enumerate() {
            let d = below + i + 1;
            if d > MAX_FROM_CHAIN {
                return Err(model
                    .locate(
                        "images",
                        &[key, "from"],
                        format!(
                            "image `{key}` is layered {d} images deep (itself and its `from` \
                             ancestors); at most {MAX_FROM_CHAIN} fit in one overlay mount"
                        ),
                        "this chain",
                    )
                    .with_help(format!(
                        "overlayfs stacks at most {OVERLAY_MAX_STACK} layers, and a layer keeps \
                         room for {} step checkpoints; start a shorter chain from an image \
                         that repeats its ancestors' elements",
                        crate::store::MAX_CHECKPOINTS
                    ))
                    .into());
            }
            depth.insert(key, d);
            order.push(key);
        }
    }
    Ok(order)
}

/// An image with what it inherits from its parent (already in `model`): elements, environment,
/// artifacts, secrets and provenance; its arches and formats checked.
fn inherit(model: &Model, key: &str, img: RawImage) -> Result<Image, ManifestError> {
    let parent = img.from.as_ref().map(|p| &model.images[p]);
    let mut elements: Vec<String> = parent.map(|p| p.elements.clone()).unwrap_or_default();
    for e in &img.elements {
        if !elements.contains(e) {
            elements.push(e.clone());
        }
    }
    let mut secret_artifacts = parent
        .map(|p| p.secret_artifacts.clone())
        .unwrap_or_default();
    secret_artifacts.extend(
        img.artifacts
            .iter()
            .chain(&img.base_artifacts)
            .filter(|(_, name)| model.artifact_is_secret(name))
            .map(|(var, _)| var.clone()),
    );
    let mut env = parent.map(|p| p.env.clone()).unwrap_or_default();
    env.extend(img.env);
    let mut artifacts = parent.map(|p| p.artifacts.clone()).unwrap_or_default();
    artifacts.extend(img.artifacts);
    let mut secrets = parent.map(|p| p.secrets.clone()).unwrap_or_default();
    secrets.extend(img.secrets);
    let public_with_secrets =
        img.public_with_secrets || parent.is_some_and(|p| p.public_with_secrets);
    let inherit = |own: &Option<String>, pick: fn(&Provenance) -> &Option<String>| {
        own.clone()
            .or_else(|| parent.and_then(|p| pick(&p.provenance).clone()))
    };
    let provenance = Provenance {
        distro: inherit(&img.provenance.distro, |p| &p.distro),
        release: inherit(&img.provenance.release, |p| &p.release),
        variant: inherit(&img.provenance.variant, |p| &p.variant),
    };
    let mut arch = img.arch;
    arch.sort();
    arch.dedup();
    let mut formats = img.formats;
    formats.sort();
    formats.dedup();
    if let Some(p) = parent
        && let Some(missing) = arch.iter().find(|a| !p.arch.contains(a))
    {
        return Err(model
            .locate(
                "images",
                &[key, "arch"],
                format!(
                    "image `{key}` is built for {missing}, but its parent `{}` is not",
                    p.key
                ),
                "this arch",
            )
            .with_help(format!(
                "a layered image needs its parent's layer for the same arch; `{}` is built for {}",
                p.key,
                p.arch
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
    }
    if arch.is_empty() {
        return Err(model
            .locate(
                "images",
                &[key, "arch"],
                format!("image `{key}` has no arch to build"),
                "empty",
            )
            .into());
    }
    if formats.is_empty() {
        return Err(model
            .locate(
                "images",
                &[key, "formats"],
                format!("image `{key}` has no output format"),
                "empty",
            )
            .into());
    }
    Ok(Image {
        key: key.to_string(),
        name: img.name,
        from: img.from,
        own_elements: img.elements,
        elements,
        arch,
        baremetal_only: img.baremetal_only,
        provenance,
        env,
        artifacts,
        base_artifacts: img.base_artifacts,
        secret_artifacts,
        secrets,
        public_with_secrets,
        formats,
        size: img.size,
        description: img.description,
    })
}

/// Published names, per arch, are unique ignoring case (they become file and object names).
fn check_published_names(model: &Model) -> Result<(), ManifestError> {
    // Lower-cased published name → the image and arch that has it. A hash map, and the
    // published name spelt only for an error: this runs on every command, over every image.
    let mut names: std::collections::HashMap<String, (&str, Arch)> =
        std::collections::HashMap::with_capacity(model.images.len() * 2);
    for (key, img) in &model.images {
        let lower = img.name.to_ascii_lowercase();
        for &arch in &img.arch {
            let published = match arch {
                Arch::Amd64 => lower.clone(),
                other => format!("{lower}-{}", other.as_str()),
            };
            if let Some(&(other, other_arch)) = names.get(&published) {
                let published = img.published_name(arch);
                let other_name = model.images[other].published_name(other_arch);
                return Err(model
                    .locate(
                        "images",
                        &[key, "name"],
                        format!(
                            "images `{other}` and `{key}` are both published as `{published}`"
                        ),
                        "this name",
                    )
                    .with_help(format!(
                        "`{other}` is published as `{other_name}`; published names must differ (ignoring case)"
                    ))
                    .into());
            }
            names.insert(published, (key, arch));
        }
    }
    Ok(())
}

/// Artifacts named by images exist, with a file for every arch the image is built for.
fn check_image_artifacts(model: &Model) -> Result<(), ManifestError> {
    for (key, img) in &model.images {
        for (field, map) in [
            ("artifacts", &img.artifacts),
            ("base_artifacts", &img.base_artifacts),
        ] {
            for (var, art) in map {
                if let Some(arches) = model.per_arch.get(art) {
                    if let Some(missing) = img.arch.iter().find(|a| !arches.contains(a)) {
                        return Err(model
                            .locate(
                                "images",
                                &[key, field, var],
                                format!(
                                    "image `{key}` is built for {missing}, but artifact `{art}` has no {missing} file"
                                ),
                                "used here",
                            )
                            .with_help(format!(
                                "add `arch.{missing}` to artifact `{art}`, or build `{key}` for {} only",
                                arches.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                            ))
                            .into());
                    }
                } else if !model.artifacts.contains_key(art) {
                    return Err(model
                        .locate(
                            "images",
                            &[key, field, var],
                            format!("unknown artifact `{art}`"),
                            "used here",
                        )
                        .into());
                }
            }
        }
    }
    Ok(())
}

/// An artifact declared per arch becomes one artifact per arch (`NAME:ARCH`), each fetched,
/// pinned and updated on its own: amd64's and arm64's cloud images are different files.
fn split_per_arch(model: &mut Model) -> Result<(), ManifestError> {
    let names: Vec<String> = model
        .artifacts
        .iter()
        .filter(|(_, a)| a.arch.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    for name in names {
        let Some(mut art) = model.artifacts.remove(&name) else {
            continue;
        };
        let per_arch = art.arch.take().unwrap_or_default();
        if per_arch.is_empty() {
            return Err(model
                .locate(
                    "artifacts",
                    &[&name, "arch"],
                    format!("artifact `{name}` declares `arch` with no arch in it"),
                    "empty",
                )
                .with_help("give `arch.amd64` and/or `arch.arm64` a `url`")
                .into());
        }
        for (arch, src) in &per_arch {
            let key = super::arch_artifact_key(&name, *arch);
            model.artifacts.insert(
                key,
                Artifact {
                    url: Some(src.url.clone()),
                    swift: None,
                    sha256: src.sha256.clone().unwrap_or_else(|| art.sha256.clone()),
                    sums: src.sums.clone(),
                    description: art.description.as_ref().map(|d| format!("{d} ({arch})")),
                    secret: art.secret,
                    arch: None,
                },
            );
        }
        model
            .per_arch
            .insert(name, per_arch.keys().copied().collect());
    }
    Ok(())
}
