//! The test environment: a temp cache, a clean environment, helpers to build fixtures.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub cache: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
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
