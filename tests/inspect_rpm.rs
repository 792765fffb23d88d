//! `ccb::inspect::rpm` on rpm databases made by the real `rpm` (Debian's `rpm` package:
//! `rpmbuild` makes tiny packages, `rpm --justdb` installs them into an SQLite database), with
//! `rpm -qa --qf` as the reference for what the database holds.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ccb::inspect::ReadAt;
use ccb::inspect::dpkg::Manifest;
use ccb::inspect::fs::{self, DirEntry, FileKind, Filesystem, FsError, Metadata};
use ccb::inspect::rpm::{self, RpmError, RpmPackage};

// ---- the real tools -----------------------------------------------------------------------

/// The path of a host tool; the tests need them all (scripts/host-deps.sh installs them).
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("these tests need `{name}`: apt-get install {package}"))
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ccb-inspect-rpm-")
        .tempdir()
        .unwrap()
}

/// A package without files: what an rpm database records of it is all these tests need.
const SPEC: &str = "\
Name: %{pname}
Version: %{pver}
Release: %{prel}
%{?pepoch:Epoch: %{pepoch}}
Summary: a test package of ccb
License: Apache-2.0
%description
A test package of ccb's rpm database reader.
%files
";

/// An ed25519 key made by `gpg --quick-gen-key`: `rpm --import` records it as a `gpg-pubkey`
/// package without an ARCH, as every EL image has some.
const PUBKEY: &str = "\
-----BEGIN PGP PUBLIC KEY BLOCK-----

mDMEawoSpxYJKwYBBAHaRw8BAQdAgjEN5r+Y42ShWiKihKJs/MUHPb2Io/XV5Rbs
szP6uuq0HmNjYiB0ZXN0IDxjY2JAZXhhbXBsZS5pbnZhbGlkPoiQBBMWCAA4FiEE
eAkPDUfH1Im62lyPipsZwBhgc78FAmsKEqcCGwMFCwkIBwIGFQoJCAsCBBYCAwEC
HgECF4AACgkQipsZwBhgc79lQQD/W+JAjkjCGCFmNoq3IGvxHRpnP+ypTEnu6Ppw
2tly9bMBALcMRBAf2077wfERUuM8F8QsveTe+oVK8whhMLAlrBkA
=lv3n
-----END PGP PUBLIC KEY BLOCK-----
";

/// (name, epoch, version, release, arch): epochs absent, 0 and not, `~` and `^` versions,
/// one name for several architectures, two versions of one name (as kernels are installed).
const PACKAGES: &[(&str, Option<u32>, &str, &str, &str)] = &[
    ("bash", None, "5.1.8", "9.el9", "x86_64"),
    ("dbus", Some(1), "1.12.20", "8.el9", "x86_64"),
    ("zlib", Some(0), "1.2.11", "40.el9", "x86_64"),
    ("glibc", None, "2.34", "168.el9", "x86_64"),
    ("glibc", None, "2.34", "168.el9", "i686"),
    ("kernel-core", None, "5.14.0", "570.el9", "x86_64"),
    ("kernel-core", None, "5.14.0", "580.el9", "x86_64"),
    ("tzdata", None, "2025a", "1.el9", "noarch"),
    (
        "python3.11-pip",
        Some(4294967295),
        "22.3.1",
        "5.el9",
        "noarch",
    ),
    ("bar", None, "0.1~rc1^git2", "1", "aarch64"),
];

/// Builds PACKAGES with rpmbuild and installs them, and PUBKEY, into a new SQLite database in
/// `dir/var/lib/rpm`, as on an EL9 root. Returns the `--dbpath`.
fn make_rpmdb(dir: &Path) -> PathBuf {
    let rpmbuild = tool("rpmbuild", "rpm");
    let rpm = tool("rpm", "rpm");
    let top = dir.join("rpmbuild");
    std::fs::create_dir_all(&top).unwrap();
    let spec = top.join("t.spec");
    std::fs::write(&spec, SPEC).unwrap();
    let mut rpms = Vec::new();
    for (name, epoch, version, release, arch) in PACKAGES {
        let mut cmd = Command::new(&rpmbuild);
        cmd.arg("-bb")
            .arg("--quiet")
            .args(["--target", arch])
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .args(["--define", &format!("pname {name}")])
            .args(["--define", &format!("pver {version}")])
            .args(["--define", &format!("prel {release}")]);
        if let Some(e) = epoch {
            cmd.args(["--define", &format!("pepoch {e}")]);
        }
        run(cmd.arg(&spec));
        rpms.push(top.join(format!("RPMS/{arch}/{name}-{version}-{release}.{arch}.rpm")));
    }
    let db = dir.join("root/var/lib/rpm");
    std::fs::create_dir_all(&db).unwrap();
    let dbpath = ["--dbpath", db.to_str().unwrap()];
    let sqlite = ["--define", "_db_backend sqlite"];
    run(Command::new(&rpm).arg("--initdb").args(dbpath).args(sqlite));
    run(Command::new(&rpm)
        .args(["-i", "--justdb", "--nodeps", "--noscripts", "--ignorearch"])
        .args(dbpath)
        .args(sqlite)
        .args(&rpms));
    let key = dir.join("key.asc");
    std::fs::write(&key, PUBKEY).unwrap();
    run(Command::new(&rpm)
        .arg("--import")
        .arg(&key)
        .args(dbpath)
        .args(sqlite));
    assert!(db.join("rpmdb.sqlite").is_file());
    db
}

/// One database for the tests that only read it (building it takes a second). A static is
/// never dropped, so it lives in cargo's per-target scratch directory, made afresh by each run,
/// rather than in a temporary directory every run would leave behind.
fn shared_rpmdb() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("inspect-rpm-shared");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_rpmdb(&dir)
    })
}

/// What `rpm -qa` says the database holds.
fn rpm_qa(dbpath: &Path) -> BTreeSet<(RpmPackage, String)> {
    let out = run(Command::new(tool("rpm", "rpm"))
        .args(["-qa", "--dbpath"])
        .arg(dbpath)
        .args([
            "--qf",
            "%{NAME}|%{EPOCH}|%{VERSION}|%{RELEASE}|%{ARCH}|%{EVR}|%{LICENSE}|%{SOURCERPM}\n",
        ]));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 8, "{l}");
            let none = |s: &str| {
                if s == "(none)" {
                    None
                } else {
                    Some(s.to_string())
                }
            };
            let package = RpmPackage {
                name: f[0].into(),
                epoch: none(f[1]).map(|e| e.parse().unwrap()),
                version: f[2].into(),
                release: f[3].into(),
                arch: none(f[4]).unwrap_or_default(),
                license: none(f[6]),
                source_rpm: none(f[7]),
            };
            (package, f[5].to_string())
        })
        .collect()
}

fn ours(packages: &[RpmPackage]) -> BTreeSet<(RpmPackage, String)> {
    let set: BTreeSet<_> = packages.iter().map(|p| (p.clone(), p.evr())).collect();
    assert_eq!(set.len(), packages.len(), "duplicate rows: {packages:?}");
    set
}

/// The build's manifest, as elements/manifests/finalise.d/99-write-dpkg-manifest writes it on
/// an rpm system (there it runs in the image's chroot; here on `--dbpath`), with one
/// difference: the `}` of each JSON object is escaped (`\}`), as rpm's query format requires.
/// The element has it unescaped: rpm then prints `error: incorrect format: unexpected }`
/// instead of each package, and exits 0, so the manifest has no packages.
fn build_manifest(dbpath: &Path) -> Vec<u8> {
    let script = format!(
        r#"set -eu -o pipefail
echo '{{"packages": ['
rpm -qa --dbpath '{}' --qf '{{"package": "%{{NAME}}","arch": "%{{ARCH}}","version": "%{{EPOCH}}:%{{VERSION}}-%{{RELEASE}}"\}},\n' \
    | sed -e 's/"(none):/"/' -e '$ s/}},$/}}/'
echo ']}}'"#,
        dbpath.display()
    );
    let out = Command::new(tool("bash", "bash"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    out.stdout
}

// ---- a host directory as the image's root --------------------------------------------------

/// The files of a host directory as a [`Filesystem`]: enough for the database reader, which
/// only reads files by path.
struct DirFs(PathBuf);

impl DirFs {
    fn host(&self, path: &str) -> PathBuf {
        self.0.join(path.trim_start_matches('/'))
    }

    fn meta(&self, path: &str, m: std::io::Result<std::fs::Metadata>) -> Result<Metadata, FsError> {
        use std::os::unix::fs::MetadataExt;
        let m = m.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FsError::NotFound { path: path.into() },
            _ => FsError::Io(e),
        })?;
        let kind = if m.is_file() {
            FileKind::File
        } else if m.is_dir() {
            FileKind::Dir
        } else if m.file_type().is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        Ok(Metadata {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.len(),
            mtime: m.mtime(),
        })
    }
}

impl Filesystem for DirFs {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn metadata(&self, path: &str) -> Result<Metadata, FsError> {
        self.meta(path, std::fs::metadata(self.host(path)))
    }

    fn symlink_metadata(&self, path: &str) -> Result<Metadata, FsError> {
        self.meta(path, std::fs::symlink_metadata(self.host(path)))
    }

    fn read_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, FsError> {
        let m = self.metadata(path)?;
        if m.kind != FileKind::File {
            return Err(FsError::NotAFile { path: path.into() });
        }
        if m.size > limit {
            return Err(FsError::TooLarge {
                path: path.into(),
                size: m.size,
                limit,
            });
        }
        Ok(std::fs::read(self.host(path))?)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        Err(FsError::NotADirectory { path: path.into() })
    }

    fn read_link(&self, path: &str) -> Result<String, FsError> {
        Err(FsError::NotASymlink { path: path.into() })
    }

    fn canonicalize(&self, path: &str) -> Result<String, FsError> {
        Ok(path.into())
    }
}

/// An image root holding a copy of the database files of `db` (its `rpmdb.sqlite*`).
fn root_with_copy(dir: &Path, db: &Path) -> PathBuf {
    let root = dir.join("root");
    let to = root.join("var/lib/rpm");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(db).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    root
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn the_packages_read_are_those_rpm_qa_lists() {
    let db = shared_rpmdb();
    let fs = DirFs(
        db.parent()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .into(),
    );
    let packages = rpm::read_packages(&fs).unwrap();
    let expected = rpm_qa(db);
    assert_eq!(expected.len(), PACKAGES.len() + 1, "{expected:?}");
    assert_eq!(ours(&packages), expected);
    // The cases that matter, spelled out.
    let find = |name: &str| packages.iter().find(|p| p.name == name).unwrap();
    assert_eq!(find("gpg-pubkey").key(), "gpg-pubkey");
    assert_eq!(find("zlib").evr(), "0:1.2.11-40.el9");
    assert_eq!(find("bash").evr(), "5.1.8-9.el9");
    assert_eq!(find("python3.11-pip").epoch, Some(u32::MAX));
    assert_eq!(find("bar").key(), "bar.aarch64");
}

#[test]
fn each_header_blob_of_the_database_parses_as_rpm_reads_it() {
    let db = shared_rpmdb();
    let conn = rusqlite::Connection::open_with_flags(
        db.join("rpmdb.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn.prepare("SELECT blob FROM Packages").unwrap();
    let blobs: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let parsed: Vec<RpmPackage> = blobs
        .iter()
        .map(|b| rpm::parse_header(b).unwrap())
        .collect();
    assert_eq!(ours(&parsed), rpm_qa(db));
}

#[test]
fn the_build_manifest_of_the_same_database_compares_empty() {
    let db = shared_rpmdb();
    let packages = rpm::read_packages(&DirFs(db.join("../../.."))).unwrap();
    let json = build_manifest(db);
    let manifest = Manifest::parse(&json).unwrap_or_else(|e| {
        panic!("{e}\n{}", String::from_utf8_lossy(&json));
    });
    let c = rpm::compare(&manifest, &packages);
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(c.checked, PACKAGES.len() + 1);

    // A package removed from the image, another at another version.
    let json = String::from_utf8(json)
        .unwrap()
        .replace("1:1.12.20-8.el9", "1:1.12.20-9.el9");
    let manifest = Manifest::parse(json.as_bytes()).unwrap();
    let image: Vec<RpmPackage> = packages
        .into_iter()
        .filter(|p| p.name != "tzdata")
        .collect();
    let c = rpm::compare(&manifest, &image);
    assert_eq!(c.missing, ["tzdata.noarch"]);
    assert_eq!(
        c.version_mismatch,
        [(
            "dbus.x86_64".to_string(),
            "1:1.12.20-9.el9".to_string(),
            "1:1.12.20-8.el9".to_string()
        )]
    );
}

#[test]
fn transactions_still_in_the_write_ahead_log_are_read() {
    let dir = tempdir();
    let root = root_with_copy(dir.path(), shared_rpmdb());
    let all = rpm::read_packages(&DirFs(root.clone())).unwrap();
    let db = root.join("var/lib/rpm/rpmdb.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "rpm's sqlite backend uses a write-ahead log");
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         PRAGMA foreign_keys = OFF;
         DELETE FROM Packages WHERE hnum = (SELECT min(hnum) FROM Packages);",
    )
    .unwrap();
    // The image as a crash left it: the deletion is only in the log.
    let image = dir.path().join("image");
    let rpmdir = image.join("var/lib/rpm");
    std::fs::create_dir_all(&rpmdir).unwrap();
    for f in ["rpmdb.sqlite", "rpmdb.sqlite-wal"] {
        std::fs::copy(root.join("var/lib/rpm").join(f), rpmdir.join(f)).unwrap();
    }
    assert!(
        std::fs::metadata(rpmdir.join("rpmdb.sqlite-wal"))
            .unwrap()
            .len()
            > 0
    );
    let crashed = rpm::read_packages(&DirFs(image.clone())).unwrap();
    assert_eq!(crashed.len(), PACKAGES.len(), "{crashed:?}");
    assert_eq!(crashed[..], all[1..]);
    // Without its log, the database file alone still has the row.
    std::fs::remove_file(rpmdir.join("rpmdb.sqlite-wal")).unwrap();
    assert_eq!(
        rpm::read_packages(&DirFs(image)).unwrap().len(),
        PACKAGES.len() + 1
    );
    drop(conn);
}

/// The database in an ext4 filesystem made by `mkfs.ext4 -d`, read through `fs::open`.
#[test]
fn the_database_is_read_out_of_an_ext4_image() {
    let dir = tempdir();
    let root = root_with_copy(dir.path(), shared_rpmdb());
    std::fs::write(root.join("var/lib/rpm/.rpm.lock"), b"").unwrap();
    let disk = dir.path().join("disk.raw");
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&disk)
        .arg("16M"));
    let src: Arc<dyn ReadAt> = Arc::new(File::open(&disk).unwrap());
    let fs = fs::open(src).unwrap();
    let packages = rpm::read_packages(&*fs).unwrap();
    assert_eq!(ours(&packages), rpm_qa(shared_rpmdb()));
}

/// The position of the index entry of `tag` in a header blob.
fn entry_of(blob: &[u8], tag: u32) -> usize {
    let il = u32::from_be_bytes(blob[..4].try_into().unwrap()) as usize;
    (0..il)
        .map(|i| 8 + 16 * i)
        .find(|&at| blob[at..at + 4] == tag.to_be_bytes())
        .unwrap_or_else(|| panic!("no tag {tag}"))
}

fn set32(blob: &mut [u8], at: usize, v: u32) {
    blob[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A copy of the shared database where the blob of the row of rank `rank` (in hnum order) is
/// `SET blob = value`, `value` being SQL where `?2` is a corrupted copy of the blob.
fn corrupt_row(
    rank: usize,
    value: &str,
    corrupt: impl Fn(&mut Vec<u8>),
) -> (tempfile::TempDir, PathBuf, i64) {
    let dir = tempdir();
    let root = root_with_copy(dir.path(), shared_rpmdb());
    let conn = rusqlite::Connection::open(root.join("var/lib/rpm/rpmdb.sqlite")).unwrap();
    let (hnum, mut blob): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT hnum, blob FROM Packages ORDER BY hnum LIMIT 1 OFFSET ?1",
            [rank as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    corrupt(&mut blob);
    conn.execute(
        &format!("UPDATE Packages SET blob = {value} WHERE hnum = ?1"),
        rusqlite::params![hnum, blob],
    )
    .unwrap();
    drop(conn); // checkpoints the log into the file
    (dir, root, hnum)
}

fn row_error(root: PathBuf) -> (i64, String) {
    match rpm::read_packages(&DirFs(root)) {
        Err(RpmError::Row { hnum, detail }) => (hnum, detail),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_corrupt_blob_is_an_error_naming_its_row() {
    type Corruption = fn(&mut Vec<u8>);
    let cases: [(&str, Corruption, &str); 9] = [
        ("truncated", |b| b.truncate(100), "bytes, but"),
        ("a preamble cut", |b| b.truncate(5), "preamble"),
        ("empty", |b| b.clear(), "preamble"),
        ("one byte more", |b| b.push(0), "bytes, but"),
        (
            "index count huge",
            |b| set32(b, 0, u32::MAX),
            "index entries",
        ),
        ("index count 0", |b| set32(b, 0, 0), "0 index entries"),
        (
            "data length huge",
            |b| set32(b, 4, 0x7fff_ffff),
            "data store",
        ),
        (
            "NAME's offset out of range",
            |b| {
                let at = entry_of(b, 1000);
                set32(b, at + 8, 0x7fff_fff0)
            },
            "tag 1000: offset 2147483632 outside",
        ),
        (
            "NAME not terminated: the data store ends inside it",
            |b| {
                let at = entry_of(b, 1000);
                let il = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
                let offset = u32::from_be_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
                let dl = offset + 3;
                b.truncate(8 + 16 * il + dl);
                set32(b, 4, dl as u32);
            },
            "tag 1000: the string at",
        ),
    ];
    for (i, (what, corrupt, says)) in cases.iter().enumerate() {
        let (_dir, root, hnum) = corrupt_row(i % PACKAGES.len(), "?2", corrupt);
        let (row, detail) = row_error(root);
        assert_eq!(row, hnum, "{what}");
        assert!(detail.contains(says), "{what}: {detail}");
    }
    let (_dir, root, hnum) = corrupt_row(3, "coalesce('a text value', ?2)", |_| {});
    assert_eq!(
        row_error(root),
        (hnum, "a text value, not a blob".to_string())
    );
}

#[test]
fn missing_oversized_and_foreign_databases_are_errors() {
    let dir = tempdir();
    let rpmdir = dir.path().join("var/lib/rpm");
    std::fs::create_dir_all(&rpmdir).unwrap();
    let fs = DirFs(dir.path().into());
    // No database at all.
    let e = rpm::read_packages(&fs).unwrap_err();
    assert!(matches!(e, RpmError::Fs(FsError::NotFound { .. })), "{e}");
    // EL8's Berkeley DB.
    std::fs::write(rpmdir.join("Packages"), b"\0\0\0\0\x61\x15\x06\0").unwrap();
    let e = rpm::read_packages(&fs).unwrap_err();
    assert!(matches!(e, RpmError::BerkeleyDb), "{e}");
    // Not SQLite.
    std::fs::write(rpmdir.join("rpmdb.sqlite"), vec![0x5a; 8192]).unwrap();
    let e = rpm::read_packages(&fs).unwrap_err();
    assert!(matches!(e, RpmError::Database(_)), "{e}");
    // SQLite without a Packages table.
    std::fs::remove_file(rpmdir.join("rpmdb.sqlite")).unwrap();
    rusqlite::Connection::open(rpmdir.join("rpmdb.sqlite"))
        .unwrap()
        .execute_batch("CREATE TABLE other (x)")
        .unwrap();
    let e = rpm::read_packages(&fs).unwrap_err();
    assert!(e.to_string().contains("Packages"), "{e}");
    // Larger than what is copied out (sparse: nothing is written).
    File::create(rpmdir.join("rpmdb.sqlite"))
        .unwrap()
        .set_len(rpm::MAX_DB_SIZE + 1)
        .unwrap();
    let e = rpm::read_packages(&fs).unwrap_err();
    assert!(matches!(e, RpmError::Fs(FsError::TooLarge { .. })), "{e}");
}

#[test]
fn a_schema_view_cannot_run_functions_against_the_host() {
    // An image's database whose `Packages` is a view calling a function with side effects:
    // the schema is untrusted, SQLite refuses to run it (and extension loading is off anyway).
    let dir = tempdir();
    let rpmdir = dir.path().join("var/lib/rpm");
    std::fs::create_dir_all(&rpmdir).unwrap();
    rusqlite::Connection::open(rpmdir.join("rpmdb.sqlite"))
        .unwrap()
        .execute_batch(
            "CREATE TABLE t (x);
             INSERT INTO t VALUES (1);
             CREATE VIEW Packages AS SELECT 1 AS hnum, load_extension('/nonexistent') AS blob FROM t;",
        )
        .unwrap();
    let e = rpm::read_packages(&DirFs(dir.path().into())).unwrap_err();
    assert!(matches!(e, RpmError::Database(_)), "{e}");
}
