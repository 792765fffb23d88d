//! The executor, for real: mmdebstrap from the Debian mirror, chroots, overlayfs layers in the
//! store, run as root. The fixture project (`tests/fixtures/layered`) is a minimal Debian base
//! (`tiny`) and children that add one element each.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    Env, Run, copy_tree, leftovers, logs_contain, processes_under, repo, row, sandbox_mounts,
    wait_until,
};

/// A copy of the fixture project, and an Env whose store is private to the test.
struct Project {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Self {
        assert!(
            nix_is_root(),
            "the executor tests build root filesystems: run them as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    fn args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let elements = repo().join("elements");
        let elements: &'static str = Box::leak(elements.display().to_string().into_boxed_str());
        let mut v = vec!["--root", self.root.to_str().unwrap()];
        v.extend_from_slice(rest);
        // --element-path belongs to the subcommand: after it.
        if rest.iter().any(|a| matches!(*a, "build" | "query")) {
            v.push("--element-path");
            v.push(elements);
        }
        v
    }

    fn ccb(&self, rest: &[&str]) -> Run {
        self.env.run(&self.args(rest))
    }

    /// `ccb build TARGET --until layer --format json`, which must succeed.
    fn build_layers(&self, target: &str) -> Run {
        self.ccb(&["build", target, "--until", "layer", "--format", "json"])
            .ok()
    }

    fn spawn(&self, rest: &[&str]) -> Child {
        self.spawn_with(rest, Stdio::null())
    }

    fn spawn_with(&self, rest: &[&str], stdout: Stdio) -> Child {
        self.env
            .cmd()
            .args(self.args(rest))
            .env("CCB_TEST_HOST_SECRET", "leak")
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn store(&self) -> &Path {
        self.env.cache.path()
    }

    /// The committed tree of the action `id` (its current key).
    fn tree_of(&self, id: &str) -> PathBuf {
        let ls = self.ccb(&["cache", "ls", "--format", "json"]).ok().json();
        let entry = ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id && e["current"] == true)
            .unwrap_or_else(|| panic!("no current entry for {id}: {ls}"));
        self.store()
            .join("layers")
            .join(entry["key"].as_str().unwrap())
            .join("tree")
    }

    fn edit(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let p = self.root.join(rel);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, f(text)).unwrap();
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The status of every action in a `build --format json` report.
fn statuses(run: &Run) -> Vec<(String, String)> {
    run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status_of(run: &Run, id: &str) -> String {
    statuses(run)
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("{id} not in the report:\n{}", run.stdout))
}

fn scratch_is_empty(store: &Path) -> bool {
    std::fs::read_dir(store.join("tmp")).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn layers_build_once_and_only_what_changed_rebuilds() {
    let p = Project::new();
    let first = p.build_layers("tiny-child");
    assert_eq!(
        statuses(&first),
        [
            ("base:tiny:amd64".to_string(), "built".to_string()),
            ("layer:tiny:amd64".into(), "built".into()),
            ("layer:tiny-child:amd64".into(), "built".into()),
        ]
    );
    // Every script's outcome is recorded in the report.
    let child = &first.json()["actions"][2];
    let steps: Vec<&str> = child["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["01-install-bin", "10-install-static-files", "30-tiny-extra"]
    );

    // What the layers hold: each diff only its own changes, nothing of the build machinery.
    let tiny = p.tree_of("layer:tiny:amd64");
    assert_eq!(
        std::fs::read_to_string(tiny.join("etc/tiny-release")).unwrap(),
        "tiny bookworm amd64\n"
    );
    assert!(tiny.join("usr/bin/less").exists(), "package-installs ran");
    let child = p.tree_of("layer:tiny-child:amd64");
    assert_eq!(
        std::fs::read_to_string(child.join("etc/tiny/greeting")).unwrap(),
        "hello\n"
    );
    assert!(
        child.join("etc/tiny/extra.conf").is_file(),
        "install-static"
    );
    let bin = std::fs::metadata(child.join("usr/local/bin/tiny-hello")).unwrap();
    assert_eq!(bin.permissions().mode() & 0o777, 0o755, "install-bin");
    assert!(
        !child.join("etc/tiny-release").exists(),
        "the parent's file is not copied"
    );
    for tree in [&tiny, &child] {
        for leftover in [
            "usr/sbin/policy-rc.d",
            "etc/resolv.conf.ORIG",
            "tmp/in_target.d",
            "tmp/ccb",
        ] {
            assert!(
                std::fs::symlink_metadata(tree.join(leftover)).is_err(),
                "{leftover} left in {}",
                tree.display()
            );
        }
    }
    assert!(scratch_is_empty(p.store()));
    assert_eq!(leftovers(p.store()), Vec::<String>::new());

    // A second build runs nothing.
    let again = p.build_layers("tiny-child");
    assert!(
        statuses(&again).iter().all(|(_, s)| s == "cached"),
        "{}",
        again.stdout
    );

    // Editing the child's element rebuilds the child's layer only.
    p.edit("elements/tiny-extra/install.d/30-tiny-extra", |t| {
        t + "echo edited > /etc/tiny/edited\n"
    });
    let edited = p.build_layers("tiny-child");
    assert_eq!(status_of(&edited, "base:tiny:amd64"), "cached");
    assert_eq!(status_of(&edited, "layer:tiny:amd64"), "cached");
    assert_eq!(status_of(&edited, "layer:tiny-child:amd64"), "built");
    assert!(
        p.tree_of("layer:tiny-child:amd64")
            .join("etc/tiny/edited")
            .exists()
    );

    // A manifest variable: explain names it, the build sees it.
    p.edit("manifests/images.ncl", |t| {
        t.replace("TINY_GREETING = \"hello\"", "TINY_GREETING = \"bonjour\"")
    });
    let explain = p.ccb(&["query", "explain", "tiny-child"]).ok();
    assert!(
        explain.stdout.contains("TINY_GREETING"),
        "explain does not name the variable:\n{}",
        explain.stdout
    );
    // The parent's layer does not see the child's variable: it stays cached.
    let parent = explain
        .stdout
        .lines()
        .find(|l| l.starts_with("layer:tiny:amd64 "))
        .unwrap_or_else(|| {
            panic!(
                "explain does not list the parent layer:\n{}",
                explain.stdout
            )
        });
    assert!(parent.ends_with("  cached"), "{parent}");
    p.ccb(&["build", "tiny-child", "--until", "layer"]).ok();
    assert_eq!(
        std::fs::read_to_string(
            p.tree_of("layer:tiny-child:amd64")
                .join("etc/tiny/greeting")
        )
        .unwrap(),
        "bonjour\n"
    );

    // --force rebuilds the named target's own actions, not its parent's.
    let forced = p
        .ccb(&[
            "build",
            "tiny-child",
            "--until",
            "layer",
            "--force",
            "tiny-child",
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(status_of(&forced, "layer:tiny:amd64"), "cached");
    assert_eq!(status_of(&forced, "layer:tiny-child:amd64"), "built");

    // A failing script: named with its element, phase and output; nothing is kept.
    let failed = p
        .ccb(&["-v", "build", "tiny-fail", "--until", "layer"])
        .fails();
    failed
        .stderr_has("element `tiny-fail`, install.d/30-tiny-fail failed (exit status 3)")
        // -v streams every script's output as it comes.
        .stderr_has("layer:tiny-fail:amd64 | tiny-fail: about to fail on purpose")
        .stderr_has("| tiny-fail: about to fail on purpose")
        .stderr_has("log: ");
    let ls = p.ccb(&["cache", "ls", "--format", "json"]).ok().json();
    assert!(
        !ls.to_string().contains("layer:tiny-fail"),
        "a failed layer is in the store: {ls}"
    );
    assert!(scratch_is_empty(p.store()));
    assert_eq!(leftovers(p.store()), Vec::<String>::new());

    // The store is sound, and gc keeps what the current builds use.
    p.ccb(&["cache", "verify"]).ok();
    let gc = p.ccb(&["cache", "gc", "--format", "json"]).ok().json();
    assert!(gc["removed"].as_array().unwrap().len() >= 2, "{gc}");
    let after = p.build_layers("tiny-child");
    assert!(
        statuses(&after).iter().all(|(_, s)| s == "cached"),
        "{}",
        after.stdout
    );
}

#[test]
fn two_ccb_processes_never_build_the_same_key_twice() {
    let p = Project::new();
    let args = ["build", "tiny", "--until", "layer", "--format", "json"];
    let a = p.spawn_with(&args, Stdio::piped());
    let b = p.spawn_with(&args, Stdio::piped());
    let reports: Vec<serde_json::Value> = [a, b]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    for id in ["base:tiny:amd64", "layer:tiny:amd64"] {
        let built = reports
            .iter()
            .filter(|r| {
                r["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["id"] == id && a["status"] == "built")
            })
            .count();
        assert_eq!(built, 1, "{id} was built {built} times: {reports:?}");
    }
    p.ccb(&["cache", "verify"]).ok();

    // Without overlayfs the lower layers are copied (whiteouts applied) and trees are full.
    let out = p
        .env
        .cmd()
        .args(p.args(&[
            "build",
            "tiny-child",
            "--until",
            "layer",
            "--format",
            "json",
        ]))
        .env("CCB_OVERLAYFS", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = p.ccb(&["cache", "ls", "--format", "json"]).ok().json();
    let child = row(&ls["entries"], "layer:tiny-child:amd64").clone();
    assert_eq!(child["mode"], "full", "{ls}");
    let tree = p.tree_of("layer:tiny-child:amd64");
    assert!(
        tree.join("etc/tiny-release").is_file(),
        "the parent's layer was copied"
    );
    assert!(tree.join("usr/bin/less").is_file());
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/tiny/greeting")).unwrap(),
        "hello\n"
    );
    // No overlay marker (whiteout device, opaque xattr) survives the flattening.
    let find = Command::new("find")
        .arg(&tree)
        .args(["-type", "c"])
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&find.stdout);
    assert!(
        devices
            .lines()
            .all(|l| !l.contains("/var/") && !l.contains("/etc/")),
        "{devices}"
    );
}

#[test]
fn a_killed_or_interrupted_build_leaves_nothing_behind() {
    let p = Project::new();
    let store = p.store().to_path_buf();
    let check_clean = |when: &str| {
        wait_until(
            &format!("the sandboxes to end ({when})"),
            Duration::from_secs(20),
            || processes_under(&store).is_empty(),
        );
        assert_eq!(leftovers(&store), Vec::<String>::new(), "{when}");
    };

    // 1. kill -9 while mmdebstrap bootstraps the base (the package cache is bind-mounted).
    let mut ccb = p.spawn(&["build", "tiny-slow", "--until", "layer"]);
    wait_until("mmdebstrap to run", Duration::from_secs(120), || {
        logs_contain(&store, "I: installing") || logs_contain(&store, "I: extracting")
    });
    let inside = sandbox_mounts(&store);
    assert!(
        inside.iter().any(|m| m.contains("var/cache/apt/archives")),
        "mmdebstrap's mounts are not there to leak: {inside:?}"
    );
    ccb.kill().unwrap();
    ccb.wait().unwrap();
    check_clean("killed during the base");

    // 2. kill -9 while a script runs in the chroot of a layer (overlay, proc, sys, dev, pts,
    //    the hooks and the package cache mounted).
    let mut ccb = p.spawn(&["build", "tiny-slow", "--until", "layer"]);
    wait_until("the slow script to start", Duration::from_secs(300), || {
        logs_contain(&store, "tiny-slow: waiting")
    });
    let inside = sandbox_mounts(&store);
    for kind in ["overlay", "proc", "sysfs", "devpts", "/tmp/in_target.d"] {
        assert!(
            inside.iter().any(|m| m.contains(kind)),
            "no {kind} mount in the sandbox while the script runs: {inside:?}"
        );
    }
    ccb.kill().unwrap();
    ccb.wait().unwrap();
    check_clean("killed in the chroot");

    // 3. Ctrl-C: the running action is cancelled and cleaned up, ccb says so.
    std::fs::remove_dir_all(store.join("logs")).unwrap();
    let mut ccb = p.spawn(&["build", "tiny-slow", "--until", "layer"]);
    wait_until(
        "the slow script to start again",
        Duration::from_secs(120),
        || logs_contain(&store, "tiny-slow: waiting"),
    );
    let pid = ccb.id() as i32;
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let started = Instant::now();
    let status = ccb.wait().unwrap();
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "Ctrl-C took too long"
    );
    check_clean("interrupted");
    // The cancelled action removed its own scratch directory; the killed runs' were removed
    // by the next build of their keys.
    assert!(scratch_is_empty(&store));

    // The next build succeeds, with the interrupted scripts made quick.
    p.edit("elements/tiny-slow/install.d/40-tiny-slow", |t| {
        t.replace("sleep 600", "true")
    });
    let run = p
        .ccb(&["build", "tiny-slow", "--until", "layer", "--format", "json"])
        .ok();
    assert_eq!(status_of(&run, "layer:tiny-slow:amd64"), "built");
    assert!(scratch_is_empty(&store));
    p.ccb(&["cache", "verify"]).ok();
    check_clean("after the last build");
}

#[test]
fn a_foreign_architecture_needs_qemu_user_emulation() {
    let env = Env::new();
    let root = repo();
    let run = env.run(&[
        "--root",
        root.to_str().unwrap(),
        "build",
        "debian12",
        "--arch",
        "arm64",
        "--until",
        "base",
        "--dry-run",
    ]);
    run.ok();
    let registered = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .is_ok_and(|s| s.starts_with("enabled"));
    if !registered && std::env::consts::ARCH == "x86_64" {
        // Refused before anything runs, with what to install.
        let run = env.run(&[
            "--root",
            root.to_str().unwrap(),
            "build",
            "debian12",
            "--arch",
            "arm64",
            "--until",
            "base",
        ]);
        run.fails()
            .stderr_has("cannot build arm64 root filesystems")
            .stderr_has("ccb doctor");
        assert!(!env.cache.path().join("layers").exists());
    }
}

#[test]
fn cc_ssh_checks_sshd_in_a_layer_above_the_one_that_installed_it() {
    // Every layer is committed without SSH host keys (each instance makes its own), so in a
    // layer on top of the one that installed openssh-server there are none: cc-ssh's check
    // (`sshd -t`, which wants a host key) must still check the configuration, and leave no
    // key behind.
    let p = Project::new();
    let el = p.root.join("elements/tiny-sshd");
    crate::common::write(
        el.join("README.rst"),
        "openssh-server in a layer of its own.\n",
    );
    crate::common::write(el.join("element-deps"), "package-installs\n");
    crate::common::write(el.join("package-installs.yaml"), "openssh-server:\n");
    p.edit("manifests/images.ncl", |text| {
        let end = text.rfind('}').unwrap();
        format!(
            "{}  tiny-sshd = {{\n    name = \"Tiny-Sshd\",\n    description = \"tiny plus \
             openssh-server\",\n    from = \"tiny\",\n    elements = [\"tiny-sshd\"],\n  }},\n  \
             tiny-cc-ssh = {{\n    name = \"Tiny-CC-SSH\",\n    description = \"cc-ssh above \
             the layer that installed sshd\",\n    from = \"tiny-sshd\",\n    elements = \
             [\"cc-ssh\"],\n  }},\n}}\n",
            &text[..end]
        )
    });
    let run = p.build_layers("tiny-cc-ssh");
    let json = run.json();
    let child = row(&json["actions"], "layer:tiny-cc-ssh:amd64");
    assert!(
        child["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "90-cc-ssh-check" && s["status"] == 0),
        "{child}"
    );
    let parent = p.tree_of("layer:tiny-sshd:amd64");
    assert!(parent.join("usr/sbin/sshd").is_file());
    let tree = p.tree_of("layer:tiny-cc-ssh:amd64");
    assert!(
        tree.join("etc/ssh/sshd_config.d/50-cc-hardening.conf")
            .is_file()
    );
    for layer in [&parent, &tree] {
        let keys: Vec<_> = std::fs::read_dir(layer.join("etc/ssh"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("ssh_host_"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(keys.is_empty(), "{}: {keys:?}", layer.display());
    }
}
