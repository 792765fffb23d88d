//! Where things live on a site, and how `current` is derived. Pure functions only.
//!
//! ```text
//! <scope>/versions/<YYYYMMDD>-v<N>                  the version's marker: zero bytes, what a
//!                                                   site's puller skips as the first line of
//!                                                   the version's listing (see [`marker`])
//! <scope>/claims/<YYYYMMDD>-v<N>/<Name>             a publisher's create-only claim on the
//!                                                   image in the version (see [`claim`])
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.qcow2     the image, one object per format
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.raw
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.spdx.json   the SBOM (SPDX 2.3 JSON)
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.SHA256SUMS  SHA-256 of every file of the image here
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.SHA256SUMS.sig  its SSHSIG signature (when signed)
//! <scope>/versions/<YYYYMMDD>-v<N>/<Name>.manifest  the provenance JSON; written last, with
//!                                                   create-only semantics: it is what makes
//!                                                   a version "hold" an image
//! segments/<Name>.<fmt>/<sha256>/<size>/<NNNNNNNN>   Swift SLO segments, shared by the scopes
//!                                                   (a promoted version copies only manifests)
//! <scope>/pointers/<Name>.json                      the live version of one image
//! <scope>/current                                   {"<Name>": "<date>-v<N>", …}
//! ```
//!
//! Containers upstream's publisher filled have no pointers and no claims, and may hold
//! suffixed versions (`20250422-v1-arm`): everything here reads them as they are.
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

/// A version name: `YYYYMMDD-vN`, or upstream's suffixed form `YYYYMMDD-vN-<suffix>`
/// (`20250422-v1-arm`: the part after `-` matches `^v\d+(-[a-z]+)?$`). ccb names its own
/// versions without a suffix; suffixed ones come from containers upstream's publisher filled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub date: String,
    pub n: u32,
    pub suffix: Option<String>,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let (date, rest) = s.split_once("-v")?;
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (n, suffix) = match rest.split_once('-') {
            Some((n, suffix)) => {
                if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                (n, Some(suffix.to_string()))
            }
            None => (rest, None),
        };
        if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Version {
            date: date.to_string(),
            n: n.parse().ok()?,
            suffix,
        })
    }

    /// Whether a site's puller could mistake one version for the other: it lists
    /// `?prefix=<scope>/versions/<version>` with no trailing slash, so `…-v1` also lists
    /// `…-v1-arm/…` and `…-v10/…`. Two such versions must never hold the same image.
    pub fn prefix_collides(&self, other: &Version) -> bool {
        let (a, b) = (self.to_string(), other.to_string());
        a != b && (a.starts_with(&b) || b.starts_with(&a))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-v{}", self.date, self.n)?;
        if let Some(s) = &self.suffix {
            write!(f, "-{s}")?;
        }
        Ok(())
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

/// The version's marker: a zero-byte object named exactly `<scope>/versions/<version>`, as
/// upstream's publisher leaves it. A site's puller skips the first line of the prefix listing
/// of a version, believing it to be this object: without it, the puller skips the first real
/// object (a `.manifest`) and the image is silently never deployed.
pub fn marker(scope: &str, version: &Version) -> String {
    format!("{scope}/versions/{version}")
}

/// A publisher's claim on one image in one version, written create-only before any of the
/// image's objects: two publishers of one image on one day never write the same objects.
/// Outside `versions/`, so no puller ever lists it.
pub fn claim(scope: &str, version: &Version, name: &str) -> String {
    format!("{scope}/claims/{version}/{name}")
}

pub fn claims_prefix(scope: &str) -> String {
    format!("{scope}/claims/")
}

/// The (version, image) pairs a listing of `<scope>/claims/` names.
pub fn claims_in(scope: &str, names: &[String]) -> Vec<(Version, String)> {
    let prefix = claims_prefix(scope);
    names
        .iter()
        .filter_map(|n| {
            let (v, image) = n.strip_prefix(&prefix)?.split_once('/')?;
            Some((Version::parse(v)?, image.to_string()))
        })
        .collect()
}

/// The files of an image beside its disk formats and manifest, by what follows `<Name>.`;
/// longest first, as one ends another.
pub const EXTRA_FILES: [&str; 3] = ["SHA256SUMS.sig", "SHA256SUMS", "spdx.json"];

/// Whether what follows `<Name>.` names one of [`EXTRA_FILES`].
pub fn is_extra_file(suffix: &str) -> bool {
    EXTRA_FILES.contains(&suffix)
}

/// `(image, what follows <Name>.)` of a file name in a version: the extras first (an image's
/// name may hold dots, `CC-Ubuntu24.04.spdx.json`), else the last dot.
pub fn split_file(file: &str) -> Option<(&str, &str)> {
    EXTRA_FILES
        .iter()
        .find_map(|x| {
            let image = file.strip_suffix(x)?.strip_suffix('.')?;
            (!image.is_empty()).then_some((image, *x))
        })
        .or_else(|| file.rsplit_once('.'))
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
        let Some((image, _ext)) = split_file(file) else {
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

/// The first version of `date` free for an image, given the versions taken for it (holding or
/// claimed): not taken, and not a prefix of, nor prefixed by, a taken one (see
/// [`Version::prefix_collides`]). `None` when every candidate collides (`-v1`…`-v9` all taken
/// make every `-vNN` of the day a collision).
pub fn next_free(date: &str, taken: &[Version]) -> Option<Version> {
    (1..=999)
        .map(|n| Version {
            date: date.to_string(),
            n,
            suffix: None,
        })
        .find(|v| free_for(v, taken))
}

/// Whether an image may go into `version`, given the versions taken for it.
pub fn free_for(version: &Version, taken: &[Version]) -> bool {
    !taken
        .iter()
        .any(|t| t == version || t.prefix_collides(version))
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
        assert_eq!(v("20250422-v1-arm").to_string(), "20250422-v1-arm");
        assert_eq!(v("20250422-v1-arm").suffix.as_deref(), Some("arm"));
        for bad in [
            "20250422-v1-",
            "20250422-v1-ARM",
            "20250422-v1-arm64",
            "20250422-v1-a-b",
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
        assert_eq!(
            next_free("20261127", &[]).unwrap().to_string(),
            "20261127-v1"
        );
        let held = [v("20261127-v1"), v("20261127-v2"), v("20261126-v3")];
        assert_eq!(
            next_free("20261127", &held).unwrap().to_string(),
            "20261127-v3"
        );
    }

    #[test]
    fn versions_a_puller_would_confuse_by_prefix_collide() {
        assert!(v("20250422-v1").prefix_collides(&v("20250422-v1-arm")));
        assert!(v("20250422-v10").prefix_collides(&v("20250422-v1")));
        assert!(!v("20250422-v1").prefix_collides(&v("20250422-v1")));
        assert!(!v("20250422-v1").prefix_collides(&v("20250422-v2")));
        assert!(!v("20250422-v1-arm").prefix_collides(&v("20250422-v1-amd")));
    }

    #[test]
    fn the_next_free_version_never_prefix_collides_with_a_taken_one() {
        // Upstream left the image in -v1-arm: -v1 would list it too.
        let taken = [v("20250422-v1-arm")];
        assert_eq!(
            next_free("20250422", &taken).unwrap().to_string(),
            "20250422-v2"
        );
        // -v10 is listed by -v1's prefix: after -v1..-v9 every version of the day collides.
        let taken: Vec<Version> = (1..=9).map(|n| v(&format!("20250422-v{n}"))).collect();
        assert_eq!(next_free("20250422", &taken), None);
        assert!(!free_for(&v("20250422-v12"), &taken));
        assert!(free_for(&v("20250423-v1"), &taken));
    }

    #[test]
    fn claims_name_their_version_and_image() {
        let c = claim("prod", &v("20261127-v2"), "CC-Debian12");
        assert_eq!(c, "prod/claims/20261127-v2/CC-Debian12");
        let got = claims_in("prod", &[c, "prod/claims/junk/X".into()]);
        assert_eq!(got, vec![(v("20261127-v2"), "CC-Debian12".to_string())]);
        assert_eq!(
            marker("prod", &v("20250422-v1-arm")),
            "prod/versions/20250422-v1-arm"
        );
    }

    #[test]
    fn a_listing_groups_files_by_version_and_image() {
        let names: Vec<String> = [
            "prod/versions/20261127-v1/CC-Debian12.qcow2",
            "prod/versions/20261127-v1/CC-Debian12.manifest",
            "prod/versions/20261127-v1/CC-Ubuntu24.04.manifest",
            "prod/versions/20261127-v1/CC-Ubuntu24.04.spdx.json",
            "prod/versions/20261127-v1/CC-Ubuntu24.04.SHA256SUMS",
            "prod/versions/20261127-v1/CC-Ubuntu24.04.SHA256SUMS.sig",
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
        assert_eq!(
            images.len(),
            2,
            "the SBOM and checksums are the image's: {images:?}"
        );
        assert_eq!(images["CC-Ubuntu24.04"].len(), 4);
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
