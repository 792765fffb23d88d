//! The disk action inside the sandbox: a bootable GPT disk from a finished layer stack, made
//! without partition scanning, device-mapper or a vfat mount (none exist on every host):
//!
//! 1. the root filesystem is made in its own file (`mkfs.ext4`/`mkfs.xfs`), loop-mounted
//!    (an auto-clearing loop device, inside the sandbox's mount namespace, so it cannot outlive
//!    the action), filled from the stack, and finalised in a chroot, as DIB does;
//! 2. the ESP is made in its own file with `mkfs.fat` and filled with mtools;
//! 3. the disk file gets a GPT written here, the partition files copied in at their offsets
//!    (holes kept), and GRUB's BIOS boot code placed the way `grub-bios-setup` places it;
//! 4. conversion to the requested formats.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::layout::{self, DiskPlan, FsKind, Placed, SECTOR};
use super::runner::{RunError, Runner, engine, io};
use super::spec::DiskSpec;
use super::tree;

/// Inside the image: where the bootloader element leaves GRUB's boot images for ccb to place.
pub const BOOT_DIR_IN: &str = "/tmp/ccb-boot";

fn tool(cmd: &mut Command, what: &str) -> Result<String, RunError> {
    let out = cmd.output().map_err(|e| {
        RunError::Engine(format!("{what}: cannot run {:?}: {e}", cmd.get_program()))
    })?;
    if !out.status.success() {
        return Err(RunError::Engine(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Allocated bytes of a tree (du): hard links counted once.
fn du(root: &Path) -> Result<u64, RunError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(io(format!("read {}", dir.display())))?;
        for e in rd.filter_map(Result::ok) {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// Copies `src` into `dst` at `offset`, skipping holes (SEEK_DATA/SEEK_HOLE), so a sparse
/// filesystem image stays sparse in the disk file.
fn copy_sparse_at(src: &Path, dst: &File, offset: u64) -> Result<(), RunError> {
    let f = File::open(src).map_err(io(format!("open {}", src.display())))?;
    let len = f.metadata().map_err(io("stat a partition image"))?.len();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 4 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on a valid descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let mut at = data;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at as u64)
                .map_err(io("read a partition image"))?;
            dst.write_all_at(&buf[..n], offset + at as u64)
                .map_err(io("write the disk"))?;
            at += n as i64;
        }
        pos = end;
    }
    Ok(())
}

fn uuid_of(seed: &str, what: &str) -> String {
    layout::derived_guid(&format!("{seed}/{what}"))
}

impl Runner<'_> {
    fn disk_spec(&self) -> Result<&DiskSpec, RunError> {
        self.spec
            .disk
            .as_ref()
            .ok_or_else(|| RunError::Engine("a disk action without a disk spec".into()))
    }

    /// The merged root tree of the stack, read-only.
    fn mount_stack(&mut self) -> Result<PathBuf, RunError> {
        let spec = self.spec;
        let tree = spec.work.join("tree");
        std::fs::create_dir_all(&tree).map_err(io("create the tree directory"))?;
        match spec.lowers.as_slice() {
            [] => return Err(RunError::Engine("a disk needs a finished layer".into())),
            [only] => return Ok(only.clone()),
            lowers if spec.overlay => {
                let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
                let data = format!("lowerdir={}", lower.join(":"));
                mount(
                    Some("overlay"),
                    &tree,
                    Some("overlay"),
                    MsFlags::MS_RDONLY,
                    Some(data.as_str()),
                )
                .map_err(engine("mount the layer stack"))?;
            }
            lowers => {
                let mut lowers = lowers.to_vec();
                lowers.reverse();
                tree::copy_contents(&lowers[0], &tree)?;
                for diff in &lowers[1..] {
                    tree::apply_diff(diff, &tree)?;
                }
            }
        }
        Ok(tree)
    }

    pub(super) fn run_disk(&mut self) -> Result<(), RunError> {
        let d = self.disk_spec()?.clone();
        let work = self.spec.work.clone();
        let out = work.join("out");
        let meta_dir = out.join(format!("{}.d", d.name));
        std::fs::create_dir_all(&meta_dir).map_err(io("create the output directory"))?;

        let tree = self.mount_stack()?;
        let used = du(&tree)?;
        let plan_root = d
            .layout
            .partitions
            .iter()
            .find_map(|p| {
                p.fs.as_ref()
                    .filter(|f| f.mount.as_ref().is_some_and(|m| m.point == "/"))
            })
            .cloned()
            .ok_or_else(|| RunError::Engine("the layout has no root filesystem".into()))?;
        let plan = layout::place(&d.layout, layout::root_size(used, plan_root.kind), d.size)
            .map_err(RunError::Engine)?;
        self.logln(&format!(
            "disk: tree {} MiB, disk {} MiB: {}",
            used >> 20,
            plan.size >> 20,
            plan.partitions
                .iter()
                .map(|p| format!(
                    "{} {}MiB@{}MiB",
                    p.part.name,
                    p.length >> 20,
                    p.offset >> 20
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));

        // 1. The root filesystem, finalised in place.
        let root = plan.root().clone();
        let root_img = work.join("root.img");
        make_fs(&root_img, &root, &d.seed)?;
        std::fs::create_dir_all(&self.root).map_err(io("create the mount point"))?;
        tool(
            Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&root_img)
                .arg(&self.root),
            "loop-mounting the root filesystem",
        )?;
        let loop_dev = mount_source(&self.root).unwrap_or_default();
        tree::copy_contents(&tree, &self.root)?;
        if tree != self.spec.lowers[0] && self.spec.overlay {
            let _ = umount2(&tree, MntFlags::MNT_DETACH);
        }
        self.write_fstab(&plan)?;
        let boot_in = self.root.join(BOOT_DIR_IN.trim_start_matches('/'));
        std::fs::create_dir_all(&boot_in).map_err(io("create the boot image directory"))?;

        let mountpoints: Vec<String> = plan
            .partitions
            .iter()
            .filter_map(|p| p.part.fs.as_ref()?.mount.as_ref().map(|m| m.point.clone()))
            .collect();
        let image_dir = work.join("image");
        std::fs::create_dir_all(&image_dir).map_err(io("create TMP_IMAGE_DIR"))?;
        let env: BTreeMap<String, String> = [
            ("DIB_ROOT_LABEL", plan_root.label.clone()),
            ("DIB_ROOT_FSTYPE", plan_root.kind.as_str().to_string()),
            ("DIB_IMAGE_SIZE", (plan.size / 1024).to_string()),
            ("DIB_MOUNTPOINTS", mountpoints.join("|")),
            ("IMAGE_BLOCK_DEVICE", loop_dev),
            ("DIB_CC_PROVENANCE", d.provenance.clone()),
            ("TMP_IMAGE_DIR", image_dir.display().to_string()),
            ("CCB_BOOT_DIR", BOOT_DIR_IN.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        self.extra_env = env;

        self.setup_chroot()?;
        let phases = self.spec.phases.clone();
        for phase in &phases {
            self.run_phase(phase)?;
        }
        self.teardown_chroot()?;

        // What the bootloader element made, and what packages put on the ESP.
        let boot = work.join("boot");
        if boot_in.is_dir() {
            tree::copy_contents(&boot_in, &boot)?;
        }
        let esp_tree = work.join("esp-tree");
        std::fs::create_dir_all(&esp_tree).map_err(io("create the ESP tree"))?;
        let efi_in_image = self.root.join("boot/efi");
        if efi_in_image.is_dir() {
            tree::copy_contents(&efi_in_image, &esp_tree)?;
        }
        if boot.join("efi").is_dir() {
            tree::copy_contents(&boot.join("efi"), &esp_tree)?;
        }
        let manifests = self.root.join(d.manifest_dir.trim_start_matches('/'));
        if manifests.is_dir() {
            tree::copy_contents(&manifests, &meta_dir.join("dib-manifests"))?;
        }
        self.finalise_base()?;
        umount2(&self.root, MntFlags::empty()).map_err(engine("unmount the root filesystem"))?;

        // 2. Every other filesystem (the ESP).
        let mut images: Vec<(Placed, PathBuf)> = vec![(root.clone(), root_img)];
        for p in &plan.partitions {
            if let Some(fs) = &p.part.fs
                && fs.kind == FsKind::Vfat
            {
                let img = work.join(format!("part{}.img", p.number));
                make_fs(&img, p, &d.seed)?;
                let content = if fs.mount.as_ref().is_some_and(|m| m.point == "/boot/efi") {
                    Some(esp_tree.as_path())
                } else {
                    None
                };
                if let Some(dir) = content {
                    fill_vfat(&img, dir)?;
                }
                images.push((p.clone(), img));
            }
        }

        // 3. The disk.
        let raw = work.join("disk.raw");
        write_disk(&raw, &plan, &images, &boot, &d.seed)?;
        self.logln("disk: partition table, filesystems and boot code written");

        // 4. Outputs.
        self.outputs(&d, &raw, &out, &meta_dir)
    }

    fn write_fstab(&mut self, plan: &DiskPlan) -> Result<(), RunError> {
        let mut text = String::from("# Written by ccb from the image's block-device layout.\n");
        let mut mounts: Vec<(&str, String)> = Vec::new();
        for p in &plan.partitions {
            if let Some(fs) = &p.part.fs
                && let Some(m) = &fs.mount
            {
                mounts.push((
                    m.point.as_str(),
                    format!(
                        "LABEL={} {} {} {} 0 {}\n",
                        fs.label,
                        m.point,
                        fs.kind.as_str(),
                        m.options,
                        m.passno
                    ),
                ));
            }
        }
        // Parents before children: `/` before `/boot/efi`.
        mounts.sort_by_key(|(point, _)| point.matches('/').count() + usize::from(*point != "/"));
        for (point, line) in mounts {
            text.push_str(&line);
            if point != "/" {
                std::fs::create_dir_all(self.root.join(point.trim_start_matches('/')))
                    .map_err(io(format!("create mount point {point}")))?;
            }
        }
        std::fs::write(self.root.join("etc/fstab"), text).map_err(io("write /etc/fstab"))
    }

    /// DIB's finalise_base: an empty /tmp, truncated logs, no build leftovers.
    fn finalise_base(&mut self) -> Result<(), RunError> {
        let tmp = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                let r = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(io(format!("empty /tmp: {}", p.display())))?;
            }
        }
        let mut stack = vec![self.root.join("var/log")];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.filter_map(Result::ok) {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    File::options()
                        .write(true)
                        .open(e.path())
                        .and_then(|f| f.set_len(0))
                        .map_err(io(format!("truncate {}", e.path().display())))?;
                }
            }
        }
        Ok(())
    }

    fn outputs(
        &mut self,
        d: &DiskSpec,
        raw: &Path,
        out: &Path,
        meta_dir: &Path,
    ) -> Result<(), RunError> {
        let mut made: Vec<String> = Vec::new();
        if d.formats.iter().any(|f| f == "qcow2") {
            let name = format!("{}.qcow2", d.name);
            let mut cmd = Command::new("qemu-img");
            // -W -m 8: clusters are compressed in parallel (half the time of the default on
            // two cores; the output is the same image).
            cmd.args(["convert", "-W", "-m", "8", "-f", "raw", "-O", "qcow2"]);
            if let Some(c) = &d.qcow2_compression {
                cmd.arg("-c").arg("-o").arg(format!("compression_type={c}"));
            }
            cmd.arg(raw).arg(out.join(&name));
            tool(&mut cmd, "converting to qcow2 (qemu-img, from qemu-utils)")?;
            made.push(name);
        }
        if d.formats.iter().any(|f| f == "raw") {
            let name = format!("{}.raw", d.name);
            std::fs::rename(raw, out.join(&name)).map_err(io("move the raw disk"))?;
            made.push(name);
        } else {
            let _ = std::fs::remove_file(raw);
        }
        std::fs::write(
            meta_dir.join(format!("{}_provenance.json", d.name)),
            format!("{}\n", d.provenance),
        )
        .map_err(io("write the provenance"))?;
        let mut sums = String::new();
        for name in &made {
            let mut f = File::open(out.join(name)).map_err(io("read an output"))?;
            let mut h = sha2::Sha256::default();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io("read an output"))?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut h, &buf[..n]);
            }
            let digest: String = sha2::Digest::finalize(h)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            sums.push_str(&format!("{digest}  {name}\n"));
        }
        std::fs::write(out.join("SHA256SUMS"), sums).map_err(io("write SHA256SUMS"))?;
        self.logln(&format!("disk: outputs {}", made.join(", ")));
        Ok(())
    }
}

/// The device a mount point is mounted from (the root filesystem's loop device).
fn mount_source(point: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let point = point.display().to_string();
    mounts.lines().rev().find_map(|l| {
        let mut f = l.split_whitespace();
        let src = f.next()?;
        let at = f.next()?;
        (at == point).then(|| src.to_string())
    })
}

fn make_fs(img: &Path, p: &Placed, seed: &str) -> Result<(), RunError> {
    let fs =
        p.part.fs.as_ref().ok_or_else(|| {
            RunError::Engine(format!("partition {} has no filesystem", p.part.name))
        })?;
    let f = File::create(img).map_err(io(format!("create {}", img.display())))?;
    f.set_len(p.length).map_err(io("size a partition image"))?;
    drop(f);
    let uuid = uuid_of(seed, &p.part.name);
    match fs.kind {
        FsKind::Ext4 => tool(
            Command::new("mkfs.ext4")
                .args(["-F", "-q", "-L", &fs.label, "-U", &uuid])
                .arg("-E")
                .arg(format!("hash_seed={}", uuid_of(seed, "hash_seed")))
                // DIB's options: an inode per 4 KiB and a 64 MiB journal.
                .args(["-i", "4096", "-J", "size=64"])
                .arg(img),
            "mkfs.ext4",
        )?,
        FsKind::Xfs => tool(
            Command::new("mkfs.xfs")
                .args(["-f", "-q", "-L", &fs.label, "-m"])
                .arg(format!("uuid={uuid}"))
                .arg(img),
            "mkfs.xfs (xfsprogs)",
        )?,
        FsKind::Vfat => {
            let volid: String = uuid
                .chars()
                .filter(|c| c.is_ascii_hexdigit())
                .take(8)
                .collect();
            tool(
                Command::new("mkfs.fat")
                    .args(["-F", "32", "-n", &fs.label, "-i", &volid])
                    .arg(img),
                "mkfs.fat (dosfstools)",
            )?
        }
    };
    Ok(())
}

/// Fills a FAT image from a directory with mtools (no vfat mount needed).
fn fill_vfat(img: &Path, dir: &Path) -> Result<(), RunError> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("read the ESP tree"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("mcopy");
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-s")
        .arg("-p")
        .arg("-i")
        .arg(img)
        .args(&entries)
        .arg("::/");
    tool(&mut cmd, "filling the ESP (mcopy, from mtools)")?;
    Ok(())
}

fn write_disk(
    raw: &Path,
    plan: &DiskPlan,
    images: &[(Placed, PathBuf)],
    boot: &Path,
    seed: &str,
) -> Result<(), RunError> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(raw)
        .map_err(io("create the disk"))?;
    f.set_len(plan.size).map_err(io("size the disk"))?;
    let disk_guid = layout::guid_bytes(&uuid_of(seed, "disk")).expect("derived GUIDs parse");
    let mut gpt = gptman::GPT::new_from(&mut f, SECTOR, disk_guid)
        .map_err(|e| RunError::Engine(format!("create the partition table: {e}")))?;
    gpt.align = layout::ALIGN / SECTOR;
    for p in &plan.partitions {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: layout::guid_bytes(&p.part.type_guid)
                .ok_or_else(|| RunError::Engine(format!("bad type GUID {}", p.part.type_guid)))?,
            unique_partition_guid: layout::guid_bytes(&uuid_of(
                seed,
                &format!("part/{}", p.part.name),
            ))
            .expect("derived GUIDs parse"),
            starting_lba: p.offset / SECTOR,
            ending_lba: (p.offset + p.length) / SECTOR - 1,
            attribute_bits: 0,
            partition_name: p.part.name.as_str().into(),
        };
    }
    gpt.write_into(&mut f)
        .map_err(|e| RunError::Engine(format!("write the partition table: {e}")))?;
    gptman::GPT::write_protective_mbr_into(&mut f, SECTOR)
        .map_err(|e| RunError::Engine(format!("write the protective MBR: {e}")))?;
    for (p, img) in images {
        copy_sparse_at(img, &f, p.offset)?;
    }
    bios_boot(&mut f, plan, boot)?;
    f.sync_all().map_err(io("sync the disk"))?;
    Ok(())
}

/// GRUB's i386-pc boot code, placed as grub-bios-setup places it on a GPT disk: boot.img's
/// code in the MBR (the partition table kept) pointing at core.img, written whole into the
/// BIOS boot partition, whose first sector's block list points at the rest of it.
fn bios_boot(f: &mut File, plan: &DiskPlan, boot: &Path) -> Result<(), RunError> {
    let (boot_img, core_img) = (boot.join("i386-pc/boot.img"), boot.join("i386-pc/core.img"));
    if !boot_img.is_file() || !core_img.is_file() {
        return Ok(()); // no BIOS boot wanted (arm64, or no bootloader element)
    }
    let bsp = plan
        .partitions
        .iter()
        .find(|p| p.part.type_guid == "21686148-6449-6E6F-744E-656564454649")
        .ok_or_else(|| {
            RunError::Engine(
                "BIOS boot code was made but the layout has no BIOS boot partition".into(),
            )
        })?;
    let boot_code = std::fs::read(&boot_img).map_err(io("read boot.img"))?;
    let mut core = std::fs::read(&core_img).map_err(io("read core.img"))?;
    if boot_code.len() != 512 || core.len() < 512 {
        return Err(RunError::Engine(
            "boot.img or core.img has the wrong size".into(),
        ));
    }
    let sectors = core.len().div_ceil(512) as u64;
    if sectors * 512 > bsp.length {
        return Err(RunError::Engine(format!(
            "core.img ({} KiB) does not fit the BIOS boot partition",
            core.len() / 1024
        )));
    }
    let start = bsp.offset / SECTOR;
    // diskboot.img's block list (the last 12 bytes of core.img's first sector).
    core[0x1f4..0x1fc].copy_from_slice(&(start + 1).to_le_bytes());
    core[0x1fc..0x1fe].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    core[0x1fe..0x200].copy_from_slice(&0x0820u16.to_le_bytes());
    core.resize((sectors * 512) as usize, 0);
    f.write_all_at(&core, bsp.offset)
        .map_err(io("write core.img"))?;

    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0)).map_err(io("read the MBR"))?;
    f.read_exact(&mut mbr).map_err(io("read the MBR"))?;
    // Boot code up to the disk signature; the BIOS parameter block area stays as it was.
    mbr[..0x3].copy_from_slice(&boot_code[..0x3]);
    mbr[0x5a..0x1b8].copy_from_slice(&boot_code[0x5a..0x1b8]);
    mbr[0x5c..0x64].copy_from_slice(&start.to_le_bytes());
    mbr[0x64] = 0xff; // boot from the drive the BIOS booted
    mbr[0x66] = 0x90; // hard disk: skip the buggy-BIOS drive check (two NOPs)
    mbr[0x67] = 0x90;
    f.write_all_at(&mbr, 0).map_err(io("write the MBR"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copies_keep_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", 40 << 20).unwrap();
        drop(f);
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        dst.set_len(128 << 20).unwrap();
        copy_sparse_at(&src, &dst, 1 << 20).unwrap();
        let mut buf = [0u8; 6];
        dst.read_exact_at(&mut buf[..5], 1 << 20).unwrap();
        assert_eq!(&buf[..5], b"start");
        dst.read_exact_at(&mut buf, (1 << 20) + (40 << 20)).unwrap();
        assert_eq!(&buf, b"middle");
        let allocated = dst.metadata().unwrap().blocks() * 512;
        assert!(
            allocated < 8 << 20,
            "holes were filled: {allocated} bytes allocated"
        );
    }
}
