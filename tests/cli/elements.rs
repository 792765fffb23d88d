//! Element expansion, phase order, environment.d and package-installs, through
//! `ccb query elements -e … --element-path DIR --format json` (no project needed).

use crate::common::{Env, os_element, script, strs, write};
use serde_json::Value;

fn elements(
    env: &Env,
    dir: &std::path::Path,
    names: &[&str],
    extra: &[&str],
) -> crate::common::Run {
    let mut args = vec!["query", "elements", "--format", "json", "--element-path"];
    let d = dir.to_str().unwrap();
    args.push(d);
    args.push("-e");
    args.extend_from_slice(names);
    args.extend_from_slice(extra);
    env.run(&args)
}

#[test]
fn scripts_run_in_dib_order_and_unrunnable_files_are_skipped() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    let a = dir.path().join("a");
    write(a.join("README.rst"), "a\n");
    for name in ["5-x", "100-x", "10-foo.sh"] {
        script(a.join("install.d").join(name), "#!/bin/bash\n");
    }
    write(a.join("install.d/20-not-executable"), "#!/bin/bash\n");
    let b = dir.path().join("b");
    write(b.join("README.rst"), "b\n");
    for name in ["05-y", "99-y"] {
        script(b.join("install.d").join(name), "#!/bin/bash\n");
    }
    let run = elements(&env, dir.path(), &["os", "a", "b"], &[]).ok();
    let j = run.json();
    assert_eq!(
        strs(&j["phases"]["install.d"], None),
        ["05-y", "5-x", "99-y", "100-x"]
    );
    let skipped: Vec<String> = strs(&j["skipped"], Some("path"));
    assert_eq!(
        skipped,
        ["install.d/10-foo.sh", "install.d/20-not-executable"]
    );
    assert_eq!(strs(&j["elements"], None), ["a", "b", "os"]);
}

#[test]
fn environment_d_is_sourced_in_bytewise_order() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    let a = dir.path().join("a");
    write(a.join("README.rst"), "a\n");
    write(a.join("environment.d/100-c"), "export ORDER=${ORDER:-}c\n");
    write(a.join("environment.d/20-d"), "export ORDER=${ORDER:-}d\n");
    write(a.join("environment.d/9-b"), "export ORDER=${ORDER:-}b\n");
    let j = elements(&env, dir.path(), &["os", "a"], &[]).ok().json();
    assert_eq!(
        strs(&j["environment"], None),
        ["10-os.bash", "100-c", "20-d", "9-b"]
    );
    assert_eq!(j["env"]["ORDER"], "cdb");
    assert_eq!(j["env"]["ARCH"], "amd64");
}

#[test]
fn the_host_environment_does_not_reach_environment_d() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    write(dir.path().join("a/README.rst"), "a\n");
    write(
        dir.path().join("a/environment.d/10-a"),
        "export SEEN=${HOST_SECRET:-unset}\n",
    );
    let out = env
        .cmd()
        .env("HOST_SECRET", "leaked")
        .args([
            "query",
            "elements",
            "--format",
            "json",
            "--element-path",
            dir.path().to_str().unwrap(),
            "-e",
            "os",
            "a",
        ])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["env"]["SEEN"], "unset");
    assert!(j["env"].get("HOST_SECRET").is_none());
}

#[test]
fn a_failing_environment_file_is_named() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    write(dir.path().join("a/README.rst"), "a\n");
    write(
        dir.path().join("a/environment.d/30-check"),
        "echo 'DIB_INIT_SYSTEM must be set' >&2\nexit 1\n",
    );
    let run = elements(&env, dir.path(), &["os", "a"], &[]).fails();
    run.stderr_has("environment.d/30-check")
        .stderr_has("`a`")
        .stderr_has("DIB_INIT_SYSTEM must be set");
}

#[test]
fn two_elements_with_the_same_script_name_in_a_phase_are_refused() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    for el in ["a", "b"] {
        write(dir.path().join(el).join("README.rst"), "x\n");
        script(
            dir.path().join(el).join("post-install.d/50-same"),
            "#!/bin/bash\n",
        );
    }
    elements(&env, dir.path(), &["os", "a", "b"], &[])
        .fails()
        .stderr_has("post-install.d/50-same")
        .stderr_has("`a`")
        .stderr_has("`b`");
}

#[test]
fn expansion_follows_deps_and_removes_provided_names() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a -> b; x -> os; os provides b and operating-system; b -> d. DIB's order-dependent
    // walk (LP #1303911) could leave `d` behind although `b` is provided; ccb must not.
    write(d.join("a/element-deps"), "b\n");
    write(d.join("b/element-deps"), "d\n");
    write(d.join("d/README.rst"), "d\n");
    write(d.join("x/element-deps"), "os\n");
    write(d.join("os/element-provides"), "b\noperating-system\n");
    let j = elements(&env, d, &["a", "x"], &[]).ok().json();
    assert_eq!(strs(&j["elements"], None), ["a", "os", "x"]);
}

#[test]
fn virtual_names_resolve_through_their_provider() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    os_element(d, "os");
    write(d.join("vm/element-deps"), "block-device\n");
    write(
        d.join("block-device-efi/element-provides"),
        "block-device\n",
    );
    let j = elements(&env, d, &["os", "vm", "block-device-efi"], &[])
        .ok()
        .json();
    assert_eq!(strs(&j["elements"], None), ["block-device-efi", "os", "vm"]);
    // Without a provider, the virtual name is simply not found.
    elements(&env, d, &["os", "vm"], &[])
        .fails()
        .stderr_has("Element 'block-device' not found")
        .stderr_has("required by vm");
}

#[test]
fn expansion_errors_carry_dib_error_classes() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    os_element(d, "os");
    os_element(d, "os2");
    write(d.join("plain/README.rst"), "x\n");
    elements(&env, d, &["os", "nope"], &[])
        .fails()
        .stderr_has("not found");
    elements(&env, d, &["os", "os2"], &[])
        .fails()
        .stderr_has("already provided");
    elements(&env, d, &["plain"], &[])
        .fails()
        .stderr_has("operating system");
    write(d.join("wrap/element-provides"), "plain\n");
    elements(&env, d, &["os", "wrap", "plain"], &[])
        .fails()
        .stderr_has("already provided by wrap");
}

#[test]
fn earlier_search_path_entries_override_later_ones_with_a_warning() {
    let env = Env::new();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    os_element(second.path(), "os");
    write(
        second.path().join("a/environment.d/10-a"),
        "export WHO=second\n",
    );
    write(
        first.path().join("a/environment.d/10-a"),
        "export WHO=first\n",
    );
    let path = format!("{}:{}", first.path().display(), second.path().display());
    let run = env
        .run(&[
            "query",
            "elements",
            "--format",
            "json",
            "--element-path",
            &path,
            "-e",
            "os",
            "a",
        ])
        .ok();
    assert_eq!(run.json()["env"]["WHO"], "first");
    assert!(
        run.stderr.contains("element `a`") && run.stderr.contains("overrides"),
        "{}",
        run.stderr
    );
}

fn package_fixture(d: &std::path::Path) {
    os_element(d, "os");
    write(
        d.join("p/package-installs.yaml"),
        r#"plain:
early:
  phase: pre-install.d
amd-only:
  arch: amd64
not-arm:
  not-arch: arm64
arm-only:
  arch: arm64
when-eq:
  when: FLAVOR = big
when-ne:
  when: FLAVOR!=big
when-both:
  when:
    - FLAVOR = big
    - DISTRO_NAME = debian
tool:
  build-only: true
gone:
  uninstall: true
  phase: post-install.d
generic-name:
"#,
    );
    write(
        d.join("p/pkg-map"),
        r#"{"family": {"debian": {"generic-name": "debian-name other-name"}}, "distro": {"debian": {"plain": ""}}}"#,
    );
}

#[test]
fn package_installs_conditions_are_evaluated_against_the_environment() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    package_fixture(dir.path());
    let j = elements(&env, dir.path(), &["os", "p"], &["--env", "FLAVOR=big"])
        .ok()
        .json();
    let p = &j["packages"];
    assert_eq!(
        strs(&p["install.d"]["install"], None),
        [
            "amd-only",
            "debian-name",
            "not-arm",
            "other-name",
            "tool",
            "when-both",
            "when-eq"
        ]
    );
    assert_eq!(strs(&p["install.d"]["uninstall"], None), ["tool"]);
    assert_eq!(strs(&p["pre-install.d"]["install"], None), ["early"]);
    assert_eq!(strs(&p["post-install.d"]["uninstall"], None), ["gone"]);

    let j = elements(
        &env,
        dir.path(),
        &["os", "p"],
        &["--env", "FLAVOR=small", "--arch", "arm64"],
    )
    .ok()
    .json();
    assert_eq!(
        strs(&j["packages"]["install.d"]["install"], None),
        ["arm-only", "debian-name", "other-name", "tool", "when-ne"]
    );
}

#[test]
fn an_unset_variable_in_when_names_element_package_and_variable() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    package_fixture(dir.path());
    elements(&env, dir.path(), &["os", "p"], &[])
        .fails()
        .stderr_has("`p`")
        .stderr_has("`when-eq`")
        .stderr_has("`FLAVOR`");
}

#[test]
fn arch_and_not_arch_together_are_refused() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    write(
        dir.path().join("p/package-installs.yaml"),
        "x:\n  arch: amd64\n  not-arch: arm64\n",
    );
    elements(&env, dir.path(), &["os", "p"], &[])
        .fails()
        .stderr_has("not-arch");
}

/// What DIB would silently drop or ignore is an error naming the package.
#[test]
fn package_installs_refuses_conditions_and_names_it_cannot_mean() {
    let env = Env::new();
    for (yaml, says) in [
        ("x:\n  when: 'DIB_RELEASE == bookworm'\n", "not `==`"),
        (
            "x:\n  when:\n    - {DIB_RELEASE: bookworm}\n",
            "`when` must be",
        ),
        ("'':\n", "is not a package name"),
        ("'vim nano':\n", "is not a package name"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        os_element(dir.path(), "os");
        write(dir.path().join("p/package-installs.yaml"), yaml);
        elements(&env, dir.path(), &["os", "p"], &[])
            .fails()
            .stderr_has("package-installs")
            .stderr_has(says);
    }
}

#[test]
fn static_and_bin_overwrites_are_reported() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    os_element(dir.path(), "os");
    write(dir.path().join("a/static/etc/motd"), "a\n");
    write(dir.path().join("b/static/etc/motd"), "b\n");
    write(dir.path().join("a/bin/tool"), "a\n");
    write(dir.path().join("b/bin/tool"), "b\n");
    let j = elements(&env, dir.path(), &["os", "a", "b"], &[])
        .ok()
        .json();
    let over: Vec<String> = j["overwrites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{} {} {}",
                o["path"].as_str().unwrap(),
                o["winner"].as_str().unwrap(),
                o["loser"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(over, ["static/etc/motd b a", "bin/tool b a"]);
}

#[test]
fn lint_reports_dib_lint_rules_and_passes_clean_elements() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d.join("good/README.rst"), "Good.\n");
    script(
        d.join("good/install.d/10-good"),
        "#!/bin/bash\n\nif [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then\n    set -x\nfi\nset -eu\nset -o pipefail\n\necho ok\n",
    );
    env.run(&["lint", "--element-path", d.to_str().unwrap(), "good"])
        .ok();

    write(d.join("bad/element-deps"), "zeta\nalpha\n");
    write(
        d.join("bad/install.d/10-bad"),
        "#!/bin/sh\n  echo $(which foo)\n",
    );
    script(
        d.join("bad/post-install.d/10-bash"),
        "#!/usr/bin/env bash\necho hi",
    );
    script(
        d.join("bad/environment.d/10-env"),
        "set -x\nexport X=$(date)\n",
    );
    // A dot in the name: dib-run-parts would skip it without a word.
    script(
        d.join("bad/install.d/20-repo-24.04"),
        "#!/bin/bash\nif [ ${DIB_DEBUG_TRACE:-0} -gt 0 ]; then\n    set -x\nfi\nset -eu\nset -o pipefail\n",
    );
    let run = env
        .run(&[
            "lint",
            "--element-path",
            d.to_str().unwrap(),
            "--format",
            "json",
            "bad",
        ])
        .fails();
    let rules: std::collections::BTreeSet<String> = strs(&run.json()["findings"], Some("rule"))
        .into_iter()
        .collect();
    for rule in [
        "readme",
        "element-deps",
        "executable",
        "shebang",
        "sete",
        "setu",
        "setpipefail",
        "dibdebugtrace",
        "newline",
        "environment.d",
        "exports",
        "indent",
        "runparts",
    ] {
        assert!(rules.contains(rule), "missing {rule} in {rules:?}");
    }
}

#[test]
fn every_shipped_element_passes_lint() {
    let env = Env::new();
    env.run(&["--root", crate::common::repo().to_str().unwrap(), "lint"])
        .ok();
}
