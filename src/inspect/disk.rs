//! Partition tables (GPT through `gptman`, MBR by hand) and finding the root filesystem.
//!
//! Everything here reads untrusted bytes: offsets and counts from the tables are checked
//! against the disk before they are used, and a table that does not add up is an error.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use super::fs::{self, Filesystem, FsError};
use super::{ReadAt, Slice};

/// Linux root partition types of the Discoverable Partitions Specification: the partitions
/// `find_root` probes first.
pub const ROOT_GUIDS: &[(&str, &str)] = &[
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
];
pub const ESP_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const BIOS_BOOT_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
pub const LINUX_DATA_GUID: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// GPT partition entry arrays hold 128 entries in practice; the limit only stops a header from
/// making us read (and allocate for) billions.
const MAX_GPT_ENTRIES: u32 = 16384;
/// Logical partitions followed in an MBR extended partition's chain.
const MAX_LOGICAL: usize = 128;
const MBR_SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DiskError {
    #[error("reading the disk: {0}")]
    #[diagnostic(code(ccb::inspect::disk::io))]
    Io(#[from] std::io::Error),
    #[error("invalid GPT: {detail}")]
    #[diagnostic(
        code(ccb::inspect::disk::gpt),
        help("`sgdisk -v IMAGE` (on a raw copy) says what is wrong with the table")
    )]
    Gpt { detail: String },
    #[error("invalid MBR: {detail}")]
    #[diagnostic(code(ccb::inspect::disk::mbr))]
    Mbr { detail: String },
    #[error(
        "partition {index} ends at byte {end}, past the end of the {size}-byte disk: is the image truncated?"
    )]
    #[diagnostic(code(ccb::inspect::disk::past_end))]
    PastEnd { index: u32, end: u64, size: u64 },
    #[error("no root filesystem (one with /etc/os-release or /usr/lib/os-release) on the disk: {}", tried.join("; "))]
    #[diagnostic(
        code(ccb::inspect::disk::no_root),
        help("ccb reads ext4 and XFS roots on GPT, MBR or unpartitioned disks")
    )]
    NoRoot { tried: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition's number as Linux names it: the GPT entry (from 1), MBR primary 1–4,
    /// logical from 5.
    pub index: u32,
    /// Bytes from the start of the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// GPT type, upper-case as `sgdisk` prints it, e.g. `4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709`.
    pub type_guid: Option<String>,
    /// GPT partition name; empty on MBR.
    pub name: String,
    /// MBR partition type, e.g. `0x83`.
    pub mbr_type: Option<u8>,
}

impl Partition {
    /// A human name for the partition's type, or its GUID / hex code.
    pub fn type_name(&self) -> String {
        if let Some(g) = &self.type_guid {
            let known = ROOT_GUIDS.iter().find(|(r, _)| r == g).map(|(_, n)| *n);
            let known = known.or(match g.as_str() {
                ESP_GUID => Some("EFI system"),
                BIOS_BOOT_GUID => Some("BIOS boot"),
                LINUX_DATA_GUID => Some("Linux filesystem"),
                _ => None,
            });
            return known.map(str::to_string).unwrap_or_else(|| g.clone());
        }
        match self.mbr_type {
            Some(0x83) => "Linux".into(),
            Some(0xEF) => "EFI system".into(),
            Some(t) => format!("MBR type {t:#04x}"),
            None => "unknown".into(),
        }
    }

    fn is_root_type(&self) -> bool {
        self.type_guid
            .as_deref()
            .is_some_and(|g| ROOT_GUIDS.iter().any(|(r, _)| *r == g))
    }

    /// Boot firmware partitions never hold the root, and the ESP is FAT: not worth probing.
    fn is_boot_only(&self) -> bool {
        matches!(self.type_guid.as_deref(), Some(ESP_GUID | BIOS_BOOT_GUID))
            || matches!(self.mbr_type, Some(0xEF | 0xEE))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} ({}", self.index, self.type_name())?;
        if !self.name.is_empty() {
            write!(f, " \"{}\"", self.name)?;
        }
        write!(f, ", {} bytes at {})", self.size, self.start)
    }
}

/// Where `find_root` found the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Partition(Partition),
    /// No partition table: the filesystem starts at byte 0.
    WholeDisk,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Partition(p) => p.fmt(f),
            Location::WholeDisk => f.write_str("the whole disk (no partition table)"),
        }
    }
}

/// The partitions of `disk`: GPT when the MBR is protective (or absent and a GPT is there),
/// else the MBR's primary and logical partitions. Empty when there is no table, e.g. a
/// filesystem on the whole disk.
pub fn partitions(disk: &dyn ReadAt) -> Result<Vec<Partition>, DiskError> {
    let size = disk.size();
    if size < MBR_SECTOR {
        return Ok(Vec::new());
    }
    let mut sector0 = [0u8; 512];
    disk.read_at(0, &mut sector0)?;
    let mbr = parse_mbr_entries(&sector0);
    let protective = mbr
        .as_ref()
        .is_some_and(|e| e.iter().any(|p| p.ptype == 0xEE));
    if protective {
        return match read_gpt(disk)? {
            Some(parts) => Ok(parts),
            None => Err(DiskError::Gpt {
                detail: "the MBR is protective (type 0xEE) but no GPT header was found".into(),
            }),
        };
    }
    // As Linux does: a valid MBR without a protective entry wins over a stray GPT signature
    // (say, a backup header left over from an earlier table).
    if let Some(entries) = mbr.filter(|e| !e.is_empty()) {
        return mbr_partitions(disk, &entries);
    }
    Ok(read_gpt(disk)?.unwrap_or_default())
}

/// The root filesystem of `disk`: every partition is probed by filesystem magic (Linux root
/// GPT types first, then the others in table order; ESP and BIOS boot are skipped), and the
/// first that holds `/etc/os-release` or `/usr/lib/os-release` is the root.
pub fn find_root(disk: Arc<dyn ReadAt>) -> Result<(Location, Box<dyn Filesystem>), DiskError> {
    let parts = partitions(&*disk)?;
    let mut tried = Vec::new();
    if parts.is_empty() {
        return match probe_root(disk) {
            Ok(fs) => Ok((Location::WholeDisk, fs)),
            Err(why) => {
                tried.push(format!("whole disk: {why}"));
                Err(DiskError::NoRoot { tried })
            }
        };
    }
    let (roots, others): (Vec<&Partition>, Vec<&Partition>) =
        parts.iter().partition(|p| p.is_root_type());
    for p in roots.into_iter().chain(others) {
        if p.is_boot_only() || matches!(p.mbr_type, Some(0x05 | 0x0F | 0x85)) {
            continue;
        }
        let src: Arc<dyn ReadAt> = Arc::new(Slice {
            inner: disk.clone(),
            offset: p.start,
            len: p.size,
        });
        match probe_root(src) {
            Ok(fs) => return Ok((Location::Partition(p.clone()), fs)),
            Err(why) => tried.push(format!("{p}: {why}")),
        }
    }
    if tried.is_empty() {
        tried.push("only boot partitions".into());
    }
    Err(DiskError::NoRoot { tried })
}

/// Opens the filesystem in `src` if it is one we read and holds an os-release; otherwise
/// says why not.
fn probe_root(src: Arc<dyn ReadAt>) -> Result<Box<dyn Filesystem>, String> {
    match fs::probe(&*src) {
        Ok(Some(_)) => {}
        Ok(None) => return Err("no ext4 or XFS filesystem".into()),
        Err(e) => return Err(e.to_string()),
    }
    let fs = fs::open(src).map_err(|e| e.to_string())?;
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        match fs.metadata(path) {
            Ok(m) if m.kind == fs::FileKind::File => return Ok(fs),
            Ok(_) | Err(FsError::NotFound { .. } | FsError::NotADirectory { .. }) => {}
            // A loop or a corrupt directory: this is not a root we can use either.
            Err(e) => return Err(format!("{}: {e}", fs.kind())),
        }
    }
    Err(format!("{} without os-release", fs.kind()))
}

// ---------------------------------------------------------------------------------------------
// GPT

/// `Read + Seek` over a [`ReadAt`], for gptman. Reads stop at the end of the disk (a short
/// read, as a file gives), so gptman sees `UnexpectedEof` rather than garbage.
struct ReadSeek<'a> {
    disk: &'a dyn ReadAt,
    pos: u64,
}

impl Read for ReadSeek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.disk.size().saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.disk.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ReadSeek<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range");
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.disk.size().checked_add_signed(d).ok_or_else(invalid)?,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(invalid)?,
        };
        Ok(self.pos)
    }
}

enum GptAttempt {
    /// No "EFI PART" here: not a GPT at this sector size.
    NoSignature,
    Bad(String),
    PastEnd(DiskError),
}

/// Reads the GPT as `gptman::GPT::find_from` would (primary header, then the backup at the
/// last sector; 512-byte sectors, then 4096 when neither has a signature), but through
/// gptman's header and entry readers with our checks between them. `find_from` itself trusts
/// the header: an entry size other than 128 trips an `assert!`, a huge entry count is
/// allocated up front, LBA arithmetic overflows, and its alignment guess `unwrap`s on
/// partitions at LBA 0: all panics an image could cause.
fn read_gpt(disk: &dyn ReadAt) -> Result<Option<Vec<Partition>>, DiskError> {
    let size = disk.size();
    for ss in [512u64, 4096] {
        let mut places = vec![("primary", ss)];
        if size / ss >= 3 {
            places.push(("backup", (size / ss - 1) * ss));
        }
        let mut problems = Vec::new();
        for (which, at) in places {
            match read_gpt_at(disk, ss, at) {
                Ok(parts) => return Ok(Some(parts)),
                Err(GptAttempt::NoSignature) => {}
                Err(GptAttempt::Bad(why)) => problems.push(format!(
                    "{which} header (at byte {at}, {ss}-byte sectors): {why}"
                )),
                Err(GptAttempt::PastEnd(e)) => return Err(e),
            }
        }
        if !problems.is_empty() {
            return Err(DiskError::Gpt {
                detail: problems.join("; "),
            });
        }
    }
    Ok(None)
}

fn read_gpt_at(disk: &dyn ReadAt, ss: u64, at: u64) -> Result<Vec<Partition>, GptAttempt> {
    let size = disk.size();
    let mut r = ReadSeek { disk, pos: at };
    let header = match gptman::GPTHeader::read_from(&mut r) {
        Ok(h) => h,
        Err(gptman::Error::InvalidSignature) => return Err(GptAttempt::NoSignature),
        Err(gptman::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(GptAttempt::NoSignature);
        }
        Err(e) => return Err(GptAttempt::Bad(e.to_string())),
    };
    if header.size_of_partition_entry != 128 {
        return Err(GptAttempt::Bad(format!(
            "partition entries of {} bytes (only 128 is supported)",
            header.size_of_partition_entry
        )));
    }
    let count = header.number_of_partition_entries;
    if count > MAX_GPT_ENTRIES {
        return Err(GptAttempt::Bad(format!(
            "{count} partition entries (at most {MAX_GPT_ENTRIES})"
        )));
    }
    // gptman reads each 128-byte entry as its in-memory struct, a few bytes longer: keep a
    // sector of room after the array.
    let array_end = header
        .partition_entry_lba
        .checked_mul(ss)
        .and_then(|s| s.checked_add(u64::from(count) * 128))
        .and_then(|e| e.checked_add(ss));
    if array_end.is_none_or(|e| e > size) {
        return Err(GptAttempt::Bad(format!(
            "the partition entry array (LBA {}) is past the end of the {size}-byte disk",
            header.partition_entry_lba
        )));
    }
    let entries = header
        .read_partitions(&mut r, ss)
        .map_err(|e| GptAttempt::Bad(e.to_string()))?;
    let mut parts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.is_unused() {
            continue;
        }
        // `i` < count <= MAX_GPT_ENTRIES.
        let index = i as u32 + 1;
        if e.starting_lba == 0 || e.ending_lba < e.starting_lba {
            return Err(GptAttempt::Bad(format!(
                "partition {index} spans LBA {} to {}",
                e.starting_lba, e.ending_lba
            )));
        }
        let bytes = |lba: u64| lba.checked_mul(ss);
        let (Some(start), Some(end)) = (
            bytes(e.starting_lba),
            e.ending_lba.checked_add(1).and_then(bytes),
        ) else {
            return Err(GptAttempt::Bad(format!(
                "partition {index} is beyond any disk"
            )));
        };
        if end > size {
            return Err(GptAttempt::PastEnd(DiskError::PastEnd { index, end, size }));
        }
        parts.push(Partition {
            index,
            start,
            size: end - start,
            type_guid: Some(guid_string(&e.partition_type_guid)),
            name: e.partition_name.as_str().to_string(),
            mbr_type: None,
        });
    }
    Ok(parts)
}

/// The text form of an on-disk GUID, whose first three fields are little-endian.
pub fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

// ---------------------------------------------------------------------------------------------
// MBR

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    slot: u32,
    ptype: u8,
    /// In 512-byte sectors, relative to the table's base.
    lba: u32,
    sectors: u32,
}

/// The used entries of the partition table in `sector`, or `None` if it is not one: no
/// 0x55AA signature, or a status byte other than 0x00/0x80 (boot code, a FAT boot sector).
fn parse_mbr_entries(sector: &[u8; 512]) -> Option<Vec<MbrEntry>> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut out = Vec::new();
    for slot in 0..4u32 {
        let e = &sector[446 + 16 * slot as usize..][..16];
        if e[0] & 0x7F != 0 {
            return None;
        }
        let ptype = e[4];
        let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if ptype != 0 && sectors != 0 {
            out.push(MbrEntry {
                slot: slot + 1,
                ptype,
                lba,
                sectors,
            });
        }
    }
    Some(out)
}

fn is_extended(ptype: u8) -> bool {
    matches!(ptype, 0x05 | 0x0F | 0x85)
}

fn mbr_partition(
    index: u32,
    ptype: u8,
    lba: u64,
    sectors: u32,
    disk_size: u64,
) -> Result<Partition, DiskError> {
    // Both at most 2^33 sectors of 512 bytes: no overflow.
    let start = lba * MBR_SECTOR;
    let size = u64::from(sectors) * MBR_SECTOR;
    let end = start + size;
    if end > disk_size {
        return Err(DiskError::PastEnd {
            index,
            end,
            size: disk_size,
        });
    }
    Ok(Partition {
        index,
        start,
        size,
        type_guid: None,
        name: String::new(),
        mbr_type: Some(ptype),
    })
}

fn mbr_partitions(disk: &dyn ReadAt, primary: &[MbrEntry]) -> Result<Vec<Partition>, DiskError> {
    let size = disk.size();
    let mut parts = Vec::new();
    for e in primary {
        if is_extended(e.ptype) {
            continue;
        }
        parts.push(mbr_partition(
            e.slot,
            e.ptype,
            u64::from(e.lba),
            e.sectors,
            size,
        )?);
    }
    // Logical partitions: a chain of EBRs, each with the partition (relative to that EBR) and
    // the link to the next EBR (relative to the extended partition).
    if let Some(ext) = primary.iter().find(|e| is_extended(e.ptype)) {
        let base = u64::from(ext.lba);
        let mut ebr = base;
        let mut seen = std::collections::HashSet::new();
        let mut index = 5u32;
        loop {
            if !seen.insert(ebr) {
                return Err(DiskError::Mbr {
                    detail: format!("the extended partition's chain loops at sector {ebr}"),
                });
            }
            if seen.len() > MAX_LOGICAL {
                return Err(DiskError::Mbr {
                    detail: format!("more than {MAX_LOGICAL} logical partitions"),
                });
            }
            let at = ebr * MBR_SECTOR;
            if at.checked_add(MBR_SECTOR).is_none_or(|e| e > size) {
                return Err(DiskError::PastEnd {
                    index,
                    end: at + MBR_SECTOR,
                    size,
                });
            }
            let mut sector = [0u8; 512];
            disk.read_at(at, &mut sector)?;
            let Some(entries) = parse_mbr_entries(&sector) else {
                return Err(DiskError::Mbr {
                    detail: format!("no extended boot record at sector {ebr}"),
                });
            };
            let logical = entries
                .iter()
                .find(|e| e.slot == 1 && !is_extended(e.ptype));
            if let Some(l) = logical {
                parts.push(mbr_partition(
                    index,
                    l.ptype,
                    ebr + u64::from(l.lba),
                    l.sectors,
                    size,
                )?);
                index += 1;
            }
            match entries.iter().find(|e| e.slot == 2 && is_extended(e.ptype)) {
                Some(next) => ebr = base + u64::from(next.lba),
                None => break,
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl ReadAt for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let start = usize::try_from(offset).map_err(std::io::Error::other)?;
            let src = start
                .checked_add(buf.len())
                .and_then(|end| self.0.get(start..end))
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn mbr_entry(disk: &mut [u8], sector: usize, slot: usize, ptype: u8, lba: u32, sectors: u32) {
        let e = &mut disk[sector * 512 + 446 + 16 * slot..][..16];
        e[4] = ptype;
        e[8..12].copy_from_slice(&lba.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
        disk[sector * 512 + 510] = 0x55;
        disk[sector * 512 + 511] = 0xAA;
    }

    #[test]
    fn guids_print_like_sgdisk() {
        // The on-disk bytes of the Linux root (x86-64) type.
        let b = [
            0xE3, 0xBC, 0x68, 0x4F, 0xCD, 0xE8, 0xB1, 0x4D, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84,
            0xB7, 0x09,
        ];
        assert_eq!(guid_string(&b), "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    }

    #[test]
    fn an_mbr_lists_primary_and_logical_partitions_but_not_the_extended_container() {
        let mut d = vec![0u8; 100 * 512];
        mbr_entry(&mut d, 0, 0, 0x83, 2, 10);
        mbr_entry(&mut d, 0, 1, 0x05, 20, 60);
        mbr_entry(&mut d, 20, 0, 0x83, 1, 5); // logical 5 at 21
        mbr_entry(&mut d, 20, 1, 0x05, 10, 30); // next EBR at 30
        mbr_entry(&mut d, 30, 0, 0x82, 2, 8); // logical 6 at 32
        let p = partitions(&Mem(d)).unwrap();
        let got: Vec<(u32, u64, u64, Option<u8>)> = p
            .iter()
            .map(|p| (p.index, p.start, p.size, p.mbr_type))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1024, 5120, Some(0x83)),
                (5, 21 * 512, 5 * 512, Some(0x83)),
                (6, 32 * 512, 8 * 512, Some(0x82))
            ]
        );
    }

    #[test]
    fn an_extended_chain_that_loops_is_an_error() {
        let mut d = vec![0u8; 100 * 512];
        mbr_entry(&mut d, 0, 1, 0x05, 20, 60);
        mbr_entry(&mut d, 20, 1, 0x05, 0, 60); // points back at itself
        assert!(matches!(partitions(&Mem(d)), Err(DiskError::Mbr { .. })));
    }

    #[test]
    fn an_mbr_partition_past_the_end_says_the_image_may_be_truncated() {
        let mut d = vec![0u8; 10 * 512];
        mbr_entry(&mut d, 0, 0, 0x83, 2, 100);
        let e = partitions(&Mem(d)).unwrap_err();
        assert!(matches!(e, DiskError::PastEnd { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("truncated"));
    }

    #[test]
    fn a_disk_without_a_table_has_no_partitions() {
        assert_eq!(partitions(&Mem(vec![0u8; 8192])).unwrap(), []);
        assert_eq!(partitions(&Mem(vec![0u8; 100])).unwrap(), []);
        // A boot sector with code where the status bytes are is not a partition table.
        let mut d = vec![0u8; 8192];
        d[446] = 0x33;
        d[510] = 0x55;
        d[511] = 0xAA;
        assert_eq!(partitions(&Mem(d)).unwrap(), []);
    }

    #[test]
    fn a_protective_mbr_without_a_gpt_is_an_error() {
        let mut d = vec![0u8; 64 * 512];
        mbr_entry(&mut d, 0, 0, 0xEE, 1, 63);
        assert!(matches!(partitions(&Mem(d)), Err(DiskError::Gpt { .. })));
    }

    /// A GPT made by gptman itself, then with both tables' entries altered by `edit` (and
    /// their checksums updated), in ways that would make `gptman::GPT::find_from` panic.
    fn gpt_disk(edit: impl Fn(&mut [gptman::GPTPartitionEntry])) -> Vec<u8> {
        let mut cur = std::io::Cursor::new(vec![0u8; 200 * 512]);
        let mut gpt = gptman::GPT::new_from(&mut cur, 512, [7; 16]).unwrap();
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 40,
            ending_lba: 99,
            attribute_bits: 0,
            partition_name: "root".into(),
        };
        gpt.write_into(&mut cur).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut cur, 512).unwrap();
        for at in [512, 199 * 512] {
            cur.set_position(at);
            let mut header = gptman::GPTHeader::read_from(&mut cur).unwrap();
            let mut entries = header.read_partitions(&mut cur, 512).unwrap();
            edit(&mut entries);
            header.write_into(&mut cur, 512, &entries).unwrap();
        }
        cur.into_inner()
    }

    #[test]
    fn a_gpt_reads_with_byte_offsets_and_names() {
        let p = partitions(&Mem(gpt_disk(|_| {}))).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].index, p[0].start, p[0].size), (1, 40 * 512, 60 * 512));
        assert_eq!(p[0].name, "root");
        assert_eq!(
            p[0].type_guid.as_deref(),
            Some("01010101-0101-0101-0101-010101010101")
        );
    }

    #[test]
    fn gpt_partitions_at_lba_zero_are_an_error_not_a_panic() {
        let d = gpt_disk(|e| {
            e[0].starting_lba = 0;
            e[0].ending_lba = 0;
        });
        assert!(matches!(partitions(&Mem(d)), Err(DiskError::Gpt { .. })));
    }

    #[test]
    fn a_damaged_primary_gpt_falls_back_to_the_backup() {
        let mut d = gpt_disk(|_| {});
        d[512 + 24] ^= 0xFF; // primary_lba: the header CRC no longer matches
        let p = partitions(&Mem(d)).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].start, 40 * 512);
    }

    #[test]
    fn both_gpt_headers_damaged_is_an_error_naming_the_checksum() {
        let mut d = gpt_disk(|_| {});
        d[512 + 24] ^= 0xFF;
        d[199 * 512 + 24] ^= 0xFF;
        let e = partitions(&Mem(d)).unwrap_err();
        assert!(matches!(e, DiskError::Gpt { .. }), "{e}");
        assert!(e.to_string().contains("CRC32"), "{e}");
    }

    #[test]
    fn a_gpt_with_a_huge_entry_count_or_odd_entry_size_is_an_error() {
        for (count, size) in [(u32::MAX, 128u32), (128, 256), (128, 0)] {
            let mut d = gpt_disk(|_| {});
            for at in [512u64, 199 * 512] {
                let mut cur = std::io::Cursor::new(&mut d);
                cur.set_position(at);
                let mut h = gptman::GPTHeader::read_from(&mut cur).unwrap();
                h.number_of_partition_entries = count;
                h.size_of_partition_entry = size;
                h.update_crc32_checksum();
                cur.set_position(at);
                use std::io::Write;
                let mut b = Vec::new();
                // Only the header: write_into would also write (and check) the entries.
                b.extend_from_slice(&h.signature);
                b.extend_from_slice(&h.revision);
                b.extend_from_slice(&h.header_size.to_le_bytes());
                b.extend_from_slice(&h.crc32_checksum.to_le_bytes());
                b.extend_from_slice(&h.reserved);
                for v in [
                    h.primary_lba,
                    h.backup_lba,
                    h.first_usable_lba,
                    h.last_usable_lba,
                ] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
                b.extend_from_slice(&h.disk_guid);
                b.extend_from_slice(&h.partition_entry_lba.to_le_bytes());
                b.extend_from_slice(&h.number_of_partition_entries.to_le_bytes());
                b.extend_from_slice(&h.size_of_partition_entry.to_le_bytes());
                b.extend_from_slice(&h.partition_entry_array_crc32.to_le_bytes());
                cur.write_all(&b).unwrap();
            }
            let e = partitions(&Mem(d)).unwrap_err();
            assert!(matches!(e, DiskError::Gpt { .. }), "{count} {size}: {e}");
        }
    }

    #[test]
    fn a_gpt_partition_past_the_end_of_the_disk_is_reported() {
        let mut d = gpt_disk(|_| {});
        d.truncate(80 * 512);
        let e = partitions(&Mem(d)).unwrap_err();
        assert!(matches!(e, DiskError::PastEnd { index: 1, .. }), "{e}");
    }
}
