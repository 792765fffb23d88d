//! The dpkg status database of an image (`/var/lib/dpkg/status`) and the build's package
//! manifest (`dib-manifest-dpkg-<name>`, written by
//! `elements/manifests/finalise.d/99-write-dpkg-manifest`), and the comparison of the two.

use std::collections::BTreeMap;

use super::fs::{Filesystem, FsError};

/// Where dpkg keeps its database in the image.
pub const STATUS_PATH: &str = "/var/lib/dpkg/status";

/// The largest status file parsed: a full desktop install has about 5 MB; this bounds what an
/// image can make us read and hold.
pub const MAX_STATUS_SIZE: usize = 64 << 20;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DpkgError {
    #[error("dpkg status: {size} bytes, more than {MAX_STATUS_SIZE}")]
    #[diagnostic(code(ccb::inspect::dpkg::too_large))]
    TooLarge { size: usize },
    #[error("dpkg status, line {line}: {detail}")]
    #[diagnostic(code(ccb::inspect::dpkg::syntax))]
    Syntax { line: usize, detail: String },
    #[error("dpkg manifest: {0}")]
    #[diagnostic(
        code(ccb::inspect::dpkg::manifest),
        help(
            "the manifest is the JSON that elements/manifests/finalise.d/99-write-dpkg-manifest writes"
        )
    )]
    Manifest(String),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fs(#[from] FsError),
}

/// One stanza of the status file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// `amd64`, `all`, …; empty if the stanza has no `Architecture` (dpkg's very old entries).
    pub arch: String,
    pub version: String,
    /// `want flag state`, e.g. `install ok installed`, `deinstall ok config-files`.
    pub status: String,
    /// The `Source` field: `name` or `name (version)`; empty when the source package has the
    /// binary's name and version.
    pub source: String,
}

impl Package {
    /// Installed: the state is `installed` (not `config-files`, `half-installed`,
    /// `unpacked`…).
    pub fn is_installed(&self) -> bool {
        self.status.ends_with(" installed")
    }

    /// `name:arch`, or `name` for `Architecture: all` (and for a missing architecture).
    pub fn key(&self) -> String {
        package_key(&self.name, &self.arch)
    }
}

fn package_key(name: &str, arch: &str) -> String {
    if arch.is_empty() || arch == "all" {
        name.to_string()
    } else {
        format!("{name}:{arch}")
    }
}

/// Parses a dpkg status file: stanzas of `Field: value` lines separated by blank lines, where
/// a line starting with a space or tab continues the field before it.
pub fn parse_status(data: &[u8]) -> Result<Vec<Package>, DpkgError> {
    if data.len() > MAX_STATUS_SIZE {
        return Err(DpkgError::TooLarge { size: data.len() });
    }
    // Descriptions of old packages are sometimes Latin-1; the fields we read are ASCII.
    let text = String::from_utf8_lossy(data);
    let mut packages = Vec::new();
    let mut stanza: Option<(usize, Fields)> = None;
    let mut last_field = false;
    for (i, line) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if let Some((start, fields)) = stanza.take() {
                packages.push(fields.package(start)?);
            }
            last_field = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if !last_field {
                return Err(DpkgError::Syntax {
                    line: line_no,
                    detail: "a continuation line with no field before it".into(),
                });
            }
            continue; // only multi-line fields (Description, Conffiles…) have these
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(DpkgError::Syntax {
                line: line_no,
                detail: format!("not a `Field: value` line: {}", truncate(line)),
            });
        };
        let fields = &mut stanza.get_or_insert_with(|| (line_no, Fields::default())).1;
        let value = value.trim().to_string();
        match name {
            "Package" => fields.name = Some(value),
            "Architecture" => fields.arch = Some(value),
            "Version" => fields.version = Some(value),
            "Status" => fields.status = Some(value),
            "Source" => fields.source = Some(value),
            _ => {}
        }
        last_field = true;
    }
    if let Some((start, fields)) = stanza.take() {
        packages.push(fields.package(start)?);
    }
    Ok(packages)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[derive(Default)]
struct Fields {
    name: Option<String>,
    arch: Option<String>,
    version: Option<String>,
    status: Option<String>,
    source: Option<String>,
}

impl Fields {
    fn package(self, line: usize) -> Result<Package, DpkgError> {
        let Some(name) = self.name.filter(|n| !n.is_empty()) else {
            return Err(DpkgError::Syntax {
                line,
                detail: "a stanza without a Package field".into(),
            });
        };
        // dpkg's own rules (lower-case letters, digits, `+-.`; upper case tolerated), which also
        // keep the `:` of `name:arch` keys unambiguous.
        let valid = |s: &str, extra: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        if !valid(&name, "+-.") {
            return Err(DpkgError::Syntax {
                line,
                detail: format!("invalid package name `{}`", truncate(&name)),
            });
        }
        let arch = self.arch.unwrap_or_default();
        if !valid(&arch, "-") {
            return Err(DpkgError::Syntax {
                line,
                detail: format!("invalid architecture `{}` of {name}", truncate(&arch)),
            });
        }
        Ok(Package {
            name,
            arch,
            version: self.version.unwrap_or_default(),
            status: self.status.unwrap_or_default(),
            source: self.source.unwrap_or_default(),
        })
    }
}

/// The installed packages of a status file, by [`Package::key`].
pub fn installed(packages: &[Package]) -> BTreeMap<String, &Package> {
    packages
        .iter()
        .filter(|p| p.is_installed())
        .map(|p| (p.key(), p))
        .collect()
}

/// Reads and parses the image's `/var/lib/dpkg/status`.
pub fn read_status(fs: &dyn Filesystem) -> Result<Vec<Package>, DpkgError> {
    let data = fs.read_limited(STATUS_PATH, MAX_STATUS_SIZE as u64)?;
    parse_status(&data)
}

/// One package of the build's manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ManifestPackage {
    /// `${binary:Package}`: the name, with `:arch` for Multi-Arch: same and foreign packages.
    pub package: String,
    pub arch: String,
    pub version: String,
    /// `${db:Status-Abbrev}`, e.g. `ii `; absent in the rpm manifest, where every listed
    /// package is installed.
    #[serde(default)]
    pub status: Option<String>,
}

impl ManifestPackage {
    /// The build saw it installed: the second letter of the abbreviation is the state, `i`
    /// (`ii ` and also `hi `, held; not `rc `, `iU `…).
    pub fn is_installed(&self) -> bool {
        match &self.status {
            None => true,
            Some(s) => s.as_bytes().get(1) == Some(&b'i'),
        }
    }

    /// The same key as [`Package::key`]: `name:arch`, or `name` for `all`.
    pub fn key(&self) -> String {
        let qualifier = format!(":{}", self.arch);
        let name = self
            .package
            .strip_suffix(&qualifier)
            .unwrap_or(&self.package);
        package_key(name, &self.arch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Manifest {
    pub packages: Vec<ManifestPackage>,
}

impl Manifest {
    pub fn parse(json: &[u8]) -> Result<Manifest, DpkgError> {
        serde_json::from_slice(json).map_err(|e| DpkgError::Manifest(e.to_string()))
    }
}

/// Parses the build's manifest (`dib-manifest-dpkg-<name>`, or the rpm one).
pub fn parse_manifest(json: &[u8]) -> Result<Manifest, DpkgError> {
    Manifest::parse(json)
}

/// How an image's packages differ from its build's manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Keys of packages the manifest has installed that the image does not (absent, or in a
    /// state other than installed).
    pub missing: Vec<String>,
    /// (key, manifest version, image version).
    pub version_mismatch: Vec<(String, String, String)>,
    /// How many packages the manifest has installed, i.e. how many were checked.
    pub checked: usize,
}

impl Comparison {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.version_mismatch.is_empty()
    }
}

/// Every package the manifest has installed must be installed in the image, at the same
/// version. Packages only the image has are not reported: the manifest is what the build
/// promises, not a whitelist. Both lists are sorted by key.
pub fn compare(manifest: &Manifest, status: &[Package]) -> Comparison {
    let image = installed(status);
    let mut out = Comparison::default();
    for m in manifest.packages.iter().filter(|m| m.is_installed()) {
        out.checked += 1;
        let key = m.key();
        match image.get(&key) {
            None => out.missing.push(key),
            Some(p) if p.version != m.version => {
                out.version_mismatch
                    .push((key, m.version.clone(), p.version.clone()))
            }
            Some(_) => {}
        }
    }
    out.missing.sort();
    out.missing.dedup();
    out.version_mismatch.sort();
    out.version_mismatch.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: cloud-init
Status: install ok installed
Priority: optional
Architecture: all
Version: 25.1-1
Description: initialization for cloud instances
 A second line of the description,
 .
 and a third.

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u8
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e5 obsolete

Package: libc6
Status: install ok installed
Architecture: i386
Version: 2.36-9+deb12u8

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 2.0
";

    fn manifest(entries: &[(&str, &str, &str, &str)]) -> Manifest {
        Manifest {
            packages: entries
                .iter()
                .map(|(p, a, v, s)| ManifestPackage {
                    package: p.to_string(),
                    arch: a.to_string(),
                    version: v.to_string(),
                    status: Some(s.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn status_stanzas_parse_with_continuation_lines_skipped() {
        let p = parse_status(STATUS.as_bytes()).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["cloud-init", "libc6", "libc6", "old-tool", "broken"]
        );
        assert_eq!(p[0].version, "25.1-1");
        assert_eq!(p[1].arch, "amd64");
    }

    #[test]
    fn only_the_installed_state_counts_and_keys_carry_the_arch_unless_all() {
        let p = parse_status(STATUS.as_bytes()).unwrap();
        let keys: Vec<String> = installed(&p).into_keys().collect();
        assert_eq!(keys, ["cloud-init", "libc6:amd64", "libc6:i386"]);
    }

    #[test]
    fn crlf_and_a_missing_final_newline_are_accepted() {
        let p = parse_status(b"Package: a\r\nStatus: install ok installed\r\nVersion: 1").unwrap();
        assert_eq!(p.len(), 1);
        assert!(p[0].is_installed());
        assert_eq!(p[0].version, "1");
    }

    #[test]
    fn malformed_status_files_are_errors_with_a_line_number() {
        let e = parse_status(b"Package: a\nno colon here\n").unwrap_err();
        assert!(matches!(e, DpkgError::Syntax { line: 2, .. }), "{e}");
        let e = parse_status(b" continuation first\n").unwrap_err();
        assert!(matches!(e, DpkgError::Syntax { line: 1, .. }), "{e}");
        let e = parse_status(b"Status: install ok installed\n\n").unwrap_err();
        assert!(e.to_string().contains("without a Package"), "{e}");
    }

    #[test]
    fn package_names_and_architectures_follow_dpkg_rules() {
        // Found by fuzzing: `add:all` made the key `add:all`, while the manifest's
        // `${binary:Package}` form `add:all` (name and qualifier) is keyed `add`.
        let e =
            parse_status(b"Package: add:all\nStatus: install ok installed\nArchitecture: all\n")
                .unwrap_err();
        assert!(e.to_string().contains("invalid package name"), "{e}");
        let e = parse_status(b"Package: a\nArchitecture: amd 64\n").unwrap_err();
        assert!(e.to_string().contains("invalid architecture"), "{e}");
        let p =
            parse_status(b"Package: libstdc++6\nArchitecture: x32\n\nPackage: g.o-1\n").unwrap();
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn an_oversized_status_file_is_refused() {
        let big = vec![b'\n'; MAX_STATUS_SIZE + 1];
        assert!(matches!(
            parse_status(&big),
            Err(DpkgError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_manifest_is_the_json_the_finalise_hook_writes() {
        // What `dpkg-query --showformat` in 99-write-dpkg-manifest produces.
        let json = br#"{"packages": [
{"package": "cloud-init","arch": "all","version": "25.1-1","status": "ii "},
{"package": "libc6:amd64","arch": "amd64","version": "2.36-9+deb12u8","status": "ii "},
{"package": "old-tool","arch": "amd64","version": "1.0","status": "rc "}
]}"#;
        let m = Manifest::parse(json).unwrap();
        let keys: Vec<String> = m.packages.iter().map(ManifestPackage::key).collect();
        assert_eq!(keys, ["cloud-init", "libc6:amd64", "old-tool:amd64"]);
        assert!(m.packages[0].is_installed());
        assert!(!m.packages[2].is_installed());
        assert!(Manifest::parse(b"{\"packages\": 3}").is_err());
    }

    #[test]
    fn comparison_reports_missing_packages_and_version_differences() {
        let status = parse_status(STATUS.as_bytes()).unwrap();
        let m = manifest(&[
            ("cloud-init", "all", "25.1-1", "ii "),
            ("libc6", "amd64", "2.36-9+deb12u9", "ii "),
            ("qemu-guest-agent", "amd64", "1:7.2", "ii "),
            // Installed in the manifest, only config files left in the image.
            ("old-tool", "amd64", "1.0", "ii "),
            // Half-installed in the image.
            ("broken", "amd64", "2.0", "ii "),
            // Not installed at build time: not checked.
            ("gone", "amd64", "1", "rc "),
        ]);
        let c = compare(&m, &status);
        assert_eq!(
            c.missing,
            ["broken:amd64", "old-tool:amd64", "qemu-guest-agent:amd64"]
        );
        assert_eq!(
            c.version_mismatch,
            [(
                "libc6:amd64".to_string(),
                "2.36-9+deb12u9".to_string(),
                "2.36-9+deb12u8".to_string()
            )]
        );
        assert!(!c.is_empty());
        assert_eq!(c.checked, 5);
    }

    #[test]
    fn a_matching_image_compares_empty_and_extra_image_packages_are_fine() {
        let status = parse_status(STATUS.as_bytes()).unwrap();
        let m = manifest(&[("libc6:i386", "i386", "2.36-9+deb12u8", "hi ")]);
        assert!(compare(&m, &status).is_empty());
    }
}
