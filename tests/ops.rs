//! The operations as a library: a small project's graph run through `ops::build` and
//! `ops::test`, and the other operations (update, cache, query, publish, versions) called
//! without the binary, against a real store and a real local site.

use std::path::{Path, PathBuf};

use ccb::ops::build::{BuildRequest, Stage};
use ccb::ops::cache::GcRequest;
use ccb::ops::publish::{PublishObserver, PublishRequest};
use ccb::ops::query::{ElementsRequest, RdepsQuery, TargetsListing};
use ccb::ops::test::{BootResult, TestObserver, TestRequest};
use ccb::ops::update::UpdateRequest;
use ccb::ops::versions::{At, PromoteRequest, PruneRequest, RollbackRequest};
use ccb::ops::{self, ErrorKind, Session, SessionOptions};
use ccb::store::Store;
use ccb::ui::Shell;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The layered fixture, whose `tiny` image needs one artifact kept in a local file.
struct Project {
    dir: tempfile::TempDir,
    store: Store,
    _cache: tempfile::TempDir,
}

impl Project {
    fn new(blob: &[u8], pinned: &str) -> Self {
        // The manifest evaluator and the sandbox are ccb re-executed; this test binary is not.
        ccb::process::use_ccb_binary(env!("CARGO_BIN_EXE_ccb"));
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repo().join("tests/fixtures/layered"), dir.path());
        std::fs::write(dir.path().join("blob.bin"), blob).unwrap();
        std::fs::write(
            dir.path().join("manifests/artifacts.ncl"),
            format!(
                "{{ blob = {{ url = \"file://{}\", sha256 = \"{pinned}\" }} }}\n",
                dir.path().join("blob.bin").display()
            ),
        )
        .unwrap();
        let images = dir.path().join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap().replacen(
            "formats = ['qcow2],",
            "formats = ['qcow2],\n    artifacts = { TINY_BLOB = \"blob\" },",
            1,
        );
        std::fs::write(&images, text).unwrap();
        let cache = tempfile::tempdir().unwrap();
        Self {
            store: Store::at(cache.path()),
            dir,
            _cache: cache,
        }
    }

    fn session(&self) -> Session<'_> {
        let shell = Shell::new(true, 0);
        let model = ops::load_model(self.dir.path(), &self.store, true, &shell).unwrap();
        let opts = SessionOptions {
            element_path: vec![repo().join("elements").display().to_string()],
            ..Default::default()
        };
        Session::open(model, &self.store, &opts, &shell).unwrap()
    }
}

fn fetch_only() -> BuildRequest {
    BuildRequest {
        until: Stage::Fetch,
        announce_outputs: false,
        ..BuildRequest::disks(&["tiny".into()], &[])
    }
}

#[test]
fn a_fetch_runs_once_through_ops_build_and_is_cached_the_second_time() {
    let blob = b"an artifact the image needs\n";
    let p = Project::new(blob, &hex(&Sha256::digest(blob)));
    let session = p.session();
    let planned = session.plan(&["tiny".into()], &[]).unwrap();
    let shell = Shell::new(true, 0);

    let plan = ops::build::plan(&planned, &p.store, Stage::Fetch);
    let ids: Vec<&str> = plan.iter().map(|(a, _)| a.id.as_str()).collect();
    assert_eq!(
        ids,
        ["fetch:blob"],
        "only the fetch runs until the fetch stage"
    );

    let first = ops::build::build(&session, &planned, &fetch_only(), &shell).unwrap();
    first.ok().unwrap();
    assert_eq!((first.summary.built, first.summary.cached), (1, 0));
    assert!(first.disks.is_empty(), "no disk before the disk stage");
    let stored = p
        .store
        .path(&ccb::store::Layout::artifact(&hex(&Sha256::digest(blob))));
    assert_eq!(std::fs::read(stored).unwrap(), blob);

    let second = ops::build::build(&session, &planned, &fetch_only(), &shell).unwrap();
    assert_eq!((second.summary.built, second.summary.cached), (0, 1));
    let json = serde_json::to_value(&second).unwrap();
    assert_eq!(json["actions"][0]["status"], "cached", "{json}");
    assert_eq!(json["summary"]["total"], 1);
}

#[test]
fn a_failed_action_is_in_the_report_and_fails_the_command() {
    let p = Project::new(b"what the server sends\n", &"a".repeat(64));
    let session = p.session();
    let planned = session.plan(&["tiny".into()], &[]).unwrap();
    let report =
        ops::build::build(&session, &planned, &fetch_only(), &Shell::new(true, 0)).unwrap();
    assert_eq!(report.summary.failed, 1);
    let row = &report.actions[0];
    assert_eq!(row.status, "failed");
    assert!(
        row.error.as_deref().is_some_and(|e| e.contains("blob")),
        "the error names the artifact: {row:?}"
    );
    let err = report.ok().unwrap_err();
    assert_eq!(err.kind, ErrorKind::User);
    assert!(
        err.message().contains("1 action failed"),
        "{}",
        err.message()
    );
}

struct Silent;

impl TestObserver for Silent {
    fn built(&mut self, _: &ops::build::BuildReport) {
        panic!("nothing may be built for a boot that cannot happen");
    }
    fn booting(&mut self, _: &str, _: &ccb::ops::test::BootPlan, _: bool) {}
    fn booted(&mut self, _: &ccb::bootcheck::BootReport, _: &BootResult) {}
}

#[test]
fn a_bios_boot_of_an_arm64_image_is_refused_before_anything_is_built() {
    let p = Project::new(b"x", &"b".repeat(64));
    let images = p.dir.path().join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap().replacen(
        "arch = ['amd64],",
        "arch = ['amd64, 'arm64],",
        1,
    );
    std::fs::write(&images, text).unwrap();
    let mut session = p.session();
    let req = TestRequest {
        targets: vec!["tiny".into()],
        arch: vec!["arm64".into()],
        firmwares: vec![ccb::bootcheck::Firmware::Bios],
        buses: vec![ccb::bootcheck::DiskBus::Virtio],
        paired: vec![],
        timeout: std::time::Duration::from_secs(1),
    };
    let err = ops::test::run(&mut session, &req, &Shell::new(true, 0), &mut Silent).unwrap_err();
    assert!(err.message().contains("no BIOS"), "{}", err.message());
    assert!(
        !p.store.path("artifacts").exists() && !p.store.path("layers").exists(),
        "nothing fetched or built"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The elements a layer runs are the ones its key digests: the graph computes the set once
/// (a child's closure less its parent's; a root image's whole closure) and the run takes it
/// from there.
#[test]
fn a_layer_is_keyed_by_exactly_the_elements_it_runs() {
    let p = Project::new(b"x", &"c".repeat(64));
    let session = p.session();
    let planned = session
        .plan(&["//images:tiny-child".to_string()], &[])
        .unwrap();
    let graph = &planned.graph;
    let keyed = |id: &str| -> Vec<String> {
        match graph.get(id).unwrap().doc.get("elements") {
            Some(ccb::keydoc::Value::Map(m)) => m.keys().cloned().collect(),
            other => panic!("{id}: elements is {other:?}"),
        }
    };
    let arch = ccb::manifest::Arch::Amd64;
    let child = graph.layer_elements("tiny-child", arch).unwrap();
    assert_eq!(child, ["install-static", "tiny-extra"]);
    assert_eq!(keyed("layer:tiny-child:amd64"), child);
    let root = graph.layer_elements("tiny", arch).unwrap();
    assert!(root.iter().any(|e| e == "tiny-base"), "{root:?}");
    assert!(!root.iter().any(|e| e == "tiny-extra"), "{root:?}");
    assert_eq!(keyed("layer:tiny:amd64"), root);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// The elements whose scripts a built layer ran (the engine's own steps left out: they come
/// with the elements' files, not as elements).
fn ran(report: &ops::build::BuildReport, id: &str) -> std::collections::BTreeSet<String> {
    let row = report
        .actions
        .iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the report"));
    let built = row
        .built
        .as_ref()
        .unwrap_or_else(|| panic!("{id} was not built: {row:?}"));
    built
        .steps
        .iter()
        .map(|s| s.element.clone())
        .filter(|e| {
            !matches!(
                e.as_str(),
                "package-installs" | "install-bin" | "dib-init-system"
            )
        })
        .collect()
}

/// The whole chain as a library, as root like the executor's end-to-end tests: the base, both
/// layers and the child's disk run through `ops::build`, each layer running exactly elements
/// its key holds, the disk materialized; the same build again finds everything cached.
#[test]
fn a_base_its_layers_and_a_disk_run_through_ops_build() {
    assert!(
        is_root(),
        "this test builds root filesystems: run it as root (scripts/test does)"
    );
    let blob = b"an artifact the image needs\n";
    let p = Project::new(blob, &hex(&Sha256::digest(blob)));
    let session = p.session();
    let planned = session
        .plan(&["//images:tiny-child".to_string()], &[])
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let req = BuildRequest {
        out: Some(out.path().to_path_buf()),
        announce_outputs: false,
        ..BuildRequest::disks(&[], &[])
    };
    let shell = Shell::new(true, 0);

    let first = ops::build::build(&session, &planned, &req, &shell).unwrap();
    first.ok().unwrap();
    let kinds: Vec<(&str, &str)> = first
        .actions
        .iter()
        .map(|a| (a.kind.as_str(), a.status))
        .collect();
    for kind in ["fetch", "base", "layer", "disk"] {
        assert!(
            kinds.contains(&(kind, "built")),
            "a {kind} action was built: {kinds:?}"
        );
    }
    assert_eq!(first.summary.built, first.summary.total, "{kinds:?}");

    let arch = ccb::manifest::Arch::Amd64;
    let graph = &planned.graph;
    let keyed = |image: &str| -> std::collections::BTreeSet<String> {
        graph
            .layer_elements(image, arch)
            .unwrap()
            .iter()
            .cloned()
            .collect()
    };
    let child = ran(&first, "layer:tiny-child:amd64");
    assert!(child.contains("tiny-extra"), "{child:?}");
    assert!(child.is_subset(&keyed("tiny-child")), "{child:?}");
    let root = ran(&first, "layer:tiny:amd64");
    assert!(root.contains("tiny-base"), "{root:?}");
    assert!(!root.contains("tiny-extra"), "{root:?}");
    assert!(root.is_subset(&keyed("tiny")), "{root:?}");

    assert_eq!(first.disks.len(), 1, "the target's one disk");
    let disk = &first.disks[0];
    assert!(disk.dir.join("Tiny-Child.qcow2").is_file(), "{disk:?}");
    assert!(out.path().join("Tiny-Child.qcow2").is_file());

    let second = ops::build::build(&session, &planned, &req, &shell).unwrap();
    second.ok().unwrap();
    assert_eq!(
        (second.summary.built, second.summary.cached),
        (0, first.summary.total)
    );
    assert_eq!(second.disks[0].key, disk.key);
}

// ---------------------------------------------------------------------------------------------
// The other operations, each through its library entry: build's order (refuse, pin, plan),
// update, cache, query, publish and versions.

/// The fixture with `tiny`'s artifact following "latest": the digest comes from the lock.
fn following_latest(blob: &[u8]) -> Project {
    Project::new(blob, "latest")
}

fn lock_text(p: &Project) -> Option<String> {
    std::fs::read_to_string(p.dir.path().join("ccb.lock")).ok()
}

fn build_request(targets: &[&str], until: Stage) -> BuildRequest {
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    BuildRequest {
        until,
        announce_outputs: false,
        ..BuildRequest::disks(&targets, &[])
    }
}

#[test]
fn ops_build_run_refuses_a_missing_pin_when_locked_and_pins_it_before_planning_otherwise() {
    let blob = b"the newest upstream file\n";
    let sha = hex(&Sha256::digest(blob));
    let p = following_latest(blob);
    let shell = Shell::new(true, 0);

    // CI's --locked: a "latest" artifact with no pin is an error, and nothing is written.
    let mut session = p.session();
    let locked = BuildRequest {
        locked: true,
        dry_run: true,
        ..build_request(&["tiny"], Stage::Fetch)
    };
    let err = ops::build::run(&mut session, &locked, &shell).unwrap_err();
    assert!(
        err.message().contains("no digest for artifact `blob`"),
        "{}",
        err.message()
    );
    assert_eq!(lock_text(&p), None, "nothing pinned");

    // A dry run pins nothing: the report is the plan, with the fetch still to run.
    let dry = BuildRequest {
        dry_run: true,
        ..build_request(&["tiny"], Stage::Fetch)
    };
    let plan = match ops::build::run(&mut session, &dry, &shell).unwrap() {
        ops::build::BuildOutcome::Planned(plan) => plan,
        other => panic!("a dry run reports its plan, not {other:?}"),
    };
    assert_eq!(plan.summary.to_run, 1);
    assert_eq!(plan.actions[0].id, "fetch:blob");
    assert_eq!(lock_text(&p), None, "a dry run pins nothing");

    // The build pins first, so the fetch it plans is keyed by the pinned digest.
    let built = match ops::build::run(
        &mut session,
        &build_request(&["tiny"], Stage::Fetch),
        &shell,
    )
    .unwrap()
    {
        ops::build::BuildOutcome::Built(report) => report,
        other => panic!("a build reports its build, not {other:?}"),
    };
    built.ok().unwrap();
    assert_eq!(built.summary.built, 1);
    assert!(
        lock_text(&p).is_some_and(|l| l.contains(&sha)),
        "the pin is in ccb.lock"
    );
    let stored = p.store.path(&ccb::store::Layout::artifact(&sha));
    assert_eq!(std::fs::read(stored).unwrap(), blob);
}

#[test]
fn ops_update_pins_a_latest_artifact_and_moves_it_only_when_not_a_dry_run() {
    let one = b"release one\n";
    let p = following_latest(one);
    let shell = Shell::new(true, 0);
    let unlocked = || ops::load_model(p.dir.path(), &p.store, false, &shell).unwrap();
    let all = UpdateRequest::default();

    let first = ops::update::update(&unlocked(), &p.store, &all, &shell).unwrap();
    assert!(first.written);
    assert_eq!(first.pins["blob"], hex(&Sha256::digest(one)));
    let again = ops::update::update(&unlocked(), &p.store, &all, &shell).unwrap();
    assert!(again.up_to_date && !again.written, "{again:?}");

    // Upstream moves: a dry run says so and writes nothing; the update moves the pin.
    let two = b"release two\n";
    std::fs::write(p.dir.path().join("blob.bin"), two).unwrap();
    let before = lock_text(&p);
    let dry = UpdateRequest {
        dry_run: true,
        ..UpdateRequest::default()
    };
    let seen = ops::update::update(&unlocked(), &p.store, &dry, &shell).unwrap();
    assert!(!seen.written);
    let json = serde_json::to_value(&seen).unwrap();
    assert_eq!(json["changed"][0]["entry"], "artifact `blob`", "{json}");
    assert_eq!(json["changed"][0]["after"], hex(&Sha256::digest(two)));
    assert_eq!(lock_text(&p), before, "a dry run leaves ccb.lock alone");
    let moved = ops::update::update(&unlocked(), &p.store, &all, &shell).unwrap();
    assert!(moved.written);
    assert_eq!(moved.pins["blob"], hex(&Sha256::digest(two)));

    // A name that is neither a source nor a "latest" artifact is a usage error.
    let nope = UpdateRequest {
        names: vec!["nope".into()],
        ..UpdateRequest::default()
    };
    let err = ops::update::update(&unlocked(), &p.store, &nope, &shell).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Usage);
}

#[test]
fn ops_cache_lists_the_fetched_artifact_and_gc_removes_only_what_no_build_uses() {
    let old = b"the artifact as it was\n";
    let p = Project::new(old, &hex(&Sha256::digest(old)));
    let shell = Shell::new(true, 0);
    let fetch = build_request(&["tiny"], Stage::Fetch);
    {
        let session = p.session();
        let planned = session.plan(&["tiny".into()], &[]).unwrap();
        ops::build::build(&session, &planned, &fetch, &shell)
            .unwrap()
            .ok()
            .unwrap();
    }
    let ls = ops::cache::ls(&p.store);
    assert_eq!(ls.entries.len(), 1, "{:?}", ls.entries);
    assert_eq!(ls.entries[0].id, "fetch:blob");
    assert!(ls.entries[0].current);

    // The manifests move to a new file: the old fetch is no build's any more.
    let new = b"the artifact as it is now\n";
    std::fs::write(p.dir.path().join("blob.bin"), new).unwrap();
    let artifacts = p.dir.path().join("manifests/artifacts.ncl");
    let text = std::fs::read_to_string(&artifacts)
        .unwrap()
        .replace(&hex(&Sha256::digest(old)), &hex(&Sha256::digest(new)));
    std::fs::write(&artifacts, text).unwrap();
    {
        let session = p.session();
        let planned = session.plan(&["tiny".into()], &[]).unwrap();
        ops::build::build(&session, &planned, &fetch, &shell)
            .unwrap()
            .ok()
            .unwrap();
    }
    let ls = ops::cache::ls(&p.store);
    let current: Vec<bool> = ls.entries.iter().map(|e| e.current).collect();
    assert_eq!(current.len(), 2);
    assert_eq!(
        current.iter().filter(|c| **c).count(),
        1,
        "{:?}",
        ls.entries
    );

    let blob = |data: &[u8]| {
        p.store
            .path(&ccb::store::Layout::artifact(&hex(&Sha256::digest(data))))
    };
    let dry = ops::cache::gc(
        &p.store,
        GcRequest {
            all: false,
            dry_run: true,
        },
    )
    .unwrap();
    assert_eq!((dry.removed.len(), dry.kept), (1, 1));
    assert_eq!(dry.artifacts_removed, [hex(&Sha256::digest(old))]);
    assert!(blob(old).exists(), "a dry run removes nothing");

    let gc = ops::cache::gc(&p.store, GcRequest::default()).unwrap();
    assert_eq!((gc.removed.len(), gc.kept), (1, 1));
    assert!(!blob(old).exists(), "the old artifact is gone");
    assert_eq!(
        std::fs::read(blob(new)).unwrap(),
        new,
        "the current one stays"
    );
    assert_eq!(ops::cache::ls(&p.store).entries.len(), 1);
}

#[test]
fn ops_query_lists_targets_expands_elements_and_finds_reverse_dependencies() {
    let p = Project::new(b"x", &"d".repeat(64));
    let session = p.session();

    let all = ops::query::targets(&session.model, &TargetsListing::default()).unwrap();
    let labels: Vec<&str> = all.targets.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "//images:tiny",
            "//images:tiny-child",
            "//images:tiny-fail",
            "//images:tiny-slow"
        ]
    );
    let child = &all.targets[1];
    assert_eq!(child.from.as_deref(), Some("//images:tiny"));
    let arm64 = TargetsListing {
        arch: vec!["arm64".into()],
    };
    let none = ops::query::targets(&session.model, &arm64).unwrap();
    assert!(none.targets.is_empty(), "no image is built for arm64");

    let req = ElementsRequest::default();
    let elements = ops::query::target_elements(&session, "tiny-child", &req).unwrap();
    for e in ["debian-minimal", "tiny-base", "tiny-extra"] {
        assert!(
            elements.elements.iter().any(|x| x == e),
            "{e}: {:?}",
            elements.elements
        );
    }

    let rdeps = |of: &str| -> Vec<String> {
        let q = RdepsQuery { of: of.into() };
        ops::query::rdeps(&session, &q)
            .unwrap()
            .dependents
            .into_iter()
            .map(|d| d.target)
            .collect()
    };
    assert_eq!(rdeps("element:tiny-extra"), ["//images:tiny-child"]);
    assert_eq!(
        rdeps("//images:tiny"),
        [
            "//images:tiny-child",
            "//images:tiny-fail",
            "//images:tiny-slow"
        ]
    );
    let unknown = ops::query::rdeps(
        &session,
        &RdepsQuery {
            of: "element:nope".into(),
        },
    );
    assert!(unknown.is_err(), "an unknown element is an error");
}

/// Images as `ccb build --out` lays them out: `<Name>.qcow2`, its provenance, SHA256SUMS.
fn built_elsewhere(dir: &Path, names: &[&str], seed: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let mut sums = String::new();
    for name in names {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i as u8) ^ seed ^ name.len() as u8)
            .collect();
        std::fs::write(dir.join(format!("{name}.qcow2")), &data).unwrap();
        sums.push_str(&format!("{}  {name}.qcow2\n", hex(&Sha256::digest(&data))));
        let timestamp = format!("2026-12-06 09:{seed:02}:00.000000");
        let provenance = serde_json::json!({
            "build-distro": "debian",
            "build-release": "bookworm",
            "build-variant": "base",
            "build-repo": "https://github.com/ChameleonCloud/cc-images",
            "build-repo-commit": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "build-timestamp": timestamp,
            "build-tag": format!("{name}-{timestamp}"),
            "build-ipa": "false",
            "chameleon-supported": "true",
        });
        let d = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("{name}_provenance.json")),
            serde_json::to_string_pretty(&provenance).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
}

struct Quiet;

impl PublishObserver for Quiet {
    fn built(&mut self, _: &ops::build::BuildReport) {
        panic!("images built elsewhere are not built again");
    }
    fn line(&mut self, _: &str) {}
    fn failed(&mut self, e: miette::Report) {
        panic!("{e:?}");
    }
}

fn publish_request(outputs: &Path, scope: &str) -> PublishRequest {
    PublishRequest {
        targets: vec!["Tiny".into(), "Tiny-Child".into()],
        arch: vec![],
        scope: scope.into(),
        sites: vec!["local".into()],
        version: None,
        dry_run: false,
        no_public_check: false,
        outputs: Some(outputs.to_path_buf()),
        swift: Default::default(),
        show_progress: false,
        stop_on_site_error: true,
    }
}

#[test]
fn ops_publish_and_versions_manage_a_local_site() {
    let p = Project::new(b"x", &"e".repeat(64));
    let shell = Shell::new(true, 0);
    let model = || ops::load_model(p.dir.path(), &p.store, true, &shell).unwrap();
    let opts = SessionOptions::default();
    let out = p.dir.path().join("built");
    let day = ops::publish::today();

    // Two publishes of different bytes: two versions of each image, the second live.
    for (seed, version) in [(1u8, "v1"), (2, "v2")] {
        built_elsewhere(&out, &["Tiny", "Tiny-Child"], seed);
        let req = publish_request(&out, "staging");
        let report =
            ops::publish::publish(model(), &p.store, &opts, &req, &shell, &mut Quiet).unwrap();
        assert_eq!(report.failed, 0);
        assert!(report.build.is_none(), "nothing was built");
        let json = serde_json::to_value(&report).unwrap();
        let outcomes: Vec<(&str, &str)> = json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["image"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            outcomes,
            [("Tiny", "published"), ("Tiny-Child", "published")],
            "{version}: {json}"
        );
    }
    let at = |scope: &str| At {
        site: "local".into(),
        scope: scope.into(),
    };
    let v = |n: &str| format!("{day}-{n}");
    let list = ops::versions::list(model(), &at("staging")).unwrap();
    let versions: Vec<&str> = list.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    let live: Vec<(&str, &str)> = list
        .versions
        .iter()
        .flat_map(|ver| {
            ver.images
                .iter()
                .filter(|i| i.live)
                .map(move |i| (ver.version.as_str(), i.name.as_str()))
        })
        .collect();
    assert_eq!(
        live,
        [(v("v2").as_str(), "Tiny"), (v("v2").as_str(), "Tiny-Child")]
    );

    // A target's word names its published image.
    let promote = PromoteRequest {
        site: "local".into(),
        from: "staging".into(),
        to: "prod".into(),
        image: "//images:tiny".into(),
        version: v("v1"),
    };
    let promoted = ops::versions::promote(model(), &promote).unwrap();
    assert_eq!(
        (promoted.image.as_str(), promoted.scope.as_str()),
        ("Tiny", "prod")
    );
    let prod = std::fs::read_to_string(p.dir.path().join("out/publish/prod/current")).unwrap();
    assert!(
        prod.contains("Tiny") && !prod.contains("Tiny-Child"),
        "{prod}"
    );

    let rollback = RollbackRequest {
        at: at("staging"),
        image: "Tiny-Child".into(),
        version: v("v1"),
    };
    ops::versions::rollback(model(), &rollback).unwrap();
    let staging: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.dir.path().join("out/publish/staging/current")).unwrap(),
    )
    .unwrap();
    assert_eq!(staging["Tiny-Child"], v("v1").as_str());
    assert_eq!(staging["Tiny"], v("v2").as_str());

    // Keeping the newest of each image, and always the live one: only Tiny v1 goes (Tiny-Child
    // keeps v2, the newest, and v1, live since the rollback).
    let prune = |dry_run| PruneRequest {
        at: at("staging"),
        keep: 1,
        dry_run,
    };
    let would = ops::versions::prune(model(), &prune(true)).unwrap();
    let gone = ops::versions::prune(model(), &prune(false)).unwrap();
    assert_eq!(would.removed, gone.removed);
    assert_eq!(gone.removed, [(v("v1"), "Tiny".to_string())]);
    let staged = |image: &str, n: &str| {
        p.dir
            .path()
            .join(format!(
                "out/publish/staging/versions/{}/{image}.qcow2",
                v(n)
            ))
            .exists()
    };
    assert!(!staged("Tiny", "v1") && staged("Tiny", "v2"));
    assert!(staged("Tiny-Child", "v1") && staged("Tiny-Child", "v2"));
    assert!(
        ops::versions::prune(model(), &prune(false))
            .unwrap()
            .removed
            .is_empty()
    );
}
