//! Each image's SPDX SBOM, for real: the layered fixture's `tiny` image (debian-minimal from the
//! Debian mirror) built to a disk, its `Tiny.spdx.json` validated by the SPDX project's own
//! validator and checked against the image by `ccb inspect`. Needs root.

use std::path::Path;

use crate::common::{Env, copy_tree, repo, spdx_validate};

fn packages(doc: &serde_json::Value) -> Vec<&serde_json::Value> {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Deb-"))
        .collect()
}

#[test]
fn the_tiny_image_has_a_valid_sbom_of_its_packages_that_inspect_checks() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "building disks needs root (scripts/test runs as root)"
    );
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layered");
    copy_tree(&repo().join("tests/fixtures/layered"), &root);
    let out = dir.path().join("out");
    let elements = repo().join("elements");
    env.run(&[
        "--root",
        root.to_str().unwrap(),
        "build",
        "//images:tiny",
        "--element-path",
        elements.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();

    // Beside the disk, and in its SHA256SUMS.
    let sbom = out.join("Tiny.spdx.json");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("  Tiny.spdx.json\n"), "{sums}");
    // Every checksum is its file's (the raw disk's is computed while the qcow2 is written).
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let problems = spdx_validate(&sbom);
    assert!(problems.is_empty(), "pyspdxtools: {problems}");

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert!(
        doc["documentNamespace"]
            .as_str()
            .unwrap()
            .starts_with("https://spdx.org/spdxdocs/ccb/Tiny-"),
        "named by the disk key: {}",
        doc["documentNamespace"]
    );
    // The disk file, by its SHA-256.
    let disk = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["SPDXID"] == "SPDXRef-Disk-qcow2")
        .unwrap();
    let qcow2_sum = sums
        .lines()
        .find(|l| l.ends_with("  Tiny.qcow2"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert_eq!(disk["checksums"][0]["checksumValue"], qcow2_sum);
    // Every installed package with version, arch, source and a purl; licenses where the
    // package's copyright file is machine-readable.
    let debs = packages(&doc);
    assert!(debs.len() > 50, "{} packages", debs.len());
    let dpkg = debs.iter().find(|p| p["name"] == "dpkg").unwrap();
    let purl = dpkg["externalRefs"][0]["referenceLocator"]
        .as_str()
        .unwrap();
    assert!(
        purl.starts_with("pkg:deb/debian/dpkg@")
            && purl.contains("arch=amd64")
            && purl.contains("distro=debian-12"),
        "{purl}"
    );
    let libc = debs.iter().find(|p| p["name"] == "libc6").unwrap();
    assert!(
        libc["sourceInfo"]
            .as_str()
            .unwrap()
            .starts_with("built package from: glibc "),
        "{libc}"
    );
    let declared = debs
        .iter()
        .filter(|p| p["licenseDeclared"] != "NOASSERTION")
        .count();
    assert!(
        declared * 2 > debs.len(),
        "{declared} of {} declare a license",
        debs.len()
    );
    // ccb's inputs: the elements by digest, the base action.
    let names: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["SPDXID"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"SPDXRef-Element-tiny-base"), "{names:?}");
    assert!(names.contains(&"SPDXRef-Base-base-tiny-amd64"), "{names:?}");

    // ccb inspect checks it against the image's dpkg status.
    let image = out.join("Tiny.qcow2");
    let run = env
        .run(&[
            "--root",
            root.to_str().unwrap(),
            "inspect",
            image.to_str().unwrap(),
            "--format",
            "json",
        ])
        .json();
    let check = sbom_check(&run);
    assert_eq!(check["passed"], true, "{run}");
    // An SBOM that leaves a package out (or lists one the image lacks) fails, naming it.
    let mut edited = doc.clone();
    let kept: Vec<serde_json::Value> = edited["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "dpkg")
        .cloned()
        .collect();
    edited["packages"] = serde_json::Value::Array(kept);
    std::fs::write(&sbom, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let run = env
        .run(&[
            "--root",
            root.to_str().unwrap(),
            "inspect",
            image.to_str().unwrap(),
            "--format",
            "json",
        ])
        .json();
    let check = sbom_check(&run);
    assert_eq!(check["passed"], false, "{run}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("in the image, not in the SBOM: dpkg:amd64"),
        "{check}"
    );
    assert_eq!(run["passed"], false);
}

fn sbom_check(run: &serde_json::Value) -> &serde_json::Value {
    run["images"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sbom")
        .unwrap_or_else(|| panic!("no sbom check: {run}"))
}

/// Used by `disk.rs` on the CC-Debian12 build: the SBOM validates and matches the image.
pub(crate) fn assert_valid_and_matching(root: &Path, out: &Path, name: &str, env: &Env) {
    let sbom = out.join(format!("{name}.spdx.json"));
    let problems = spdx_validate(&sbom);
    assert!(problems.is_empty(), "pyspdxtools on {name}: {problems}");
    let image = out.join(format!("{name}.qcow2"));
    let run = env
        .run(&[
            "--root",
            root.to_str().unwrap(),
            "inspect",
            image.to_str().unwrap(),
            "--format",
            "json",
        ])
        .json();
    assert_eq!(sbom_check(&run)["passed"], true, "{run}");
}
