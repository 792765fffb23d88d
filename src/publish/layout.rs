//! Where things live on a site, and how `current` is derived. Pure functions only.
//!
//! ```text
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.qcow2     the image, one object per format
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.raw
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.manifest  the provenance JSON; written last, with
//!                                                   create-only semantics: it is what makes
//!                                                   a version "hold" an image
//! segments/<Name>.<fmt>/<sha256>/<size>/<NNNNNNNN>   Swift SLO segments, shared by the scopes
//!                                                   (a promoted version copies only manifests)
//! <scope>/pointers/<Name>.json                      the live version of one image
//! <scope>/current                                   {"<Name>": "<date>-v<N>", …}
//! ```
//!
//! Why pointers: Swift has no compare-and-swap (If-Match is ignored on PUT, and
//! If-None-Match: * is not atomic), so a read-modify-write of `current` by two publishers can
//! lose one update. Each publisher instead owns one object, its image's pointer, and writes it
//! with a plain PUT (publishers of different images never write the same object). `current` is
//! a cache of the pointers, rebuilt from all of them by whoever published last, and re-checked
//! after every write until what was read back equals what the pointers say (see
//! [`super::settle_current`]): the writer of the final `current` always verifies it against a
//! listing made after its write, so an update it missed is put back by someone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A version name: `YYYYMMDD-vN`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub date: String,
    pub n: u32,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let (date, n) = s.split_once("-v")?;
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Version {
            date: date.to_string(),
            n: n.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-v{}", self.date, self.n)
    }
}

/// A scope name: `prod`, `staging`, `dev`, … (a single path segment).
pub fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn versions_prefix(scope: &str) -> String {
    format!("{scope}/versions/")
}

pub fn object(scope: &str, version: &Version, file: &str) -> String {
    format!("{scope}/versions/{version}/{file}")
}

pub fn manifest_file(name: &str) -> String {
    format!("{name}.manifest")
}

pub fn pointer(scope: &str, name: &str) -> String {
    format!("{scope}/pointers/{name}.json")
}

pub fn pointers_prefix(scope: &str) -> String {
    format!("{scope}/pointers/")
}

pub fn current(scope: &str) -> String {
    format!("{scope}/current")
}

/// The prefix under which a file's SLO segments live: by content, so that an interrupted upload
/// resumes with the segments already sent, and never mixes two contents.
pub fn segments_prefix(file: &str, sha256: &str, segment_size: u64) -> String {
    format!("segments/{file}/{sha256}/{segment_size}/")
}

pub const SEGMENTS: &str = "segments/";

/// The live version of one image on one site and scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub name: String,
    pub version: String,
    /// Format → SHA-256 of the published file: how a re-publish recognises the live image.
    pub sha256: BTreeMap<String, String>,
    /// UTC, RFC 3339.
    pub published_at: String,
}

/// Versions (and the image names each holds) out of a listing of `<scope>/versions/`.
pub fn versions_in(
    scope: &str,
    names: &[String],
) -> BTreeMap<Version, BTreeMap<String, Vec<String>>> {
    let prefix = versions_prefix(scope);
    let mut out: BTreeMap<Version, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for n in names {
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        let Some((v, file)) = rest.split_once('/') else {
            continue;
        };
        let Some(v) = Version::parse(v) else {
            continue;
        };
        let Some((image, _ext)) = file.rsplit_once('.') else {
            continue;
        };
        out.entry(v)
            .or_default()
            .entry(image.to_string())
            .or_default()
            .push(file.to_string());
    }
    out
}

/// The first version of `date` that does not hold `name` yet, given the versions that do.
pub fn next_free(date: &str, holding: &[Version]) -> Version {
    let mut n = 1;
    while holding.iter().any(|v| v.date == date && v.n == n) {
        n += 1;
    }
    Version {
        date: date.to_string(),
        n,
    }
}

/// `current` as the pointers say it should be. Entries of the old `current` for images that
/// have no pointer yet (published by an older tool) are kept, so the first ccb publish on a
/// site never drops them.
pub fn derive_current(
    old: &BTreeMap<String, String>,
    pointers: &[Pointer],
) -> BTreeMap<String, String> {
    let mut out = old.clone();
    for p in pointers {
        out.insert(p.name.clone(), p.version.clone());
    }
    out
}

/// Whether `current` already says everything the pointers say.
pub fn current_settled(current: &BTreeMap<String, String>, pointers: &[Pointer]) -> bool {
    pointers
        .iter()
        .all(|p| current.get(&p.name) == Some(&p.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_and_print_the_upstream_way() {
        assert_eq!(v("20261127-v3").to_string(), "20261127-v3");
        for bad in [
            "2026112-v1",
            "20261127-v0",
            "20261127-v01",
            "20261127v1",
            "x-v1",
            "20261127-v",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
        assert!(v("20261127-v10") > v("20261127-v9"));
        assert!(v("20261128-v1") > v("20261127-v9"));
    }

    #[test]
    fn the_next_free_version_skips_those_holding_the_image_that_day() {
        assert_eq!(next_free("20261127", &[]).to_string(), "20261127-v1");
        let held = [v("20261127-v1"), v("20261127-v2"), v("20261126-v3")];
        assert_eq!(next_free("20261127", &held).to_string(), "20261127-v3");
    }

    #[test]
    fn a_listing_groups_files_by_version_and_image() {
        let names: Vec<String> = [
            "prod/versions/20261127-v1/CC-Debian12.qcow2",
            "prod/versions/20261127-v1/CC-Debian12.manifest",
            "prod/versions/20261127-v1/CC-Ubuntu24.04.manifest",
            "prod/versions/junk/CC-Debian12.manifest",
            "prod/current",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = versions_in("prod", &names);
        assert_eq!(got.len(), 1);
        let images = &got[&v("20261127-v1")];
        assert_eq!(images["CC-Debian12"].len(), 2);
        assert!(images.contains_key("CC-Ubuntu24.04"));
    }

    #[test]
    fn current_keeps_images_without_pointers_and_follows_the_pointers() {
        let old: BTreeMap<String, String> = [
            ("Legacy".to_string(), "20250101-v1".to_string()),
            ("A".to_string(), "20260101-v1".to_string()),
        ]
        .into();
        let p = |name: &str, version: &str| Pointer {
            name: name.into(),
            version: version.into(),
            sha256: BTreeMap::new(),
            published_at: String::new(),
        };
        let pointers = [p("A", "20261127-v1"), p("B", "20261127-v2")];
        let new = derive_current(&old, &pointers);
        assert_eq!(new["Legacy"], "20250101-v1");
        assert_eq!(new["A"], "20261127-v1");
        assert_eq!(new["B"], "20261127-v2");
        assert!(!current_settled(&old, &pointers));
        assert!(current_settled(&new, &pointers));
    }
}
