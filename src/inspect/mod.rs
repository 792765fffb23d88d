//! `ccb inspect`: checks on disk images, read directly from the image file (qcow2 or raw,
//! local or over HTTP range requests), without root, mounts, loop devices or libguestfs.
//!
//! Layers, each over the one below:
//! - [`ReadAt`]: a read-only, random-access byte source: a file, an HTTP object, a slice;
//! - [`image`]: the virtual disk of an image file: raw, or [`qcow2`] (with backing chains);
//! - [`disk`]: partition tables (GPT, MBR) and finding the root filesystem;
//! - [`fs`]: read-only filesystems (ext4; XFS), paths resolved inside the image;
//! - [`dpkg`]: the dpkg status database and the build's manifest;
//! - [`initramfs`]: the files of an initramfs image (cpio; gzip, zstd, xz, lz4), and
//!   [`drivers`], the check that it holds the storage drivers a node needs;
//! - [`remote`]: images over HTTP, read by ranges;
//! - the checks and the command (`src/cli/inspect.rs`).
//!
//! Images are untrusted input: every size and offset read from one is checked before use,
//! allocations are bounded, and a bad image is an error, never a panic.

pub mod check;
pub mod disk;
pub mod dpkg;
pub mod drivers;
pub mod fs;
pub mod image;
pub mod initramfs;
pub mod qcow2;
pub mod remote;
pub mod rpm;

pub use crate::readat::{ReadAt, Slice};
