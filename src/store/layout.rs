//! Every path of the store, in one place: the rest of ccb asks [`Layout`] where a record, a
//! layer, an output or a log lives and never spells a store path itself, so the on-disk
//! layout (see `lib.rs`) can change here alone.
//!
//! Paths are relative to the store's root (what [`super::Store::path`] takes).

/// The layout of the store, as relative paths.
pub struct Layout;

impl Layout {
    /// Committed layers, one directory per key.
    pub const LAYERS: &'static str = "layers";
    /// Disk outputs: `KEY/` and its record `KEY.json`.
    pub const OUTPUTS: &'static str = "outputs";
    /// Action records, `KEY.json`.
    pub const ACTIONS: &'static str = "actions";
    /// The last build of every action id.
    pub const LAST: &'static str = "last";
    /// Fetched artifacts by SHA-256, their records, and downloads in progress (`.fetch-*`).
    pub const ARTIFACTS: &'static str = "artifacts";
    /// Interrupted downloads, resumed by the next fetch.
    pub const ARTIFACT_PARTIALS: &'static str = "artifacts/.partial";
    /// Everything fetched from git: bare mirrors and locked trees.
    pub const SOURCES: &'static str = "sources";
    /// Bare mirrors of git sources.
    pub const GIT_MIRRORS: &'static str = "sources/git";
    /// Locked source trees, by git tree id.
    pub const SOURCE_TREES: &'static str = "sources/trees";
    /// Resolved element views and the answers derived from them.
    pub const RESOLVE: &'static str = "resolve";
    /// Step checkpoints, one directory per key.
    pub const CHECKPOINTS: &'static str = "checkpoints";
    /// Working directories of attempts in progress (or of a process that died).
    pub const TMP: &'static str = "tmp";
    /// Inputs remote builders received.
    pub const BUNDLES: &'static str = "bundles";
    /// Action logs and boot logs.
    pub const LOGS: &'static str = "logs";
    /// Shared package downloads (never in a key).
    pub const DOWNLOADS: &'static str = "downloads";

    /// What a scratch store gets of this one to rebuild without the network: every download.
    pub const FETCHED: [&'static str; 3] = [Self::ARTIFACTS, Self::SOURCES, Self::DOWNLOADS];

    /// Scratch a `gc` removes whole: nothing in them is an entry.
    pub const SCRATCH: [&'static str; 3] = [Self::TMP, Self::ARTIFACT_PARTIALS, Self::BUNDLES];

    /// Where a scratch store (`ccb verify`'s) puts the disks of its rebuild.
    pub const SCRATCH_OUTPUTS: &'static str = "out";

    /// A scratch working directory of its own (by a name that includes the owner's pid).
    pub fn scratch(name: &str) -> String {
        format!("{}/{name}", Self::TMP)
    }

    /// The embedded stdlib of one version, written on first use.
    pub fn stdlib_dir(hash: &str) -> String {
        format!("stdlib-{hash}")
    }

    /// Evaluated manifests of one project and the stat of every file evaluation read.
    pub fn eval_record(project: &str) -> String {
        format!("eval/{project}.json")
    }

    /// Element file digests by stat.
    pub const ELEMENT_STATS: &'static str = "stat/elements.json";

    /// Verified blake3 of store artifacts by stat.
    pub const ARTIFACT_STATS: &'static str = "stat/artifacts.json";

    /// A resolved element view.
    pub fn resolve_record(hash: &str) -> String {
        format!("{}/{hash}.json", Self::RESOLVE)
    }

    /// The "does any image miss an element" answer for one search path.
    pub fn resolve_complete_record(hash: &str) -> String {
        format!("{}/complete-{hash}.json", Self::RESOLVE)
    }

    /// The element closures of every build of one project's last check, by resolution key.
    pub fn check_pack(project: &str) -> String {
        format!("resolve/pack-{project}.json")
    }

    /// A passed `ccb check` of one project state: the elements it used.
    pub fn check_record(hash: &str) -> String {
        format!("{}/check-{hash}.json", Self::RESOLVE)
    }

    /// A built action's record: its key document, steps, duration.
    pub fn action_record(key: &str) -> String {
        format!("{}/{key}.json", Self::ACTIONS)
    }

    /// The key document of the last build of an action (by a short name of its id).
    pub fn last_record(id_name: &str) -> String {
        format!("{}/{id_name}.json", Self::LAST)
    }

    /// A committed layer: `tree/` and `layer.json`.
    pub fn layer_dir(key: &str) -> String {
        format!("{}/{key}", Self::LAYERS)
    }

    /// The record that makes a layer count as present.
    pub fn layer_record(key: &str) -> String {
        format!("{}/layer.json", Self::layer_dir(key))
    }

    /// A step checkpoint inside a layer: `tree/` (an overlayfs upper directory over the
    /// checkpoints and layers under it) and `checkpoint.json`.
    pub fn checkpoint_dir(key: &str) -> String {
        format!("{}/{key}", Self::CHECKPOINTS)
    }

    /// The record that makes a checkpoint count as present.
    pub fn checkpoint_record(key: &str) -> String {
        format!("{}/checkpoint.json", Self::checkpoint_dir(key))
    }

    /// The checkpoints a committed layer was built through (what `gc` keeps with it).
    pub fn checkpoint_chain(layer_key: &str) -> String {
        format!("checkpoint-chains/{layer_key}.json")
    }

    /// A disk action's files.
    pub fn outputs_dir(key: &str) -> String {
        format!("{}/{key}", Self::OUTPUTS)
    }

    /// The record that makes a disk's outputs count as present.
    pub fn outputs_record(key: &str) -> String {
        format!("{}.json", Self::outputs_dir(key))
    }

    /// A fetched artifact, read-only, verified.
    pub fn artifact(sha256: &str) -> String {
        format!("{}/{}", Self::ARTIFACTS, sha256.to_ascii_lowercase())
    }

    /// An artifact's record (its blake3).
    pub fn artifact_record(sha256: &str) -> String {
        format!("{}.json", Self::artifact(sha256))
    }

    /// An interrupted download, resumed by the next fetch.
    pub fn artifact_partial(sha256: &str) -> String {
        format!(
            "{}/{}",
            Self::ARTIFACT_PARTIALS,
            sha256.to_ascii_lowercase()
        )
    }

    /// The bare mirror of a git source (by a hash of its URL).
    pub fn git_mirror(url_hash: &str) -> String {
        format!("{}/{url_hash}.git", Self::GIT_MIRRORS)
    }

    /// A locked source tree, by git tree id.
    pub fn source_tree(tree: &str) -> String {
        format!("{}/{tree}", Self::SOURCE_TREES)
    }

    /// Every step's output of an action.
    pub fn log(key: &str) -> String {
        format!("{}/{key}.log", Self::LOGS)
    }

    /// The serial log of `ccb test`'s boot of a disk with a firmware.
    pub fn boot_log(key: &str, firmware: &str, bus: &str) -> String {
        format!("{}/{key}-boot-{firmware}-{bus}.log", Self::LOGS)
    }

    /// A per-key or store-wide flock.
    pub fn lock(name: &str) -> String {
        format!("locks/{name}.lock")
    }

    /// Shared package downloads of a distribution and architecture (never in a key).
    pub fn package_downloads(distro: &str, arch: &str) -> String {
        format!("{}/packages/{distro}-{arch}", Self::DOWNLOADS)
    }

    /// A project's inputs as a remote builder received them (`remote::builder`), by digest.
    pub fn bundle(digest: &str) -> String {
        format!("{}/{digest}", Self::BUNDLES)
    }

    /// The working directory of one attempt at a key.
    pub fn work_dir(key: &str, pid: u32, n: u32) -> String {
        format!("{}/{key}-{pid}-{n}", Self::TMP)
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    /// String literals that are not store paths although they start like one (paths inside
    /// a chroot or an image, or words that name something else), by file.
    const NOT_STORE_PATHS: &[(&str, &str)] = &[("src/action/runner.rs", "\"tmp/in_target.d\"")];

    #[test]
    fn no_module_outside_the_store_spells_a_store_path() {
        let dirs = [
            Layout::LAYERS,
            Layout::OUTPUTS,
            Layout::ACTIONS,
            Layout::LAST,
            Layout::ARTIFACTS,
            Layout::SOURCES,
            Layout::RESOLVE,
            Layout::CHECKPOINTS,
            Layout::TMP,
            Layout::BUNDLES,
            Layout::LOGS,
            Layout::DOWNLOADS,
            "stat",
            "eval",
            "locks",
            "checkpoint-chains",
        ];
        // A store path starts a literal with one of the directories and a slash, or is a
        // literal handed straight to the store (`store.path("…")`).
        let dir_alternatives = dirs.join("|");
        let spelled = regex::Regex::new(&format!(
            r#""({dir_alternatives})/|\b(store|self\.store|ctx\.store)\.(path|exists|remove|read_json|write_json|write_cache_json)\(&?""#
        ))
        .unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(&src) {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.starts_with(src.join("store")) || path.extension() != Some("rs".as_ref()) {
                continue;
            }
            let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
            let rel = rel.to_str().unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for m in spelled.find_iter(line) {
                    let allowed = NOT_STORE_PATHS
                        .iter()
                        .any(|(file, lit)| *file == rel && line[m.start()..].starts_with(lit));
                    if !allowed {
                        found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "store paths spelled outside store::Layout:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn records_sit_next_to_what_they_record() {
        assert_eq!(
            Layout::layer_record("k"),
            format!("{}/layer.json", Layout::layer_dir("k"))
        );
        assert_eq!(
            Layout::checkpoint_record("k"),
            format!("{}/checkpoint.json", Layout::checkpoint_dir("k"))
        );
        assert_eq!(
            Layout::outputs_record("k"),
            format!("{}.json", Layout::outputs_dir("k"))
        );
        assert_eq!(
            Layout::artifact_record("AB"),
            format!("{}.json", Layout::artifact("ab"))
        );
    }
}
