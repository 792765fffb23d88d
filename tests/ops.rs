//! The operations as a library: a small project's graph run through `ops::build` and
//! `ops::test` without the binary, against a real store.

use std::path::{Path, PathBuf};

use ccb::ops::build::{BuildRequest, Stage};
use ccb::ops::test::{BootResult, TestObserver, TestRequest};
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
