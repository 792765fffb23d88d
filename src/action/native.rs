//! Host programs inside an emulated chroot: under qemu-user every process start costs ~30x a
//! native one, and some steps are thousands of short processes whose results cannot depend on
//! the machine that runs them. Two uses, both only when the host's dpkg is the image's release
//! series (1.21.x: a bookworm host building bookworm, point releases apart), so the host's
//! programs are the image's own versions built for another machine.
//!
//! **dpkg-deb.** Unpacking a package is dpkg reading the tar stream `dpkg-deb --fsys-tarfile`
//! decompresses (and the control files `dpkg-deb --control` extracts): under qemu-user that
//! xz/zstd decompression runs emulated, a minute and a half for arm64's kernel package alone.
//! The result is the same bytes whichever machine decompresses, so an emulated layer runs the
//! host's dpkg-deb for those two operations, and dpkg itself (emulated) still writes every
//! file and its database exactly as it does natively. Every other use of dpkg-deb (building a
//! package, `-x`, `--info`) stays the image's own. The host's dpkg-deb, its libraries and its
//! loader are copied under the engine directory (bind-mounted read-only at `/tmp/ccb` in the
//! chroot), and a wrapper there, first in the chroot's PATH for the build's scripts (dpkg runs
//! `dpkg-deb` through PATH), starts them through the loader: the kernel runs an x86-64 ELF
//! natively.
//!
//! **Host tools.** A step whose script declares [`HOST_TOOLS_MARK`] in its first lines (the
//! dpkg element's initramfs generations: mkinitramfs copies thousands of modules, each through
//! several `cp`, `mkdir`, `readlink`, `dirname`) runs with [`TOOLS`] replaced for its duration:
//! patched copies of the host's programs (their loader and library path under the engine
//! directory, so the kernel runs them natively when exec'd by path, shebangs included: `/bin/sh`
//! is the host's dash) bind-mounted read-only over the image's files, and unmounted when the
//! step ends, failed or not. Nothing is written into the image. Never replaced: what reports or
//! depends on the machine (uname, dpkg, ldd, the loader, ldconfig) and what an initramfs
//! generator copies into the initramfs (busybox, kmod, udev, klibc): an x86 binary there would
//! not boot.
//!
//! **Package steps.** apt, dpkg and the maintainer scripts they run start hundreds of short
//! processes of grep, sed, basename, rm, readlink... ([`PACKAGE_TOOLS`]). In an emulated
//! build that passes the same gate, a package step finds patched host copies of them first on
//! its PATH ([`PATH_DIR`]; dpkg hands PATH to every maintainer script), never mounted over the
//! image's files: dpkg installs a file by renaming onto it, and a mount point refuses that, so
//! a package upgrading coreutils would fail. Only PATH lookups are affected: a `#!/bin/sh`
//! script keeps the image's dash, and mkinitramfs and dracut set their own PATH, so no host
//! program reaches an initramfs.
//!
//! **ccb's gzip.** In every build, native or emulated, a host-tools step also finds
//! `ccb-gzip` over the image's gzip ([`ccb_gzip`]): mkinitramfs's final `gzip -n` over the
//! whole archive, one core's 5–6 s in every layer with a kernel, runs on every core
//! ([`crate::gzip`]). Its output depends only on ccb, not on the host, so no gate applies; the
//! initramfs it makes holds the same archive as the image's gzip would, in other deflate bytes.
//!
//! Likewise `ccb-canon` ([`canon_tools`]) over the image's readlink, realpath and mkdir, which
//! mkinitramfs starts three times per module it copies: a static program without a C library
//! that answers `readlink -f`, `realpath -s`, `realpath -ms` and `mkdir -p` as GNU coreutils
//! does, and runs the image's own for anything else.
//!
//! `CCB_HOST_TOOLS=0` turns every host program off, ccb's stand-ins too. It is no input of a key:
//! the trees are the same but for the compressed bytes of an initramfs.

use std::path::{Path, PathBuf};

use super::inroot::TreeRoot;
use crate::process::Process;

/// Under the engine directory: the wrapper's directory (on the chroot's PATH) and the host files.
pub const BIN_DIR: &str = "native-bin";
const FILES_DIR: &str = "native";

/// Why a host program is not used (the step then runs the image's own, emulated, as before).
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    #[error("the host has no dpkg-deb")]
    NoHostTool,
    #[error("the host's dpkg ({host}) is not of the image's series ({image})")]
    Version { host: String, image: String },
    #[error("the image has no dpkg")]
    NoImageDpkg,
    #[error("the host has no patchelf (scripts/host-deps.sh ensure_arm64_emulation installs it)")]
    NoPatchelf,
    #[error("ldd could not list a host program's libraries")]
    Ldd(#[source] crate::process::ProcessError),
    #[error("ldd could not list a host program's libraries: {output}")]
    LddOutput { output: String },
    #[error("patchelf could not patch a host program")]
    Patchelf(#[source] crate::process::ProcessError),
    #[error("copy {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `Version:` of package `dpkg` in a dpkg status file.
pub fn dpkg_version(status: &str) -> Option<String> {
    package_version(status, "dpkg")
}

/// The `Version:` of package `name` in a dpkg status file.
pub fn package_version(status: &str, name: &str) -> Option<String> {
    let want = format!("Package: {name}");
    status.split("\n\n").find_map(|stanza| {
        let mut lines = stanza.lines();
        if !lines.any(|l| l == want) {
            return None;
        }
        stanza
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(|v| v.trim().to_string())
    })
}

/// A dpkg version's release series: `1.21` of `1.21.22` (the stable point releases share
/// it, so a bookworm host's dpkg matches every bookworm image's).
pub fn dpkg_series(version: &str) -> &str {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    let mut dots = upstream.match_indices('.').map(|(i, _)| i);
    match (dots.next(), dots.next()) {
        (Some(_), Some(second)) => &upstream[..second],
        _ => upstream.split('-').next().unwrap_or(upstream),
    }
}

/// The shared libraries and the loader ldd lists for a host program (host paths).
pub fn ldd_paths(ldd_output: &str) -> Option<(Vec<PathBuf>, PathBuf)> {
    let mut libs = Vec::new();
    let mut loader = None;
    for line in ldd_output.lines().map(str::trim) {
        if let Some((_, rest)) = line.split_once("=> ") {
            let path = rest.split(" (").next()?.trim();
            if !path.starts_with('/') {
                return None; // "not found"
            }
            libs.push(PathBuf::from(path));
        } else if line.starts_with('/') {
            loader = Some(PathBuf::from(line.split(" (").next()?.trim()));
        }
    }
    Some((libs, loader?))
}

fn copy(from: &Path, to: &Path) -> Result<(), Skip> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|source| Skip::Io {
            path: from.to_path_buf(),
            source,
        })
}

/// The host's dpkg version when it is of the series of the image whose dpkg status file is
/// `image_status`: the gate of every host program in an emulated chroot.
pub fn same_series(image_status: &Path) -> Result<String, Skip> {
    let image = std::fs::read_to_string(image_status)
        .ok()
        .and_then(|s| dpkg_version(&s))
        .ok_or(Skip::NoImageDpkg)?;
    let host = std::fs::read_to_string("/var/lib/dpkg/status")
        .ok()
        .and_then(|s| dpkg_version(&s))
        .ok_or(Skip::NoHostTool)?;
    if dpkg_series(&host) != dpkg_series(&image) {
        return Err(Skip::Version { host, image });
    }
    Ok(host)
}

/// The gate of host-tools steps: [`same_series`], and patchelf on the host.
pub fn host_tools_gate(image_status: &Path) -> Result<(), Skip> {
    same_series(image_status)?;
    crate::doctor::which("patchelf").ok_or(Skip::NoPatchelf)?;
    Ok(())
}

/// What the host program `program` needs to start under the engine directory: its shared
/// libraries in `native/lib` and the loader as `native/ld.so` (each copied once).
fn copy_runtime(engine_dir: &Path, program: &Path) -> Result<(), Skip> {
    let out = Process::new("ldd")
        .arg(program)
        .output()
        .map_err(Skip::Ldd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (libs, loader) = ldd_paths(&text).ok_or_else(|| Skip::LddOutput {
        output: text.to_string(),
    })?;
    let files = engine_dir.join(FILES_DIR);
    let lib_dir = files.join("lib");
    create_dir(&lib_dir)?;
    for lib in &libs {
        let name = lib.file_name().ok_or_else(|| Skip::LddOutput {
            output: text.to_string(),
        })?;
        copy_once(lib, &lib_dir.join(name))?;
    }
    copy_once(&loader, &files.join("ld.so"))
}

fn create_dir(dir: &Path) -> Result<(), Skip> {
    std::fs::create_dir_all(dir).map_err(|source| Skip::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn copy_once(from: &Path, to: &Path) -> Result<(), Skip> {
    if to.exists() {
        return Ok(());
    }
    copy(from, to)
}

/// Installs the host's dpkg-deb and its wrapper under `engine_dir` for a chroot whose dpkg
/// status file is `image_status`; `engine_in` is where the chroot sees `engine_dir`. `shell`:
/// the wrapper's interpreter as the chroot sees it (a patched host dash spares dpkg an
/// emulated shell start per package; `/bin/sh`, the image's, otherwise).
pub fn install(
    engine_dir: &Path,
    engine_in: &str,
    image_status: &Path,
    shell: Option<&str>,
) -> Result<(), Skip> {
    let host_tool = crate::doctor::which("dpkg-deb").ok_or(Skip::NoHostTool)?;
    let host = same_series(image_status)?;
    copy_runtime(engine_dir, &host_tool)?;
    let bin = engine_dir.join(BIN_DIR);
    create_dir(&bin)?;
    copy(&host_tool, &engine_dir.join(FILES_DIR).join("dpkg-deb"))?;
    let native = format!("{engine_in}/{FILES_DIR}");
    let shell = shell.unwrap_or("/bin/sh");
    let wrapper = format!(
        "#!{shell}\n\
         # ccb: the host's dpkg-deb ({host}, the image's series) decompresses natively;\n\
         # every other use is the image's own (src/action/native.rs).\n\
         case \"${{1:-}}\" in\n\
         --fsys-tarfile|--control)\n\
         \x20   exec {native}/ld.so --library-path {native}/lib --argv0 dpkg-deb {native}/dpkg-deb \"$@\" ;;\n\
         esac\n\
         exec /usr/bin/dpkg-deb \"$@\"\n"
    );
    let path = bin.join("dpkg-deb");
    std::fs::write(&path, wrapper).map_err(|source| Skip::Io {
        path: path.clone(),
        source,
    })?;
    make_executable(&path)
}

/// Copies the image's program at `target` (a path in the tree) to `to` when it is a program
/// of its own, a regular ELF file; `false` otherwise (absent, a link, a script). Opened without
/// following a final link and checked through the descriptor: a process left in the chroot
/// cannot swap in a link to a host file between the check and the copy.
fn copy_image_program(target: &Path, to: &Path) -> Result<bool, Skip> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Skip::Io { path, source }
    };
    let mut file = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(target)
    {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => return Ok(false),
        Err(e) => return Err(io_err(target)(e)),
    };
    if !file.metadata().map_err(io_err(target))?.is_file() {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Ok(false);
    }
    let mut out = std::fs::File::create(to).map_err(io_err(to))?;
    std::io::Write::write_all(&mut out, &magic).map_err(io_err(to))?;
    std::io::copy(&mut file, &mut out).map_err(io_err(to))?;
    make_executable(to)?;
    Ok(true)
}

/// The image's gzip as the kernel finds it during a host-tools step: `/usr/bin/gzip`.
pub const GZIP: &str = "/usr/bin/gzip";

/// Prepares `ccb_gzip` (the `ccb-gzip` program beside ccb: src/gzip.rs) to stand in for the
/// image's gzip during a host-tools step, in native and emulated builds alike: its output
/// depends on neither the machine nor the host's release, only on ccb. Returns the pair to
/// bind-mount (a wrapper under `engine_dir`, the image's gzip), or `None` when the image's
/// gzip is not a program of its own (absent, or a link to busybox). The wrapper starts
/// `ccb-gzip` through the host's loader (no patchelf needed) and hands it a copy of the
/// image's gzip under `engine_dir` for what it leaves to gzip, so nothing in the image changes.
pub fn ccb_gzip(
    engine_dir: &Path,
    engine_in: &str,
    image: &TreeRoot,
    ccb_gzip: &Path,
) -> Result<Option<(PathBuf, PathBuf)>, Skip> {
    let Ok(target) = image.entry(GZIP) else {
        return Ok(None);
    };
    let files = engine_dir.join(FILES_DIR);
    create_dir(&files)?;
    if !copy_image_program(&target, &files.join("gzip.image"))? {
        return Ok(None);
    }
    // Once per action: the image's gzip above is copied again for each step (a package step
    // between two may have upgraded it), ccb-gzip and its libraries are not.
    let program = files.join("ccb-gzip");
    if !program.exists() {
        copy_runtime(engine_dir, ccb_gzip)?;
        copy(ccb_gzip, &program)?;
    }
    let native = format!("{engine_in}/{FILES_DIR}");
    let wrapper = files.join("gzip");
    let text = format!(
        "#!/bin/sh\n\
         # ccb: the image's gzip during a host-tools step is ccb-gzip, a parallel deflate that\n\
         # leaves all but `gzip -n` compression to the image's own (src/gzip.rs).\n\
         # Started by another name (a link such as zcat), it is that program's.\n\
         exec {native}/ld.so --library-path {native}/lib --argv0 \"${{0##*/}}\" \
         {native}/ccb-gzip {native}/gzip.image \"$@\"\n"
    );
    std::fs::write(&wrapper, text).map_err(|source| Skip::Io {
        path: wrapper.clone(),
        source,
    })?;
    make_executable(&wrapper)?;
    Ok(Some((wrapper, target)))
}

/// ccb-canon (src/action/canon.c, built by build.rs): `readlink -f`, `realpath -s`,
/// `realpath -ms` and `mkdir -p` for a host-tools step, a static program without a C library, so each of
/// mkinitramfs's ~10,000 starts skips glibc's start-up (its CPUID instructions are hypervisor
/// exits: 0.75 ms a start against 0.18 ms, measured here). Empty where it was not built (a
/// target that is not x86-64 Linux).
pub const CANON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ccb-canon"));
/// What ccb-canon leaves to the image's programs: `<this>/<name>.image` (its FALLBACK_DIR).
pub const CANON_FALLBACK_DIR: &str = "/tmp/ccb/native";
/// The programs ccb-canon stands in for.
pub const CANON_TOOLS: [&str; 3] = ["/usr/bin/readlink", "/usr/bin/realpath", "/usr/bin/mkdir"];

/// Prepares ccb-canon to stand in for the image's readlink, realpath and mkdir during a host-tools
/// step: the pairs to bind-mount (ccb-canon under `engine_dir`, the image's program), one per
/// program the image has of its own (not a link to busybox), each with a copy of the image's
/// program beside it for every use ccb-canon leaves to it. Its results are those of GNU
/// coreutils, whichever machine runs it, so no gate applies.
pub fn canon_tools(
    engine_dir: &Path,
    engine_in: &str,
    image: &TreeRoot,
) -> Result<Vec<(PathBuf, PathBuf)>, Skip> {
    let native = format!("{engine_in}/{FILES_DIR}");
    if CANON.is_empty() || native != CANON_FALLBACK_DIR {
        return Ok(Vec::new());
    }
    let files = engine_dir.join(FILES_DIR);
    create_dir(&files)?;
    let program = files.join("ccb-canon");
    if !program.exists() {
        std::fs::write(&program, CANON).map_err(|source| Skip::Io {
            path: program.clone(),
            source,
        })?;
        make_executable(&program)?;
    }
    let mut pairs = Vec::new();
    for tool in CANON_TOOLS {
        let Ok(target) = image.entry(tool) else {
            continue;
        };
        let name = Path::new(tool).file_name().unwrap_or_default();
        let image_copy = files.join(format!("{}.image", name.to_string_lossy()));
        if copy_image_program(&target, &image_copy)? {
            pairs.push((program.clone(), target));
        }
    }
    Ok(pairs)
}

fn make_executable(path: &Path) -> Result<(), Skip> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        Skip::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The line by which a step's script asks for the host's tools (a comment to DIB).
pub const HOST_TOOLS_MARK: &str = "# ccb: host-tools";
/// How many of a script's first lines may hold [`HOST_TOOLS_MARK`].
const MARK_LINES: usize = 10;

/// Whether a step's script declares [`HOST_TOOLS_MARK`] in its first lines, alone on its line.
pub fn declares_host_tools(script: &[u8]) -> bool {
    script
        .split(|&b| b == b'\n')
        .take(MARK_LINES)
        .any(|line| line.trim_ascii_end() == HOST_TOOLS_MARK.as_bytes())
}

/// The image's programs a host-tools step runs as the host's, as the image names them: what
/// mkinitramfs and its hooks start, most often first (counted with strace for arm64's
/// MODULES=most: realpath and readlink 6,216 times each, cp 1,018, mkdir 980, modinfo 926,
/// sed 78, find and basename 40), whose output is the same on any machine. dash is there
/// because every hook runs through its `#!/bin/sh`. Where ccb's own stand-ins take a program
/// (gzip: [`ccb_gzip`]; readlink, realpath, mkdir: [`canon_tools`]), they replace it instead.
pub const TOOLS: &[&str] = &[
    "/usr/bin/dash",
    "/usr/bin/realpath",
    "/usr/bin/readlink",
    "/usr/bin/cp",
    "/usr/bin/mkdir",
    "/usr/bin/sed",
    "/usr/bin/find",
    "/usr/bin/basename",
    "/usr/bin/dirname",
    "/usr/bin/ln",
    "/usr/bin/env",
    "/usr/bin/tsort",
    "/usr/bin/rm",
    "/usr/bin/grep",
    "/usr/bin/mktemp",
    "/usr/bin/touch",
    "/usr/bin/sort",
    "/usr/bin/uniq",
    "/usr/bin/tr",
    "/usr/bin/mv",
    "/usr/bin/chmod",
    "/usr/bin/cat",
    "/usr/bin/xargs",
    // Once each, but over the whole archive.
    "/usr/bin/cpio",
    "/usr/bin/gzip",
    "/usr/bin/xz",
    "/usr/bin/zstd",
    // kmod's names that only read modules and write indexes (modinfo: once per module), never
    // kmod itself: initramfs-tools copies it and its modprobe and rmmod links into the
    // initramfs.
    "/usr/sbin/modinfo",
    "/usr/sbin/depmod",
];

/// The image's programs a package step finds first on its PATH as the host's (see
/// [`path_entries`]), each with the package that ships it: a program is the host's only where
/// that package has the same upstream version on both (the dpkg series of the gate spans
/// releases: Ubuntu 22.04's dpkg is 1.21 too, its coreutils older than bookworm's). These are
/// the machine-independent programs an emulated arm64 package step starts most often (strace
/// of the arm64 boot test's layer, 3,629 starts: grep 819, sed 644, basename 345, readlink
/// 154, rm 153, ln 149, test 148, tar 138 through dpkg-deb --control, then mkdir, cp, tr,
/// cat, stat, chmod...), and their kin. The step's `#!/bin/sh` scripts keep the image's
/// dash: a shebang is not a PATH lookup.
pub const PACKAGE_TOOLS: &[(&str, &str)] = &[
    // Text and file tools of maintainer scripts, ucf and update-* helpers.
    ("/usr/bin/grep", "grep"),
    ("/usr/bin/sed", "sed"),
    ("/usr/bin/basename", "coreutils"),
    ("/usr/bin/dirname", "coreutils"),
    ("/usr/bin/readlink", "coreutils"),
    ("/usr/bin/realpath", "coreutils"),
    ("/usr/bin/rm", "coreutils"),
    ("/usr/bin/ln", "coreutils"),
    ("/usr/bin/mv", "coreutils"),
    ("/usr/bin/cp", "coreutils"),
    ("/usr/bin/mkdir", "coreutils"),
    ("/usr/bin/rmdir", "coreutils"),
    ("/usr/bin/touch", "coreutils"),
    ("/usr/bin/chmod", "coreutils"),
    ("/usr/bin/chown", "coreutils"),
    ("/usr/bin/chgrp", "coreutils"),
    ("/usr/bin/test", "coreutils"),
    ("/usr/bin/[", "coreutils"),
    ("/usr/bin/mktemp", "coreutils"),
    ("/usr/bin/cat", "coreutils"),
    ("/usr/bin/cut", "coreutils"),
    ("/usr/bin/tr", "coreutils"),
    ("/usr/bin/head", "coreutils"),
    ("/usr/bin/tail", "coreutils"),
    ("/usr/bin/sort", "coreutils"),
    ("/usr/bin/uniq", "coreutils"),
    ("/usr/bin/wc", "coreutils"),
    ("/usr/bin/tee", "coreutils"),
    ("/usr/bin/expr", "coreutils"),
    ("/usr/bin/stat", "coreutils"),
    ("/usr/bin/ls", "coreutils"),
    ("/usr/bin/env", "coreutils"),
    ("/usr/bin/md5sum", "coreutils"),
    ("/usr/bin/sha256sum", "coreutils"),
    ("/usr/bin/cmp", "diffutils"),
    ("/usr/bin/diff", "diffutils"),
    ("/usr/bin/seq", "coreutils"),
    ("/usr/bin/getopt", "util-linux"),
    // An alternative: replaced only where the image's and the host's lead to the same
    // program (mawk on both).
    ("/usr/bin/awk", "mawk"),
    ("/usr/bin/find", "findutils"),
    ("/usr/bin/xargs", "findutils"),
    // Archives and compressors (the same bytes whichever machine runs them).
    ("/usr/bin/tar", "tar"),
    ("/usr/bin/gzip", "gzip"),
    ("/usr/bin/xz", "xz-utils"),
    ("/usr/bin/zstd", "zstd"),
];

/// Never replaced, whatever [`TOOLS`] or [`PACKAGE_TOOLS`] say: what reports or depends on
/// the machine, and what initramfs-tools and dracut copy into an initramfs (an x86 binary
/// there would not boot), and the interpreters whose modules are the image's own. By file
/// name, so a link to one of them (`/sbin/modprobe` is kmod) is caught too.
const NEVER: &[&str] = &[
    "uname",
    "arch",
    "nproc",
    "getconf",
    "hostname",
    "perl",
    "python3",
    "dpkg",
    "dpkg-architecture",
    "dpkg-query",
    "ldd",
    "ldconfig",
    "ld-linux-aarch64.so.1",
    "busybox",
    "kmod",
    "modprobe",
    "rmmod",
    "udevadm",
    "systemd-udevd",
    "blkid",
    "mount",
    "sh.shared",
];

/// Why an image gets no host tools whatever its steps declare: dracut copies the running
/// system's coreutils, sed and shell into the initramfs it makes (initramfs-tools copies
/// busybox's or klibc's instead), so with dracut in the image a replaced program would put an
/// x86 binary into an arm64 initramfs.
pub fn refused(image: &TreeRoot) -> Option<&'static str> {
    [
        "usr/bin/dracut",
        "usr/sbin/dracut",
        "sbin/dracut",
        "bin/dracut",
    ]
    .iter()
    .any(|p| image.resolve_existing(p).is_ok_and(|f| f.is_some()))
    .then_some("the image has dracut, which copies the image's own tools into the initramfs")
}

/// One of the image's programs replaced for a host-tools step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// As the image names it (`/usr/bin/dash`).
    pub tool: String,
    /// The image's file, its real path in the tree (links followed inside the tree).
    pub target: PathBuf,
    /// The host's program.
    pub host: PathBuf,
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Which of `tools` can be replaced in `image` by the programs under `host_root` (`/` but in
/// tests). Each tool is looked up as the image sees it (links followed inside the tree) and on
/// the host, and replaced only when both are a regular ELF program of the same name: the
/// image's `cp` that is a link to busybox is not the host's cp. The mount goes over the
/// tool's own path, so a link keeps the program it points to for its other names: with
/// `/usr/sbin/modinfo -> /bin/kmod` replaced, kmod itself and `/sbin/modprobe`, which
/// initramfs-tools copies into the initramfs, stay the image's. A path the image reaches by
/// two names is replaced once.
pub fn select(image: &TreeRoot, host_root: &Path, tools: &[&str]) -> Vec<Replacement> {
    let program = |p: &Path| p.is_file() && is_elf(p);
    let mut out: Vec<Replacement> = Vec::new();
    for &tool in tools {
        let Some(name) = Path::new(tool).file_name() else {
            continue;
        };
        if NEVER.iter().any(|n| name == *n) {
            continue;
        }
        let (Ok(target), Ok(Some(runs))) = (image.entry(tool), image.resolve_existing(tool)) else {
            continue;
        };
        let Ok(host) = host_root.join(tool.trim_start_matches('/')).canonicalize() else {
            continue;
        };
        if !program(&runs) || !program(&host) || runs.file_name() != host.file_name() {
            continue;
        }
        if out.iter().any(|r| r.target == target) {
            continue;
        }
        out.push(Replacement {
            tool: tool.to_string(),
            target,
            host,
        });
    }
    out
}

/// The host's programs prepared under the engine directory for host-tools steps.
#[derive(Debug, Default)]
pub struct HostTools {
    /// Host program -> its patched copy under the engine directory.
    prepared: Vec<(PathBuf, PathBuf)>,
}

impl HostTools {
    /// The patched copy of the host program `host` (made the first time), which the kernel
    /// starts through `engine_in`'s loader and libraries, natively.
    pub fn prepare(
        &mut self,
        engine_dir: &Path,
        engine_in: &str,
        host: &Path,
    ) -> Result<PathBuf, Skip> {
        if let Some((_, copy)) = self.prepared.iter().find(|(h, _)| h == host) {
            return Ok(copy.clone());
        }
        copy_runtime(engine_dir, host)?;
        let dir = engine_dir.join(FILES_DIR).join("tools");
        create_dir(&dir)?;
        let name = host.file_name().ok_or_else(|| Skip::Io {
            path: host.to_path_buf(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        let patched = dir.join(name);
        copy(host, &patched)?;
        let native = format!("{engine_in}/{FILES_DIR}");
        // DT_RPATH, not RUNPATH: it also serves the libraries' own dependencies (sed's
        // libselinux needs libpcre2), which would otherwise be looked up in the image's
        // arm64 directories.
        Process::new("patchelf")
            .arg("--set-interpreter")
            .arg(format!("{native}/ld.so"))
            .arg("--force-rpath")
            .arg("--set-rpath")
            .arg(format!("{native}/lib"))
            .arg(&patched)
            .output()
            .map_err(Skip::Patchelf)?;
        make_executable(&patched)?;
        self.prepared.push((host.to_path_buf(), patched.clone()));
        Ok(patched)
    }
}

/// A Debian version without its Debian revision: `1:3.8` of `1:3.8-4`, `4.9` of
/// `4.9-1+deb12u1`.
fn upstream(version: &str) -> &str {
    version.rsplit_once('-').map_or(version, |(v, _)| v)
}

/// Of [`PACKAGE_TOOLS`], the programs whose package has the same upstream version (a stable
/// update's Debian revision apart: bookworm's sed 4.9-1+deb12u1 is 4.9-1's program with a
/// fix) in the image's dpkg
/// status file (`image_status`) as in the host's (`host_status`); the others, each with why.
pub fn same_version_tools(
    image_status: &str,
    host_status: &str,
) -> (Vec<&'static str>, Vec<String>) {
    let mut same = Vec::new();
    let mut other = Vec::new();
    for &(tool, package) in PACKAGE_TOOLS {
        let image = package_version(image_status, package);
        let host = package_version(host_status, package);
        match (image, host) {
            (Some(i), Some(h)) if upstream(&i) == upstream(&h) => same.push(tool),
            (Some(i), Some(h)) => {
                other.push(format!("{tool}: {package} {i} here, {h} on the host"))
            }
            // Not installed on one side: the image has no such program, or the host's would
            // be of no known version.
            _ => {}
        }
    }
    (same, other)
}

/// The directory, under the engine directory, a package step finds first on its PATH.
pub const PATH_DIR: &str = "native/path";

/// Fills [`PATH_DIR`] under `engine_dir` with one entry per program of `chosen` (as
/// [`select`] found them), named as the image names it and leading to its patched host copy
/// ([`HostTools::prepare`]). A PATH entry, never a mount over the image's file: dpkg replaces
/// a file by renaming onto it, which a mount point refuses (EBUSY), so a package upgrading
/// coreutils, grep or sed could not be installed over a mounted program. Returns the names
/// placed, and a line per program that stays the image's.
pub fn path_entries(
    tools: &mut HostTools,
    engine_dir: &Path,
    engine_in: &str,
    chosen: &[Replacement],
) -> Result<(Vec<String>, Vec<String>), Skip> {
    let dir = engine_dir.join(PATH_DIR);
    create_dir(&dir)?;
    let mut placed = Vec::new();
    let mut kept = Vec::new();
    for r in chosen {
        let Some(name) = Path::new(&r.tool).file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let copy = match tools.prepare(engine_dir, engine_in, &r.host) {
            Ok(copy) => copy,
            Err(why) => {
                kept.push(format!("{name} stays the image's: {why}"));
                continue;
            }
        };
        // Relative, so it leads to the copy wherever the engine directory is seen.
        let tools_dir = copy.parent().and_then(Path::file_name).unwrap_or_default();
        let copy_name = copy.file_name().unwrap_or_default();
        let target = Path::new("..").join(tools_dir).join(copy_name);
        let entry = dir.join(name);
        match std::fs::symlink_metadata(&entry) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(&target, &entry).map_err(|source| Skip::Io {
                    path: entry.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Skip::Io {
                    path: entry,
                    source,
                });
            }
        }
        placed.push(name.to_string());
    }
    Ok((placed, kept))
}

/// Whether host programs may run in an emulated chroot at all: `CCB_HOST_TOOLS=0` makes
/// every program of an emulated build the image's own (to compare the results, or to rule
/// the host's programs out when something differs).
pub fn allowed_by_env() -> bool {
    !std::env::var("CCB_HOST_TOOLS").is_ok_and(|v| v == "0")
}

/// Why a host tool's bind mount failed or could not be undone.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct MountError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: nix::Error,
}

/// Bind-mounts `source` read-only over `target`, which may be a link: the mount goes over the
/// link itself (through an `O_PATH | O_NOFOLLOW` descriptor), never over what it points to.
fn bind_one(source: &Path, target: &Path) -> Result<(), MountError> {
    use nix::mount::{MsFlags, mount};
    let err = |what| {
        move |source| MountError {
            what,
            path: target.to_path_buf(),
            source,
        }
    };
    let fd = rustix::fs::open(
        target,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| err("open")(nix::Error::from_raw(e.raw_os_error())))?;
    use std::os::fd::AsRawFd;
    let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
    mount(
        Some(source),
        by_fd.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err("bind-mount a host tool over"))?;
    // A bind mount ignores MS_RDONLY until remounted; `target` now leads to the mount.
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = unbind(vec![target.to_path_buf()]);
        err("make a host tool read-only at")(e)
    })
}

/// Bind-mounts each `(source, target)` read-only, source over target; on a failure the ones
/// made are undone before the error returns. Returns the targets mounted.
pub fn bind(pairs: &[(PathBuf, PathBuf)]) -> Result<Vec<PathBuf>, MountError> {
    let mut done = Vec::new();
    for (source, target) in pairs {
        if let Err(e) = bind_one(source, target) {
            let _ = unbind(done);
            return Err(e);
        }
        done.push(target.clone());
    }
    Ok(done)
}

/// Undoes [`bind`], last first; every mount is tried even when one fails.
pub fn unbind(targets: Vec<PathBuf>) -> Result<(), MountError> {
    use nix::mount::{MntFlags, umount2};
    let mut first = None;
    for target in targets.into_iter().rev() {
        let flags = MntFlags::UMOUNT_NOFOLLOW;
        if let Err(source) =
            umount2(&target, flags).or_else(|_| umount2(&target, flags | MntFlags::MNT_DETACH))
        {
            first.get_or_insert(MountError {
                what: "unmount the host tool at",
                path: target,
                source,
            });
        }
    }
    first.map_or(Ok(()), Err)
}

/// Runs `step` with `pairs` bind-mounted, and unmounts them afterwards whatever `step`
/// returned: the step's result, then the unmount's.
pub fn with_bound<T>(
    pairs: &[(PathBuf, PathBuf)],
    step: impl FnOnce() -> T,
) -> Result<(T, Result<(), MountError>), MountError> {
    let mounted = bind(pairs)?;
    let result = step();
    Ok((result, unbind(mounted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_tool_is_the_hosts_only_where_its_package_has_the_same_version() {
        let image = "Package: coreutils\nVersion: 9.1-1\n\nPackage: grep\nVersion: 3.7-1build1\n\n\
                     Package: sed\nVersion: 4.9-1\n\nPackage: tar\nVersion: 1.34+dfsg-1.2+deb12u1\n";
        let host = "Package: grep\nVersion: 3.8-5\n\nPackage: coreutils\nVersion: 9.1-1\n\n\
                    Package: zstd\nVersion: 1.5.4+dfsg2-5\n\nPackage: tar\nVersion: 1.34+dfsg-1.2\n";
        let (same, other) = same_version_tools(image, host);
        assert!(same.contains(&"/usr/bin/rm") && same.contains(&"/usr/bin/basename"));
        assert!(!same.contains(&"/usr/bin/grep"), "older grep in the image");
        assert!(
            !same.contains(&"/usr/bin/sed"),
            "no sed package on the host"
        );
        assert!(
            !same.contains(&"/usr/bin/zstd"),
            "no zstd package in the image"
        );
        assert!(
            same.contains(&"/usr/bin/tar"),
            "a stable update's revision apart"
        );
        assert_eq!(
            other,
            ["/usr/bin/grep: grep 3.7-1build1 here, 3.8-5 on the host"]
        );
    }

    #[test]
    fn the_dpkg_version_is_read_from_its_own_stanza() {
        let status = "Package: dpkg-dev\nVersion: 9\n\nPackage: dpkg\nStatus: install ok \
                      installed\nVersion: 1.21.22\n\nPackage: zlib1g\nVersion: 1\n";
        assert_eq!(dpkg_version(status).as_deref(), Some("1.21.22"));
        assert_eq!(dpkg_version("Package: dpkg-dev\nVersion: 9\n"), None);
    }

    #[test]
    fn point_releases_of_one_dpkg_series_match_and_other_series_do_not() {
        assert_eq!(dpkg_series("1.21.22"), "1.21");
        assert_eq!(dpkg_series("1.21.23"), "1.21");
        assert_eq!(dpkg_series("1.22.21ubuntu3"), "1.22");
        assert_eq!(dpkg_series("1:1.21.1"), "1.21");
        assert_ne!(dpkg_series("1.21.22"), dpkg_series("1.22.6"));
    }

    #[test]
    fn ldd_lists_libraries_and_the_loader_and_a_missing_library_is_none() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibzstd.so.1 => /lib/x86_64-linux-gnu/libzstd.so.1 (0x00007f1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let (libs, loader) = ldd_paths(out).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libzstd.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
        assert_eq!(loader, PathBuf::from("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            ldd_paths("\tlibfoo.so => not found\n\t/lib64/ld.so (0x1)\n"),
            None
        );
    }

    #[test]
    fn only_a_mark_alone_on_one_of_the_first_lines_asks_for_host_tools() {
        assert!(declares_host_tools(
            b"#!/bin/bash\n# ccb: host-tools\nupdate-initramfs -u\n"
        ));
        assert!(declares_host_tools(b"#!/bin/sh\n# ccb: host-tools  \n"));
        // Elsewhere in a line, in a longer comment, or after the first lines: not asked.
        assert!(!declares_host_tools(
            b"#!/bin/sh\necho '# ccb: host-tools'\n"
        ));
        assert!(!declares_host_tools(
            b"#!/bin/sh\n# ccb: host-tools please\n"
        ));
        assert!(!declares_host_tools(b"#!/bin/sh\n#ccb: host-tools\n"));
        let late = format!("#!/bin/sh\n{}{HOST_TOOLS_MARK}\n", ":\n".repeat(MARK_LINES));
        assert!(!declares_host_tools(late.as_bytes()));
        assert!(!declares_host_tools(b""));
    }

    #[test]
    fn ccb_canon_leaves_to_the_images_programs_where_the_engine_directory_puts_them() {
        let source = include_str!("canon.c");
        assert!(
            source.contains(&format!("#define FALLBACK_DIR \"{CANON_FALLBACK_DIR}\"")),
            "canon.c's FALLBACK_DIR is not {CANON_FALLBACK_DIR}"
        );
    }

    #[test]
    fn an_image_with_dracut_gets_no_host_tools() {
        let tree = tempfile::tempdir().unwrap();
        file(&tree.path().join("usr/bin/dash"), b"\x7fELF");
        let image = TreeRoot::open(tree.path()).unwrap();
        assert_eq!(refused(&image), None);
        file(&tree.path().join("usr/bin/dracut"), b"#!/bin/bash\n");
        assert!(refused(&image).unwrap().contains("dracut"));
    }

    #[test]
    fn no_listed_tool_is_one_that_depends_on_the_machine_or_goes_into_an_initramfs() {
        for tool in TOOLS {
            let name = Path::new(tool).file_name().unwrap();
            assert!(!NEVER.iter().any(|n| name == *n), "{tool}");
        }
        assert!(
            TOOLS.contains(&"/usr/bin/dash"),
            "hooks run through /bin/sh"
        );
        for (tool, _) in PACKAGE_TOOLS {
            let name = Path::new(tool).file_name().unwrap();
            assert!(!NEVER.iter().any(|n| name == *n), "{tool}");
            // A package step's scripts keep the image's shell and interpreters.
            for never in ["sh", "dash", "bash", "perl", "python3", "ldconfig"] {
                assert_ne!(name, never, "{tool}");
            }
        }
    }

    #[test]
    fn a_package_steps_path_entry_runs_the_patched_host_program_by_the_images_name() {
        // Real host programs, patched as for a chroot that sees the engine directory where
        // the host does (here: its own path).
        let engine = tempfile::tempdir().unwrap();
        let engine_in = engine.path().to_str().unwrap();
        let chosen = [
            Replacement {
                tool: "/usr/bin/grep".into(),
                target: PathBuf::from("/usr/bin/grep"),
                host: PathBuf::from("/usr/bin/grep"),
            },
            Replacement {
                tool: "/usr/bin/[".into(),
                target: PathBuf::from("/usr/bin/["),
                host: PathBuf::from("/usr/bin/["),
            },
        ];
        let mut tools = HostTools::default();
        let (placed, kept) = path_entries(&mut tools, engine.path(), engine_in, &chosen).unwrap();
        assert_eq!(placed, ["grep", "["]);
        assert!(kept.is_empty(), "{kept:?}");
        let dir = engine.path().join(PATH_DIR);
        assert_eq!(
            std::fs::read_link(dir.join("grep")).unwrap(),
            Path::new("../tools/grep")
        );
        let out = std::process::Command::new(dir.join("grep"))
            .args(["-c", "b"])
            .stdin(std::fs::File::open(file_with(engine.path(), "a\nb\nbb\n")).unwrap())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n", "{out:?}");
        // Its loader is the engine directory's copy, never the host's own.
        let interp = std::process::Command::new("patchelf")
            .arg("--print-interpreter")
            .arg(dir.join("grep"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&interp.stdout).trim(),
            format!("{engine_in}/native/ld.so")
        );
        // Placed again (the next package step): the same entries, nothing copied twice.
        let again = path_entries(&mut tools, engine.path(), engine_in, &chosen).unwrap();
        assert_eq!(again.0, placed);
    }

    fn file_with(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("input");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn file(at: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, bytes).unwrap();
    }

    #[test]
    fn tools_are_selected_as_the_image_resolves_them_and_only_the_images_own_programs() {
        use std::os::unix::fs::symlink;
        let elf = b"\x7fELF\x02\x01\x01";
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        file(&t.join("usr/bin/dash"), elf);
        symlink("usr/bin", t.join("bin")).unwrap(); // merged /usr
        // A multi-call program is never replaced through one of its names.
        file(&t.join("usr/bin/busybox"), elf);
        symlink("busybox", t.join("usr/bin/cp")).unwrap();
        file(&t.join("usr/bin/sed"), b"#!/bin/sh\n"); // not a program of its own
        file(&t.join("usr/bin/uname"), elf); // tells the machine
        // An absolute link is followed inside the tree, never onto the host (and replaced
        // itself: the mount goes over the link).
        file(&t.join("usr/libexec/find"), elf);
        symlink("/usr/libexec/find", t.join("usr/bin/find")).unwrap();
        symlink("/usr/libexec/grep", t.join("usr/bin/grep")).unwrap(); // dangles in the tree
        // kmod's names: the link is replaced, never kmod (initramfs-tools copies it).
        file(&t.join("usr/bin/kmod"), elf);
        std::fs::create_dir_all(t.join("usr/sbin")).unwrap();
        symlink("/bin/kmod", t.join("usr/sbin/modinfo")).unwrap();
        symlink("/bin/kmod", t.join("usr/sbin/modprobe")).unwrap();
        symlink("usr/sbin", t.join("sbin")).unwrap();
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        for tool in ["dash", "cp", "sed", "uname", "find", "grep", "busybox"] {
            file(&h.join("usr/bin").join(tool), elf);
        }
        file(&h.join("usr/libexec/grep"), elf);
        file(&h.join("usr/bin/kmod"), elf);
        std::fs::create_dir_all(h.join("usr/sbin")).unwrap();
        symlink("../bin/kmod", h.join("usr/sbin/modinfo")).unwrap();
        symlink("../bin/kmod", h.join("usr/sbin/modprobe")).unwrap();
        symlink("usr/sbin", h.join("sbin")).unwrap();

        let image = TreeRoot::open(t).unwrap();
        let tools = [
            "/usr/bin/dash",
            "/bin/dash",
            "/usr/bin/cp",
            "/usr/bin/sed",
            "/usr/bin/uname",
            "/usr/bin/find",
            "/usr/bin/grep",
            "/usr/bin/cat", // absent from both
            "/sbin/modinfo",
            "/usr/sbin/modprobe",
            "/usr/bin/kmod",
        ];
        let got = select(&image, h, &tools);
        let real = image.path();
        assert_eq!(
            got,
            [
                Replacement {
                    tool: "/usr/bin/dash".into(),
                    target: real.join("usr/bin/dash"),
                    host: h.canonicalize().unwrap().join("usr/bin/dash"),
                },
                Replacement {
                    tool: "/usr/bin/find".into(),
                    target: real.join("usr/bin/find"),
                    host: h.canonicalize().unwrap().join("usr/bin/find"),
                },
                Replacement {
                    tool: "/sbin/modinfo".into(),
                    target: real.join("usr/sbin/modinfo"),
                    host: h.canonicalize().unwrap().join("usr/bin/kmod"),
                },
            ]
        );
        // A program the host lacks stays the image's.
        std::fs::remove_file(h.join("usr/bin/find")).unwrap();
        assert_eq!(select(&image, h, &tools).len(), 2);
    }

    /// Runs the calling test again, alone, in a mount namespace of its own: its mounts never
    /// reach the host's. Returns true in that copy.
    fn in_own_mount_namespace(test: &str) -> bool {
        const INSIDE: &str = "CCB_TEST_OWN_MOUNT_NS";
        if std::env::var_os(INSIDE).is_some() {
            return true;
        }
        let status = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", test, "--test-threads=1"])
            .env(INSIDE, "1")
            .status()
            .expect("run unshare (tests run as root)");
        assert!(status.success(), "{test} failed in its mount namespace");
        false
    }

    fn mounted_under(dir: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = dir.canonicalize().unwrap();
        mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| Path::new(m).starts_with(&dir))
    }

    #[test]
    fn host_tools_are_read_only_during_a_step_and_gone_after_it_even_when_it_fails() {
        if !in_own_mount_namespace(
            "action::native::tests::host_tools_are_read_only_during_a_step_and_gone_after_it_even_when_it_fails",
        ) {
            return;
        }
        let tree = tempfile::tempdir().unwrap();
        let engine = tempfile::tempdir().unwrap();
        let dash = tree.path().join("usr/bin/dash");
        let sed = tree.path().join("usr/bin/sed");
        file(&dash, b"image dash");
        file(&sed, b"image sed");
        file(&engine.path().join("dash"), b"host dash");
        file(&engine.path().join("sed"), b"host sed");
        // A link gets the mount over itself; what it points to stays the image's.
        let kmod = tree.path().join("usr/bin/kmod");
        let modinfo = tree.path().join("usr/bin/modinfo");
        file(&kmod, b"image kmod");
        std::os::unix::fs::symlink("kmod", &modinfo).unwrap();
        file(&engine.path().join("kmod"), b"host kmod");
        let pairs = [
            (engine.path().join("dash"), dash.clone()),
            (engine.path().join("sed"), sed.clone()),
            (engine.path().join("kmod"), modinfo.clone()),
        ];
        let (outcome, unmounted) = with_bound(&pairs, || {
            assert_eq!(std::fs::read(&dash).unwrap(), b"host dash");
            assert_eq!(std::fs::read(&sed).unwrap(), b"host sed");
            assert_eq!(std::fs::read(&modinfo).unwrap(), b"host kmod");
            assert_eq!(std::fs::read(&kmod).unwrap(), b"image kmod");
            let write = std::fs::write(&dash, b"changed");
            assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::EROFS));
            Err::<(), _>("the step failed")
        })
        .unwrap();
        assert_eq!(outcome, Err("the step failed"));
        unmounted.unwrap();
        assert!(!mounted_under(tree.path()), "a host tool is still mounted");
        assert_eq!(std::fs::read(&dash).unwrap(), b"image dash");
        assert_eq!(std::fs::read(&sed).unwrap(), b"image sed");
        assert_eq!(std::fs::read_link(&modinfo).unwrap(), Path::new("kmod"));

        // A mount that cannot be made undoes the ones before it.
        let missing = (engine.path().join("none"), tree.path().join("usr/bin/none"));
        let err = bind(&[pairs[0].clone(), missing]).unwrap_err();
        assert!(err.path.ends_with("usr/bin/none"), "{err}");
        assert!(!mounted_under(tree.path()), "a host tool is still mounted");
        assert_eq!(std::fs::read(&dash).unwrap(), b"image dash");
    }
}
