//! What the Chameleon sites read, tried as a site does (issue [1/9]): a puller written here
//! from the consumer's contract (hammers-v2's `image_deployer`, described in the README's
//! "What the sites read"), reading the real Swift container anonymously and registering
//! images in a recording stand-in for Glance; publishers racing on one image; and a container
//! filled the way upstream's publisher leaves it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};

use crate::publish::{Project, build_time, provenance, rig, sha256, swift_site, today};

/// An anonymous HTTP GET (no token, as the sites read): (status, body).
fn anonymous_get(url: &str, to: Option<&Path>) -> (u16, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-g", "-w", "\n%{http_code}"]);
    if let Some(path) = to {
        cmd.arg("-o").arg(path);
    } else {
        cmd.args(["-o", "-"]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = out.stdout;
    let cut = text.iter().rposition(|b| *b == b'\n').unwrap();
    let code = String::from_utf8_lossy(&text[cut + 1..])
        .trim()
        .parse()
        .unwrap();
    (code, text[..cut].to_vec())
}

/// Python's own parse of a build time, as the puller does it: `str()` of
/// `datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f")`, else of `fromtimestamp(float(ts))`;
/// `None` when neither parses (the puller then fails the promotion).
fn python_build_time(ts: &str) -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import datetime, sys\n\
             ts = sys.argv[1]\n\
             try:\n    print(datetime.datetime.strptime(ts, '%Y-%m-%d %H:%M:%S.%f'))\n\
             except ValueError:\n    print(datetime.datetime.fromtimestamp(float(ts)))\n",
            ts,
        ])
        .output()
        .expect("python3");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One image in the stand-in for Glance.
#[derive(Debug, Clone)]
struct GlanceImage {
    name: String,
    public: bool,
    disk_format: String,
    properties: BTreeMap<String, String>,
    sha256: String,
}

/// A recording stand-in for a site's Glance: what was registered, renamed, and refused.
#[derive(Debug, Default)]
struct Glance {
    images: Vec<GlanceImage>,
    registered: Vec<String>,
    renames: Vec<(String, String)>,
    failures: Vec<String>,
}

impl Glance {
    fn public(&self, name: &str) -> Vec<&GlanceImage> {
        self.images
            .iter()
            .filter(|i| i.public && i.name == name)
            .collect()
    }
}

/// A site's puller, from the contract: anonymous GETs of `<base>/<scope>/current`, of the
/// version's plain-text prefix listing (its first line skipped: upstream's marker object),
/// of `<Name>.manifest` and `<Name>.<disk_format>`; every manifest key a Glance property plus
/// `current`; promotion by build time, archiving the previous public image as
/// `<Name>_<its build time>`.
struct Puller<'a> {
    base: String,
    scope: &'a str,
    disk_format: &'a str,
    scratch: &'a Path,
}

impl Puller<'_> {
    fn sync(&self, glance: &mut Glance) {
        let (code, body) = anonymous_get(&format!("{}/{}/current", self.base, self.scope), None);
        assert_eq!(code, 200, "current: {}", String::from_utf8_lossy(&body));
        let current: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).expect("current is a JSON object");
        for (name, version) in current {
            let version = version.as_str().expect("versions are strings").to_string();
            let prefix = format!("{}/versions/{version}", self.scope);
            let (code, listing) = anonymous_get(&format!("{}/?prefix={prefix}", self.base), None);
            assert_eq!(code, 200, "listing {prefix}");
            let listing = String::from_utf8(listing).unwrap();
            let found: Vec<String> = listing
                .lines()
                .skip(1)
                .filter_map(|l| l.rsplit('/').next())
                .filter(|o| o.ends_with(&format!("{name}.manifest")))
                .map(|o| o.trim_end_matches(".manifest").to_string())
                .collect();
            for image in found {
                let up_to_date = glance.public(&image).first().is_some_and(|i| {
                    i.properties.get("current").map(String::as_str) == Some(version.as_str())
                });
                if !up_to_date {
                    self.deploy(glance, &image, &prefix, &version);
                }
            }
        }
    }

    fn deploy(&self, glance: &mut Glance, image: &str, prefix: &str, version: &str) {
        let (code, body) = anonymous_get(&format!("{}/{prefix}/{image}.manifest", self.base), None);
        assert_eq!(code, 200, "{image}.manifest");
        let manifest: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&body).expect("the manifest is a JSON object");
        for key in [
            "name",
            "disk_format",
            "container_format",
            "visibility",
            "data",
        ] {
            assert!(
                !manifest.contains_key(key),
                "`{key}` in the manifest: the Glance upload would fail"
            );
        }
        let mut properties: BTreeMap<String, String> = manifest
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .expect("Glance properties are strings")
                        .to_string(),
                )
            })
            .collect();
        properties.insert("current".into(), version.to_string());
        let file = self.scratch.join(format!("{image}.{}", self.disk_format));
        let (code, _) = anonymous_get(
            &format!("{}/{prefix}/{image}.{}", self.base, self.disk_format),
            Some(&file),
        );
        assert_eq!(code, 200, "{image}.{}", self.disk_format);
        glance.registered.push(format!("{image} {version}"));
        glance.images.push(GlanceImage {
            name: format!("testing_{image}"),
            public: false,
            disk_format: self.disk_format.to_string(),
            properties,
            sha256: sha256(&file),
        });
        let new = glance.images.len() - 1;
        // Promotion: the build time must parse; the previous public image is archived under
        // its own build time.
        let Some(_) = python_build_time(&glance.images[new].properties["build-timestamp"]) else {
            glance
                .failures
                .push(format!("{image}: build-timestamp does not parse"));
            return;
        };
        let old: Vec<usize> = (0..glance.images.len())
            .filter(|i| glance.images[*i].public && glance.images[*i].name == image)
            .collect();
        assert!(old.len() <= 1, "more than one public {image}");
        if let Some(&o) = old.first() {
            let Some(at) = python_build_time(&glance.images[o].properties["build-timestamp"])
            else {
                glance.failures.push(format!(
                    "{image}: the old image's build-timestamp does not parse"
                ));
                return;
            };
            let archived = format!("{image}_{at}");
            glance.renames.push((image.to_string(), archived.clone()));
            glance.images[o].name = archived;
        }
        glance.images[new].name = image.to_string();
        glance.images[new].public = true;
    }
}

fn publish(p: &Project, images: &Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "publish",
        "--outputs",
        images.to_str().unwrap(),
        name,
        "--scope",
        "prod",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    p.ccb(&args).ok().json()["results"][0].clone()
}

#[test]
fn a_site_deploys_what_ccb_publishes_and_archives_the_previous_version_under_its_build_time() {
    let container = format!("ccb-test-site-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let base = format!("{}/{container}", rig.var("KS_SWIFT_STORAGE_URL"));
    let scratch = tempfile::tempdir().unwrap();
    let qcow2_site = Puller {
        base: base.clone(),
        scope: "prod",
        disk_format: "qcow2",
        scratch: scratch.path(),
    };
    let raw_site = Puller {
        base: base.clone(),
        scope: "prod",
        disk_format: "raw",
        scratch: scratch.path(),
    };
    let (mut tacc, mut kvm) = (Glance::default(), Glance::default());

    let first = p.images_in("build1", &["CC-Debian12"], 300_000, 1);
    // The SBOM and the checksums go beside the image: the puller must not take them for images.
    crate::common::write(
        first.join("CC-Debian12.spdx.json"),
        "{\"spdxVersion\": \"SPDX-2.3\"}\n",
    );
    let v1 = publish(&p, &first, "CC-Debian12", &[])["version"]
        .as_str()
        .unwrap()
        .to_string();
    // The version's listing starts with its marker: what the puller skips.
    let (_, listing) = anonymous_get(&format!("{base}/?prefix=prod/versions/{v1}"), None);
    let listing = String::from_utf8(listing).unwrap();
    assert_eq!(
        listing.lines().next(),
        Some(format!("prod/versions/{v1}").as_str()),
        "{listing}"
    );

    for extra in ["CC-Debian12.spdx.json", "CC-Debian12.SHA256SUMS"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("/{extra}"))),
            "{listing}"
        );
    }
    qcow2_site.sync(&mut tacc);
    raw_site.sync(&mut kvm);
    for (glance, format) in [(&tacc, "qcow2"), (&kvm, "raw")] {
        assert!(glance.failures.is_empty(), "{:?}", glance.failures);
        let live = glance.public("CC-Debian12");
        assert_eq!(live.len(), 1, "{format} site: {glance:?}");
        let live = live[0];
        assert_eq!(live.disk_format, format);
        assert_eq!(
            live.sha256,
            sha256(&first.join(format!("CC-Debian12.{format}")))
        );
        let props = &live.properties;
        let ts = build_time(1);
        assert_eq!(props["build-timestamp"], ts);
        assert_eq!(props["build-tag"], format!("CC-Debian12-{ts}"));
        assert_eq!(
            props["build-repo"],
            "https://github.com/ChameleonCloud/cc-images"
        );
        assert_eq!(props["chameleon-supported"], "true");
        assert_eq!(props["current"], v1);
        let keys: Vec<&str> = props.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "build-distro",
                "build-ipa",
                "build-release",
                "build-repo",
                "build-repo-commit",
                "build-tag",
                "build-timestamp",
                "build-variant",
                "chameleon-supported",
                "current"
            ]
        );
    }

    // Nothing new: the site does nothing.
    qcow2_site.sync(&mut tacc);
    assert_eq!(tacc.registered.len(), 1, "{:?}", tacc.registered);

    // The next build: a new version, deployed; the first archived under its own build time.
    let second = p.images_in("build2", &["CC-Debian12"], 300_000, 2);
    let v2 = publish(&p, &second, "CC-Debian12", &[])["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    qcow2_site.sync(&mut tacc);
    assert!(tacc.failures.is_empty(), "{:?}", tacc.failures);
    let live = tacc.public("CC-Debian12");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].properties["current"], v2);
    assert_eq!(live[0].sha256, sha256(&second.join("CC-Debian12.qcow2")));
    let archived = format!("CC-Debian12_{}", python_build_time(&build_time(1)).unwrap());
    assert_eq!(
        tacc.renames,
        vec![("CC-Debian12".to_string(), archived.clone())]
    );
    assert!(tacc.images.iter().any(|i| i.name == archived && i.public));

    // Without its marker, the first real object is the one skipped: the image is never found.
    // (What the marker is for; the site's state is left as it was.)
    // `<Name>.SHA256SUMS` sorts before the manifest (upper case first) and would be the line
    // skipped instead: removed too, as in a version published without checksums.
    let (code, _) = rig.swift("DELETE", &format!("{container}/prod/versions/{v2}"));
    assert_eq!(code, 204);
    let (code, _) = rig.swift(
        "DELETE",
        &format!("{container}/prod/versions/{v2}/CC-Debian12.SHA256SUMS"),
    );
    assert_eq!(code, 204);
    let mut fresh = Glance::default();
    qcow2_site.sync(&mut fresh);
    assert!(fresh.registered.is_empty(), "{:?}", fresh.registered);
}

#[test]
fn four_publishers_of_one_image_on_one_day_each_get_their_own_complete_version() {
    let container = format!("ccb-test-claims-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let swift = Project::with_rig(&swift_site(&container, "ccb"));
    let local = Project::new(
        "{ here = { name = \"Here\", baremetal = true, kind = 'local, path = \"site\" } }\n",
    );
    for p in [&swift, &local] {
        let dirs: Vec<_> = (1..=4u8)
            .map(|i| p.images_in(&format!("host{i}"), &["CC-Debian12"], 400_000, 10 + i))
            .collect();
        let children: Vec<Child> = dirs
            .iter()
            .map(|d| {
                p.spawn(&[
                    "publish",
                    "--outputs",
                    d.to_str().unwrap(),
                    "CC-Debian12",
                    "--scope",
                    "prod",
                    "--format",
                    "json",
                ])
            })
            .collect();
        let mut versions = Vec::new();
        for (child, dir) in children.into_iter().zip(&dirs) {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let v = report["results"][0]["version"]
                .as_str()
                .unwrap()
                .to_string();
            versions.push((v, dir.clone()));
        }
        let names: std::collections::BTreeSet<&str> =
            versions.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(names.len(), 4, "versions shared: {versions:?}");
        for (v, dir) in &versions {
            assert!(v.starts_with(&today()), "{v}");
            for other in &names {
                assert!(
                    *other == v || !(other.starts_with(v.as_str()) || v.starts_with(other)),
                    "{v} and {other} collide by prefix"
                );
            }
            // Each version holds its own publisher's files, whole, and its own manifest.
            let fetched = |file: &str| -> std::path::PathBuf {
                let to = dir.join(format!("fetched-{file}"));
                if std::ptr::eq(p, &swift) {
                    let (code, _) = anonymous_get(
                        &format!(
                            "{}/{container}/prod/versions/{v}/{file}",
                            rig.var("KS_SWIFT_STORAGE_URL")
                        ),
                        Some(&to),
                    );
                    assert_eq!(code, 200, "{v}/{file}");
                } else {
                    std::fs::copy(p.root().join(format!("site/prod/versions/{v}/{file}")), &to)
                        .unwrap();
                }
                to
            };
            for format in ["qcow2", "raw"] {
                assert_eq!(
                    sha256(&fetched(&format!("CC-Debian12.{format}"))),
                    sha256(&dir.join(format!("CC-Debian12.{format}"))),
                    "{v} {format}"
                );
            }
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(fetched("CC-Debian12.manifest")).unwrap())
                    .unwrap();
            let own: serde_json::Value = serde_json::from_slice(
                &std::fs::read(dir.join("CC-Debian12.d/CC-Debian12_provenance.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(manifest["build-timestamp"], own["build-timestamp"], "{v}");
        }
        // `current` names one of them.
        let current: serde_json::Value = serde_json::from_str(&if std::ptr::eq(p, &swift) {
            rig.get(&container, "prod/current")
        } else {
            std::fs::read_to_string(p.root().join("site/prod/current")).unwrap()
        })
        .unwrap();
        assert!(
            names.contains(current["CC-Debian12"].as_str().unwrap()),
            "{current}"
        );
    }
}

/// Puts an object into the container as the rig's user.
pub(crate) fn put(container: &str, object: &str, body: &str) {
    let rig = rig();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-T",
        ])
        .arg(file.path())
        .arg("-H")
        .arg(format!("X-Auth-Token: {}", rig.token()))
        .arg(format!(
            "{}/{container}/{object}",
            rig.var("KS_SWIFT_STORAGE_URL")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "PUT {object}");
}

#[test]
fn a_container_filled_by_upstreams_publisher_is_managed_and_published_into_without_harm() {
    let container = format!("ccb-test-upstream-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    // As upstream's publisher leaves it: a marker per version, suffixed versions, several
    // images per version, no pointers, and a `current` naming images ccb does not know.
    let manifest = |name: &str, ts: &str| provenance(name, ts);
    let fill = [
        (
            "20250101-v1-amd",
            "CC-Ubuntu22.04",
            "2025-01-01 10:00:00.000001",
        ),
        (
            "20250422-v1-amd",
            "CC-Ubuntu22.04",
            "2025-04-22 10:00:00.000002",
        ),
        (
            "20250422-v1-amd",
            "CC-Ubuntu24.04",
            "2025-04-22 10:00:00.000003",
        ),
        (
            "20250422-v1-arm",
            "CC-Ubuntu22.04-ARM64",
            "2025-04-22 11:00:00.000004",
        ),
        ("20250422-v1", "CC-Debian12", "2025-04-22 12:00:00.000005"),
    ];
    let mut markers = std::collections::BTreeSet::new();
    for (version, name, ts) in fill {
        if markers.insert(version) {
            put(&container, &format!("prod/versions/{version}"), "");
        }
        put(
            &container,
            &format!("prod/versions/{version}/{name}.manifest"),
            &manifest(name, ts),
        );
        put(
            &container,
            &format!("prod/versions/{version}/{name}.qcow2"),
            &format!("disk of {name} {version}"),
        );
    }
    let upstream_current = serde_json::json!({
        "CC-Ubuntu22.04": "20250422-v1-amd",
        "CC-Ubuntu24.04": "20250422-v1-amd",
        "CC-Ubuntu22.04-ARM64": "20250422-v1-arm",
        "CC-CentOS9-Stream": "20250422-v1-centos",
        "CC-Debian12": "20250422-v1",
    });
    put(&container, "prod/current", &upstream_current.to_string());
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let current = || -> serde_json::Value {
        serde_json::from_str(&rig.get(&container, "prod/current")).unwrap()
    };
    let at = ["--site", "rig", "--scope", "prod"];

    // Listed as they are, suffixes and all.
    let list = p
        .ccb(&[&["versions", "list"][..], &at, &["--format", "json"]].concat())
        .ok()
        .json();
    let versions: Vec<&str> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        [
            "20250101-v1-amd",
            "20250422-v1",
            "20250422-v1-amd",
            "20250422-v1-arm"
        ]
    );
    let amd = &list["versions"][2]["images"];
    assert_eq!(amd.as_array().unwrap().len(), 2, "{amd}");
    assert_eq!(amd[0]["live"], true);

    // Rolled back and forward: only that image's entry moves; the foreign ones stay.
    p.ccb(
        &[
            &["versions", "rollback"][..],
            &at,
            &["CC-Ubuntu22.04", "20250101-v1-amd"],
        ]
        .concat(),
    )
    .ok();
    let mut want = upstream_current.clone();
    want["CC-Ubuntu22.04"] = "20250101-v1-amd".into();
    assert_eq!(current(), want);
    p.ccb(
        &[
            &["versions", "rollback"][..],
            &at,
            &["CC-Ubuntu22.04", "20250422-v1-amd"],
        ]
        .concat(),
    )
    .ok();
    assert_eq!(current(), upstream_current);

    // Promoted to staging: the version's marker comes along, so staging's pullers find it.
    p.ccb(&[
        "versions",
        "promote",
        "--site",
        "rig",
        "--from",
        "prod",
        "--to",
        "staging",
        "CC-Ubuntu22.04-ARM64",
        "20250422-v1-arm",
    ])
    .ok();
    let staged: Vec<String> = rig
        .listing(&container, "staging/versions/20250422-v1-arm")
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        staged,
        [
            "staging/versions/20250422-v1-arm",
            "staging/versions/20250422-v1-arm/CC-Ubuntu22.04-ARM64.manifest",
            "staging/versions/20250422-v1-arm/CC-Ubuntu22.04-ARM64.qcow2",
        ]
    );

    // Pruned: the old version goes, marker and all; the live ones stay.
    let pruned = p
        .ccb(&[&["versions", "prune"][..], &at, &["--keep", "1"]].concat())
        .ok();
    assert!(
        pruned
            .stdout
            .contains("removed CC-Ubuntu22.04 20250101-v1-amd"),
        "{}",
        pruned.stdout
    );
    assert!(
        rig.listing(&container, "prod/versions/20250101-v1-amd")
            .is_empty()
    );
    assert_eq!(
        rig.listing(&container, "prod/versions/20250422-v1-amd")
            .len(),
        5
    );

    // A version a puller would confuse with one holding the image is refused, naming it.
    let images = p.images(&["CC-Debian12", "CC-Ubuntu22.04-ARM64"], 50_000, 7);
    let imgs = images.to_str().unwrap();
    p.ccb(&[
        "publish",
        "--outputs",
        imgs,
        "CC-Debian12",
        "--scope",
        "prod",
        "--version",
        "20250422-v10",
    ])
    .fails()
    .stderr_has("confused with 20250422-v1,");
    p.ccb(&[
        "publish",
        "--outputs",
        imgs,
        "CC-Ubuntu22.04-ARM64",
        "--scope",
        "prod",
        "--version",
        "20250422-v1",
    ])
    .fails()
    .stderr_has("confused with 20250422-v1-arm,");
    // Upstream's suffixed form is accepted where it is free.
    let r = publish(
        &p,
        &images,
        "CC-Ubuntu22.04-ARM64",
        &["--version", "20250423-v1-arm"],
    );
    assert_eq!(r["version"], "20250423-v1-arm");
    // And a plain publish lands beside upstream's entries without disturbing them.
    let r = publish(&p, &images, "CC-Debian12", &[]);
    let v = r["version"].as_str().unwrap().to_string();
    let mut want = upstream_current.clone();
    want["CC-Debian12"] = v.clone().into();
    want["CC-Ubuntu22.04-ARM64"] = "20250423-v1-arm".into();
    assert_eq!(current(), want);
}

#[test]
fn a_container_the_sites_cannot_read_anonymously_is_refused_with_the_fix() {
    let container = format!("ccb-test-private-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let (code, _) = rig.swift_with("POST", &container, &["X-Remove-Container-Read: x"]);
    assert!(code == 204 || code == 202);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let images = p.images(&["CC-P"], 4096, 3);
    let imgs = images.to_str().unwrap();
    let publish = |extra: &[&str]| {
        p.ccb(
            &[
                &["publish", "--outputs", imgs, "CC-P", "--scope", "prod"][..],
                extra,
            ]
            .concat(),
        )
    };
    publish(&[])
        .fails()
        .stderr_has(&format!("swift post -r '.r:*,.rlistings' {container}"));
    assert!(rig.listing(&container, "").is_empty(), "nothing is written");
    // Readable but not listable is not enough either: the sites list each version.
    rig.swift_with("POST", &container, &["X-Container-Read: .r:*"]);
    publish(&[])
        .fails()
        .stderr_has("not publicly readable and listable");
    publish(&["--no-public-check"]).ok();
    // A site declared private is not checked.
    let private = swift_site(&container, "ccb").replace("formats =", "public = false, formats =");
    std::fs::write(p.root().join("manifests/sites.ncl"), private).unwrap();
    let images = p.images(&["CC-P"], 4096, 4);
    p.ccb(&[
        "publish",
        "--outputs",
        images.to_str().unwrap(),
        "CC-P",
        "--scope",
        "prod",
    ])
    .ok();
}

#[test]
fn a_claimed_version_is_resumed_by_the_same_files_and_gone_around_by_others() {
    let p = Project::new(
        "{ here = { name = \"Here\", baremetal = true, kind = 'local, path = \"site\" } }\n",
    );
    let day = today();
    let images = p.images(&["CC-C"], 20_000, 5);
    let sums: BTreeMap<String, String> = ["qcow2", "raw"]
        .iter()
        .map(|f| (f.to_string(), sha256(&images.join(format!("CC-C.{f}")))))
        .collect();
    // A publisher of these very files that died after its claim and part of its upload.
    let claim = p.root().join(format!("site/prod/claims/{day}-v1/CC-C"));
    std::fs::create_dir_all(claim.parent().unwrap()).unwrap();
    std::fs::write(
        &claim,
        serde_json::json!({"pid": 1, "sha256": sums}).to_string(),
    )
    .unwrap();
    let v1 = p.root().join(format!("site/prod/versions/{day}-v1"));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("CC-C.qcow2"), b"half an upload").unwrap();
    // Other files: the claimed version is not theirs, with or without --version.
    let other = p.images_in("other", &["CC-C"], 20_000, 6);
    let o = other.to_str().unwrap();
    p.ccb(&[
        "publish",
        "--outputs",
        o,
        "CC-C",
        "--scope",
        "prod",
        "--version",
        "v1",
    ])
    .fails()
    .stderr_has("is claimed for CC-C by another publisher");
    let r = publish(&p, &other, "CC-C", &[]);
    assert_eq!(r["version"], format!("{day}-v2"));
    // The same files: the interrupted publish is finished in its own version.
    let r = publish(&p, &images, "CC-C", &[]);
    assert_eq!(r["version"], format!("{day}-v1"));
    assert_eq!(sha256(&v1.join("CC-C.qcow2")), sums["qcow2"]);
    assert!(v1.join(".ccb-self").is_file(), "the version's marker");
    let list = p
        .ccb(&[
            "versions", "list", "--site", "here", "--scope", "prod", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(list["versions"].as_array().unwrap().len(), 2, "{list}");
    // Pruned down to the live one: the other version goes, its directory and marker too.
    p.ccb(&[
        "versions", "prune", "--site", "here", "--scope", "prod", "--keep", "0",
    ])
    .ok();
    assert!(
        !p.root()
            .join(format!("site/prod/versions/{day}-v2"))
            .exists()
    );
    assert!(v1.join("CC-C.manifest").is_file());
}
