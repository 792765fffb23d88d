//! GRUB's boot images made natively for an emulated image: `grub-mkimage` only assembles the
//! image's own GRUB modules into one file, so nothing of it needs to run as the image's
//! architecture. When the image is emulated (arm64 on an amd64 host) and the host has a
//! `grub-mkimage`, the disk action tells the bootloader element so (`CCB_GRUB_MKIMAGE`); the
//! element then leaves a request per boot image in `$CCB_BOOT_DIR/mkimage/` instead of running
//! the image's grub-mkimage under qemu-user, and ccb runs the host's with the image's modules.
//! The image's modules, not the host's: the modules GRUB loads at boot from the image's
//! `/boot/grub/<platform>` must match the core image's kernel, symbol for symbol.
//!
//! A request is `<platform>.request` (lines: the module directory in the image, the prefix,
//! the output path under the boot directory, then one module per line) beside
//! `<platform>.cfg`, the embedded early configuration. The image is untrusted: the platform is
//! one GRUB knows, the module directory must stay inside the image (symlinks resolved), and
//! the output a plain relative path.

use std::path::{Component, Path, PathBuf};

use super::runner::{RunError, io, program};
use crate::process::Process;

/// The variable the bootloader element reads: the host's grub-mkimage, set only when ccb will
/// run the requests.
pub const ENV: &str = "CCB_GRUB_MKIMAGE";
/// Under the boot directory: where the element leaves its requests.
pub const REQUESTS: &str = "mkimage";

const PLATFORMS: &[&str] = &["arm64-efi", "x86_64-efi", "i386-efi", "i386-pc"];

/// The host's grub-mkimage when an image of `arch` runs emulated here (nothing otherwise:
/// natively, the image's own grub-mkimage is as fast and needs no request).
pub fn host_mkimage(arch: &str) -> Option<PathBuf> {
    let arch = crate::manifest::Arch::parse(arch)?;
    match super::arch_support(arch) {
        super::ArchSupport::Emulated { .. } => crate::doctor::which("grub-mkimage"),
        _ => None,
    }
}

/// One boot image to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub platform: String,
    /// The module directory, absolute inside the image.
    pub modules_dir: String,
    /// GRUB's prefix (where it finds grub.cfg and further modules at boot).
    pub prefix: String,
    /// Relative to the boot directory.
    pub output: PathBuf,
    pub modules: Vec<String>,
}

/// The image (its bootloader element) left a request ccb refuses.
fn bad(file: &Path, why: impl std::fmt::Display) -> RunError {
    RunError::Image {
        problem: format!(
            "bootloader's grub-mkimage request {}: {why}",
            file.display()
        ),
    }
}

/// Parses `<platform>.request`.
pub fn parse(file: &Path, platform: &str, text: &str) -> Result<Request, RunError> {
    if !PLATFORMS.contains(&platform) {
        return Err(bad(
            file,
            format!("unknown platform `{platform}` (expected one of {PLATFORMS:?})"),
        ));
    }
    let mut lines = text.lines();
    let mut field = |name: &str| {
        lines
            .next()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| bad(file, format!("no {name} line")))
    };
    let modules_dir = field("module directory")?;
    let prefix = field("prefix")?;
    let output = PathBuf::from(field("output")?);
    if !output
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(bad(
            file,
            format!(
                "output `{}` is not a relative path inside the boot directory",
                output.display()
            ),
        ));
    }
    if !modules_dir.starts_with('/') {
        return Err(bad(
            file,
            format!("module directory `{modules_dir}` is not absolute"),
        ));
    }
    let modules: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(m) = modules
        .iter()
        .find(|m| !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(bad(file, format!("`{m}` is not a GRUB module name")));
    }
    Ok(Request {
        platform: platform.to_string(),
        modules_dir,
        prefix,
        output,
        modules,
    })
}

/// The requests the element left in `boot_dir`, in platform order.
pub fn requests(boot_dir: &Path) -> Result<Vec<(Request, PathBuf)>, RunError> {
    let dir = boot_dir.join(REQUESTS);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "request"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let platform = f
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&f).map_err(io(format!("read {}", f.display())))?;
        let request = parse(&f, &platform, &text)?;
        out.push((request, f.with_extension("cfg")));
    }
    Ok(out)
}

/// `path` inside the image at `root`, its links resolved as the image sees them (an
/// absolute link stays inside the image, as after `chroot`).
fn inside(root: &Path, path: &str, file: &Path) -> Result<PathBuf, RunError> {
    let tree = super::inroot::TreeRoot::open(root)
        .map_err(io(format!("open the image tree {}", root.display())))?;
    tree.resolve(path)
        .map_err(|e| bad(file, format!("module directory {path}: {e}")))
}

/// `file` as a regular file inside `root` (not a symlink, not elsewhere), for reading.
fn regular_inside(root: &Path, file: &Path) -> Result<PathBuf, RunError> {
    let meta = std::fs::symlink_metadata(file).map_err(|e| bad(file, e))?;
    if !meta.is_file() {
        return Err(bad(file, "the early configuration is not a regular file"));
    }
    let root = root
        .canonicalize()
        .map_err(io(format!("resolve {}", root.display())))?;
    let resolved = file.canonicalize().map_err(|e| bad(file, e))?;
    if !resolved.starts_with(&root) {
        return Err(bad(file, "the early configuration is outside the image"));
    }
    Ok(resolved)
}

/// Runs the host's `grub-mkimage` for every request the element left in `boot_dir` (inside
/// the image at `root`), writing each output under `out_dir` (ccb's own directory, outside the
/// image). Returns how many images were made.
pub fn run_requests(
    grub_mkimage: &Path,
    root: &Path,
    boot_dir: &Path,
    out_dir: &Path,
) -> Result<usize, RunError> {
    let requests = requests(boot_dir)?;
    let out_root = {
        std::fs::create_dir_all(out_dir).map_err(io("create the boot image directory"))?;
        out_dir
            .canonicalize()
            .map_err(io(format!("resolve {}", out_dir.display())))?
    };
    for (r, cfg) in &requests {
        let modules_dir = inside(root, &r.modules_dir, cfg)?;
        let cfg = regular_inside(root, cfg)?;
        let out = out_root.join(&r.output);
        let parent = out.parent().unwrap_or(&out_root);
        std::fs::create_dir_all(parent).map_err(io("create the boot image directory"))?;
        // What the image copied there may hold symlinks: the output stays in ccb's directory.
        let parent_ok = parent
            .canonicalize()
            .is_ok_and(|p| p.starts_with(&out_root));
        if !parent_ok || out.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            return Err(bad(
                &cfg,
                format!(
                    "output {} leads out of the boot directory",
                    r.output.display()
                ),
            ));
        }
        Process::new(grub_mkimage)
            .arg("-O")
            .arg(&r.platform)
            .arg("-d")
            .arg(&modules_dir)
            .arg("-c")
            .arg(&cfg)
            .arg("-p")
            .arg(&r.prefix)
            .arg("-o")
            .arg(&out)
            .args(&r.modules)
            .output()
            .map_err(program(format!(
                "the host's grub-mkimage -O {} with the image's modules",
                r.platform
            )))?;
    }
    // The requests came along with the element's other files: not part of the disk.
    let copied = out_root.join(REQUESTS);
    if copied.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&copied).map_err(io(format!("remove {}", copied.display())))?;
    }
    Ok(requests.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = "/usr/lib/grub/arm64-efi\n/boot/grub\nefi/EFI/BOOT/BOOTAA64.EFI\npart_gpt\next2\n\nsearch_label\n";

    #[test]
    fn a_request_names_the_modules_the_prefix_and_where_the_image_goes() {
        let r = parse(Path::new("r"), "arm64-efi", REQUEST).unwrap();
        assert_eq!(
            r,
            Request {
                platform: "arm64-efi".into(),
                modules_dir: "/usr/lib/grub/arm64-efi".into(),
                prefix: "/boot/grub".into(),
                output: "efi/EFI/BOOT/BOOTAA64.EFI".into(),
                modules: vec!["part_gpt".into(), "ext2".into(), "search_label".into()],
            }
        );
    }

    #[test]
    fn a_request_that_escapes_or_is_not_grubs_is_refused() {
        let f = Path::new("/b/mkimage/arm64-efi.request");
        let err = |platform: &str, text: &str| match parse(f, platform, text) {
            Err(RunError::Image { problem }) => problem,
            other => panic!("{platform} {text:?} was accepted: {other:?}"),
        };
        assert!(err("mips-arc", REQUEST).contains("unknown platform `mips-arc`"));
        assert!(
            err(
                "arm64-efi",
                "/usr/lib/grub/arm64-efi\n/boot/grub\n../../etc/x\n"
            )
            .contains("not a relative path")
        );
        assert!(
            err("arm64-efi", "/usr/lib/grub/arm64-efi\n/boot/grub\n/etc/x\n")
                .contains("not a relative path")
        );
        assert!(
            err("arm64-efi", "lib\n/boot/grub\nx.efi\n").contains("is not absolute"),
            "relative module directory"
        );
        assert!(
            err(
                "arm64-efi",
                "/usr/lib/grub/arm64-efi\n/boot/grub\nx.efi\n-v;rm\n"
            )
            .contains("not a GRUB module name")
        );
        assert!(err("arm64-efi", "/usr/lib/grub/arm64-efi\n").contains("no prefix line"));
        assert!(err("arm64-efi", "").contains(f.to_str().unwrap()));
    }

    #[test]
    fn a_module_directory_is_resolved_inside_the_image_only() {
        let root = tempfile::tempdir().unwrap();
        let grub = root.path().join("usr/lib/grub/arm64-efi");
        std::fs::create_dir_all(&grub).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("usr/lib/grub/escape")).unwrap();
        std::os::unix::fs::symlink("arm64-efi", root.path().join("usr/lib/grub/alias")).unwrap();
        let f = Path::new("r");
        assert_eq!(
            inside(root.path(), "/usr/lib/grub/alias", f).unwrap(),
            grub.canonicalize().unwrap()
        );
        // An absolute link means the image's /etc, never the host's.
        match inside(root.path(), "/usr/lib/grub/escape", f) {
            Err(RunError::Image { problem }) => {
                assert!(problem.contains("No such file"), "{problem}")
            }
            other => panic!("a symlink out of the image was followed: {other:?}"),
        }
        std::fs::create_dir(root.path().join("etc")).unwrap();
        assert_eq!(
            inside(root.path(), "/usr/lib/grub/escape", f).unwrap(),
            root.path().join("etc").canonicalize().unwrap()
        );
        assert!(inside(root.path(), "/usr/lib/grub/missing", f).is_err());
    }
}
