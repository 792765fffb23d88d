//! The rpm database of an image (`/var/lib/rpm/rpmdb.sqlite`, the SQLite backend of rpm ≥ 4.16:
//! EL9, CentOS Stream 9, Fedora ≥ 33) and the comparison with the build's rpm manifest
//! (`dib-manifest-rpm-<name>`, written by `elements/manifests/finalise.d/99-write-dpkg-manifest`
//! in the same JSON shape as the dpkg one).
//!
//! The database is copied out of the image into a private temporary directory and opened
//! read-only there with SQLite; each row of its `Packages` table is one rpm header blob, which
//! [`parse_header`] reads: untrusted bytes, bounds-checked, an error and never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use super::dpkg::{Comparison, Manifest};
use super::fs::{Filesystem, FsError};

/// Where rpm keeps its SQLite database in the image.
pub const DB_PATH: &str = "/var/lib/rpm/rpmdb.sqlite";
/// SQLite's write-ahead log next to it: transactions not yet copied into the database file
/// (an image made without a clean shutdown of rpm's last transaction).
pub const WAL_PATH: &str = "/var/lib/rpm/rpmdb.sqlite-wal";
/// The Berkeley DB database of rpm < 4.16 (EL8 and older), which this module does not read.
const BDB_PATH: &str = "/var/lib/rpm/Packages";

/// The most bytes copied out of the image (database and log together): an EL9 server install
/// has a database of about 20 MB, a large desktop 100 MB.
pub const MAX_DB_SIZE: u64 = 512 << 20;
/// The most rows read: a real system has a few thousand packages.
pub const MAX_PACKAGES: usize = 1 << 20;
/// The most index entries in a header, rpm's own limit (`HEADER_TAGS_MAX`).
pub const MAX_INDEX_COUNT: u32 = 0xffff;
/// The largest data store of a header, rpm's own limit (`HEADER_DATA_MAX`).
pub const MAX_DATA_LEN: u32 = 0x0fff_ffff;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_LICENSE: u32 = 1014;
const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RpmError {
    #[error("rpm header: {0}")]
    #[diagnostic(code(ccb::inspect::rpm::header))]
    Header(String),
    #[error("{DB_PATH}, Packages row {hnum}: {detail}")]
    #[diagnostic(code(ccb::inspect::rpm::row))]
    Row { hnum: i64, detail: String },
    #[error("{DB_PATH}: {0}")]
    #[diagnostic(code(ccb::inspect::rpm::database))]
    Database(String),
    #[error("{DB_PATH}: more than {MAX_PACKAGES} packages")]
    #[diagnostic(code(ccb::inspect::rpm::too_many))]
    TooMany,
    #[error("{BDB_PATH}: a Berkeley DB rpm database (rpm < 4.16, EL8 and older)")]
    #[diagnostic(
        code(ccb::inspect::rpm::berkeley_db),
        help("ccb reads the SQLite rpm database of EL9 and later (/var/lib/rpm/rpmdb.sqlite)")
    )]
    BerkeleyDb,
    #[error("a temporary copy of {DB_PATH}: {0}")]
    #[diagnostic(code(ccb::inspect::rpm::io))]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Fs(#[from] FsError),
}

/// One installed package: one header of the database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RpmPackage {
    pub name: String,
    /// `None` when the header has no EPOCH (not the same, for display, as an explicit 0).
    pub epoch: Option<u32>,
    pub version: String,
    pub release: String,
    /// `x86_64`, `noarch`…; empty when the header has no ARCH (`gpg-pubkey`, shown `(none)`
    /// by rpm).
    pub arch: String,
    /// The source rpm it was built from (`bash-5.1.8-9.el9.src.rpm`), when the header says.
    pub source_rpm: Option<String>,
    /// The package's declared license (`GPL-3.0-or-later`, or older free-form names).
    pub license: Option<String>,
}

impl RpmPackage {
    /// `[epoch:]version-release` as rpm's `%{EVR}` shows it, and as the build's manifest
    /// writes it (`%{EPOCH}:%{VERSION}-%{RELEASE}` with `(none):` removed): the epoch only when
    /// the header has one, `0:` included.
    pub fn evr(&self) -> String {
        match self.epoch {
            Some(e) => format!("{e}:{}-{}", self.version, self.release),
            None => format!("{}-{}", self.version, self.release),
        }
    }

    /// `name.arch`, or `name` when the header has no architecture.
    pub fn key(&self) -> String {
        package_key(&self.name, &self.arch)
    }
}

fn package_key(name: &str, arch: &str) -> String {
    if arch.is_empty() {
        name.to_string()
    } else {
        format!("{name}.{arch}")
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// One index entry: (type, offset, count).
type Entry = (u32, u32, u32);

/// Parses one header blob as the rpmdb stores it (rpm's `headerExport`): big-endian
/// `index_count`, `data_len`, `index_count` entries of (`tag`, `type`, `offset`, `count`),
/// then `data_len` bytes of data. Reads NAME, VERSION, RELEASE (required), EPOCH and ARCH.
pub fn parse_header(blob: &[u8]) -> Result<RpmPackage, RpmError> {
    fn bad<T>(detail: String) -> Result<T, RpmError> {
        Err(RpmError::Header(detail))
    }
    if blob.len() < 8 {
        return bad(format!(
            "{} bytes, shorter than its 8-byte preamble",
            blob.len()
        ));
    }
    let (il, dl) = (be32(blob, 0), be32(blob, 4));
    if il == 0 || il > MAX_INDEX_COUNT {
        return bad(format!("{il} index entries (1 to {MAX_INDEX_COUNT})"));
    }
    if dl > MAX_DATA_LEN {
        return bad(format!("a {dl}-byte data store, more than {MAX_DATA_LEN}"));
    }
    // At most 8 + 16 × 0xffff + 0x0fffffff: no overflow even with a 32-bit usize.
    let index_end = 8 + 16 * il as usize;
    let expected = index_end + dl as usize;
    if blob.len() != expected {
        return bad(format!(
            "{} bytes, but 8 + 16 × {il} entries + {dl} bytes of data make {expected}",
            blob.len()
        ));
    }
    let data = &blob[index_end..];
    let wanted = [
        TAG_NAME,
        TAG_VERSION,
        TAG_RELEASE,
        TAG_EPOCH,
        TAG_ARCH,
        TAG_LICENSE,
        TAG_SOURCERPM,
    ];
    let mut found: [Option<Entry>; 7] = [None; 7];
    for e in blob[8..index_end].chunks_exact(16) {
        let tag = be32(e, 0);
        if let Some(i) = wanted.iter().position(|&t| t == tag) {
            if found[i].is_some() {
                return bad(format!("tag {tag} appears twice"));
            }
            found[i] = Some((be32(e, 4), be32(e, 8), be32(e, 12)));
        }
    }
    let string = |i: usize| -> Result<Option<String>, RpmError> {
        let Some((ty, offset, count)) = found[i] else {
            return Ok(None);
        };
        let tag = wanted[i];
        if ty != TYPE_STRING || count != 1 {
            return bad(format!(
                "tag {tag}: type {ty} × {count}, not one STRING ({TYPE_STRING})"
            ));
        }
        let rest = data.get(offset as usize..).filter(|r| !r.is_empty());
        let Some(rest) = rest else {
            return bad(format!(
                "tag {tag}: offset {offset} outside the {dl}-byte data store"
            ));
        };
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return bad(format!(
                "tag {tag}: the string at {offset} is not terminated in the data store"
            ));
        };
        match std::str::from_utf8(&rest[..end]) {
            Ok(s) => Ok(Some(s.to_string())),
            Err(e) => bad(format!(
                "tag {tag}: the string at {offset} is not UTF-8: {e}"
            )),
        }
    };
    let required = |i: usize| -> Result<String, RpmError> {
        string(i)?.map_or_else(|| bad(format!("no tag {} (required)", wanted[i])), Ok)
    };
    let name = required(0)?;
    if name.is_empty() {
        return bad("an empty NAME".into());
    }
    let version = required(1)?;
    let release = required(2)?;
    let arch = string(4)?.unwrap_or_default();
    let epoch = match found[3] {
        None => None,
        Some((ty, offset, count)) => {
            if ty != TYPE_INT32 || count != 1 {
                return bad(format!(
                    "tag {TAG_EPOCH}: type {ty} × {count}, not one INT32 ({TYPE_INT32})"
                ));
            }
            let offset = offset as usize;
            // rpm aligns (and checks the alignment of) numbers in the data store.
            if !offset.is_multiple_of(4) || offset.checked_add(4).is_none_or(|end| end > data.len())
            {
                return bad(format!(
                    "tag {TAG_EPOCH}: offset {offset} unaligned or outside the {dl}-byte data store"
                ));
            }
            Some(be32(data, offset))
        }
    };
    // Informational tags: a malformed one is left out rather than failing the package. rpm
    // itself stores `(none)` for some it has no value for (an imported gpg-pubkey's
    // SOURCERPM), the same text its queries print for a missing tag: absent either way.
    let optional = |i: usize| {
        string(i)
            .ok()
            .flatten()
            .filter(|s| !s.is_empty() && s != "(none)")
    };
    Ok(RpmPackage {
        name,
        epoch,
        version,
        release,
        arch,
        license: optional(5),
        source_rpm: optional(6),
    })
}

/// A file of the image, `None` when it does not exist; over `limit` bytes, an error
/// ([`FsError::TooLarge`]).
fn read_optional(fs: &dyn Filesystem, path: &str, limit: u64) -> Result<Option<Vec<u8>>, RpmError> {
    match fs.read_limited(path, limit) {
        Ok(d) => Ok(Some(d)),
        Err(FsError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the image's rpm database: every row of `Packages`, in `hnum` order.
pub fn read_packages(fs: &dyn Filesystem) -> Result<Vec<RpmPackage>, RpmError> {
    let db = match read_optional(fs, DB_PATH, MAX_DB_SIZE)? {
        Some(db) => db,
        None if fs.metadata(BDB_PATH).is_ok() => return Err(RpmError::BerkeleyDb),
        None => {
            return Err(FsError::NotFound {
                path: DB_PATH.into(),
            }
            .into());
        }
    };
    // A private directory (0700), removed when dropped. The `-shm` file of the image is not
    // copied: it is only an index of the log, which SQLite rebuilds from the log (and the first
    // connection to a database discards an existing one anyway).
    let dir = tempfile::Builder::new().prefix("ccb-rpmdb-").tempdir()?;
    let path = dir.path().join("rpmdb.sqlite");
    std::fs::write(&path, &db)?;
    let wal = read_optional(fs, WAL_PATH, MAX_DB_SIZE - db.len() as u64)?;
    drop(db);
    if let Some(wal) = wal {
        std::fs::write(dir.path().join("rpmdb.sqlite-wal"), wal)?;
    }
    read_sqlite(&path)
}

/// Reads the `Packages` table of an rpm SQLite database on the host (a copy: SQLite may create
/// its `-shm` next to it).
pub fn read_sqlite(path: &Path) -> Result<Vec<RpmPackage>, RpmError> {
    use rusqlite::{OpenFlags, config::DbConfig, types::ValueRef};
    let db_err = |e: rusqlite::Error| RpmError::Database(e.to_string());
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    // An untrusted database: no functions with side effects from its schema (views,
    // triggers), no writes, stricter checks of corrupt pages.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(db_err)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .map_err(db_err)?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cell_size_check = ON;")
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        if out.len() == MAX_PACKAGES {
            return Err(RpmError::TooMany);
        }
        let hnum: i64 = row.get(0).map_err(db_err)?;
        let row_err = |detail: String| RpmError::Row { hnum, detail };
        match row.get_ref(1).map_err(db_err)? {
            ValueRef::Blob(b) => out.push(parse_header(b).map_err(|e| match e {
                RpmError::Header(d) => row_err(d),
                e => row_err(e.to_string()),
            })?),
            v => {
                return Err(row_err(format!(
                    "a {} value, not a blob",
                    v.data_type().to_string().to_lowercase()
                )));
            }
        }
    }
    Ok(out)
}

/// The manifest's `version` (`[epoch:]version-release`) and a package's are the same: as
/// [`RpmPackage::evr`] shows it, or with the same version-release and the same epoch, a missing
/// one being 0 as rpm compares them.
fn same_evr(manifest: &str, p: &RpmPackage) -> bool {
    if manifest == p.evr() {
        return true;
    }
    let (epoch, vr) = match manifest.split_once(':') {
        Some((e, vr)) => match e.parse::<u32>() {
            Ok(e) => (e, vr),
            Err(_) => return false,
        },
        None => (0, manifest),
    };
    epoch == p.epoch.unwrap_or(0)
        && vr.len() == p.version.len() + 1 + p.release.len()
        && vr == format!("{}-{}", p.version, p.release)
}

/// Every package of the build's rpm manifest must be installed in the image with the same
/// epoch, version and release. An entry matches the image's packages of the same name and
/// architecture, or of the same name when the image has it for one architecture only. Several
/// versions of one package (kernels, `gpg-pubkey`) may be installed: one of them must match.
/// Both lists are sorted by key (`name.arch`); a mismatch lists the image's versions.
pub fn compare(manifest: &Manifest, packages: &[RpmPackage]) -> Comparison {
    let mut image: BTreeMap<&str, BTreeMap<&str, Vec<&RpmPackage>>> = BTreeMap::new();
    for p in packages {
        image
            .entry(&p.name)
            .or_default()
            .entry(&p.arch)
            .or_default()
            .push(p);
    }
    let mut out = Comparison::default();
    for m in manifest.packages.iter().filter(|m| m.is_installed()) {
        out.checked += 1;
        // `%{ARCH}` of a header without one.
        let arch = if m.arch == "(none)" { "" } else { &m.arch };
        let key = package_key(&m.package, arch);
        let installed = image.get(m.package.as_str()).and_then(|arches| {
            arches
                .get(arch)
                .or_else(|| arches.values().next().filter(|_| arches.len() == 1))
        });
        match installed {
            None => out.missing.push(key),
            Some(ps) if ps.iter().any(|p| same_evr(&m.version, p)) => {}
            Some(ps) => {
                let got: Vec<String> = ps.iter().map(|p| p.evr()).collect();
                out.version_mismatch
                    .push((key, m.version.clone(), got.join(", ")));
            }
        }
    }
    out.missing.sort();
    out.missing.dedup();
    out.version_mismatch.sort();
    out.version_mismatch.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::dpkg::ManifestPackage;

    /// A header as rpm exports it: the entries in order, each value aligned as rpm aligns it.
    /// `(tag, type, count, value bytes)`.
    fn header(entries: &[(u32, u32, u32, &[u8])]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        for (tag, ty, count, value) in entries {
            if *ty == TYPE_INT32 {
                while !data.len().is_multiple_of(4) {
                    data.push(0);
                }
            }
            for v in [*tag, *ty, data.len() as u32, *count] {
                index.extend_from_slice(&v.to_be_bytes());
            }
            data.extend_from_slice(value);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&index);
        out.extend_from_slice(&data);
        out
    }

    fn package_header(epoch: Option<u32>) -> Vec<u8> {
        let e = epoch.map(u32::to_be_bytes);
        let mut entries: Vec<(u32, u32, u32, &[u8])> = vec![
            (TAG_NAME, TYPE_STRING, 1, b"kernel-core\0"),
            (TAG_VERSION, TYPE_STRING, 1, b"5.14.0\0"),
            (TAG_RELEASE, TYPE_STRING, 1, b"570.el9\0"),
        ];
        if let Some(e) = &e {
            entries.push((TAG_EPOCH, TYPE_INT32, 1, e));
        }
        entries.push((TAG_ARCH, TYPE_STRING, 1, b"x86_64\0"));
        header(&entries)
    }

    fn err(blob: &[u8]) -> String {
        match parse_header(blob) {
            Err(RpmError::Header(d)) => d,
            other => panic!("{other:?}"),
        }
    }

    fn patch(blob: &mut [u8], at: usize, v: u32) {
        blob[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn a_header_gives_name_epoch_version_release_arch() {
        let p = parse_header(&package_header(Some(1))).unwrap();
        assert_eq!(
            p,
            RpmPackage {
                name: "kernel-core".into(),
                epoch: Some(1),
                version: "5.14.0".into(),
                release: "570.el9".into(),
                arch: "x86_64".into(),
                source_rpm: None,
                license: None,
            }
        );
        assert_eq!(p.evr(), "1:5.14.0-570.el9");
        assert_eq!(p.key(), "kernel-core.x86_64");
        let p = parse_header(&package_header(None)).unwrap();
        assert_eq!((p.epoch, p.evr()), (None, "5.14.0-570.el9".to_string()));
        // An explicit epoch 0 shows, as in rpm's %{EVR} and the build's manifest.
        assert_eq!(
            parse_header(&package_header(Some(0))).unwrap().evr(),
            "0:5.14.0-570.el9"
        );
    }

    #[test]
    fn a_header_without_arch_is_keyed_by_its_name() {
        let p = parse_header(&header(&[
            (TAG_NAME, TYPE_STRING, 1, b"gpg-pubkey\0"),
            (TAG_VERSION, TYPE_STRING, 1, b"8483c65d\0"),
            (TAG_RELEASE, TYPE_STRING, 1, b"5ccc5b19\0"),
        ]))
        .unwrap();
        assert_eq!(
            (p.key(), p.evr()),
            ("gpg-pubkey".into(), "8483c65d-5ccc5b19".into())
        );
    }

    #[test]
    fn truncated_and_oversized_blobs_are_errors() {
        let good = package_header(Some(2));
        for len in [0, 3, 7, 8, 20, good.len() - 1] {
            assert!(parse_header(&good[..len]).is_err(), "{len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer).contains("make"), "{}", err(&longer));
        let mut huge = good.clone();
        patch(&mut huge, 0, 0xffff_ffff);
        assert!(err(&huge).contains("index entries"), "{}", err(&huge));
        patch(&mut huge, 0, 0);
        assert!(err(&huge).contains("0 index entries"));
        let mut big_data = good.clone();
        patch(&mut big_data, 4, 0xffff_fff0);
        assert!(err(&big_data).contains("data store"), "{}", err(&big_data));
    }

    #[test]
    fn offsets_types_and_unterminated_strings_are_checked() {
        let good = package_header(Some(2));
        let entry = |i: usize, field: usize| 8 + 16 * i + 4 * field;
        // NAME's offset past the data store.
        let mut b = good.clone();
        patch(&mut b, entry(0, 2), 0x7fff_ffff);
        assert!(err(&b).contains("outside"), "{}", err(&b));
        // ARCH (the last value) made unterminated by pointing at its last byte minus the NUL.
        let mut b = good.clone();
        let n = b.len();
        b[n - 1] = b'x';
        assert!(err(&b).contains("not terminated"), "{}", err(&b));
        // EPOCH unaligned, outside, of the wrong type.
        let mut b = good.clone();
        patch(&mut b, entry(3, 2), 1);
        assert!(err(&b).contains("unaligned"), "{}", err(&b));
        let mut b = good.clone();
        patch(&mut b, entry(3, 2), 0xffff_fffc);
        assert!(err(&b).contains("outside"), "{}", err(&b));
        let mut b = good.clone();
        patch(&mut b, entry(3, 1), TYPE_STRING);
        assert!(err(&b).contains("INT32"), "{}", err(&b));
        // NAME as two strings, as an INT32.
        let mut b = good.clone();
        patch(&mut b, entry(0, 3), 2);
        assert!(err(&b).contains("STRING"), "{}", err(&b));
        // VERSION retagged as NAME: a duplicate, and VERSION missing.
        let mut b = good.clone();
        patch(&mut b, entry(1, 0), TAG_NAME);
        assert!(err(&b).contains("twice"), "{}", err(&b));
        let mut b = good.clone();
        patch(&mut b, entry(1, 0), 999);
        assert!(err(&b).contains("no tag 1001"), "{}", err(&b));
        // Not UTF-8; an empty name.
        let b = header(&[
            (TAG_NAME, TYPE_STRING, 1, b"\xff\0"),
            (TAG_VERSION, TYPE_STRING, 1, b"1\0"),
            (TAG_RELEASE, TYPE_STRING, 1, b"1\0"),
        ]);
        assert!(err(&b).contains("UTF-8"), "{}", err(&b));
        let b = header(&[
            (TAG_NAME, TYPE_STRING, 1, b"\0"),
            (TAG_VERSION, TYPE_STRING, 1, b"1\0"),
            (TAG_RELEASE, TYPE_STRING, 1, b"1\0"),
        ]);
        assert!(err(&b).contains("empty NAME"), "{}", err(&b));
    }

    fn pkg(name: &str, epoch: Option<u32>, vr: &str, arch: &str) -> RpmPackage {
        let (version, release) = vr.split_once('-').unwrap();
        RpmPackage {
            name: name.into(),
            epoch,
            version: version.into(),
            release: release.into(),
            arch: arch.into(),
            source_rpm: None,
            license: None,
        }
    }

    fn manifest(entries: &[(&str, &str, &str)]) -> Manifest {
        Manifest {
            packages: entries
                .iter()
                .map(|(p, a, v)| ManifestPackage {
                    package: p.to_string(),
                    arch: a.to_string(),
                    version: v.to_string(),
                    status: None,
                })
                .collect(),
        }
    }

    #[test]
    fn comparison_matches_name_arch_epochs_and_any_installed_version() {
        let image = [
            pkg("bash", None, "5.1.8-9.el9", "x86_64"),
            pkg("glibc", None, "2.34-168.el9", "x86_64"),
            pkg("glibc", None, "2.34-168.el9", "i686"),
            pkg("kernel-core", None, "5.14.0-570.el9", "x86_64"),
            pkg("kernel-core", None, "5.14.0-580.el9", "x86_64"),
            pkg("dbus", Some(1), "1.12.20-8.el9", "x86_64"),
            pkg("gpg-pubkey", None, "8483c65d-5ccc5b19", ""),
            pkg("zlib", Some(0), "1.2.11-40.el9", "x86_64"),
            pkg("tzdata", None, "2025a-1.el9", "noarch"),
        ];
        let m = manifest(&[
            ("bash", "x86_64", "5.1.8-9.el9"),
            ("glibc", "i686", "2.34-168.el9"),
            ("kernel-core", "x86_64", "5.14.0-580.el9"),
            ("dbus", "x86_64", "1:1.12.20-8.el9"),
            ("gpg-pubkey", "(none)", "8483c65d-5ccc5b19"),
            // Epoch 0 and no epoch are the same to rpm.
            ("zlib", "x86_64", "1.2.11-40.el9"),
            // One arch installed: matched by name.
            ("tzdata", "x86_64", "2025a-1.el9"),
        ]);
        let c = compare(&m, &image);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(c.checked, 7);

        let m = manifest(&[
            ("bash", "x86_64", "5.1.8-10.el9"),
            ("dbus", "x86_64", "1.12.20-8.el9"),
            ("glibc", "aarch64", "2.34-168.el9"),
            ("kernel-core", "x86_64", "5.14.0-590.el9"),
            ("vim-enhanced", "x86_64", "2:8.2.2637-21.el9"),
            ("bash", "x86_64", "x:5.1.8-9.el9"),
        ]);
        let c = compare(&m, &image);
        assert_eq!(c.missing, ["glibc.aarch64", "vim-enhanced.x86_64"]);
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            c.version_mismatch,
            [
                s("bash.x86_64", "5.1.8-10.el9", "5.1.8-9.el9"),
                s("bash.x86_64", "x:5.1.8-9.el9", "5.1.8-9.el9"),
                s("dbus.x86_64", "1.12.20-8.el9", "1:1.12.20-8.el9"),
                s(
                    "kernel-core.x86_64",
                    "5.14.0-590.el9",
                    "5.14.0-570.el9, 5.14.0-580.el9"
                ),
            ]
        );
        assert_eq!(c.checked, 6);
    }

    #[test]
    fn a_package_matches_the_manifest_entry_written_for_it_whatever_its_strings() {
        // rpmbuild refuses `:` and `-` in versions, the parser does not: an entry written as
        // `%{EVR}` must still match (the invariant of the rpm_header fuzz target).
        let p = parse_header(&header(&[
            (TAG_NAME, TYPE_STRING, 1, b"odd\0"),
            (TAG_VERSION, TYPE_STRING, 1, b"1:2-3\0"),
            (TAG_RELEASE, TYPE_STRING, 1, b"4\0"),
            (TAG_ARCH, TYPE_STRING, 1, b"(none)\0"),
        ]))
        .unwrap();
        assert_eq!(p.evr(), "1:2-3-4");
        let m = manifest(&[("odd", "(none)", "1:2-3-4")]);
        assert!(compare(&m, std::slice::from_ref(&p)).is_empty());
        let m = manifest(&[("odd", "(none)", "1:2-3-5")]);
        assert_eq!(compare(&m, &[p]).version_mismatch.len(), 1);
    }

    #[test]
    fn the_manifest_is_the_json_the_finalise_hook_writes_on_rpm_systems() {
        // What `rpm -qa --qf` and the `(none):` sed of 99-write-dpkg-manifest produce.
        let json = br#"{"packages": [
{"package": "gpg-pubkey","arch": "(none)","version": "8483c65d-5ccc5b19"},
{"package": "dbus","arch": "x86_64","version": "1:1.12.20-8.el9"}
]}"#;
        let m = Manifest::parse(json).unwrap();
        let image = [
            pkg("gpg-pubkey", None, "8483c65d-5ccc5b19", ""),
            pkg("dbus", Some(1), "1.12.20-8.el9", "x86_64"),
        ];
        let c = compare(&m, &image);
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(c.checked, 2);
    }
}
