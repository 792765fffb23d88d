//! Third-party element sources and `ccb.lock`: a git repository on this machine (a bare repo,
//! no network) whose elements a real layer build runs, pinned by commit even after its branch
//! moves, refreshed only by `ccb update`, and usable offline once in the store.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Env, Run, repo, row, script, write};
use crate::distros::Fixture;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with a work tree beside it to commit from.
struct Upstream {
    bare: PathBuf,
    work: PathBuf,
}

impl Upstream {
    fn new(root: &Path, name: &str) -> Self {
        let bare = root.join(format!("{name}.git"));
        let work = root.join(format!("{name}-work"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self { bare, work }
    }

    /// The `greeter` element, writing `greeting` to /etc/greeting, committed and pushed.
    fn greeter(&self, greeting: &str) -> String {
        script(
            self.work.join("elements/greeter/install.d/50-greet"),
            &format!("#!/bin/bash\nset -eu\necho {greeting} > /etc/greeting\n"),
        );
        write(
            self.work.join("elements/greeter/README.rst"),
            "Writes /etc/greeting.\n",
        );
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", greeting]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn sources(f: &Fixture, body: &str) {
    write(f.project.join("manifests/sources.ncl"), body);
}

fn source_entry(name: &str, up: &Upstream, r: &str) -> String {
    format!(
        "  {name} = {{ url = \"{}\", ref = \"{r}\", path = \"elements\" }},\n",
        up.bare.display()
    )
}

fn greet_image(f: &Fixture) {
    let sha = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &sha,
        "  greet = { name = \"Greet\", from = \"fake-ubuntu\", elements = [\"greeter\"] },\n",
    );
}

fn lock_commit(f: &Fixture, name: &str) -> String {
    let lock = std::fs::read_to_string(f.project.join("ccb.lock")).unwrap();
    let table: toml::Table = toml::from_str(&lock).unwrap();
    table["sources"][name]["commit"]
        .as_str()
        .unwrap()
        .to_string()
}

fn greeting(f: &Fixture) -> String {
    std::fs::read_to_string(f.layer_tree("layer:greet:amd64").join("etc/greeting")).unwrap()
}

fn action<'a>(run: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    row(&run["actions"], id)
}

/// Runs ccb on the fixture's project with the store of `env`; ccb's own elements come from
/// ELEMENTS_PATH so that every command (`update`, `check`, `query`) sees them.
fn ccb_with(env: &Env, f: &Fixture, rest: &[&str]) -> Run {
    env.cmd()
        .env("ELEMENTS_PATH", repo().join("elements"))
        .arg("--root")
        .arg(&f.project)
        .args(rest)
        .output()
        .expect("run ccb")
        .into()
}

fn ccb(f: &Fixture, rest: &[&str]) -> Run {
    ccb_with(&f.env, f, rest)
}

#[test]
fn a_git_source_is_pinned_by_the_lock_until_ccb_update() {
    let f = Fixture::new();
    let up = Upstream::new(f.project.parent().unwrap(), "extra");
    let v1 = up.greeter("v1");
    greet_image(&f);
    sources(
        &f,
        &format!("{{\n{}}}\n", source_entry("extra", &up, "main")),
    );

    // No lock: every command that reads the manifests says so and how to fix it.
    ccb(&f, &["check"])
        .fails()
        .stderr_has("ccb.lock is missing")
        .stderr_has("source `extra`")
        .stderr_has("ccb update");

    ccb(&f, &["update"]).ok();
    assert_eq!(lock_commit(&f, "extra"), v1);

    // The element comes from the source, in a real chroot.
    ccb(&f, &["build", "greet", "--until", "layer"]).ok();
    assert_eq!(greeting(&f), "v1\n");

    // The branch moves: builds keep the pinned commit and rebuild nothing.
    let v2 = up.greeter("v2");
    let again = ccb(
        &f,
        &["build", "greet", "--until", "layer", "--format", "json"],
    )
    .ok()
    .json();
    assert_eq!(action(&again, "layer:greet:amd64")["status"], "cached");
    assert_eq!(
        lock_commit(&f, "extra"),
        v1,
        "a build never rewrites the lock"
    );

    // A dry run shows the new commit and writes nothing.
    let dry = ccb(&f, &["update", "--dry-run", "--format", "json"])
        .ok()
        .json();
    assert_eq!(dry["written"], false);
    assert_eq!(dry["changed"][0]["after"], v2.as_str());
    assert_eq!(lock_commit(&f, "extra"), v1);

    // `ccb update extra` takes it; explain names the source; the build runs the new element.
    ccb(&f, &["update", "extra"]).ok();
    assert_eq!(lock_commit(&f, "extra"), v2);
    let explain = ccb(&f, &["query", "explain", "greet"]).ok();
    assert!(
        explain.stdout.contains("sources: extra changed"),
        "{}",
        explain.stdout
    );
    ccb(&f, &["build", "greet", "--until", "layer"]).ok();
    assert_eq!(greeting(&f), "v2\n");

    // What depends on the source: the image's layer and disk, not its parent's actions.
    let rdeps = ccb(&f, &["query", "rdeps", "source:extra", "--format", "json"])
        .ok()
        .json();
    let rows = rdeps["dependents"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rdeps}");
    assert_eq!(rows[0]["target"], "//images:greet");
    let acts = crate::common::strs(&rows[0]["actions"], None);
    assert_eq!(acts, ["layer:greet:amd64", "disk:greet:amd64"]);
    ccb(&f, &["query", "rdeps", "source:nope"]).fails();
    let deps = ccb(&f, &["query", "deps", "greet", "--format", "json"])
        .ok()
        .json();
    assert_eq!(deps["builds"][0]["sources"]["extra"], v2.as_str(), "{deps}");

    // Editing the manifest's ref makes the lock stale: an error naming the source and the fix.
    sources(
        &f,
        &format!("{{\n{}}}\n", source_entry("extra", &up, "stable")),
    );
    ccb(&f, &["build", "greet", "--until", "layer"])
        .fails()
        .stderr_has("ccb.lock is stale")
        .stderr_has("source `extra`")
        .stderr_has("ccb update extra");
    sources(
        &f,
        &format!("{{\n{}}}\n", source_entry("extra", &up, "main")),
    );

    // Offline: a store that has the source builds without its repository; an empty one fails
    // clearly instead of reaching out.
    std::fs::remove_dir_all(&up.bare).unwrap();
    std::fs::remove_dir_all(f.env.cache.path().join("sources/trees")).unwrap();
    ccb(
        &f,
        &[
            "--offline",
            "build",
            "greet",
            "--until",
            "layer",
            "--force",
            "greet",
        ],
    )
    .ok();
    assert_eq!(greeting(&f), "v2\n");
    let fresh = Env::new();
    ccb_with(
        &fresh,
        &f,
        &["--offline", "build", "greet", "--until", "layer"],
    )
    .fails()
    .stderr_has("--offline");
}

#[test]
fn a_git_sources_credentials_stay_in_the_manifests_never_in_the_lock_or_a_message() {
    let f = Fixture::new();
    // Served over git's dumb HTTP by the fixture's server, which ignores the credentials.
    let up = Upstream::new(&f.served, "tie");
    up.greeter("hello");
    git(&up.bare, &["update-server-info"]);
    let secret = "tok3n-s3cret";
    let entry = |r: &str| {
        format!(
            "{{\n  tie = {{ url = \"http://ccb:{secret}@127.0.0.1:{}/tie.git\", ref = \"{r}\", path = \"elements\" }},\n}}\n",
            f.port
        )
    };
    sources(&f, &entry("main"));
    greet_image(&f);
    let update = ccb(&f, &["update"]).ok();
    let lock = std::fs::read_to_string(f.project.join("ccb.lock")).unwrap();
    assert!(!lock.contains(secret), "{lock}");
    assert!(lock.contains("http://***@127.0.0.1"), "{lock}");
    assert!(!update.stderr.contains(secret), "{}", update.stderr);

    // The checkout fetches with the manifests' URL, credentials included (the lock's has none).
    let check = ccb(&f, &["check"]).ok();
    assert!(!check.stderr.contains(secret), "{}", check.stderr);

    // Another token for the same repository is not a new repository: the pin still holds.
    let rotated = entry("main").replace(secret, "rotated-t0ken");
    sources(&f, &rotated);
    ccb(&f, &["check"]).ok();

    // A stale pin names both URLs, without credentials.
    sources(&f, &entry("v2"));
    let stale = ccb(&f, &["check"]).fails();
    stale
        .stderr_has("is stale")
        .stderr_has("http://***@127.0.0.1");
    assert!(!stale.stderr.contains(secret), "{}", stale.stderr);
}

#[test]
fn a_source_is_fetched_only_when_an_image_needs_one_of_its_elements() {
    let f = Fixture::new();
    let root = f.project.parent().unwrap();
    let used = Upstream::new(root, "extra");
    used.greeter("hello");
    let unused = Upstream::new(root, "more");
    script(
        unused.work.join("elements/other/install.d/50-other"),
        "#!/bin/bash\ntrue\n",
    );
    git(&unused.work, &["add", "-A"]);
    git(&unused.work, &["commit", "-q", "-m", "other"]);
    git(&unused.work, &["push", "-q", "origin", "main"]);
    greet_image(&f);
    sources(
        &f,
        &format!(
            "{{\n{}{}}}\n",
            source_entry("extra", &used, "main"),
            source_entry("more", &unused, "main")
        ),
    );
    ccb(&f, &["update"]).ok();
    let lock = std::fs::read_to_string(f.project.join("ccb.lock")).unwrap();
    let table: toml::Table = toml::from_str(&lock).unwrap();
    let tree = |name: &str| table["sources"][name]["tree"].as_str().unwrap().to_string();
    let trees = f.env.cache.path().join("sources/trees");

    // Nothing is extracted until a command needs an element no other directory has.
    ccb(&f, &["query", "targets"]).ok();
    assert!(!trees.join(tree("extra")).exists());
    ccb(&f, &["build", "greet", "--until", "layer"]).ok();
    assert!(trees.join(tree("extra")).is_dir());
    // Sources are searched in key order: `extra` had `greeter`, `more` was never needed.
    assert!(!trees.join(tree("more")).exists());
    // Its repository can vanish: no build needs it.
    std::fs::remove_dir_all(&unused.bare).unwrap();
    ccb(
        &f,
        &["build", "greet", "--until", "layer", "--force", "greet"],
    )
    .ok();
}

/// `manifests/artifacts.ncl`: one artifact `hello`, served from `tools/<file>`.
fn hello_artifact(f: &Fixture, file: &str, sha256: &str) {
    write(
        f.project.join("manifests/artifacts.ncl"),
        &format!(
            "{{ hello = {{ url = \"http://127.0.0.1:{}/tools/{file}\", sha256 = \"{sha256}\" }} }}\n",
            f.port
        ),
    );
}

#[test]
fn fetched_artifacts_let_builds_run_offline() {
    let f = Fixture::new();
    write(f.served.join("tools/hello.sh"), "#!/bin/sh\necho hello\n");
    let sha = crate::distros::sha256(&f.served.join("tools/hello.sh"));
    hello_artifact(&f, "hello.sh", &sha);
    let centos = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &centos,
        "  tool = { name = \"Tool\", from = \"fake-ubuntu\", elements = [\"hello-tool\"], artifacts = { HELLO_TOOL = \"hello\" } },\n",
    );
    script(
        f.project.join("elements/hello-tool/extra-data.d/50-hello"),
        "#!/bin/bash\nset -eu\ntest -r \"$HELLO_TOOL\"\ninstall -D -m 0755 \"$HELLO_TOOL\" \"$TMP_MOUNT_PATH/usr/local/bin/hello\"\n",
    );

    // `ccb fetch` brings the inputs and builds nothing else.
    let fetched = ccb(&f, &["fetch", "tool", "--format", "json"]).ok().json();
    assert_eq!(action(&fetched, "fetch:hello")["status"], "built");
    assert!(
        fetched["actions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] == "fetch:hello"),
        "{fetched}"
    );
    // The artifact's server is gone; offline, the store answers.
    std::fs::remove_file(f.served.join("tools/hello.sh")).unwrap();
    ccb(&f, &["--offline", "fetch", "tool"]).ok();
    // A new artifact the store lacks is an error naming it, not a download attempt.
    hello_artifact(&f, "hello2.sh", &"0".repeat(64));
    ccb(&f, &["--offline", "fetch", "tool"])
        .fails()
        .stderr_has("artifact `hello` is not in the store, and --offline forbids fetching it");

    // A new version replaces it: `cache gc` drops the old file (no kept action uses it) and
    // keeps the new; `cache verify` re-hashes what is left and notices damage.
    write(
        f.served.join("tools/hello2.sh"),
        "#!/bin/sh\necho hello 2\n",
    );
    let sha2 = crate::distros::sha256(&f.served.join("tools/hello2.sh"));
    hello_artifact(&f, "hello2.sh", &sha2);
    ccb(&f, &["fetch", "tool"]).ok();
    let gc = ccb(&f, &["cache", "gc", "--format", "json"]).ok().json();
    assert_eq!(gc["artifacts_removed"], serde_json::json!([sha]), "{gc}");
    let artifacts = f.env.cache.path().join("artifacts");
    assert!(!artifacts.join(&sha).exists());
    assert!(artifacts.join(&sha2).is_file());
    ccb(&f, &["cache", "verify"]).ok();
    let stored = artifacts.join(&sha2);
    let mut perms = std::fs::metadata(&stored).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&stored, perms).unwrap();
    std::fs::write(&stored, "#!/bin/sh\necho tampered\n").unwrap();
    let bad = ccb(&f, &["cache", "verify"]).fails();
    assert!(
        bad.stdout.contains(&format!("artifact {}", &sha2[..16])),
        "{}",
        bad.stdout
    );
}

#[test]
fn an_artifact_following_latest_is_pinned_by_the_first_build_and_moved_by_ccb_update() {
    let f = Fixture::new();
    write(f.served.join("tools/hello.sh"), "#!/bin/sh\necho one\n");
    let one = crate::distros::sha256(&f.served.join("tools/hello.sh"));
    hello_artifact(&f, "hello.sh", "latest");
    let centos = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &centos,
        "  tool = { name = \"Tool\", from = \"fake-ubuntu\", elements = [\"ubuntu\"], artifacts = { HELLO_TOOL = \"hello\" } },\n",
    );
    // With no pin yet the manifests still check and plan; CI's --locked refuses to add one.
    ccb(&f, &["check"]).ok();
    ccb(&f, &["build", "tool", "--dry-run"]).ok();
    ccb(&f, &["build", "tool", "--until", "layer", "--locked"])
        .fails()
        .stderr_has("no digest for artifact `hello`")
        .stderr_has("--locked")
        .stderr_has("ccb update hello");
    assert!(!f.project.join("ccb.lock").exists());

    // Like Cargo: the first build resolves it, adds the pin and says so.
    let first = ccb(&f, &["build", "tool", "--until", "layer"]).ok();
    first.stderr_has(&format!("ccb.lock: pinned artifact `hello` at {one}"));
    let lock = std::fs::read_to_string(f.project.join("ccb.lock")).unwrap();
    assert!(lock.contains(&one), "{lock}");
    // The download that pinned it is the one the build used: no second download.
    std::fs::remove_file(f.served.join("tools/hello.sh")).unwrap();
    ccb(&f, &["build", "tool", "--until", "layer", "--locked"]).ok();

    // A build never moves an existing pin, even when upstream changed.
    write(
        f.served.join("tools/hello.sh"),
        "#!/bin/sh\necho one and a half\n",
    );
    let again = ccb(&f, &["build", "tool", "--until", "layer"]).ok();
    assert!(
        !again.stderr.contains("pinned artifact"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(f.project.join("ccb.lock")).unwrap(),
        lock
    );

    // Upstream publishes a new file: nothing changes until `ccb update hello`.
    write(f.served.join("tools/hello.sh"), "#!/bin/sh\necho two\n");
    let two = crate::distros::sha256(&f.served.join("tools/hello.sh"));
    ccb(&f, &["fetch", "tool"]).ok();
    assert!(!f.env.cache.path().join("artifacts").join(&two).exists());
    let upd = ccb(&f, &["update", "hello", "--format", "json"])
        .ok()
        .json();
    assert_eq!(upd["changed"][0]["entry"], "artifact `hello`", "{upd}");
    assert_eq!(upd["changed"][0]["before"], one.as_str());
    assert_eq!(upd["changed"][0]["after"], two.as_str());
    let explain = ccb(&f, &["query", "explain", "tool"]).ok();
    assert!(
        explain
            .stdout
            .contains("artifacts: hello (HELLO_TOOL) changed"),
        "{}",
        explain.stdout
    );
    // Names that are neither sources nor "latest" artifacts are usage errors.
    assert_eq!(ccb(&f, &["update", "nope"]).code, 2);
}

#[test]
fn a_latest_artifact_is_verified_against_its_publishers_checksum_file_before_it_is_pinned() {
    let f = Fixture::new();
    write(f.served.join("tools/hello.sh"), "#!/bin/sh\necho one\n");
    let one = crate::distros::sha256(&f.served.join("tools/hello.sh"));
    let centos = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &centos,
        "  tool = { name = \"Tool\", from = \"fake-ubuntu\", elements = [\"ubuntu\"], artifacts = { HELLO_TOOL = \"hello\" } },\n",
    );
    let artifact = |url: &str| {
        write(
            f.project.join("manifests/artifacts.ncl"),
            &format!(
                "{{ hello = {{ url = \"{url}\", sha256 = \"latest\", sums = \"http://127.0.0.1:{}/tools/SHA256SUMS\" }} }}\n",
                f.port
            ),
        )
    };
    let served = format!("http://127.0.0.1:{}/tools/hello.sh", f.port);
    artifact(&served);

    // The publisher's checksum file disagrees with the download: nothing is pinned or stored.
    write(
        f.served.join("tools/SHA256SUMS"),
        &format!("SHA256 (hello.sh) = {}\n", "e".repeat(64)),
    );
    ccb(&f, &["build", "tool", "--until", "layer"])
        .fails()
        .stderr_has("SHA-256 mismatch")
        .stderr_has(&format!("expected {}", "e".repeat(64)));
    assert!(!f.project.join("ccb.lock").exists());
    assert!(!f.env.cache.path().join("artifacts").join(&one).exists());

    // A checksum file without the file's entry is an error naming both.
    write(
        f.served.join("tools/SHA256SUMS"),
        &format!("{one} *other.sh\n"),
    );
    ccb(&f, &["build", "tool", "--until", "layer"])
        .fails()
        .stderr_has("SHA256SUMS has no SHA-256 for hello.sh");

    // The right entry (GNU format): pinned at the verified digest.
    write(
        f.served.join("tools/SHA256SUMS"),
        &format!("{one} *hello.sh\n"),
    );
    ccb(&f, &["build", "tool", "--until", "layer"])
        .ok()
        .stderr_has(&format!("pinned artifact `hello` at {one}"));

    // With the server out of reach, the error names the URL and what overrides it.
    std::fs::remove_file(f.project.join("ccb.lock")).unwrap();
    artifact("http://127.0.0.1:9/tools/hello.sh");
    ccb(&f, &["build", "tool", "--until", "layer"])
        .fails()
        .stderr_has("cannot download http://127.0.0.1:9/tools/hello.sh")
        .stderr_has("point the artifact's `url` at a mirror");
}
