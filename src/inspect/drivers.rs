//! The storage-driver check of `manifests/inspect.ncl`: each kernel of an image has an
//! initramfs holding the modules a Chameleon node needs to find its root disk (NVMe, SATA,
//! virtio, SAS/RAID, USB) and mount it (the root filesystem's module), or has them built in.
//!
//! A static guard against initramfs images made in dracut's `hostonly` mode, which pack only
//! the build host's drivers: an image that boots in the build VM but not on an NVMe node.

use std::collections::{BTreeMap, BTreeSet};

use super::check::CheckResult;
use super::fs::{FileKind, Filesystem};
use super::initramfs::{self, EntryKind};
use crate::manifest::InitramfsChecks;

/// The largest initramfs read: generic ones with every driver are under 200 MiB.
const MAX_INITRAMFS: u64 = 1 << 30;

/// A kernel of the image and where its initramfs is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub version: String,
    /// The first of the usual names that exists (`None`: none does).
    pub initramfs: Option<String>,
}

/// `virtio-blk` and `virtio_blk` are one module (the kernel treats `-` and `_` alike).
pub fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

/// The module a file name is (`nvme.ko.zst` → `nvme`), if it is one.
pub fn module_of(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    [".ko", ".ko.zst", ".ko.xz", ".ko.gz"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .filter(|m| !m.is_empty())
        .map(module_key)
}

/// The kernels installed in the image: `/boot/vmlinuz-<version>` (rescue kernels aside), or,
/// with none there, `/lib/modules/<version>/vmlinuz` (Fedora's BLS layout keeps it there).
pub fn kernels(fs: &dyn Filesystem) -> Vec<Kernel> {
    let mut versions = BTreeSet::new();
    if let Ok(entries) = fs.read_dir("/boot") {
        for e in entries {
            if let Some(v) = e.name.strip_prefix("vmlinuz-")
                && !v.is_empty()
                && !v.contains("rescue")
            {
                versions.insert(v.to_string());
            }
        }
    }
    for lib in ["/lib", "/usr/lib"] {
        if !versions.is_empty() {
            break;
        }
        let Ok(entries) = fs.read_dir(&format!("{lib}/modules")) else {
            continue;
        };
        for e in entries {
            let kernel = format!("{lib}/modules/{}/vmlinuz", e.name);
            if fs.metadata(&kernel).is_ok_and(|m| m.kind == FileKind::File) {
                versions.insert(e.name);
            }
        }
    }
    versions
        .into_iter()
        .map(|v| {
            let initramfs = [
                format!("/boot/initrd.img-{v}"),
                format!("/boot/initramfs-{v}.img"),
                format!("/boot/initrd-{v}"),
            ]
            .into_iter()
            .find(|p| fs.metadata(p).is_ok_and(|m| m.kind == FileKind::File));
            Kernel {
                version: v,
                initramfs,
            }
        })
        .collect()
}

/// The modules the check requires: the configured ones, then the root filesystem's.
fn required(fs: &dyn Filesystem, checks: &InitramfsChecks) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let root = checks.root_filesystem.then(|| fs.kind().to_string());
    for m in checks.modules.iter().chain(root.as_ref()) {
        if !out.iter().any(|o| module_key(o) == module_key(m)) {
            out.push(m.clone());
        }
    }
    out
}

/// Runs the check on every kernel of the image: one result per kernel (its initramfs found
/// and read), then one per required module, each failing alone when the module is missing.
pub fn check(fs: &dyn Filesystem, checks: &InitramfsChecks) -> Vec<CheckResult> {
    let required = required(fs, checks);
    if required.is_empty() {
        return Vec::new();
    }
    let kernels = kernels(fs);
    if kernels.is_empty() {
        return vec![CheckResult {
            name: "initramfs".into(),
            passed: false,
            detail: "no kernel in the image (/boot/vmlinuz-*, /lib/modules/*/vmlinuz)".into(),
        }];
    }
    let mut out = Vec::new();
    for k in kernels {
        out.extend(check_kernel(fs, &k, &required));
    }
    out
}

fn check_kernel(fs: &dyn Filesystem, k: &Kernel, required: &[String]) -> Vec<CheckResult> {
    let name = format!("initramfs:{}", k.version);
    let fail = |detail: String| {
        vec![CheckResult {
            name: name.clone(),
            passed: false,
            detail,
        }]
    };
    let Some(path) = &k.initramfs else {
        return fail(format!(
            "no initramfs for this kernel (/boot/initrd.img-{v}, /boot/initramfs-{v}.img)",
            v = k.version
        ));
    };
    let data = match fs.read_limited(path, MAX_INITRAMFS) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let archive = match initramfs::read(&data) {
        Ok(a) => a,
        Err(e) => return fail(format!("{path}: {e}")),
    };
    // The modules of this kernel in the archive: `[usr/]lib/modules/<version>/…/<m>.ko*`.
    let dir = format!("lib/modules/{}/", k.version);
    let mut packed: BTreeMap<String, &str> = BTreeMap::new();
    for e in &archive.entries {
        if e.kind == EntryKind::File
            && (e.name.starts_with(&dir) || e.name.starts_with(&format!("usr/{dir}")))
            && let Some(m) = module_of(&e.name)
        {
            packed.entry(m).or_insert(e.name.as_str());
        }
    }
    // `/lib` is a link to `usr/lib` on merged-/usr systems only.
    let (builtin_path, builtin) = ["/lib", "/usr/lib"]
        .iter()
        .map(|lib| format!("{lib}/modules/{}/modules.builtin", k.version))
        .find_map(|p| fs.read(&p).ok().map(|b| (p, b)))
        .map(|(p, b)| {
            let names: BTreeSet<String> = String::from_utf8_lossy(&b)
                .lines()
                .filter_map(module_of)
                .collect();
            (p, names)
        })
        .unwrap_or_default();
    let mut out = vec![CheckResult {
        name: name.clone(),
        passed: true,
        detail: format!(
            "{path}: {}{}, {} entries, {} modules",
            archive
                .generator()
                .map(|g| format!("made by {g}, "))
                .unwrap_or_default(),
            archive.describe(),
            archive.entries.len(),
            packed.len()
        ),
    }];
    for m in required {
        let key = module_key(m);
        let (passed, detail) = if let Some(file) = packed.get(&key) {
            (true, (*file).to_string())
        } else if builtin.contains(&key) {
            (true, format!("built into the kernel ({builtin_path})"))
        } else {
            (
                false,
                format!("missing: not in {path}, not built into the kernel"),
            )
        };
        out.push(CheckResult {
            name: format!("{name}:{m}"),
            passed,
            detail,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_the_file_names_without_extension_and_with_underscores() {
        assert_eq!(
            module_of("usr/lib/modules/6.1/kernel/drivers/nvme/host/nvme.ko").as_deref(),
            Some("nvme")
        );
        assert_eq!(
            module_of("kernel/drivers/block/virtio-blk.ko.zst").as_deref(),
            Some("virtio_blk")
        );
        assert_eq!(module_of("x/mpt3sas.ko.xz").as_deref(), Some("mpt3sas"));
        assert_eq!(module_of("x/sd_mod.ko.gz").as_deref(), Some("sd_mod"));
        assert_eq!(module_of("lib/modules/6.1/modules.dep"), None);
        assert_eq!(module_of("x/.ko"), None);
        assert_eq!(module_of("x/nvme.kobject"), None);
    }
}
