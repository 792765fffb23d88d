//! Every path of the store, in one place: the rest of ccb asks [`Layout`] where a record, a
//! layer, an output or a log lives and never spells a store path itself, so the on-disk
//! layout (see `lib.rs`) can change here alone.
//!
//! Paths are relative to the store's root (what [`super::Store::path`] takes).

/// The layout of the store, as relative paths.
pub struct Layout;

impl Layout {
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
        format!("resolve/{hash}.json")
    }

    /// The "does any image miss an element" answer for one search path.
    pub fn resolve_complete_record(hash: &str) -> String {
        format!("resolve/complete-{hash}.json")
    }

    /// The element closures of every build of one project's last check, by resolution key.
    pub fn check_pack(project: &str) -> String {
        format!("resolve/pack-{project}.json")
    }

    /// A passed `ccb check` of one project state: the elements it used.
    pub fn check_record(hash: &str) -> String {
        format!("resolve/check-{hash}.json")
    }

    /// A built action's record: its key document, steps, duration.
    pub fn action_record(key: &str) -> String {
        format!("actions/{key}.json")
    }

    /// The key document of the last build of an action (by a short name of its id).
    pub fn last_record(id_name: &str) -> String {
        format!("last/{id_name}.json")
    }

    /// A committed layer: `tree/` and `layer.json`.
    pub fn layer_dir(key: &str) -> String {
        format!("layers/{key}")
    }

    /// The record that makes a layer count as present.
    pub fn layer_record(key: &str) -> String {
        format!("layers/{key}/layer.json")
    }

    /// A step checkpoint inside a layer: `tree/` (an overlayfs upper directory over the
    /// checkpoints and layers under it) and `checkpoint.json`.
    pub fn checkpoint_dir(key: &str) -> String {
        format!("checkpoints/{key}")
    }

    /// The record that makes a checkpoint count as present.
    pub fn checkpoint_record(key: &str) -> String {
        format!("checkpoints/{key}/checkpoint.json")
    }

    /// The checkpoints a committed layer was built through (what `gc` keeps with it).
    pub fn checkpoint_chain(layer_key: &str) -> String {
        format!("checkpoint-chains/{layer_key}.json")
    }

    /// A disk action's files.
    pub fn outputs_dir(key: &str) -> String {
        format!("outputs/{key}")
    }

    /// The record that makes a disk's outputs count as present.
    pub fn outputs_record(key: &str) -> String {
        format!("outputs/{key}.json")
    }

    /// A fetched artifact, read-only, verified.
    pub fn artifact(sha256: &str) -> String {
        format!("artifacts/{}", sha256.to_ascii_lowercase())
    }

    /// An artifact's record (its blake3).
    pub fn artifact_record(sha256: &str) -> String {
        format!("artifacts/{}.json", sha256.to_ascii_lowercase())
    }

    /// An interrupted download, resumed by the next fetch.
    pub fn artifact_partial(sha256: &str) -> String {
        format!("artifacts/.partial/{}", sha256.to_ascii_lowercase())
    }

    /// The bare mirror of a git source (by a hash of its URL).
    pub fn git_mirror(url_hash: &str) -> String {
        format!("sources/git/{url_hash}.git")
    }

    /// A locked source tree, by git tree id.
    pub fn source_tree(tree: &str) -> String {
        format!("sources/trees/{tree}")
    }

    /// Every step's output of an action.
    pub fn log(key: &str) -> String {
        format!("logs/{key}.log")
    }

    /// The serial log of `ccb test`'s boot of a disk with a firmware.
    pub fn boot_log(key: &str, firmware: &str, bus: &str) -> String {
        format!("logs/{key}-boot-{firmware}-{bus}.log")
    }

    /// A per-key or store-wide flock.
    pub fn lock(name: &str) -> String {
        format!("locks/{name}.lock")
    }

    /// Shared package downloads of a distribution and architecture (never in a key).
    pub fn package_downloads(distro: &str, arch: &str) -> String {
        format!("downloads/packages/{distro}-{arch}")
    }

    /// A project's inputs as a remote builder received them (`remote::builder`), by digest.
    pub fn bundle(digest: &str) -> String {
        format!("bundles/{digest}")
    }

    /// The working directory of one attempt at a key.
    pub fn work_dir(key: &str, pid: u32, n: u32) -> String {
        format!("tmp/{key}-{pid}-{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

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
