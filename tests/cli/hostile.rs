//! Hostile or careless input at the command line and in the store ([9/9]): each is refused or
//! survived with a clear message, never a panic, and never by removing what was not asked for.

use crate::common::{Env, repo};

/// Directories under the store's keyed folders that ccb did not make: a name shorter than a
/// key's 16 shown characters, and one whose 16th byte falls inside a UTF-8 character (`x`,
/// then two-byte characters).
fn foreign_entries(env: &Env) -> Vec<std::path::PathBuf> {
    let layers = env.cache.path().join("layers");
    let dirs = vec![layers.join("abc"), layers.join("xééééééééééééé-not-a-key")];
    for d in &dirs {
        std::fs::create_dir_all(d.join("tree")).unwrap();
    }
    std::fs::create_dir_all(env.cache.path().join("actions")).unwrap();
    std::fs::write(env.cache.path().join("actions/short.json"), "{}").unwrap();
    dirs
}

#[test]
fn store_names_that_are_not_keys_are_listed_verified_and_collected_without_a_panic() {
    let env = Env::new();
    let dirs = foreign_entries(&env);
    let ls = env.run(&["cache", "ls"]).ok();
    assert!(ls.stdout.contains("0 entries"), "{}", ls.stdout);
    env.run(&["cache", "ls", "--format", "json"]).ok();
    let gc = env.run(&["cache", "gc"]).ok();
    assert!(gc.stdout.contains("removed 0 entries"), "{}", gc.stdout);
    // Not ccb's: gc leaves them where they are.
    for d in &dirs {
        assert!(d.is_dir(), "gc removed {}", d.display());
    }
    env.run(&["cache", "gc", "--all"]).ok();
    assert!(dirs.iter().all(|d| d.is_dir()));
    let verify = env.run(&["cache", "verify"]).fails();
    for name in [
        "layers/abc",
        "layers/xééééééééééééé-not-a-key",
        "actions/short.json",
    ] {
        assert!(
            verify
                .stdout
                .contains(&format!("`{name}` is not named by a key")),
            "{name}:\n{}",
            verify.stdout
        );
    }
}

#[test]
fn an_empty_image_name_selects_nothing_and_is_a_usage_error() {
    let env = Env::new();
    let root = repo().display().to_string();
    for args in [
        &["cache", "rm", "//images:"][..],
        &["build", "--dry-run", "//images:"],
        &["build", "--dry-run", ""],
        &["query", "deps", "images:"],
    ] {
        let mut full = vec!["--root", root.as_str()];
        full.extend_from_slice(args);
        let run = env.run(&full);
        assert_eq!(run.code, 2, "ccb {args:?}:\n{}", run.stderr);
        assert!(
            run.stderr.contains("names no image"),
            "ccb {args:?}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn an_unknown_architecture_is_a_usage_error() {
    let env = Env::new();
    let root = repo().display().to_string();
    for args in [
        &["build", "--dry-run", "--arch", "sparc", "//images:debian12"][..],
        &["query", "targets", "--arch", "sparc"],
        &["query", "elements", "debian12", "--arch", "sparc"],
    ] {
        let mut full = vec!["--root", root.as_str()];
        full.extend_from_slice(args);
        let run = env.run(&full);
        assert_eq!(run.code, 2, "ccb {args:?}:\n{}", run.stderr);
        assert!(
            run.stderr.contains("`sparc` is not an architecture"),
            "{}",
            run.stderr
        );
    }
}

/// `publish --dry-run` and `versions list` look; they build nothing, pin nothing and create
/// no site directory.
#[test]
fn a_publish_dry_run_and_a_version_listing_build_nothing_and_create_nothing() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("layered");
    crate::common::copy_tree(&repo().join("tests/fixtures/layered"), &root);
    crate::common::write(
        root.join("manifests/sites.ncl"),
        "{ here = { name = \"Here\", baremetal = true, kind = 'local, path = \"site\", formats = ['qcow2] } }\n",
    );
    let elements = repo().join("elements").display().to_string();
    let root_s = root.display().to_string();
    let run = env
        .run(&[
            "--root",
            &root_s,
            "publish",
            "--dry-run",
            "--element-path",
            &elements,
            "--scope",
            "prod",
            "//images:tiny",
        ])
        .ok();
    assert!(
        run.stderr.contains("//images:tiny: not built yet"),
        "{}",
        run.stderr
    );
    let list = env
        .run(&[
            "--root", &root_s, "versions", "list", "--site", "here", "--scope", "prod",
        ])
        .ok();
    assert!(list.stdout.contains("no versions"), "{}", list.stdout);
    assert!(
        !root.join("site").exists(),
        "the site's directory was created"
    );
    assert!(
        !env.cache.path().join("layers").exists() && !env.cache.path().join("actions").exists(),
        "something was built"
    );
}
