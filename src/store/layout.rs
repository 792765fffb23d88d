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

    /// A guest kernel that stalled under KVM on this host (its kernel and QEMU versions).
    pub const KVM_STALL: &'static str = "stat/kvm-stall.json";

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
        format!("{}/{}", Self::ACTIONS, Self::record_name(key))
    }

    /// The key document of the last build of an action (by a short name of its id).
    pub fn last_record(id_name: &str) -> String {
        format!("{}/{}", Self::LAST, Self::record_name(id_name))
    }

    /// A committed layer: `tree/` and `layer.json`.
    pub fn layer_dir(key: &str) -> String {
        format!("{}/{key}", Self::LAYERS)
    }

    /// The directory a layer's or a checkpoint's files sit in, inside its own directory (a
    /// whole root filesystem, or an overlayfs upper directory over the ones under it).
    pub const TREE: &'static str = "tree";

    /// A committed layer's files.
    pub fn layer_tree(key: &str) -> String {
        format!("{}/{}", Self::layer_dir(key), Self::TREE)
    }

    /// The name of a layer's record inside its directory.
    pub const LAYER_RECORD: &'static str = "layer.json";

    /// The record that makes a layer count as present.
    pub fn layer_record(key: &str) -> String {
        format!("{}/{}", Self::layer_dir(key), Self::LAYER_RECORD)
    }

    /// A step checkpoint inside a layer: `tree/` (an overlayfs upper directory over the
    /// checkpoints and layers under it) and `checkpoint.json`.
    pub fn checkpoint_dir(key: &str) -> String {
        format!("{}/{key}", Self::CHECKPOINTS)
    }

    /// A step checkpoint's files.
    pub fn checkpoint_tree(key: &str) -> String {
        format!("{}/{}", Self::checkpoint_dir(key), Self::TREE)
    }

    /// The name of a checkpoint's record inside its directory.
    pub const CHECKPOINT_RECORD: &'static str = "checkpoint.json";

    /// The record that makes a checkpoint count as present.
    pub fn checkpoint_record(key: &str) -> String {
        format!("{}/{}", Self::checkpoint_dir(key), Self::CHECKPOINT_RECORD)
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
        format!("{}/{}", Self::OUTPUTS, Self::record_name(key))
    }

    /// The file name of a JSON record of `stem` in a directory of records (`actions/`,
    /// `last/`, `outputs/`, `artifacts/`).
    pub fn record_name(stem: &str) -> String {
        format!("{stem}.json")
    }

    /// What a record's file name (see [`Layout::record_name`]) records; `None` for a name
    /// that is not a record.
    pub fn record_stem(name: &str) -> Option<&str> {
        name.strip_suffix(".json")
    }

    /// The key of an entry of `outputs/`, which holds `KEY/` and `KEY.json`.
    pub fn outputs_key(name: &str) -> &str {
        Self::record_stem(name).unwrap_or(name)
    }

    /// The key a file name of `logs/` is the action log of (boot logs are not).
    pub fn log_key(name: &str) -> Option<&str> {
        name.strip_suffix(".log")
    }

    /// Downloads in progress in [`Layout::ARTIFACTS`] start with this (temp files, renamed
    /// into place when verified): what `gc` removes after a killed ccb.
    pub const FETCH_TEMP_PREFIX: &'static str = ".fetch-";

    /// The working directory (a name for [`super::Store::work_dir`]) that an entry of `key`
    /// is renamed into before it is removed, so that a half-removed entry is never found
    /// under its key.
    pub fn trash(key: &str) -> String {
        format!("{key}.trash")
    }

    /// The working directory a finished tree and its record are staged in before the
    /// rename that commits them.
    pub fn staging(key: &str) -> String {
        format!("{key}.commit")
    }

    /// The working directory an entry a `--force` rebuild replaces is moved aside to.
    pub fn replaced(key: &str) -> String {
        format!("{key}.old")
    }

    /// A fetched artifact, read-only, verified.
    pub fn artifact(sha256: &str) -> String {
        format!("{}/{}", Self::ARTIFACTS, sha256.to_ascii_lowercase())
    }

    /// An artifact's record (its blake3).
    pub fn artifact_record(sha256: &str) -> String {
        format!(
            "{}/{}",
            Self::ARTIFACTS,
            Self::record_name(&sha256.to_ascii_lowercase())
        )
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

    /// The console of a boot's first attempt, kept when its guest kernel panicked and the
    /// boot was made again.
    pub fn boot_log_panicked(key: &str, firmware: &str, bus: &str) -> String {
        format!("{}/{key}-boot-{firmware}-{bus}-panicked.log", Self::LOGS)
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

    /// Expressions that match a pattern below but are not store paths (paths inside a
    /// chroot or an image, an attempt's own working directory), by file.
    const NOT_STORE_PATHS: &[(&str, &str)] = &[
        ("src/action/runner.rs", "\"tmp/in_target.d\""),
        // Where a full layer is built in its attempt's working directory.
        ("src/action/runner.rs", "spec.work.join(\"tree\")"),
        ("src/action/mod.rs", "spec.work.join(\"tree\")"),
        // Where a layer pulled from a remote cache is unpacked before it is committed.
        ("src/remote/mod.rs", "work.0.join(\"tree\")"),
    ];

    /// What spells a store path: a literal starting with one of the store's directories, a
    /// literal handed straight to the store (`store.path("…")`), a literal joined onto a
    /// layer's or checkpoint's directory (`join("tree")`), the names of records, logs, trash
    /// and download temp files (`format!("{key}.json")`, `".log"`, `".trash"`, `".fetch-"`).
    fn store_path_pattern() -> regex::Regex {
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
        let dir_alternatives = dirs.join("|");
        regex::Regex::new(&format!(
            r#""({dir_alternatives})/|\b(store|self\.store|ctx\.store)\.(path|exists|remove|read_json|write_json|write_cache_json)\(&?"|\.join\("(tree|layer\.json|checkpoint\.json)"\)|"\{{[^}}"]*\}}\.(json|log|trash|commit|old)"|"\.(json|log|trash)"|"\.fetch-"#
        ))
        .unwrap()
    }

    /// Where `text` (a file of `src/`, by its path `rel`) spells a store path, as
    /// `file:line: text`. Comments and the file's test module are not read.
    fn store_paths_spelled(rel: &str, text: &str) -> Vec<String> {
        let spelled = store_path_pattern();
        let mut found = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for m in spelled.find_iter(line) {
                let allowed = NOT_STORE_PATHS.iter().any(|(file, expr)| {
                    *file == rel
                        && line.match_indices(expr).any(|(at, e)| {
                            (at..at + e.len()).contains(&m.start()) && m.end() <= at + e.len()
                        })
                });
                if !allowed {
                    found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        found
    }

    #[test]
    fn no_module_outside_the_store_spells_a_store_path() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(&src) {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.starts_with(src.join("store")) || path.extension() != Some("rs".as_ref()) {
                continue;
            }
            let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            found.extend(store_paths_spelled(rel.to_str().unwrap(), &text));
        }
        assert!(
            found.is_empty(),
            "store paths spelled outside store::Layout:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_guard_catches_every_way_the_store_was_spelled_before_layout_owned_it() {
        // Each of these lines was in ccb once, outside the store.
        let spelled = [
            r#"let path = store.path("layers/abc/layer.json");"#,
            r#"let tree = store.checkpoint_dir(key).join("tree");"#,
            r#"local.layer_dir(&a.key).join("tree"),"#,
            r#"std::fs::read(dir.join("layer.json"))"#,
            r#".prefix(".fetch-remote-")"#,
            r#"if name.starts_with(".fetch-") {"#,
            r#"let trash = store.work_dir(&format!("{key}.trash"))?;"#,
            r#"let record = format!("{key}.json");"#,
            r#"let log = format!("{}.log", key);"#,
            r#"list_names(store, Layout::LAST, ".json")"#,
            r#"stem.strip_suffix(".json").unwrap_or(stem)"#,
        ];
        for line in spelled {
            assert_eq!(
                store_paths_spelled("src/ops/cache/entries.rs", line).len(),
                1,
                "not caught: {line}"
            );
        }
        // Names that only look alike: an SBOM's, a publish site's, a work directory's.
        let not_spelled = [
            r#"format!("{image}.spdx.json")"#,
            r#"format!("{name}.d/{name}_provenance.json")"#,
            r#"Ok(verdict(a, "tree".into(), files))"#,
            r#"// store.path("layers/x")"#,
        ];
        for line in not_spelled {
            assert_eq!(
                store_paths_spelled("src/ops/x.rs", line),
                Vec::<String>::new()
            );
        }
        // An allowed expression is allowed in its file only, and only as itself.
        let work = r#"_ => spec.work.join("tree"),"#;
        assert!(store_paths_spelled("src/action/runner.rs", work).is_empty());
        assert_eq!(store_paths_spelled("src/ops/x.rs", work).len(), 1);
        let store_tree = r#"let t = store.layer_dir(k).join("tree");"#;
        assert_eq!(
            store_paths_spelled("src/action/runner.rs", store_tree).len(),
            1
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
