//! Remote builders, for real: a second "host" on this machine is a network namespace with its
//! own address (a veth pair), an sshd in it (Debian's openssh-server, a test host key and
//! authorized key) and its own store. The shared cache is nginx with WebDAV on the host's end
//! of the pair; the same nginx proxies the host's Debian mirror, the namespace's only way out
//! (its apt sources are bind-mounted in its private mount namespace). Everything is torn down
//! when the test ends, passed or failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Env, Run, copy_tree, repo, row, wait_until};

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The host's Debian mirrors (the archive and its security suite), from its apt sources: the
/// namespace reaches them through nginx.
fn host_mirrors() -> (String, String) {
    let mut uris = Vec::new();
    for f in std::fs::read_dir("/etc/apt/sources.list.d")
        .unwrap()
        .filter_map(Result::ok)
    {
        let name = f.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sources") {
            continue;
        }
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        for l in text.lines() {
            if let Some(u) = l.strip_prefix("URIs:") {
                uris.extend(
                    u.split_whitespace()
                        .map(|s| s.trim_end_matches('/').to_string()),
                );
            }
        }
    }
    let main = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .expect("an apt source for Debian")
        .clone();
    let security = uris
        .iter()
        .find(|u| u.ends_with("/debian-security"))
        .cloned()
        .unwrap_or_else(|| format!("{main}-security"));
    (main, security)
}

/// The second host: a namespace, its sshd, and the cache + mirror proxy on the host side.
struct Farm {
    dir: tempfile::TempDir,
    ns: String,
    veth: String,
    host_ip: String,
    builder_ip: String,
    nginx: Option<Child>,
    sshd: Option<Child>,
    cache: String,
    builder_store: tempfile::TempDir,
    /// Unique to this farm among every test of every process: names, subnet and port.
    slot: u32,
}

/// Farms of one test process, which run side by side (the test harness's threads).
static FARMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Farm {
    fn start() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "network namespaces and sshd need root (scripts/test runs as root)"
        );
        let n = FARMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4;
        let id = format!("{}x{n}", std::process::id());
        let slot = (std::process::id() % 50) * 4 + n;
        let net = 16 + slot;
        let dir = tempfile::tempdir().unwrap();
        let builder_store = tempfile::Builder::new()
            .prefix("builders-remote-store-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut farm = Farm {
            ns: format!("ccbb{id}"),
            veth: format!("ccbv{id}"),
            host_ip: format!("10.211.{net}.1"),
            builder_ip: format!("10.211.{net}.2"),
            nginx: None,
            sshd: None,
            cache: String::new(),
            builder_store,
            dir,
            slot,
        };
        // From here on, Drop tears down whatever was made.
        let (ns, veth, peer) = (&farm.ns, &farm.veth, format!("{}p", farm.veth));
        sh(Command::new("ip").args(["netns", "add", ns]));
        sh(Command::new("ip").args([
            "link", "add", veth, "type", "veth", "peer", "name", &peer, "netns", ns,
        ]));
        sh(Command::new("ip").args(["addr", "add", &format!("{}/30", farm.host_ip), "dev", veth]));
        sh(Command::new("ip").args(["link", "set", veth, "up"]));
        let in_ns = |args: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
            sh(&mut c);
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", farm.builder_ip),
            "dev",
            &peer,
        ]);
        in_ns(&["ip", "link", "set", &peer, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        farm.start_nginx();
        farm.start_sshd();
        farm
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_nginx(&mut self) {
        let port = 18000 + self.slot;
        let d = self.dir.path().join("nginx");
        std::fs::create_dir_all(d.join("data/cache")).unwrap();
        let (main, security) = host_mirrors();
        let p = d.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{\n    listen {ip}:{port};\n    root {p}/data;\n\
             client_max_body_size 0;\n    location /cache/ {{\n      dav_methods PUT;\n\
             create_full_put_path on;\n    }}\n    proxy_http_version 1.1;\n\
             location /debian/ {{ proxy_pass {main}/; }}\n\
             location /debian-security/ {{ proxy_pass {security}/; }}\n  }}\n}}\n",
            ip = self.host_ip
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (Debian's nginx package)");
        self.nginx = Some(child);
        let ip = self.host_ip.clone();
        wait_until("nginx to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect((ip.as_str(), port as u16)).is_ok()
        });
        // Credentials in the URL: nginx ignores them, ccb must never show them.
        self.cache = format!("http://farmer:s3cr3t-pw@{}:{port}/cache", self.host_ip);
        // The namespace's apt sources: the host's mirrors through nginx.
        std::fs::create_dir_all(self.p("apt-sources")).unwrap();
        std::fs::write(
            self.p("apt-sources/debian.sources"),
            format!(
                "Types: deb\nURIs: http://{ip}:{port}/debian\nSuites: bookworm bookworm-updates\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                 Types: deb\nURIs: http://{ip}:{port}/debian-security\nSuites: bookworm-security\n\
                 Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
                ip = self.host_ip
            ),
        )
        .unwrap();
    }

    fn start_sshd(&mut self) {
        for (key, file) in [("host", "host_key"), ("client", "id"), ("stranger", "id2")] {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(self.p(file)));
        }
        std::fs::copy(self.p("id.pub"), self.p("authorized_keys")).unwrap();
        let host_pub = std::fs::read_to_string(self.p("host_key.pub")).unwrap();
        std::fs::write(
            self.p("known_hosts"),
            format!("{} {host_pub}", self.builder_ip),
        )
        .unwrap();
        for (cfg, id) in [("ssh_config", "id"), ("ssh_config_stranger", "id2")] {
            std::fs::write(
                self.p(cfg),
                format!(
                    "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                     StrictHostKeyChecking yes\n  ConnectTimeout 5\n",
                    self.p(id).display(),
                    self.p("known_hosts").display()
                ),
            )
            .unwrap();
        }
        std::fs::write(
            self.p("sshd_config"),
            format!(
                "ListenAddress {}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 SetEnv CCB_CACHE_DIR={}\n",
                self.builder_ip,
                self.p("host_key").display(),
                self.p("sshd.pid").display(),
                self.p("authorized_keys").display(),
                self.builder_store.path().display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        // A private mount namespace inside the network namespace: the builder's apt sources
        // point at the proxy, the host's own stay as they are.
        // `hidden/` (this host's git upstreams) is an empty tmpfs there: the builder gets what
        // this host fetched from the bundle and the cache, or nothing.
        std::fs::create_dir_all(self.p("hidden")).unwrap();
        let script = format!(
            "mount --make-rprivate / && mount --bind {src} /etc/apt/sources.list.d && \
             mount -t tmpfs ccb-hidden {hidden} && exec /usr/sbin/sshd -D -e -f {cfg}",
            src = self.p("apt-sources").display(),
            hidden = self.p("hidden").display(),
            cfg = self.p("sshd_config").display()
        );
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "unshare", "-m", "sh", "-c", &script,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.p("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        self.sshd = Some(child);
        let ip = self.builder_ip.clone();
        let log = self.p("sshd.log");
        wait_until("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect((ip.as_str(), 22)).is_ok() || panic_if_dead(&log)
        });
    }

    /// A builder URL for this farm's sshd running `program`.
    fn builder(&self, user: &str, program: &str) -> String {
        format!("ssh://{user}@{}{program}", self.builder_ip)
    }

    /// The processes of the namespace.
    fn pids(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Bundles of inputs the builder's store holds.
    fn bundles(&self) -> usize {
        std::fs::read_dir(self.builder_store().join("bundles")).map_or(0, |d| d.count())
    }

    fn builder_store(&self) -> &Path {
        self.builder_store.path()
    }
}

fn panic_if_dead(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("fatal"), "sshd: {text}");
    false
}

impl Drop for Farm {
    fn drop(&mut self) {
        for c in [self.sshd.as_mut(), self.nginx.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The sshd's sessions (a builder's ccb) die with the namespace's processes.
        for pid in self.pids() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for _ in 0..50 {
            if self.pids().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A checkout of the layered fixture whose project lists `builders` for amd64.
struct Project {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
    ssh: String,
}

impl Project {
    fn new(farm: &Farm, builder: &str, ssh_config: &str) -> Self {
        Self::with_builders(farm, &[builder], ssh_config)
    }

    fn with_builders(farm: &Farm, builders: &[&str], ssh_config: &str) -> Self {
        Self::for_arch(farm, "amd64", builders, ssh_config)
    }

    /// The project with `builders` for `arch`, its images built for `arch` only.
    fn for_arch(farm: &Farm, arch: &str, builders: &[&str], ssh_config: &str) -> Self {
        let builders = builders
            .iter()
            .map(|b| format!("\"{b}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("here");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        let images = root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        assert!(text.contains("arch = ['amd64],"));
        std::fs::write(
            &images,
            // Every image of the chain: a child names its arches too.
            text.replace("arch = ['amd64],", &format!("arch = ['{arch}],"))
                .replace(
                    "from = \"tiny\",",
                    &format!("from = \"tiny\",\n    arch = ['{arch}],"),
                ),
        )
        .unwrap();
        std::fs::write(
            root.join("manifests/project.ncl"),
            format!(
                "{{\n  build_repo = \"https://github.com/ChameleonCloud/cc-images\",\n  \
                 builders = {{ {arch} = [{builders}] }},\n}}\n"
            ),
        )
        .unwrap();
        // A git checkout: the disk records its commit, which the builder (no checkout, only
        // the bundle) must know for its key to be this host's.
        for args in [
            &["init", "-q"][..],
            &["add", "-A"],
            &["commit", "-q", "-m", "the project"],
        ] {
            sh(Command::new("git")
                .args([
                    "-c",
                    "user.name=ccb",
                    "-c",
                    "user.email=ccb@example.invalid",
                ])
                .arg("-C")
                .arg(&root)
                .args(args));
        }
        Self {
            env: Env::new(),
            _dir: dir,
            root,
            ssh: format!("ssh -F {}", farm.p(ssh_config).display()),
        }
    }

    /// git HEAD of the checkout.
    fn commit(&self) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn cmd(&self, farm: &Farm, rest: &[&str]) -> Command {
        self.cmd_in(&self.env, farm, rest)
    }

    /// [`Project::cmd`] with the local store of `env` (another host's, same checkout).
    fn cmd_in(&self, env: &Env, farm: &Farm, rest: &[&str]) -> Command {
        let mut c = env.cmd();
        c.arg("--root")
            .arg(&self.root)
            .args(["--remote-cache", &farm.cache])
            .args(rest)
            .env("CCB_SSH_COMMAND", &self.ssh);
        if rest.iter().any(|a| matches!(*a, "build" | "query")) {
            c.arg("--element-path").arg(repo().join("elements"));
        }
        c
    }

    fn ccb(&self, farm: &Farm, rest: &[&str]) -> Run {
        self.ccb_in(&self.env, farm, rest)
    }

    fn ccb_in(&self, env: &Env, farm: &Farm, rest: &[&str]) -> Run {
        let run: Run = self.cmd_in(env, farm, rest).output().unwrap().into();
        for secret in ["s3cr3t-pw", "PRIVATE KEY"] {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "a secret in the output:\n{}\n{}",
                run.stdout,
                run.stderr
            );
        }
        run
    }
}

/// `tiny-sourced`: tiny plus an element of a locked git source (upstream in the farm's
/// `hidden/`), one of a plain local source (`vendor/` in the project) and an artifact served
/// by a server on this host's loopback (which counts its requests).
struct SourcedProject {
    server: Child,
    log: PathBuf,
}

impl SourcedProject {
    fn add(farm: &Farm, p: &Project) -> Self {
        let git = |dir: &Path, args: &[&str]| {
            sh(Command::new("git")
                .args([
                    "-c",
                    "user.name=ccb",
                    "-c",
                    "user.email=ccb@example.invalid",
                ])
                .arg("-C")
                .arg(dir)
                .args(args));
        };
        let element = |dir: &Path, name: &str, script: &str| {
            let d = dir.join(name);
            std::fs::create_dir_all(d.join("extra-data.d")).unwrap();
            std::fs::write(d.join("README.rst"), format!("{name}\n")).unwrap();
            let f = d.join(format!("extra-data.d/50-{name}"));
            std::fs::write(&f, format!("#!/bin/bash\nset -eu\n{script}\n")).unwrap();
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        let up = farm.p("hidden/upstream");
        element(
            &up.join("elements"),
            "src-greet",
            "echo 'from git' > \"$TMP_MOUNT_PATH/etc/src-greeting\"",
        );
        git(&up, &["init", "-q", "-b", "main"]);
        git(&up, &["add", "-A"]);
        git(&up, &["commit", "-q", "-m", "greet"]);
        element(
            &p.root.join("vendor/elements"),
            "path-greet",
            "echo 'from a path' > \"$TMP_MOUNT_PATH/etc/path-greeting\"\n\
             cp \"$GREETING_FILE\" \"$TMP_MOUNT_PATH/etc/artifact-greeting\"",
        );
        let served = farm.p("served");
        std::fs::create_dir_all(&served).unwrap();
        std::fs::write(served.join("greeting.txt"), "from an artifact\n").unwrap();
        let sha = crate::distros::sha256(&served.join("greeting.txt"));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = farm.p("served.log");
        let server = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .arg("--directory")
            .arg(&served)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until("the artifact server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        std::fs::write(
            p.root.join("manifests/sources.ncl"),
            format!(
                "{{\n  upstream = {{ url = \"{}\", ref = \"main\", path = \"elements\" }},\n  \
                 vendored = {{ url = \"vendor\", ref = \"main\", path = \"elements\" }},\n}}\n",
                up.display()
            ),
        )
        .unwrap();
        std::fs::write(
            p.root.join("manifests/artifacts.ncl"),
            format!(
                "{{\n  greeting = {{ url = \"http://127.0.0.1:{port}/greeting.txt\", \
                 sha256 = \"{sha}\", description = \"a greeting\" }},\n}}\n"
            ),
        )
        .unwrap();
        let images = p.root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        let text = text.trim_end().trim_end_matches('}').to_string()
            + "  tiny-sourced = {\n    name = \"Tiny-Sourced\",\n    description = \"tiny plus \
               elements of two sources and an artifact\",\n    from = \"tiny\",\n    \
               elements = [\"src-greet\", \"path-greet\"],\n    \
               artifacts = { GREETING_FILE = \"greeting\" },\n  },\n}\n";
        std::fs::write(&images, text).unwrap();
        p.ccb(farm, &["update"]).ok();
        Self { server, log }
    }

    /// Requests the artifact server answered.
    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("GET /greeting.txt"))
            .count()
    }
}

impl Drop for SourcedProject {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn ccb_bin() -> String {
    env!("CARGO_BIN_EXE_ccb").to_string()
}

/// (id, status, from) of each action of a JSON build report.
fn rows(run: &Run) -> Vec<(String, String, String)> {
    run.json()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
                a["from"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn verify(store: &Path) {
    let run: Run = Command::new(ccb_bin())
        .args(["cache", "verify"])
        .env("CCB_CACHE_DIR", store)
        .output()
        .unwrap()
        .into();
    run.ok();
}

#[test]
fn a_builder_in_another_namespace_builds_what_this_host_sends_it() {
    let farm = Farm::start();
    let p = Project::new(&farm, &farm.builder("root", &ccb_bin()), "ssh_config");

    // Everything goes to the builder: this host runs nothing and gets the results through
    // the cache.
    let first = p
        .ccb(
            &farm,
            &[
                "--remote-builders-only",
                "build",
                "tiny",
                "--format",
                "json",
            ],
        )
        .ok();
    let r = rows(&first);
    assert_eq!(r.len(), 3, "{r:?}");
    for (id, status, from) in &r {
        assert_eq!(
            (status.as_str(), from.as_str()),
            ("cached", "builder"),
            "{id}"
        );
    }
    let builder = format!("ssh://root@{}", farm.builder_ip);
    for a in first.json()["actions"].as_array().unwrap() {
        assert_eq!(a["builder"], builder.as_str(), "{a}");
    }
    let local = p.env.cache.path();
    assert!(!local.join("checkpoints").exists(), "this host ran no step");
    let disk_key = first.json()["actions"][2]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(local.join(format!("outputs/{disk_key}.json")).is_file());
    // The builder's store holds the build (built there: not taken from a cache).
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            farm.builder_store()
                .join(format!("actions/{disk_key}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_ne!(rec["remote"], true, "{rec}");
    // Its disk records this checkout's commit (carried by the bundle): the same key, the
    // same provenance.
    let provenance: serde_json::Value = serde_json::from_slice(
        &std::fs::read(local.join(format!("outputs/{disk_key}/Tiny.d/Tiny_provenance.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(provenance["build-repo-commit"], p.commit().as_str());
    assert_eq!(
        provenance["build-repo"],
        "https://github.com/ChameleonCloud/cc-images"
    );
    // The three actions of one image share one bundle of inputs: sent once.
    assert_eq!(farm.bundles(), 1);
    // The builder's log streamed here, and kept as the action's log.
    first.stderr_has("disk:tiny:amd64 | ");
    first.stderr_has("built on ssh://root@");
    let log = std::fs::read_to_string(local.join(format!("logs/{disk_key}.log"))).unwrap();
    assert!(log.contains("remote cache:"), "{log}");
    p.ccb(&farm, &["cache", "verify"]).ok();
    verify(farm.builder_store());

    // A chunk of the disk's entry damaged on the server (same size: its HEAD still says it is
    // there). A host with an empty store misses the disk with a warning and sends it to the
    // builder, whose own store holds it already: the builder stores the entry again instead
    // of skipping what the server seems to have, so the disk arrives, sound.
    let victim = super::remote::chunks_of(&farm.p("nginx/data/cache"), "disk:tiny:amd64").remove(0);
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let other_host = Env::new();
    let repaired = p
        .ccb_in(
            &other_host,
            &farm,
            &[
                "--remote-builders-only",
                "build",
                "tiny",
                "--format",
                "json",
            ],
        )
        .ok();
    repaired.stderr_has("not taken from the remote cache");
    let r = rows(&repaired);
    assert!(
        r.iter().any(|(id, status, from)| id == "disk:tiny:amd64"
            && status == "cached"
            && from == "builder"),
        "{r:?}"
    );
    verify(other_host.cache.path());
    assert_eq!(
        farm.bundles(),
        1,
        "the disk's bundle is the one the builder holds"
    );

    // Killed -9 while the builder builds the child's layer: both stores stay whole, the
    // builder stops, and the next build succeeds.
    let hashes = p
        .ccb(&farm, &["query", "hash", "tiny-child", "--format", "json"])
        .ok()
        .json();
    let layer_key = row(&hashes["actions"], "layer:tiny-child:amd64")["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut child = p
        .cmd(
            &farm,
            &[
                "--remote-builders-only",
                "build",
                "tiny-child",
                "--format",
                "json",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The layer is small: its working directory may come and go between two looks, so
    // the layer already committed on the builder counts too (the assertions below accept a
    // kill that came after the layer was done).
    wait_until(
        "the builder to build the layer",
        Duration::from_secs(300),
        || {
            farm.builder_store()
                .join("layers")
                .join(&layer_key)
                .exists()
                || std::fs::read_dir(farm.builder_store().join("tmp")).is_ok_and(|mut d| {
                    d.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&layer_key))
                    })
                })
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    verify(p.env.cache.path());
    // The builder's build ends when its client goes: only the sshd is left in its namespace.
    wait_until("the builder to stop", Duration::from_secs(120), || {
        farm.pids().len() == 1
    });
    verify(farm.builder_store());
    let again = p
        .ccb(
            &farm,
            &[
                "--remote-builders-only",
                "build",
                "tiny-child",
                "--format",
                "json",
            ],
        )
        .ok();
    // The child's bundle, received before the kill, is not sent again.
    assert_eq!(farm.bundles(), 2);
    let r = rows(&again);
    // Built again by the builder, or, when the layer was done and uploaded before the kill
    // reached the builder through ssh (a few seconds of a busy host), taken from the cache.
    assert!(
        r.iter().any(|(id, _, from)| id == "layer:tiny-child:amd64"
            && (from == "builder" || from == "remote")),
        "{r:?}"
    );
    assert!(r.iter().all(|(_, s, _)| s == "cached"), "{r:?}");

    // The bundle is the action's inputs, whatever their place: an element of a locked git
    // source, one of a plain local source in the project, and an artifact, all of which only
    // this host can reach (the git upstream is hidden from the builder, the artifact served
    // on this host's loopback): the builder gets them from the bundle and the cache.
    let sourced = SourcedProject::add(&farm, &p);
    let run = p
        .ccb(
            &farm,
            &[
                "--remote-builders-only",
                "build",
                "tiny-sourced",
                "--format",
                "json",
            ],
        )
        .ok();
    let r = rows(&run);
    assert!(
        r.iter()
            .any(|(id, _, from)| id == "layer:tiny-sourced:amd64" && from == "builder"),
        "{r:?}"
    );
    let tree = p.env.layer_tree("layer:tiny-sourced:amd64");
    for (file, says) in [
        ("etc/src-greeting", "from git"),
        ("etc/path-greeting", "from a path"),
        ("etc/artifact-greeting", "from an artifact"),
    ] {
        let text = std::fs::read_to_string(tree.join(file)).unwrap_or_default();
        assert_eq!(text.trim(), says, "{file}");
    }
    // The artifact went through the cache: the builder never reached its server.
    assert_eq!(sourced.requests(), 1, "fetched once, by this host");
    drop(sourced);

    // A build that fails there fails here, with the builder's words.
    let failed = p
        .ccb(&farm, &["--remote-builders-only", "build", "tiny-fail"])
        .fails();
    failed.stderr_has("failed there");
}

#[test]
fn an_unreachable_builder_a_refused_login_and_another_version_are_clear_errors() {
    let farm = Farm::start();
    // Nobody listens on that port.
    let p = Project::new(
        &farm,
        &format!("ssh://root@{}:2/{}", farm.builder_ip, ccb_bin()),
        "ssh_config",
    );
    let run = p
        .ccb(&farm, &["--remote-builders-only", "build", "tiny"])
        .fails();
    run.stderr_has("cannot be reached");

    // A key the builder does not know.
    let p = Project::new(
        &farm,
        &farm.builder("root", &ccb_bin()),
        "ssh_config_stranger",
    );
    let run = p
        .ccb(&farm, &["--remote-builders-only", "build", "tiny"])
        .fails();
    run.stderr_has("refused the login");

    // Another ccb on the builder.
    let other = farm.p("other-ccb");
    std::fs::write(&other, "#!/bin/sh\necho 'ccb 0.0.1-elsewhere'\n").unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let p = Project::new(
        &farm,
        &farm.builder("root", &other.display().to_string()),
        "ssh_config",
    );
    let run = p
        .ccb(&farm, &["--remote-builders-only", "build", "tiny"])
        .fails();
    run.stderr_has("ccb 0.0.1-elsewhere");
    run.stderr_has("same ccb");

    // An unreachable builder is passed over for the arch's next one (here: the other ccb).
    let nowhere = format!("ssh://root@{}:2/{}", farm.builder_ip, ccb_bin());
    let p = Project::with_builders(
        &farm,
        &[
            &nowhere,
            &farm.builder("root", &other.display().to_string()),
        ],
        "ssh_config",
    );
    let run = p
        .ccb(&farm, &["--remote-builders-only", "build", "tiny"])
        .fails();
    run.stderr_has("trying the next builder");
    run.stderr_has("same ccb");

    // No builder listed: the flag is an error, not a silent local build.
    let p = Project::new(&farm, &farm.builder("root", &ccb_bin()), "ssh_config");
    std::fs::write(p.root.join("manifests/project.ncl"), "{}\n").unwrap();
    p.ccb(&farm, &["--remote-builders-only", "build", "tiny"])
        .fails()
        .stderr_has("no `builders`");
}

#[test]
fn an_arm64_action_goes_to_a_builder_because_this_host_cannot_build_arm64_natively() {
    // No --remote-builders-only: this amd64 host could emulate arm64 (slowly), but a builder
    // serves arm64, so the arm64 root filesystem is built there (here the builder emulates
    // it too: it is this machine in another namespace) and arrives through the cache.
    let farm = Farm::start();
    let p = Project::for_arch(
        &farm,
        "arm64",
        &[&farm.builder("root", &ccb_bin())],
        "ssh_config",
    );
    let run = p
        .ccb(
            &farm,
            &["build", "tiny", "--until", "base", "--format", "json"],
        )
        .ok();
    let r = rows(&run);
    assert_eq!(
        r,
        vec![(
            "base:tiny:arm64".to_string(),
            "cached".to_string(),
            "builder".to_string()
        )]
    );
    assert_eq!(
        run.json()["actions"][0]["builder"],
        format!("ssh://root@{}", farm.builder_ip).as_str()
    );
    // This host did not emulate: no warning of its own about qemu-user (the builder's, in
    // its streamed log, is prefixed by the action), no step run here.
    assert!(
        !run.stderr
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("qemu-user")),
        "{}",
        run.stderr
    );
    assert!(!p.env.cache.path().join("checkpoints").exists());
    // The root filesystem that arrived is arm64's.
    let ls = p.env.layer_tree("base:tiny:arm64").join("usr/bin/ls");
    let bytes = std::fs::read(&ls).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 0xB7, "AArch64");
    verify(p.env.cache.path());
}
