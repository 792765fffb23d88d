//! Hostile or careless input ([9/9]): an image is the image's business, the host is not (ccb
//! writes into image trees from the host: install-static, install-bin, the chroot's
//! policy-rc.d and dpkg settings; links inside the image must resolve inside it, as after
//! `chroot`); bad input at the command line and in the store is refused or survived with a
//! clear message, never a panic, a hang, a printed secret, or removing what was not asked for.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Env, copy_tree, repo, script, write};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The layered fixture plus a child whose elements plant links to host directories, and a
/// grandchild built on top of those links.
struct HostileProject {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl HostileProject {
    fn new(host_static: &Path, host_dpkg: &Path, marker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        let el = root.join("elements/tiny-hostile");
        write(el.join("README.rst"), "Plants links to host directories.\n");
        write(el.join("element-deps"), "install-static\n");
        // Runs in the chroot before install-static: an absolute link to a directory that
        // exists on the host (and not in the image), and dpkg's configuration directory
        // turned into one.
        script(
            el.join("install.d/05-plant-links"),
            &format!(
                "#!/bin/bash\nset -eu\nmkdir -p /opt\nln -s {} /opt/escape\n\
                 rm -rf /etc/dpkg/dpkg.cfg.d\nln -s {} /etc/dpkg/dpkg.cfg.d\n",
                host_static.display(),
                host_dpkg.display()
            ),
        );
        // /var/run is a link to /run in every Debian base.
        write(el.join("static/var/run").join(marker), "inside the image\n");
        write(el.join("static/opt/escape/owned"), "inside the image\n");
        let next = root.join("elements/tiny-after");
        write(
            next.join("README.rst"),
            "Builds on a tree with hostile links.\n",
        );
        script(
            next.join("install.d/30-after"),
            "#!/bin/bash\nset -eu\necho after > /etc/tiny-after\n",
        );
        let images = root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        let text = text.trim_end().trim_end_matches('}').to_string()
            + r#"  tiny-hostile = { name = "Tiny-Hostile", description = "links to the host", from = "tiny", elements = ["tiny-hostile"] },
  tiny-after = { name = "Tiny-After", description = "on top of them", from = "tiny-hostile", elements = ["tiny-after"] },
}
"#;
        std::fs::write(&images, text).unwrap();
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    fn build_layers(&self, target: &str) -> crate::common::Run {
        let elements = repo().join("elements");
        self.env.run(&[
            "--root",
            self.root.to_str().unwrap(),
            "build",
            target,
            "--until",
            "layer",
            "--format",
            "json",
            "--element-path",
            elements.to_str().unwrap(),
        ])
    }

    fn layer_tree(&self, id: &str) -> PathBuf {
        self.env.layer_tree(id)
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn links_in_an_image_never_lead_the_builds_writes_onto_the_host() {
    assert!(is_root(), "builds root filesystems: run as root");
    let host_static = tempfile::tempdir_in("/var/tmp").unwrap();
    let host_dpkg = tempfile::tempdir_in("/var/tmp").unwrap();
    let marker = format!("ccb-escape-{}", std::process::id());
    let p = HostileProject::new(host_static.path(), host_dpkg.path(), &marker);

    p.build_layers("tiny-after").ok();

    assert!(
        !Path::new("/run").join(&marker).exists(),
        "static/var/run/{marker} was written into the host's /run"
    );
    assert_eq!(
        entries(host_static.path()),
        Vec::<String>::new(),
        "install-static wrote through the image's absolute link"
    );
    assert_eq!(
        entries(host_dpkg.path()),
        Vec::<String>::new(),
        "the chroot's dpkg settings were written through the image's link"
    );
    // Where the files went instead: the image's own /run and /opt/escape.
    let hostile = p.layer_tree("layer:tiny-hostile:amd64");
    assert_eq!(
        std::fs::read_to_string(hostile.join("run").join(&marker)).unwrap(),
        "inside the image\n"
    );
    assert!(hostile.join("opt/escape/owned").is_file());
    let after = p.layer_tree("layer:tiny-after:amd64");
    assert!(after.join("etc/tiny-after").is_file());

    // A store damaged under ccb (a truncated layer.json, a corrupt action record) is a miss:
    // the layer is built again, not reported "cached" and then missing.
    let layer_json = after.parent().unwrap().join("layer.json");
    std::fs::write(&layer_json, "{\"key\": ").unwrap();
    let hostile_key = hostile.parent().unwrap().file_name().unwrap().to_owned();
    let record = p
        .env
        .cache
        .path()
        .join("actions")
        .join(format!("{}.json", hostile_key.to_string_lossy()));
    std::fs::write(&record, "not json").unwrap();
    let again = p.build_layers("tiny-after").ok().json();
    let status = |id: &str| {
        again["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .map(|a| a["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("layer:tiny:amd64"), "cached");
    assert_eq!(status("layer:tiny-hostile:amd64"), "built");
    assert_eq!(status("layer:tiny-after:amd64"), "built");
}

/// Runs ccb and waits at most `limit`: a hang is a failure of its own, not a stuck suite.
fn run_within(env: &Env, args: &[&str], limit: std::time::Duration) -> crate::common::Run {
    run_cmd_within(env.cmd(), args, limit)
}

fn run_cmd_within(
    mut cmd: std::process::Command,
    args: &[&str],
    limit: std::time::Duration,
) -> crate::common::Run {
    use std::process::Stdio;
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ccb {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap().into()
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn a_fifo_as_an_image_or_a_backing_file_is_refused_instead_of_waiting_for_a_writer() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top.qcow2");
    // -u: qemu-img does not open the backing file (it would block on the FIFO too).
    let st = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-b", "back.raw", "-F", "raw",
        ])
        .arg(&top)
        .arg("1M")
        .status()
        .expect("qemu-img is installed");
    assert!(st.success());
    mkfifo(&dir.path().join("back.raw"));
    let limit = std::time::Duration::from_secs(30);
    run_within(&env, &["inspect", "ls", top.to_str().unwrap(), "/"], limit)
        .fails()
        .stderr_has("not a regular file");
    let fifo = dir.path().join("image.raw");
    mkfifo(&fifo);
    run_within(&env, &["inspect", "ls", fifo.to_str().unwrap(), "/"], limit)
        .fails()
        .stderr_has("not a regular file");
}

#[test]
fn a_fifo_as_a_file_artifact_is_refused_and_leaves_nothing_in_the_store() {
    let f = crate::distros::Fixture::new();
    let fifo = f.served.join("tool.fifo");
    mkfifo(&fifo);
    write(
        f.project.join("manifests/artifacts.ncl"),
        &format!(
            "{{ tool = {{ url = \"file://{}\", sha256 = \"{}\" }} }}\n",
            fifo.display(),
            "0".repeat(64)
        ),
    );
    let centos = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &centos,
        "  tool = { name = \"Tool\", from = \"fake-ubuntu\", elements = [\"ubuntu\"], artifacts = { TOOL = \"tool\" } },\n",
    );
    let elements = repo().join("elements");
    let root = f.project.to_str().unwrap();
    let args = [
        "--root",
        root,
        "fetch",
        "tool",
        "--element-path",
        elements.to_str().unwrap(),
    ];
    run_within(&f.env, &args, std::time::Duration::from_secs(60))
        .fails()
        .stderr_has("not a regular file");
    let artifacts = f.env.cache.path().join("artifacts");
    let left: Vec<String> = std::fs::read_dir(&artifacts)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".fetch-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(left, Vec::<String>::new(), "a half-fetched file was left");
}

/// A Keystone + Swift that echo what they are sent, as some proxies and debug builds do: a
/// 401 quoting the token request (the password in it), a 403 quoting the request headers
/// (the token in them). Served on 127.0.0.1 by Python's http.server.
const ECHO_SERVER: &str = r#"
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body, headers=()):
        data = body.encode()
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(data)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        if self.path.startswith("/refuse/"):
            msg = "The request you have made requires authentication: " + body
            self.reply(401, json.dumps({"error": {"code": 401, "message": msg}}))
            return
        port = self.server.server_address[1]
        doc = {"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "catalog": [
            {"type": "object-store", "name": "swift", "endpoints": [
                {"interface": "public", "region": "RegionOne", "region_id": "RegionOne",
                 "url": "http://127.0.0.1:%d/v1/AUTH_echo" % port}]}]}}
        self.reply(201, json.dumps(doc), [("X-Subject-Token", "gAAAAAechoed-token-31337")])
    def echo(self):
        self.reply(403, "Forbidden. You sent:\n" + "".join("%s: %s\n" % kv for kv in self.headers.items()))
    do_GET = do_HEAD = do_PUT = do_DELETE = echo
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct EchoServer {
    child: std::process::Child,
    port: u16,
}

impl EchoServer {
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", ECHO_SERVER])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is installed");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .expect("the echo server prints its port");
        Self { child, port }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn servers_that_echo_passwords_tokens_and_url_credentials_never_get_them_printed() {
    let server = EchoServer::start();
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    write(
        &clouds,
        &format!(
            "clouds:\n\
             \x20 refuse:\n    auth:\n      auth_url: http://keystone-user:url-secret-8086@127.0.0.1:{port}/refuse/v3\n      username: demo\n      password: echoed-password-5150\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n\
             \x20 accept:\n    auth:\n      auth_url: http://127.0.0.1:{port}/accept/v3\n      username: demo\n      password: echoed-password-5150\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n"
        ),
    );
    write(dir.path().join("manifests/images.ncl"), "{}\n");
    write(
        dir.path().join("manifests/sites.ncl"),
        "{\n  refuse = { name = \"Refuse\", baremetal = true, kind = 'swift, cloud = \"refuse\", container = \"c\" },\n  accept = { name = \"Accept\", baremetal = true, kind = 'swift, cloud = \"accept\", container = \"c\" },\n}\n",
    );
    let env = Env::new();
    let mut outputs = Vec::new();
    for site in ["refuse", "accept"] {
        for format in ["text", "json"] {
            let out = env
                .cmd()
                .env("OS_CLIENT_CONFIG_FILE", &clouds)
                .args([
                    "--root",
                    dir.path().to_str().unwrap(),
                    "-vv",
                    "versions",
                    "list",
                ])
                .args(["--site", site, "--scope", "prod", "--format", format])
                .output()
                .unwrap();
            assert!(!out.status.success(), "the {site} site must fail");
            outputs.push((
                format!("{site} {format}"),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            ));
        }
    }
    // The failures are still explained.
    assert!(
        outputs[0].1.contains("refused the credentials"),
        "{}",
        outputs[0].1
    );
    assert!(outputs[2].1.contains("403"), "{}", outputs[2].1);
    for (what, out) in &outputs {
        for secret in [
            "echoed-password-5150",
            "gAAAAAechoed-token-31337",
            "url-secret-8086",
            "keystone-user:",
        ] {
            assert!(!out.contains(secret), "{what}: `{secret}` printed:\n{out}");
        }
    }
}

#[test]
fn an_env_setting_that_would_break_every_script_is_a_usage_error_before_anything_runs() {
    let env = Env::new();
    let project = repo().join("examples/nickel-project");
    let root = project.to_str().unwrap();
    // (A value over the kernel's limit cannot even reach ccb's own command line; the
    // manifests' case is in tests/bad-manifests/env-value-too-long.)
    for (setting, says) in [
        ("PATH=/opt/evil", "`PATH` is reserved"),
        ("BASH_ENV=/tmp/x", "`BASH_ENV` is reserved"),
    ] {
        let run = env.run(&["--root", root, "build", "--dry-run", "--env", setting]);
        assert_eq!(
            run.code,
            2,
            "--env {}: {}",
            &setting[..12.min(setting.len())],
            run.stderr
        );
        run.stderr_has(says);
    }
}

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

/// A copy of the Nickel example whose images.ncl is `images`.
fn example_with_images(images: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    copy_tree(&repo().join("examples/nickel-project"), &root);
    write(root.join("manifests/images.ncl"), images);
    (dir, root)
}

#[test]
fn a_manifest_that_recurses_without_end_stops_at_the_memory_limit_naming_the_manifests() {
    let env = Env::new();
    let (_dir, root) = example_with_images(
        "let rec deeper = fun n => [n] @ deeper (n + 1) in\n\
         { boom = { name = \"Boom\", elements = deeper 0 } }\n",
    );
    let mut cmd = env.cmd();
    cmd.env("CCB_EVAL_MEMORY", "300M");
    let run = run_cmd_within(
        cmd,
        &["--root", root.to_str().unwrap(), "check"],
        std::time::Duration::from_secs(120),
    )
    .fails();
    run.stderr_has("evaluating the manifests")
        .stderr_has("`manifests/images.ncl`")
        .stderr_has("needed more than 300 MiB of memory")
        .stderr_has("CCB_EVAL_MEMORY");
}

#[test]
fn a_manifest_that_never_ends_stops_at_the_time_limit_naming_the_manifests() {
    let env = Env::new();
    let (_dir, root) = example_with_images(
        "let rec spin = fun n => spin (n + 1) in\n\
         { boom = { name = \"Boom\", elements = spin 0 } }\n",
    );
    let mut cmd = env.cmd();
    cmd.env("CCB_EVAL_TIMEOUT", "2");
    let run = run_cmd_within(
        cmd,
        &["--root", root.to_str().unwrap(), "check"],
        std::time::Duration::from_secs(60),
    )
    .fails();
    run.stderr_has("`manifests/images.ncl`")
        .stderr_has("did not finish within 2 s")
        .stderr_has("CCB_EVAL_TIMEOUT");
}

#[test]
fn the_limits_themselves_are_checked() {
    let env = Env::new();
    let root = repo().join("examples/nickel-project");
    let mut cmd = env.cmd();
    cmd.env("CCB_EVAL_MEMORY", "lots");
    run_cmd_within(
        cmd,
        &["--root", root.to_str().unwrap(), "check"],
        std::time::Duration::from_secs(60),
    )
    .fails()
    .stderr_has("CCB_EVAL_MEMORY=\"lots\" is not a size");
    // environment.d's limits too: a typo must not quietly give the default.
    for (var, value, expected) in [
        (
            "CCB_ENVIRONMENT_TIMEOUT",
            "soon",
            "is not a number of seconds",
        ),
        (
            "CCB_ENVIRONMENT_MEMORY",
            "1K",
            "is not a size of at least 64M",
        ),
    ] {
        let mut cmd = env.cmd();
        cmd.env(var, value);
        run_cmd_within(
            cmd,
            &["--root", root.to_str().unwrap(), "check"],
            std::time::Duration::from_secs(60),
        )
        .fails()
        .stderr_has(&format!("{var}=\"{value}\" {expected}"));
    }
}

/// Host processes whose command line is exactly `words`.
fn processes_running(words: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = words
        .iter()
        .flat_map(|w| [w.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| {
            !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        })
        .collect()
}

#[test]
fn an_environment_d_that_escapes_into_its_own_session_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    copy_tree(&repo().join("examples/nickel-project"), &root);
    // Neither the process group nor the session holds it, and it keeps the shell's stdout
    // and stderr open.
    write(
        root.join("elements/tinyos/environment.d/20-daemon.bash"),
        "setsid sleep 1013 &\n",
    );
    let run = run_within(
        &env,
        &["--root", root.to_str().unwrap(), "check"],
        std::time::Duration::from_secs(120),
    );
    // Everything in the namespace is gone once ccb has reaped its PID 1; a moment for /proc.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let left = processes_running(&["sleep", "1013"]);
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    run.ok();
    assert!(left.is_empty(), "environment.d left {left:?} running");
}

#[test]
fn inspect_by_url_never_prints_the_urls_password_or_signature() {
    let env = Env::new();
    let p = crate::inspect::project();
    let nginx = crate::common::Nginx::start();
    let raw = crate::inspect::disk(p.path(), "CC-Test", 0o755, "2.36-9");
    let versions = nginx.root().join("c/prod/versions/v1");
    std::fs::create_dir_all(&versions).unwrap();
    crate::inspect::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&raw)
            .arg(versions.join("CC-Test.qcow2")),
    );
    write(
        nginx.root().join("c/prod/current"),
        r#"{"CC-Test": "v1", "CC-Gone": "v2"}"#,
    );
    let password = "pa55word";
    let signature = "s1gnature";
    let base = format!(
        "{}/c",
        nginx
            .base
            .replace("http://", &format!("http://ccb:{password}@"))
    );
    let inspect = |url: &str, image: &str, json: bool| {
        let mut args = vec![
            "--root",
            p.path().to_str().unwrap(),
            "inspect",
            "--url",
            url,
            "--scope",
            "prod",
            image,
        ];
        if json {
            args.extend(["--format", "json"]);
        }
        let run = env.run(&args);
        for out in [&run.stdout, &run.stderr] {
            assert!(!out.contains(password), "the password was printed: {out}");
            assert!(!out.contains(signature), "the signature was printed: {out}");
        }
        run
    };

    // Success: the report names the object it read, without the password.
    let run = inspect(&base, "CC-Test", true).ok().json();
    assert_eq!(run["passed"], true, "{run}");
    let source = run["images"][0]["source"].as_str().unwrap();
    assert!(source.starts_with("http://***@127.0.0.1"), "{source}");
    let text = inspect(&base, "CC-Test", false).ok();
    assert!(
        text.stdout.contains("http://***@127.0.0.1"),
        "{}",
        text.stdout
    );

    // Errors: an image with no object, a scope the server does not have, a signed URL.
    inspect(&base, "CC-Gone", false)
        .fails()
        .stderr_has("no qcow2 or raw object at http://***@127.0.0.1");
    inspect(&format!("{base}/nowhere"), "CC-Test", false)
        .fails()
        .stderr_has("http://***@127.0.0.1");
    inspect(
        &format!("{base}?temp_url_sig={signature}&temp_url_expires=1"),
        "CC-Test",
        true,
    )
    .fails()
    .stderr_has("temp_url_sig=***");
}

/// A user without privileges runs ccb: the mount namespace that makes the host read-only for
/// `environment.d` needs root, so Landlock stands in for it. The fragment reads and runs what
/// it likes and writes to a temporary file of its own (a here-document too large for a pipe),
/// but nothing it writes outside reaches the host: not /tmp (writable by everyone), not the
/// store, not the element itself.
#[test]
fn an_environment_d_run_by_a_user_without_privileges_writes_nothing_to_the_host() {
    assert!(
        is_root(),
        "the test drops to an unprivileged user (scripts/test runs as root)"
    );
    let nobody = "65534";
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    // ccb itself where the user can run it, and a store the user owns.
    let ccb = top.join("ccb");
    std::fs::copy(env!("CARGO_BIN_EXE_ccb"), &ccb).unwrap();
    let store = top.join("store");
    std::fs::create_dir(&store).unwrap();
    std::os::unix::fs::chown(&store, Some(65534), Some(65534)).unwrap();
    let elements = top.join("elements");
    crate::common::os_element(&elements, "os");
    let escape = std::path::PathBuf::from(format!("/tmp/ccb-escape-{}", std::process::id()));
    let inside = elements.join("a/written-by-a-fragment");
    let fragment = format!(
        "for f in {escape} {inside} {store}/planted; do\n\
         \x20   {{ echo escaped > \"$f\"; }} 2>/dev/null || echo \"refused: $f\" >&2\n\
         done\n\
         big=$(cat <<DOC\n{doc}\nDOC\n)\n\
         export BIG_LEN=${{#big}} QUIET=$(ls /nonexistent 2>/dev/null || echo quiet)\n",
        escape = escape.display(),
        inside = inside.display(),
        store = store.display(),
        doc = "x".repeat(200_000),
    );
    write(elements.join("a/README.rst"), "a\n");
    write(elements.join("a/environment.d/20-write"), &fragment);
    // Writable by the user but for the confinement: the element's directory, like /tmp.
    std::fs::set_permissions(elements.join("a"), std::fs::Permissions::from_mode(0o777)).unwrap();

    let out = Command::new("setpriv")
        .args(["--reuid", nobody, "--regid", nobody, "--clear-groups", "--"])
        .arg(&ccb)
        .args(["query", "elements", "--format", "json", "--element-path"])
        .arg(&elements)
        .args(["-e", "os", "a"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CCB_CACHE_DIR", &store)
        .env("NO_COLOR", "1")
        .current_dir("/")
        .output()
        .unwrap();
    let escaped = [&escape, &inside, &store.join("planted")]
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>();
    let _ = std::fs::remove_file(&escape);
    assert!(escaped.is_empty(), "environment.d wrote {escaped:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["env"]["BIG_LEN"], "200000", "{j}");
    assert_eq!(j["env"]["QUIET"], "quiet", "{j}");
}
