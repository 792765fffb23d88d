//! What diskimage-builder gives every element script besides the phases themselves, given
//! the same way: `IMAGE_ELEMENT_YAML` and the exported `get_image_element_array` function,
//! `DIB_ENV`, `_LIB` with the helpers elements source (`die`, `img-functions`), `dib-run-parts`,
//! `DIB_PYTHON_EXEC`, and a `sudo` for the outside scripts (DIB runs as a user and calls sudo;
//! ccb is root already).
//!
//! The helper scripts are ccb's own (in `dib/`), written to DIB's contract; none of DIB's code
//! is copied. And the other half of the contract's safety net: a `command not found` in a
//! step's output names the command, so an element calling something that does not exist no
//! longer passes silently.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::ElementSrc;

const SUDO: &str = include_str!("dib/sudo");
const DIB_RUN_PARTS: &str = include_str!("dib/dib-run-parts");
const PKG_MAP: &str = include_str!("dib/pkg-map");
const DIE: &str = include_str!("dib/die");
const IMG_FUNCTIONS: &str = include_str!("dib/img-functions");
const COMMON_FUNCTIONS: &str = include_str!("dib/common-functions");

/// Under the engine directory: `_LIB` (sourced helpers), and the tools only outside scripts
/// get (`sudo`: inside the chroot the image's own sudo, if any, stays in charge).
pub const LIB_DIR: &str = "lib";
pub const HOST_BIN_DIR: &str = "host-bin";

/// Writes the helpers into the engine directory: `bin/dib-run-parts` and `bin/pkg-map` (both
/// sides), `host-bin/sudo` (outside only) and `lib/` (`_LIB`). Also puts `dib-run-parts` at
/// the top of the hooks tree, where DIB copies it before the chroot phases.
pub fn install_helpers(engine_dir: &Path, hooks: &Path) -> std::io::Result<()> {
    let write = |path: &Path, text: &str, mode: u32| -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    };
    write(&engine_dir.join("bin/dib-run-parts"), DIB_RUN_PARTS, 0o755)?;
    write(&engine_dir.join("bin/pkg-map"), PKG_MAP, 0o755)?;
    write(&engine_dir.join(HOST_BIN_DIR).join("sudo"), SUDO, 0o755)?;
    let lib = engine_dir.join(LIB_DIR);
    write(&lib.join("die"), DIE, 0o644)?;
    write(&lib.join("img-functions"), IMG_FUNCTIONS, 0o644)?;
    write(&lib.join("common-functions"), COMMON_FUNCTIONS, 0o644)?;
    write(&lib.join("dib-run-parts"), DIB_RUN_PARTS, 0o755)?;
    // An element's own top-level `dib-run-parts` file (DIB's dib-run-parts element has none
    // there) would win, as it would in DIB's merged tree.
    let in_hooks = hooks.join("dib-run-parts");
    if std::fs::symlink_metadata(&in_hooks).is_err() {
        write(&in_hooks, DIB_RUN_PARTS, 0o755)?;
    }
    Ok(())
}

/// A YAML single-quoted scalar.
fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A word for bash, quoted only when it has to be.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The variables (and exported functions, as bash passes them: `BASH_FUNC_<name>%%`) DIB's
/// element-info gives every script: element name → directory, as YAML and as the body of a
/// bash associative array, and `die`. They name host paths, so they are not inputs of a key:
/// the elements' digests are.
pub fn element_env(elements: &[ElementSrc]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut sorted: Vec<&ElementSrc> = elements.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let yaml: String = sorted
        .iter()
        .map(|e| format!("{}: {}\n", e.name, yaml_quote(&e.dir.display().to_string())))
        .collect();
    env.insert(
        "IMAGE_ELEMENT_YAML".into(),
        if yaml.is_empty() { "{}\n".into() } else { yaml },
    );
    let array: String = sorted
        .iter()
        .map(|e| format!("[{}]={} ", e.name, sh_quote(&e.dir.display().to_string())))
        .collect();
    // The function prints the array's body for `eval declare -A a=($(get_image_element_array))`.
    env.insert(
        "BASH_FUNC_get_image_element_array%%".into(),
        format!("() {{ echo {}\n}}", sh_quote(&array)),
    );
    env.insert(
        "BASH_FUNC_die%%".into(),
        "() { local status=$?; set +o xtrace; echo \"$@\"; exit \"$status\"\n}".into(),
    );
    env
}

/// The host's python3, for `DIB_PYTHON_EXEC` (outside scripts run python through it).
pub fn host_python() -> Option<String> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .map(str::to_string)
}

/// A command an element script called that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MissingCommand {
    pub element: String,
    pub phase: String,
    pub script: String,
    pub command: String,
}

impl std::fmt::Display for MissingCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "element `{}`, {}/{}: `{}`: command not found",
            self.element, self.phase, self.script, self.command
        )
    }
}

/// The command a shell says it could not find on this output line, if it says so: bash
/// (`script: line 3: foo: command not found`, `bash: foo: command not found`), dash and
/// busybox (`script: 3: foo: not found`), sudo (`sudo: foo: command not found`).
pub fn missing_command(line: &str) -> Option<String> {
    static BASH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\S.*?: (?:line \d+: )?([^\s:][^:]*): command not found$")
            .expect("a valid regex")
    });
    static DASH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\S.*?: \d+: ([^\s:][^:]*): not found$").expect("a valid regex")
    });
    let line = line.trim_end();
    BASH.captures(line)
        .or_else(|| DASH.captures(line))
        .map(|c| c[1].trim().to_string())
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn shells_saying_command_not_found_name_the_command() {
        for (line, cmd) in [
            (
                "/tmp/in_target.d/install.d/50-x: line 7: get_image_element_array: command not found",
                "get_image_element_array",
            ),
            ("bash: frobnicate: command not found", "frobnicate"),
            ("/hooks/extra-data.d/10-y: 3: frob: not found", "frob"),
            ("sudo: mkfs.frob: command not found", "mkfs.frob"),
        ] {
            assert_eq!(missing_command(line).as_deref(), Some(cmd), "{line}");
        }
        for line in [
            "E: Unable to locate package foo",
            "dpkg-query: no packages found matching foo",
            "bash: type: foo: not found",
            "command not found",
            "W: foo: not found",
        ] {
            assert_eq!(missing_command(line), None, "{line}");
        }
    }

    #[test]
    fn element_array_evaluates_in_bash_to_every_element_and_its_directory() {
        let elements = vec![
            ElementSrc {
                name: "modprobe".into(),
                dir: PathBuf::from("/src/dib elements/modprobe"),
                own: true,
            },
            ElementSrc {
                name: "base".into(),
                dir: PathBuf::from("/src/ccb/base"),
                own: true,
            },
        ];
        let env = element_env(&elements);
        let out = crate::process::Process::new("bash")
            .env_clear()
            .envs(&env)
            .arg("-c")
            .arg(
                r#"eval declare -A a=($(get_image_element_array))
                   for k in $(printf '%s\n' "${!a[@]}" | sort); do echo "$k=${a[$k]}"; done
                   false || die "gone" ; echo not-reached"#,
            )
            .output_any_status()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            "base=/src/ccb/base\nmodprobe=/src/dib elements/modprobe\ngone\n"
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "die exits with the failed status"
        );
        let yaml: BTreeMap<String, String> =
            serde_yaml::from_str(&env["IMAGE_ELEMENT_YAML"]).unwrap();
        assert_eq!(yaml["modprobe"], "/src/dib elements/modprobe");
        assert_eq!(yaml.len(), 2);
    }
}
