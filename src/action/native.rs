//! The host's `dpkg-deb` inside an emulated chroot. Unpacking a package is dpkg reading the
//! tar stream `dpkg-deb --fsys-tarfile` decompresses (and the control files `dpkg-deb
//! --control` extracts): under qemu-user that xz/zstd decompression runs emulated, a minute and
//! a half for arm64's kernel package alone. The result is the same bytes whichever machine
//! decompresses, so an emulated layer runs the host's dpkg-deb for those two operations, and
//! dpkg itself (emulated) still writes every file and its database exactly as it does
//! natively. Only when the host's dpkg is the image's release series (1.21.x: a bookworm host
//! building bookworm, point releases apart): another series might extract control files
//! differently. Every other use of
//! dpkg-deb (building a package, `-x`, `--info`) stays the image's own.
//!
//! Nothing is written into the image: the host's dpkg-deb, its libraries and its loader are
//! copied under the engine directory (bind-mounted read-only at `/tmp/ccb` in the chroot), and
//! a wrapper there, first in the chroot's PATH for the build's scripts (dpkg runs `dpkg-deb`
//! through PATH), starts them through the loader: the kernel runs an x86-64 ELF natively.

use std::path::{Path, PathBuf};

use crate::process::Process;

/// Under the engine directory: the wrapper's directory (on the chroot's PATH) and the host files.
pub const BIN_DIR: &str = "native-bin";
const FILES_DIR: &str = "native";

/// Why the host's dpkg-deb is not used (the layer then decompresses emulated, as before).
#[derive(Debug, thiserror::Error)]
pub enum Skip {
    #[error("the host has no dpkg-deb")]
    NoHostTool,
    #[error("the host's dpkg ({host}) is not of the image's series ({image})")]
    Version { host: String, image: String },
    #[error("the image has no dpkg")]
    NoImageDpkg,
    #[error("ldd could not list dpkg-deb's libraries")]
    Ldd(#[source] crate::process::ProcessError),
    #[error("ldd could not list dpkg-deb's libraries: {output}")]
    LddOutput { output: String },
    #[error("copy {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `Version:` of package `dpkg` in a dpkg status file.
pub fn dpkg_version(status: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let mut lines = stanza.lines();
        if !lines.any(|l| l == "Package: dpkg") {
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

/// Installs the host's dpkg-deb and its wrapper under `engine_dir` for a chroot whose dpkg
/// status file is `image_status`; `engine_in` is where the chroot sees `engine_dir`.
pub fn install(engine_dir: &Path, engine_in: &str, image_status: &Path) -> Result<(), Skip> {
    let host_tool = crate::doctor::which("dpkg-deb").ok_or(Skip::NoHostTool)?;
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
    let out = Process::new("ldd")
        .arg(&host_tool)
        .output()
        .map_err(Skip::Ldd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (libs, loader) = ldd_paths(&text).ok_or_else(|| Skip::LddOutput {
        output: text.to_string(),
    })?;
    let files = engine_dir.join(FILES_DIR);
    let lib_dir = files.join("lib");
    let bin = engine_dir.join(BIN_DIR);
    for dir in [&lib_dir, &bin] {
        std::fs::create_dir_all(dir).map_err(|source| Skip::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    for lib in &libs {
        let name = lib.file_name().ok_or_else(|| Skip::LddOutput {
            output: text.to_string(),
        })?;
        copy(lib, &lib_dir.join(name))?;
    }
    copy(&loader, &files.join("ld.so"))?;
    copy(&host_tool, &files.join("dpkg-deb"))?;
    let native = format!("{engine_in}/{FILES_DIR}");
    let wrapper = format!(
        "#!/bin/sh\n\
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
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        Skip::Io {
            path: path.clone(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
