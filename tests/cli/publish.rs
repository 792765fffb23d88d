//! `ccb publish` and `ccb versions`: a local site, and a real Swift behind a real Keystone on
//! 127.0.0.1 (scripts/swift-rig, started on first use and shared by the tests; each test has its
//! own container). Images are small generated files laid out like `ccb build --out`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{Env, Run, repo, write};

pub(crate) struct Rig {
    vars: BTreeMap<String, String>,
}

/// Starts (or finds) the rig once per test process.
pub(crate) fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/swift-rig/rig-start.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/swift-rig/rig-start.sh");
        assert!(status.success(), "the Swift + Keystone rig did not start");
        let dir = std::env::var("CCB_SWIFT_RIG_DIR").unwrap_or("/var/tmp/ccb-swift-rig".into());
        let text = std::fs::read_to_string(Path::new(&dir).join("env")).unwrap();
        let vars = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Rig { vars }
    })
}

impl Rig {
    pub(crate) fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("{k} not in the rig's env file"))
    }

    /// A token of the rig's user, fetched once (they live an hour).
    pub(crate) fn token(&self) -> String {
        static TOKEN: OnceLock<String> = OnceLock::new();
        TOKEN.get_or_init(|| self.new_token()).clone()
    }

    fn new_token(&self) -> String {
        let body = format!(
            r#"{{"auth":{{"identity":{{"methods":["password"],"password":{{"user":{{"name":"{}","domain":{{"name":"Default"}},"password":"{}"}}}}}},"scope":{{"project":{{"name":"{}","domain":{{"name":"Default"}}}}}}}}}}"#,
            self.var("KS_USER"),
            self.var("KS_PASSWORD"),
            self.var("KS_PROJECT")
        );
        let out = Command::new("curl")
            .args([
                "-sS",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                "Content-Type: application/json",
                "-d",
            ])
            .arg(body)
            .arg(format!("{}/auth/tokens", self.var("KS_AUTH_URL")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("x-subject-token:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_string())
            })
            .expect("a token from the rig's Keystone")
    }

    /// An HTTP request to the project's Swift account; (status, body).
    pub(crate) fn swift(&self, method: &str, path: &str) -> (u16, String) {
        self.swift_with(method, path, &[])
    }

    pub(crate) fn swift_with(&self, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "-H"])
            .arg(format!("X-Auth-Token: {}", self.token()))
            .arg(format!("{}/{path}", self.var("KS_SWIFT_STORAGE_URL")))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }

    /// A fresh container, emptied and removed when the guard drops (the rig is shared and
    /// long-lived: tests must not fill it).
    pub(crate) fn container(&'static self, name: &str) -> Container {
        self.swift("DELETE", name);
        // Public, as the real container is: every site's puller reads it anonymously.
        let (code, _) = self.swift_with("PUT", name, &["X-Container-Read: .r:*,.rlistings"]);
        assert!(code == 201 || code == 202, "container {name}: {code}");
        Container {
            rig: self,
            name: name.to_string(),
        }
    }

    /// The `swift` CLI (python-swiftclient) as the rig's password user.
    fn swift_cli(&self) -> Command {
        let mut cmd = Command::new("swift");
        cmd.args([
            "--os-auth-url",
            self.var("KS_AUTH_URL"),
            "--auth-version",
            "3",
        ])
        .args(["--os-username", self.var("KS_USER")])
        .args(["--os-password", self.var("KS_PASSWORD")])
        .args(["--os-project-name", self.var("KS_PROJECT")])
        .args([
            "--os-user-domain-name",
            "Default",
            "--os-project-domain-name",
            "Default",
        ]);
        cmd
    }

    /// (name, bytes, last_modified) of the container's objects under a prefix.
    pub(crate) fn listing(&self, container: &str, prefix: &str) -> Vec<(String, u64, String)> {
        let (code, body) = self.swift(
            "GET",
            &format!("{container}?format=json&limit=10000&prefix={prefix}"),
        );
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_string(),
                    o["bytes"].as_u64().unwrap(),
                    o["last_modified"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub(crate) fn get(&self, container: &str, object: &str) -> String {
        let (code, body) = self.swift("GET", &format!("{container}/{object}"));
        assert_eq!(code, 200, "{container}/{object}: {body}");
        body
    }
}

pub(crate) struct Container {
    rig: &'static Rig,
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .rig
            .swift_cli()
            .args(["delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A project with only sites, and generated images.
pub(crate) struct Project {
    dir: tempfile::TempDir,
    env: Env,
    clouds: Option<String>,
}

impl Project {
    pub(crate) fn new(sites: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path().join("manifests/images.ncl"), "{}\n");
        write(dir.path().join("manifests/sites.ncl"), sites);
        Project {
            dir,
            env: Env::new(),
            clouds: None,
        }
    }

    pub(crate) fn with_rig(sites: &str) -> Self {
        let mut p = Self::new(sites);
        p.clouds = Some(rig().var("OS_CLIENT_CONFIG_FILE").to_string());
        p
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Images `<Name>.qcow2` of `size` bytes (and a small `.raw`), their provenance and
    /// SHA256SUMS, in `images/`; `seed` varies the content.
    pub(crate) fn images(&self, names: &[&str], size: usize, seed: u8) -> PathBuf {
        self.images_in("images", names, size, seed)
    }

    /// [`Project::images`] in another directory of the project.
    pub(crate) fn images_in(&self, dir: &str, names: &[&str], size: usize, seed: u8) -> PathBuf {
        let out = self.root().join(dir);
        std::fs::create_dir_all(&out).unwrap();
        for name in names {
            let mut data = vec![0u8; size];
            let mut x = u64::from(seed) * 7919 + name.len() as u64 * 104_729 + 1;
            for (i, b) in data.iter_mut().enumerate() {
                // xorshift: incompressible and distinct per image and seed.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> (i % 8)) as u8 ^ name.as_bytes()[i % name.len()];
            }
            std::fs::write(out.join(format!("{name}.qcow2")), &data).unwrap();
            std::fs::write(out.join(format!("{name}.raw")), &data[..1000]).unwrap();
            write(
                out.join(format!("{name}.d/{name}_provenance.json")),
                &provenance(name, &build_time(seed)),
            );
        }
        let mut sums = String::new();
        for e in std::fs::read_dir(&out).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "qcow2" || x == "raw") {
                let o = Command::new("sha256sum").arg(&p).output().unwrap();
                let sum = String::from_utf8_lossy(&o.stdout);
                let sum = sum.split_whitespace().next().unwrap();
                sums.push_str(&format!(
                    "{sum}  {}\n",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
        std::fs::write(out.join("SHA256SUMS"), sums).unwrap();
        out
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.env.cmd();
        cmd.arg("--root").arg(self.root()).args(args);
        if let Some(c) = &self.clouds {
            cmd.env("OS_CLIENT_CONFIG_FILE", c);
        }
        cmd
    }

    pub(crate) fn ccb(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The build time of the images made with `seed`, in the sites' format.
pub(crate) fn build_time(seed: u8) -> String {
    format!(
        "2026-12-06 09:{:02}:00.{:06}",
        seed % 60,
        u32::from(seed) * 1001
    )
}

/// A provenance record as `ccb build` writes it.
pub(crate) fn provenance(name: &str, timestamp: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "build-distro": "debian",
        "build-release": "bookworm",
        "build-variant": "base",
        "build-repo": "https://github.com/ChameleonCloud/cc-images",
        "build-repo-commit": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "build-timestamp": timestamp,
        "build-tag": format!("{name}-{timestamp}"),
        "build-ipa": "false",
        "chameleon-supported": "true",
    }))
    .unwrap()
}

pub(crate) fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub(crate) fn today() -> String {
    let o = Command::new("date")
        .args(["-u", "+%Y%m%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

const LOCAL: &str = r#"{
  here = { name = "Here", baremetal = true, kind = 'local, path = "site", formats = ['qcow2, 'raw] },
  kvm = { name = "KVM", baremetal = false, kind = 'local, path = "kvm", formats = ['qcow2] },
}
"#;

#[test]
fn a_file_that_changed_since_the_build_is_not_published() {
    let p = Project::new(LOCAL);
    let images = p.images(&["CC-X"], 50_000, 6);
    // One byte flipped after SHA256SUMS was written.
    let file = images.join("CC-X.qcow2");
    let mut data = std::fs::read(&file).unwrap();
    data[1234] ^= 1;
    std::fs::write(&file, data).unwrap();
    p.ccb(&[
        "publish",
        "--outputs",
        images.to_str().unwrap(),
        "CC-X",
        "--scope",
        "prod",
        "--site",
        "here",
    ])
    .fails()
    .stderr_has("does not match its recorded SHA-256");
    let site = p.root().join("site/prod");
    assert!(!site.join("current").exists());
    assert!(!site.join("pointers/CC-X.json").exists());
    let version = site.join(format!("versions/{}-v1", today()));
    assert!(!version.join("CC-X.manifest").exists());
    assert!(
        !version.join("CC-X.qcow2").exists(),
        "what was sent is removed"
    );
}

#[test]
fn a_project_without_sites_publishes_to_out_publish() {
    let p = Project::new("{}\n");
    let images = p.images(&["CC-L"], 10_000, 9);
    p.ccb(&[
        "publish",
        "--outputs",
        images.to_str().unwrap(),
        "CC-L",
        "--scope",
        "dev",
    ])
    .ok();
    let current = std::fs::read_to_string(p.root().join("out/publish/dev/current")).unwrap();
    assert!(current.contains("CC-L"), "{current}");
}

#[test]
fn a_local_site_gets_the_layout_and_versions_are_never_overwritten() {
    let p = Project::new(LOCAL);
    let images = p.images(&["CC-A"], 200_000, 1);
    let imgs = images.to_str().unwrap();
    let day = today();
    let run = p
        .ccb(&[
            "publish",
            "--outputs",
            imgs,
            "CC-A",
            "--scope",
            "prod",
            "--format",
            "json",
        ])
        .ok();
    let results = run.json()["results"].as_array().unwrap().clone();
    // Not in the manifests: counts as bare-metal only, so the KVM site is skipped.
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["outcome"], "published");
    let v1 = format!("{day}-v1");
    assert_eq!(results[0]["version"], v1.as_str());
    let site = p.root().join("site/prod");
    for f in ["CC-A.qcow2", "CC-A.raw", "CC-A.manifest"] {
        assert!(site.join("versions").join(&v1).join(f).is_file(), "{f}");
    }
    assert_eq!(
        sha256(&site.join("versions").join(&v1).join("CC-A.qcow2")),
        sha256(&images.join("CC-A.qcow2"))
    );
    let current: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.join("current")).unwrap()).unwrap();
    assert_eq!(current["CC-A"], v1.as_str());

    // Same content again: nothing to do. An explicit version that holds it: refused.
    let again = p
        .ccb(&[
            "publish",
            "--outputs",
            imgs,
            "CC-A",
            "--scope",
            "prod",
            "--site",
            "here",
        ])
        .ok();
    assert!(again.stdout.contains("already live"), "{}", again.stdout);
    p.ccb(&[
        "publish",
        "--outputs",
        imgs,
        "CC-A",
        "--scope",
        "prod",
        "--site",
        "here",
        "--version",
        "v1",
    ])
    .fails()
    .stderr_has("already holds CC-A");

    // New content: the next version of the day, now live.
    p.images(&["CC-A"], 200_000, 2);
    p.ccb(&[
        "publish",
        "--outputs",
        imgs,
        "CC-A",
        "--scope",
        "prod",
        "--site",
        "here",
    ])
    .ok();
    let v2 = format!("{day}-v2");
    let list = p
        .ccb(&[
            "versions", "list", "--site", "here", "--scope", "prod", "--format", "json",
        ])
        .ok()
        .json();
    let versions: Vec<&str> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, [v1.as_str(), v2.as_str()]);
    let live: Vec<bool> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["images"][0]["live"].as_bool().unwrap())
        .collect();
    assert_eq!(live, [false, true]);
    let qcow = &list["versions"][1]["images"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"].as_str().unwrap().ends_with(".qcow2"))
        .unwrap()
        .clone();
    assert_eq!(qcow["bytes"], 200_000);
    assert_eq!(qcow["sha256"], sha256(&images.join("CC-A.qcow2")).as_str());

    // Roll back, promote to another scope without uploading, prune: never the live one.
    p.ccb(&[
        "versions", "rollback", "--site", "here", "--scope", "prod", "CC-A", &v1,
    ])
    .ok();
    let current: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(site.join("current")).unwrap()).unwrap();
    assert_eq!(current["CC-A"], v1.as_str());
    p.ccb(&[
        "versions", "promote", "--site", "here", "--from", "prod", "--to", "staging", "CC-A", &v2,
    ])
    .ok();
    let staging = p.root().join("site/staging");
    assert!(
        staging
            .join("versions")
            .join(&v2)
            .join("CC-A.manifest")
            .is_file()
    );
    let cur: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(staging.join("current")).unwrap()).unwrap();
    assert_eq!(cur["CC-A"], v2.as_str());
    let pruned = p
        .ccb(&[
            "versions", "prune", "--site", "here", "--scope", "prod", "--keep", "0",
        ])
        .ok();
    assert!(
        pruned.stdout.contains(&format!("removed CC-A {v2}")),
        "{}",
        pruned.stdout
    );
    assert!(!site.join("versions").join(&v2).join("CC-A.qcow2").exists());
    assert!(
        site.join("versions").join(&v1).join("CC-A.qcow2").is_file(),
        "the live version stays"
    );
}

pub(crate) fn swift_site(container: &str, cloud: &str) -> String {
    format!(
        r#"{{
  rig = {{ name = "Rig", baremetal = true, kind = 'swift, cloud = "{cloud}", container = "{container}", formats = ['qcow2, 'raw] }},
}}
"#
    )
}

#[test]
fn swift_publish_uses_slo_resumes_after_a_kill_and_reads_back_with_the_swift_cli() {
    let container = format!("ccb-test-slo-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let size = 24 << 20;
    let images = p.images(&["CC-Big"], size, 3);
    let imgs = images.to_str().unwrap();
    let sum = sha256(&images.join("CC-Big.qcow2"));
    let seg_prefix = format!("segments/CC-Big.qcow2/{sum}/1048576/");

    // Killed mid-upload (one segment at a time, so the kill lands between segments).
    let mut child = p.spawn(&[
        "publish",
        "--outputs",
        imgs,
        "CC-Big",
        "--scope",
        "prod",
        "--segment-size",
        "1MiB",
        "--jobs",
        "1",
    ]);
    let started = Instant::now();
    loop {
        let n = rig.listing(&container, &seg_prefix).len();
        if n >= 4 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the publish ended before it was killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no segment uploaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = rig.listing(&container, &seg_prefix);
    assert!(
        before.len() < 24,
        "the kill came too late: {} segments",
        before.len()
    );
    // Nothing is live and no version holds the image yet.
    assert_eq!(
        rig.swift("GET", &format!("{container}/prod/current")).0,
        404
    );

    // The re-run sends only the missing segments.
    p.ccb(&[
        "publish",
        "--outputs",
        imgs,
        "CC-Big",
        "--scope",
        "prod",
        "--segment-size",
        "1MiB",
        "--jobs",
        "3",
    ])
    .ok();
    let after: BTreeMap<String, (u64, String)> = rig
        .listing(&container, &seg_prefix)
        .into_iter()
        .map(|(n, b, t)| (n, (b, t)))
        .collect();
    assert_eq!(after.len(), 24);
    for (name, bytes, modified) in &before {
        // A segment cut off by the kill may be absent from `before`; those present are kept.
        assert_eq!(
            after[name],
            (*bytes, modified.clone()),
            "{name} was sent again"
        );
    }

    // python-swiftclient reads what ccb wrote: the listing, and the large object, whole.
    let day = today();
    let object = format!("prod/versions/{day}-v1/CC-Big.qcow2");
    let dl = p.root().join("downloaded.qcow2");
    let out = rig
        .swift_cli()
        .args(["download", &container, &object, "-o"])
        .arg(&dl)
        .output()
        .expect("the swift CLI (python3-swiftclient)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&dl), sum);
    let out = rig
        .swift_cli()
        .args(["stat", &container, &object])
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&out.stdout);
    assert!(stat.contains(&format!("Meta Sha256: {sum}")), "{stat}");
    assert!(
        stat.contains("Manifest:") || stat.contains("Static-Large-Object"),
        "{stat}"
    );
    let current: serde_json::Value =
        serde_json::from_str(&rig.get(&container, "prod/current")).unwrap();
    assert_eq!(current["CC-Big"], format!("{day}-v1"));

    // Promotion copies the manifest server-side: the staging object reads whole, and no
    // segment was added.
    let v1 = format!("{day}-v1");
    p.ccb(&[
        "versions", "promote", "--site", "rig", "--from", "prod", "--to", "staging", "CC-Big", &v1,
    ])
    .ok();
    let staged = p.root().join("staged.qcow2");
    let out = rig
        .swift_cli()
        .args([
            "download",
            &container,
            &format!("staging/versions/{v1}/CC-Big.qcow2"),
            "-o",
        ])
        .arg(&staged)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&staged), sum);
    assert_eq!(rig.listing(&container, "segments/").len(), 24);
    let staging: serde_json::Value =
        serde_json::from_str(&rig.get(&container, "staging/current")).unwrap();
    assert_eq!(staging["CC-Big"], v1.as_str());
    // Pruning never takes the live version, nor segments another scope still uses.
    let pruned = p
        .ccb(&[
            "versions", "prune", "--site", "rig", "--scope", "prod", "--keep", "0",
        ])
        .ok();
    assert!(
        pruned.stdout.contains("nothing to prune"),
        "{}",
        pruned.stdout
    );
    let list = p
        .ccb(&[
            "versions", "list", "--site", "rig", "--scope", "staging", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(list["versions"][0]["images"][0]["live"], true);
}

#[test]
fn eight_concurrent_publishers_all_land_in_current() {
    let container = format!("ccb-test-race-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let names: Vec<String> = (1..=8).map(|i| format!("CC-Race{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let images = p.images(&refs, 64 << 10, 4);
    let imgs = images.to_str().unwrap().to_string();
    let children: Vec<Child> = names
        .iter()
        .map(|n| p.spawn(&["publish", "--outputs", &imgs, n, "--scope", "prod", "-q"]))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let current: BTreeMap<String, String> =
        serde_json::from_str(&rig.get(&container, "prod/current")).unwrap();
    let day = today();
    for n in &names {
        assert_eq!(
            current.get(n),
            Some(&format!("{day}-v1")),
            "{n} lost: {current:?}"
        );
    }
}

#[test]
fn swift_errors_are_clear_and_no_secret_ever_shows() {
    let rig = rig();
    let container = format!("ccb-test-err-{}", std::process::id());
    // A missing container: a clear error, as upstream (ccb never creates it).
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let images = p.images(&["CC-E"], 4096, 5);
    let imgs = images.to_str().unwrap();
    let missing = p
        .ccb(&["publish", "--outputs", imgs, "CC-E", "--scope", "prod"])
        .fails();
    missing.stderr_has(&format!("container `{container}` does not exist"));

    // The application credential cloud publishes; the outputs (verbose text and JSON) and a
    // failed login's error show none of the secrets involved.
    let _bucket = rig.container(&container);
    let ac = Project::with_rig(&swift_site(&container, "ccb-appcred"));
    let imgs2 = ac.images(&["CC-E"], 4096, 5);
    let run = ac
        .ccb(&[
            "-v",
            "publish",
            "--outputs",
            imgs2.to_str().unwrap(),
            "CC-E",
            "--scope",
            "prod",
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(run.json()["results"][0]["outcome"], "published");

    let bad_clouds = p.root().join("bad-clouds.yaml");
    write(
        &bad_clouds,
        &format!(
            "clouds:\n  bad:\n    auth:\n      auth_url: {}\n      username: {}\n      password: not-the-password-4711\n      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n",
            rig.var("KS_AUTH_URL"),
            rig.var("KS_USER"),
            rig.var("KS_PROJECT")
        ),
    );
    let bad = Project {
        clouds: Some(bad_clouds.to_string_lossy().into_owned()),
        ..Project::new(&swift_site(&container, "bad"))
    };
    let refused = bad
        .ccb(&[
            "publish",
            "--outputs",
            imgs,
            "CC-E",
            "--scope",
            "prod",
            "--format",
            "json",
        ])
        .fails();
    assert!(
        refused.stdout.contains("refused the credentials"),
        "{}",
        refused.stdout
    );
    let refused_text = bad
        .ccb(&[
            "-v",
            "publish",
            "--outputs",
            imgs,
            "CC-E",
            "--scope",
            "prod",
        ])
        .fails();
    for out in [
        &run.stdout,
        &run.stderr,
        &refused.stdout,
        &refused.stderr,
        &refused_text.stderr,
    ] {
        for secret in [
            rig.var("KS_PASSWORD"),
            rig.var("KS_APP_CRED_SECRET"),
            "not-the-password-4711",
            "gAAAAA", // every fernet token starts so
        ] {
            assert!(
                !out.contains(secret),
                "a secret ({secret}) in the output:\n{out}"
            );
        }
    }
}

#[test]
fn a_wrong_etag_is_refused_and_an_expired_token_is_renewed() {
    use ccb::publish::swift::{Auth, SwiftSite};
    use ccb::publish::{ObjectStore, PublishError, clouds, keystone};
    use ccb::secret::Secret;

    let rig = rig();
    let container = format!("ccb-test-etag-{}", std::process::id());
    let _bucket = rig.container(&container);
    let env = clouds::Env {
        vars: [(
            "OS_CLIENT_CONFIG_FILE".to_string(),
            rig.var("OS_CLIENT_CONFIG_FILE").to_string(),
        )]
        .into(),
        cwd: PathBuf::from("/nonexistent"),
        home: None,
    };
    let cloud = clouds::load(Some("ccb"), &env).unwrap();

    /// A token that has expired (Swift answers 401) until ccb asks for a new one.
    struct ExpiredFirst {
        inner: keystone::Session,
        renewed: std::sync::atomic::AtomicBool,
    }
    impl Auth for ExpiredFirst {
        fn credentials(&self) -> Result<(Secret, String), PublishError> {
            let (token, url) = self.inner.credentials()?;
            if self.renewed.load(std::sync::atomic::Ordering::SeqCst) {
                Ok((token, url))
            } else {
                Ok((Secret::new("gAAAAA-expired-token"), url))
            }
        }
        fn invalidate(&self) {
            self.renewed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.inner.invalidate();
        }
    }
    let session = keystone::Session::new(cloud, None).unwrap();
    let agent = session.agent();
    let auth = ExpiredFirst {
        inner: session,
        renewed: false.into(),
    };
    let site = SwiftSite::connect("rig", &container, Box::new(auth), agent, 1 << 20, 2).unwrap();

    // Swift checks the MD5 we send: a wrong one is refused and nothing is stored.
    let err = site
        .put_bytes_with_etag("obj", b"hello", &"0".repeat(32), "text/plain", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("422"), "{err}");
    assert_eq!(rig.swift("GET", &format!("{container}/obj")).0, 404);
    site.put_bytes("obj", b"hello", "text/plain", false)
        .unwrap();
    assert_eq!(rig.get(&container, "obj"), "hello");

    // Tokens about to expire are renewed before a request, also in the middle of a large
    // upload: here every token counts as about to expire, so each request gets a new one.
    struct Counting {
        inner: keystone::Session,
        seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    }
    impl Auth for Counting {
        fn credentials(&self) -> Result<(Secret, String), PublishError> {
            let (t, u) = self.inner.credentials()?;
            self.seen.lock().unwrap().insert(t.expose().to_string());
            Ok((t, u))
        }
        fn invalidate(&self) {
            self.inner.invalidate();
        }
    }
    let session = keystone::Session::new(clouds::load(Some("ccb"), &env).unwrap(), None)
        .unwrap()
        .renew_when_less_than(Duration::from_secs(10 * 86_400));
    let agent = session.agent();
    let counting = std::sync::Arc::new(Counting {
        inner: session,
        seen: Default::default(),
    });
    struct Shared(std::sync::Arc<Counting>);
    impl Auth for Shared {
        fn credentials(&self) -> Result<(Secret, String), PublishError> {
            self.0.credentials()
        }
        fn invalidate(&self) {
            self.0.invalidate()
        }
    }
    let renewing = SwiftSite::connect(
        "rig",
        &container,
        Box::new(Shared(counting.clone())),
        agent,
        1 << 20,
        1,
    )
    .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![7u8; (3 << 20) + 5]).unwrap();
    let sum = sha256(file.path());
    renewing
        .put_file(
            "big",
            file.path(),
            (3 << 20) + 5,
            &sum,
            &ccb::ui::progress::Transfer::hidden(),
        )
        .unwrap();
    let info = renewing.head("big").unwrap().unwrap();
    assert_eq!(
        (info.bytes, info.sha256.as_deref()),
        ((3 << 20) + 5, Some(sum.as_str()))
    );
    let tokens = counting.seen.lock().unwrap().len();
    assert!(
        tokens >= 5,
        "only {tokens} tokens for a 4-segment upload: none renewed"
    );

    // A create-only write of an existing name is reported, not applied.
    let again = site.put_bytes("obj", b"other", "text/plain", true).unwrap();
    assert_eq!(again, ccb::publish::PutOutcome::Exists);
    assert_eq!(rig.get(&container, "obj"), "hello");
    let _ = std::io::stdout().flush();
}

#[test]
fn published_images_are_inspected_through_the_site_and_a_public_url() {
    let container = format!("ccb-test-inspect-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    write(
        p.root().join("manifests/inspect.ncl"),
        "{ executables = { \"usr/bin\" = [\"cloud-init\"] }, compare_dpkg_manifest = true }\n",
    );
    // A real (small) disk, as ccb build --out would lay it out, with 16 MiB of data the checks
    // never read (incompressible: it stays 16 MiB in the qcow2), so that reading only what
    // the checks touch is a small part of the image.
    let out = p.root().join("built");
    std::fs::create_dir_all(&out).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bulk: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let raw = crate::inspect::disk_with(&out, "CC-Remote", 0o755, "2.36-9", &[("srv/bulk", bulk)]);
    let qcow = out.join("CC-Remote.qcow2");
    crate::inspect::run(
        Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow),
    );
    std::fs::remove_file(&raw).unwrap();
    write(
        out.join("CC-Remote.d/CC-Remote_provenance.json"),
        &provenance("CC-Remote", &build_time(1)),
    );
    write(
        out.join("SHA256SUMS"),
        &format!("{}  CC-Remote.qcow2\n", sha256(&qcow)),
    );
    p.ccb(&[
        "publish",
        "--outputs",
        out.to_str().unwrap(),
        "CC-Remote",
        "--scope",
        "prod",
    ])
    .ok();

    // Through the site's credentials: only the blocks the checks touch are fetched.
    let size = std::fs::metadata(&qcow).unwrap().len();
    let run = p
        .ccb(&[
            "inspect", "--site", "rig", "--scope", "prod", "--format", "json",
        ])
        .ok()
        .json();
    assert_eq!(run["passed"], true, "{run}");
    assert_eq!(run["images"][0]["name"], "CC-Remote");
    let fetched = run["images"][0]["fetched_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fetched_bytes: {run}"));
    // No dpkg manifest is published: remote checks are the executables.
    assert!(
        run["images"][0]["checks"].as_array().unwrap().len() == 1,
        "{run}"
    );
    // Ranged reads: the blocks the checks touch, a small part of the image.
    assert!(
        fetched > 0 && fetched * 2 < size,
        "fetched {fetched} of {size}"
    );

    // A public container, read anonymously by URL with range requests.
    let (code, body) = rig.swift_with("POST", &container, &["X-Container-Read: .r:*,.rlistings"]);
    assert!(code == 204 || code == 202, "{code} {body}");
    let url = format!("{}/{container}", rig.var("KS_SWIFT_STORAGE_URL"));
    let run = p
        .ccb(&[
            "inspect",
            "--url",
            &url,
            "--scope",
            "prod",
            "CC-Remote",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(run["passed"], true, "{run}");
    let fetched = run["images"][0]["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched > 0 && fetched * 2 < size,
        "fetched {fetched} of {size}"
    );
}

#[test]
fn an_artifact_kept_in_a_site_container_is_fetched_with_the_site_credentials() {
    let container = format!("ccb-test-artifacts-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    // A vendor file only the site holds, uploaded with the swift CLI.
    let blob = p.root().join("vendor.run");
    let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&blob, &data).unwrap();
    let st = rig
        .swift_cli()
        .current_dir(p.root())
        .args([
            "upload",
            &container,
            "vendor.run",
            "--object-name",
            "vendor/cuda.run",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "swift upload");
    let good = sha256(&blob);
    let artifacts = |sha: &str| {
        write(
            p.root().join("manifests/artifacts.ncl"),
            &format!(
                "{{ cuda = {{ swift = {{ site = \"rig\", container = \"{container}\", object = \"vendor/cuda.run\" }}, sha256 = \"{sha}\" }} }}\n"
            ),
        )
    };
    write(
        p.root().join("manifests/images.ncl"),
        "{ gpu = { name = \"GPU\", elements = [\"ubuntu\"], env = { DIB_RELEASE = \"noble\" }, artifacts = { CUDA_RUNFILE = \"cuda\" } } }\n",
    );
    let fetch = |extra: &[&str]| {
        let mut args = vec!["fetch", "gpu"];
        args.extend_from_slice(extra);
        Run::from(
            p.cmd(&args)
                .env("ELEMENTS_PATH", repo().join("elements"))
                .output()
                .unwrap(),
        )
    };

    // The wrong digest: named with both digests, nothing stored.
    artifacts(&"e".repeat(64));
    fetch(&[])
        .fails()
        .stderr_has("artifact `cuda`")
        .stderr_has(&format!("actual   {good}"));
    assert!(!p.env.cache.path().join("artifacts").join(&good).exists());

    // Half of it from an earlier, interrupted run: the rest comes by ranges, and the whole is
    // verified.
    artifacts(&good);
    let partial = p.env.cache.path().join("artifacts/.partial").join(&good);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &data[..1_750_000]).unwrap();
    let run = fetch(&["--format", "json"]).ok().json();
    let act = run["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "fetch:cuda")
        .cloned()
        .unwrap();
    assert_eq!(act["status"], "built", "{run}");
    let stored = p.env.cache.path().join("artifacts").join(&good);
    assert_eq!(std::fs::read(&stored).unwrap(), data);
    assert!(!partial.exists());

    // Without the site's credentials the fetch fails clearly (the store already has it, so
    // use a fresh store).
    let fresh = Env::new();
    let out = fresh
        .cmd()
        .env("ELEMENTS_PATH", repo().join("elements"))
        .env("OS_CLIENT_CONFIG_FILE", p.root().join("no-clouds.yaml"))
        .arg("--root")
        .arg(p.root())
        .args(["fetch", "gpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("artifact `cuda`"), "{stderr}");
    assert!(!stderr.contains(rig.var("KS_PASSWORD")), "{stderr}");
}

/// An ed25519 key pair made by `ssh-keygen` in `dir`: (private key file, public key line).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "release@ccb", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {out:?}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    (key, public.trim().to_string())
}

/// What an operator runs: `ssh-keygen -Y verify` with an allowed_signers file naming the key
/// for ccb's namespace, the checksums on stdin.
fn operator_verifies(public: &str, sums: &Path, sig: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("images@chameleon namespaces=\"ccb-image\" {public}\n"),
    )
    .unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&allowed)
        .args(["-I", "images@chameleon", "-n", "ccb-image", "-s"])
        .arg(sig)
        .stdin(std::fs::File::open(sums).unwrap())
        .output()
        .unwrap();
    out.status.success()
}

fn signing_settings(key: &str, public: &str) -> String {
    format!(
        "{{\n  build_repo = \"https://github.com/ChameleonCloud/cc-images\",\n  signing = {{ key = {key}, public_key = \"{public}\" }},\n}}\n"
    )
}

#[test]
fn published_checksums_are_signed_and_operators_verify_them_with_ssh_keygen() {
    let p = Project::new(LOCAL);
    let (key, public) = keypair(p.root(), "ccb-signing");
    let private = std::fs::read_to_string(&key).unwrap();
    write(
        p.root().join("manifests/project.ncl"),
        &signing_settings("{ file = \"ccb-signing\" }", &public),
    );
    let images = p.images(&["CC-A"], 200_000, 1);
    write(
        images.join("CC-A.spdx.json"),
        "{\"spdxVersion\": \"SPDX-2.3\"}\n",
    );
    let run = p
        .ccb(&[
            "publish",
            "--outputs",
            images.to_str().unwrap(),
            "CC-A",
            "--scope",
            "prod",
            "--site",
            "here",
            "--format",
            "json",
        ])
        .ok();
    let version = run.json()["results"][0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    // The private key never shows, in any form.
    let body: String = private
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for out in [&run.stdout, &run.stderr] {
        assert!(!out.contains(&body[..40]), "the private key leaked: {out}");
    }

    let dir = p.root().join("site/prod/versions").join(&version);
    let (sums, sig) = (dir.join("CC-A.SHA256SUMS"), dir.join("CC-A.SHA256SUMS.sig"));
    // Every file of the image, in coreutils' format: `sha256sum -c` in the version directory.
    let listed = std::fs::read_to_string(&sums).unwrap();
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        names,
        ["CC-A.manifest", "CC-A.qcow2", "CC-A.raw", "CC-A.spdx.json"]
    );
    let check = Command::new("sha256sum")
        .args(["-c", "CC-A.SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(operator_verifies(&public, &sums, &sig));

    // Tampering: a changed checksum fails the signature; a changed file fails sha256sum.
    let copy = p.root().join("tampered.SHA256SUMS");
    std::fs::write(
        &copy,
        listed.replacen(&listed[..1], if &listed[..1] == "0" { "1" } else { "0" }, 1),
    )
    .unwrap();
    assert!(!operator_verifies(&public, &copy, &sig));
    let (_, stranger) = keypair(p.root(), "stranger");
    assert!(
        !operator_verifies(&stranger, &sums, &sig),
        "another key's signers must not verify"
    );
    std::fs::write(dir.join("CC-A.raw"), b"altered").unwrap();
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet", "CC-A.SHA256SUMS"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("CC-A.raw: FAILED"));

    // The SBOM and checksums are the image's files, not images of their own.
    let list = p
        .ccb(&[
            "versions", "list", "--site", "here", "--scope", "prod", "--format", "json",
        ])
        .ok()
        .json();
    let images_listed: Vec<&str> = list["versions"][0]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(images_listed, ["CC-A"], "{list}");

    // The key from an environment variable; one that is not the public key's is refused
    // before anything is sent, naming where it came from and nothing of it.
    let (other, _) = keypair(p.root(), "other");
    write(
        p.root().join("manifests/project.ncl"),
        &signing_settings("{ env = \"CCB_TEST_SIGNING_KEY\" }", &public),
    );
    p.images(&["CC-A"], 200_000, 2);
    let refused = p
        .cmd(&[
            "publish",
            "--outputs",
            images.to_str().unwrap(),
            "CC-A",
            "--scope",
            "prod",
            "--site",
            "here",
        ])
        .env(
            "CCB_TEST_SIGNING_KEY",
            std::fs::read_to_string(&other).unwrap(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("environment variable CCB_TEST_SIGNING_KEY")
            && stderr.contains("public_key"),
        "{stderr}"
    );
    let published = p
        .cmd(&[
            "publish",
            "--outputs",
            images.to_str().unwrap(),
            "CC-A",
            "--scope",
            "prod",
            "--site",
            "here",
            "--format",
            "json",
        ])
        .env("CCB_TEST_SIGNING_KEY", &private)
        .output()
        .unwrap();
    assert!(published.status.success(), "{published:?}");
    let v2: serde_json::Value = serde_json::from_slice(&published.stdout).unwrap();
    let dir = p
        .root()
        .join("site/prod/versions")
        .join(v2["results"][0]["version"].as_str().unwrap());
    assert!(operator_verifies(
        &public,
        &dir.join("CC-A.SHA256SUMS"),
        &dir.join("CC-A.SHA256SUMS.sig")
    ));
}

fn check<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["images"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {run}"))
}

#[test]
fn inspect_verifies_the_signed_checksums_on_swift_and_by_url_and_names_a_tampered_file() {
    let container = format!("ccb-test-signed-{}", std::process::id());
    let rig = rig();
    let _bucket = rig.container(&container);
    let p = Project::with_rig(&swift_site(&container, "ccb"));
    let (_, public) = keypair(p.root(), "ccb-signing");
    write(
        p.root().join("manifests/project.ncl"),
        &signing_settings("{ file = \"ccb-signing\" }", &public),
    );
    write(
        p.root().join("manifests/inspect.ncl"),
        "{ executables = { \"usr/bin\" = [\"cloud-init\"] } }\n",
    );
    let out = p.root().join("built");
    std::fs::create_dir_all(&out).unwrap();
    let raw = crate::inspect::disk_with(&out, "CC-Signed", 0o755, "2.36-9", &[]);
    let qcow = out.join("CC-Signed.qcow2");
    crate::inspect::run(
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow),
    );
    std::fs::remove_file(&raw).unwrap();
    write(
        out.join("CC-Signed.d/CC-Signed_provenance.json"),
        &provenance("CC-Signed", &build_time(1)),
    );
    write(
        out.join("SHA256SUMS"),
        &format!("{}  CC-Signed.qcow2\n", sha256(&qcow)),
    );
    let version = p
        .ccb(&[
            "publish",
            "--outputs",
            out.to_str().unwrap(),
            "CC-Signed",
            "--scope",
            "prod",
            "--format",
            "json",
        ])
        .ok()
        .json()["results"][0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = format!("prod/versions/{version}");

    // The stock tool, on what the site serves.
    let fetched = tempfile::tempdir().unwrap();
    for f in ["CC-Signed.SHA256SUMS", "CC-Signed.SHA256SUMS.sig"] {
        std::fs::write(
            fetched.path().join(f),
            rig.get(&container, &format!("{prefix}/{f}")),
        )
        .unwrap();
    }
    assert!(operator_verifies(
        &public,
        &fetched.path().join("CC-Signed.SHA256SUMS"),
        &fetched.path().join("CC-Signed.SHA256SUMS.sig")
    ));

    let inspect_site = || {
        p.ccb(&[
            "inspect", "--site", "rig", "--scope", "prod", "--format", "json",
        ])
        .json()
    };
    let run = inspect_site();
    assert_eq!(run["passed"], true, "{run}");
    assert_eq!(check(&run, "signature")["passed"], true, "{run}");
    let sums = check(&run, "checksums");
    assert_eq!(sums["passed"], true, "{run}");
    assert!(
        sums["detail"].as_str().unwrap().contains("CC-Signed.qcow2"),
        "the disk inspected is hashed whole: {run}"
    );

    // By URL, anonymously.
    let (code, body) = rig.swift_with("POST", &container, &["X-Container-Read: .r:*,.rlistings"]);
    assert!(code == 204 || code == 202, "{code} {body}");
    let url = format!("{}/{container}", rig.var("KS_SWIFT_STORAGE_URL"));
    let by_url = || {
        p.ccb(&[
            "inspect", "--url", &url, "--scope", "prod", "--format", "json",
        ])
        .json()
    };
    let run = by_url();
    assert_eq!(run["passed"], true, "{run}");
    assert_eq!(check(&run, "signature")["passed"], true, "{run}");
    assert!(
        check(&run, "checksums")["detail"]
            .as_str()
            .unwrap()
            .contains("CC-Signed.qcow2"),
        "the disk object is hashed whole, streamed from the site: {run}"
    );

    // A manifest altered on the site: the checksums fail, naming it.
    let tampered = rig
        .get(&container, &format!("{prefix}/CC-Signed.manifest"))
        .replace("true", "false");
    crate::site_contract::put(
        &container,
        &format!("{prefix}/CC-Signed.manifest"),
        &tampered,
    );
    let run = by_url();
    assert_eq!(run["passed"], false, "{run}");
    let sums = check(&run, "checksums");
    assert_eq!(sums["passed"], false);
    assert!(
        sums["detail"]
            .as_str()
            .unwrap()
            .contains("CC-Signed.manifest: sha256"),
        "{run}"
    );

    // Checksums re-signed by another key: the signature fails.
    let (stranger, _) = keypair(p.root(), "stranger");
    let forging = tempfile::tempdir().unwrap();
    let copy = forging.path().join("CC-Signed.SHA256SUMS");
    std::fs::copy(fetched.path().join("CC-Signed.SHA256SUMS"), &copy).unwrap();
    let sig = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "ccb-image", "-f"])
        .arg(&stranger)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(sig.status.success(), "{sig:?}");
    let forged = std::fs::read_to_string(forging.path().join("CC-Signed.SHA256SUMS.sig")).unwrap();
    crate::site_contract::put(
        &container,
        &format!("{prefix}/CC-Signed.SHA256SUMS.sig"),
        &forged,
    );
    let run = inspect_site();
    assert_eq!(run["passed"], false, "{run}");
    let signature = check(&run, "signature");
    assert_eq!(signature["passed"], false);
    assert!(
        signature["detail"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{run}"
    );
}
