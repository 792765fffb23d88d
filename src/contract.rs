//! What a Chameleon site's image puller (hammers-v2's `image_deployer`) needs from a
//! published version, as pure checks and conversions. The README's "What the sites read"
//! section is the prose form of this module.
//!
//! The puller passes every key of `<Name>.manifest` to Glance as an image property, so a key
//! Glance reserves breaks the upload; it parses `build-timestamp` with Python's
//! `%Y-%m-%d %H:%M:%S.%f` (or as a float epoch) to promote and archive images, so any other
//! form leaves the new image private; and python-chi recognises a supported image by
//! `build-repo`. None of this fails loudly at the site: it is checked here, before anything is
//! uploaded.

use serde_json::{Map, Value};

/// Upstream's manifest keys, exactly: the published manifest has these and no others.
pub const MANIFEST_KEYS: [&str; 9] = [
    "build-distro",
    "build-release",
    "build-variant",
    "build-repo",
    "build-repo-commit",
    "build-timestamp",
    "build-tag",
    "build-ipa",
    "chameleon-supported",
];

/// Keys the puller sets itself when it creates the Glance image: a manifest holding one makes
/// the upload fail (a duplicate keyword argument).
pub const FORBIDDEN_KEYS: [&str; 5] = [
    "name",
    "disk_format",
    "container_format",
    "visibility",
    "data",
];

/// Why a manifest cannot be deployed as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem(pub String);

/// A build time as the puller parses it: UTC, `%Y-%m-%d %H:%M:%S.%f`, always with the six
/// digits of microseconds (Python's `str(datetime)` drops them when they are zero, which
/// `strptime` then refuses: never rely on it).
pub fn build_timestamp(secs: u64, micros: u32) -> String {
    let (iso, _) = utc(secs);
    // `2026-11-27T19:30:05Z` → `2026-11-27 19:30:05.000000`
    format!("{} {}.{:06}", &iso[..10], &iso[11..19], micros.min(999_999))
}

/// Whether `s` parses with Python's `datetime.strptime(s, "%Y-%m-%d %H:%M:%S.%f")` in the
/// shape ccb writes (zero-padded fields, six-digit fraction), with a real calendar date.
pub fn parses_as_build_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 26 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let shape = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26);
    if !shape {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(u32::MAX);
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && (1..=days).contains(&d) && num(11..13) < 24 && num(14..16) < 60 && num(17..19) < 62
}

/// The timestamp in the puller's format: kept when it already is, converted from the RFC 3339
/// form earlier ccb builds wrote (`2026-11-27T19:30:05Z`), refused otherwise.
fn normalize_timestamp(s: &str) -> Option<String> {
    if parses_as_build_timestamp(s) {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    if b.len() == 20 && b[10] == b'T' && b[19] == b'Z' {
        let candidate = format!("{} {}.000000", &s[..10], &s[11..19]);
        return parses_as_build_timestamp(&candidate).then_some(candidate);
    }
    None
}

/// The `<Name>.manifest` to publish, from the build's provenance record: upstream's exact key
/// set, every value a non-empty-where-it-matters string, `build-timestamp` in the puller's
/// format and `build-tag` = `<Name>-<build-timestamp>`. Refuses what a site could not deploy.
pub fn site_manifest(name: &str, provenance: &[u8]) -> Result<Vec<u8>, ManifestProblem> {
    let value: Value = serde_json::from_slice(provenance)
        .map_err(|e| ManifestProblem(format!("the provenance record is not JSON: {e}")))?;
    let Value::Object(record) = value else {
        return Err(ManifestProblem(
            "the provenance record is not a JSON object".into(),
        ));
    };
    let forbidden: Vec<&str> = FORBIDDEN_KEYS
        .iter()
        .copied()
        .filter(|k| record.contains_key(*k))
        .collect();
    if !forbidden.is_empty() {
        return Err(ManifestProblem(format!(
            "it has key(s) {} that the sites' puller sets itself when it creates the Glance \
             image: the upload would fail",
            forbidden.join(", ")
        )));
    }
    let unknown: Vec<&str> = record
        .keys()
        .map(String::as_str)
        .filter(|k| !MANIFEST_KEYS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(ManifestProblem(format!(
            "it has key(s) {} outside upstream's set ({})",
            unknown.join(", "),
            MANIFEST_KEYS.join(", ")
        )));
    }
    let mut out = Map::new();
    for key in MANIFEST_KEYS {
        match record.get(key) {
            Some(Value::String(s)) => {
                out.insert(key.to_string(), Value::String(s.clone()));
            }
            Some(other) => {
                return Err(ManifestProblem(format!(
                    "`{key}` is {other}, not a string (every Glance property is a string)"
                )));
            }
            None => {
                return Err(ManifestProblem(format!("`{key}` is missing")));
            }
        }
    }
    let repo = out["build-repo"].as_str().unwrap_or_default();
    if repo.is_empty() {
        return Err(ManifestProblem(
            "`build-repo` is empty: set `build_repo` in manifests/project.ncl (python-chi only \
             counts an image as supported when it names the project's repository)"
                .into(),
        ));
    }
    let given = out["build-timestamp"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ts = normalize_timestamp(&given).ok_or_else(|| {
        ManifestProblem(format!(
            "`build-timestamp` `{given}` does not parse as `%Y-%m-%d %H:%M:%S.%f`: the sites \
             could not promote the image"
        ))
    })?;
    out.insert("build-tag".into(), Value::String(format!("{name}-{ts}")));
    out.insert("build-timestamp".into(), Value::String(ts));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(out)).expect("a map serializes");
    bytes.push(b'\n');
    Ok(bytes)
}

/// Whether a Swift read ACL (`X-Container-Read`) lets anyone read and list the container,
/// which is how every site's puller reads it (`.r:*,.rlistings`).
pub fn acl_is_public(acl: &str) -> bool {
    let grants: Vec<&str> = acl.split(',').map(str::trim).collect();
    grants.contains(&".r:*") && grants.contains(&".rlistings")
}

/// A repository URL fit to publish: without the user name and password an `https://` remote
/// may carry (`https://user:token@host/…`). `None` for an empty URL.
pub fn public_repo_url(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return None;
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return Some(format!("{scheme}://{host}{path}"));
    }
    Some(url.to_string())
}

/// Now, as [`utc`] formats it.
pub fn utc_now() -> (String, String) {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
}

/// `2026-11-27T19:30:05Z` and `20261127193005` for a Unix time (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        format!("{y:04}{m:02}{d:02}{h:02}{mi:02}{s:02}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_format_like_date_u() {
        assert_eq!(utc(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).0, "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_800_605).1, "20261127173005");
    }

    fn record(ts: &str) -> serde_json::Value {
        serde_json::json!({
            "build-distro": "debian",
            "build-release": "bookworm",
            "build-variant": "base",
            "build-repo": "https://github.com/ChameleonCloud/cc-images",
            "build-repo-commit": "0123abcd",
            "build-timestamp": ts,
            "build-tag": "whatever",
            "build-ipa": "false",
            "chameleon-supported": "true",
        })
    }

    fn manifest(v: &serde_json::Value) -> Result<serde_json::Value, ManifestProblem> {
        site_manifest("CC-Debian12", v.to_string().as_bytes())
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn build_timestamps_always_carry_microseconds() {
        assert_eq!(build_timestamp(0, 0), "1970-01-01 00:00:00.000000");
        assert_eq!(
            build_timestamp(1_795_800_605, 42),
            "2026-11-27 17:30:05.000042"
        );
        assert!(parses_as_build_timestamp(&build_timestamp(
            1_795_800_605,
            999_999
        )));
    }

    #[test]
    fn only_real_dates_in_the_pullers_format_parse() {
        assert!(parses_as_build_timestamp("2024-02-29 23:59:59.123456"));
        for bad in [
            "2023-02-29 00:00:00.000000",
            "2026-11-27T17:30:05Z",
            "2026-11-27 17:30:05",
            "2026-13-01 00:00:00.000000",
            "2026-11-27 24:00:00.000000",
            "2026-11-27 17:30:05.1234567",
        ] {
            assert!(!parses_as_build_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn the_manifest_has_upstreams_keys_and_a_tag_made_of_name_and_time() {
        let m = manifest(&record("2026-12-06 09:23:12.000000")).unwrap();
        let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, MANIFEST_KEYS);
        assert_eq!(m["build-tag"], "CC-Debian12-2026-12-06 09:23:12.000000");
    }

    #[test]
    fn an_earlier_rfc3339_timestamp_is_converted() {
        let m = manifest(&record("2026-11-27T17:30:05Z")).unwrap();
        assert_eq!(m["build-timestamp"], "2026-11-27 17:30:05.000000");
    }

    #[test]
    fn what_a_site_could_not_deploy_is_refused_with_the_reason() {
        let err = |v: serde_json::Value| manifest(&v).unwrap_err().0;
        let mut v = record("2026-12-06 09:23:12.000000");
        v["visibility"] = "public".into();
        assert!(err(v).contains("visibility"));
        assert!(err(record("yesterday")).contains("build-timestamp"));
        let mut v = record("2026-12-06 09:23:12.000000");
        v["build-repo"] = "".into();
        assert!(err(v).contains("build_repo"));
        let mut v = record("2026-12-06 09:23:12.000000");
        v["build-ipa"] = false.into();
        assert!(err(v).contains("not a string"));
        let mut v = record("2026-12-06 09:23:12.000000");
        v.as_object_mut().unwrap().remove("build-tag");
        assert!(err(v).contains("build-tag"));
        let mut v = record("2026-12-06 09:23:12.000000");
        v["extra"] = "x".into();
        assert!(err(v).contains("extra"));
    }

    #[test]
    fn a_public_acl_grants_both_reading_and_listing() {
        assert!(acl_is_public(".r:*,.rlistings"));
        assert!(acl_is_public(".rlistings, .r:*"));
        assert!(!acl_is_public(".r:*"));
        assert!(!acl_is_public(""));
        assert!(!acl_is_public("AUTH_x:*"));
    }

    #[test]
    fn a_remote_url_loses_its_credentials() {
        assert_eq!(
            public_repo_url("https://user:s3cret@github.com/org/repo.git").as_deref(),
            Some("https://github.com/org/repo.git")
        );
        assert_eq!(
            public_repo_url("git@github.com:org/repo.git").as_deref(),
            Some("git@github.com:org/repo.git")
        );
        assert_eq!(public_repo_url("  "), None);
    }
}
