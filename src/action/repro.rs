//! Equal keys, equal bytes: what keeps two builds of one key from differing.
//!
//! Every time an action writes comes from one **source date** (`SOURCE_DATE_EPOCH`, the
//! convention of reproducible-builds.org), not from the clock. It is the date of the newest
//! package in the image's base root filesystem: the newest `changelog*` or `copyright` file
//! under `/usr/share/doc/<package>/` (Debian's packaging clamps every file of a package to its
//! changelog's date, RPMs ship the same files with the package's build time), so it moves when
//! the mirror serves newer packages and stays put otherwise. An image may set it instead with
//! `env = { SOURCE_DATE_EPOCH = "…" }` (a pinned snapshot's date), which enters the keys.
//!
//! The layer and disk actions export it to element scripts; `mkinitramfs`, `mkfs.fat`, mtools
//! and Python honour it. After an action's scripts, every time newer than it is clamped to it;
//! the disk action also removes what is random or machine-specific by nature ([`scrub`]).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::inroot::TreeRoot;

/// The variable element scripts read.
pub const ENV: &str = "SOURCE_DATE_EPOCH";

/// When a tree has no package documentation at all (a hand-made tarball): 2000-01-01.
const FALLBACK: i64 = 946_684_800;

/// The newest package date of a layer stack (top first; any order works): the newest
/// `changelog*` or `copyright` file directly in a directory of `usr/share/doc`.
pub fn newest_package_date(stack: &[PathBuf]) -> Option<i64> {
    let mut newest: Option<i64> = None;
    for tree in stack {
        // As the image sees it: a /usr/share/doc that links to a host directory would let the
        // host's file times set the image's date.
        let Some(doc) = TreeRoot::open(tree)
            .and_then(|t| t.dir("usr/share/doc"))
            .ok()
            .flatten()
        else {
            continue;
        };
        let Ok(docs) = std::fs::read_dir(doc) else {
            continue;
        };
        for pkg in docs.filter_map(Result::ok) {
            if !pkg.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(pkg.path()) else {
                continue;
            };
            for f in files.filter_map(Result::ok) {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if !(name.starts_with("changelog") || name == "copyright") {
                    continue;
                }
                if let Ok(m) = f.path().symlink_metadata()
                    && m.is_file()
                {
                    newest = Some(newest.map_or(m.mtime(), |n| n.max(m.mtime())));
                }
            }
        }
    }
    newest
}

/// The source date of an action: the image's own `SOURCE_DATE_EPOCH` when it sets one, else
/// the newest package date of `stack`, else `FALLBACK`.
pub fn source_date_epoch(env: &BTreeMap<String, String>, stack: &[PathBuf]) -> i64 {
    env.get(ENV)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or_else(|| newest_package_date(stack))
        .unwrap_or(FALLBACK)
}

/// Sets every time in `root` newer than `epoch` to `epoch` (modification and access: a read
/// moves the access time, which FAT keeps; the change time cannot be set and is fixed where it
/// matters, in the filesystem image). Stays
/// on `root`'s filesystem and never follows a link. Returns how many entries were clamped.
pub fn clamp_times(root: &Path, epoch: i64) -> io::Result<u64> {
    clamp(root, epoch, true)
}

/// As [`clamp_times`], for the entries whose modification time is newer (both times set):
/// for a tree on an overlay whose filesystem image gets every access time set afterwards (an
/// ext4 root, see `disk::set_inode_times`). Access times newer than the source date are the
/// rule in a stack read since its commit (its digest reads every file), and setting one on an
/// overlay copies the whole file up: over a GB for CC-Debian12.
pub fn clamp_modification_times(root: &Path, epoch: i64) -> io::Result<u64> {
    clamp(root, epoch, false)
}

fn clamp(root: &Path, epoch: i64, access: bool) -> io::Result<u64> {
    let mut clamped = 0;
    let at = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        },
    };
    for entry in walkdir::WalkDir::new(root).same_file_system(true) {
        let entry = entry.map_err(io::Error::other)?;
        let m = entry.metadata().map_err(io::Error::other)?;
        let newer = |secs: i64, nsec: i64| secs > epoch || (secs == epoch && nsec != 0);
        if newer(m.mtime(), m.mtime_nsec()) || (access && newer(m.atime(), m.atime_nsec())) {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                entry.path(),
                &at,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            clamped += 1;
        }
    }
    Ok(clamped)
}

/// What is random or belongs to one machine, removed from the finished image: each machine
/// makes its own at first boot (systemd the machine id and random seed, cloud-init's `ssh`
/// module the host keys, which it deletes and regenerates per instance by default), and the
/// caches are rebuilt by their daemons or timers. Returns what was done, for the log.
pub fn scrub(image: &TreeRoot, epoch: i64) -> io::Result<Vec<String>> {
    scrub_as(image, epoch, true)
}

/// A layer's tree before it is committed: the same as a finished image's, but apt's lists
/// stay (a child layer installs packages from them) and the logs are emptied here, as
/// finalise empties them in the image.
pub fn scrub_layer(tree: &Path, epoch: i64) -> io::Result<Vec<String>> {
    let image = TreeRoot::open(tree)?;
    let mut done = scrub_as(&image, epoch, false)?;
    if let Some(log) = image.dir("var/log")? {
        let mut n = 0;
        for e in walkdir::WalkDir::new(&log).same_file_system(true) {
            let e = e.map_err(io::Error::other)?;
            let m = e.metadata().map_err(io::Error::other)?;
            if e.file_type().is_file() && m.len() > 0 {
                // A new empty file in its place, not a truncation: the old one may be a hard
                // link shared with a step checkpoint, which must keep its bytes.
                let path = e.path();
                let tmp =
                    path.with_file_name(format!(".ccb-empty-{}", e.file_name().to_string_lossy()));
                let f = std::fs::File::options()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&tmp)?;
                f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
                drop(f);
                std::fs::rename(&tmp, path)?;
                n += 1;
            }
        }
        if n > 0 {
            done.push(format!("emptied {n} log files"));
        }
    }
    Ok(done)
}

fn scrub_as(image: &TreeRoot, epoch: i64, finished: bool) -> io::Result<Vec<String>> {
    let mut done = Vec::new();
    for rel in [
        "var/lib/systemd/random-seed",
        "var/lib/urandom/random-seed",
        "var/cache/ldconfig/aux-cache",
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        if image.resolve_existing(rel)?.is_some() {
            image.remove(rel)?;
            done.push(format!("removed /{rel}"));
        }
    }
    // Directories whose content is a cache or a download: emptied, kept.
    let lists: &[&str] = if finished {
        &["var/lib/apt/lists"]
    } else {
        &[]
    };
    for rel in ["var/cache/man", "var/cache/fontconfig"]
        .iter()
        .chain(lists)
        .copied()
    {
        if let Some(dir) = image.dir(rel)? {
            let mut n = 0;
            for e in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
                let name = e.file_name();
                // apt's lock and partial/ are its own, not downloads.
                if rel == "var/lib/apt/lists" && (name == "lock" || name == "partial") {
                    continue;
                }
                super::inroot::remove_entry(&e.path())?;
                n += 1;
            }
            if n > 0 {
                done.push(format!("emptied /{rel} ({n} entries)"));
            }
        }
    }
    // An empty machine-id: systemd makes one at first boot (ConditionFirstBoot holds).
    if let Some(p) = image.resolve_existing("etc/machine-id")?
        && p.is_file()
        && std::fs::metadata(&p)?.len() > 0
    {
        image.write("etc/machine-id", b"", 0o444)?;
        done.push("emptied /etc/machine-id".into());
    }
    // D-Bus's copy, where it is a file rather than the usual link to /etc/machine-id.
    if let Ok(at) = image.entry("var/lib/dbus/machine-id")
        && std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_file())
    {
        image.remove("var/lib/dbus/machine-id")?;
        done.push("removed /var/lib/dbus/machine-id".into());
    }
    if let Some(ssh) = image.dir("etc/ssh")? {
        let mut keys: Vec<PathBuf> = std::fs::read_dir(&ssh)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
            .map(|e| e.path())
            .collect();
        keys.sort();
        for k in &keys {
            super::inroot::remove_entry(k)?;
        }
        if !keys.is_empty() {
            done.push(format!("removed {} SSH host key files", keys.len()));
        }
    }
    for rel in ["etc/shadow", "etc/shadow-"] {
        if let Some(p) = image.resolve_existing(rel)?
            && p.is_file()
        {
            let text = std::fs::read_to_string(&p)?;
            let fixed = shadow_days(&text, epoch / 86_400);
            if fixed != text {
                let mode = std::fs::metadata(&p)?.mode() & 0o7777;
                let (uid, gid) = {
                    let m = std::fs::metadata(&p)?;
                    (m.uid(), m.gid())
                };
                image.write(rel, fixed.as_bytes(), mode)?;
                // `write` makes the file root's; /etc/shadow is group shadow on Debian.
                let at = image.entry(rel)?;
                std::os::unix::fs::lchown(&at, Some(uid), Some(gid))?;
                done.push(format!("/{rel}: last-change days set to the source date"));
            }
        }
    }
    Ok(done)
}

/// `/etc/shadow` with every account's last password change (the third field, days since
/// 1970) at `days`; the field left empty or `0` (change at next login) stays as it is.
fn shadow_days(text: &str, days: i64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let mut fields: Vec<&str> = body.split(':').collect();
        let days = days.to_string();
        if fields.len() >= 3 && !matches!(fields[2], "" | "0") && fields[2].parse::<i64>().is_ok() {
            fields[2] = &days;
            out.push_str(&fields.join(":"));
        } else {
            out.push_str(body);
        }
        out.push_str(nl);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_source_date_is_the_newest_package_changelog_or_the_images_own() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for (tree, pkg, file, t) in [
            (&lower, "libc6", "changelog.Debian.gz", 1_700_000_000),
            (&lower, "bash", "copyright", 1_690_000_000),
            (&upper, "curl", "changelog.Debian.amd64.gz", 1_710_000_000),
            // A build-time file is no package date.
            (&upper, "curl", "NEWS.gz", 1_800_000_000),
        ] {
            let d = tree.join("usr/share/doc").join(pkg);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), b"x").unwrap();
            set_times(&d.join(file), t);
        }
        let stack = vec![upper, lower.clone()];
        assert_eq!(newest_package_date(&stack), Some(1_710_000_000));
        assert_eq!(source_date_epoch(&BTreeMap::new(), &stack), 1_710_000_000);
        let own = BTreeMap::from([(ENV.to_string(), "1600000000".to_string())]);
        assert_eq!(source_date_epoch(&own, &stack), 1_600_000_000);
        assert_eq!(
            source_date_epoch(&BTreeMap::new(), &[dir.path().join("none")]),
            FALLBACK
        );
    }

    /// Sets a file's access and modification times to `secs`.
    fn set_times(path: &Path, secs: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
    }

    #[test]
    fn a_doc_directory_linked_to_the_host_gives_no_date_from_the_hosts_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let pkg = host.path().join("evil");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("changelog"), b"x").unwrap();
        set_times(&pkg.join("changelog"), 1_900_000_000);
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/share")).unwrap();
        symlink(host.path(), tree.join("usr/share/doc")).unwrap();
        // Inside the image the link leads to <tree>/<host dir>, which does not exist.
        assert_eq!(newest_package_date(std::slice::from_ref(&tree)), None);
        // A link that stays inside the image is followed as the image would.
        std::fs::create_dir_all(tree.join("opt/doc/bash")).unwrap();
        std::fs::write(tree.join("opt/doc/bash/copyright"), b"x").unwrap();
        std::fs::remove_file(tree.join("usr/share/doc")).unwrap();
        symlink("/opt/doc", tree.join("usr/share/doc")).unwrap();
        assert!(newest_package_date(&[tree]).is_some());
    }

    #[test]
    fn clamping_lowers_only_what_is_newer_and_leaves_links_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("new"), b"n").unwrap();
        std::fs::write(root.join("old"), b"o").unwrap();
        set_times(&root.join("old"), 1_000);
        symlink("/nonexistent", root.join("dangling")).unwrap();
        clamp_times(root, 5_000).unwrap();
        let mtime = |p: &str| root.join(p).symlink_metadata().unwrap().mtime();
        assert_eq!(mtime("new"), 5_000);
        assert_eq!(mtime("old"), 1_000);
        assert_eq!(mtime("dangling"), 5_000, "the link itself, not its target");
        assert_eq!(root.symlink_metadata().unwrap().mtime(), 5_000);
    }

    #[test]
    fn shadow_keeps_every_field_but_the_last_change_day() {
        let text = "root:*:20428:0:99999:7:::\ncc:$y$x:20430:0:99999:7:::\nforce:!:0:0:99999:7:::\nnone:*::0:99999:7:::";
        assert_eq!(
            shadow_days(text, 19_000),
            "root:*:19000:0:99999:7:::\ncc:$y$x:19000:0:99999:7:::\nforce:!:0:0:99999:7:::\nnone:*::0:99999:7:::"
        );
    }

    #[test]
    fn scrubbing_removes_what_each_machine_makes_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, body) in [
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("etc/ssh/ssh_host_ed25519_key", "secret"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "public"),
            ("etc/ssh/sshd_config", "PermitRootLogin no\n"),
            ("var/lib/systemd/random-seed", "random"),
            ("var/cache/man/index.db", "db"),
            ("var/lib/apt/lists/deb_dists_bookworm_InRelease", "release"),
            ("var/lib/apt/lists/lock", ""),
        ] {
            std::fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
            std::fs::write(root.join(rel), body).unwrap();
        }
        std::fs::create_dir_all(root.join("var/lib/dbus")).unwrap();
        symlink("/etc/machine-id", root.join("var/lib/dbus/machine-id")).unwrap();
        let image = TreeRoot::open(root).unwrap();
        let done = scrub(&image, 1_700_000_000).unwrap();
        assert!(!done.is_empty());
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
        assert!(root.join("etc/ssh/sshd_config").exists());
        assert!(!root.join("var/lib/systemd/random-seed").exists());
        assert!(!root.join("var/cache/man/index.db").exists());
        assert!(root.join("var/cache/man").is_dir());
        assert!(
            !root
                .join("var/lib/apt/lists/deb_dists_bookworm_InRelease")
                .exists()
        );
        assert!(root.join("var/lib/apt/lists/lock").exists());
        assert!(
            root.join("var/lib/dbus/machine-id")
                .symlink_metadata()
                .unwrap()
                .is_symlink(),
            "the usual link stays"
        );
    }
}
