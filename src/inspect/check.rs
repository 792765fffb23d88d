//! The checks of `manifests/inspect.ncl`, run on an image's root filesystem.

use serde::Serialize;

use super::fs::{FileKind, Filesystem};
use crate::manifest::InspectChecks;

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// `exec:usr/bin/cloud-init`, `dpkg-manifest`.
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Required executables: each must exist (symlinks followed inside the image) as a regular
/// file with an execute bit.
/// Executables `exempt` lists for the image pass as "exempt" without being looked at.
pub fn executables(fs: &dyn Filesystem, checks: &InspectChecks, image: &str) -> Vec<CheckResult> {
    let exempt = checks.exempt.get(image).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (dir, names) in &checks.executables {
        for name in names {
            let rel = format!("{}/{name}", dir.trim_matches('/'));
            let path = format!("/{rel}");
            if exempt.iter().any(|e| e.trim_matches('/') == rel) {
                out.push(CheckResult {
                    name: format!("exec:{rel}"),
                    passed: true,
                    detail: "exempt for this image (manifests/inspect.ncl)".into(),
                });
                continue;
            }
            let (passed, detail) = match fs.metadata(&path) {
                Ok(m) if m.kind == FileKind::File && m.mode & 0o111 != 0 => {
                    let via = fs
                        .canonicalize(&path)
                        .ok()
                        .filter(|c| *c != path)
                        .map(|c| format!(" (-> {c})"))
                        .unwrap_or_default();
                    (true, format!("mode {:04o}{via}", m.mode & 0o7777))
                }
                Ok(m) if m.kind == FileKind::File => (
                    false,
                    format!("not executable (mode {:04o})", m.mode & 0o7777),
                ),
                Ok(m) => (false, format!("not a regular file ({:?})", m.kind)),
                Err(e) => (false, e.to_string()),
            };
            out.push(CheckResult {
                name: format!("exec:{}", path.trim_start_matches('/')),
                passed,
                detail,
            });
        }
    }
    out
}

/// Every package the build's dpkg manifest lists as installed is installed in the image, at
/// the same version.
pub fn dpkg_manifest(fs: &dyn Filesystem, manifest: &[u8]) -> CheckResult {
    let name = "dpkg-manifest".to_string();
    let fail = |detail: String| CheckResult {
        name: name.clone(),
        passed: false,
        detail,
    };
    let manifest = match super::dpkg::parse_manifest(manifest) {
        Ok(m) => m,
        Err(e) => return fail(format!("the build's manifest: {e}")),
    };
    let status = match fs.read("/var/lib/dpkg/status") {
        Ok(s) => s,
        Err(e) => return fail(format!("/var/lib/dpkg/status: {e}")),
    };
    let status = match super::dpkg::parse_status(&status) {
        Ok(s) => s,
        Err(e) => return fail(format!("/var/lib/dpkg/status: {e}")),
    };
    comparison_result(name, &super::dpkg::compare(&manifest, &status))
}

/// Passes when the comparison found nothing; else names what is missing and what differs.
fn comparison_result(name: String, c: &super::dpkg::Comparison) -> CheckResult {
    if c.is_empty() {
        return CheckResult {
            name,
            passed: true,
            detail: format!("{} packages installed as built", c.checked),
        };
    }
    let mut parts = Vec::new();
    if !c.missing.is_empty() {
        parts.push(format!("missing: {}", c.missing.join(", ")));
    }
    if !c.version_mismatch.is_empty() {
        let v: Vec<String> = c
            .version_mismatch
            .iter()
            .map(|(p, want, got)| format!("{p} {want} != {got}"))
            .collect();
        parts.push(format!("version mismatch: {}", v.join(", ")));
    }
    CheckResult {
        name,
        passed: false,
        detail: parts.join("; "),
    }
}

/// An RPM image: no dpkg status file, an rpm SQLite database.
pub fn is_rpm_image(fs: &dyn Filesystem) -> bool {
    fs.metadata(super::dpkg::STATUS_PATH).is_err() && fs.metadata(super::rpm::DB_PATH).is_ok()
}

/// Every package of the build's rpm manifest (`dib-manifest-rpm-<name>`) is installed in the
/// image's `/var/lib/rpm/rpmdb.sqlite` at the same epoch, version and release (upstream's
/// inspector cannot check RPM images at all).
pub fn rpm_manifest(fs: &dyn Filesystem, manifest: &[u8]) -> CheckResult {
    let name = "rpm-manifest".to_string();
    let fail = |detail: String| CheckResult {
        name: name.clone(),
        passed: false,
        detail,
    };
    let manifest = match super::dpkg::parse_manifest(manifest) {
        Ok(m) => m,
        Err(e) => return fail(format!("the build's manifest: {e}")),
    };
    if manifest.packages.is_empty() {
        return fail("the build's manifest lists no packages".into());
    }
    let packages = match super::rpm::read_packages(fs) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    comparison_result(name, &super::rpm::compare(&manifest, &packages))
}
