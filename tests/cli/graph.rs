//! Keys, the plan and explain: a key changes when, and only when, something its action can
//! observe changes.

use std::collections::BTreeMap;

use crate::common::{Env, copy_tree, repo, strs, write};

/// Action id → key for the whole project.
fn keys(env: &Env, root: &std::path::Path) -> BTreeMap<String, String> {
    let j = env
        .run(&[
            "--root",
            root.to_str().unwrap(),
            "build",
            "--dry-run",
            "--format",
            "json",
            "//...",
        ])
        .ok()
        .json();
    j["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn project_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    std::fs::create_dir(&proj).unwrap();
    for sub in ["manifests", "elements", "stdlib"] {
        copy_tree(&repo().join(sub), &proj.join(sub));
    }
    std::fs::copy(repo().join("ccb.lock"), proj.join("ccb.lock")).unwrap();
    (dir, proj)
}

#[test]
fn keys_are_stable_across_runs_and_checkouts() {
    let env = Env::new();
    let (_d1, a) = project_copy();
    let (_d2, b) = project_copy();
    let ka = keys(&env, &a);
    assert_eq!(ka, keys(&env, &a), "same inputs, same keys");
    assert_eq!(
        ka,
        keys(&Env::new(), &b),
        "no absolute path or cache state enters a key"
    );
}

#[test]
fn editing_the_cuda_element_changes_only_cuda_keys() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let before = keys(&env, &proj);
    write(proj.join("elements/cc-cuda/README.rst"), "CUDA, edited.\n");
    let after = keys(&env, &proj);
    let mut ch = changed(&before, &after);
    ch.sort();
    assert!(!ch.is_empty());
    for id in &ch {
        assert!(
            id.contains("cuda"),
            "{id} changed but has nothing to do with CUDA: {ch:?}"
        );
    }
    assert!(ch.contains(&"layer:ubuntu24.04-cuda:amd64".to_string()));
    assert!(!ch.contains(&"layer:ubuntu24.04:amd64".to_string()));
}

#[test]
fn editing_a_chameleon_element_keeps_the_base_but_changes_the_layers() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let before = keys(&env, &proj);
    write(proj.join("elements/cc-motd/README.rst"), "motd, edited.\n");
    let after = keys(&env, &proj);
    assert_eq!(
        before["base:debian12:amd64"], after["base:debian12:amd64"],
        "debootstrap does not rerun"
    );
    assert_ne!(
        before["layer:debian12:amd64"],
        after["layer:debian12:amd64"]
    );
    assert_ne!(
        before["layer:debian12-devtools:amd64"], after["layer:debian12-devtools:amd64"],
        "children follow their parent"
    );
}

#[test]
fn a_manifest_variable_changes_the_keys_of_that_image_only() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let before = keys(&env, &proj);
    let images = proj.join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap();
    write(
        &images,
        &text.replace(
            "env = chameleon & { DIB_RELEASE = \"bookworm\" },",
            "env = chameleon & { DIB_RELEASE = \"bookworm\", EXTRA = \"1\" },",
        ),
    );
    assert_ne!(
        std::fs::read_to_string(&images).unwrap(),
        text,
        "the edit must apply"
    );
    let after = keys(&env, &proj);
    let ch = changed(&before, &after);
    assert!(ch.iter().all(|id| id.contains("debian12")), "{ch:?}");
    assert!(ch.contains(&"base:debian12:amd64".to_string()));
}

#[test]
fn the_plan_and_explain_say_why_actions_run() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let p = proj.to_str().unwrap();
    let plan = env
        .run(&["--root", p, "build", "--dry-run", "debian12-devtools"])
        .ok();
    assert!(plan.stdout.contains("layer:debian12-devtools:amd64"));
    assert!(plan.stdout.contains("to run: never built"));
    // The target needs its parent's base and layer, not the parent's disk.
    assert!(
        plan.stdout.contains("4 actions: 0 cached, 4 to run"),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("disk:debian12:amd64"),
        "{}",
        plan.stdout
    );
    let explain = env
        .run(&[
            "--root",
            p,
            "query",
            "explain",
            "debian12-devtools",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(explain["summary"]["to_run"], 4);
}

#[test]
fn query_hash_prints_key_documents_without_host_details() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let run = env
        .run(&[
            "--root",
            proj.to_str().unwrap(),
            "query",
            "hash",
            "debian12-devtools",
        ])
        .ok();
    assert!(run.stdout.contains("layer:debian12-devtools:amd64"));
    assert!(run.stdout.contains("parent: "));
    assert!(
        !run.stdout.contains(proj.to_str().unwrap()),
        "an absolute path entered a key document"
    );
    assert!(
        !run.stdout.contains("/tmp"),
        "an absolute path entered a key document"
    );
}

#[test]
fn query_deps_rdeps_and_graph() {
    let env = Env::new();
    let r = repo();
    let root = r.to_str().unwrap();
    let deps = env
        .run(&[
            "--root",
            root,
            "query",
            "deps",
            "ubuntu24.04-cuda",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(deps["parents"], serde_json::json!(["//images:ubuntu24.04"]));
    let els: Vec<&str> = deps["builds"][0]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(els.contains(&"cc-cuda") && els.contains(&"ubuntu"));

    let rd = env
        .run(&[
            "--root",
            root,
            "query",
            "rdeps",
            "element:cc-cuda",
            "--format",
            "json",
        ])
        .ok()
        .json();
    let mut targets: Vec<String> = strs(&rd["dependents"], Some("target"));
    targets.sort();
    assert_eq!(
        targets,
        [
            "//images:centos9-stream-cuda",
            "//images:ubuntu22.04-cuda",
            "//images:ubuntu24.04-cuda",
            "//images:ubuntu24.04-cuda-arm64",
            "//images:ubuntu24.04-cuda-vgpu"
        ]
    );

    let rd = env
        .run(&[
            "--root",
            root,
            "query",
            "rdeps",
            "//images:debian12",
            "--format",
            "json",
        ])
        .ok()
        .json();
    let targets: Vec<String> = strs(&rd["dependents"], Some("target"));
    assert_eq!(targets, ["//images:debian12-devtools"]);

    env.run(&["--root", root, "query", "rdeps", "element:nope"])
        .fails()
        .stderr_has("not found");

    let dot = env
        .run(&["--root", root, "query", "graph", "debian12-devtools"])
        .ok();
    assert!(dot.stdout.starts_with("digraph ccb {"));
    assert!(
        dot.stdout
            .contains("\"layer:debian12:amd64\" -> \"layer:debian12-devtools:amd64\"")
    );
    assert!(dot.stdout.contains("publish:debian12-devtools:amd64:local"));
    let j = env
        .run(&["--root", root, "query", "graph", "--format", "json"])
        .ok()
        .json();
    assert!(j["actions"].as_array().unwrap().len() > 30);
}

#[test]
fn an_artifact_is_a_fetch_action_keyed_by_its_digest() {
    let env = Env::new();
    let ex = repo().join("examples/nickel-project");
    let root = ex.to_str().unwrap();
    let rd = env
        .run(&[
            "--root",
            root,
            "query",
            "rdeps",
            "artifact:hello-notes",
            "--format",
            "json",
        ])
        .ok()
        .json();
    let targets: Vec<String> = strs(&rd["dependents"], Some("target"));
    assert_eq!(
        targets,
        ["//images:bookworm", "//images:bookworm"],
        "one per arch"
    );
    // The actions that use it (the layer) and need those (the disk); the base does not.
    let acts = strs(&rd["dependents"][0]["actions"], None);
    assert_eq!(
        acts,
        ["layer:bookworm:amd64", "disk:bookworm:amd64"],
        "{rd}"
    );
    let hash = env
        .run(&[
            "--root", root, "query", "hash", "bookworm", "--arch", "amd64",
        ])
        .ok();
    assert!(
        hash.stdout.contains("hello-notes (HELLO_NOTES) = daa9f159"),
        "{}",
        hash.stdout
    );
    env.run(&["--root", root, "query", "rdeps", "artifact:hello-note"])
        .fails()
        .stderr_has("did you mean `hello-notes`?");
}

/// `git` in `dir` with a fixed author (the tests' checkouts have no user config).
fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=ccb",
            "-c",
            "user.email=ccb@example.invalid",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn another_commit_changes_the_disks_keys_and_no_layers() {
    // The disk writes the commit into /opt/chameleon/provenance.json: equal keys must give
    // equal bytes, so the commit is in the disk's key; layers stay shared across commits.
    let env = Env::new();
    let (_d, proj) = project_copy();
    write(proj.join("NOTES"), "notes\n");
    git(&proj, &["init", "-q"]);
    git(&proj, &["add", "-A"]);
    git(&proj, &["commit", "-q", "-m", "one"]);
    let one = keys(&env, &proj);
    git(&proj, &["commit", "-q", "--allow-empty", "-m", "two"]);
    let two = keys(&env, &proj);
    let ch = changed(&one, &two);
    assert!(!ch.is_empty(), "a new commit changed no key");
    for id in &ch {
        assert!(
            id.starts_with("disk:"),
            "{id} changed with the commit: {ch:?}"
        );
    }
    assert_eq!(
        ch.len(),
        one.keys().filter(|id| id.starts_with("disk:")).count(),
        "every disk records the commit: {ch:?}"
    );
    // A tracked file edited and not committed: `<commit>-dirty`, another disk again.
    write(proj.join("NOTES"), "notes, edited\n");
    let dirty = keys(&env, &proj);
    let ch = changed(&two, &dirty);
    assert!(ch.iter().all(|id| id.starts_with("disk:")), "{ch:?}");
    assert!(!ch.is_empty());
    // The key document says so.
    let hash = env
        .run(&[
            "--root",
            proj.to_str().unwrap(),
            "query",
            "hash",
            "debian12",
        ])
        .ok();
    assert!(hash.stdout.contains("-dirty"), "{}", hash.stdout);
}

#[test]
fn a_latest_artifacts_signed_url_is_keyed_without_its_signature() {
    let env = Env::new();
    let (_d, proj) = project_copy();
    let artifacts = proj.join("manifests/artifacts.ncl");
    let text = std::fs::read_to_string(&artifacts).unwrap();
    let pinned = "    url = \"https://raw.githubusercontent.com/ChameleonCloud/cc-snapshot/d5477a6ca09ea9927db202086e6b021a25fe46eb/cc-snapshot\",\n    sha256 = \"0efbe7ce84cde6fd6add4f7e7e4b2116574d2057e8936a7e8219d10aae3392cb\",\n";
    assert!(
        text.contains(pinned),
        "the fixture's cc-snapshot entry moved"
    );
    let signed = |sig: &str| {
        let latest = format!(
            "    url = \"https://ccb:pa55word@swift.example/v1/AUTH_p/c/cc-snapshot?temp_url_sig={sig}&temp_url_expires=1\",\n    sha256 = \"latest\",\n"
        );
        write(&artifacts, &text.replace(pinned, &latest));
        let root = proj.to_str().unwrap();
        let hash = env
            .run(&[
                "--root",
                root,
                "query",
                "hash",
                "ubuntu22.04",
                "--arch",
                "amd64",
                "--format",
                "json",
            ])
            .ok();
        let explain = env
            .run(&[
                "--root",
                root,
                "query",
                "explain",
                "ubuntu22.04",
                "--arch",
                "amd64",
                "--format",
                "json",
            ])
            .ok();
        for out in [&hash.stdout, &hash.stderr, &explain.stdout, &explain.stderr] {
            assert!(!out.contains(sig), "the signature entered a key: {out}");
            assert!(
                !out.contains("pa55word"),
                "the password entered a key: {out}"
            );
        }
        assert!(
            hash.stdout.contains("latest https://***@swift.example"),
            "{}",
            hash.stdout
        );
        hash.json()["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].to_string(), a["key"].to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    let first = signed("f1rstsignature");
    assert_eq!(
        first,
        signed("s3condsignature"),
        "a renewed signature changed a key"
    );
}
