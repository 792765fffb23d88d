//! Inode times of an ext4 root filesystem written by `mkfs.ext4 -d`, made the source date.
//!
//! `mkfs.ext4 -d` copies each file's access and change times from the tree, and the change
//! time is the moment the build wrote the file: no tree can hold the source date there. So
//! after mkfs every inode in use gets the source date as its access, change and creation
//! time, each inode's checksum recomputed, in the inode tables themselves: the same bytes as
//! `debugfs -w` with a `set_inode_field` per time per inode (three requests for each of
//! ~40 k inodes, 1.2 s of CPU on CC-Debian12), but for the superblock's count of kilobytes
//! written, which debugfs bumps and nobody reads. Modification times stay the tree's.
//!
//! Read from the on-disk format (the kernel's `Documentation/filesystems/ext4/`): the
//! superblock, the group descriptors, each group's inode bitmap (skipped when the group's
//! inodes were never initialised) and the inode table.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::runner::{RunError, io};

const SUPERBLOCK: u64 = 1024;
const MAGIC: u16 = 0xef53;

const S_INODES_COUNT: usize = 0x00;
const S_FIRST_DATA_BLOCK: usize = 0x14;
const S_LOG_BLOCK_SIZE: usize = 0x18;
const S_INODES_PER_GROUP: usize = 0x28;
const S_MAGIC: usize = 0x38;
const S_INODE_SIZE: usize = 0x58;
const S_FEATURE_INCOMPAT: usize = 0x60;
const S_FEATURE_RO_COMPAT: usize = 0x64;
const S_UUID: usize = 0x68;
const S_DESC_SIZE: usize = 0xfe;
const S_CHECKSUM_SEED: usize = 0x270;

const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// Features that move the group descriptors or the inode tables away from where this pass
/// reads them (`meta_bg` scatters the descriptors; a journal device has no inodes), and any
/// this pass does not know: refused rather than written wrong.
const INCOMPAT_UNSUPPORTED: u32 = 0x8 | 0x10 | !0x3_ffff;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

const BG_INODE_BITMAP_LO: usize = 0x04;
const BG_INODE_TABLE_LO: usize = 0x08;
const BG_FLAGS: usize = 0x12;
const BG_INODE_BITMAP_HI: usize = 0x24;
const BG_INODE_TABLE_HI: usize = 0x28;
const BG_INODE_UNINIT: u16 = 0x1;

const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0c;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7c;
/// The small inode's end: what follows is there when the inode size is larger, as far as
/// `i_extra_isize` says.
const GOOD_OLD_INODE_SIZE: usize = 128;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_ATIME_EXTRA: usize = 0x8c;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;

/// CRC-32C as ext4 chains it: the register passed from call to call, never inverted
/// (`ext2fs_crc32c_le`).
const CRC32C_RAW: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::Algorithm {
    width: 32,
    poly: 0x1edc_6f41,
    init: 0xffff_ffff,
    refin: true,
    refout: true,
    xorout: 0,
    check: 0x1cf9_6d7c,
    residue: 0,
});

fn crc32c_le(seed: u32, parts: &[&[u8]]) -> u32 {
    // The crate reflects the register it is given for a reflected CRC: reflect it first.
    let mut d = CRC32C_RAW.digest_with_initial(seed.reverse_bits());
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bad(problem: String) -> RunError {
    RunError::Image {
        problem: format!("the root filesystem mkfs.ext4 wrote: {problem}"),
    }
}

/// What the inode pass needs of the superblock.
struct Geometry {
    block_size: u64,
    inodes_count: u32,
    inodes_per_group: u32,
    inode_size: usize,
    first_data_block: u64,
    desc_size: usize,
    /// The checksum seed, when inodes carry checksums.
    csum_seed: Option<u32>,
}

impl Geometry {
    fn read(f: &File, offset: u64) -> Result<Geometry, RunError> {
        let mut sb = [0u8; 1024];
        f.read_exact_at(&mut sb, offset + SUPERBLOCK)
            .map_err(io("read the root filesystem's superblock"))?;
        if le16(&sb, S_MAGIC) != MAGIC {
            return Err(bad("no ext4 superblock".into()));
        }
        let log = le32(&sb, S_LOG_BLOCK_SIZE);
        if log > 6 {
            return Err(bad(format!("block size 1024 << {log}")));
        }
        let incompat = le32(&sb, S_FEATURE_INCOMPAT);
        if incompat & INCOMPAT_UNSUPPORTED != 0 {
            return Err(bad(format!(
                "incompatible features {:#x} (meta_bg, a journal device or newer): ccb cannot set its inode times",
                incompat & INCOMPAT_UNSUPPORTED
            )));
        }
        let ro_compat = le32(&sb, S_FEATURE_RO_COMPAT);
        let inode_size = usize::from(le16(&sb, S_INODE_SIZE));
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            usize::from(le16(&sb, S_DESC_SIZE))
        } else {
            32
        };
        let inodes_per_group = le32(&sb, S_INODES_PER_GROUP);
        if !(GOOD_OLD_INODE_SIZE..=4096).contains(&inode_size)
            || !inode_size.is_power_of_two()
            || !(32..=1024).contains(&desc_size)
            || inodes_per_group == 0
            || u64::from(inodes_per_group) > 8 * (1024 << log)
        {
            return Err(bad(format!(
                "inode size {inode_size}, descriptor size {desc_size}, {inodes_per_group} inodes per group"
            )));
        }
        let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, S_CHECKSUM_SEED)
            } else {
                crc32c_le(!0, &[&sb[S_UUID..S_UUID + 16]])
            }
        });
        Ok(Geometry {
            block_size: 1024 << log,
            inodes_count: le32(&sb, S_INODES_COUNT),
            inodes_per_group,
            inode_size,
            first_data_block: u64::from(le32(&sb, S_FIRST_DATA_BLOCK)),
            desc_size,
            csum_seed,
        })
    }

    fn groups(&self) -> u32 {
        self.inodes_count.div_ceil(self.inodes_per_group)
    }
}

/// Sets a time field to the source date: the low 32 bits of the seconds in the field, and
/// its `_extra` word the epoch bits (its two low bits) with no nanoseconds. debugfs kept the
/// word's nanoseconds, which mkfs 1.47 leaves 0; a later mkfs that copied the tree's would
/// put the build's moment there.
fn put_time(inode: &mut [u8], field: usize, extra: Option<usize>, epoch: i64) {
    inode[field..field + 4].copy_from_slice(&(epoch as u32).to_le_bytes());
    if let Some(x) = extra {
        let high = (((epoch - i64::from(epoch as i32)) >> 32) & 3) as u32;
        inode[x..x + 4].copy_from_slice(&high.to_le_bytes());
    }
}

/// Whether the large inode's extra part reaches `end` (a byte offset in the inode).
fn fits(inode: &[u8], end: usize) -> bool {
    inode.len() > GOOD_OLD_INODE_SIZE
        && GOOD_OLD_INODE_SIZE + usize::from(le16(inode, I_EXTRA_ISIZE)) >= end
}

/// One inode's times made the source date, and its checksum made again. The large inode's
/// fields are written whatever its `i_extra_isize` says, as debugfs writes them (mkfs's
/// reserved inodes have none: the kernel reads no creation time there either way).
fn stamp(inode: &mut [u8], ino: u32, epoch: i64, csum_seed: Option<u32>) {
    let large = inode.len() > GOOD_OLD_INODE_SIZE;
    let extra = |at: usize| large.then_some(at);
    put_time(inode, I_CTIME, extra(I_CTIME_EXTRA), epoch);
    put_time(inode, I_ATIME, extra(I_ATIME_EXTRA), epoch);
    if large {
        put_time(inode, I_CRTIME, Some(I_CRTIME_EXTRA), epoch);
    }
    let Some(seed) = csum_seed else { return };
    let has_hi = large && fits(inode, I_CHECKSUM_HI + 2);
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
    }
    let generation = &inode[I_GENERATION..I_GENERATION + 4];
    let csum = crc32c_le(seed, &[&ino.to_le_bytes(), generation, inode]);
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].copy_from_slice(&(csum as u16).to_le_bytes());
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2]
            .copy_from_slice(&((csum >> 16) as u16).to_le_bytes());
    }
}

/// Gives every inode in use of the ext4 filesystem at `offset` in `img` the source date as
/// its access, change and creation time.
pub(super) fn set_inode_times(img: &Path, offset: u64, epoch: i64) -> Result<(), RunError> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(img)
        .map_err(io(format!("open {}", img.display())))?;
    let geo = Geometry::read(&f, offset)?;
    let groups = geo.groups();
    // A damaged count must not become an allocation larger than the disk.
    let table_len = u64::from(groups) * geo.desc_size as u64;
    let file_len = f.metadata().map_err(io("stat the disk"))?.len();
    if table_len > file_len {
        return Err(bad(format!(
            "{groups} groups' descriptors would not fit in the disk"
        )));
    }
    let mut descs = vec![0u8; table_len as usize];
    let block_at = |block: u64| {
        block
            .checked_mul(geo.block_size)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad(format!("block {block} is beyond any disk")))
    };
    let gdt = block_at(geo.first_data_block + 1)?;
    f.read_exact_at(&mut descs, gdt)
        .map_err(io("read the root filesystem's group descriptors"))?;
    let ipg = geo.inodes_per_group as usize;
    let mut bitmap = vec![0u8; geo.block_size as usize];
    for (g, desc) in descs.chunks_exact(geo.desc_size).enumerate() {
        if le16(desc, BG_FLAGS) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = |at: usize| {
            if geo.desc_size >= 64 {
                u64::from(le32(desc, at)) << 32
            } else {
                0
            }
        };
        let bitmap_block = u64::from(le32(desc, BG_INODE_BITMAP_LO)) | hi(BG_INODE_BITMAP_HI);
        let table_block = u64::from(le32(desc, BG_INODE_TABLE_LO)) | hi(BG_INODE_TABLE_HI);
        f.read_exact_at(&mut bitmap, block_at(bitmap_block)?)
            .map_err(io("read the root filesystem's inode bitmaps"))?;
        let used = |i: usize| bitmap[i / 8] & (1 << (i % 8)) != 0;
        // Inodes are handed out from the start of a group: read the table up to the last
        // one in use only.
        let Some(last) = (0..ipg.min(bitmap.len() * 8)).rev().find(|&i| used(i)) else {
            continue;
        };
        let mut table = vec![0u8; (last + 1) * geo.inode_size];
        let at = block_at(table_block)?;
        f.read_exact_at(&mut table, at)
            .map_err(io("read the root filesystem's inode tables"))?;
        for (i, inode) in table.chunks_exact_mut(geo.inode_size).enumerate() {
            if used(i) {
                let ino = (g * ipg + i + 1) as u32;
                stamp(inode, ino, epoch, geo.csum_seed);
            }
        }
        f.write_all_at(&table, at)
            .map_err(io("write the root filesystem's inode tables"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Process;

    const EPOCH: i64 = 1_700_000_000;

    #[test]
    fn the_raw_crc32c_chains_as_ext4s_does() {
        // The standard CRC-32C of "123456789" is E3069283: the raw one starts from !0 and
        // is not inverted at the end.
        assert_eq!(!crc32c_le(!0, &[b"123456789"]), 0xe306_9283);
        // Chained in pieces, the same as in one.
        assert_eq!(
            crc32c_le(7, &[b"1234", b"56789"]),
            crc32c_le(crc32c_le(7, &[b"1234"]), &[b"56789"])
        );
    }

    /// A tree with what a root filesystem has: directories, files, a hard link, a symlink,
    /// an empty file, a file with an xattr.
    fn tree(dir: &Path) {
        for d in ["etc/default", "usr/bin", "var/lib/empty"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("etc/hostname"), "ccb\n").unwrap();
        std::fs::write(dir.join("etc/default/grub"), "GRUB_TIMEOUT=1\n".repeat(500)).unwrap();
        std::fs::write(dir.join("usr/bin/tool"), vec![7u8; 300_000]).unwrap();
        std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("usr/bin/tool2")).unwrap();
        std::os::unix::fs::symlink("tool", dir.join("usr/bin/link")).unwrap();
        std::fs::write(dir.join("var/lib/empty/file"), "").unwrap();
        xattr::set(dir.join("usr/bin/tool"), "user.ccb", b"x").unwrap();
    }

    /// `mkfs.ext4 -d` of the tree at `offset` in a new `len`-byte file, as the disk action
    /// runs it (its options that shape inodes: an inode per 4 KiB, metadata checksums).
    fn mkfs(img: &Path, offset: u64, len: u64, tree: &Path, usage: &str, features: Option<&str>) {
        let f = File::create(img).unwrap();
        f.set_len(offset + len).unwrap();
        let mut cmd = Process::new("mkfs.ext4");
        if let Some(o) = features {
            cmd.args(["-O", o]);
        }
        cmd.env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .args(["-F", "-q", "-T", usage, "-i", "4096", "-J", "size=4", "-E"])
            .arg(format!("offset={offset}"))
            .arg("-d")
            .arg(tree)
            .arg(img)
            .arg(format!("{}k", len / 1024))
            .output()
            .unwrap();
    }

    fn device(img: &Path, offset: u64) -> String {
        format!("{}?offset={offset}", img.display())
    }

    /// What the disk action did before this module: `debugfs -w`, three `sif` per inode in
    /// use (from dumpe2fs's free lists), as the oracle.
    fn with_debugfs(img: &Path, offset: u64) {
        let dump = Process::new("dumpe2fs")
            .arg(device(img, offset))
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
        let count: u64 = dump
            .lines()
            .find_map(|l| l.strip_prefix("Inode count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut free = std::collections::BTreeSet::new();
        for l in dump
            .lines()
            // The groups' lines (indented), not the summary's `Free inodes:  N`.
            .filter_map(|l| l.strip_prefix("  Free inodes: "))
        {
            for part in l.split(", ").filter(|p| !p.is_empty()) {
                match part.split_once('-') {
                    Some((a, b)) => free.extend(a.parse::<u64>().unwrap()..=b.parse().unwrap()),
                    None => {
                        free.insert(part.parse::<u64>().unwrap());
                    }
                }
            }
        }
        let mut script = String::new();
        for ino in (1..=count).filter(|i| !free.contains(i)) {
            for field in ["ctime", "atime", "crtime"] {
                script.push_str(&format!("sif <{ino}> {field} @{EPOCH}\n"));
            }
        }
        let path = img.with_extension("debugfs");
        std::fs::write(&path, script).unwrap();
        Process::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .args(["-w", "-f"])
            .arg(&path)
            .arg(device(img, offset))
            .output()
            .unwrap();
    }

    #[test]
    fn every_inode_gets_the_times_debugfs_gave_it_byte_for_byte() {
        // A root filesystem's layout (`default`: 4 KiB blocks, 256-byte inodes; three block
        // groups, two never initialised) and a small one's (1 KiB blocks, 38 groups); at an
        // offset, as the root partition sits in the disk file.
        for usage in ["default", "small"] {
            same_as_debugfs(usage, None);
        }
        // The checksum seed kept in the superblock (a default of newer e2fsprogs).
        same_as_debugfs("default", Some("metadata_csum_seed"));
    }

    fn same_as_debugfs(usage: &str, features: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        tree(&src);
        let (offset, len) = (1 << 20, 300 << 20);
        let ours = dir.path().join("ours.img");
        mkfs(&ours, offset, len, &src, usage, features);
        let theirs = dir.path().join("theirs.img");
        std::fs::copy(&ours, &theirs).unwrap();

        set_inode_times(&ours, offset, EPOCH).unwrap();
        with_debugfs(&theirs, offset);

        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        // The primary superblock's kilobytes-written count (0x178) and its checksum (0x3fc)
        // are all that debugfs changed besides: nothing else may differ.
        let sb = offset as usize + SUPERBLOCK as usize;
        let allowed = |i: usize| {
            (sb + 0x178..sb + 0x180).contains(&i) || (sb + 0x3fc..sb + 0x400).contains(&i)
        };
        const CHUNK: usize = 1 << 16;
        let differ: Vec<usize> = a
            .chunks(CHUNK)
            .zip(b.chunks(CHUNK))
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .flat_map(|(n, (x, y))| {
                (0..x.len())
                    .filter(move |&i| x[i] != y[i])
                    .map(move |i| n * CHUNK + i)
            })
            .filter(|&i| !allowed(i))
            .collect();
        assert!(
            differ.is_empty(),
            "{usage}: {} bytes differ, first at {:#x}",
            differ.len(),
            differ[0]
        );

        // And e2fsck finds every inode checksum right.
        let fsck = Process::new("e2fsck")
            .args(["-f", "-n"])
            .arg(device(&ours, offset))
            .output_any_status()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    }

    #[test]
    fn a_file_that_is_not_ext4_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("zeros.img");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        let err = set_inode_times(&img, 0, EPOCH).unwrap_err().to_string();
        assert!(err.contains("no ext4 superblock"), "{err}");
    }

    #[test]
    fn scattered_group_descriptors_are_refused_not_written_over() {
        // meta_bg puts each meta-group's descriptors in its own first group: read from after
        // the superblock, they would send the inode tables' writes into other blocks.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        tree(&src);
        let img = dir.path().join("meta_bg.img");
        mkfs(
            &img,
            0,
            64 << 20,
            &src,
            "default",
            Some("meta_bg,^resize_inode"),
        );
        let before = std::fs::read(&img).unwrap();
        let err = set_inode_times(&img, 0, EPOCH).unwrap_err().to_string();
        assert!(err.contains("meta_bg"), "{err}");
        assert!(
            std::fs::read(&img).unwrap() == before,
            "the filesystem was written"
        );
    }

    #[test]
    fn a_damaged_superblock_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        tree(&src);
        let img = dir.path().join("damaged.img");
        mkfs(&img, 0, 64 << 20, &src, "default", None);
        let f = File::options().read(true).write(true).open(&img).unwrap();
        // One inode per group of four billion: 256 GiB of group descriptors to read.
        f.write_all_at(&1u32.to_le_bytes(), SUPERBLOCK + S_INODES_PER_GROUP as u64)
            .unwrap();
        f.write_all_at(&u32::MAX.to_le_bytes(), SUPERBLOCK + S_INODES_COUNT as u64)
            .unwrap();
        let err = set_inode_times(&img, 0, EPOCH).unwrap_err().to_string();
        assert!(err.contains("descriptors would not fit"), "{err}");
    }
}
