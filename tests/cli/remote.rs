//! The remote cache, for real: nginx with WebDAV on 127.0.0.1 speaking Bazel's HTTP cache
//! protocol (a private instance on a free port, its own prefix and config in a temp dir), the
//! Swift + Keystone rig, and a directory. Two "hosts" are two checkouts of the layered fixture
//! at different paths with different stores.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use ccb::remote::backend::{self, Backend};
use ccb::remote::pack::{self, Counters, Existing, PackKind};
use ccb::remote::reapi;

use crate::common::{Env, Nginx, Run, copy_tree, repo, wait_until};

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What every backend must do: absent entries are `None`, blobs come back as stored, action
/// results round-trip, a pack of several chunks streams back byte for byte.
fn backend_contract(b: &dyn Backend) {
    let missing = format!("cas/{}", "0".repeat(64));
    assert_eq!(b.get(&missing).unwrap(), None, "{}", b.describe());
    assert!(!b.head(&missing).unwrap());

    let c = Counters::default();
    let data = pseudo_random(5 << 20, 3);
    let (digest, size) =
        pack::upload(b, PackKind::File, &data[..], 2, Existing::Reuse, &c).unwrap();
    let m = pack::manifest(b, &digest, size, &c).unwrap().unwrap();
    assert!(m.chunks.len() >= 2);
    let mut back = Vec::new();
    pack::download(b, &m, &mut back, 2, &c, &mut |_, _| {}).unwrap();
    assert!(
        back == data,
        "{}: the stream came back different",
        b.describe()
    );

    let ac = format!("ac/{}", "a".repeat(64));
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "ccb/data".into(),
            digest: Some(reapi::Digest {
                hash: digest.clone(),
                size_bytes: size as i64,
            }),
            is_executable: false,
        }],
        exit_code: 0,
    };
    b.put(&ac, &result.encode_vec()).unwrap();
    let got = reapi::ActionResult::decode_bytes(&b.get(&ac).unwrap().unwrap()).unwrap();
    assert_eq!(got.output("ccb/data").unwrap().hash, digest);
}

#[test]
fn nginx_webdav_a_directory_and_swift_all_serve_as_the_cache() {
    let nginx = Nginx::start();
    backend_contract(&*backend::open(&nginx.url).unwrap());

    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    backend_contract(&*backend::open(&url).unwrap());

    let rig = crate::publish::rig();
    let container = rig.container("ccb-remote-cache-test");
    let env = ccb::publish::clouds::Env {
        vars: [(
            "OS_CLIENT_CONFIG_FILE".to_string(),
            rig.var("OS_CLIENT_CONFIG_FILE").to_string(),
        )]
        .into(),
        cwd: dir.path().to_path_buf(),
        home: None,
    };
    let swift = backend::open_in("swift://ccb/ccb-remote-cache-test/builds", &env).unwrap();
    backend_contract(&*swift);
    // Entries live under the prefix, named as the HTTP protocol names them.
    assert!(
        rig.listing("ccb-remote-cache-test", "builds/cas/").len() >= 3,
        "{:?}",
        rig.listing("ccb-remote-cache-test", "")
    );
    drop(container);
}

#[test]
fn a_damaged_or_truncated_chunk_on_the_server_fails_the_download() {
    let nginx = Nginx::start();
    let b = backend::open(&nginx.url).unwrap();
    let c = Counters::default();
    let data = pseudo_random(3 << 20, 9);
    let (digest, size) =
        pack::upload(&*b, PackKind::File, &data[..], 2, Existing::Reuse, &c).unwrap();
    let m = pack::manifest(&*b, &digest, size, &c).unwrap().unwrap();
    let victim = nginx.data().join("cas").join(&m.chunks[0].digest);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let err = pack::download(&*b, &m, &mut Vec::new(), 2, &c, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn an_overlay_upper_dir_travels_exactly() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "device nodes and trusted xattrs need root (scripts/test runs as root)"
    );
    let nginx = Nginx::start();
    let b = backend::open(&nginx.url).unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("upper");
    std::fs::create_dir_all(src.join("etc/opaque")).unwrap();
    let e = src.join("etc");
    let mknod = |p: &Path, kind, dev| {
        nix::sys::stat::mknod(
            p,
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            dev,
        )
        .unwrap()
    };
    // An overlayfs whiteout, and an opaque directory.
    mknod(&e.join("removed"), nix::sys::stat::SFlag::S_IFCHR, 0);
    xattr::set(e.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
    std::fs::write(e.join("opaque/new"), "hi\n").unwrap();
    // Ownership, setuid, user and security xattrs (a file capability: cap_net_raw+ep).
    std::fs::write(e.join("owned"), "owned\n").unwrap();
    std::os::unix::fs::chown(e.join("owned"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(e.join("owned"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    xattr::set(e.join("owned"), "user.note", b"kept").unwrap();
    std::fs::write(e.join("ping"), "cap\n").unwrap();
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr::set(e.join("ping"), "security.capability", &cap).unwrap();
    // A hard link, a block device, a symlink, a sparse file.
    std::fs::write(e.join("a"), "linked\n").unwrap();
    std::fs::hard_link(e.join("a"), e.join("b")).unwrap();
    mknod(
        &e.join("sda"),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::makedev(8, 0),
    );
    std::os::unix::fs::symlink("../etc/a", e.join("link")).unwrap();
    let f = std::fs::File::create(e.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"tail", 64 << 20).unwrap();
    let before = ccb::store::summarize(&src).unwrap();
    let c = Counters::default();
    let (digest, size) = pack::upload_tree(&*b, &src, 2, Existing::Reuse, &c).unwrap();
    let m = pack::manifest(&*b, &digest, size, &c).unwrap().unwrap();
    let dst = t.path().join("down");
    pack::download_tree(&*b, &m, &dst, 2, &c, &mut |_, _| {}).unwrap();
    let after = ccb::store::summarize(&dst).unwrap();
    // The digest covers content, modes, owners, xattrs, device numbers and link targets.
    assert_eq!(before.digest, after.digest);
    assert_eq!(before.entries, after.entries);
    let ino = |p: &str| std::fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("etc/a"), ino("etc/b"), "the hard link is one file");
    let sparse = std::fs::metadata(dst.join("etc/sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 8 << 20,
        "the sparse file stayed sparse"
    );
    // 64 MiB of zeros compress to almost nothing.
    assert!(
        c.bytes_up.load(std::sync::atomic::Ordering::Relaxed) < 1 << 20,
        "{c:?}"
    );
}

/// A checkout of the layered fixture ("a host"): its own path and store.
struct Host {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Host {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        let host = Self {
            env: Env::new(),
            _dir: dir,
            root,
        };
        host.set_project("");
        host
    }

    /// A checkout whose project shares a cache: `cache = { url, upload }`.
    fn with_cache(name: &str, url: &str, upload: bool) -> Self {
        let host = Self::new(name);
        host.set_cache(url, upload);
        host
    }

    fn set_cache(&self, url: &str, upload: bool) {
        self.set_project(&format!(
            ", cache = {{ url = \"{url}\", upload = {upload} }}"
        ));
    }

    fn set_project(&self, more: &str) {
        std::fs::write(
            self.root.join("manifests/project.ncl"),
            format!("{{ build_repo = \"https://github.com/ChameleonCloud/cc-images\"{more} }}\n"),
        )
        .unwrap();
    }

    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["--root".into(), self.root.display().to_string()];
        v.extend(rest.iter().map(|s| s.to_string()));
        if rest
            .iter()
            .any(|a| matches!(*a, "build" | "query" | "publish"))
        {
            v.push("--element-path".into());
            v.push(repo().join("elements").display().to_string());
        }
        v
    }

    fn ccb(&self, rest: &[&str]) -> Run {
        let args = self.args(rest);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.run(&args)
    }

    fn spawn(&self, rest: &[&str]) -> Child {
        self.env
            .cmd()
            .args(self.args(rest))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn store(&self) -> &Path {
        self.env.cache.path()
    }
}

#[test]
fn keys_are_the_same_on_every_host() {
    let (a, b) = (Host::new("a"), Host::new("checkout-b"));
    // Each "host" has its own user, home and time zone, and runs at another moment.
    let keys = |h: &Host, user: &str, home: &str, tz: &str| {
        let out = h
            .env
            .cmd()
            .args(h.args(&["query", "hash", "tiny-child", "--format", "json"]))
            .env("USER", user)
            .env("LOGNAME", user)
            .env("HOME", home)
            .env("TZ", tz)
            .output()
            .unwrap();
        let v = Run::from(out).ok().json();
        let docs = v.to_string();
        // No path, host name, user, home or date in any key document.
        assert!(!docs.contains(&h.root.display().to_string()), "{docs}");
        assert!(!docs.contains(&h.store().display().to_string()), "{docs}");
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            assert!(!docs.contains(host.trim()), "{docs}");
        }
        for word in [user, home, tz] {
            assert!(!docs.contains(word), "{word} in {docs}");
        }
        let today = std::process::Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .unwrap();
        let today = String::from_utf8_lossy(&today.stdout).trim().to_string();
        assert!(!docs.contains(&today), "{docs}");
        std::thread::sleep(Duration::from_millis(1100));
        v["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].to_string(), a["key"].to_string()))
            .collect::<Vec<_>>()
    };
    let ka = keys(&a, "alice-builds", "/home/alice-builds", "America/Chicago");
    let kb = keys(&b, "bob-on-ci", "/var/lib/bob-on-ci", "Asia/Tokyo");
    assert!(!ka.is_empty());
    assert_eq!(ka, kb);
}

/// Every action entry on the server names blobs that are all there (a record, a manifest and
/// each chunk the manifest lists).
fn cache_is_consistent(data: &Path) -> usize {
    let cas = |d: &str| std::fs::read(data.join("cas").join(d));
    let Ok(rd) = std::fs::read_dir(data.join("ac")) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.filter_map(Result::ok) {
        let r = reapi::ActionResult::decode_bytes(&std::fs::read(e.path()).unwrap()).unwrap();
        let rec = r.output("ccb/record.json").unwrap();
        assert!(cas(&rec.hash).is_ok(), "a record is missing");
        let m: serde_json::Value =
            serde_json::from_slice(&cas(&r.output("ccb/data").unwrap().hash).unwrap()).unwrap();
        for c in m["chunks"].as_array().unwrap() {
            assert!(
                cas(c["digest"].as_str().unwrap()).is_ok(),
                "a chunk is missing"
            );
        }
        n += 1;
    }
    n
}

fn statuses(run: &Run) -> Vec<(String, String)> {
    run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let mut s = a["status"].as_str().unwrap().to_string();
            if a["from"] == "remote" {
                s.push_str(" (remote)");
            }
            (a["id"].as_str().unwrap().to_string(), s)
        })
        .collect()
}

fn ran(run: &Run) -> Vec<String> {
    statuses(run)
        .into_iter()
        .filter(|(_, s)| s == "built")
        .map(|(id, _)| id)
        .collect()
}

fn kill9(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut r| r.next().is_some())
}

#[test]
fn host_b_builds_a_child_from_host_a_s_results_and_publishes_without_building() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "building root filesystems needs root (scripts/test runs as root)"
    );
    let nginx = Nginx::start();
    let url = nginx.url.clone();
    let (a, b) = (Host::new("host-a"), Host::new("elsewhere/host-b"));
    let upload = ["--remote-cache", &url, "--remote-cache-upload"];

    // Host A: killed -9 while it uploads its first result (the base).
    let mut build_a = vec!["build", "tiny", "--format", "json"];
    build_a.extend_from_slice(&upload);
    let child = a.spawn(&build_a);
    wait_until("the first upload", Duration::from_secs(600), || {
        has_entries(&nginx.data().join("cas"))
    });
    kill9(child);
    // The server holds blobs at most, never an action entry without its data.
    cache_is_consistent(&nginx.data());

    // A again: the base it had committed is uploaded now, the rest built and uploaded.
    let first = a.ccb(&build_a).ok();
    assert_eq!(ran(&first), ["layer:tiny:amd64", "disk:tiny:amd64"]);
    let report = first.json();
    assert_eq!(report["remote"]["uploaded"], 3, "{report}");
    assert_eq!(cache_is_consistent(&nginx.data()), 3);

    // Host B, another path and store: killed -9 while it downloads.
    let build_b = [
        "build",
        "tiny-child",
        "--format",
        "json",
        "--remote-cache",
        &url,
    ];
    let child = b.spawn(&build_b);
    // Nothing builds before B's own layer: a working directory now is a download's.
    wait_until("a download", Duration::from_secs(300), || {
        has_entries(&b.store().join("tmp"))
    });
    std::thread::sleep(Duration::from_millis(300));
    kill9(child);
    // The local store holds whole results only.
    b.ccb(&["cache", "verify"]).ok();

    // B again: A's base and layer come from the cache; B runs its own layer and disk only.
    let second = b.ccb(&build_b).ok();
    assert_eq!(
        ran(&second),
        ["layer:tiny-child:amd64", "disk:tiny-child:amd64"]
    );
    let st = statuses(&second);
    assert!(
        st.contains(&("layer:tiny:amd64".into(), "cached (remote)".into())),
        "{st:?}"
    );
    assert!(second.json()["remote"]["bytes_down"].as_u64().unwrap() > 1 << 20);
    let explain = b.ccb(&["query", "explain", "tiny-child"]).ok();
    assert!(
        explain.stdout.contains("cached (remote)"),
        "{}",
        explain.stdout
    );
    b.ccb(&["cache", "verify"]).ok();

    // B publishes both images: the parent's disk comes from the cache, nothing is built.
    let publish = b
        .ccb(&[
            "publish",
            "tiny",
            "tiny-child",
            "--site",
            "local",
            "--scope",
            "farm",
            "--remote-cache",
            &url,
        ])
        .ok();
    assert!(
        publish.stderr.contains("cached (remote) disk:tiny:amd64"),
        "{}",
        publish.stderr
    );
    assert!(!publish.stderr.contains("built "), "{}", publish.stderr);
    // A third host wants the parent image only: the disk comes from the cache, and neither
    // the layer nor the base it was made from is downloaded.
    let c = Host::new("host-c");
    let third = c
        .ccb(&["build", "tiny", "--format", "json", "--remote-cache", &url])
        .ok();
    assert_eq!(
        statuses(&third),
        [("disk:tiny:amd64".to_string(), "cached (remote)".to_string())]
    );
    assert!(!c.store().join("layers").exists());
    let published: Vec<String> = walk(&b.root.join("out/publish/farm"));
    for name in ["Tiny.qcow2", "Tiny-Child.qcow2"] {
        assert!(published.iter().any(|p| p.ends_with(name)), "{published:?}");
    }
}

/// The chunks of the data of the entry the server holds for action `id`.
pub(crate) fn chunks_of(data: &Path, id: &str) -> Vec<PathBuf> {
    let cas = |d: &str| std::fs::read(data.join("cas").join(d)).unwrap();
    for e in std::fs::read_dir(data.join("ac")).unwrap() {
        let r =
            reapi::ActionResult::decode_bytes(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        let rec: serde_json::Value =
            serde_json::from_slice(&cas(&r.output("ccb/record.json").unwrap().hash)).unwrap();
        if rec["action"]["id"] != id {
            continue;
        }
        let m: serde_json::Value =
            serde_json::from_slice(&cas(&r.output("ccb/data").unwrap().hash)).unwrap();
        return m["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| data.join("cas").join(c["digest"].as_str().unwrap()))
            .collect();
    }
    panic!("the server holds no entry for {id}");
}

fn status_of(run: &Run, id: &str) -> String {
    statuses(run)
        .into_iter()
        .find(|(i, _)| i == id)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("{id} is not in the report: {}", run.stdout))
}

/// The project's `cache` setting is all a host needs: A uploads through it, B reuses it.
/// A chunk damaged on the server (same size, other bytes: the server's `HEAD` still says it
/// is there) makes the next host warn and rebuild, and that host's upload stores the entry
/// again, so a third host takes it from the cache. `--no-remote-cache` turns the setting off:
/// no request reaches the server.
#[test]
fn the_project_s_cache_is_shared_and_a_damaged_entry_is_rebuilt_and_repaired() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "building root filesystems needs root (scripts/test runs as root)"
    );
    let nginx = Nginx::start();
    let build = ["build", "tiny", "--format", "json"];
    let disk = "disk:tiny:amd64";

    let a = Host::with_cache("host-a", &nginx.url, true);
    let first = a.ccb(&build).ok();
    let report = first.json();
    assert_eq!(report["remote"]["upload"], true, "{report}");
    assert_eq!(report["remote"]["uploaded"], 3, "{report}");
    assert_eq!(cache_is_consistent(&nginx.data()), 3);

    let b = Host::with_cache("elsewhere/host-b", &nginx.url, false);
    let reused = b.ccb(&build).ok();
    assert_eq!(status_of(&reused, disk), "cached (remote)");
    assert_eq!(reused.json()["remote"]["upload"], false);

    // One chunk of the disk's data damaged in place.
    let victim = chunks_of(&nginx.data(), disk).remove(0);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();

    let c = Host::with_cache("host-c", &nginx.url, true);
    let repaired = c.ccb(&build).ok();
    repaired.stderr_has("not taken from the remote cache");
    assert_eq!(status_of(&repaired, disk), "built", "{}", repaired.stderr);
    assert!(
        repaired.json()["remote"]["uploaded"].as_u64().unwrap() >= 1,
        "{}",
        repaired.stdout
    );
    assert_eq!(cache_is_consistent(&nginx.data()), 3);

    let d = Host::with_cache("host-d", &nginx.url, false);
    let after = d.ccb(&build).ok();
    assert_eq!(
        status_of(&after, disk),
        "cached (remote)",
        "{}",
        after.stderr
    );
    assert!(!after.stderr.contains("not taken"), "{}", after.stderr);

    // A "server" that accepts connections and never answers: any request would show in its
    // queue. A's store holds everything, so only the cache could be contacted.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let url = format!("http://{}/cache", silent.local_addr().unwrap());
    a.set_cache(&url, true);
    let off = a
        .ccb(&["build", "tiny", "--format", "json", "--no-remote-cache"])
        .ok();
    assert!(off.json()["remote"].is_null(), "{}", off.stdout);
    assert!(!off.stderr.contains("remote cache"), "{}", off.stderr);
    assert!(silent.accept().is_err(), "a request reached the cache");
    // Without the flag the same build asks the cache (it would upload A's results).
    let on = a
        .env
        .cmd()
        .args(a.args(&build))
        .env("CCB_REMOTE_CACHE_TIMEOUT", "1")
        .output()
        .unwrap();
    Run::from(on).ok();
    assert!(silent.accept().is_ok(), "the setting is read");
}

/// A server that sends the headers and part of a blob, then stalls.
fn stalling_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nthe first bytes",
            );
            // Kept open, never written to again.
            held.push(stream);
        }
    });
    format!("http://{addr}/cache")
}

#[test]
fn a_cache_that_stalls_mid_body_is_an_error_not_a_hang() {
    let url = stalling_server();
    let env = ccb::publish::clouds::Env {
        vars: [(ccb::remote::TIMEOUT_ENV.to_string(), "0.5".to_string())].into(),
        cwd: PathBuf::from("/"),
        home: None,
    };
    let b = backend::open_in(&url, &env).unwrap();
    // An error is what a build's lookup turns into a warning and a miss.
    let err = b.get(&format!("cas/{}", "1".repeat(64))).unwrap_err();
    assert!(
        matches!(err, ccb::remote::RemoteError::Transport { .. }),
        "{err}"
    );
    let bad = ccb::publish::clouds::Env {
        vars: [(ccb::remote::TIMEOUT_ENV.to_string(), "soon".to_string())].into(),
        ..env
    };
    let err = backend::open_in(&url, &bad).err().unwrap();
    assert!(
        err.to_string().contains("CCB_REMOTE_CACHE_TIMEOUT"),
        "{err}"
    );
}

#[test]
fn a_fifo_named_like_a_blob_in_a_directory_cache_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("cas/{}", "2".repeat(64));
    std::fs::create_dir_all(dir.path().join("cas")).unwrap();
    nix::unistd::mkfifo(
        &dir.path().join(&name),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let b = backend::open(&format!("file://{}", dir.path().display())).unwrap();
    let err = b.get(&name).unwrap_err();
    let mut chain = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        chain.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(chain.contains("not a regular file"), "{chain}");
    assert!(!b.head(&name).unwrap());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Another checkout of this repository ("another host"): a clone at another path with the
/// working tree's uncommitted changes applied, so that both checkouts hold the same manifests
/// and elements and name the same commit (`-dirty` or not), and a store of its own.
pub(crate) struct Checkout {
    pub env: Env,
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Checkout {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        let git = |dir: &Path, args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let here = repo();
        git(
            &here,
            &["clone", "-q", "--shared", ".", root.to_str().unwrap()],
        );
        let changes = git(&here, &["diff", "--binary", "HEAD"]);
        if !changes.is_empty() {
            let patch = dir.path().join("working-tree.patch");
            std::fs::write(&patch, changes).unwrap();
            git(
                &root,
                &["apply", "--whitespace=nowarn", patch.to_str().unwrap()],
            );
        }
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    pub fn ccb(&self, rest: &[&str]) -> Run {
        let mut args = vec!["--root", self.root.to_str().unwrap()];
        args.extend_from_slice(rest);
        self.env.run(&args)
    }

    fn spawn(&self, rest: &[&str]) -> Child {
        self.env
            .cmd()
            .args(["--root", self.root.to_str().unwrap()])
            .args(rest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// Host A of the CC-Debian12 farm (the store that has just built the image) uploads its
/// results to the shared cache: killed -9 in the middle of the upload, the server holds no
/// entry without its data; run again, base, layer and disk are all there.
pub(crate) fn debian12_host_a_uploads(a: &Env, root: &str, nginx: &Nginx) {
    let args = [
        "--root",
        root,
        "build",
        "//images:debian12",
        "--arch",
        "amd64",
        "--remote-cache",
        &nginx.url,
        "--remote-cache-upload",
        "--format",
        "json",
    ];
    let child = a
        .cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first upload", Duration::from_secs(600), || {
        has_entries(&nginx.data().join("cas"))
    });
    // Some chunks are on the server, not all: the middle of the base's upload.
    std::thread::sleep(Duration::from_secs(2));
    kill9(child);
    cache_is_consistent(&nginx.data());
    a.run(&["cache", "verify"]).ok();

    let upload = a.run(&args).ok();
    assert!(ran(&upload).is_empty(), "A had built everything already");
    let report = upload.json();
    assert!(
        report["remote"]["uploaded"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        cache_is_consistent(&nginx.data()) >= 3,
        "base, layer and disk are on the server"
    );
}

/// Host B of the CC-Debian12 farm: another checkout at another path with another store builds
/// CC-Debian12-Devtools from A's cache. Killed -9 while it downloads, its store stays whole;
/// run again, it downloads A's base and layer and runs only the devtools layer and disk. Then
/// it publishes both images, the parent's disk coming from the cache, building nothing.
pub(crate) fn debian12_host_b_builds_devtools_from_the_cache(url: &str) {
    let b = Checkout::new("elsewhere/host-b");
    let build = [
        "build",
        "//images:debian12-devtools",
        "--arch",
        "amd64",
        "--remote-cache",
        url,
        "--format",
        "json",
    ];
    let child = b.spawn(&build);
    // B's first work is downloading A's base: a working directory now is a download's.
    wait_until("a download", Duration::from_secs(600), || {
        has_entries(&b.env.cache.path().join("tmp"))
    });
    std::thread::sleep(Duration::from_secs(2));
    kill9(child);
    b.ccb(&["cache", "verify"]).ok();

    let second = b.ccb(&build).ok();
    assert_eq!(
        ran(&second),
        [
            "layer:debian12-devtools:amd64",
            "disk:debian12-devtools:amd64"
        ],
        "{}",
        second.stderr
    );
    let st = statuses(&second);
    for id in ["base:debian12:amd64", "layer:debian12:amd64"] {
        assert!(
            st.iter()
                .any(|(i, s)| i == id && (s == "cached (remote)" || s == "cached")),
            "{id} did not come from A: {st:?}"
        );
    }
    assert!(
        st.contains(&("layer:debian12:amd64".into(), "cached (remote)".into())),
        "A's layer is downloaded on the second run: {st:?}"
    );
    assert!(second.json()["remote"]["bytes_down"].as_u64().unwrap() > 100 << 20);
    b.ccb(&["cache", "verify"]).ok();

    let publish = b
        .ccb(&[
            "publish",
            "//images:debian12",
            "//images:debian12-devtools",
            "--arch",
            "amd64",
            "--site",
            "local",
            "--scope",
            "farm",
            "--remote-cache",
            url,
        ])
        .ok();
    assert!(
        publish
            .stderr
            .contains("cached (remote) disk:debian12:amd64"),
        "{}",
        publish.stderr
    );
    assert!(!publish.stderr.contains("built "), "{}", publish.stderr);
    let published = walk(&b.root.join("out/publish/farm"));
    for name in ["CC-Debian12.qcow2", "CC-Debian12-Devtools.qcow2"] {
        assert!(published.iter().any(|p| p.ends_with(name)), "{published:?}");
    }
}
