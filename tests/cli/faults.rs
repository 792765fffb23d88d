//! The fault campaign: ccb stopped at named points of every phase — base, layer, disk, fetch,
//! publish (a local site and the Swift rig) and the remote cache (nginx WebDAV) — by `kill -9`
//! or by Ctrl-C to its process group. The points are chosen deterministically: the debug binary
//! stops itself at `CCB_FAULT_POINT` (src/fault.rs; not compiled into release builds). After
//! each stop: no process, mount or loop device of the store is left, `ccb cache verify`
//! passes, nothing half-written is taken for a result, and the next run goes on from there.
//! At the end the interrupted builds' results equal an uninterrupted build's (tree digests).
//!
//! The points of one phase are chained: each run is stopped at the next point, so it first
//! redoes what the previous stop interrupted; a point that does not fire fails the test.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{
    Env, Nginx, Run, copy_tree, leftovers, processes_under, repo, script, wait_until, write,
};

/// How ccb is stopped at a point.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    CtrlC,
}

/// Runs `cmd` with the fault point armed, in its own process group (Ctrl-C goes to ccb's
/// group, not the test's), and checks that the point fired the way it was asked to.
fn stopped_at(mut cmd: std::process::Command, point: &str, stop: Stop) -> Run {
    cmd.env("CCB_FAULT_POINT", point)
        .stdin(Stdio::null())
        .process_group(0);
    if let Stop::CtrlC = stop {
        cmd.env("CCB_FAULT_SIGNAL", "INT");
    }
    let out = cmd.output().expect("run ccb");
    let run = Run::from(out.clone());
    match stop {
        Stop::Kill => assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{point}: the point did not fire (exit {:?}):\n{}",
            out.status.code(),
            run.stderr
        ),
        Stop::CtrlC => {
            assert_eq!(
                out.status.code(),
                Some(130),
                "{point}: Ctrl-C did not end ccb with 130:\n{}",
                run.stderr
            );
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
    }
    run
}

/// A copy of the layered fixture with two artifacts (a local file and one over HTTP from
/// nginx) and an image that needs them; its own store.
struct Lab {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
    nginx: Nginx,
}

impl Lab {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the fault campaign builds root filesystems: run it as root (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        write(
            root.join("manifests/project.ncl"),
            "{ build_repo = \"https://github.com/ChameleonCloud/cc-images\" }\n",
        );
        let nginx = Nginx::start();
        // 5 MiB each: several 1 MiB copy chunks, so a stop lands in the middle.
        let blob = pseudo_random(5 << 20, 7);
        let web = pseudo_random(5 << 20, 11);
        std::fs::write(dir.path().join("blob.bin"), &blob).unwrap();
        std::fs::write(nginx.root().join("web.bin"), &web).unwrap();
        let base = &nginx.base;
        write(
            root.join("manifests/artifacts.ncl"),
            &format!(
                "{{\n  blob = {{ url = \"file://{}\", sha256 = \"{}\" }},\n  \
                 web = {{ url = \"{base}/web.bin\", sha256 = \"{}\" }},\n}}\n",
                dir.path().join("blob.bin").display(),
                sha256_hex(&blob),
                sha256_hex(&web)
            ),
        );
        let images = root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        let at = text.rfind('}').unwrap();
        std::fs::write(
            &images,
            format!(
                "{}  tiny-fetch = {{\n    name = \"Tiny-Fetch\",\n    description = \"needs two artifacts\",\n    \
                 from = \"tiny\",\n    elements = [\"tiny-extra\"],\n    \
                 artifacts = {{ BLOB = \"blob\", WEB = \"web\" }},\n  }},\n}}\n",
                &text[..at]
            ),
        )
        .unwrap();
        Self {
            env: Env::new(),
            _dir: dir,
            root,
            nginx,
        }
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["--root".into(), self.root.display().to_string()];
        v.extend(rest.iter().map(|s| s.to_string()));
        if rest
            .iter()
            .any(|a| matches!(*a, "build" | "fetch" | "publish"))
        {
            v.push("--element-path".into());
            v.push(repo().join("elements").display().to_string());
        }
        v
    }

    fn cmd(&self, rest: &[&str]) -> std::process::Command {
        let mut cmd = self.env.cmd();
        cmd.args(self.args(rest));
        cmd
    }

    fn ccb(&self, rest: &[&str]) -> Run {
        Run::from(self.cmd(rest).output().unwrap())
    }

    fn at(&self, point: &str, stop: Stop, rest: &[&str]) -> Run {
        stopped_at(self.cmd(rest), point, stop)
    }

    fn store(&self) -> &Path {
        self.env.cache.path()
    }

    /// What must hold after any stop.
    fn sound(&self, point: &str) {
        sound(&self.env, point);
    }

    /// Tree digests of the current entries, by action id.
    fn digests(&self) -> BTreeMap<String, (String, u64, u64)> {
        digests(&self.env)
    }
}

/// After a stop: nothing of ccb runs or stays mounted, the store verifies, and no temporary
/// file passes for an entry.
fn sound(env: &Env, point: &str) {
    let store = env.cache.path();
    // The sandboxes die with ccb (PR_SET_PDEATHSIG); the kernel takes their mounts and
    // auto-clearing loop devices with their namespaces, a moment later.
    wait_until(
        &format!("{point}: the sandboxes to end"),
        Duration::from_secs(60),
        || processes_under(store).is_empty(),
    );
    wait_until(
        &format!("{point}: the mounts and loop devices to go"),
        Duration::from_secs(60),
        || leftovers(store).is_empty(),
    );
    let verify = Run::from(
        env.cmd()
            .args(["cache", "verify", "--format", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        verify.code, 0,
        "{point}: cache verify failed:\n{}\n{}",
        verify.stdout, verify.stderr
    );
    let ls = Run::from(
        env.cmd()
            .args(["cache", "ls", "--format", "json"])
            .output()
            .unwrap(),
    )
    .ok()
    .json();
    for e in ls["entries"].as_array().unwrap() {
        let key = e["key"].as_str().unwrap();
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{point}: a store entry that is not a key: {e}"
        );
    }
    // Artifacts in place are whole: each one's record says its size, and it has it.
    if let Ok(rd) = std::fs::read_dir(store.join("artifacts")) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                let meta: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(e.path().with_extension("json"))
                        .unwrap_or_else(|_| panic!("{point}: artifact {name} has no record")),
                )
                .unwrap();
                assert_eq!(
                    meta["bytes"].as_u64(),
                    Some(e.metadata().unwrap().len()),
                    "{point}: artifact {name} is not whole"
                );
            }
        }
    }
}

/// The tree summary (digest, entries, bytes) of each current entry, by action id.
fn digests(env: &Env) -> BTreeMap<String, (String, u64, u64)> {
    let ls = Run::from(
        env.cmd()
            .args(["cache", "ls", "--format", "json"])
            .output()
            .unwrap(),
    )
    .ok()
    .json();
    ls["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["current"] == true && e["kind"] != "checkpoint")
        .filter_map(|e| {
            let key = e["key"].as_str().unwrap();
            let rec: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(env.cache.path().join(format!("actions/{key}.json")))
                    .ok()?,
            )
            .ok()?;
            let t = &rec["tree"];
            Some((
                e["id"].as_str().unwrap().to_string(),
                (
                    t["digest"].as_str()?.to_string(),
                    t["entries"].as_u64()?,
                    t["bytes"].as_u64()?,
                ),
            ))
        })
        .collect()
}

/// Two builds of the same keys made the same results: layers to the digest. Disks to their
/// files and sizes only: two uninterrupted builds of one disk key differ in bytes today (the
/// filesystem's times and ids are not yet derived from the key: [8/9]).
fn assert_same_results(
    a: &BTreeMap<String, (String, u64, u64)>,
    b: &BTreeMap<String, (String, u64, u64)>,
    ids: &[&str],
    what: &str,
) {
    for id in ids {
        let (x, y) = (a.get(*id), b.get(*id));
        assert!(
            x.is_some() && y.is_some(),
            "{what}: {id} missing: {a:?} {b:?}"
        );
        if id.starts_with("disk:") {
            assert_eq!(
                x.map(|t| (t.1, t.2)),
                y.map(|t| (t.1, t.2)),
                "{what}: {id}: other files or sizes"
            );
        } else {
            assert_eq!(x, y, "{what}: {id} differs");
        }
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base, layer and disk: kill -9 at every point of a build of a child image (and Ctrl-C once
/// per phase); then the remote cache: kill -9 and Ctrl-C while one store uploads and another
/// downloads. Every result equals an uninterrupted build's.
#[test]
fn a_build_stopped_at_any_point_leaves_a_sound_store_and_ends_equal() {
    let lab = Lab::new();
    let build = ["build", "tiny-child", "--format", "json"];
    let points: &[(&str, Stop)] = &[
        ("base.sandbox", Stop::Kill),
        ("base.step:10-debian-bootstrap", Stop::Kill),
        ("base.step:10-debian-bootstrap", Stop::CtrlC),
        ("base.commit", Stop::Kill),
        ("base.recorded", Stop::Kill),
        // The parent's layer (with step checkpoints).
        ("layer.sandbox", Stop::Kill),
        ("layer.step:00-apt-lists", Stop::Kill),
        ("layer.step:01-package-installs", Stop::Kill),
        ("layer.step:20-tiny-base", Stop::Kill),
        ("layer.step:20-tiny-base", Stop::CtrlC),
        ("layer.commit", Stop::Kill),
        ("store.layer-staged", Stop::Kill),
        ("layer.record", Stop::Kill),
        ("layer.recorded", Stop::Kill),
        // The child's layer, an overlay on it.
        ("layer.step:30-tiny-extra", Stop::Kill),
        ("layer.commit", Stop::Kill),
        // The disk, and its materialization in out/.
        ("disk.sandbox", Stop::Kill),
        ("disk.step:01-dpkg-deferred", Stop::Kill),
        ("disk.step:50-dpkg", Stop::CtrlC),
        ("disk.step:50-dpkg", Stop::Kill),
        ("disk.commit", Stop::Kill),
        ("store.outputs-unrecorded", Stop::Kill),
        ("disk.record", Stop::Kill),
        ("disk.recorded", Stop::Kill),
        ("materialize.file", Stop::Kill),
    ];
    for (point, stop) in points {
        lab.at(point, *stop, &build);
        lab.sound(point);
    }
    let done = lab.ccb(&build).ok();
    let statuses: Vec<String> = done.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} {}", a["id"].as_str().unwrap(), a["status"]))
        .collect();
    assert!(
        statuses.iter().all(|s| s.ends_with("\"cached\"")),
        "the last stop came after every action was stored: {statuses:?}"
    );
    lab.sound("after the campaign");
    let image = lab.root.join("out/images/Tiny-Child.qcow2");
    assert!(image.is_file(), "the image was not materialized");
    let sums = std::fs::read_to_string(lab.root.join("out/images/SHA256SUMS")).unwrap();
    let qcow2_sum = crate::publish::sha256(&image);
    assert!(
        sums.contains(&format!("{qcow2_sum}  Tiny-Child.qcow2")),
        "{sums}"
    );
    let interrupted = lab.digests();

    // The same image built without interruption (the child's layer and disk again; the
    // parent's were checked by `cache verify` against their records).
    let again = lab
        .ccb(&[
            "build",
            "tiny-child",
            "--force",
            "tiny-child",
            "--format",
            "json",
        ])
        .ok();
    let ran: Vec<String> = again.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "built")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ran.iter().any(|id| id == "disk:tiny-child:amd64"),
        "{ran:?}"
    );
    let uninterrupted = lab.digests();
    assert_same_results(
        &interrupted,
        &uninterrupted,
        &["layer:tiny-child:amd64", "disk:tiny-child:amd64"],
        "the interrupted build against an uninterrupted one",
    );

    // The remote cache: this store uploads everything, stopped while it does.
    let url = lab.nginx.url.clone();
    let up = [
        "build",
        "tiny-child",
        "--remote-cache",
        &url,
        "--remote-cache-upload",
    ];
    for (point, stop) in [
        ("remote.upload-chunk", Stop::Kill),
        ("remote.data-sent", Stop::Kill),
        ("remote.ac", Stop::Kill),
        ("remote.upload-chunk", Stop::CtrlC),
    ] {
        lab.at(point, stop, &up);
        lab.sound(point);
    }
    lab.ccb(&up).ok();
    // Another store downloads it, stopped while it does.
    let other = Env::new();
    let down = lab.args(&["build", "tiny-child", "--remote-cache", &url]);
    let down: Vec<&str> = down.iter().map(String::as_str).collect();
    for (point, stop) in [
        ("remote.download-chunk", Stop::Kill),
        ("remote.unpacked", Stop::Kill),
        ("remote.committed", Stop::Kill),
        ("remote.download-chunk", Stop::CtrlC),
    ] {
        let mut cmd = other.cmd();
        cmd.args(&down);
        stopped_at(cmd, point, stop);
        sound(&other, point);
    }
    Run::from(other.cmd().args(&down).output().unwrap()).ok();
    sound(&other, "after the downloads");
    // Transferred results are the uploaded bytes exactly, disks included.
    let downloaded = digests(&other);
    assert!(downloaded.contains_key("disk:tiny-child:amd64"));
    for (id, d) in &downloaded {
        assert_eq!(
            Some(d),
            uninterrupted.get(id),
            "{id}: the downloaded result differs"
        );
    }

    // Tampering: a file of a layer tree, and a disk output, changed in the store.
    let child_tree = lab
        .env
        .layer_tree("layer:tiny-child:amd64")
        .join("etc/tiny/extra.conf");
    std::fs::write(&child_tree, "tampered\n").unwrap();
    let verify = lab.ccb(&["cache", "verify"]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("layer:tiny-child:amd64")
            && verify.stdout.contains("the tree changed"),
        "{}",
        verify.stdout
    );
    let disk_key = lab.key_of("disk:tiny-child:amd64");
    let output = lab
        .store()
        .join(format!("outputs/{disk_key}/Tiny-Child.qcow2"));
    let mut bytes = std::fs::read(&output).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&output, bytes).unwrap();
    let verify = lab.ccb(&["cache", "verify"]);
    assert_eq!(verify.code, 1, "{}", verify.stdout);
    assert!(
        verify.stdout.contains("disk:tiny-child:amd64")
            && verify.stdout.contains("the outputs changed"),
        "{}",
        verify.stdout
    );
    // Neither is used again: the next build makes both anew, equal to the first.
    let rebuilt = lab.ccb(&build).ok();
    for id in ["layer:tiny-child:amd64", "disk:tiny-child:amd64"] {
        let status = rebuilt.json()["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["status"].clone());
        assert_eq!(
            status,
            Some(serde_json::json!("built")),
            "{id}: tampered, yet reused"
        );
    }
    lab.ccb(&["cache", "verify"]).ok();
    assert_same_results(
        &lab.digests(),
        &uninterrupted,
        &["layer:tiny-child:amd64", "disk:tiny-child:amd64"],
        "rebuilt after tampering",
    );
}

impl Lab {
    fn key_of(&self, id: &str) -> String {
        let ls = self.ccb(&["cache", "ls", "--format", "json"]).ok().json();
        ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id && e["current"] == true)
            .unwrap_or_else(|| panic!("no current entry for {id}"))["key"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Fetch: a local file and a download over HTTP, stopped while they copy and just before
/// they are renamed into place; an interrupted download resumes from its kept bytes.
#[test]
fn a_fetch_stopped_at_any_point_leaves_no_half_artifact() {
    let lab = Lab::new();
    let fetch = ["fetch", "tiny-fetch", "--format", "json", "-j", "1"];
    for (point, stop) in [
        ("fetch.copy", Stop::Kill),
        ("fetch.copy#3", Stop::Kill),
        ("fetch.commit", Stop::Kill),
        ("fetch.copy#2", Stop::CtrlC),
        ("fetch.commit", Stop::Kill),
    ] {
        lab.at(point, stop, &fetch);
        lab.sound(point);
    }
    let run = lab.ccb(&fetch).ok();
    for a in run.json()["actions"].as_array().unwrap() {
        assert!(a["id"].as_str().unwrap().starts_with("fetch:"), "{a}");
    }
    lab.sound("after the fetches");
    let n = std::fs::read_dir(lab.store().join("artifacts"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().len() == 64)
        .count();
    assert_eq!(n, 2, "both artifacts are stored");
}

/// Publishing to a local site and to Swift, stopped at each step: no version holds a partial
/// image, `current` never names one, and the next run publishes the image whole.
#[test]
fn a_publish_stopped_at_any_point_leaves_no_partial_version() {
    use crate::publish::{Project, rig, swift_site};
    let container = format!("ccb-test-faults-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let sites = format!(
        "{{\n  here = {{ name = \"Here\", baremetal = true, kind = 'local, path = \"site\", formats = ['qcow2] }},\n{}",
        swift_site(&container, "ccb")
            .trim_start()
            .trim_start_matches('{')
    );
    let p = Project::with_rig(&sites);
    let images = p.images(&["CC-Fault"], 5 << 20, 5);
    let imgs = images.to_str().unwrap().to_string();
    let publish = |site: &str| -> Vec<String> {
        [
            "publish",
            "--outputs",
            &imgs,
            "CC-Fault",
            "--site",
            site,
            "--scope",
            "prod",
            "--segment-size",
            "1MiB",
            "--jobs",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let check = |point: &str, site_dir: Option<&Path>| {
        let run = p.ccb(&["cache", "verify"]);
        assert_eq!(run.code, 0, "{point}: {}", run.stderr);
        if let Some(dir) = site_dir {
            // `current` names only versions that hold the whole image.
            if let Ok(text) = std::fs::read_to_string(dir.join("prod/current")) {
                let cur: serde_json::Value = serde_json::from_str(&text).unwrap();
                for (_, v) in cur.as_object().into_iter().flatten() {
                    let v = v.as_str().unwrap();
                    let f = dir.join(format!("prod/versions/{v}/CC-Fault.qcow2"));
                    assert_eq!(
                        std::fs::metadata(&f).map(|m| m.len()).ok(),
                        Some(5 << 20),
                        "{point}: current names {v}, which lacks the whole image"
                    );
                }
            }
        }
    };
    let site = p.root().join("site");
    for (point, stop) in [
        ("publish.claimed", Stop::Kill),
        ("local.copy#2", Stop::Kill),
        ("local.copy#3", Stop::CtrlC),
        ("publish.manifest", Stop::Kill),
        ("publish.pointer", Stop::Kill),
        ("publish.current", Stop::Kill),
    ] {
        let args = publish("here");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stopped_at(p.cmd(&args), point, stop);
        check(point, Some(&site));
    }
    let args = publish("here");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ccb(&args).ok();
    check("after the local publishes", Some(&site));
    let cur: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.join("prod/current")).unwrap()).unwrap();
    let v = cur["CC-Fault"].as_str().unwrap();
    let published = site.join(format!("prod/versions/{v}/CC-Fault.qcow2"));
    assert_eq!(
        crate::publish::sha256(&published),
        crate::publish::sha256(&images.join("CC-Fault.qcow2"))
    );
    // One version: the run after the stop between manifest and pointer made that version
    // live instead of uploading the image again as a second one.
    assert_eq!(v, format!("{}-v1", crate::publish::today()));
    assert!(
        !site
            .join(format!("prod/versions/{}-v2", crate::publish::today()))
            .exists()
    );
    // A stopped copy's temporary file is hidden (a dot file), which no listing shows.
    let stray: Vec<String> = walk(&site)
        .into_iter()
        .filter_map(|p| {
            let name = Path::new(&p).file_name()?.to_string_lossy().into_owned();
            (name.contains("tmp") || name.contains("ccb-publish")).then_some(name)
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    for (point, stop) in [
        ("swift.segment#2", Stop::Kill),
        ("swift.segment#2", Stop::CtrlC),
        ("swift.slo", Stop::Kill),
        ("publish.manifest", Stop::Kill),
        ("publish.current", Stop::Kill),
    ] {
        let args = publish("rig");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stopped_at(p.cmd(&args), point, stop);
        check(point, None);
        // Nothing is live until the image is whole.
        let (code, body) = rig.swift("GET", &format!("{container}/prod/current"));
        if code == 200 {
            let cur: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(v) = cur["CC-Fault"].as_str() {
                let listing = rig.listing(&container, &format!("prod/versions/{v}/CC-Fault.qcow2"));
                assert_eq!(
                    listing.first().map(|o| o.1),
                    Some(5 << 20),
                    "{point}: current names {v}, which lacks the whole image"
                );
            }
        }
    }
    let args = publish("rig");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.ccb(&args).ok();
    let cur: serde_json::Value =
        serde_json::from_str(&rig.get(&container, "prod/current")).unwrap();
    assert!(cur["CC-Fault"].is_string(), "{cur}");
}

fn walk(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.path().display().to_string())
        .collect()
}

/// A small ext4 filesystem on a loop device, made and mounted by the test, removed on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mib: u64) -> Self {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let img = dir.path().join("fs.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mib << 20).unwrap();
        let ok = |c: &mut std::process::Command| {
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ok(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        ok(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir.path().join("mnt")));
        Self { dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mnt()).unwrap();
        s.blocks_available() * s.fragment_size()
    }

    /// Fills the filesystem until `leave` bytes are free (a file the test removes later).
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let filler = self.mnt().join("filler");
        let size = self.free().saturating_sub(leave);
        let out = std::process::Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(&filler)
            .output()
            .unwrap();
        assert!(out.status.success());
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mnt())
            .status();
    }
}

/// The store on a small filesystem that fills up during a fetch, a layer and a disk: each
/// fails with an error naming the store and the lack of space, leaves nothing half-written
/// that passes for a result, and the next run after space is freed succeeds.
#[test]
fn a_full_store_fails_clearly_and_the_next_run_after_freeing_space_succeeds() {
    let lab = Lab::new();
    let fs = SmallFs::new(1200);
    let store = fs.mnt().join("store");
    std::fs::create_dir(&store).unwrap();
    let run = |args: &[&str]| -> Run {
        Run::from(lab.cmd(args).env("CCB_CACHE_DIR", &store).output().unwrap())
    };
    let check = |what: &str| {
        let mut cmd = lab.env.cmd();
        cmd.env("CCB_CACHE_DIR", &store);
        let verify = Run::from(cmd.args(["cache", "verify"]).output().unwrap());
        assert_eq!(
            verify.code, 0,
            "{what}: {}\n{}",
            verify.stdout, verify.stderr
        );
        assert!(
            leftovers(&store).is_empty(),
            "{what}: {:?}",
            leftovers(&store)
        );
        assert!(processes_under(&store).is_empty(), "{what}");
    };
    let full = |what: &str, r: &Run| {
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        let text = r.stderr.to_lowercase();
        assert!(
            text.contains("no space"),
            "{what}: the error does not say the disk is full:\n{}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&store.display().to_string()),
            "{what}: the error does not name the store:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    };

    // A fetch: two artifacts of 5 MiB, 3 MiB free.
    let filler = fs.fill_leaving(3 << 20);
    let r = run(&["fetch", "tiny-fetch"]);
    full("fetch", &r);
    check("fetch");
    std::fs::remove_file(&filler).unwrap();
    run(&["fetch", "tiny-fetch"]).ok();

    // A layer: the base first, then 64 KiB free, which ccb's own writes for the layer (its
    // work directory, overlay, logs) run out of. Not a fill inside a step: apt-get update,
    // the layer's first big writer, once waited forever after ENOSPC in its list downloads
    // (its methods and apt-get each polling the other, seen under load), which is apt's own
    // hang and not what this case proves; the disk below fills up inside ccb's mkfs/qcow2.
    run(&["build", "tiny", "--until", "base"]).ok();
    let filler = fs.fill_leaving(64 << 10);
    let r = run(&["build", "tiny", "--until", "layer"]);
    full("layer", &r);
    check("layer");
    std::fs::remove_file(&filler).unwrap();
    run(&["build", "tiny", "--until", "layer"]).ok();

    // A step that fills the store and then waits forever, as apt-get once did after ENOSPC:
    // once the store has stayed full for the grace period (2 s here) the action is stopped and
    // reported as a full store, never left hanging.
    let stuck = lab.root.join("elements/tiny-stuck");
    write(stuck.join("README.rst"), "Fills the disk, then waits.\n");
    script(
        stuck.join("install.d/50-fill-then-wait"),
        "#!/bin/bash\nset -u\ndd if=/dev/zero of=/filler bs=1M 2>/dev/null\nexec sleep 120\n",
    );
    let images = lab.root.join("manifests/images.ncl");
    let text = std::fs::read_to_string(&images).unwrap();
    let at = text.rfind('}').unwrap();
    write(
        &images,
        &format!(
            "{}  tiny-stuck = {{ name = \"Tiny-Stuck\", description = \"fills its store\", \
             from = \"tiny\", elements = [\"tiny-stuck\"] }},\n}}\n",
            &text[..at]
        ),
    );
    let r = Run::from(
        lab.cmd(&["build", "tiny-stuck", "--until", "layer"])
            .env("CCB_CACHE_DIR", &store)
            .env("CCB_STORE_FULL_GRACE", "2")
            .output()
            .unwrap(),
    );
    full("a step waiting on a full store", &r);
    assert!(r.stderr.contains("stayed full"), "{}", r.stderr);
    check("a step waiting on a full store");

    // A disk: 30 MiB free for a disk of about 80.
    let filler = fs.fill_leaving(30 << 20);
    let r = run(&["build", "tiny"]);
    full("disk", &r);
    check("disk");
    std::fs::remove_file(&filler).unwrap();
    run(&["build", "tiny"]).ok();
    check("after the last build");
}
