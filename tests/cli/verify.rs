//! `ccb verify`: a target rebuilt in a scratch store and compared, action by action, with the
//! store. The fixture's `tiny` image (a minimal Debian base, one layer, a qcow2 disk) is built,
//! one file is slipped into its committed layer, and verify must name exactly that file (and
//! its directory's time) and find everything else identical: the rebuild gives the same bytes.

use std::path::PathBuf;

use crate::common::{Env, Run, copy_tree, repo};

struct Project {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "verify builds root filesystems: run it as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        // The sites only deploy an image whose provenance names the project's repository.
        std::fs::write(
            root.join("manifests/project.ncl"),
            "{ build_repo = \"https://github.com/ChameleonCloud/cc-images\" }\n",
        )
        .unwrap();
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    /// `ccb --root <fixture> <cmd> <args…> --element-path <repo's elements>`.
    fn ccb(&self, cmd: &str, rest: &[&str]) -> Run {
        let elements = repo().join("elements");
        let mut args = vec!["--root", self.root.to_str().unwrap(), cmd];
        args.extend_from_slice(rest);
        args.extend_from_slice(&["--element-path", elements.to_str().unwrap()]);
        self.env.run(&args)
    }
}

#[test]
fn verify_names_the_one_file_that_differs_and_finds_the_rest_identical() {
    let p = Project::new();
    p.ccb("build", &["tiny"]).ok();
    let layer = p.env.layer_tree("layer:tiny:amd64");
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("etc/slipped-in"), "not from any element\n").unwrap();

    let run = p.ccb("verify", &["tiny", "--format", "json"]).fails();
    assert_eq!(run.code, 1, "a difference is exit 1: {}", run.stderr);
    let report = run.json();
    assert_eq!(report["identical"], false);
    let verdicts: Vec<(String, String)> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("base:tiny:amd64".to_string(), "identical".to_string()),
            ("layer:tiny:amd64".to_string(), "different".to_string()),
            ("disk:tiny:amd64".to_string(), "identical".to_string()),
        ],
        "{report}"
    );
    // The file, and the directory it was written into (its modification time moved).
    let layer = &report["actions"][1];
    assert_eq!(layer["differing"], 2, "{layer}");
    assert_eq!(layer["files"][0]["path"], "etc");
    assert_eq!(layer["files"][0]["change"], "metadata");
    assert!(
        layer["files"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("mtime "),
        "{layer}"
    );
    assert_eq!(layer["files"][1]["path"], "etc/slipped-in");
    assert_eq!(layer["files"][1]["change"], "removed", "only in the store");
    // Against a site: the disk published to the project's local site is compared with a
    // rebuild file by file, through the same readers `ccb inspect --site` uses.
    p.ccb("publish", &["tiny", "--site", "local", "--scope", "verify"])
        .ok();
    let site = p
        .ccb(
            "verify",
            &[
                "tiny", "--site", "local", "--scope", "verify", "--format", "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(site["identical"], true, "{site}");
    assert_eq!(site["actions"][0]["id"], "disk:tiny:amd64");
    assert!(
        site["actions"][0]["compared"]
            .as_str()
            .unwrap()
            .starts_with("published "),
        "{site}"
    );

    // The scratch store went with the command.
    let tmp = p.env.cache.path().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|r| r.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with("verify-")),
        "scratch store left behind: {left:?}"
    );
}

#[test]
fn verify_wants_a_target_and_a_built_disk() {
    let p = Project::new();
    assert_eq!(p.ccb("verify", &[]).code, 2, "no target is a usage error");
    let run = p.ccb("verify", &["tiny"]).fails();
    run.stderr_has("ccb build");
}
