//! ccb builds, tests, inspects and publishes the Chameleon testbed's supported disk images.
//!
//! The data flows through one module per stage (see `ARCHITECTURE.md` in the team's shared notes):
//!
//! ```text
//! manifests/*.ncl|*.toml ─manifest::load─▶ Model ─label::resolve─▶ targets
//!   ─element::resolve─▶ ResolvedImage (closure, phases, environment, packages)
//!   ─graph::Graph::build─▶ actions (ActionId) with keys ─graph::plan─▶ Plan (cached or to run, and why)
//!   ─exec::schedule + action::run_action─▶ layers and disks in the store ─action::materialize─▶ out/
//!   ─bootcheck::boot─▶ boot reports
//! ```
//!
//! Where to start reading:
//! - [`ops`]: one operation per user-level job (check, build, test, inspect and its files,
//!   publish, verify, versions, update, query, cache, lint), each a typed request in and a
//!   typed, serializable report out. A [`ops::Session`] (the model with the
//!   lock applied, the store, the element resolver) is loaded once per command and plans a
//!   target set once; `test`, `publish` and `inspect` take their disks from the build report.
//!   An operation owns its order (`ops::build::run`: refuse an arch the host cannot build,
//!   pin new "latest" artifacts, plan, then report the plan or build).
//!   [`ops::CommandError`] sorts failures by who acts: user, environment, internal (exit 70);
//!   a failed build takes the kind of its worst action ([`action::event::Blame`]).
//! - [`cli`]: argument parsing and rendering only; each command parses, calls one operation
//!   and renders its report.
//! - [`manifest`]: evaluation of the Nickel/TOML manifests against `stdlib/ccb.ncl`, the
//!   semantic checks Nickel does not do (cycles in `from`, duplicate published names), and the
//!   evaluation cache that makes a warm `ccb check` cheap. A cold evaluation runs in a child
//!   process (`ccb __eval`) under `CCB_EVAL_TIMEOUT` and `CCB_EVAL_MEMORY`.
//! - [`label`]: target syntax (`//images:ubuntu24.04`, `//...`, published names).
//! - [`element`]: diskimage-builder element discovery, dependency expansion, phase ordering,
//!   environment.d, package-installs, digests and lint.
//! - [`graph`]: actions (`fetch`, `base`, `layer`, `disk`, `publish`) named by a typed
//!   [`graph::ActionId`], their key documents and keys, each layer's element set (one source
//!   for the key and the run: [`graph::Graph::layer_elements`]), the plan and `explain`. Cold
//!   resolutions of independent images run in parallel (rayon).
//! - [`fetch`]: artifacts into the store, verified against their pinned SHA-256.
//! - [`lock`] and [`sources`]: `ccb.lock`, and the git sources it pins (fetched on demand).
//! - [`exec`]: the scheduler (`-j`, critical path first, fail fast or keep going, cancel).
//! - [`action`]: running actions: the sandbox (mount + PID namespaces, killed with ccb), the
//!   runner of DIB phases inside it, overlay layers, disk assembly, and the parent's side
//!   (specs, events, commit, materialization), and step checkpoints inside a layer
//!   (`action::checkpoint`: an edit to a late script reruns from the step before it). An
//!   engine failure in the sandbox keeps its errno and who must act
//!   ([`action::event::EngineFailure`]) across to the parent. `action::repro` makes equal
//!   keys give equal bytes (a source date from the inputs, times clamped, caches and host
//!   keys removed, filesystems stamped), which `ops::verify` proves by rebuilding.
//! - [`bootcheck`]: `ccb test`'s QEMU boots (amd64 on SeaBIOS/OVMF, arm64 on AAVMF; virtio,
//!   NVMe or SATA disks) and the checks run inside the image.
//! - [`doctor`]: what this host can build and boot (arches native or emulated, KVM, loop,
//!   overlayfs, binfmt_misc, tools); `ops::build` asks it before anything runs.
//! - [`qcow2`]: the qcow2 writer (clusters compressed in parallel with libdeflate); the reader
//!   is [`inspect::qcow2`].
//! - [`inspect`]: reading images (qcow2, GPT, ext4, xfs, dpkg/rpm databases, initramfs
//!   archives) without mounts.
//! - [`publish`]: the sites (directories, Swift + Keystone), versions and scopes; [`contract`]
//!   is what the sites' image puller reads (manifest keys, build timestamps), checked before
//!   anything is uploaded.
//! - [`remote`]: the remote cache shared by build hosts (Bazel's HTTP cache protocol, a Swift
//!   container, a directory): content-defined zstd chunks, REAPI `ActionResult` entries,
//!   verified before they enter the store; `ops::build` looks there after the store. An
//!   action may be sent to a remote builder over ssh (`remote::builder`: the inputs as a
//!   content-addressed bundle, the result back through the cache).
//! - [`sbom`]: each image's SPDX 2.3 bill of materials (packages, licenses, ccb's inputs),
//!   written by the disk action and checked by `ccb inspect`.
//! - [`store`]: the on-disk cache (`$CCB_CACHE_DIR`): records, layers, outputs, locks, gc
//!   (`ccb cache`'s view of the entries is `ops::cache`, above the records it reads);
//!   [`store::Layout`] alone spells its paths (a lib test fails on a store path literal
//!   anywhere else); [`store::tree`] digests trees.
//! - [`ui`]: the one output ([`ui::Shell`]): data to stdout (a closed pipe ends a listing
//!   quietly; a command that changes things carries on with it discarded: [`ui::ClosedPipe`]),
//!   status and warnings to stderr, one progress type ([`ui::progress::Progress`]; a
//!   transfer's byte count, [`ui::progress::Transfer`], draws through it), the terminal
//!   decision, byte formatting and the short form of keys ([`ui::short`]).
//! - [`redact`]: the one redaction of URLs, server bodies and registered secrets;
//!   [`secret::Secret`] holds a credential that never prints.
//! - [`readat`]: the random-access byte source that `inspect` reads images through and the
//!   fetcher hashes ranged downloads from.
//! - [`interrupt`] and [`fault`]: Ctrl-C stops transfers between chunks (exit 130); debug
//!   builds stop themselves at named points for the fault campaign (`tests/cli/faults.rs`).
//! - [`process`]: the one way to run a program (command line kept for errors, captured
//!   output, a started program's pipes, wait and SIGTERM → grace → SIGKILL stop in
//!   [`process::Running`]), and bounded runs of untrusted code (a time limit,
//!   an address-space limit, PID 1 of a fresh PID namespace: environment.d, the evaluator).
//!
//! Dependencies point down: `ops` → `action`/`bootcheck`/`publish`/`remote` → `graph` →
//! `element`/`fetch`/`lock`/`sources` → `manifest`/`label` → `store` → `fsutil`/`process`/
//! `redact`/`diag`. Data types that several layers share live in the lowest one that owns them
//! (the project's settings and `ccb.lock`'s pins in `manifest`, tree summaries and checkpoint
//! limits in `store`, tree digests in [`store::tree`] (what `action` commits and `remote`
//! unpacks), the sites' formats in [`contract`], sizes in [`units`]). No two modules import
//! each other, around any circle: a lib test (`layering`) reads the sources and fails on one.
//!
//! On-disk layout of the store (`$CCB_CACHE_DIR`, default `$XDG_CACHE_HOME/ccb`):
//!
//! ```text
//! stdlib-<hash>/ccb.ncl       the embedded stdlib, written on first use
//! eval/<project>.json         evaluated manifests + the stat of every file evaluation read
//! stat/elements.json          element file digests by (path, size, mtime, inode)
//! resolve/<key>.json          resolved element views (closure, phases, environment, packages)
//! resolve/check-<hash>.json   a passed `ccb check` of one search path and set of requests
//! resolve/complete-<hash>.json  whether any image misses an element, for one search path
//! resolve/pack-<project>.json the element closures of each build of a project's last check
//! actions/<key>.json          a built action's record: its key document, steps, duration
//! last/<name>.json            the key document of the last build of each action, for
//!                             `explain` (the name: 32 hex digits of the blake3 of its id)
//! layers/<key>/{tree,layer.json}  committed root filesystems (full) or overlay upper dirs (diff)
//! checkpoints/<key>/{tree,checkpoint.json}  a layer's state after one of its slow steps
//!                             (an overlay upper dir over the checkpoints under it)
//! checkpoint-chains/<layer key>.json  the checkpoints a committed layer was built through
//! outputs/<key>/, <key>.json  a disk action's files (qcow2, raw, <Name>.spdx.json, <Name>.d/,
//!                             SHA256SUMS)
//! artifacts/<sha256>, .json   fetched artifacts, read-only, verified; their blake3 record
//! artifacts/.partial/         interrupted downloads, resumed by the next fetch
//! sources/git/, sources/trees/  bare mirrors of git sources; locked trees by git tree id
//! stat/artifacts.json         verified blake3 of store artifacts by stat
//! stat/kvm-stall.json         a kernel stalled under KVM here: `ccb test` uses TCG until the
//!                             host's kernel or QEMU changes
//! logs/<key>.log              every step's output; <key>-boot-<firmware>-<disk bus>.log for `ccb test`
//!                             (and -panicked.log: a first attempt whose guest kernel panicked)
//! locks/                      per-key and store-wide flocks
//! downloads/                  shared package and image downloads (never in a key)
//! tmp/                        working directories of running (or killed) actions
//! bundles/<digest>/           on a remote builder: the inputs a build host sent
//! ```

pub mod action;
pub mod bootcheck;
pub mod cli;
pub mod contract;
pub mod diag;
pub mod doctor;
pub mod element;
pub mod exec;
pub mod fault;
pub mod fetch;
pub mod fsutil;
pub mod graph;
pub mod gzip;
pub mod inspect;
pub mod interrupt;
pub mod keydoc;
pub mod label;
pub mod lock;
pub mod manifest;
pub mod ops;
pub mod process;
pub mod publish;
pub mod qcow2;
pub mod readat;
pub mod redact;
pub mod remote;
pub mod sbom;
pub mod secret;
pub mod sources;
pub mod store;
pub mod ui;
pub mod units;

/// ccb's version, part of every action key: a new engine never reuses an old engine's outputs.
pub const ENGINE_VERSION: &str = concat!("ccb-", env!("CARGO_PKG_VERSION"), "-engine-1");

/// The disk action's writer, part of every disk key: raised when the same tree gives other
/// disk bytes (equal keys must give equal bytes), without touching the keys of the layers
/// under it. 2: inode times written by ccb, not debugfs (the superblock's write count).
/// 3: the qcow2 at libdeflate level 2.
pub const DISK_WRITER: &str = "3";

#[cfg(test)]
mod layering;
