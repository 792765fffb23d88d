//! Targets: how command-line words name images.
//!
//! - `//images:ubuntu24.04` is field `ubuntu24.04` of `manifests/images.*`;
//! - `//images:all`, `//images:...` and `//...` select every image;
//! - a bare `ubuntu24.04`, or the published name `CC-Ubuntu24.04` (any case), name the same target;
//! - a published arch name (`CC-Ubuntu24.04-ARM64`) names that image for that arch only.
//!
//! Each image expands to one [`Target`] per declared arch; `--arch` filters them.

use std::collections::BTreeSet;

use crate::manifest::{Arch, Model};

/// One build: an image for one arch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Target {
    pub image: String,
    pub arch: Arch,
}

impl Target {
    pub fn label(&self) -> String {
        format!("//images:{}", self.image)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "//images:{} ({})", self.image, self.arch)
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LabelError {
    #[error("unknown target `{word}`")]
    #[diagnostic(code(ccb::label::unknown))]
    Unknown {
        word: String,
        #[help]
        help: Option<String>,
    },
    #[error("`{word}` is not a target: only `//images:NAME`, `//images:all` and `//...` are")]
    #[diagnostic(code(ccb::label::bad_package))]
    BadPackage { word: String },
    #[error("`{0}` is not an architecture: expected amd64 or arm64")]
    #[diagnostic(code(ccb::label::bad_arch))]
    BadArch(String),
    /// `//images:` with nothing after the colon, as `//images:$UNSET` expands to: never
    /// "every image".
    #[error("`{word}` names no image: the name after `//images:` is empty")]
    #[diagnostic(
        code(ccb::label::empty_name),
        help("name an image, or select every image with `//images:all` or `//...`")
    )]
    EmptyName { word: String },
    #[error("no build matches: {0}")]
    #[diagnostic(help(
        "the selected images are not built for the architectures given with --arch"
    ))]
    NothingSelected(String),
}

impl LabelError {
    /// A malformed command line (exit 2) rather than a target that does not exist.
    pub fn is_usage(&self) -> bool {
        matches!(self, LabelError::BadArch(_) | LabelError::EmptyName { .. })
    }
}

/// Parses a comma-separated `--arch` list.
pub fn parse_arches(list: &[String]) -> Result<Option<BTreeSet<Arch>>, LabelError> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeSet::new();
    for word in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        out.insert(Arch::parse(word).ok_or_else(|| LabelError::BadArch(word.to_string()))?);
    }
    Ok(Some(out))
}

/// Whether a word names every image (`//...`, `//images:all`) rather than one.
pub fn is_wildcard(word: &str) -> bool {
    matches!(
        word,
        "//..." | "..." | "//images" | "//images:all" | "//images:..."
    )
}

/// The images the words name one by one (not through a wildcard): what a user asked for by
/// name, which a command may not silently leave out.
pub fn named_images(model: &Model, words: &[String]) -> BTreeSet<String> {
    words
        .iter()
        .filter(|w| !is_wildcard(w))
        .filter_map(|w| resolve_word(model, w).ok())
        .flatten()
        .map(|(image, _)| image)
        .collect()
}

/// Which images (and optionally which single arch) a word names.
fn resolve_word(model: &Model, word: &str) -> Result<Vec<(String, Option<Arch>)>, LabelError> {
    let all = || model.images.keys().map(|k| (k.clone(), None)).collect();
    if word == "//..." || word == "..." {
        return Ok(all());
    }
    let name = if let Some(rest) = word.strip_prefix("//") {
        let (pkg, name) = match rest.split_once(':') {
            Some((pkg, name)) => (pkg, Some(name)),
            None => (rest, None),
        };
        if pkg != "images" {
            return Err(LabelError::BadPackage { word: word.into() });
        }
        match name {
            Some("") => return Err(LabelError::EmptyName { word: word.into() }),
            // `//images`, as Bazel's `//images:all`.
            None | Some("all" | "...") => return Ok(all()),
            Some(name) => name,
        }
    } else {
        match word.strip_prefix("images:") {
            Some("") => return Err(LabelError::EmptyName { word: word.into() }),
            Some(name) => name,
            None if word.is_empty() => return Err(LabelError::EmptyName { word: word.into() }),
            None => word,
        }
    };
    if model.images.contains_key(name) {
        return Ok(vec![(name.to_string(), None)]);
    }
    for (key, img) in &model.images {
        if img.name.eq_ignore_ascii_case(name) {
            return Ok(vec![(key.clone(), None)]);
        }
        for &arch in &img.arch {
            if arch != Arch::Amd64 && img.published_name(arch).eq_ignore_ascii_case(name) {
                return Ok(vec![(key.clone(), Some(arch))]);
            }
        }
    }
    let mut candidates: Vec<String> = model.images.keys().cloned().collect();
    candidates.extend(model.images.values().map(|i| i.name.clone()));
    Err(LabelError::Unknown {
        word: word.to_string(),
        help: crate::diag::did_you_mean(name, &candidates),
    })
}

/// The arches the words (or `--arch`) ask for by name: `--arch arm64`, or a published arch
/// name such as `CC-Debian12-ARM64`. A build may leave out an arch the host cannot build only
/// when nobody asked for it by name.
pub fn named_arches(
    model: &Model,
    words: &[String],
    arches: Option<&BTreeSet<Arch>>,
) -> BTreeSet<Arch> {
    let mut out: BTreeSet<Arch> = arches.cloned().unwrap_or_default();
    for word in words {
        if let Ok(picked) = resolve_word(model, word) {
            out.extend(picked.into_iter().filter_map(|(_, arch)| arch));
        }
    }
    out
}

/// Expands words into targets, one per (image, arch), sorted and deduplicated. No words means
/// every image.
pub fn resolve(
    model: &Model,
    words: &[String],
    arches: Option<&BTreeSet<Arch>>,
) -> Result<Vec<Target>, LabelError> {
    let mut picked: Vec<(String, Option<Arch>)> = Vec::new();
    if words.is_empty() {
        picked = model.images.keys().map(|k| (k.clone(), None)).collect();
    }
    for word in words {
        picked.extend(resolve_word(model, word)?);
    }
    let mut out = BTreeSet::new();
    for (image, only) in picked {
        let img = &model.images[&image];
        for &arch in &img.arch {
            if only.is_some_and(|o| o != arch) || arches.is_some_and(|set| !set.contains(&arch)) {
                continue;
            }
            out.insert(Target {
                image: image.clone(),
                arch,
            });
        }
    }
    if out.is_empty() && !model.images.is_empty() {
        return Err(LabelError::NothingSelected(if words.is_empty() {
            "//...".into()
        } else {
            words.join(" ")
        }));
    }
    Ok(out.into_iter().collect())
}
