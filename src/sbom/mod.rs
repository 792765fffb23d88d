//! The software bill of materials of an image: an SPDX 2.3 JSON document, `<Name>.spdx.json`.
//!
//! Written by the disk action from the finished root filesystem (read with [`crate::inspect`]'s
//! own reader, from the very bytes that go into the disk), so it is cached with the disk and
//! deterministic: no clock (the time is the provenance record's build time), no random
//! identifier (the namespace is the disk action's key), packages and relationships sorted.
//!
//! ```text
//! SPDXRef-DOCUMENT DESCRIBES SPDXRef-Disk-qcow2, SPDXRef-Disk-raw   (name, SHA-256 of the file)
//! SPDXRef-Disk-*   CONTAINS  SPDXRef-Image                          (the operating system)
//! SPDXRef-Image    CONTAINS  SPDXRef-Deb-* | SPDXRef-Rpm-*          (dpkg status / rpm database)
//! SPDXRef-Element-*  BUILD_TOOL_OF  SPDXRef-Image                   (blake3 of each element)
//! SPDXRef-Source-*   CONTAINS       SPDXRef-Element-*               (ccb.lock's git pins)
//! SPDXRef-Artifact-* BUILD_DEPENDENCY_OF SPDXRef-Image              (SHA-256 pins)
//! SPDXRef-Image    DESCENDANT_OF    SPDXRef-Base                    (the base action, its image)
//! ```
//!
//! `ccb inspect` checks the document against the image ([`check`]): the same packages at the
//! same versions as the image's package database.

pub mod license;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::inspect::fs::{Filesystem, FsError};

/// The SBOM's file name next to the disk files.
pub fn file_name(image: &str) -> String {
    format!("{image}.spdx.json")
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SbomError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Dpkg(#[from] crate::inspect::dpkg::DpkgError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Rpm(#[from] crate::inspect::rpm::RpmError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fs(#[from] FsError),
    /// A document that is not the SPDX JSON ccb writes.
    #[error("not an SPDX 2.3 JSON document: {0}")]
    #[diagnostic(code(ccb::sbom::document))]
    Document(String),
}

/// What ccb keyed an image by, for the SBOM: made by the parent from the graph and the lock,
/// and carried to the disk action in its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub engine: String,
    /// The disk action's key (the document's namespace).
    pub disk_key: String,
    /// The actions under the disk, base first: (id, key).
    pub chain: Vec<(String, String)>,
    pub elements: Vec<ElementInput>,
    pub artifacts: Vec<ArtifactInput>,
    pub sources: Vec<SourceInput>,
    /// The base images the root filesystem was unpacked from (the root image's
    /// `base_artifacts`, or a digest the environment pins).
    pub base_images: Vec<BaseImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementInput {
    pub name: String,
    /// blake3 of the element directory (its key digest).
    pub digest: String,
    /// The locked git source it comes from.
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInput {
    pub name: String,
    /// The variable the build sees it as.
    pub variable: String,
    pub sha256: String,
    /// Where it is fetched from (redacted), when a URL.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInput {
    pub name: String,
    /// Redacted.
    pub url: String,
    pub git_ref: String,
    pub path: String,
    pub commit: String,
    pub tree: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The artifact (`ubuntu-rootfs-24.04:amd64`) or the environment variable that pins it
    /// (`DIB_UBUNTU_ROOTFS_SHA256`).
    pub name: String,
    pub sha256: String,
    /// Where it is fetched from, when the environment says.
    pub url: Option<String>,
}

/// The package database an image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ecosystem {
    Deb,
    Rpm,
}

impl Ecosystem {
    fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Deb => "deb",
            Ecosystem::Rpm => "rpm",
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsPackage {
    pub name: String,
    /// As the database shows it (dpkg's `Version`, rpm's `[epoch:]version-release`).
    pub version: String,
    /// Empty for an rpm without one (`gpg-pubkey`).
    pub arch: String,
    /// The source package: `name version` (dpkg) or the source rpm's file name.
    pub source: Option<String>,
    pub license: Option<license::Declared>,
    /// The package URL's version and extra qualifiers (rpm: the epoch).
    purl_version: String,
    purl_epoch: Option<u32>,
    /// dpkg: the source package's name when it differs (purl's `upstream`).
    upstream: Option<String>,
}

/// An image's packages and which distribution they are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsInventory {
    pub ecosystem: Option<Ecosystem>,
    /// `/etc/os-release`'s `ID` (`debian`, `ubuntu`, `centos`).
    pub distro: String,
    /// `VERSION_ID`.
    pub version_id: String,
    /// Sorted by name, arch, version.
    pub packages: Vec<OsPackage>,
}

/// The largest copyright file read.
const MAX_COPYRIGHT: u64 = 4 << 20;

fn os_release(fs: &dyn Filesystem) -> (String, String) {
    let text = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| fs.read_limited(p, 64 << 10).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (field("ID"), field("VERSION_ID"))
}

/// The installed packages of an image's root filesystem: dpkg's status file, else rpm's
/// database, else none.
pub fn inventory(fs: &dyn Filesystem) -> Result<OsInventory, SbomError> {
    let (distro, version_id) = os_release(fs);
    let mut out = OsInventory {
        ecosystem: None,
        distro,
        version_id,
        packages: vec![],
    };
    if fs.metadata(crate::inspect::dpkg::STATUS_PATH).is_ok() {
        out.ecosystem = Some(Ecosystem::Deb);
        for p in crate::inspect::dpkg::read_status(fs)? {
            if !p.is_installed() {
                continue;
            }
            let (src_name, src_version) = match p.source.split_once(' ') {
                Some((n, v)) => (n.to_string(), v.trim_matches(['(', ')', ' ']).to_string()),
                None if !p.source.is_empty() => (p.source.clone(), p.version.clone()),
                None => (p.name.clone(), p.version.clone()),
            };
            let license = fs
                .read_limited(
                    &format!("/usr/share/doc/{}/copyright", p.name),
                    MAX_COPYRIGHT,
                )
                .ok()
                .and_then(|b| license::from_dep5(&String::from_utf8_lossy(&b)));
            out.packages.push(OsPackage {
                upstream: (src_name != p.name).then(|| src_name.clone()),
                source: Some(format!("{src_name} {src_version}")),
                purl_version: p.version.clone(),
                purl_epoch: None,
                name: p.name,
                version: p.version,
                arch: p.arch,
                license,
            });
        }
    } else if fs.metadata(crate::inspect::rpm::DB_PATH).is_ok() {
        out.ecosystem = Some(Ecosystem::Rpm);
        for p in crate::inspect::rpm::read_packages(fs)? {
            let license = p.license.as_deref().map(license::from_name);
            out.packages.push(OsPackage {
                version: p.evr(),
                purl_version: format!("{}-{}", p.version, p.release),
                purl_epoch: p.epoch,
                upstream: None,
                source: p.source_rpm.clone(),
                license,
                name: p.name,
                arch: p.arch,
            });
        }
    }
    out.packages
        .sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
    Ok(out)
}

/// A purl component, percent-encoded as the package-url spec asks (`+` is `%2B`).
fn purl_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn purl(inv: &OsInventory, eco: Ecosystem, p: &OsPackage) -> String {
    let namespace = if inv.distro.is_empty() {
        eco.as_str().to_string()
    } else {
        inv.distro.clone()
    };
    let mut q = Vec::new();
    if !p.arch.is_empty() {
        q.push(format!("arch={}", purl_encode(&p.arch)));
    }
    if let Some(e) = p.purl_epoch {
        q.push(format!("epoch={e}"));
    }
    if !inv.distro.is_empty() {
        q.push(format!(
            "distro={}",
            purl_encode(&format!("{}-{}", inv.distro, inv.version_id))
        ));
    }
    if let Some(u) = &p.upstream {
        q.push(format!("upstream={}", purl_encode(u)));
    }
    let mut s = format!(
        "pkg:{}/{}/{}@{}",
        eco.as_str(),
        purl_encode(&namespace),
        purl_encode(&p.name),
        purl_encode(&p.purl_version)
    );
    if !q.is_empty() {
        s.push('?');
        s.push_str(&q.join("&"));
    }
    s
}

/// SPDX ids: `SPDXRef-` and letters, digits, `.` and `-`, each used once.
#[derive(Default)]
struct Ids(BTreeSet<String>);

impl Ids {
    fn make(&mut self, prefix: &str, name: &str) -> String {
        let base = format!("SPDXRef-{prefix}-{}", license::idstring(name));
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }
}

/// `2026-12-06 09:23:12.000000` (the provenance's build time) as SPDX's `2026-12-06T09:23:12Z`.
pub fn created_from_provenance(provenance: &str) -> String {
    let ts = serde_json::from_str::<Value>(provenance)
        .ok()
        .and_then(|v| v["build-timestamp"].as_str().map(str::to_string))
        .unwrap_or_default();
    if ts.len() >= 19 && crate::contract::parses_as_build_timestamp(&ts) {
        format!("{}T{}Z", &ts[..10], &ts[11..19])
    } else if ts.len() == 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z') {
        ts
    } else {
        "1970-01-01T00:00:00Z".to_string()
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A download location SPDX takes as it is (other schemes: `NOASSERTION`).
fn is_web_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && !s.contains(char::is_whitespace)
}

fn package(id: &str, name: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("SPDXID".into(), json!(id));
    m.insert("name".into(), json!(name));
    m
}

fn finish(mut m: serde_json::Map<String, Value>) -> Value {
    for (k, v) in [
        ("downloadLocation", "NOASSERTION"),
        ("licenseConcluded", "NOASSERTION"),
        ("licenseDeclared", "NOASSERTION"),
        ("copyrightText", "NOASSERTION"),
    ] {
        m.entry(k).or_insert(json!(v));
    }
    m.insert("filesAnalyzed".into(), json!(false));
    Value::Object(m)
}

fn relationship(a: &str, kind: &str, b: &str) -> Value {
    json!({"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b})
}

/// The SBOM of image `name`: its disk files (`(file name, sha256)`), its packages, ccb's
/// inputs, created at `created` (RFC 3339, from the provenance).
pub fn document(
    name: &str,
    created: &str,
    files: &[(String, String)],
    inv: &OsInventory,
    inputs: &Inputs,
) -> Value {
    let mut doc = Doc::default();
    let image_id = doc.ids.make("Image", name);
    let describes = doc.disks(name, files, &image_id);
    doc.image(&image_id, name, inv, inputs);
    doc.os_packages(&image_id, inv);
    let source_ids = doc.sources(inputs);
    doc.elements(&image_id, inputs, &source_ids);
    doc.artifacts(&image_id, inputs);
    doc.base(&image_id, inputs);
    doc.into_json(name, created, inputs, describes)
}

/// An SBOM being written: its packages and relationships, in order, with unique ids.
#[derive(Default)]
struct Doc {
    ids: Ids,
    packages: Vec<Value>,
    rels: Vec<Value>,
    /// License references the packages use: id → text.
    refs: BTreeMap<String, String>,
}

impl Doc {
    /// The disk files, each contained in the image; returns their ids (what the document
    /// describes).
    fn disks(&mut self, name: &str, files: &[(String, String)], image_id: &str) -> Vec<String> {
        let mut describes = Vec::new();
        for (file, sha256) in files {
            let ext = file.rsplit('.').next().unwrap_or(file);
            let id = self.ids.make("Disk", ext);
            let mut p = package(&id, file);
            p.insert("packageFileName".into(), json!(file));
            p.insert(
                "checksums".into(),
                json!([{"algorithm": "SHA256", "checksumValue": sha256}]),
            );
            p.insert("primaryPackagePurpose".into(), json!("FILE"));
            p.insert(
                "comment".into(),
                json!(format!("The {ext} disk file of {name}.")),
            );
            self.packages.push(finish(p));
            self.rels.push(relationship(&id, "CONTAINS", image_id));
            describes.push(id);
        }
        describes
    }

    /// The image itself: its OS and the actions it was built by.
    fn image(&mut self, image_id: &str, name: &str, inv: &OsInventory, inputs: &Inputs) {
        let mut image = package(image_id, name);
        image.insert("primaryPackagePurpose".into(), json!("OPERATING-SYSTEM"));
        if !inv.version_id.is_empty() {
            image.insert(
                "versionInfo".into(),
                json!(format!("{} {}", inv.distro, inv.version_id)),
            );
        }
        let chain: Vec<String> = inputs
            .chain
            .iter()
            .map(|(id, key)| format!("{id} {key}"))
            .collect();
        image.insert(
            "comment".into(),
            json!(format!(
                "Built by {} as disk action {} over: {}.",
                inputs.engine,
                inputs.disk_key,
                chain.join(", ")
            )),
        );
        self.packages.push(finish(image));
    }

    /// The OS packages installed in the image, with their package URLs and licenses.
    fn os_packages(&mut self, image_id: &str, inv: &OsInventory) {
        let Some(eco) = inv.ecosystem else {
            return;
        };
        let prefix = match eco {
            Ecosystem::Deb => "Deb",
            Ecosystem::Rpm => "Rpm",
        };
        for p in &inv.packages {
            let id = self.ids.make(prefix, &format!("{}-{}", p.name, p.arch));
            let mut m = package(&id, &p.name);
            m.insert("versionInfo".into(), json!(p.version));
            if let Some(src) = &p.source {
                m.insert(
                    "sourceInfo".into(),
                    json!(format!("built package from: {src}")),
                );
            }
            if let Some(l) = &p.license {
                m.insert("licenseDeclared".into(), json!(l.expression));
                for (k, v) in &l.refs {
                    self.refs.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            m.insert(
                "externalRefs".into(),
                json!([{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl(inv, eco, p),
                }]),
            );
            self.packages.push(finish(m));
            self.rels.push(relationship(image_id, "CONTAINS", &id));
        }
    }

    /// The git sources pinned by ccb.lock; returns their ids by source name.
    fn sources(&mut self, inputs: &Inputs) -> BTreeMap<String, String> {
        let mut source_ids = BTreeMap::new();
        for s in &inputs.sources {
            let id = self.ids.make("Source", &s.name);
            let mut m = package(&id, &s.name);
            m.insert("versionInfo".into(), json!(s.commit));
            m.insert(
                "downloadLocation".into(),
                json!(format!("git+{}@{}", s.url, s.commit)),
            );
            m.insert("primaryPackagePurpose".into(), json!("SOURCE"));
            m.insert(
                "comment".into(),
                json!(format!(
                    "A git source pinned by ccb.lock: ref {}, path {}, tree {}.",
                    s.git_ref, s.path, s.tree
                )),
            );
            self.packages.push(finish(m));
            source_ids.insert(s.name.clone(), id);
        }
        source_ids
    }

    /// The elements, each a build tool of the image (and contained in its source, if any).
    fn elements(&mut self, image_id: &str, inputs: &Inputs, source_ids: &BTreeMap<String, String>) {
        for e in &inputs.elements {
            let id = self.ids.make("Element", &e.name);
            let mut m = package(&id, &e.name);
            m.insert("versionInfo".into(), json!(e.digest));
            m.insert("primaryPackagePurpose".into(), json!("INSTALL"));
            m.insert(
                "comment".into(),
                json!("A diskimage-builder element; the version is the blake3 digest of its directory (ccb's key input)."),
            );
            self.packages.push(finish(m));
            self.rels.push(relationship(&id, "BUILD_TOOL_OF", image_id));
            if let Some(src) = e.source.as_ref().and_then(|s| source_ids.get(s)) {
                self.rels.push(relationship(src, "CONTAINS", &id));
            }
        }
    }

    /// The artifacts the build saw, pinned by SHA-256.
    fn artifacts(&mut self, image_id: &str, inputs: &Inputs) {
        for a in &inputs.artifacts {
            let id = self.ids.make("Artifact", &a.name);
            let mut m = package(&id, &a.name);
            if is_sha256(&a.sha256) {
                m.insert(
                    "checksums".into(),
                    json!([{"algorithm": "SHA256", "checksumValue": a.sha256}]),
                );
            }
            if let Some(u) = a.url.as_deref().filter(|u| is_web_url(u)) {
                m.insert("downloadLocation".into(), json!(u));
            }
            m.insert("primaryPackagePurpose".into(), json!("FILE"));
            m.insert(
                "comment".into(),
                json!(format!(
                    "An artifact pinned by SHA-256, seen by the build as ${}.",
                    a.variable
                )),
            );
            self.packages.push(finish(m));
            self.rels
                .push(relationship(&id, "BUILD_DEPENDENCY_OF", image_id));
        }
    }

    /// The base root filesystem the image descends from, and the distribution's images it
    /// was unpacked from.
    fn base(&mut self, image_id: &str, inputs: &Inputs) {
        let Some((base_id, base_key)) = inputs.chain.first() else {
            return;
        };
        let id = self.ids.make("Base", base_id);
        let mut m = package(&id, base_id);
        m.insert("versionInfo".into(), json!(base_key));
        m.insert(
            "comment".into(),
            json!("The base root filesystem (ccb's base action; the version is its key)."),
        );
        self.packages.push(finish(m));
        self.rels.push(relationship(image_id, "DESCENDANT_OF", &id));
        for b in inputs.base_images.iter().filter(|b| is_sha256(&b.sha256)) {
            let bid = self.ids.make("BaseImage", &b.name);
            let mut m = package(&bid, &b.name);
            m.insert(
                "checksums".into(),
                json!([{"algorithm": "SHA256", "checksumValue": b.sha256}]),
            );
            if let Some(u) = b.url.as_deref().filter(|u| is_web_url(u)) {
                m.insert("downloadLocation".into(), json!(u));
            }
            m.insert("primaryPackagePurpose".into(), json!("OPERATING-SYSTEM"));
            m.insert(
                "comment".into(),
                json!("The distribution's base image the root filesystem was unpacked from."),
            );
            self.packages.push(finish(m));
            self.rels.push(relationship(&id, "GENERATED_FROM", &bid));
        }
    }

    fn into_json(
        self,
        name: &str,
        created: &str,
        inputs: &Inputs,
        describes: Vec<String>,
    ) -> Value {
        let mut all_rels: Vec<Value> = describes
            .iter()
            .map(|d| relationship("SPDXRef-DOCUMENT", "DESCRIBES", d))
            .collect();
        all_rels.extend(self.rels);
        let extracted: Vec<Value> = self
            .refs
            .into_iter()
            .map(|(id, text)| {
                let name = id.trim_start_matches("LicenseRef-").to_string();
                json!({"licenseId": id, "extractedText": text, "name": name})
            })
            .collect();
        let mut doc = json!({
            "spdxVersion": "SPDX-2.3",
            "dataLicense": "CC0-1.0",
            "SPDXID": "SPDXRef-DOCUMENT",
            "name": name,
            "documentNamespace": format!("https://spdx.org/spdxdocs/ccb/{name}-{}", inputs.disk_key),
            "creationInfo": {
                "created": created,
                "creators": [format!("Tool: {}", inputs.engine)],
            },
            "documentDescribes": describes,
            "packages": self.packages,
            "relationships": all_rels,
        });
        if !extracted.is_empty() {
            doc["hasExtractedLicensingInfos"] = json!(extracted);
        }
        doc
    }
}

/// The document as written: pretty JSON and a final newline.
pub fn render(doc: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// (name, arch, version) of every OS package a document lists (those with a `pkg:deb` or
/// `pkg:rpm` package URL).
pub fn listed_packages(doc: &[u8]) -> Result<BTreeSet<(String, String, String)>, SbomError> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| SbomError::Document(e.to_string()))?;
    if v["spdxVersion"] != "SPDX-2.3" {
        return Err(SbomError::Document("no `spdxVersion: SPDX-2.3`".into()));
    }
    let packages = v["packages"]
        .as_array()
        .ok_or_else(|| SbomError::Document("no `packages` array".into()))?;
    let mut out = BTreeSet::new();
    for p in packages {
        let Some(locator) = p["externalRefs"].as_array().and_then(|refs| {
            refs.iter()
                .filter(|r| r["referenceType"] == "purl")
                .find_map(|r| r["referenceLocator"].as_str())
        }) else {
            continue;
        };
        if !(locator.starts_with("pkg:deb/") || locator.starts_with("pkg:rpm/")) {
            continue;
        }
        let arch = locator
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("arch="))
            .unwrap_or_default()
            .to_string();
        let field = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        out.insert((field("name"), arch, field("versionInfo")));
    }
    Ok(out)
}

/// `ccb inspect`'s check: the image's SBOM lists exactly its installed packages at their versions.
pub fn check_result(fs: &dyn Filesystem, doc: &[u8]) -> crate::inspect::check::CheckResult {
    let (passed, detail) = match check(fs, doc) {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    crate::inspect::check::CheckResult {
        name: "sbom".into(),
        passed,
        detail,
    }
}

/// Whether the document lists exactly the image's installed packages at their versions: the
/// passed check's detail, or what differs.
pub fn check(fs: &dyn Filesystem, doc: &[u8]) -> Result<String, String> {
    let listed = listed_packages(doc).map_err(|e| e.to_string())?;
    let inv = inventory(fs).map_err(|e| format!("the image's package database: {e}"))?;
    let image: BTreeSet<(String, String, String)> = inv
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.arch.clone(), p.version.clone()))
        .collect();
    if image == listed {
        return Ok(format!(
            "{} packages, as in the image's {}",
            image.len(),
            match inv.ecosystem {
                Some(Ecosystem::Rpm) => "rpm database",
                Some(Ecosystem::Deb) => "dpkg status",
                None => "(absent) package database",
            }
        ));
    }
    let show = |set: Vec<&(String, String, String)>| {
        let n = set.len();
        let mut s: Vec<String> = set
            .into_iter()
            .take(10)
            .map(|(n, a, v)| format!("{n}:{a} {v}"))
            .collect();
        if n > 10 {
            s.push(format!("… {} more", n - 10));
        }
        s.join(", ")
    };
    let mut parts = Vec::new();
    let missing: Vec<_> = image.difference(&listed).collect();
    if !missing.is_empty() {
        parts.push(format!("in the image, not in the SBOM: {}", show(missing)));
    }
    let extra: Vec<_> = listed.difference(&image).collect();
    if !extra.is_empty() {
        parts.push(format!("in the SBOM, not in the image: {}", show(extra)));
    }
    Err(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(name: &str, version: &str, arch: &str, upstream: Option<&str>) -> OsPackage {
        OsPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            source: Some(format!("{} {version}", upstream.unwrap_or(name))),
            license: None,
            purl_version: version.into(),
            purl_epoch: None,
            upstream: upstream.map(str::to_string),
        }
    }

    fn inventory_of(packages: Vec<OsPackage>) -> OsInventory {
        OsInventory {
            ecosystem: Some(Ecosystem::Deb),
            distro: "debian".into(),
            version_id: "12".into(),
            packages,
        }
    }

    #[test]
    fn package_urls_follow_the_purl_spec_for_deb() {
        let inv = inventory_of(vec![]);
        let p = deb("libstdc++6", "12.2.0-14+deb12u1", "amd64", Some("gcc-12"));
        assert_eq!(
            purl(&inv, Ecosystem::Deb, &p),
            "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12&upstream=gcc-12"
        );
        let p = deb("tzdata", "2024a-0+deb12u1", "all", None);
        assert_eq!(
            purl(&inv, Ecosystem::Deb, &p),
            "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12"
        );
    }

    #[test]
    fn package_urls_follow_the_purl_spec_for_rpm_with_the_epoch_as_a_qualifier() {
        let inv = OsInventory {
            ecosystem: Some(Ecosystem::Rpm),
            distro: "centos".into(),
            version_id: "9".into(),
            packages: vec![],
        };
        let p = OsPackage {
            name: "kernel-core".into(),
            version: "1:5.14.0-570.el9".into(),
            arch: "x86_64".into(),
            source: Some("kernel-5.14.0-570.el9.src.rpm".into()),
            license: None,
            purl_version: "5.14.0-570.el9".into(),
            purl_epoch: Some(1),
            upstream: None,
        };
        assert_eq!(
            purl(&inv, Ecosystem::Rpm, &p),
            "pkg:rpm/centos/kernel-core@5.14.0-570.el9?arch=x86_64&epoch=1&distro=centos-9"
        );
    }

    #[test]
    fn the_document_is_the_same_for_the_same_inputs_and_lists_what_it_was_given() {
        let inv = inventory_of(vec![
            deb("bash", "5.2.15-2+b2", "amd64", None),
            deb("libc6", "2.36-9+deb12u4", "amd64", Some("glibc")),
        ]);
        let inputs = Inputs {
            engine: "ccb-test".into(),
            disk_key: "ab".repeat(32),
            chain: vec![("base:tiny:amd64".into(), "cd".repeat(32))],
            elements: vec![ElementInput {
                name: "tiny-base".into(),
                digest: "ef".repeat(32),
                source: None,
            }],
            base_images: vec![BaseImage {
                name: "ubuntu-rootfs:amd64".into(),
                sha256: "12".repeat(32),
                url: Some("https://cloud-images.example/noble.squashfs".into()),
            }],
            ..Inputs::default()
        };
        let files = vec![("Tiny.qcow2".to_string(), "01".repeat(32))];
        let a = render(&document(
            "Tiny",
            "2026-12-06T09:23:12Z",
            &files,
            &inv,
            &inputs,
        ));
        let b = render(&document(
            "Tiny",
            "2026-12-06T09:23:12Z",
            &files,
            &inv,
            &inputs,
        ));
        assert_eq!(a, b);
        let listed = listed_packages(&a).unwrap();
        assert_eq!(
            listed.into_iter().collect::<Vec<_>>(),
            [
                ("bash".into(), "amd64".into(), "5.2.15-2+b2".into()),
                ("libc6".into(), "amd64".into(), "2.36-9+deb12u4".into())
            ]
        );
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(
            v["documentNamespace"],
            format!("https://spdx.org/spdxdocs/ccb/Tiny-{}", "ab".repeat(32))
        );
        assert_eq!(v["documentDescribes"], json!(["SPDXRef-Disk-qcow2"]));
        let base = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["SPDXID"] == "SPDXRef-BaseImage-ubuntu-rootfs-amd64")
            .unwrap();
        assert_eq!(base["checksums"][0]["checksumValue"], "12".repeat(32));
        assert_eq!(
            base["downloadLocation"],
            "https://cloud-images.example/noble.squashfs"
        );
        assert!(
            v["relationships"]
                .as_array()
                .unwrap()
                .contains(&relationship(
                    "SPDXRef-Base-base-tiny-amd64",
                    "GENERATED_FROM",
                    "SPDXRef-BaseImage-ubuntu-rootfs-amd64"
                ))
        );
    }

    #[test]
    fn ids_are_valid_and_unique() {
        let mut ids = Ids::default();
        assert_eq!(
            ids.make("Deb", "libstdc++6-amd64"),
            "SPDXRef-Deb-libstdc--6-amd64"
        );
        assert_eq!(
            ids.make("Deb", "libstdc+-6-amd64"),
            "SPDXRef-Deb-libstdc--6-amd64-2"
        );
    }

    #[test]
    fn the_build_time_comes_from_the_provenance() {
        assert_eq!(
            created_from_provenance(r#"{"build-timestamp": "2026-12-06 09:23:12.000042"}"#),
            "2026-12-06T09:23:12Z"
        );
        assert_eq!(
            created_from_provenance(r#"{"build-timestamp": "2026-11-27T19:30:05Z"}"#),
            "2026-11-27T19:30:05Z"
        );
    }
}
