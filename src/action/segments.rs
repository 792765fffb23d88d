//! The sandbox's side of step checkpoints (see [`super::checkpoint`]): the overlay of a layer
//! is mounted over the reused checkpoints, the steps they cover are skipped, and after a slow
//! step the overlay is closed and a fresh upper directory stacked on the one just closed.

use std::path::PathBuf;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::checkpoint::{PLAN_FILE, Plan, SEGMENT_DONE, SEGMENT_TREE, SEGMENTS_DIR};
use super::event::{Event, emit};
use super::runner::{RunError, Runner, engine, io};
use super::spec::{Place, Step};

/// The mount's option string must fit in a page: lowers are named by short links.
const LINKS_DIR: &str = "l";

impl Runner<'_> {
    /// Reads the parent's checkpoint plan, if it wrote one.
    pub(super) fn load_checkpoint_plan(&mut self) -> Result<(), RunError> {
        let path = self.spec.work.join(PLAN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let plan: Plan = serde_json::from_slice(&bytes)
                    .map_err(|_| RunError::Internal("the checkpoint plan does not parse"))?;
                if plan.resume_at > 0 {
                    let line = format!(
                        "ccb: the first {} steps come from checkpoints ({} stacked)",
                        plan.resume_at,
                        plan.reuse.len()
                    );
                    self.logln(&line);
                    emit(&Event::Output { line });
                }
                self.ckpt = Some(plan);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    /// The overlay's lowers, top first: the segments closed so far, the reused checkpoints,
    /// the layers under the layer.
    fn overlay_lowers(&self) -> Vec<PathBuf> {
        let reuse = self
            .ckpt
            .as_ref()
            .map(|p| p.reuse.as_slice())
            .unwrap_or(&[]);
        self.segments
            .iter()
            .chain(reuse)
            .chain(&self.spec.lowers)
            .cloned()
            .collect()
    }

    /// Mounts the layer's overlay on the root, over [`Self::overlay_lowers`].
    pub(super) fn mount_overlay(&mut self) -> Result<(), RunError> {
        let work = &self.spec.work;
        let links = work.join(LINKS_DIR);
        let _ = std::fs::remove_dir_all(&links);
        std::fs::create_dir_all(&links).map_err(io("create the overlay's links"))?;
        let lowers = self.overlay_lowers();
        let mut names = Vec::with_capacity(lowers.len());
        for (i, l) in lowers.iter().enumerate() {
            std::os::unix::fs::symlink(l, links.join(i.to_string()))
                .map_err(io("link an overlay lower"))?;
            names.push(format!("{LINKS_DIR}/{i}"));
        }
        let base = format!("lowerdir={},upperdir=upper,workdir=ovl", names.join(":"));
        // Keep every upper directory self-contained: no redirects or metadata-only
        // copies that would point into the lower layers.
        let strict = format!("{base},redirect_dir=off,metacopy=off,index=off,xino=off");
        // `volatile` (Linux 5.10+): no sync of the upper filesystem when the overlay is
        // unmounted. Every upper directory is either thrown away or committed with a syncfs
        // of its own (`store`), and the unmount's sync wrote back everything dirty on that
        // filesystem: at a checkpoint's cut, the package installs' files; in the disk action,
        // the raw disk mkfs had just written (1 s of waiting, measured, with both cores idle).
        // Every volatile mount leaves a marker (`work/incompat/volatile/dirty`) that refuses
        // the next mount of the same work directory, meant for a crash (after which ccb
        // throws the whole working directory away); a checkpoint's cut remounts it cleanly.
        let _ = std::fs::remove_dir_all(work.join("ovl/work/incompat/volatile"));
        let attempts = [
            format!("{strict},volatile"),
            strict,
            format!("{base},volatile"),
            base,
        ];
        // The paths are relative to the working directory (and resolved at mount time).
        let cwd = std::env::current_dir().map_err(io("read the working directory"))?;
        nix::unistd::chdir(work.as_path()).map_err(engine("enter the working directory"))?;
        let mut mounted = Err(nix::errno::Errno::EINVAL);
        for options in &attempts {
            mounted = mount(
                Some("overlay"),
                &self.root,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            );
            if mounted.is_ok() {
                break;
            }
        }
        let _ = nix::unistd::chdir(cwd.as_path());
        mounted.map_err(engine(format!(
            "cannot mount overlayfs on {} (set CCB_OVERLAYFS=0 to copy layers instead)",
            self.root.display()
        )))
    }

    /// Whether step number `n` is covered by a reused checkpoint.
    pub(super) fn reused(&self, n: usize) -> bool {
        self.ckpt.as_ref().is_some_and(|p| n < p.resume_at)
    }

    /// After step number `n` ran for `took`: closes a checkpoint if the plan says so.
    pub(super) fn after_step(
        &mut self,
        place: Place,
        n: usize,
        step: &Step,
        took: Duration,
    ) -> Result<(), RunError> {
        let Some(plan) = &self.ckpt else {
            return Ok(());
        };
        let slow = took.as_millis() as u64 >= plan.min_ms || matches!(step, Step::Packages { .. });
        let last = n + 1 >= plan.keys.len();
        let room = self.segments.len() + plan.reuse.len() < plan.max;
        if slow && !last && room {
            self.cut(place, n)?;
        }
        Ok(())
    }

    /// Closes the overlay's upper directory as the checkpoint of step `n`, and goes on over
    /// it: the chroot is taken down first (so the checkpoint holds none of the build's
    /// machinery) and set up again after.
    fn cut(&mut self, place: Place, n: usize) -> Result<(), RunError> {
        let inside = place == Place::Inside;
        if inside {
            self.unmount_hooks()?;
        }
        self.teardown_chroot()?;
        self.resolv_moved = false;
        self.policy_rc_d = false;
        self.dpkg_unsafe_io = false;
        umount2(&self.root, MntFlags::empty()).map_err(engine("unmount the overlay"))?;
        let work = &self.spec.work;
        let seg = work.join(SEGMENTS_DIR).join(n.to_string());
        std::fs::create_dir_all(&seg).map_err(io("create a checkpoint directory"))?;
        let upper = work.join("upper");
        std::fs::rename(&upper, seg.join(SEGMENT_TREE)).map_err(io("close the upper directory"))?;
        std::fs::write(seg.join(SEGMENT_DONE), b"").map_err(io("mark a checkpoint done"))?;
        std::fs::create_dir_all(&upper).map_err(io("create the upper directory"))?;
        self.segments.insert(0, seg.join(SEGMENT_TREE));
        self.logln(&format!("ccb: checkpoint after step {}", n + 1));
        self.mount_overlay()?;
        self.setup_chroot()?;
        if inside {
            self.mount_hooks()?;
        }
        Ok(())
    }
}
