//! The test environment: a temp cache, a clean environment, helpers to build fixtures.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Env {
    pub cache: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "ccb failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn fails(self) -> Self {
        assert_eq!(
            self.code, 1,
            "expected exit 1:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "ccb panicked:\n{}",
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

impl Env {
    pub fn new() -> Self {
        Self {
            cache: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ccb"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CCB_CACHE_DIR", self.cache.path())
            .env("NO_COLOR", "1")
            .current_dir("/");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out: Output = self.cmd().args(args).output().expect("run ccb");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The committed tree of the layer or base `id` at its current key (from `cache ls`).
    pub fn layer_tree(&self, id: &str) -> PathBuf {
        let ls = self.run(&["cache", "ls", "--format", "json"]).ok().json();
        let key = ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id && e["current"] == true)
            .unwrap_or_else(|| panic!("no current entry for {id}: {ls}"))["key"]
            .as_str()
            .unwrap()
            .to_string();
        self.cache.path().join("layers").join(key).join("tree")
    }

    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Run {
        let out = self
            .cmd()
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run ccb");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The strings of a JSON array, or of one field of each object in it (`strs(v, Some("id"))`).
pub fn strs(v: &serde_json::Value, field: Option<&str>) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| field.map_or(x, |f| &x[f]))
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("not a string: {x}"))
                .to_string()
        })
        .collect()
}

/// The repository root (the real project: manifests/, elements/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a file, creating parents.
pub fn write(path: impl AsRef<Path>, contents: &str) {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// Writes an executable script.
pub fn script(path: impl AsRef<Path>, contents: &str) {
    write(&path, contents);
    std::fs::set_permissions(path.as_ref(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A minimal operating-system element.
pub fn os_element(dir: &Path, name: &str) {
    let el = dir.join(name);
    write(el.join("element-provides"), "operating-system\n");
    write(el.join("README.rst"), "A test OS.\n");
    write(
        el.join("environment.d/10-")
            .with_file_name(format!("10-{name}.bash")),
        "export DISTRO_NAME=debian\nexport DIB_RELEASE=${DIB_RELEASE:-bookworm}\n",
    );
}

/// The row whose `id` is `id` in a JSON report's list (a build's `actions`, `cache ls`'s
/// `entries`); a missing one fails the test with the id and the list.
pub fn row<'a>(rows: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    rows.as_array()
        .unwrap_or_else(|| panic!("not a list: {rows}"))
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {rows}"))
}

/// Copies a directory tree (for editing a copy of the real project).
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Mount points and loop devices that mention `path`: there must never be any on the host.
pub fn leftovers(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect();
    let losetup = Command::new("losetup").arg("-a").output().unwrap();
    out.extend(
        String::from_utf8_lossy(&losetup.stdout)
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string),
    );
    out
}

/// Processes whose command line mentions `path` (sandboxes get their spec from the store).
pub fn processes_under(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Mounts under `path` as the sandbox sees them (its own mount namespace).
pub fn sandbox_mounts(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    processes_under(path)
        .iter()
        .filter(|p| p.contains("__sandbox"))
        .filter_map(|p| p.split(':').next())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/mounts")).ok())
        .flat_map(|m| {
            m.lines()
                .filter(|l| l.contains(&needle))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether any action log of the store holds `needle`.
pub fn logs_contain(store: &Path, needle: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(store.join("logs")) else {
        return false;
    };
    rd.filter_map(Result::ok)
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)))
}

/// Validates an SPDX document with the SPDX project's own validator (`pyspdxtools`, PyPI's
/// spdx-tools), installed with pip into a venv kept between runs (`/var/tmp/spdx-venv`, or
/// `CCB_SPDX_VENV`) under a lock. Returns the validator's complaints (empty when valid).
pub fn spdx_validate(doc: &Path) -> String {
    let venv = std::env::var_os("CCB_SPDX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/spdx-venv"));
    let tool = venv.join("bin/pyspdxtools");
    if !tool.is_file() {
        let install = format!(
            "[ -x '{v}/bin/pyspdxtools' ] || {{ [ -x '{v}/bin/pip' ] || python3 -m venv '{v}'; \
             '{v}/bin/pip' install --quiet --disable-pip-version-check 'spdx-tools==0.8.*'; }}",
            v = venv.display()
        );
        let out = Command::new("flock")
            .arg(format!("{}.lock", venv.display()))
            .args(["sh", "-c", &install])
            .output()
            .expect("run flock");
        assert!(
            out.status.success(),
            "installing spdx-tools with pip failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&tool)
        .arg("-i")
        .arg(doc)
        .output()
        .expect("run pyspdxtools");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && !text.contains("invalid") {
        String::new()
    } else {
        format!("exit {:?}: {text}", out.status.code())
    }
}

/// A private nginx on 127.0.0.1 (its own prefix and config in a temp dir): `data()` is its
/// document root, and `/cache/` takes WebDAV PUTs, as a team's build cache does. `url` is
/// the cache's; `base` the server's.
pub struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    pub url: String,
    pub base: String,
}

impl Nginx {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = dir.path().display();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body;\n\
             proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n\
             uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {p}/data;\n\
             client_max_body_size 0;\n    location /cache/ {{\n      dav_methods PUT;\n\
             create_full_put_path on;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|n| !n.starts_with('/') || Path::new(n).exists())
            .unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (Debian's nginx package)");
        wait_until("nginx to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            url: format!("http://127.0.0.1:{port}/cache"),
            base: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        }
    }

    /// Where nginx keeps the cache's entries.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data/cache")
    }

    /// The document root: a file at `root()/a/b` is served at `{base}/a/b`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
