//! `ccb::inspect`'s partition tables, filesystems and dpkg database on disks built by the real
//! tools (`sgdisk`, `sfdisk`, `mkfs.ext4 -d`, `mkfs.xfs -p`), without root, mounts or loop
//! devices; `debugfs` and `xfs_db` are the reference for what the images hold.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ccb::inspect::ReadAt;
use ccb::inspect::disk::{self, DiskError, Location};
use ccb::inspect::dpkg;
use ccb::inspect::fs::{self, FileKind, Filesystem, FsError};

const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const IMAGE_PASSWD: &str = "root:x:0:0:root of the IMAGE, not the host:/root:/bin/sh\n";
const STATUS: &str = "\
Package: cloud-init
Status: install ok installed
Architecture: all
Version: 25.1-1
Description: initialization for cloud instances
 more description.

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u8

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
";

// ---- building images --------------------------------------------------------------------

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

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(target, p).unwrap();
}

/// Deterministic bytes that differ from block to block, so that a block read from the wrong
/// place never matches.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A long symlink target (stored in data blocks rather than the inode) that still leads to
/// `/usr/bin/cloud-init`.
fn long_target() -> String {
    format!("/usr/{}bin/cloud-init", "./".repeat(300))
}

/// The root filesystem tree of the tests: what a cloud image's root looks like where the
/// checks look.
fn root_tree(dir: &Path, os_id: &str) -> PathBuf {
    let root = dir.join(format!("root-{os_id}"));
    write(
        &root,
        "usr/bin/cloud-init",
        b"#!/bin/sh\necho cloud-init\n",
        0o755,
    );
    write(
        &root,
        "usr/local/bin/cc-read-vendordata",
        b"#!/bin/sh\n",
        0o755,
    );
    write(&root, "usr/bin/not-exec", b"data\n", 0o644);
    write(&root, "usr/bin/vim.basic", b"\x7fELF vim\n", 0o755);
    write(
        &root,
        "usr/lib/os-release",
        format!("ID={os_id}\n").as_bytes(),
        0o644,
    );
    write(&root, "etc/passwd", IMAGE_PASSWD.as_bytes(), 0o644);
    write(&root, "var/lib/dpkg/status", STATUS.as_bytes(), 0o644);
    write(
        &root,
        "usr/share/doc/big-file",
        &pattern(300 * 1024 + 123, 7),
        0o644,
    );
    for i in 0..2000 {
        write(&root, &format!("usr/share/big/entry-{i:04}"), b"", 0o644);
    }
    link(&root, "bin", "usr/bin");
    link(&root, "etc/os-release", "../usr/lib/os-release");
    link(&root, "usr/bin/editor", "/etc/alternatives/editor");
    link(&root, "etc/alternatives/editor", "/usr/bin/vim.basic");
    link(&root, "loop/a", "b");
    link(&root, "loop/b", "a");
    link(&root, "usr/share/passwd-link", "/etc/passwd");
    link(&root, "usr/share/escape", "../../../../../../etc/passwd");
    link(&root, "usr/share/long-link", &long_target());
    root
}

struct Sgdisk {
    first: u64,
    last: u64,
}

/// First and last sector of partition `n`, as `sgdisk -i` says.
fn sgdisk_info(disk: &Path, n: u32) -> Sgdisk {
    let out = run(Command::new(tool("sgdisk", "gdisk"))
        .arg("-i")
        .arg(n.to_string())
        .arg(disk));
    let out = String::from_utf8_lossy(&out);
    let field = |name: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Sgdisk {
        first: field("First sector:"),
        last: field("Last sector:"),
    }
}

fn mkfs_ext4_at(disk: &Path, root: &Path, offset: u64, bytes: u64, extra: &[&str]) {
    run(Command::new(tool("mkfs.ext4", "e2fsprogs"))
        .args(["-q", "-F"])
        .args(extra)
        .arg("-d")
        .arg(root)
        .arg("-E")
        .arg(format!("offset={offset}"))
        .arg(disk)
        .arg(format!("{}k", bytes / 1024)));
}

/// A GPT disk as ccb builds them: p14 BIOS boot, p15 ESP (vfat), p1 a "Linux filesystem"
/// decoy that has an os-release too, p2 the root with the Linux root (x86-64) type.
struct GptDisk {
    path: PathBuf,
    root_offset: u64,
}

fn gpt_ext4_disk(dir: &Path) -> GptDisk {
    let root = root_tree(dir, "testos");
    let decoy = dir.join("decoy");
    write(&decoy, "etc/os-release", b"ID=decoy\n", 0o644);
    let path = dir.join("gpt.raw");
    File::create(&path).unwrap().set_len(160 << 20).unwrap();
    run(Command::new(tool("sgdisk", "gdisk"))
        .args([
            "-o",
            "-n",
            "14:2048:+1M",
            "-t",
            "14:EF02",
            "-n",
            "15:0:+8M",
            "-t",
            "15:EF00",
        ])
        .args(["-n", "1:0:+16M", "-t", "1:8300", "-c", "1:decoy"])
        .args([
            "-n",
            "2:0:0",
            "-t",
            &format!("2:{ROOT_X86_64}"),
            "-c",
            "2:root",
        ])
        .arg(&path));
    let esp = sgdisk_info(&path, 15);
    run(Command::new(tool("mkfs.fat", "dosfstools"))
        .arg(format!("--offset={}", esp.first))
        .arg(&path)
        // mkfs.fat counts in KiB.
        .arg(((esp.last + 1 - esp.first) * 512 / 1024).to_string()));
    let d = sgdisk_info(&path, 1);
    mkfs_ext4_at(
        &path,
        &decoy,
        d.first * 512,
        (d.last - d.first + 1) * 512,
        &[],
    );
    let r = sgdisk_info(&path, 2);
    mkfs_ext4_at(
        &path,
        &root,
        r.first * 512,
        (r.last - r.first + 1) * 512,
        &[],
    );
    GptDisk {
        path,
        root_offset: r.first * 512,
    }
}

fn open_disk(path: &Path) -> Arc<dyn ReadAt> {
    Arc::new(File::open(path).unwrap())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ccb-inspect-fs-")
        .tempdir()
        .unwrap()
}

/// `debugfs -R CMD` on the ext4 at `offset` of `disk`.
fn debugfs(disk: &Path, offset: u64, cmd: &str) -> Vec<u8> {
    run(Command::new(tool("debugfs", "e2fsprogs"))
        .arg("-R")
        .arg(cmd)
        .arg(format!("{}?offset={offset}", disk.display())))
}

// ---- partition tables -------------------------------------------------------------------

#[test]
fn gpt_partitions_are_where_sgdisk_put_them_with_their_types_and_names() {
    let dir = tempdir();
    let disk = gpt_ext4_disk(dir.path());
    let parts = disk::partitions(&*open_disk(&disk.path)).unwrap();
    let indexes: Vec<u32> = parts.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [1, 2, 14, 15]);
    for p in &parts {
        let s = sgdisk_info(&disk.path, p.index);
        assert_eq!(p.start, s.first * 512, "{p}");
        assert_eq!(p.size, (s.last - s.first + 1) * 512, "{p}");
        assert_eq!(p.mbr_type, None);
    }
    assert_eq!(parts[1].type_guid.as_deref(), Some(ROOT_X86_64));
    assert_eq!(parts[1].name, "root");
    assert_eq!(parts[0].name, "decoy");
    assert_eq!(parts[2].type_guid.as_deref(), Some(disk::BIOS_BOOT_GUID));
    assert_eq!(parts[3].type_guid.as_deref(), Some(disk::ESP_GUID));
}

#[test]
fn the_root_is_the_partition_with_the_root_type_even_after_another_with_an_os_release() {
    let dir = tempdir();
    let disk = gpt_ext4_disk(dir.path());
    let (loc, fs) = disk::find_root(open_disk(&disk.path)).unwrap();
    let Location::Partition(p) = loc else {
        panic!("root found on {loc}")
    };
    assert_eq!(p.index, 2);
    assert_eq!(fs.kind(), "ext4");
    assert_eq!(fs.read("/etc/os-release").unwrap(), b"ID=testos\n");
}

#[test]
fn an_mbr_disk_has_its_root_on_a_primary_partition() {
    let dir = tempdir();
    let root = root_tree(dir.path(), "mbros");
    let path = dir.path().join("mbr.raw");
    File::create(&path).unwrap().set_len(64 << 20).unwrap();
    let mut sfdisk = Command::new(tool("sfdisk", "fdisk"));
    sfdisk
        .arg("--quiet")
        .arg(&path)
        .stdin(std::process::Stdio::piped());
    let mut child = sfdisk.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=4096, type=83\nstart=6144, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    mkfs_ext4_at(&path, &root, 6144 * 512, (64 << 20) - 6144 * 512, &[]);

    let parts = disk::partitions(&*open_disk(&path)).unwrap();
    let got: Vec<(u32, u64, u64, Option<u8>)> = parts
        .iter()
        .map(|p| (p.index, p.start, p.size, p.mbr_type))
        .collect();
    assert_eq!(
        got,
        [
            (1, 2048 * 512, 4096 * 512, Some(0x83)),
            (2, 6144 * 512, (64 << 20) - 6144 * 512, Some(0x83))
        ]
    );
    let (loc, fs) = disk::find_root(open_disk(&path)).unwrap();
    assert!(
        matches!(loc, Location::Partition(ref p) if p.index == 2),
        "{loc}"
    );
    assert_eq!(fs.read("/usr/lib/os-release").unwrap(), b"ID=mbros\n");
}

#[test]
fn a_filesystem_on_the_whole_disk_is_the_root() {
    let dir = tempdir();
    let root = root_tree(dir.path(), "whole");
    let path = dir.path().join("whole.raw");
    File::create(&path).unwrap().set_len(64 << 20).unwrap();
    mkfs_ext4_at(&path, &root, 0, 64 << 20, &[]);
    assert_eq!(disk::partitions(&*open_disk(&path)).unwrap(), []);
    let (loc, fs) = disk::find_root(open_disk(&path)).unwrap();
    assert_eq!(loc, Location::WholeDisk);
    assert_eq!(fs.read("/etc/os-release").unwrap(), b"ID=whole\n");
}

// ---- the Filesystem trait on ext4 -------------------------------------------------------

fn ext4_root() -> (tempfile::TempDir, GptDisk, Box<dyn Filesystem>) {
    let dir = tempdir();
    let disk = gpt_ext4_disk(dir.path());
    let (_, fs) = disk::find_root(open_disk(&disk.path)).unwrap();
    (dir, disk, fs)
}

/// The checks ccb runs, the same on every filesystem.
fn check_paths_resolve_inside_the_image(fs: &dyn Filesystem) {
    // Exec bits, through the merged-/usr symlink.
    let m = fs.metadata("/bin/cloud-init").unwrap();
    assert_eq!((m.kind, m.mode), (FileKind::File, 0o755));
    assert!(m.is_executable());
    assert!(
        fs.metadata("/usr/local/bin/cc-read-vendordata")
            .unwrap()
            .is_executable()
    );
    let m = fs.metadata("/usr/bin/not-exec").unwrap();
    assert_eq!((m.kind, m.mode, m.size), (FileKind::File, 0o644, 5));
    assert!(!m.is_executable());
    assert!(matches!(
        fs.metadata("/usr/bin/absent"),
        Err(FsError::NotFound { .. })
    ));
    assert!(matches!(
        fs.metadata("/usr/bin/not-exec/x"),
        Err(FsError::NotADirectory { .. })
    ));

    // Symlinks themselves.
    assert_eq!(fs.symlink_metadata("/bin").unwrap().kind, FileKind::Symlink);
    assert_eq!(fs.metadata("/bin").unwrap().kind, FileKind::Dir);
    assert_eq!(fs.read_link("/bin").unwrap(), "usr/bin");
    assert!(matches!(
        fs.read_link("/usr/bin/not-exec"),
        Err(FsError::NotASymlink { .. })
    ));

    // Relative and absolute links, and a chain of absolute ones (alternatives).
    assert_eq!(fs.read("/etc/os-release").unwrap(), b"ID=testos\n");
    assert_eq!(
        fs.canonicalize("/etc/os-release").unwrap(),
        "/usr/lib/os-release"
    );
    assert_eq!(
        fs.read_link("/usr/bin/editor").unwrap(),
        "/etc/alternatives/editor"
    );
    assert_eq!(
        fs.canonicalize("/usr/bin/editor").unwrap(),
        "/usr/bin/vim.basic"
    );
    assert_eq!(
        fs.canonicalize("/bin/../lib/./os-release").unwrap(),
        "/usr/lib/os-release"
    );
    assert!(fs.metadata("/usr/bin/editor").unwrap().is_executable());

    // An absolute link reads the image's file, never the host's.
    let host = std::fs::read("/etc/passwd").unwrap_or_default();
    let via_link = fs.read("/usr/share/passwd-link").unwrap();
    assert_eq!(via_link, IMAGE_PASSWD.as_bytes());
    assert_ne!(via_link, host);
    // `..` past the root stays at the root, as in the kernel.
    assert_eq!(
        fs.read("/usr/share/escape").unwrap(),
        IMAGE_PASSWD.as_bytes()
    );

    // A long target, stored in a data block.
    match fs.read_link("/usr/share/long-link") {
        Ok(target) => {
            assert_eq!(target, long_target());
            assert_eq!(
                fs.canonicalize("/usr/share/long-link").unwrap(),
                "/usr/bin/cloud-init"
            );
        }
        // xfsprogs 6.1's `mkfs.xfs -p` writes such blocks without the v5 header (magic, CRC,
        // owner): `xfs_db` reports a CRC error and the kernel refuses the link; so do we.
        Err(FsError::Corrupt { fs: "xfs", .. }) if fs.kind() == "xfs" => {}
        Err(e) => panic!("long link: {e}"),
    }

    // A loop is an error, whichever way it is reached.
    assert!(matches!(
        fs.metadata("/loop/a"),
        Err(FsError::SymlinkLoop { .. })
    ));
    assert!(matches!(
        fs.read("/loop/b/x"),
        Err(FsError::SymlinkLoop { .. })
    ));
    assert_eq!(
        fs.symlink_metadata("/loop/a").unwrap().kind,
        FileKind::Symlink
    );

    // Content, a directory of 2000 entries, and the size cap.
    assert_eq!(
        fs.read("/usr/share/doc/big-file").unwrap(),
        pattern(300 * 1024 + 123, 7)
    );
    let names: BTreeSet<String> = fs
        .read_dir("/usr/share/big")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let want: BTreeSet<String> = (0..2000).map(|i| format!("entry-{i:04}")).collect();
    assert_eq!(names, want);
    assert!(matches!(
        fs.read_limited("/usr/share/doc/big-file", 1000),
        Err(FsError::TooLarge {
            size: 307_323,
            limit: 1000,
            ..
        })
    ));
    assert!(matches!(
        fs.read("/usr/share"),
        Err(FsError::IsADirectory { .. })
    ));
    let usr: BTreeSet<(String, FileKind)> = fs
        .read_dir("/")
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert!(
        usr.contains(&("bin".to_string(), FileKind::Symlink)),
        "{usr:?}"
    );
    assert!(usr.contains(&("usr".to_string(), FileKind::Dir)), "{usr:?}");

    // The dpkg database, compared with a manifest like the build's.
    let status = dpkg::read_status(fs).unwrap();
    let manifest = dpkg::parse_manifest(
        br#"{"packages": [
{"package": "cloud-init","arch": "all","version": "25.1-1","status": "ii "},
{"package": "libc6:amd64","arch": "amd64","version": "2.36-9+deb12u9","status": "ii "},
{"package": "old-tool","arch": "amd64","version": "1.0","status": "ii "}
]}"#,
    )
    .unwrap();
    let c = dpkg::compare(&manifest, &status);
    assert_eq!(c.missing, ["old-tool:amd64"]);
    assert_eq!(
        c.version_mismatch,
        [(
            "libc6:amd64".into(),
            "2.36-9+deb12u9".into(),
            "2.36-9+deb12u8".into()
        )]
    );
}

#[test]
fn ext4_paths_resolve_inside_the_image() {
    let (_dir, _disk, fs) = ext4_root();
    check_paths_resolve_inside_the_image(&*fs);
}

#[test]
fn ext4_reads_what_debugfs_reads() {
    let (_dir, disk, fs) = ext4_root();
    for path in [
        "/usr/bin/cloud-init",
        "/usr/lib/os-release",
        "/var/lib/dpkg/status",
        "/usr/share/doc/big-file",
        "/etc/passwd",
    ] {
        let want = debugfs(&disk.path, disk.root_offset, &format!("cat {path}"));
        assert_eq!(fs.read(path).unwrap(), want, "{path}");
    }
    // `ls -p`: /inode/mode/uid/gid/name/size/ per entry.
    for dir in ["/usr/bin", "/usr/share/big", "/etc", "/"] {
        let out = debugfs(&disk.path, disk.root_offset, &format!("ls -p {dir}"));
        let mut want = BTreeSet::new();
        for line in String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.starts_with('/'))
        {
            let f: Vec<&str> = line.split('/').collect();
            let (mode, uid, gid, name) = (u32::from_str_radix(f[2], 8).unwrap(), f[3], f[4], f[5]);
            if name == "." || name == ".." {
                continue;
            }
            want.insert((
                name.to_string(),
                mode & 0o7777,
                uid.parse::<u32>().unwrap(),
                gid.parse::<u32>().unwrap(),
            ));
        }
        let mut got = BTreeSet::new();
        for e in fs.read_dir(dir).unwrap() {
            let m = fs
                .symlink_metadata(&format!("{}/{}", dir.trim_end_matches('/'), e.name))
                .unwrap();
            got.insert((e.name, m.mode, m.uid, m.gid));
        }
        assert_eq!(got, want, "{dir}");
    }
}

#[test]
fn ext4_features_ext4_view_cannot_read_are_named_in_the_error() {
    let dir = tempdir();
    let root = root_tree(dir.path(), "feat");
    for feature in ["inline_data", "casefold"] {
        let path = dir.path().join(format!("{feature}.raw"));
        File::create(&path).unwrap().set_len(32 << 20).unwrap();
        mkfs_ext4_at(&path, &root, 0, 32 << 20, &["-O", feature]);
        let result = fs::open(open_disk(&path)).and_then(|fs| fs.read("/usr/lib/os-release"));
        match result {
            Err(e @ FsError::Unsupported { .. }) => assert!(e.to_string().contains(feature), "{e}"),
            other => panic!("{feature}: {other:?}"),
        }
        // find_root says why it found nothing.
        let e = disk::find_root(open_disk(&path)).err().unwrap();
        assert!(e.to_string().contains(feature), "{e}");
    }
}

// ---- corrupt disks ----------------------------------------------------------------------

#[test]
fn a_truncated_disk_is_reported_as_truncated() {
    let dir = tempdir();
    let disk = gpt_ext4_disk(dir.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.path)
        .unwrap();
    f.set_len(100 << 20).unwrap();
    let e = disk::partitions(&*open_disk(&disk.path)).unwrap_err();
    assert!(matches!(e, DiskError::PastEnd { index: 2, .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(disk::find_root(open_disk(&disk.path)).is_err());
}

#[test]
fn a_gpt_whose_checksums_fail_is_an_error_naming_the_crc() {
    let dir = tempdir();
    let disk = gpt_ext4_disk(dir.path());
    let size = std::fs::metadata(&disk.path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.path)
        .unwrap();
    use std::os::unix::fs::FileExt;
    // The disk GUID, in both headers: covered by the header CRC.
    f.write_all_at(b"garbage!", 512 + 56).unwrap();
    f.write_all_at(b"garbage!", size - 512 + 56).unwrap();
    let e = disk::partitions(&*open_disk(&disk.path)).unwrap_err();
    assert!(matches!(e, DiskError::Gpt { .. }), "{e}");
    assert!(e.to_string().contains("CRC32"), "{e}");
}

#[test]
fn a_garbage_ext4_superblock_is_an_error_not_a_panic() {
    let dir = tempdir();
    let path = dir.path().join("garbage.raw");
    let mut bytes = pattern(4 << 20, 3);
    // The ext4 magic, so that the probe takes it for ext4.
    bytes[1024 + 56] = 0x53;
    bytes[1024 + 57] = 0xEF;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        fs::probe(&*open_disk(&path)).unwrap(),
        Some(fs::FsType::Ext4)
    );
    assert!(fs::open(open_disk(&path)).is_err());
    let e = disk::find_root(open_disk(&path)).err().unwrap();
    assert!(matches!(e, DiskError::NoRoot { .. }), "{e}");
    assert!(e.to_string().contains("whole disk"), "{e}");
}

// ---- XFS --------------------------------------------------------------------------------

/// `mkfs.xfs -p` prototype lines for the tree at `dir` (names and link targets without
/// spaces, as the format needs).
fn protofile_lines(dir: &Path, depth: usize, out: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    let indent = " ".repeat(depth);
    for e in entries {
        let name = e.file_name().into_string().unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            out.push_str(&format!(
                "{indent}{name} l--{mode:03o} 0 0 {}\n",
                target.display()
            ));
        } else if meta.is_dir() {
            out.push_str(&format!("{indent}{name} d--{mode:03o} 0 0\n"));
            protofile_lines(&e.path(), depth + 1, out);
            out.push_str(&format!("{indent}$\n"));
        } else {
            out.push_str(&format!(
                "{indent}{name} ---{mode:03o} 0 0 {}\n",
                e.path().display()
            ));
        }
    }
}

/// The allocation group of the first extent of `path` in the XFS image `part`.
fn xfs_ag_of(part: &Path, path: &str) -> u64 {
    let out = run(Command::new(tool("xfs_db", "xfsprogs"))
        .args(["-r", "-f", "-c", &format!("path {path}"), "-c", "bmap"])
        .arg(part));
    let out = String::from_utf8_lossy(&out);
    let pair = out.split_whitespace().find(|w| w.starts_with('(')).unwrap();
    pair.trim_matches(|c| c == '(' || c == ')')
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn xfs_with_four_allocation_groups_reads_files_outside_the_first() {
    let dir = tempdir();
    let root = root_tree(dir.path(), "testos");
    // Files of distinct content, so that one read from another AG's block cannot pass.
    for i in 0..24 {
        write(
            &root,
            &format!("var/spread/file-{i:02}"),
            &pattern(64 * 1024 + i, 100 + i as u32),
            0o644,
        );
    }
    let mut proto = String::from("ccb-test\n0 0\nd--755 0 0\n");
    protofile_lines(&root, 1, &mut proto);
    proto.push_str("$\n");
    let proto_path = dir.path().join("proto");
    std::fs::write(&proto_path, proto).unwrap();

    // mkfs.xfs wants at least 300 MB; sparse files keep that cheap.
    let part = dir.path().join("xfs.raw");
    File::create(&part).unwrap().set_len(400 << 20).unwrap();
    run(Command::new(tool("mkfs.xfs", "xfsprogs"))
        .args(["-q", "-d", "agcount=4", "-p"])
        .arg(&proto_path)
        .arg(&part));
    let outside_ag0: Vec<u64> = (0..24)
        .map(|i| xfs_ag_of(&part, &format!("/var/spread/file-{i:02}")))
        .filter(|&ag| ag != 0)
        .collect();
    assert!(
        !outside_ag0.is_empty(),
        "the fixture must put files outside AG 0"
    );

    // The XFS as the root partition of a GPT disk.
    let path = dir.path().join("xfs-disk.raw");
    File::create(&path)
        .unwrap()
        .set_len((400 << 20) + (4 << 20))
        .unwrap();
    run(Command::new(tool("sgdisk", "gdisk"))
        .args([
            "-o",
            "-n",
            "1:2048:+400M",
            "-t",
            &format!("1:{ROOT_X86_64}"),
        ])
        .arg(&path));
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", path.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]));

    let (loc, fs) = disk::find_root(open_disk(&path)).unwrap();
    assert!(
        matches!(loc, Location::Partition(ref p) if p.index == 1),
        "{loc}"
    );
    assert_eq!(fs.kind(), "xfs");
    for i in 0..24 {
        let p = format!("/var/spread/file-{i:02}");
        assert_eq!(
            fs.read(&p).unwrap(),
            pattern(64 * 1024 + i, 100 + i as u32),
            "{p}"
        );
    }
    check_paths_resolve_inside_the_image(&*fs);
    let m = fs.symlink_metadata("/var/spread/file-00").unwrap();
    assert_eq!((m.uid, m.gid, m.size), (0, 0, 64 * 1024));
}
