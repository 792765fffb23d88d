//! Manifests, targets and `ccb check` on the real project, the examples and the bad corpus.

use crate::common::{Env, copy_tree, repo, strs, write};

fn root() -> String {
    repo().to_str().unwrap().to_string()
}

#[test]
fn the_real_manifests_check() {
    let env = Env::new();
    let run = env.run(&["--root", &root(), "check"]).ok();
    assert!(
        run.stdout.starts_with("ok: 13 images (18 builds)"),
        "{}",
        run.stdout
    );
    // The second run is served by the evaluation cache and says the same.
    let again = env.run(&["--root", &root(), "check"]).ok();
    assert_eq!(
        run.stdout.split(" checked").next(),
        again.stdout.split(" checked").next()
    );
}

#[test]
fn the_root_is_the_nearest_ancestor_with_manifests() {
    let env = Env::new();
    env.run_in(&repo().join("elements/debian"), &["check"]).ok();
    let outside = tempfile::tempdir().unwrap();
    env.run_in(outside.path(), &["check"])
        .fails()
        .stderr_has("no `manifests/` directory");
}

#[test]
fn query_targets_lists_every_build_in_json() {
    let env = Env::new();
    let j = env
        .run(&["--root", &root(), "query", "targets", "--format", "json"])
        .ok()
        .json();
    assert_eq!(j["version"], 1);
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 13);
    // Upstream's current inventory: 20.04 is gone, the GH200 image is arm64 only and keeps
    // upstream's published name, ROCm is amd64 only.
    assert!(!targets.iter().any(|t| t["key"] == "ubuntu20.04"));
    let gh200 = targets
        .iter()
        .find(|t| t["key"] == "ubuntu24.04-cuda-arm64")
        .unwrap();
    assert_eq!(gh200["arch"], serde_json::json!(["arm64"]));
    assert_eq!(gh200["published"]["arm64"], "CC-Ubuntu24.04-CUDA-ARM64");
    let rocm = targets
        .iter()
        .find(|t| t["key"] == "ubuntu24.04-rocm")
        .unwrap();
    assert_eq!(rocm["arch"], serde_json::json!(["amd64"]));
    let deb = targets.iter().find(|t| t["key"] == "debian12").unwrap();
    assert_eq!(deb["label"], "//images:debian12");
    assert_eq!(deb["published"]["arm64"], "CC-Debian12-ARM64");
    assert_eq!(deb["arch"], serde_json::json!(["amd64", "arm64"]));
    let cuda = targets
        .iter()
        .find(|t| t["key"] == "ubuntu24.04-cuda")
        .unwrap();
    assert_eq!(cuda["from"], "//images:ubuntu24.04");
    assert_eq!(cuda["baremetal_only"], true);

    let arm = env
        .run(&[
            "--root",
            &root(),
            "query",
            "targets",
            "--arch",
            "arm64",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(arm["targets"].as_array().unwrap().len(), 6);
}

#[test]
fn query_manifest_shows_inheritance() {
    let env = Env::new();
    let j = env
        .run(&[
            "--root",
            &root(),
            "query",
            "manifest",
            "//images:ubuntu24.04-cuda",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(
        j["provenance"]["distro"], "ubuntu",
        "inherited from the parent"
    );
    assert_eq!(
        j["provenance"]["release"], "noble",
        "inherited from the parent"
    );
    assert_eq!(j["provenance"]["variant"], "gpu", "its own");
    assert_eq!(j["env"]["DIB_RELEASE"], "noble", "inherited");
    assert_eq!(j["env"]["CC_CUDA_GENERATION"], "12", "its own");
    assert_eq!(
        j["elements"],
        serde_json::json!(["cc-ubuntu24.04", "cc-ubuntu24.04-cuda"])
    );
    assert_eq!(j["arch"], serde_json::json!(["amd64"]));
}

#[test]
fn every_spelling_of_a_target_resolves_to_the_same_image() {
    let env = Env::new();
    for word in [
        "//images:ubuntu24.04",
        "ubuntu24.04",
        "CC-Ubuntu24.04",
        "cc-ubuntu24.04",
        "images:ubuntu24.04",
    ] {
        let j = env
            .run(&[
                "--root",
                &root(),
                "query",
                "manifest",
                word,
                "--format",
                "json",
            ])
            .ok()
            .json();
        assert_eq!(j["key"], "ubuntu24.04", "{word}");
    }
    // A published arch name selects that arch.
    let plan = env
        .run(&[
            "--root",
            &root(),
            "build",
            "--dry-run",
            "--format",
            "json",
            "CC-Debian12-ARM64",
        ])
        .ok()
        .json();
    let ids: Vec<String> = strs(&plan["actions"], Some("id"));
    assert_eq!(
        ids,
        [
            "base:debian12:arm64",
            "layer:debian12:arm64",
            "disk:debian12:arm64"
        ]
    );
}

#[test]
fn an_unknown_target_gets_did_you_mean() {
    let env = Env::new();
    env.run(&["--root", &root(), "query", "manifest", "ubuntu24.4"])
        .fails()
        .stderr_has("unknown target `ubuntu24.4`")
        .stderr_has("did you mean `ubuntu24.04`?");
    env.run(&["--root", &root(), "query", "manifest", "//sites:tacc"])
        .fails()
        .stderr_has("is not a target");
}

#[test]
fn arch_filters_and_rejects_unknown_arches() {
    let env = Env::new();
    let plan = env
        .run(&[
            "--root",
            &root(),
            "build",
            "--dry-run",
            "--format",
            "json",
            "--arch",
            "arm64",
            "//...",
        ])
        .ok()
        .json();
    assert!(
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            // Fetch actions belong to no arch: an artifact is the same file for all.
            .all(|a| a["kind"] == "fetch" || a["id"].as_str().unwrap().ends_with(":arm64"))
    );
    // A bad --arch is a bad command line: usage, exit 2 (tests/cli/hostile.rs has more).
    let sparc = env.run(&["--root", &root(), "build", "--dry-run", "--arch", "sparc"]);
    assert_eq!(sparc.code, 2, "{}", sparc.stderr);
    sparc.stderr_has("`sparc` is not an architecture");
    env.run(&[
        "--root",
        &root(),
        "build",
        "--dry-run",
        "--arch",
        "arm64",
        "centos9-stream",
    ])
    .fails()
    .stderr_has("no build matches");
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    assert_eq!(env.run(&["frobnicate"]).code, 2);
    assert_eq!(env.run(&["query", "targets", "--format", "yaml"]).code, 2);
}

#[test]
fn editing_a_manifest_is_seen_at_once() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    copy_tree(&repo().join("examples/toml-project"), &proj);
    let p = proj.to_str().unwrap();
    env.run(&["--root", p, "check"]).ok();
    // Same size, same second: the stat cache must still notice (ctime, and no caching of
    // files younger than two seconds).
    let images = proj.join("manifests/images.toml");
    let text = std::fs::read_to_string(&images).unwrap();
    write(
        &images,
        &text.replacen("arch = [\"amd64\"", "arch = [\"x8664\"", 1),
    );
    env.run(&["--root", p, "check"]).fails().stderr_has("x8664");
}

#[test]
fn examples_check_and_plan() {
    let env = Env::new();
    for ex in ["toml-project", "nickel-project"] {
        let dir = repo().join("examples").join(ex);
        let d = dir.to_str().unwrap();
        env.run(&["--root", d, "check"]).ok();
        env.run(&["--root", d, "lint"]).ok();
        let plan = env
            .run(&["--root", d, "build", "--dry-run", "--format", "json"])
            .ok()
            .json();
        assert!(plan["summary"]["total"].as_u64().unwrap() >= 3, "{ex}");
    }
}

/// Each `tests/bad-manifests/<case>/` is a broken project; `<case>/expect` lists phrases the
/// error must contain. Every case must exit 1, never panic.
#[test]
fn every_bad_manifest_is_rejected_with_a_specific_message() {
    let env = Env::new();
    let corpus = repo().join("tests/bad-manifests");
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let run = env.run(&["--root", case.to_str().unwrap(), "check"]);
        let expect = std::fs::read_to_string(case.join("expect")).unwrap();
        let name = case.file_name().unwrap().to_string_lossy();
        if run.code != 1 || run.stderr.contains("panicked") {
            failures.push(format!("{name}: exit {}\n{}", run.code, run.stderr));
            continue;
        }
        for phrase in expect.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !run.stderr.contains(phrase) {
                failures.push(format!("{name}: missing {phrase:?} in:\n{}", run.stderr));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_embedded_stdlib_is_used_when_the_project_has_none() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    copy_tree(&repo().join("examples/toml-project"), &proj);
    let _ = std::fs::remove_dir_all(proj.join("stdlib"));
    env.run(&["--root", proj.to_str().unwrap(), "check"]).ok();
    assert!(std::fs::read_dir(env.cache.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("stdlib-")
    }));
}

#[test]
fn a_misspelt_category_file_is_reported() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    copy_tree(&repo().join("examples/toml-project"), &proj);
    write(proj.join("manifests/site.toml"), "[x]\nname = \"X\"\n");
    env.run(&["--root", proj.to_str().unwrap(), "check"])
        .ok()
        .stderr_has("manifests/site.toml is not a manifest category")
        .stderr_has("did you mean `sites`?");
}

/// The one evaluation record in `env`'s store.
fn eval_record(env: &Env) -> std::path::PathBuf {
    let dir = env.cache.path().join("eval");
    let mut records: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    records.remove(0)
}

#[test]
fn an_evaluation_record_that_cannot_be_read_is_evaluated_again() {
    // The example's files are old enough to be cached (a fresh copy's are not, for 2 s).
    let env = Env::new();
    let root = repo().join("examples/nickel-project");
    let root = root.to_str().unwrap();
    let summary =
        |run: crate::common::Run| run.stdout.split(" checked").next().unwrap().to_string();
    let first = summary(env.run(&["--root", root, "check"]).ok());
    assert!(first.starts_with("ok: 2 images"), "{first}");
    let record = eval_record(&env);
    let text = std::fs::read_to_string(&record).unwrap();
    // The record is a line of stamps, then the evaluated manifests as JSON (not a string).
    let (head, value) = text.split_once('\n').unwrap();
    let value: serde_json::Value = serde_json::from_str(value).unwrap();
    assert!(value["images"].is_object(), "{value}");

    // The format before: one JSON document, the manifests as a string inside it. Its stamps
    // still match, but it is a miss, not an error nor a model without images.
    let mut old: serde_json::Value = serde_json::from_str(head).unwrap();
    old["json"] = serde_json::Value::String(r#"{"images": {}}"#.into());
    std::fs::write(&record, serde_json::to_vec(&old).unwrap()).unwrap();
    assert_eq!(summary(env.run(&["--root", root, "check"]).ok()), first);
    assert!(std::fs::read_to_string(&record).unwrap().contains('\n'));

    // A value that no longer fits the model (a record of another ccb, a damaged file): a
    // miss too.
    for damaged in [
        format!("{head}\n{{\"images\": 42}}"),
        format!("{head}\n{{\"ima"),
    ] {
        std::fs::write(&record, damaged).unwrap();
        assert_eq!(summary(env.run(&["--root", root, "check"]).ok()), first);
    }
}

#[test]
fn a_check_after_an_edit_resolves_only_the_builds_the_edit_changed() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("p");
    copy_tree(&repo().join("examples/nickel-project"), &proj);
    // Each time environment.d is sourced, the build it is sourced for says so, over TCP:
    // environment.d cannot write to the host's files. Every fragment's connection is queued
    // (with its line) before `ccb check` ends, so the listener is drained after each run.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    write(
        proj.join("elements/counted/environment.d/10-count"),
        &format!("echo \"$IMAGE_NAME\" > /dev/tcp/127.0.0.1/{port}\n"),
    );
    let images = |release_b: &str| {
        format!(
            "let common = {{ elements = [\"tinyos\", \"counted\"], arch = ['amd64], \
             formats = ['qcow2], provenance = {{ distro = \"debian\", variant = \"base\" }} }} in\n\
             {{ a = common & {{ name = \"A\", env.DIB_RELEASE = \"r1\" }},\n  \
             b = common & {{ name = \"B\", env.DIB_RELEASE = \"{release_b}\" }} }}\n"
        )
    };
    write(proj.join("manifests/images.ncl"), &images("r2"));
    // Builds resolve in parallel: the order of the lines is not the point.
    let mut seen: Vec<String> = Vec::new();
    let mut sourced = || {
        loop {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut line = String::new();
                    std::io::Read::read_to_string(&mut conn, &mut line).unwrap();
                    seen.extend(line.lines().map(str::to_string));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("accept: {e}"),
            }
        }
        let mut lines = seen.clone();
        lines.sort();
        lines
    };
    let root = proj.to_str().unwrap();
    env.run(&["--root", root, "check"]).ok();
    assert_eq!(sourced(), ["A", "B"]);

    write(proj.join("manifests/images.ncl"), &images("r3"));
    env.run(&["--root", root, "check"]).ok();
    assert_eq!(sourced(), ["A", "B", "B"]);
}

/// The real inventory publishes with a wildcard: the vGPU image holds the site's license token
/// and NVIDIA's EULA-bound driver, so `//images:all` leaves it out of a public site with a
/// note naming it (as Bazel's wildcards skip `manual` targets), and naming it is the clear
/// error with the way out. The plan marks its actions as kept off caches and builders.
/// CI cost: under a second (dry runs, nothing built).
#[test]
fn a_wildcard_publish_leaves_out_the_image_holding_secrets() {
    let env = Env::new();
    let all = env
        .run(&[
            "--root",
            &root(),
            "publish",
            "//images:all",
            "--site",
            "tacc",
            "--scope",
            "prod",
            "--dry-run",
        ])
        .ok();
    all.stderr_has("ubuntu24.04-cuda-vgpu: left out of the wildcard")
        .stderr_has("CC_VGPU_LICENSE_TOKEN, CC_VGPU_DRIVER");
    assert!(
        all.stderr
            .contains("//images:ubuntu24.04-cuda: not built yet"),
        "{}",
        all.stderr
    );
    assert!(
        !all.stderr.contains("//images:ubuntu24.04-cuda-vgpu:"),
        "{}",
        all.stderr
    );

    let named = env
        .run(&[
            "--root",
            &root(),
            "publish",
            "ubuntu24.04-cuda-vgpu",
            "--site",
            "tacc",
            "--scope",
            "prod",
            "--dry-run",
        ])
        .fails();
    named
        .stderr_has("image `ubuntu24.04-cuda-vgpu` holds secret inputs")
        .stderr_has("CHI@TACC is public")
        .stderr_has("public_with_secrets");

    // Named: `//...` alone leaves it out on a host without the site's driver and token.
    let plan = env
        .run(&[
            "--root",
            &root(),
            "build",
            "//...",
            "ubuntu24.04-cuda-vgpu",
            "--dry-run",
        ])
        .ok();
    let kept_here: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.ends_with("(holds a secret: not shared)"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        kept_here,
        [
            "fetch:vgpu-guest-driver",
            "layer:ubuntu24.04-cuda-vgpu:amd64",
            "disk:ubuntu24.04-cuda-vgpu:amd64"
        ],
        "{}",
        plan.stdout
    );
}

/// `ccb test --disk FIRMWARE:BUS` names each boot; mixing it with bare buses or --firmware is
/// a usage error before anything is planned or built. CI cost: milliseconds.
#[test]
fn ccb_test_disks_with_a_firmware_are_each_one_boot() {
    let env = Env::new();
    for extra in [
        vec!["--disk", "uefi:nvme", "--disk", "sata"],
        vec!["--disk", "uefi:nvme", "--firmware", "bios"],
    ] {
        let r = root();
        let mut args = vec!["--root", &r, "test", "//images:debian13"];
        args.extend(extra);
        let run = env.run(&args);
        assert_eq!(run.code, 2, "{}", run.stderr);
        run.stderr_has("--disk FIRMWARE:BUS names each boot's firmware");
    }
    let run = env.run(&["--root", &root(), "test", "--disk", "uefi:floppy"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}

/// The inventory's image specifics, as the real elements resolve them for the build (nothing
/// is built): the GH200 image takes NVIDIA's sbsa repository, the open kernel modules and the
/// generic 4K-page kernel; the vendor repositories default to the vendors' public servers;
/// 26.04 builds its initramfs with dracut. CI cost: under a second (evaluations only).
#[test]
fn the_inventorys_images_resolve_their_vendor_repositories_kernels_and_initramfs() {
    let env = Env::new();
    let elements = |image: &str, arch: &str| {
        env.run(&[
            "--root",
            &root(),
            "query",
            "elements",
            image,
            "--arch",
            arch,
            "--format",
            "json",
        ])
        .ok()
        .json()
    };
    let var = |j: &serde_json::Value, name: &str| j["env"][name].as_str().map(str::to_string);
    let installs = |j: &serde_json::Value| strs(&j["packages"]["install.d"]["install"], None);
    let nvidia = "https://developer.download.nvidia.com/compute/cuda/repos";

    let gh200 = elements("CC-Ubuntu24.04-CUDA-ARM64", "arm64");
    assert_eq!(var(&gh200, "ARCH").as_deref(), Some("arm64"));
    assert_eq!(var(&gh200, "CC_CUDA_REPO_ARCH").as_deref(), Some("sbsa"));
    assert_eq!(
        var(&gh200, "CC_CUDA_REPO_DISTRO").as_deref(),
        Some("ubuntu2404")
    );
    assert_eq!(
        var(&gh200, "CC_NVIDIA_DRIVER_FLAVOR").as_deref(),
        Some("open")
    );
    assert_eq!(var(&gh200, "CC_ARM64_KERNEL_PAGES").as_deref(), Some("4k"));
    assert_eq!(var(&gh200, "CC_CUDA_REPO_URL").as_deref(), Some(nvidia));
    let packages = installs(&gh200);
    assert!(
        packages.iter().any(|p| p == "nvidia-open-560"),
        "{packages:?}"
    );
    assert!(
        !packages.iter().any(|p| p.starts_with("cuda-drivers")),
        "{packages:?}"
    );
    assert!(
        packages.iter().any(|p| p == "cuda-toolkit-12-6"),
        "{packages:?}"
    );

    // The amd64 CUDA image keeps the proprietary driver from the x86_64 repository.
    let cuda = elements("CC-Ubuntu24.04-CUDA", "amd64");
    assert_eq!(var(&cuda, "CC_CUDA_REPO_ARCH").as_deref(), Some("x86_64"));
    assert_eq!(
        var(&cuda, "CC_NVIDIA_DRIVER_FLAVOR").as_deref(),
        Some("proprietary")
    );
    assert_eq!(var(&cuda, "CC_CUDA_REPO_URL").as_deref(), Some(nvidia));
    let packages = installs(&cuda);
    assert!(
        packages.iter().any(|p| p == "cuda-drivers-560"),
        "{packages:?}"
    );
    assert!(
        !packages.iter().any(|p| p.starts_with("nvidia-open")),
        "{packages:?}"
    );

    let rocm = elements("CC-Ubuntu24.04-ROCm", "amd64");
    assert_eq!(
        var(&rocm, "CC_ROCM_REPO_URL").as_deref(),
        Some("https://repo.radeon.com/rocm/apt/6.4.1")
    );
    assert_eq!(
        var(&rocm, "CC_AMDGPU_REPO_URL").as_deref(),
        Some("https://repo.radeon.com/amdgpu/6.4.1/ubuntu")
    );
    let packages = installs(&rocm);
    assert!(
        packages.iter().any(|p| p == "rocm") && packages.iter().any(|p| p == "amdgpu-dkms"),
        "{packages:?}"
    );

    let resolute = elements("CC-Ubuntu26.04", "amd64");
    assert_eq!(var(&resolute, "DIB_RELEASE").as_deref(), Some("resolute"));
    assert_eq!(var(&resolute, "DIB_INITRAMFS").as_deref(), Some("dracut"));
    assert!(
        strs(&resolute["elements"], None).contains(&"initramfs".to_string()),
        "{}",
        resolute["elements"]
    );
    assert!(
        installs(&resolute).iter().any(|p| p == "dracut"),
        "{:?}",
        installs(&resolute)
    );
}

/// Both Chameleon sites publish, under their display names, CHI@NCAR taking qcow2 only. The
/// real sites.ncl with only its Swift `kind`/`cloud` lines turned into local directories (the
/// Swift side has its own tests against the rig): a dry run of a built image lists what each
/// site would get. CI cost: under a second.
#[test]
fn chi_at_tacc_and_chi_at_ncar_publish_with_their_own_formats() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("project");
    std::fs::create_dir_all(&proj).unwrap();
    copy_tree(&repo().join("manifests"), &proj.join("manifests"));
    std::fs::copy(repo().join("ccb.lock"), proj.join("ccb.lock")).unwrap();
    let sites = std::fs::read_to_string(proj.join("manifests/sites.ncl")).unwrap();
    let mut local = sites.clone();
    for key in ["tacc", "ncar"] {
        let swift = format!("kind = 'swift,\n    cloud = \"{key}\",");
        assert!(local.contains(&swift), "sites.ncl lacks {swift:?}");
        local = local.replace(
            &swift,
            &format!("kind = 'local,\n    path = \"pub-{key}\","),
        );
    }
    // The local directory made private: the vGPU image may go there.
    let private = "name = \"Local directory\",";
    assert!(local.contains(private));
    let local = local.replace(private, &format!("{private} public = false,"));
    write(proj.join("manifests/sites.ncl"), &local);

    let root = proj.to_str().unwrap();
    let unknown = env.run(&[
        "--root",
        root,
        "publish",
        "ubuntu22.04",
        "--site",
        "nope",
        "--scope",
        "prod",
    ]);
    assert_eq!(unknown.code, 2, "a usage error: {}", unknown.stderr);
    unknown.stderr_has("unknown site `nope` (known: local, ncar, tacc)");

    let outs = dir.path().join("outs");
    let name = "CC-Ubuntu22.04";
    write(outs.join(format!("{name}.qcow2")), "qcow2 bytes");
    write(outs.join(format!("{name}.raw")), "raw bytes");
    write(
        outs.join("SHA256SUMS"),
        &format!(
            "{}  {name}.qcow2\n{}  {name}.raw\n",
            crate::distros::sha256(&outs.join(format!("{name}.qcow2"))),
            crate::distros::sha256(&outs.join(format!("{name}.raw")))
        ),
    );
    write(
        outs.join(format!("{name}.d/{name}_provenance.json")),
        r#"{"build-distro": "ubuntu", "build-release": "jammy", "build-variant": "base", "build-repo": "https://example.org/ccb.git", "build-repo-commit": "0000000000000000000000000000000000000000", "build-timestamp": "2026-12-06 00:00:00.000000", "build-tag": "CC-Ubuntu22.04-2026-12-06", "build-ipa": "false", "chameleon-supported": "true"}"#,
    );
    let run = env
        .run(&[
            "--root",
            root,
            "publish",
            "--outputs",
            outs.to_str().unwrap(),
            name,
            "--site",
            "CHI@TACC",
            "--site",
            "CHI@NCAR",
            "--scope",
            "prod",
            "--dry-run",
        ])
        .ok();
    let line = |site: &str| {
        run.stdout
            .lines()
            .chain(run.stderr.lines())
            .find(|l| l.starts_with(&format!("{name}: would publish to {site} ")))
            .unwrap_or_else(|| panic!("no dry run for {site}:\n{}{}", run.stdout, run.stderr))
            .to_string()
    };
    let (tacc, ncar) = (line("CHI@TACC"), line("CHI@NCAR"));
    assert!(
        tacc.contains(&format!("{name}.qcow2")) && tacc.contains(&format!("{name}.raw")),
        "{tacc}"
    );
    assert!(ncar.contains(&format!("{name}.qcow2")), "{ncar}");
    assert!(!ncar.contains(&format!("{name}.raw")), "{ncar}");
    assert!(!proj.join("pub-tacc").exists() && !proj.join("pub-ncar").exists());

    // A private site may take the vGPU image, but this host lacks its driver and token: a
    // wildcard leaves it out as `ccb build` does, rather than failing on them.
    let elements = repo().join("elements");
    env.run(&[
        "--root",
        root,
        "publish",
        "//images:all",
        "--site",
        "local",
        "--scope",
        "prod",
        "--dry-run",
        "--element-path",
        elements.to_str().unwrap(),
    ])
    .ok()
    .stderr_has(
        "ubuntu24.04-cuda-vgpu: left out of the wildcard (its secret inputs are not on this host",
    );
}

/// The drivers the dracut initramfs is made to hold (elements/initramfs) are those `ccb inspect`
/// requires (manifests/inspect.ncl): one list may not gain a driver (md RAID once) the other
/// does not know of. Beyond inspect's list the element names only the root filesystems' modules
/// (inspect's `root_filesystem` check) and virtio_pci, the bus of virtio_blk/virtio_scsi.
/// CI cost: milliseconds.
#[test]
fn the_initramfs_element_and_the_inspect_guard_name_the_same_storage_drivers() {
    let script =
        std::fs::read_to_string(repo().join("elements/initramfs/post-install.d/99-initramfs"))
            .unwrap();
    let wanted: std::collections::BTreeSet<&str> = script
        .lines()
        .find_map(|l| l.strip_prefix("wanted=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("99-initramfs has its `wanted=(...)` line")
        .split_whitespace()
        .filter(|m| !["ext4", "xfs", "virtio_pci"].contains(m))
        .collect();
    let ncl = std::fs::read_to_string(repo().join("manifests/inspect.ncl")).unwrap();
    let list = ncl
        .split_once("modules = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("inspect.ncl has `initramfs.modules`")
        .0;
    let required: std::collections::BTreeSet<&str> = list
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(wanted, required);
}
