//! The disk action inside the sandbox: a bootable GPT disk from a finished layer stack, made
//! without partition scanning, device-mapper or a vfat mount (none exist on every host):
//!
//! 1. the stack is mounted writable (overlayfs, or copied) and finalised on the tree in a
//!    chroot, as every chroot phase runs, with no block device: what the bootloader element
//!    would probe from one (the root filesystem's UUID and type, the partition table) ccb
//!    knows from the key and the layout and tells it (see `CCB_ROOT_FS_UUID`);
//! 2. the root filesystem is written from the finalised tree into its own file: `mkfs.ext4
//!    -d` (a copy from user space straight into the file, no mount, no loop device), or for
//!    XFS `mkfs.xfs` and a copy through a loop mount (the protofile of xfsprogs 6.1 and 6.13,
//!    Debian 12's and 13's, keeps neither xattrs nor hard links), normalised offline after
//!    it (`super::xfs`); before it, what is random
//!    or machine-specific is removed and every time clamped to the source date
//!    ([`super::repro`]), and after it every ext4 inode's change, access and creation time
//!    (which `mkfs` copies from the tree, where the change time cannot be set) is set to it;
//! 3. the ESP is made in its own file with `mkfs.fat` and filled with mtools;
//! 4. the disk file gets a GPT written here, the partition files copied in at their offsets
//!    (holes kept), and GRUB's BIOS boot code placed the way `grub-bios-setup` places it;
//! 5. conversion to the requested formats (qcow2 by [`crate::qcow2`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use super::event::{Event, StepRecord, emit};
use super::inroot;
use super::layout::{self, DiskPlan, FsKind, Placed, SECTOR};
use super::repro;
use super::runner::{RunError, Runner, engine, io, program};
use super::spec::DiskSpec;
use super::tree;
use crate::process::Process;

/// Inside the image: where the bootloader element leaves GRUB's boot images for ccb to place.
pub const BOOT_DIR_IN: &str = "/tmp/ccb-boot";

fn tool(cmd: &mut Process, what: &str) -> Result<String, RunError> {
    let out = cmd.output().map_err(program(what))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a tree takes: allocated bytes (du: hard links counted once).
/// A filesystem's bytes: the file holding it, its offset and its length there.
type FsRange = (PathBuf, u64, u64);

/// The layout's root filesystem (the one mounted at `/`).
fn root_filesystem(d: &DiskSpec) -> Result<layout::Filesystem, RunError> {
    d.layout
        .partitions
        .iter()
        .find_map(|p| {
            p.fs.as_ref()
                .filter(|f| f.mount.as_ref().is_some_and(|m| m.point == "/"))
        })
        .cloned()
        .ok_or_else(|| RunError::Image {
            problem: "the layout has no root filesystem".into(),
        })
}

fn du(root: &Path) -> Result<u64, RunError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    // An entry that vanished or cannot be read counts for nothing; only the root must be.
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.depth() == 0 => {
                return Err(io(format!("read {}", root.display()))(e.into()));
            }
            Err(_) => continue,
        };
        let Ok(m) = e.metadata() else { continue };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
    }
    Ok(total)
}

/// Copies `src` into `dst` at `offset`, skipping holes (SEEK_DATA/SEEK_HOLE), so a sparse
/// filesystem image stays sparse in the disk file.
fn copy_sparse_at(src: &Path, dst: &File, offset: u64) -> Result<(), RunError> {
    let f = File::open(src).map_err(io(format!("open {}", src.display())))?;
    let len = f.metadata().map_err(io("stat a partition image"))?.len();
    let mut buf = vec![0u8; 4 << 20];
    for (mut at, end) in crate::fsutil::data_ranges(&f, 0, len) {
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)
                .map_err(io("read a partition image"))?;
            dst.write_all_at(&buf[..n], offset + at)
                .map_err(io("write the disk"))?;
            at += n as u64;
        }
    }
    Ok(())
}

/// CPU time (user and system) of this process and of the programs it ran and waited for.
fn cpu_ms() -> u64 {
    let of = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut u) } != 0 {
            return 0;
        }
        let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
        ms(u.ru_utime) + ms(u.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

fn uuid_of(seed: &str, what: &str) -> String {
    layout::derived_guid(&format!("{seed}/{what}"))
}

impl Runner<'_> {
    /// One part of the disk action that ccb does itself, timed and reported as a step (phase
    /// `disk`, element `ccb`) beside the finalise scripts, so that the build report says where
    /// a disk's time goes as it does for a layer.
    fn disk_step<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<T, RunError>,
    ) -> Result<T, RunError> {
        let (phase, element) = ("disk", "ccb");
        emit(&Event::Step {
            phase: phase.into(),
            element: element.into(),
            name: name.into(),
        });
        let (started, cpu) = (std::time::Instant::now(), cpu_ms());
        let done = f(self)?;
        let duration_ms = started.elapsed().as_millis() as u64;
        // The CPU time beside the wall time: on a shared builder the wall time says as much
        // about the neighbours as about the step.
        self.logln(&format!(
            "disk: step {name} in {duration_ms} ms ({} ms of CPU)",
            cpu_ms().saturating_sub(cpu)
        ));
        emit(&Event::StepDone(StepRecord {
            phase: phase.into(),
            element: element.into(),
            name: name.into(),
            status: 0,
            duration_ms,
        }));
        Ok(done)
    }

    fn disk_spec(&self) -> Result<&DiskSpec, RunError> {
        self.spec
            .disk
            .as_ref()
            .ok_or(RunError::Internal("a disk action without a disk spec"))
    }

    pub(super) fn run_disk(&mut self) -> Result<(), RunError> {
        let d = self.disk_spec()?.clone();
        let work = self.spec.work.clone();
        let out = work.join("out");
        let meta_dir = out.join(format!("{}.d", d.name));
        std::fs::create_dir_all(&meta_dir).map_err(io("create the output directory"))?;

        // The stack, writable through an overlay (or copied where overlayfs is unavailable),
        // at the chroot's root: finalise works on the tree, as every chroot phase does.
        std::fs::create_dir_all(&self.root).map_err(io("create the root tree"))?;
        self.disk_step("stack", Self::prepare_root)?;
        let epoch: i64 = self
            .spec
            .env
            .get(repro::ENV)
            .and_then(|v| v.parse().ok())
            .ok_or(RunError::Internal("a disk action without a source date"))?;
        let used = self.disk_step("measure", |r| du(&r.root))?;
        let plan_root = root_filesystem(&d)?;
        let plan = self.place(&d, used, &plan_root)?;

        // 1. Finalise on the tree, in the sandbox, as every chroot phase runs: no block device
        //    exists yet.
        let host_mkimage = self.finalise(&d, &plan, &plan_root)?;
        let (boot, esp_tree) = self.collect_boot(&d, host_mkimage.as_deref(), &meta_dir, epoch)?;
        self.clean_and_clamp(plan_root.kind, epoch)?;

        // 2. The root filesystem, written from the finalised tree by mkfs (ext4: `mkfs.ext4
        //    -d`, no mount, no loop device).
        let plan = self.place_again(&d, plan, used, &plan_root)?;
        let root = plan.root().clone();
        let raw = work.join("disk.raw");
        File::create(&raw)
            .and_then(|f| f.set_len(plan.size))
            .map_err(io("create the disk"))?;
        // The qcow2's compression starts while mkfs writes the root (ext4 only: XFS is
        // written elsewhere and copied in).
        let ahead = match ccb_qcow2(&d) {
            Some(compression) if plan_root.kind == FsKind::Ext4 => {
                let range = (root.offset, root.offset + root.length);
                match crate::qcow2::Ahead::start(&raw, range.0, range.1, compression) {
                    Ok(ahead) => Some(ahead),
                    // Only time is lost: the conversion compresses everything itself.
                    Err(e) => {
                        self.logln(&format!("disk: no qcow2 head start: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        let (root_fs, root_img) = self.write_root_fs(&d, &raw, &root, plan_root.kind, epoch)?;
        self.disk_step("unmount", |r| {
            if r.spec.overlay {
                umount2(&r.root, MntFlags::empty()).map_err(engine("unmount the stack"))
            } else {
                std::fs::remove_dir_all(&r.root).map_err(io("remove the copied stack"))
            }
        })?;

        // 3. Every other filesystem (the ESP).
        let mut images: Vec<(Placed, PathBuf)> = root_img
            .map(|img| (root.clone(), img))
            .into_iter()
            .collect();
        self.disk_step("esp", |_| {
            for p in &plan.partitions {
                if let Some(fs) = &p.part.fs
                    && fs.kind == FsKind::Vfat
                {
                    let img = work.join(format!("part{}.img", p.number));
                    make_fs(&img, p, &d.seed, None, epoch)?;
                    if fs.mount.as_ref().is_some_and(|m| m.point == "/boot/efi") {
                        fill_vfat(&img, &esp_tree, epoch)?;
                    }
                    images.push((p.clone(), img));
                }
            }
            Ok(())
        })?;

        // 4. The disk.
        let keep_raw = d.formats.iter().any(|f| f == "raw");
        let write_back = self.disk_step("disk", |_| {
            write_disk(&raw, &plan, &images, &boot, &d.seed)?;
            Ok(if keep_raw {
                WriteBack::start(&raw)?
            } else {
                None
            })
        })?;

        // 5. Outputs.
        self.outputs(&d, &raw, &out, &meta_dir, &root_fs, (write_back, ahead))
    }

    /// Places the partitions for a tree of `used` bytes, and says so in the log.
    fn place(
        &mut self,
        d: &DiskSpec,
        used: u64,
        plan_root: &layout::Filesystem,
    ) -> Result<DiskPlan, RunError> {
        let plan = layout::place(&d.layout, layout::root_size(used, plan_root.kind), d.size)
            .map_err(|problem| RunError::Image { problem })?;
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
        Ok(plan)
    }

    /// Runs the finalise phases on the tree. What the bootloader element's grub-mkconfig
    /// would probe from a block device (the root filesystem's UUID, type and partition table)
    /// ccb knows from the key and the layout, and says so in CCB_ROOT_FS_UUID and
    /// CCB_ROOT_PART_UUID. Returns the host's grub-mkimage, when the boot images are made
    /// by it.
    fn finalise(
        &mut self,
        d: &DiskSpec,
        plan: &DiskPlan,
        plan_root: &layout::Filesystem,
    ) -> Result<Option<PathBuf>, RunError> {
        let root = plan.root().clone();
        self.write_fstab(plan)?;
        self.tree()?
            .create_dir_all(BOOT_DIR_IN, 0o755)
            .map_err(io("create the boot image directory"))?;

        let mountpoints: Vec<String> = plan
            .partitions
            .iter()
            .filter_map(|p| p.part.fs.as_ref()?.mount.as_ref().map(|m| m.point.clone()))
            .collect();
        let image_dir = self.spec.work.join("image");
        std::fs::create_dir_all(&image_dir).map_err(io("create TMP_IMAGE_DIR"))?;
        let env: BTreeMap<String, String> = [
            ("DIB_ROOT_LABEL", plan_root.label.clone()),
            ("DIB_ROOT_FSTYPE", plan_root.kind.as_str().to_string()),
            ("DIB_IMAGE_SIZE", (plan.size / 1024).to_string()),
            ("DIB_MOUNTPOINTS", mountpoints.join("|")),
            // DIB's variable, set for scripts that read it under `set -u`: there is no
            // device while finalise runs (the filesystem is written from the tree after).
            ("IMAGE_BLOCK_DEVICE", String::new()),
            ("CCB_ROOT_FS_UUID", uuid_of(&d.seed, &root.part.name)),
            (
                "CCB_ROOT_PART_UUID",
                uuid_of(&d.seed, &format!("part/{}", root.part.name)),
            ),
            ("DIB_CC_PROVENANCE", d.provenance.clone()),
            ("TMP_IMAGE_DIR", image_dir.display().to_string()),
            ("CCB_BOOT_DIR", BOOT_DIR_IN.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        self.extra_env = env;
        let host_mkimage = super::grub::host_mkimage(&self.spec.arch);
        if let Some(tool) = &host_mkimage {
            self.extra_env
                .insert(super::grub::ENV.into(), tool.display().to_string());
        }

        self.setup_chroot()?;
        let phases = self.spec.phases.clone();
        for phase in &phases {
            self.run_phase(phase)?;
        }
        self.teardown_chroot()?;
        Ok(host_mkimage)
    }

    /// What the bootloader element made, and what packages put on the ESP: read from the
    /// image as the image sees its paths (a /boot/efi linked to a host directory is that path
    /// inside the image, never the host's files in the ESP). Also keeps the image's DIB
    /// manifests. Returns the boot images' directory and the ESP's tree.
    fn collect_boot(
        &mut self,
        d: &DiskSpec,
        host_mkimage: Option<&Path>,
        meta_dir: &Path,
        epoch: i64,
    ) -> Result<(PathBuf, PathBuf), RunError> {
        let work = self.spec.work.clone();
        let image = self.tree()?;
        let boot = work.join("boot");
        let boot_in = image
            .dir(BOOT_DIR_IN)
            .map_err(io("resolve the boot image directory"))?;
        if let Some(dir) = &boot_in {
            tree::copy_contents(dir, &boot)?;
        }
        if let (Some(tool), Some(boot_in)) = (host_mkimage, &boot_in) {
            let n = self.disk_step("boot-images", |r| {
                super::grub::run_requests(tool, &r.root, boot_in, &boot)
            })?;
            self.logln(&format!(
                "disk: {n} GRUB image(s) made by the host's {}",
                tool.display(),
            ));
        }
        let esp_tree = work.join("esp-tree");
        std::fs::create_dir_all(&esp_tree).map_err(io("create the ESP tree"))?;
        if let Some(dir) = image.dir("boot/efi").map_err(io("resolve /boot/efi"))? {
            tree::copy_contents(&dir, &esp_tree)?;
        }
        if boot.join("efi").is_dir() {
            tree::copy_contents(&boot.join("efi"), &esp_tree)?;
        }
        repro::clamp_times(&esp_tree, epoch).map_err(io("clamp the ESP's times"))?;
        if let Some(dir) = image
            .dir(&d.manifest_dir)
            .map_err(io(format!("resolve {}", d.manifest_dir)))?
        {
            tree::copy_contents(&dir, &meta_dir.join("dib-manifests"))?;
        }
        drop(image);
        Ok((boot, esp_tree))
    }

    /// Removes what each machine makes itself and clamps the tree's times to the source date.
    fn clean_and_clamp(&mut self, root_kind: FsKind, epoch: i64) -> Result<(), RunError> {
        self.disk_step("clean", |r| {
            r.finalise_base()?;
            let image = r.tree()?;
            let scrubbed =
                repro::scrub(&image, epoch).map_err(io("remove what each machine makes itself"))?;
            drop(image);
            for line in scrubbed {
                r.logln(&format!("disk: {line}"));
            }
            Ok(())
        })?;
        let clamped = self.disk_step("source-date", |r| {
            if root_kind == FsKind::Ext4 {
                // Every inode's access time is set in the filesystem (set_inode_times).
                repro::clamp_modification_times(&r.root, epoch)
            } else {
                repro::clamp_times(&r.root, epoch)
            }
            .map_err(io("clamp the image's times to the source date"))
        })?;
        self.logln(&format!(
            "disk: source date {epoch}: {clamped} newer times clamped"
        ));
        Ok(())
    }

    /// The disk keeps the size DIB gives it, from the tree before finalise (whose growth, a
    /// few MiB of GRUB modules, DIB's 40 % of free space absorbs), unless finalise grew the
    /// tree to fill more than 80 % of the root (an initramfs made there): then it is sized
    /// again for what the tree holds now.
    fn place_again(
        &mut self,
        d: &DiskSpec,
        plan: DiskPlan,
        used: u64,
        plan_root: &layout::Filesystem,
    ) -> Result<DiskPlan, RunError> {
        let limit = plan.root().length / 10 * 8;
        let after = self.disk_step("measure-again", |r| {
            if r.spec.overlay {
                // All that finalise wrote is in the overlay's upper directory: the tree holds
                // at most what it held before plus that (a copied-up file counts twice), and
                // only a bound too close to the limit needs the whole tree walked again.
                let bound = used + du(&r.spec.work.join("upper"))?;
                if bound <= limit {
                    return Ok(bound);
                }
            }
            du(&r.root)
        })?;
        if d.size.is_some() || after <= limit {
            return Ok(plan);
        }
        let grown = layout::place(&d.layout, layout::root_size(after, plan_root.kind), d.size)
            .map_err(|problem| RunError::Image { problem })?;
        self.logln(&format!(
            "disk: finalise grew the tree to {} MiB, disk {} MiB",
            after >> 20,
            grown.size >> 20
        ));
        Ok(grown)
    }

    /// Writes the root filesystem from the tree. ext4 is written in place, at its offset in
    /// the disk file (`mkfs.ext4 -E offset`): a separate file copied in afterwards was a
    /// second write of every byte. XFS, filled through a loop mount, keeps a file of its own.
    /// Returns (file, offset, length) of the filesystem, and its own file when it has one.
    fn write_root_fs(
        &mut self,
        d: &DiskSpec,
        raw: &Path,
        root: &Placed,
        kind: FsKind,
        epoch: i64,
    ) -> Result<(FsRange, Option<PathBuf>), RunError> {
        if kind == FsKind::Ext4 {
            self.disk_step("root-filesystem", |r| {
                make_ext4_in(raw, root, &d.seed, &r.root, epoch)
            })?;
            self.disk_step("inode-times", |_| {
                super::ext4::set_inode_times(raw, root.offset, epoch)
            })?;
            Ok(((raw.to_path_buf(), root.offset, root.length), None))
        } else {
            let root_img = self.spec.work.join("root.img");
            self.disk_step("root-filesystem", |r| {
                make_fs(&root_img, root, &d.seed, Some(&r.root), epoch)
            })?;
            Ok(((root_img.clone(), 0, root.length), Some(root_img)))
        }
    }

    fn write_fstab(&mut self, plan: &DiskPlan) -> Result<(), RunError> {
        write_fstab(&self.tree()?, plan)
    }

    /// DIB's finalise_base: an empty /tmp, truncated logs, no build leftovers.
    fn finalise_base(&mut self) -> Result<(), RunError> {
        // /tmp and /var/log as the image sees them: a link to a host directory is that path
        // inside the image, and nothing below them is followed.
        let image = self.tree()?;
        if let Some(tmp) = image.dir("tmp").map_err(io("resolve /tmp"))? {
            for e in std::fs::read_dir(&tmp)
                .map_err(io("empty /tmp"))?
                .filter_map(Result::ok)
            {
                let p = e.path();
                inroot::remove_entry(&p).map_err(io(format!("empty /tmp: {}", p.display())))?;
            }
        }
        let Some(log) = image.dir("var/log").map_err(io("resolve /var/log"))? else {
            return Ok(());
        };
        // walkdir follows no link: a link below /var/log is left alone, wherever it points.
        for e in walkdir::WalkDir::new(&log)
            .into_iter()
            .filter_map(Result::ok)
        {
            if e.file_type().is_file() {
                File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(e.path())
                    .and_then(|f| f.set_len(0))
                    .map_err(io(format!("truncate {}", e.path().display())))?;
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
        (root_fs, root_offset, root_len): &FsRange,
        (write_back, ahead): (Option<WriteBack>, Option<crate::qcow2::Ahead>),
    ) -> Result<(), RunError> {
        // Opened now: the raw disk that holds it is renamed or removed below.
        let root_file = File::open(root_fs).map_err(io("open the root filesystem for the SBOM"))?;
        let mut made: Vec<String> = Vec::new();
        let keep_raw = d.formats.iter().any(|f| f == "raw");
        // The raw disk's checksum: ccb's qcow2 writer hashes the bytes it reads for the
        // qcow2; otherwise (no qcow2, or qemu-img's zstd) a thread of its own reads the raw
        // disk again beside the conversion. Alone, afterwards, it was seconds of one core
        // hashing GBs (holes read as zeros) with the other idle.
        let writer_hashes = keep_raw && ccb_qcow2(d).is_some();
        let raw_digest = std::thread::scope(|s| -> Result<Option<String>, RunError> {
            let hashing = (keep_raw && !writer_hashes)
                .then(|| {
                    std::thread::Builder::new()
                        .name("ccb-raw-sha256".into())
                        .spawn_scoped(s, || sha256_of(raw))
                })
                .transpose()
                .map_err(io("start the raw disk's checksum thread"))?;
            let from_writer = self.qcow2_output(d, raw, out, &mut made, writer_hashes, ahead)?;
            match hashing {
                Some(h) => h
                    .join()
                    .map_err(|_| RunError::Internal("the raw disk's checksum thread panicked"))?
                    .map(Some),
                None => Ok(from_writer),
            }
        })?;
        if keep_raw {
            let name = format!("{}.raw", d.name);
            // Durable before it is named, as the qcow2 is; a raw disk that is only the
            // qcow2's source is never synced (it was GBs written to the disk for nothing).
            self.disk_step("sync-raw", |_| {
                if let Some(w) = write_back {
                    w.wait()?;
                }
                File::open(raw)
                    .and_then(|f| f.sync_all())
                    .map_err(io("sync the raw disk"))
            })?;
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
        // The files' checksums and the SBOM's packages (read from the root filesystem's own
        // bytes), side by side: each is one core's work.
        let (digests, inventory) = self.disk_step("checksums-and-packages", |_| {
            std::thread::scope(|s| {
                let sums = std::thread::Builder::new()
                    .name("ccb-checksums".into())
                    .spawn_scoped(s, || {
                        made.iter()
                            .map(|name| {
                                let digest = match &raw_digest {
                                    Some(digest) if name.ends_with(".raw") => digest.clone(),
                                    _ => sha256_of(&out.join(name))?,
                                };
                                Ok((name.clone(), digest))
                            })
                            .collect::<Result<Vec<(String, String)>, RunError>>()
                    })
                    .map_err(io("start the checksum thread"))?;
                let inventory = sbom_inventory(root_file, *root_offset, *root_len);
                let digests = sums
                    .join()
                    .map_err(|_| RunError::Internal("the checksum thread panicked"))??;
                Ok((digests, inventory?))
            })
        })?;
        self.sbom_and_sums(d, out, &inventory, digests, made)
    }

    /// The qcow2, if the image wants one, named in `made`; with `hash_raw` (only when ccb's
    /// writer makes it: [`ccb_qcow2`]), the raw disk's SHA-256 as well.
    fn qcow2_output(
        &mut self,
        d: &DiskSpec,
        raw: &Path,
        out: &Path,
        made: &mut Vec<String>,
        hash_raw: bool,
        ahead: Option<crate::qcow2::Ahead>,
    ) -> Result<Option<String>, RunError> {
        let mut raw_digest = None;
        if d.formats.iter().any(|f| f == "qcow2") {
            let name = format!("{}.qcow2", d.name);
            let dst = out.join(&name);
            self.disk_step("qcow2", |r| {
                match ccb_qcow2(d) {
                    Some(compression) => {
                        // ccb's writer: deflate on every core (benches/qcow2.rs compares it
                        // with qemu-img on this image).
                        let head = ahead.map(crate::qcow2::Ahead::finish);
                        let stats = if hash_raw {
                            let (stats, digest) = crate::qcow2::convert_raw_with_digest(
                                raw,
                                &dst,
                                compression,
                                head.as_ref(),
                            )
                            .map_err(RunError::Qcow2)?;
                            raw_digest = Some(digest);
                            stats
                        } else {
                            crate::qcow2::convert_raw(raw, &dst, compression, head.as_ref())
                                .map_err(RunError::Qcow2)?
                        };
                        r.logln(&format!(
                            "disk: qcow2 {} MiB, {} of {} data clusters compressed",
                            stats.file_size >> 20,
                            stats.compressed_clusters,
                            stats.data_clusters,
                        ));
                        if let Some(h) = head {
                            r.logln(&format!(
                                "disk: qcow2 head start: {} clusters compressed while the root \
                                 was written, {} of them still the same",
                                h.len(),
                                h.reused()
                            ));
                        }
                    }
                    None => {
                        // zstd: qemu-img's (libzstd, QEMU's level); ccb writes only deflate.
                        let mut cmd = Process::new("qemu-img");
                        cmd.args(["convert", "-W", "-m", "8", "-f", "raw", "-O", "qcow2"]);
                        if let Some(c) = &d.qcow2_compression {
                            cmd.arg("-c").arg("-o").arg(format!("compression_type={c}"));
                        }
                        cmd.arg(raw).arg(&dst);
                        tool(&mut cmd, "converting to qcow2 (qemu-img, from qemu-utils)")?;
                    }
                }
                Ok(())
            })?;
            made.push(name);
        }
        Ok(raw_digest)
    }

    /// The SBOM and SHA256SUMS, after the disks.
    fn sbom_and_sums(
        &mut self,
        d: &DiskSpec,
        out: &Path,
        inventory: &crate::sbom::OsInventory,
        mut digests: Vec<(String, String)>,
        mut made: Vec<String>,
    ) -> Result<(), RunError> {
        // The SBOM beside the disks: cached and materialised with them.
        let sbom_name = crate::sbom::file_name(&d.name);
        let doc = crate::sbom::document(
            &d.name,
            &crate::sbom::created_from_provenance(&d.provenance),
            &digests,
            inventory,
            &d.sbom,
        );
        std::fs::write(out.join(&sbom_name), crate::sbom::render(&doc))
            .map_err(io("write the SBOM"))?;
        let packages = inventory.packages.len();
        self.logln(&format!("disk: SBOM of {packages} packages"));
        let started = std::time::Instant::now();
        digests.push((sbom_name.clone(), sha256_of(&out.join(&sbom_name))?));
        made.push(sbom_name);
        let sums: String = digests
            .iter()
            .map(|(name, digest)| format!("{digest}  {name}\n"))
            .collect();
        std::fs::write(out.join("SHA256SUMS"), sums).map_err(io("write SHA256SUMS"))?;
        self.logln(&format!(
            "disk: outputs {}, SHA256SUMS in {} ms",
            made.join(", "),
            started.elapsed().as_millis()
        ));
        Ok(())
    }
}

/// The packages of the root filesystem at `offset` in `file`, from its own bytes (the reader
/// `ccb inspect` checks the SBOM with).
fn sbom_inventory(file: File, offset: u64, len: u64) -> Result<crate::sbom::OsInventory, RunError> {
    let slice = crate::inspect::Slice {
        inner: file,
        offset,
        len,
    };
    let fs = crate::inspect::fs::open(std::sync::Arc::new(slice)).map_err(|e| RunError::Image {
        problem: format!("the SBOM: reading the root filesystem: {e}"),
    })?;
    crate::sbom::inventory(fs.as_ref()).map_err(|e| RunError::Image {
        problem: format!("the SBOM: {e}"),
    })
}

/// How ccb's own writer stores the disk's qcow2 (deflate or none); `None` when there is no
/// qcow2, or `qemu-img` writes it (zstd).
fn ccb_qcow2(d: &DiskSpec) -> Option<crate::qcow2::Compression> {
    if !d.formats.iter().any(|f| f == "qcow2") {
        return None;
    }
    crate::qcow2::Compression::from_qemu_name(d.qcow2_compression.as_deref())
}

/// The raw disk's write-back (when it is an output), started on a thread of its own while the
/// qcow2 is compressed from the page cache: `sync_file_range` starts it but also waits while
/// the device's queue is full, which for GBs was a second of both cores idle. The sync before
/// the raw disk is named then only waits for what is left.
struct WriteBack(std::thread::JoinHandle<()>);

impl WriteBack {
    /// `None` where no thread can be started: the sync then does it all.
    fn start(raw: &Path) -> Result<Option<WriteBack>, RunError> {
        let f = File::open(raw).map_err(io("open the raw disk"))?;
        let thread = std::thread::Builder::new().name("ccb-write-back".into());
        let started = thread.spawn(move || {
            // Only a hint, so its answer is not looked at: where the filesystem cannot, the
            // sync before the raw disk is named does it all.
            // SAFETY: a system call on a descriptor the thread owns; a range of 0 means "to
            // the end".
            unsafe {
                libc::sync_file_range(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    0,
                    0,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        });
        Ok(started.ok().map(WriteBack))
    }

    fn wait(self) -> Result<(), RunError> {
        self.0
            .join()
            .map_err(|_| RunError::Internal("the raw disk's write-back thread panicked"))
    }
}

fn sha256_of(path: &Path) -> Result<String, RunError> {
    crate::fetch::hash::sha256_file(path).map_err(io(format!("read {}", path.display())))
}

/// Makes the filesystem of `p` in the file `img`, filled from `content` if given.
///
/// Everything that would differ between two runs on the same input is fixed: UUIDs and the
/// directory hash seed come from the key (`seed`), and the filesystem's timestamps of its own
/// (creation, last write, lost+found, the root when empty; FAT's boot sector and volume
/// label) are `epoch`, the source date. `mkfs.ext4 -d` adds files in name order.
fn make_fs(
    img: &Path,
    p: &Placed,
    seed: &str,
    content: Option<&Path>,
    epoch: i64,
) -> Result<(), RunError> {
    let fs = p.part.fs.as_ref().ok_or_else(|| RunError::Image {
        problem: format!("partition {} has no filesystem", p.part.name),
    })?;
    let f = File::create(img).map_err(io(format!("create {}", img.display())))?;
    f.set_len(p.length).map_err(io("size a partition image"))?;
    drop(f);
    let uuid = uuid_of(seed, &p.part.name);
    match fs.kind {
        FsKind::Ext4 => tool(
            &mut mkfs_ext4(img, 0, p, &fs.label, seed, content, epoch),
            "mkfs.ext4",
        )?,
        FsKind::Xfs => {
            tool(
                Process::new("mkfs.xfs")
                    .without_syncs()
                    .args(["-f", "-q", "-L", &fs.label, "-m"])
                    .arg(format!("uuid={uuid}"))
                    .arg(img),
                "mkfs.xfs (xfsprogs)",
            )?;
            if let Some(dir) = content {
                super::xfs::fill(img, dir, epoch)?;
            }
            String::new()
        }
        FsKind::Vfat => {
            let volid: String = uuid
                .chars()
                .filter(|c| c.is_ascii_hexdigit())
                .take(8)
                .collect();
            tool(
                Process::new("mkfs.fat")
                    .without_syncs()
                    .env(repro::ENV, epoch.to_string())
                    // dosfstools 4.2 stamps the volume label's entry with the clock whatever
                    // SOURCE_DATE_EPOCH says; --invariant fixes it (the -i after it wins).
                    .args(["-F", "32", "-n", &fs.label, "--invariant", "-i", &volid])
                    .arg(img),
                "mkfs.fat (dosfstools)",
            )?
        }
    };
    Ok(())
}

/// Writes the ext4 filesystem of `p` from `content` into the existing disk file `disk`, at the
/// partition's offset.
fn make_ext4_in(
    disk: &Path,
    p: &Placed,
    seed: &str,
    content: &Path,
    epoch: i64,
) -> Result<(), RunError> {
    let fs = p.part.fs.as_ref().ok_or_else(|| RunError::Image {
        problem: format!("partition {} has no filesystem", p.part.name),
    })?;
    tool(
        &mut mkfs_ext4(disk, p.offset, p, &fs.label, seed, Some(content), epoch),
        "mkfs.ext4",
    )?;
    Ok(())
}

/// `mkfs.ext4` for partition `p` at `offset` in `img` (0: the file is the filesystem).
fn mkfs_ext4(
    img: &Path,
    offset: u64,
    p: &Placed,
    label: &str,
    seed: &str,
    content: Option<&Path>,
    epoch: i64,
) -> Process {
    let mut cmd = Process::new("mkfs.ext4");
    // mkfs fsyncs what it wrote: seconds of waiting for the disk (the root filesystem is GBs)
    // with both cores idle. The raw disk that holds it is synced once, when it is an output,
    // after its write-back has overlapped the qcow2's compression.
    cmd.without_syncs()
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args(["-F", "-q", "-L", label, "-U", &uuid_of(seed, &p.part.name)])
        .arg("-E")
        // Discard stays on: on a file it punches the range, which tells mkfs that the inode
        // tables read as zeros, so it neither writes them nor leaves them to the kernel's
        // lazy init at first boot.
        .arg(format!(
            "hash_seed={},offset={offset}",
            uuid_of(seed, "hash_seed")
        ))
        // DIB's options: an inode per 4 KiB and a 64 MiB journal.
        .args(["-i", "4096", "-J", "size=64"]);
    // -d copies the tree into the new filesystem from user space (owners, modes,
    // times, xattrs, hard links, devices, holes), with no mount and no loop device.
    if let Some(dir) = content {
        cmd.arg("-d").arg(dir);
    }
    // The size, the partition's, not what follows the offset in the file.
    cmd.arg(img).arg(format!("{}k", p.length / 1024));
    cmd
}

/// Fills a FAT image from a directory with mtools (no vfat mount needed): directories first
/// (`mmd`), then each directory's files (`mcopy`, times kept), all in name order, so that
/// the entries land in the same slots and clusters whatever order the host lists them in.
fn fill_vfat(img: &Path, dir: &Path, epoch: i64) -> Result<(), RunError> {
    // FAT keeps an access date, and a read before this one moved it.
    repro::clamp_times(dir, epoch).map_err(io("clamp the ESP's times"))?;
    let mut dirs: Vec<String> = Vec::new();
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .sort_by_file_name()
        .follow_links(true)
    {
        let e = e.map_err(|e| RunError::Io {
            what: "read the ESP tree".into(),
            source: std::io::Error::other(e),
        })?;
        let rel = e
            .path()
            .strip_prefix(dir)
            .map_err(|_| RunError::Internal("an ESP entry outside the ESP tree"))?;
        let parent = rel
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if e.file_type().is_dir() {
            dirs.push(rel.display().to_string());
        } else {
            files
                .entry(parent)
                .or_default()
                .push(e.path().to_path_buf());
        }
    }
    let mtools = |name: &str| {
        let mut cmd = Process::new(name);
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .env(repro::ENV, epoch.to_string())
            .arg("-i")
            .arg(img);
        cmd
    };
    if !dirs.is_empty() {
        let mut cmd = mtools("mmd");
        cmd.args(dirs.iter().map(|d| format!("::/{d}")));
        tool(&mut cmd, "making the ESP's directories (mmd, from mtools)")?;
    }
    for (parent, list) in &files {
        let mut cmd = mtools("mcopy");
        cmd.args(["-p", "-m"])
            .args(list)
            .arg(format!("::/{parent}"));
        tool(&mut cmd, "filling the ESP (mcopy, from mtools)")?;
    }
    Ok(())
}

/// gptman's errors wrap the I/O error under them (a full disk is still one).
fn gpt_error(what: &'static str) -> impl FnOnce(gptman::Error) -> RunError {
    move |e| match e {
        gptman::Error::Io(source) => RunError::Io {
            what: what.into(),
            source,
        },
        other => RunError::Io {
            what: what.into(),
            source: std::io::Error::other(other),
        },
    }
}

/// Writes the disk file: the partition table, the partitions written apart, the BIOS boot code.
fn write_disk(
    raw: &Path,
    plan: &DiskPlan,
    images: &[(Placed, PathBuf)],
    boot: &Path,
    seed: &str,
) -> Result<(), RunError> {
    // Made, at its size, before the root filesystem was written into it.
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(raw)
        .map_err(io("open the disk"))?;
    let disk_guid = layout::guid_bytes(&uuid_of(seed, "disk")).expect("derived GUIDs parse");
    let mut gpt = gptman::GPT::new_from(&mut f, SECTOR, disk_guid)
        .map_err(gpt_error("create the partition table"))?;
    gpt.align = layout::ALIGN / SECTOR;
    for p in &plan.partitions {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: layout::guid_bytes(&p.part.type_guid).ok_or_else(|| {
                RunError::Image {
                    problem: format!("bad type GUID {}", p.part.type_guid),
                }
            })?,
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
        .map_err(gpt_error("write the partition table"))?;
    gptman::GPT::write_protective_mbr_into(&mut f, SECTOR)
        .map_err(gpt_error("write the protective MBR"))?;
    for (p, img) in images {
        copy_sparse_at(img, &f, p.offset)?;
    }
    bios_boot(&mut f, plan, boot)
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
        .ok_or_else(|| RunError::Image {
            problem: "BIOS boot code was made but the layout has no BIOS boot partition".into(),
        })?;
    let boot_code = std::fs::read(&boot_img).map_err(io("read boot.img"))?;
    let mut core = std::fs::read(&core_img).map_err(io("read core.img"))?;
    if boot_code.len() != 512 || core.len() < 512 {
        return Err(RunError::Image {
            problem: "boot.img or core.img has the wrong size".into(),
        });
    }
    let sectors = core.len().div_ceil(512) as u64;
    if sectors * 512 > bsp.length {
        return Err(RunError::Image {
            problem: format!(
                "core.img ({} KiB) does not fit the BIOS boot partition",
                core.len() / 1024
            ),
        });
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

/// The image's /etc/fstab from its block-device layout, and the mount points it names, in
/// the tree as the image sees it (its /etc or /boot may be links to the host's).
fn write_fstab(image: &super::inroot::TreeRoot, plan: &DiskPlan) -> Result<(), RunError> {
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
            image
                .create_dir_all(point, 0o755)
                .map_err(io(format!("create mount point {point}")))?;
        }
    }
    image
        .create_dir_all("etc", 0o755)
        .and_then(|_| image.write("etc/fstab", text.as_bytes(), 0o644))
        .map_err(io("write /etc/fstab"))
}

#[cfg(test)]
mod tests {
    use super::super::ext4::set_inode_times;
    use super::*;

    #[test]
    fn fstab_and_mount_points_through_links_to_the_host_land_in_the_image() {
        let tree = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        // /etc is a link to a host directory, /etc/fstab there a link to a host file.
        std::fs::write(host.path().join("fstab"), b"host\n").unwrap();
        std::os::unix::fs::symlink(host.path(), tree.path().join("etc")).unwrap();
        let inside = tree.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::os::unix::fs::symlink(host.path().join("fstab"), inside.join("fstab")).unwrap();
        // /boot is a link to the host directory too: the ESP's mount point goes in the image.
        std::os::unix::fs::symlink(host.path(), tree.path().join("boot")).unwrap();
        let mut root = ext4_root_partition(1 << 30);
        root.part.fs.as_mut().unwrap().mount = Some(layout::Mount {
            point: "/".into(),
            options: "defaults".into(),
            passno: 1,
        });
        let mut esp = ext4_root_partition(1 << 20);
        esp.part.fs.as_mut().unwrap().label = "ESP".into();
        esp.part.fs.as_mut().unwrap().mount = Some(layout::Mount {
            point: "/boot/efi".into(),
            options: "umask=0077".into(),
            passno: 2,
        });
        let plan = DiskPlan {
            size: 2 << 30,
            partitions: vec![root, esp],
        };
        let image = super::super::inroot::TreeRoot::open(tree.path()).unwrap();
        write_fstab(&image, &plan).unwrap();
        assert_eq!(std::fs::read(host.path().join("fstab")).unwrap(), b"host\n");
        let entries: Vec<_> = std::fs::read_dir(host.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["fstab"], "a mount point was made on the host");
        let fstab = std::fs::read_to_string(inside.join("fstab")).unwrap();
        assert!(fstab.contains("LABEL=ESP /boot/efi"), "{fstab}");
        assert!(inside.join("efi").is_dir());
    }

    /// `debugfs -R <request>` on an ext4 image: what ccb's reader does not expose (inode
    /// numbers, link counts, xattrs, device numbers).
    fn debugfs(img: &Path, request: &str) -> String {
        let out = Process::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(img)
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs {request}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ext4_root_partition(length: u64) -> Placed {
        Placed {
            number: 3,
            part: layout::Partition {
                name: "root".into(),
                type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
                size: layout::PartSize::Rest,
                fs: Some(layout::Filesystem {
                    kind: FsKind::Ext4,
                    label: "cloudimg-rootfs".into(),
                    mount: None,
                }),
            },
            offset: 0,
            length,
        }
    }

    /// What a root tree holds that a careless copy loses, as Debian ships it: file capabilities
    /// on `/usr/bin/ping` (cap_net_raw=ep, returned), a hard link and setuid `perl` (group 50),
    /// a symlink, a device node and a sparse file of `sparse_len` bytes ending in `end`.
    fn special_files(tree: &Path, sparse_len: u64) -> [u8; 20] {
        use std::os::unix::fs::{PermissionsExt, symlink};
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("srv")).unwrap();
        std::fs::write(tree.join("usr/bin/ping"), b"\x7fELF ping").unwrap();
        let cap: [u8; 20] = [
            0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        xattr::set(tree.join("usr/bin/ping"), "security.capability", &cap).unwrap();
        std::fs::write(tree.join("usr/bin/perl"), b"perl").unwrap();
        std::fs::hard_link(tree.join("usr/bin/perl"), tree.join("usr/bin/perl5.36")).unwrap();
        // Owner first: a chown clears the setuid bit.
        std::os::unix::fs::lchown(tree.join("usr/bin/perl"), Some(0), Some(50)).unwrap();
        std::fs::set_permissions(
            tree.join("usr/bin/perl"),
            std::fs::Permissions::from_mode(0o4750),
        )
        .unwrap();
        symlink("../usr/bin/perl", tree.join("srv/perl")).unwrap();
        nix::sys::stat::mknod(
            &tree.join("srv/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let sparse = File::create(tree.join("srv/sparse")).unwrap();
        sparse.set_len(sparse_len).unwrap();
        sparse.write_all_at(b"end", sparse_len - 3).unwrap();
        cap
    }

    /// The root filesystem is written from the tree by `mkfs.ext4 -d` (e2fsprogs 1.47): all
    /// that the copy through a loop mount (`cp -a`) kept must be in it, read back from the
    /// image file alone.
    #[test]
    #[allow(clippy::print_stderr)] // the skip note
    fn the_root_filesystem_written_from_a_tree_keeps_everything_cp_a_kept() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: owners and device nodes need root (scripts/test runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("srv/shared")).unwrap();
        let cap = special_files(&tree, 512 << 20);
        xattr::set(tree.join("usr/bin/ping"), "user.origin", b"debian").unwrap();
        nix::unistd::chown(
            &tree.join("srv/shared"),
            Some(nix::unistd::Uid::from_raw(1234)),
            Some(nix::unistd::Gid::from_raw(5678)),
        )
        .unwrap();
        let acl = Process::new("setfacl")
            .args(["-m", "u:1234:rwx,d:u:1234:rx"])
            .arg(tree.join("srv/shared"))
            .output();
        let has_acl = acl.is_ok();

        let img = dir.path().join("root.img");
        make_fs(
            &img,
            &ext4_root_partition(1 << 30),
            "seed",
            Some(&tree),
            1_700_000_000,
        )
        .unwrap();

        let fs = crate::inspect::fs::Ext4Fs::open(std::sync::Arc::new(File::open(&img).unwrap()))
            .unwrap();
        use crate::inspect::fs::{FileKind, Filesystem};
        assert_eq!(fs.read("/usr/bin/ping").unwrap(), b"\x7fELF ping");
        let perl = fs.metadata("/usr/bin/perl").unwrap();
        assert_eq!(perl.mode, 0o4750, "setuid and mode");
        let shared = fs.metadata("/srv/shared").unwrap();
        assert_eq!((shared.uid, shared.gid), (1234, 5678), "owners");
        assert_eq!(fs.read_link("/srv/perl").unwrap(), "../usr/bin/perl");
        assert_eq!(
            fs.symlink_metadata("/srv/null").unwrap().kind,
            FileKind::Other
        );
        let tail = fs.read_limited("/srv/sparse", 1 << 30).unwrap();
        assert_eq!(tail.len(), 512 << 20);
        assert_eq!(&tail[tail.len() - 3..], b"end");

        let caps = debugfs(&img, "ea_get /usr/bin/ping security.capability");
        assert!(
            caps.contains(&cap.map(|b| format!("{b:02x}")).join(" ")),
            "file capabilities kept: {caps}"
        );
        let user = debugfs(&img, "ea_list /usr/bin/ping");
        assert!(
            user.contains("user.origin") && user.contains("debian"),
            "{user}"
        );
        let a = debugfs(&img, "stat /usr/bin/perl");
        let b = debugfs(&img, "stat /usr/bin/perl5.36");
        let inode = |s: &str| s.split_whitespace().nth(1).map(str::to_string);
        assert_eq!(inode(&a), inode(&b), "hard links share an inode: {a}\n{b}");
        assert!(a.contains("Links: 2"), "link count: {a}");
        let null = debugfs(&img, "stat /srv/null");
        assert!(null.contains("Device major/minor number: 01:03"), "{null}");
        let sparse = debugfs(&img, "stat /srv/sparse");
        assert!(
            !sparse.contains("(0-131071)"),
            "the hole is kept, not written out: {sparse}"
        );
        if has_acl {
            let acls = debugfs(&img, "ea_list /srv/shared");
            assert!(
                acls.contains("system.posix_acl_access")
                    && acls.contains("system.posix_acl_default"),
                "ACLs kept: {acls}"
            );
        }
        let sb = debugfs(&img, "stats");
        assert!(
            sb.contains("Filesystem created:       Tue Nov 14 22:13:20 2023"),
            "the creation time is the given epoch: {sb}"
        );
    }

    /// Two runs on the same tree give the same filesystem, byte for byte.
    #[test]
    #[allow(clippy::print_stderr)] // the skip note
    fn the_root_filesystem_is_the_same_from_the_same_tree() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (scripts/test runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"ccb\n").unwrap();
        let digest = |name: &str| {
            let img = dir.path().join(name);
            make_fs(
                &img,
                &ext4_root_partition(256 << 20),
                "seed",
                Some(&tree),
                1_700_000_000,
            )
            .unwrap();
            // As the disk action does: mkfs copies the tree's access times, and its own read
            // of the tree moved them (a second apart under load).
            set_inode_times(&img, 0, 1_700_000_000).unwrap();
            blake3::hash(&std::fs::read(&img).unwrap())
        };
        assert_eq!(digest("a.img"), digest("b.img"));
    }

    /// The disk action writes ext4 in place at the partition's offset in the disk file: the
    /// filesystem's bytes are those of one written (and its times set) in a file of its own,
    /// and the bytes around it are left as they were.
    #[test]
    #[allow(clippy::print_stderr)] // the skip note
    fn a_root_filesystem_written_in_place_is_the_one_written_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (scripts/test runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"ccb\n").unwrap();
        let (epoch, length) = (1_700_000_000, 256 << 20);

        let alone = dir.path().join("root.img");
        let part = ext4_root_partition(length);
        make_fs(&alone, &part, "seed", Some(&tree), epoch).unwrap();
        set_inode_times(&alone, 0, epoch).unwrap();

        let offset = 3 << 20;
        let disk = dir.path().join("disk.raw");
        let f = File::create(&disk).unwrap();
        f.set_len(offset + length + (1 << 20)).unwrap();
        f.write_all_at(b"before", offset - 6).unwrap();
        f.write_all_at(b"after", offset + length).unwrap();
        drop(f);
        let placed = Placed { offset, ..part };
        make_ext4_in(&disk, &placed, "seed", &tree, epoch).unwrap();
        set_inode_times(&disk, offset, epoch).unwrap();

        let bytes = std::fs::read(&disk).unwrap();
        let (offset, length) = (offset as usize, length as usize);
        assert_eq!(&bytes[offset - 6..offset], b"before");
        assert_eq!(&bytes[offset + length..offset + length + 5], b"after");
        assert!(
            bytes[offset + length + 5..].iter().all(|&b| b == 0),
            "nothing written after the filesystem"
        );
        assert!(
            bytes[..offset - 6].iter().all(|&b| b == 0),
            "nothing written before the filesystem"
        );
        assert_eq!(
            blake3::hash(&bytes[offset..offset + length]),
            blake3::hash(&std::fs::read(&alone).unwrap())
        );
    }

    /// `mkfs.ext4 -d` copies each file's change and access times from the tree, which no
    /// clamp can set (the change time) or the disk action leaves (the access time): once every inode's times are the source date, a tree touched between
    /// two runs (a chmod, a read, a second later) gives the same filesystem.
    #[test]
    #[allow(clippy::print_stderr)] // the skip note
    fn the_root_filesystem_is_the_same_whatever_the_trees_change_times() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: owners need root (scripts/test runs as root)");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/default")).unwrap();
        std::fs::write(tree.join("etc/hostname"), b"ccb\n").unwrap();
        std::fs::write(tree.join("etc/default/grub"), b"GRUB_TIMEOUT=1\n").unwrap();
        repro::clamp_times(&tree, 1_700_000_000).unwrap();
        let run = |n: u32| {
            let img = dir.path().join(format!("root{n}.img"));
            make_fs(
                &img,
                &ext4_root_partition(256 << 20),
                "seed",
                Some(&tree),
                1_700_000_000,
            )
            .unwrap();
            set_inode_times(&img, 0, 1_700_000_000).unwrap();
            blake3::hash(&std::fs::read(&img).unwrap())
        };
        let first = run(0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let grub = tree.join("etc/default/grub");
        std::fs::set_permissions(&grub, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _ = std::fs::read(&grub).unwrap();
        // An access time newer than the source date, which the disk action no longer clamps
        // in the tree of an ext4 root (repro::clamp_modification_times).
        File::options()
            .write(true)
            .open(tree.join("etc/hostname"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(std::time::SystemTime::now()))
            .unwrap();
        assert_eq!(first, run(1));
    }

    /// An XFS root from the same tree twice, the tree touched in between (its change and
    /// access times moved), and across a remount (more entries than one mount writes): the
    /// same bytes, `xfs_repair -n` clean, and everything the tree has in it.
    #[test]
    #[allow(clippy::print_stderr)] // the skip note
    fn an_xfs_root_is_the_same_from_the_same_tree_and_keeps_what_the_tree_has() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: loop mounts need root (scripts/test runs as root)");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("usr/share/many")).unwrap();
        std::fs::create_dir_all(tree.join("srv")).unwrap();
        for i in 0..2100 {
            std::fs::write(tree.join(format!("usr/share/many/{i:04}")), i.to_string()).unwrap();
        }
        let cap = special_files(&tree, 64 << 20);
        repro::clamp_times(&tree, 1_700_000_000).unwrap();
        let old = filetime_of(&tree.join("usr/bin/ping"), 1_600_000_000);

        let part = Placed {
            number: 3,
            part: layout::Partition {
                name: "root".into(),
                type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
                size: layout::PartSize::Rest,
                fs: Some(layout::Filesystem {
                    kind: FsKind::Xfs,
                    label: "img-rootfs".into(),
                    mount: None,
                }),
            },
            offset: 0,
            length: 512 << 20,
        };
        let run = |n: u32| {
            let img = dir.path().join(format!("root{n}.img"));
            make_fs(&img, &part, "seed", Some(&tree), 1_700_000_000).unwrap();
            let repair = Process::new("xfs_repair").arg("-n").arg(&img).output();
            assert!(repair.is_ok(), "xfs_repair -n finds faults: {repair:?}");
            (img.clone(), blake3::hash(&std::fs::read(&img).unwrap()))
        };
        let (img, first) = run(0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let touched = tree.join("usr/share/many/0001");
        std::fs::set_permissions(&touched, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _ = std::fs::read(&touched).unwrap();
        let second = run(1).1;
        assert_eq!(first, second, "the second XFS root differs");

        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Process::new("mount")
            .args(["-o", "loop,ro,nouuid"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(mnt.join(p)).unwrap();
        let checked = std::panic::catch_unwind(|| {
            assert_eq!(
                std::fs::read(mnt.join("usr/bin/ping")).unwrap(),
                b"\x7fELF ping"
            );
            assert_eq!(
                xattr::get(mnt.join("usr/bin/ping"), "security.capability").unwrap(),
                Some(cap.to_vec()),
                "file capabilities kept"
            );
            let (perl, perl536) = (meta("usr/bin/perl"), meta("usr/bin/perl5.36"));
            assert_eq!(perl.ino(), perl536.ino(), "hard links share an inode");
            assert_eq!(perl.nlink(), 2);
            assert_eq!(
                (perl.mode() & 0o7777, perl.uid(), perl.gid()),
                (0o4750, 0, 50)
            );
            assert_eq!(
                std::fs::read_link(mnt.join("srv/perl")).unwrap(),
                Path::new("../usr/bin/perl")
            );
            assert_eq!(meta("srv/null").rdev(), nix::sys::stat::makedev(1, 3));
            let sparse = meta("srv/sparse");
            assert_eq!(sparse.len(), 64 << 20);
            assert!(sparse.blocks() * 512 < 1 << 20, "the hole is kept");
            assert_eq!(meta("usr/share/many/2099").len(), 4);
            let ping = meta("usr/bin/ping");
            assert_eq!(ping.mtime(), old, "the tree's modification time");
            for t in [ping.ctime(), ping.atime(), meta("").ctime()] {
                assert_eq!(
                    t, 1_700_000_000,
                    "change and access times are the source date"
                );
            }
        });
        // Detached: a sandbox another test clones at this moment may hold the mount a while.
        umount2(&mnt, MntFlags::MNT_DETACH).unwrap();
        if let Err(e) = checked {
            std::panic::resume_unwind(e);
        }
    }

    /// Sets a file's modification time; returns it.
    fn filetime_of(path: &Path, mtime: i64) -> i64 {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
        mtime
    }

    /// The ESP from the same tree a second apart: the same bytes (mkfs.fat and mtools take
    /// their times from the source date, and the files go in in name order).
    #[test]
    fn the_esp_is_the_same_from_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
        std::fs::create_dir_all(esp.join("EFI/debian")).unwrap();
        std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"shim").unwrap();
        std::fs::write(esp.join("EFI/debian/grub.cfg"), b"search").unwrap();
        std::fs::write(esp.join("EFI/debian/grubx64.efi"), b"grub").unwrap();
        repro::clamp_times(&esp, 1_700_000_000).unwrap();
        let part = Placed {
            number: 1,
            part: layout::Partition {
                name: "ESP".into(),
                type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B".into(),
                size: layout::PartSize::Rest,
                fs: Some(layout::Filesystem {
                    kind: FsKind::Vfat,
                    label: "MKFS_ESP".into(),
                    mount: None,
                }),
            },
            offset: 0,
            length: 64 << 20,
        };
        let run = |n: u32| {
            let img = dir.path().join(format!("esp{n}.img"));
            make_fs(&img, &part, "seed", None, 1_700_000_000).unwrap();
            fill_vfat(&img, &esp, 1_700_000_000).unwrap();
            blake3::hash(&std::fs::read(&img).unwrap())
        };
        let first = run(0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(first, run(1));
    }

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
