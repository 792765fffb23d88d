//! Arbitrary bytes as a whole disk: `partitions` must return a table or an error, never
//! panic, and every partition it returns must lie inside the disk.
//!
//! Random bytes almost never carry valid GPT checksums, which would leave everything after
//! the CRC checks unexplored; so when the first byte is odd, the primary header's checksums
//! (at 512-byte sectors) are made right before the disk is read.
#![no_main]

use ccb::inspect::ReadAt;
use ccb::inspect::disk::partitions;
use libfuzzer_sys::fuzz_target;

struct Mem<'a>(&'a [u8]);

impl ReadAt for Mem<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.0.get(range))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// Makes the checksums of the header at byte 512 (and of its entry array, when that is in
/// the disk) right.
fn fix_gpt_crcs(d: &mut [u8]) {
    if d.len() < 512 + 92 {
        return;
    }
    let h = 512;
    let lba = u64::from_le_bytes(d[h + 72..h + 80].try_into().unwrap_or_default());
    let count = u64::from(le32(d, h + 80));
    let size = u64::from(le32(d, h + 84));
    let array = lba
        .checked_mul(512)
        .and_then(|start| Some((start, start.checked_add(count.checked_mul(size)?)?)));
    if let Some((start, end)) = array
        && end <= d.len() as u64
    {
        let crc = crc32(&d[start as usize..end as usize]);
        d[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    d[h + 16..h + 20].fill(0);
    let crc = crc32(&d[h..h + 92]);
    d[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut disk = data.to_vec();
    if data.first().is_some_and(|b| b & 1 == 1) {
        fix_gpt_crcs(&mut disk);
    }
    let disk = Mem(&disk);
    if let Ok(parts) = partitions(&disk) {
        for p in parts {
            assert!(
                p.start
                    .checked_add(p.size)
                    .is_some_and(|end| end <= disk.size())
            );
            let _ = p.to_string();
        }
    }
});
