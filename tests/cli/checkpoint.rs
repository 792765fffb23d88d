//! Step checkpoints inside a layer, for real: the layered fixture's `tiny` base, and a child
//! whose scripts create, delete and recreate files and directories of the layer under it, so
//! the checkpoints' overlay segments hold whiteouts and opaque directories.

use std::path::{Path, PathBuf};

use crate::common::{Env, Run, copy_tree, leftovers, repo, row, script, write};

struct Project {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

const LATE: &str = "elements/tiny-steps/post-install.d/90-steps-late";

impl Project {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "checkpoints are tested on real layers: run as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        let images = root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        let text = text.trim_end().strip_suffix('}').unwrap().to_string()
            + r#"  tiny-steps = {
    name = "Tiny-Steps",
    description = "a child whose steps undo and redo each other's work",
    from = "tiny",
    elements = ["tiny-steps"],
  },
}
"#;
        std::fs::write(&images, text).unwrap();
        let el = root.join("elements/tiny-steps");
        write(el.join("README.rst"), "Steps that undo and redo.\n");
        write(el.join("element-deps"), "install-static\n");
        write(el.join("static/etc/steps/static.conf"), "static\n");
        write(
            el.join("environment.d/10-tiny-steps.bash"),
            "export STEPS_WORD=${STEPS_WORD:-early}\n",
        );
        let sh = "#!/bin/bash\nset -eu\n";
        script(
            el.join("install.d/20-steps-early"),
            &format!(
                "{sh}mkdir -p /etc/steps\necho \"$STEPS_WORD\" > /etc/steps/early\n\
                 echo scratch > /etc/steps/scratch\n\
                 rm /etc/tiny-release\nrm -r /usr/share/doc/less\n"
            ),
        );
        script(
            el.join("install.d/30-steps-middle"),
            &format!(
                "{sh}cat /etc/steps/early /etc/steps/static.conf > /etc/steps/middle\nrm /etc/steps/scratch\n"
            ),
        );
        script(
            el.join("post-install.d/50-steps-recreate"),
            &format!("{sh}mkdir /usr/share/doc/less\necho new > /usr/share/doc/less/README\n"),
        );
        script(
            root.join(LATE),
            &format!("{sh}echo 'late v1' > /etc/steps/late\n"),
        );
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    /// ccb with a checkpoint after every step (`min_ms` 0), or none at all.
    fn ccb(&self, checkpoints: bool, rest: &[&str]) -> Run {
        let elements = repo().join("elements");
        let mut args = vec!["--root", self.root.to_str().unwrap()];
        args.extend_from_slice(rest);
        if rest.iter().any(|a| matches!(*a, "build" | "query")) {
            args.extend(["--element-path", elements.to_str().unwrap()]);
        }
        let out = self
            .env
            .cmd()
            .args(&args)
            .env("CCB_CHECKPOINT_MIN_MS", "0")
            .env("CCB_CHECKPOINTS", if checkpoints { "1" } else { "0" })
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn build(&self, checkpoints: bool, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "build",
            "tiny-steps",
            "--until",
            "layer",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        self.ccb(checkpoints, &args).ok().json()
    }

    fn store(&self) -> &Path {
        self.env.cache.path()
    }

    /// The steps the layer's build ran.
    fn ran(report: &serde_json::Value) -> Vec<String> {
        let layer = row(&report["actions"], "layer:tiny-steps:amd64");
        assert_eq!(layer["status"], "built", "{report}");
        layer["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no steps in {layer}"))
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    s["phase"].as_str().unwrap(),
                    s["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn layer_key(report: &serde_json::Value) -> String {
        row(&report["actions"], "layer:tiny-steps:amd64")["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn layer_json(&self, key: &str) -> serde_json::Value {
        let p = self.store().join("layers").join(key).join("layer.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    /// The checkpoints of the `tiny-steps` layer.
    fn checkpoints(&self) -> Vec<serde_json::Value> {
        let ls = self
            .ccb(true, &["cache", "ls", "--format", "json"])
            .ok()
            .json();
        ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "checkpoint")
            .filter(|e| {
                e["id"]
                    .as_str()
                    .unwrap()
                    .starts_with("checkpoint:tiny-steps:")
            })
            .cloned()
            .collect()
    }
}

#[test]
fn an_edit_to_a_late_script_reruns_from_the_checkpoint_before_it_and_gives_the_same_tree() {
    let p = Project::new();
    let cold = p.build(true, &[]);
    assert_eq!(
        Project::ran(&cold),
        [
            "pre-install.d/01-install-bin",
            "install.d/10-install-static-files",
            "install.d/20-steps-early",
            "install.d/30-steps-middle",
            "post-install.d/50-steps-recreate",
            "post-install.d/90-steps-late",
        ]
    );
    // A checkpoint after every step but the last, each an entry of the store.
    let ids: Vec<String> = p
        .checkpoints()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    for step in [
        "pre-install.d/01-install-bin",
        "install.d/10-install-static-files",
        "install.d/20-steps-early",
        "install.d/30-steps-middle",
        "post-install.d/50-steps-recreate",
    ] {
        assert!(
            ids.contains(&format!("checkpoint:tiny-steps:amd64:{step}")),
            "{step} has no checkpoint: {ids:?}"
        );
    }
    assert_eq!(ids.len(), 5, "{ids:?}");

    // A one-line edit of the last script: explain names it, and only it runs again.
    let late = p.root.join(LATE);
    let text = std::fs::read_to_string(&late).unwrap();
    std::fs::write(&late, text.replace("late v1", "late v2")).unwrap();
    let explain = p.ccb(true, &["query", "explain", "tiny-steps"]).ok();
    assert!(
        explain
            .stdout
            .contains("the first step to rerun is post-install.d/90-steps-late (step 6 of 6)"),
        "{}",
        explain.stdout
    );
    let resumed = p.build(true, &[]);
    assert_eq!(Project::ran(&resumed), ["post-install.d/90-steps-late"]);
    let key = Project::layer_key(&resumed);
    let tree = p.store().join("layers").join(&key).join("tree");
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/steps/late")).unwrap(),
        "late v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/steps/middle")).unwrap(),
        "early\nstatic\n"
    );
    let resumed_digest = p.layer_json(&key)["tree"]["digest"].clone();

    // The store stays sound; gc keeps the checkpoints the current layer was built through.
    p.ccb(true, &["cache", "verify"]).ok();
    p.ccb(true, &["cache", "gc"]).ok();
    let kept = p.checkpoints();
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(kept.iter().all(|e| e["current"] == true), "{kept:?}");

    // What every step reads (environment.d) reruns the whole layer: no checkpoint applies.
    let env = p
        .root
        .join("elements/tiny-steps/environment.d/10-tiny-steps.bash");
    let before = std::fs::read_to_string(&env).unwrap();
    std::fs::write(&env, before.replace("early", "other")).unwrap();
    let explain = p.ccb(true, &["query", "explain", "tiny-steps"]).ok();
    assert!(
        explain.stdout.contains("layer:tiny-steps:amd64")
            && !explain.stdout.contains("first step to rerun"),
        "{}",
        explain.stdout
    );
    std::fs::write(&env, before).unwrap();

    // The same layer built whole, without checkpoints: the very same tree.
    let whole = p.build(false, &["--force", "tiny-steps"]);
    assert_eq!(Project::ran(&whole).len(), 6);
    assert_eq!(Project::layer_key(&whole), key);
    assert_eq!(p.layer_json(&key)["tree"]["digest"], resumed_digest);

    // No current layer uses the checkpoints any more: gc takes them.
    assert!(p.checkpoints().iter().all(|e| e["current"] == false));
    p.ccb(true, &["cache", "gc"]).ok();
    assert!(p.checkpoints().is_empty());
    assert_eq!(leftovers(p.store()), Vec::<String>::new());
}
