//! Runs one action's phases inside the sandbox (as PID 1 of its PID namespace, in its own
//! mount namespace): the hooks tree, the root tree (overlayfs over the lower layers, or a
//! copy), the chroot mounts, and every step in order, with its output logged.
//!
//! Nothing here unmounts on error paths: every mount lives in the sandbox's mount namespace
//! and disappears with it, whatever way the sandbox ends. The success path still unmounts in
//! order, so the tree is left exactly as the last step left it. The one exception is a
//! host-tools step's programs (see [`super::native`]): they are unmounted when the step ends,
//! failed or not, as no other step may run them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::event::{Event, StepRecord, emit};
use super::inroot::TreeRoot;
use super::spec::{ActionSpec, Place, SpecKind, Step};
use super::tree;
use crate::element::env::PATH;
use crate::process::Process;

const INSTALL_PACKAGES: &str = include_str!("install-packages.sh");
const CCB_FETCH: &str = include_str!("ccb-fetch.sh");
const TAIL_LINES: usize = 30;
const GRACE: Duration = Duration::from_secs(5);

/// Inside the chroot: the hooks (read-only) and ccb's own tools.
const HOOKS_IN: &str = "/tmp/in_target.d";
/// dpkg's configuration snippet the chroot phases get (never left in the image).
const DPKG_UNSAFE_IO: &str = "ccb-unsafe-io";
const ENGINE_IN: &str = "/tmp/ccb";

/// Sources environment.d (the files after the script's arguments), then runs the script:
/// DIB's dib-run-parts does the same for each script of a phase.
const RUN: &str = r#"set -eu
set -o pipefail
# DIB_ENV: the DIB_ variables the build was started with, as `declare -p` prints them.
if [ -z "${DIB_ENV+set}" ]; then
    names=$(compgen -v DIB_ || true)
    if [ -n "$names" ]; then
        DIB_ENV=$(declare -p $names)
    else
        DIB_ENV=
    fi
    export DIB_ENV
    unset names
fi
script=$1
nargs=$2
shift 2
args=("${@:1:$nargs}")
shift "$nargs"
for f in "$@"; do
    source "$f"
done
exec "$script" "${args[@]}"
"#;

/// Why an action stopped inside the sandbox. Each engine failure keeps its cause (an I/O
/// error, a system call, a program) so the parent can tell the host's problems (a full disk, a
/// missing tool, a permission) from the input's and from ccb's own bugs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file operation failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed (a mount, a chroot, a namespace).
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    /// A program the engine runs could not run or failed.
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: crate::process::ProcessError,
    },
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    #[error("converting to qcow2")]
    Qcow2(#[source] crate::qcow2::Qcow2WriteError),
    /// The image's own content is wrong: its layout, its boot files, what its elements left.
    #[error("{problem}")]
    Image { problem: String },
    /// A state ccb should never reach: a bug.
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("step failed")]
    StepFailed,
    #[error("cancelled")]
    Cancelled,
}

impl RunError {
    /// The failure as the sandbox reports it to its parent.
    pub fn failure(&self) -> super::event::EngineFailure {
        use super::event::Blame;
        let mut message = self.to_string();
        let mut errno = None;
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            message.push_str(&format!(": {s}"));
            if errno.is_none() {
                errno = s
                    .downcast_ref::<std::io::Error>()
                    .and_then(|e| e.raw_os_error())
                    .or_else(|| s.downcast_ref::<nix::Error>().map(|e| *e as i32));
            }
            src = s.source();
        }
        let blame = match self {
            RunError::Internal(_) => Blame::Bug,
            RunError::Image { .. } => Blame::Input,
            RunError::Program { source, .. } if source.is_missing_tool() => Blame::MissingTool,
            _ if errno.is_some_and(super::event::host_errno) => Blame::Host,
            _ => Blame::Input,
        };
        super::event::EngineFailure {
            message,
            errno,
            blame,
        }
    }
}

fn mount_error(e: super::native::MountError) -> RunError {
    RunError::Sys {
        what: format!("{} {}", e.what, e.path.display()),
        source: e.source,
    }
}

pub(super) fn engine(context: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> RunError {
    move |source| RunError::Sys {
        what: context.to_string(),
        source,
    }
}

pub(super) fn program(
    context: impl std::fmt::Display,
) -> impl FnOnce(crate::process::ProcessError) -> RunError {
    move |source| RunError::Program {
        what: context.to_string(),
        source,
    }
}

pub(super) fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Io {
        what: context.to_string(),
        source,
    }
}

/// Where `rel` is in the image tree, as the image sees it: an image whose /proc or /dev is
/// a link to a host directory gets the mount inside its own tree, never on the host's
/// directory. Made (and `true`) when missing, for the teardown to remove.
pub(super) fn mount_point(image: &TreeRoot, rel: &str) -> Result<(PathBuf, bool), RunError> {
    match image
        .resolve_existing(rel)
        .map_err(io(format!("resolve {rel} in the tree")))?
    {
        Some(t) => Ok((t, false)),
        None => image
            .create_dir_all(rel, 0o755)
            .map(|t| (t, true))
            .map_err(io(format!("create {rel} in the tree"))),
    }
}

/// What [`place_chroot_files`] put in the tree, for the teardown to undo.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChrootFiles {
    pub(super) resolv_moved: bool,
    pub(super) policy_rc_d: bool,
    pub(super) dpkg_unsafe_io: bool,
}

/// The chroot's files from the host's side: `host_resolv` as the image's resolv.conf (its
/// own moved aside), a policy-rc.d that keeps daemons from starting, and dpkg without an
/// fsync per file (as DIB's dpkg element sets it for the build: a tree that fails is thrown
/// away, one that succeeds is committed after the phases). Every path as the image sees it:
/// its /etc or /usr/sbin may be a link to anywhere on the host.
pub(super) fn place_chroot_files(
    image: &TreeRoot,
    host_resolv: &[u8],
) -> Result<ChrootFiles, RunError> {
    let mut placed = ChrootFiles::default();
    if let Some(etc) = image.dir("etc").map_err(io("resolve /etc in the tree"))? {
        let resolv = etc.join("resolv.conf");
        if std::fs::symlink_metadata(&resolv).is_ok() {
            std::fs::rename(&resolv, etc.join("resolv.conf.ORIG"))
                .map_err(io("move the image's resolv.conf aside"))?;
            placed.resolv_moved = true;
        }
        image
            .write("etc/resolv.conf", host_resolv, 0o644)
            .map_err(io("write resolv.conf"))?;
    }
    if image
        .dir("usr/sbin")
        .map_err(io("resolve /usr/sbin in the tree"))?
        .is_some()
        && image
            .entry("usr/sbin/policy-rc.d")
            .is_ok_and(|p| std::fs::symlink_metadata(p).is_err())
    {
        image
            .write(
                "usr/sbin/policy-rc.d",
                b"#!/bin/sh\n# ccb: no daemons start during a build\nexit 101\n",
                0o755,
            )
            .map_err(io("write policy-rc.d"))?;
        placed.policy_rc_d = true;
    }
    let unsafe_io = Path::new("etc/dpkg/dpkg.cfg.d").join(DPKG_UNSAFE_IO);
    if image
        .dir("etc/dpkg/dpkg.cfg.d")
        .map_err(io("resolve dpkg's configuration"))?
        .is_some()
        && image
            .entry(&unsafe_io)
            .is_ok_and(|p| std::fs::symlink_metadata(p).is_err())
    {
        image
            .write(&unsafe_io, b"force-unsafe-io\n", 0o644)
            .map_err(io("write dpkg's unsafe-io"))?;
        placed.dpkg_unsafe_io = true;
    }
    Ok(placed)
}

/// DIB's install-bin: the regular files of each element's `bin/` into the image's
/// /usr/local/bin (resolved as the image sees it), mode 0755. Returns how many.
pub(super) fn install_bin<'p>(
    image: &TreeRoot,
    element_dirs: impl IntoIterator<Item = &'p Path>,
) -> Result<usize, RunError> {
    image
        .create_dir_all("usr/local/bin", 0o755)
        .map_err(io("create /usr/local/bin"))?;
    let mut n = 0;
    for dir in element_dirs {
        let Ok(entries) = std::fs::read_dir(dir.join("bin")) else {
            continue;
        };
        let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        names.sort();
        for src in names {
            if !src.is_file() {
                continue;
            }
            let target = Path::new("usr/local/bin").join(src.file_name().unwrap_or_default());
            image
                .copy_in(&src, &target, 0o755)
                .map_err(io(format!("install {}", src.display())))?;
            n += 1;
        }
    }
    Ok(n)
}

pub(super) struct Runner<'a> {
    pub(super) spec: &'a ActionSpec,
    pub(super) hooks: PathBuf,
    pub(super) engine_dir: PathBuf,
    pub(super) root: PathBuf,
    pub(super) log: File,
    pub(super) cancelled: Arc<AtomicBool>,
    /// Mount points of the chroot, in mount order.
    pub(super) mounts: Vec<PathBuf>,
    /// Directories the runner created inside the tree, to remove afterwards.
    pub(super) made_dirs: Vec<PathBuf>,
    pub(super) resolv_moved: bool,
    pub(super) policy_rc_d: bool,
    /// Whether the runner put dpkg's unsafe-io setting in place (to remove afterwards).
    pub(super) dpkg_unsafe_io: bool,
    /// Whether the chroot's PATH leads dpkg to the host's dpkg-deb (see [`super::native`]).
    pub(super) native_dpkg_deb: bool,
    /// The host's programs for host-tools steps (see [`super::native`]); `None` until the
    /// first such step, an error when the host's cannot be used.
    pub(super) host_tools: Option<Result<super::native::HostTools, String>>,
    /// A directory the running step finds first on its PATH (a package step's host programs).
    pub(super) path_front: Option<String>,
    /// Whether the running step is a package step (apt's dpkg gets ccb's PATH).
    pub(super) packages_step: bool,
    /// Variables of the disk phases (DIB_ROOT_LABEL, IMAGE_BLOCK_DEVICE, ...).
    pub(super) extra_env: std::collections::BTreeMap<String, String>,
    /// Commands the last program's output said were not found (see [`super::dib`]).
    pub(super) missing: Vec<String>,
    /// The parent's checkpoint plan (layers only; see [`super::checkpoint`]).
    pub(super) ckpt: Option<super::checkpoint::Plan>,
    /// The number of the next step, in run order across the phases.
    pub(super) step_no: usize,
    /// The upper directories closed as checkpoints in this run, top first.
    pub(super) segments: Vec<PathBuf>,
}

/// Runs the action; the exit code of the sandbox.
pub fn run(spec: &ActionSpec, cancelled: Arc<AtomicBool>) -> Result<(), RunError> {
    for path in &spec.redact {
        let bytes = std::fs::read(path).map_err(io("read a secret's private copy"))?;
        // A token file usually ends in a newline a script's `cat` prints on its own.
        crate::redact::register(String::from_utf8_lossy(&bytes).trim());
    }
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(io(format!("open log {}", spec.log.display())))?;
    let root = match (spec.kind, spec.overlay) {
        (SpecKind::Layer, true) => spec.work.join("root"),
        (SpecKind::Disk, _) => spec.work.join("mnt"),
        _ => spec.work.join("tree"),
    };
    let mut r = Runner {
        spec,
        hooks: spec.work.join("hooks"),
        engine_dir: spec.work.join("engine"),
        root,
        log,
        cancelled,
        mounts: Vec::new(),
        made_dirs: Vec::new(),
        resolv_moved: false,
        policy_rc_d: false,
        dpkg_unsafe_io: false,
        native_dpkg_deb: false,
        host_tools: None,
        path_front: None,
        packages_step: false,
        extra_env: Default::default(),
        missing: Vec::new(),
        ckpt: None,
        step_no: 0,
        segments: Vec::new(),
    };
    r.prepare_hooks()?;
    match spec.kind {
        SpecKind::Base => {
            std::fs::create_dir_all(&r.root).map_err(io("create the root tree"))?;
            for phase in &spec.phases {
                r.run_phase(phase)?;
            }
            if tree::looks_empty(&r.root) {
                return Err(RunError::Image {
                    problem: "Failed to deploy the root element: root.d left the tree empty".into(),
                });
            }
        }
        SpecKind::Layer => {
            r.load_checkpoint_plan()?;
            r.prepare_root()?;
            r.setup_chroot()?;
            for phase in &spec.phases {
                r.run_phase(phase)?;
            }
            r.teardown_chroot()?;
            if spec.overlay {
                umount2(&r.root, MntFlags::empty()).map_err(engine("unmount the overlay"))?;
            }
        }
        SpecKind::Disk => r.run_disk()?,
    }
    Ok(())
}

impl Runner<'_> {
    pub(super) fn logln(&mut self, text: &str) {
        let _ = writeln!(self.log, "{text}");
    }

    pub(super) fn prepare_hooks(&mut self) -> Result<(), RunError> {
        std::fs::create_dir_all(&self.hooks).map_err(io("create the hooks tree"))?;
        for el in &self.spec.elements {
            tree::merge_element(&el.dir, &self.hooks)?;
        }
        let bin = self.engine_dir.join("bin");
        std::fs::create_dir_all(&bin).map_err(io("create the engine tools"))?;
        super::dib::install_helpers(&self.engine_dir, &self.hooks)
            .map_err(io("write diskimage-builder's helpers"))?;
        for (name, text) in [
            ("install-packages", INSTALL_PACKAGES),
            ("ccb-fetch", CCB_FETCH),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, text).map_err(io(format!("write {name}")))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {name}")))?;
        }
        // Artifacts: hard links to the store's read-only files (a GB runfile is never copied;
        // the chroot sees them through the read-only engine bind mount).
        if !self.spec.artifacts.is_empty() {
            let dir = self.engine_dir.join("artifacts");
            std::fs::create_dir_all(&dir).map_err(io("create the artifacts directory"))?;
            for (var, src) in &self.spec.artifacts {
                let dest = dir.join(var);
                if std::fs::hard_link(src, &dest).is_err() {
                    std::fs::copy(src, &dest).map_err(io(format!("copy artifact {var}")))?;
                }
            }
        }
        // install-types: the chosen variant's scripts linked into the phase directory, as
        // DIB's install-types element does, so `$(dirname $0)` is the same as in DIB.
        for phase in &self.spec.phases {
            for step in &phase.steps {
                if let Step::Script {
                    name,
                    dir: Some(dir),
                    ..
                } = step
                {
                    let link = self.hooks.join(&phase.phase).join(name);
                    if std::fs::symlink_metadata(&link).is_err() {
                        std::os::unix::fs::symlink(Path::new(dir).join(name), &link)
                            .map_err(io(format!("link {}/{dir}/{name}", phase.phase)))?;
                    }
                }
            }
        }
        let maps = self.engine_dir.join("pkg-map");
        std::fs::create_dir_all(&maps).map_err(io("create the pkg-map directory"))?;
        for (element, map) in &self.spec.pkg_maps {
            let text: String = map.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
            std::fs::write(maps.join(element), text).map_err(io("write a pkg-map"))?;
        }
        Ok(())
    }

    pub(super) fn prepare_root(&mut self) -> Result<(), RunError> {
        let spec = self.spec;
        if spec.overlay {
            let upper = spec.work.join("upper");
            let work = spec.work.join("ovl");
            for d in [&upper, &work, &self.root] {
                std::fs::create_dir_all(d).map_err(io("create overlay directories"))?;
            }
            self.mount_overlay()?;
        } else {
            // Without overlayfs: flatten the stack into a full copy, bottom layer first.
            let mut lowers = spec.lowers.clone();
            lowers.reverse();
            let mut iter = lowers.iter();
            if let Some(bottom) = iter.next() {
                tree::copy_contents(bottom, &self.root)?;
            }
            for diff in iter {
                tree::apply_diff(diff, &self.root)?;
            }
        }
        Ok(())
    }

    pub(super) fn mount_in(
        &mut self,
        source: &str,
        rel: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RunError> {
        let (target, made) = mount_point(&self.tree()?, rel)?;
        if made {
            self.made_dirs.push(target.clone());
        }
        mount(Some(source), &target, fstype, flags, data)
            .map_err(engine(format!("mount {source} on {rel}")))?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            // A bind mount ignores MS_RDONLY until remounted.
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(engine(format!("make {rel} read-only")))?;
        }
        self.mounts.push(target);
        Ok(())
    }

    /// DIB's chroot: the host's resolv.conf in place, proc, sys (read-only), dev, dev/pts,
    /// daemons blocked, the shared package cache, ccb's tools.
    pub(super) fn setup_chroot(&mut self) -> Result<(), RunError> {
        let image = self.tree()?;
        let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        let placed = place_chroot_files(&image, &host_resolv)?;
        self.resolv_moved |= placed.resolv_moved;
        self.policy_rc_d |= placed.policy_rc_d;
        self.dpkg_unsafe_io |= placed.dpkg_unsafe_io;
        if super::emulated_cpu(&self.spec.arch).is_some()
            && !self.native_dpkg_deb
            && !self.spec.no_host_tools
        {
            let status = image
                .entry("var/lib/dpkg/status")
                .map_err(io("resolve dpkg's status file"))?;
            let shell = self.host_shell(&image)?;
            match super::native::install(&self.engine_dir, ENGINE_IN, &status, shell.as_deref()) {
                Ok(()) => {
                    self.native_dpkg_deb = true;
                    self.logln(&format!(
                        "ccb: packages are decompressed by the host's dpkg-deb (its wrapper run by {})",
                        shell.as_deref().unwrap_or("the image's /bin/sh")
                    ));
                }
                Err(why) => self.logln(&format!("ccb: dpkg-deb runs emulated: {why}")),
            }
        }
        let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        self.mount_in("proc", "/proc", Some("proc"), nodev, None)?;
        self.mount_in(
            "sysfs",
            "/sys",
            Some("sysfs"),
            nodev | MsFlags::MS_RDONLY,
            None,
        )?;
        self.mount_in("/dev", "/dev", None, MsFlags::MS_BIND, None)?;
        self.mount_in(
            "devpts",
            "/dev/pts",
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        )?;
        if let Some(cache) = &self.spec.package_cache {
            std::fs::create_dir_all(&cache.host).map_err(io("create the package cache"))?;
            let host = cache.host.display().to_string();
            self.mount_in(&host, &cache.target, None, MsFlags::MS_BIND, None)?;
        }
        let engine_dir = self.engine_dir.display().to_string();
        self.mount_in(
            &engine_dir,
            ENGINE_IN,
            None,
            MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )?;
        Ok(())
    }

    pub(super) fn teardown_chroot(&mut self) -> Result<(), RunError> {
        while let Some(m) = self.mounts.pop() {
            umount2(&m, MntFlags::empty())
                .or_else(|_| umount2(&m, MntFlags::MNT_DETACH))
                .map_err(engine(format!("unmount {}", m.display())))?;
        }
        while let Some(d) = self.made_dirs.pop() {
            let _ = std::fs::remove_dir(&d);
        }
        // What the build's scripts left is the image's: every path is resolved inside it.
        let image = self.tree()?;
        if self.policy_rc_d {
            let _ = image.remove("usr/sbin/policy-rc.d");
        }
        if self.dpkg_unsafe_io {
            let _ = image.remove(Path::new("etc/dpkg/dpkg.cfg.d").join(DPKG_UNSAFE_IO));
        }
        // apt's binary caches are rebuilt on demand; kept, every layer would carry a fresh
        // 40–80 MB copy of them.
        for cache in ["pkgcache.bin", "srcpkgcache.bin"] {
            let _ = image.remove(Path::new("var/cache/apt").join(cache));
        }
        let Some(etc) = image.dir("etc").map_err(io("resolve /etc in the tree"))? else {
            return Ok(());
        };
        let resolv = etc.join("resolv.conf");
        let orig = etc.join("resolv.conf.ORIG");
        let now_link = std::fs::symlink_metadata(&resolv)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if now_link {
            // A package made resolv.conf its own (resolvconf, systemd-resolved): keep it.
            let _ = std::fs::remove_file(&orig);
        } else if self.resolv_moved {
            std::fs::rename(&orig, &resolv).map_err(io("restore the image's resolv.conf"))?;
        } else {
            let _ = std::fs::remove_file(&resolv);
        }
        Ok(())
    }

    pub(super) fn mount_hooks(&mut self) -> Result<(), RunError> {
        let hooks = self.hooks.display().to_string();
        self.mount_in(
            &hooks,
            HOOKS_IN,
            None,
            MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )
    }

    /// Undoes [`Self::mount_hooks`] (the last mount made).
    pub(super) fn unmount_hooks(&mut self) -> Result<(), RunError> {
        if let Some(m) = self.mounts.pop() {
            umount2(&m, MntFlags::empty()).map_err(engine("unmount the hooks"))?;
        }
        if let Some(pos) = self
            .made_dirs
            .iter()
            .position(|d| d.ends_with("tmp/in_target.d"))
        {
            let d = self.made_dirs.remove(pos);
            let _ = std::fs::remove_dir(d);
        }
        Ok(())
    }

    pub(super) fn run_phase(&mut self, phase: &super::spec::PhaseSpec) -> Result<(), RunError> {
        let inside = phase.place == Place::Inside;
        if inside {
            self.mount_hooks()?;
        }
        let result = (|| {
            for step in &phase.steps {
                let n = self.step_no;
                self.step_no += 1;
                if self.reused(n) {
                    self.logln(&format!(
                        "==> {}/{}: from a checkpoint",
                        phase.phase,
                        step.name()
                    ));
                    continue;
                }
                let started = Instant::now();
                self.run_step(&phase.phase, phase.place, step)?;
                self.after_step(phase.place, n, step, started.elapsed())?;
            }
            Ok(())
        })();
        if inside {
            self.unmount_hooks()?;
        }
        result
    }

    pub(super) fn run_step(
        &mut self,
        phase: &str,
        place: Place,
        step: &Step,
    ) -> Result<(), RunError> {
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(RunError::Cancelled);
        }
        emit(&Event::Step {
            phase: phase.into(),
            element: step.element().into(),
            name: step.name().into(),
        });
        self.logln(&format!("==> {phase}/{} ({})", step.name(), step.element()));
        let started = Instant::now();
        let outcome = match step {
            Step::Script { name, .. } => match place {
                Place::Outside => {
                    let path = self.hooks.join(phase).join(name).display().to_string();
                    self.exec(phase, place, &path, &[])
                }
                Place::Inside => {
                    let path = format!("{HOOKS_IN}/{phase}/{name}");
                    let binds = self.host_tool_binds(phase, name)?;
                    if binds.is_empty() {
                        self.exec(phase, place, &path, &[])
                    } else {
                        let (outcome, unmounted) = super::native::with_bound(&binds, || {
                            self.exec(phase, place, &path, &[])
                        })
                        .map_err(mount_error)?;
                        unmounted.map_err(mount_error)?;
                        self.logln(&format!("ccb: {} host tools unmounted", binds.len()));
                        outcome
                    }
                }
            },
            Step::Packages {
                install, uninstall, ..
            } => {
                self.path_front = self.package_tools(phase, step.name())?;
                self.packages_step = true;
                let tool = format!("{ENGINE_IN}/bin/install-packages");
                let mut res = Ok((0, VecDeque::new()));
                if !install.is_empty() {
                    res = self.exec(phase, Place::Inside, &tool, install);
                }
                if !uninstall.is_empty() && matches!(res, Ok((0, _))) {
                    let mut args = vec!["-e".to_string()];
                    args.extend(uninstall.iter().cloned());
                    res = self.exec(phase, Place::Inside, &tool, &args);
                }
                self.path_front = None;
                self.packages_step = false;
                res
            }
            Step::InstallBin { .. } => self.install_bin().map(|()| (0, VecDeque::new())),
            Step::InstallStatic { .. } => self.install_static().map(|()| (0, VecDeque::new())),
            Step::InitScripts { init_system, .. } => self.install_init_scripts(init_system),
        };
        let (mut status, mut tail) = outcome?;
        let duration_ms = started.elapsed().as_millis() as u64;
        let missing = std::mem::take(&mut self.missing);
        for command in &missing {
            let m = super::dib::MissingCommand {
                element: step.element().into(),
                phase: phase.into(),
                script: step.name().into(),
                command: command.clone(),
            };
            self.logln(&format!("ccb: warning: {m}"));
            emit(&Event::MissingCommand(m));
        }
        let strict_failure = self.spec.strict && status == 0 && !missing.is_empty();
        if strict_failure {
            status = 127;
            tail.push_back(format!(
                "ccb: --strict: {} not found: {}",
                if missing.len() == 1 {
                    "a command was"
                } else {
                    "commands were"
                },
                missing.join(", ")
            ));
        }
        self.logln(&format!(
            "<== {phase}/{}: exit status {status} after {:.1}s",
            step.name(),
            duration_ms as f64 / 1000.0
        ));
        emit(&Event::StepDone(StepRecord {
            phase: phase.into(),
            element: step.element().into(),
            name: step.name().into(),
            status,
            duration_ms,
        }));
        if status != 0 {
            emit(&Event::Failed {
                phase: phase.into(),
                element: step.element().into(),
                name: step.name().into(),
                status: if status < 0 {
                    format!("killed by signal {}", -status)
                } else if strict_failure {
                    format!("command not found under --strict: {}", missing.join(", "))
                } else {
                    format!("exit status {status}")
                },
                tail: tail.into_iter().collect(),
            });
            return Err(RunError::StepFailed);
        }
        Ok(())
    }

    /// For a step whose script declares [`super::native::HOST_TOOLS_MARK`]: what is
    /// bind-mounted over the image's programs for its duration (copy, image file). In every
    /// build, ccb's parallel gzip ([`crate::gzip`]) and ccb-canon's readlink, realpath, mkdir
    /// ([`super::native::canon_tools`]); in an emulated build, also the host's
    /// programs ([`super::native::TOOLS`]). Empty for any other step, or when the image
    /// refuses them or the host's programs cannot serve it (logged).
    fn host_tool_binds(
        &mut self,
        phase: &str,
        name: &str,
    ) -> Result<Vec<(PathBuf, PathBuf)>, RunError> {
        // A script that cannot be read fails as the step it is, with its own message.
        let text = std::fs::read(self.hooks.join(phase).join(name)).unwrap_or_default();
        if !super::native::declares_host_tools(&text) {
            return Ok(Vec::new());
        }
        if self.spec.no_host_tools {
            self.logln(&format!(
                "ccb: {phase}/{name} runs the image's own tools: CCB_HOST_TOOLS=0"
            ));
            return Ok(Vec::new());
        }
        let image = self.tree()?;
        if let Some(why) = super::native::refused(&image) {
            self.logln(&format!(
                "ccb: {phase}/{name} runs the image's own tools: {why}"
            ));
            return Ok(Vec::new());
        }
        let mut binds = Vec::new();
        let mut lines = Vec::new();
        let beside_ccb = std::env::current_exe().map(|exe| exe.with_file_name("ccb-gzip"));
        match beside_ccb {
            Ok(program) if program.is_file() => {
                match super::native::ccb_gzip(&self.engine_dir, ENGINE_IN, &image, &program) {
                    Ok(Some(pair)) => {
                        lines.push(format!("{} <- ccb-gzip", super::native::GZIP));
                        binds.push(pair);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        lines.push(format!("{} stays the image's: {why}", super::native::GZIP))
                    }
                }
            }
            _ => lines.push(format!(
                "{} stays the image's: no ccb-gzip beside the ccb program",
                super::native::GZIP
            )),
        }
        match super::native::canon_tools(&self.engine_dir, ENGINE_IN, &image) {
            Ok(pairs) => {
                for (program, target) in pairs {
                    let at = target.strip_prefix(image.path()).unwrap_or(&target);
                    lines.push(format!("/{} <- ccb-canon", at.display()));
                    binds.push((program, target));
                }
            }
            Err(why) => lines.push(format!(
                "readlink, realpath and mkdir stay the image's: {why}"
            )),
        }
        if super::emulated_cpu(&self.spec.arch).is_some()
            && let Some(image) = self.host_tools_for(phase, name)?
        {
            let Some(Ok(tools)) = &mut self.host_tools else {
                return Err(RunError::Internal("host tools neither ready nor refused"));
            };
            for r in super::native::select(&image, Path::new("/"), super::native::TOOLS) {
                if binds.iter().any(|(_, target)| *target == r.target) {
                    continue; // ccb's gzip, readlink, realpath, mkdir
                }
                let at = r.target.strip_prefix(image.path()).unwrap_or(&r.target);
                match tools.prepare(&self.engine_dir, ENGINE_IN, &r.host) {
                    Ok(copy) => {
                        lines.push(format!("/{} <- host {}", at.display(), r.host.display()));
                        binds.push((copy, r.target));
                    }
                    Err(why) => lines.push(format!("/{} stays the image's: {why}", at.display())),
                }
            }
        }
        self.logln(&format!(
            "ccb: {phase}/{name} runs {} host tools natively: {}",
            binds.len(),
            lines.join(", ")
        ));
        Ok(binds)
    }

    /// The host's dash, patched, as the chroot sees it, when the host's programs can serve
    /// this image (else `None`: the image's own shell).
    fn host_shell(&mut self, image: &TreeRoot) -> Result<Option<String>, RunError> {
        self.check_host_tools(image)?;
        let Some(Ok(tools)) = &mut self.host_tools else {
            return Ok(None);
        };
        let Ok(dash) = Path::new("/usr/bin/dash").canonicalize() else {
            return Ok(None);
        };
        Ok(tools
            .prepare(&self.engine_dir, ENGINE_IN, &dash)
            .ok()
            .and_then(|copy| {
                let rel = copy.strip_prefix(&self.engine_dir).ok()?;
                Some(format!("{ENGINE_IN}/{}", rel.display()))
            }))
    }

    /// The image's tree when the host's programs can serve step `phase/name`; `None`, said in
    /// the log, when the image refuses them (dracut) or the host's programs cannot serve it.
    fn host_tools_for(&mut self, phase: &str, name: &str) -> Result<Option<TreeRoot>, RunError> {
        let image = self.tree()?;
        let why = match super::native::refused(&image) {
            Some(why) => why.to_string(),
            None => {
                self.check_host_tools(&image)?;
                match &self.host_tools {
                    Some(Ok(_)) => return Ok(Some(image)),
                    Some(Err(why)) => why.clone(),
                    None => return Err(RunError::Internal("host tools neither ready nor refused")),
                }
            }
        };
        self.logln(&format!(
            "ccb: {phase}/{name} runs the image's own tools: {why}"
        ));
        Ok(None)
    }

    /// Decides whether the host's programs can serve this image (see [`super::native`]): once
    /// they can, for the rest of the action; a refusal is asked again at the next step (a
    /// base's tree has no dpkg until its bootstrap ran).
    fn check_host_tools(&mut self, image: &TreeRoot) -> Result<(), RunError> {
        if !matches!(self.host_tools, Some(Ok(_))) {
            let status = image
                .entry("var/lib/dpkg/status")
                .map_err(io("resolve dpkg's status file"))?;
            self.host_tools = Some(
                super::native::host_tools_gate(&status)
                    .map(|()| Default::default())
                    .map_err(|why| why.to_string()),
            );
        }
        Ok(())
    }

    /// For a package step of an emulated build: the chroot's path of a directory of the
    /// host's programs ([`super::native::PACKAGE_TOOLS`]) for apt, dpkg and every maintainer
    /// script to find first on their PATH. `None` for a native build, or when the host's
    /// programs cannot serve this image (logged).
    fn package_tools(&mut self, phase: &str, name: &str) -> Result<Option<String>, RunError> {
        if super::emulated_cpu(&self.spec.arch).is_none() {
            return Ok(None);
        }
        if self.spec.no_host_tools {
            self.logln(&format!(
                "ccb: {phase}/{name} runs the image's own tools: CCB_HOST_TOOLS=0"
            ));
            return Ok(None);
        }
        let Some(image) = self.host_tools_for(phase, name)? else {
            return Ok(None);
        };
        let Some(Ok(tools)) = &mut self.host_tools else {
            return Err(RunError::Internal("host tools neither ready nor refused"));
        };
        let status = image
            .entry("var/lib/dpkg/status")
            .map_err(io("resolve dpkg's status file"))?;
        let image_status = std::fs::read_to_string(&status).unwrap_or_default();
        let host_status = std::fs::read_to_string("/var/lib/dpkg/status").unwrap_or_default();
        let (same, other) = super::native::same_version_tools(&image_status, &host_status);
        let chosen = super::native::select(&image, Path::new("/"), &same);
        match super::native::path_entries(tools, &self.engine_dir, ENGINE_IN, &chosen) {
            Ok((placed, mut kept)) => {
                kept.extend(other);
                let mut line = format!(
                    "ccb: {phase}/{name} finds {} host programs first on its PATH: {}",
                    placed.len(),
                    placed.join(" ")
                );
                if !kept.is_empty() {
                    line.push_str(&format!(" ({})", kept.join(", ")));
                }
                self.logln(&line);
                Ok(
                    (!placed.is_empty())
                        .then(|| format!("{ENGINE_IN}/{}", super::native::PATH_DIR)),
                )
            }
            Err(why) => {
                self.logln(&format!(
                    "ccb: {phase}/{name} runs the image's own tools: {why}"
                ));
                Ok(None)
            }
        }
    }

    fn env_files(&self, place: Place) -> Vec<String> {
        self.spec
            .env_files
            .iter()
            .map(|name| match place {
                Place::Outside => self
                    .hooks
                    .join("environment.d")
                    .join(name)
                    .display()
                    .to_string(),
                Place::Inside => format!("{HOOKS_IN}/environment.d/{name}"),
            })
            .collect()
    }

    /// Runs one program the DIB way (environment.d sourced first), its output logged; returns
    /// its exit status (negative: killed by that signal) and its last lines.
    pub(super) fn exec(
        &mut self,
        phase: &str,
        place: Place,
        program: &str,
        args: &[String],
    ) -> Result<(i32, VecDeque<String>), RunError> {
        let mut cmd = self.step_process(phase, place, program, args).command();
        let nosync = crate::process::nosync::NoSync::new();
        let chroot = (place == Place::Inside).then(|| self.root.clone());
        // SAFETY: chroot, chdir and prctl are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(root) = &chroot {
                    nix::unistd::chroot(root)?;
                    nix::unistd::chdir("/")?;
                }
                nosync.install()
            });
        }
        let (reader, writer) = std::io::pipe().map_err(io("create a pipe"))?;
        let writer2 = writer.try_clone().map_err(io("create a pipe"))?;
        cmd.stdout(writer).stderr(writer2).process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(io(format!("run {program} (is bash in the tree?)")))?;
        drop(cmd);
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);

        let log = self.log.try_clone().map_err(io("duplicate the log"))?;
        let collector = collect_output(reader, log, self.spec.stream_output);
        let status = self.wait_or_stop(&mut child, program)?;
        kill_what_the_step_left(pgid);
        let (tail, missing) = collector.join().unwrap_or_default();
        self.missing.extend(missing);
        let Some(status) = status else {
            return Err(RunError::Cancelled);
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| -status.signal().unwrap_or(1));
        Ok((code, tail))
    }

    /// The bash that runs a step's program, with the environment DIB gives it where it runs.
    fn step_process(&self, phase: &str, place: Place, program: &str, args: &[String]) -> Process {
        let spec = self.spec;
        let mut cmd = Process::new("/bin/bash");
        cmd.env_clear()
            .envs(&spec.env)
            .env("LC_ALL", "C")
            .env("HOME", "/root")
            .envs(&self.extra_env)
            .envs(super::dib::element_env(&spec.elements))
            .envs(super::emulated_cpu(&spec.arch).map(|cpu| (super::QEMU_CPU, cpu)))
            .arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(RUN)
            .arg("ccb-run")
            .arg(program)
            .arg(args.len().to_string())
            .args(args)
            .args(self.env_files(place));
        match place {
            Place::Outside => self.outside_env(&mut cmd, phase),
            Place::Inside => {
                let native = if self.native_dpkg_deb {
                    format!("{ENGINE_IN}/{}:", super::native::BIN_DIR)
                } else {
                    String::new()
                };
                let front = self
                    .path_front
                    .as_ref()
                    .map_or(String::new(), |dir| format!("{dir}:"));
                if self.packages_step && !(native.is_empty() && front.is_empty()) {
                    // apt gives dpkg a PATH of its own (DPkg::Path): install-packages hands
                    // it this one, the host's programs first and apt's default after them.
                    cmd.env(
                        "CCB_DPKG_PATH",
                        format!("{native}{front}/usr/sbin:/usr/bin:/sbin:/bin"),
                    );
                }
                cmd.env("PATH", format!("{ENGINE_IN}/bin:{native}{front}{PATH}"))
                    .env("_LIB", format!("{ENGINE_IN}/{}", super::dib::LIB_DIR));
                for var in spec.artifacts.keys() {
                    cmd.env(var, format!("{ENGINE_IN}/artifacts/{var}"));
                }
            }
        }
        cmd
    }

    /// What a step run on the host (outside the chroot) sees: the engine's tools, the
    /// working directories and the tree by their host paths.
    fn outside_env(&self, cmd: &mut Process, phase: &str) {
        let spec = self.spec;
        cmd.env(
            "PATH",
            format!(
                "{}:{}:{PATH}",
                self.engine_dir.join("bin").display(),
                self.engine_dir.join(super::dib::HOST_BIN_DIR).display()
            ),
        )
        .env("_LIB", self.engine_dir.join(super::dib::LIB_DIR))
        .env("TMP_BUILD_DIR", &spec.work)
        .env("TMP_HOOKS_PATH", &self.hooks)
        .env("TMP_MOUNT_PATH", &self.root)
        .env("DIB_IMAGE_CACHE", spec.downloads.join("image-cache"));
        for var in spec.artifacts.keys() {
            cmd.env(var, self.engine_dir.join("artifacts").join(var));
        }
        if let Some(cache) = &spec.package_cache {
            cmd.env("CCB_PACKAGE_CACHE", &cache.host);
        }
        if matches!(phase, "root.d" | "cleanup.d") {
            cmd.env("TARGET_ROOT", &self.root);
        }
        if !spec.env.contains_key("DIB_PYTHON_EXEC")
            && let Some(python) = super::dib::host_python()
        {
            cmd.env("DIB_PYTHON_EXEC", python);
        }
        cmd.current_dir(&spec.work);
    }

    /// Waits for a step's program; `None`: cancelled, the step stopped the one way ccb stops
    /// a program.
    fn wait_or_stop(
        &self,
        child: &mut std::process::Child,
        program: &str,
    ) -> Result<Option<std::process::ExitStatus>, RunError> {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) => {}
                Err(e) => return Err(io(format!("wait for {program}"))(e)),
            }
            if self.cancelled.load(Ordering::SeqCst) {
                crate::process::stop(child, GRACE);
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The image tree, opened for host-side access that stays inside it. Opened afresh
    /// each time: the disk action mounts the root filesystem over the same path.
    pub(super) fn tree(&self) -> Result<TreeRoot, RunError> {
        TreeRoot::open(&self.root).map_err(io(format!("open the tree {}", self.root.display())))
    }

    fn own_elements(&self) -> impl Iterator<Item = &super::spec::ElementSrc> {
        self.spec.elements.iter().filter(|e| e.own)
    }

    fn install_bin(&mut self) -> Result<(), RunError> {
        let n = install_bin(&self.tree()?, self.own_elements().map(|e| e.dir.as_path()))?;
        self.logln(&format!("install-bin: {n} files into /usr/local/bin"));
        Ok(())
    }

    /// dib-init-system's install.d/20-install-init-scripts: every own element's
    /// `init-scripts/<init system>/` into the init system's directory, as `cp -RP` (links
    /// kept, modes kept), owned by root. A parent's were installed in the parent's layer.
    fn install_init_scripts(
        &mut self,
        init_system: &str,
    ) -> Result<(i32, VecDeque<String>), RunError> {
        let dest = match init_system {
            "systemd" => "usr/lib/systemd/system",
            "openrc" | "sysv" => "etc/init.d",
            "upstart" => "etc/init",
            other => {
                let line = format!("dib-init-system: unknown DIB_INIT_SYSTEM `{other}`");
                self.logln(&line);
                return Ok((1, VecDeque::from([line])));
            }
        };
        // /usr/lib/systemd/system through the image's own links (/lib → usr/lib), inside
        // the tree.
        let image = self.tree()?;
        let mut n = 0;
        let dirs: Vec<PathBuf> = self
            .own_elements()
            .map(|e| e.dir.join("init-scripts").join(init_system))
            .filter(|d| d.is_dir())
            .collect();
        for dir in dirs {
            image
                .create_dir_all(dest, 0o755)
                .map_err(io(format!("create /{dest}")))?;
            // `cp -RP --preserve=mode`: links kept, modes kept, owned by root.
            n += tree::install_static(&dir, &image, Path::new(dest), tree::Modes::Keep)?;
        }
        self.logln(&format!(
            "dib-init-system: {n} {init_system} init scripts into /{dest}"
        ));
        Ok((0, VecDeque::new()))
    }

    fn install_static(&mut self) -> Result<(), RunError> {
        let mut n = 0;
        let dirs: Vec<PathBuf> = self.own_elements().map(|e| e.dir.join("static")).collect();
        let image = self.tree()?;
        for dir in dirs {
            if dir.is_dir() {
                n += tree::install_static(&dir, &image, Path::new(""), tree::Modes::Static)?;
            }
        }
        self.logln(&format!("install-static: {n} files"));
        Ok(())
    }
}

/// Logs a step's output (redacted) as it comes, streams it when asked, and keeps its last
/// lines and the commands it missed: what the thread returns when the output ends.
fn collect_output(
    reader: std::io::PipeReader,
    mut log: std::fs::File,
    stream: bool,
) -> std::thread::JoinHandle<(VecDeque<String>, Vec<String>)> {
    std::thread::spawn(move || {
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut missing: Vec<String> = Vec::new();
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let shown = crate::redact::output(&buf);
            let _ = log.write_all(&shown);
            let line = String::from_utf8_lossy(&shown).trim_end().to_string();
            if stream {
                emit(&Event::Output { line: line.clone() });
            }
            if let Some(cmd) = super::dib::missing_command(&line)
                && !missing.contains(&cmd)
            {
                missing.push(cmd);
            }
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
            buf.clear();
        }
        (tail, missing)
    })
}

/// Nothing outlives a step: a daemon a script started (even in a new session) would hold the
/// output pipe open and write into the next step's tree. As PID 1 of the namespace, kill(-1)
/// reaches every other process in it (only as PID 1: anywhere else kill(-1) would reach the
/// host's processes); elsewhere the step's process group is killed.
fn kill_what_the_step_left(pgid: nix::unistd::Pid) {
    if nix::unistd::getpid().as_raw() == 1 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
        reap_orphans();
    } else {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::SIGKILL);
    }
}

/// PID 1 of a namespace inherits every orphan: collect the ones that have exited.
fn reap_orphans() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// An image tree in which `link` (relative to the tree) is an absolute link to a fresh
    /// host directory, and the same path exists inside the tree: after `chroot` the link
    /// leads there, and so must every host-side write.
    fn tree_linking_to_the_host(link: &str) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let tree = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let at = tree.path().join(link);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(host.path(), &at).unwrap();
        let inside = tree.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        (tree, host, inside)
    }

    fn empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn install_bin_through_a_link_to_the_host_lands_in_the_image() {
        let (tree, host, inside) = tree_linking_to_the_host("usr/local/bin");
        let element = tempfile::tempdir().unwrap();
        std::fs::create_dir(element.path().join("bin")).unwrap();
        std::fs::write(element.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        let image = TreeRoot::open(tree.path()).unwrap();
        assert_eq!(install_bin(&image, [element.path()]).unwrap(), 1);
        assert!(empty(host.path()), "install-bin wrote onto the host");
        assert!(inside.join("tool").is_file());
    }

    #[test]
    fn resolv_conf_and_policy_rc_d_through_links_to_the_host_land_in_the_image() {
        let (tree, host_etc, inside_etc) = tree_linking_to_the_host("etc");
        std::fs::create_dir_all(inside_etc.join("dpkg/dpkg.cfg.d")).unwrap();
        let host_sbin = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("usr")).unwrap();
        symlink(host_sbin.path(), tree.path().join("usr/sbin")).unwrap();
        let inside_sbin = tree
            .path()
            .join(host_sbin.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside_sbin).unwrap();
        // The image's own resolv.conf is a link to a host file: moved aside, never written.
        let host_resolv = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host_resolv.path(), b"nameserver 192.0.2.1\n").unwrap();
        symlink(host_resolv.path(), inside_etc.join("resolv.conf")).unwrap();

        let image = TreeRoot::open(tree.path()).unwrap();
        let placed = place_chroot_files(&image, b"nameserver 127.0.0.53\n").unwrap();
        assert_eq!(
            placed,
            ChrootFiles {
                resolv_moved: true,
                policy_rc_d: true,
                dpkg_unsafe_io: true
            }
        );
        assert!(
            empty(host_etc.path()),
            "the chroot's files went to the host's /etc"
        );
        assert!(empty(host_sbin.path()), "policy-rc.d went to the host");
        assert_eq!(
            std::fs::read(host_resolv.path()).unwrap(),
            b"nameserver 192.0.2.1\n"
        );
        assert_eq!(
            std::fs::read(inside_etc.join("resolv.conf")).unwrap(),
            b"nameserver 127.0.0.53\n"
        );
        assert!(inside_sbin.join("policy-rc.d").is_file());
        assert!(
            inside_etc
                .join("dpkg/dpkg.cfg.d")
                .join(DPKG_UNSAFE_IO)
                .is_file()
        );
    }

    #[test]
    fn a_mount_point_linked_to_the_host_is_the_images_own() {
        let (tree, host, inside) = tree_linking_to_the_host("proc");
        let image = TreeRoot::open(tree.path()).unwrap();
        let (at, made) = mount_point(&image, "/proc").unwrap();
        assert_eq!(
            at,
            image.path().join(inside.strip_prefix(tree.path()).unwrap())
        );
        assert!(!made);
        // A link that dangles inside the image is created inside it, never on the host.
        let (tree, host2, _) = tree_linking_to_the_host("dev");
        std::fs::remove_dir_all(tree.path().join(host2.path().strip_prefix("/").unwrap())).unwrap();
        let image = TreeRoot::open(tree.path()).unwrap();
        let dev = mount_point(&image, "dev/pts");
        assert!(dev.is_err() || dev.unwrap().0.starts_with(image.path()));
        assert!(empty(host.path()) && empty(host2.path()));
    }
}
