//! Opens arbitrary bytes as a qcow2 image and reads a few ranges of its virtual disk: any
//! outcome but a panic, a hang or an unbounded allocation is fine.
//!
//! Backing files: a name starting with `raw` resolves to a small raw disk, `missing` to an
//! error, and anything else to the input itself, so that chains, loops and the depth limit are
//! exercised with qcow2 backing files the fuzzer controls.

#![no_main]

use std::io;
use std::sync::Arc;

use ccb::inspect::ReadAt;
use ccb::inspect::qcow2::{Qcow2, Qcow2Error};
use libfuzzer_sys::fuzz_target;

/// Keeps each run short: a read never touches more than a few clusters, and there are few.
const MAX_READ: u64 = 64 << 10;
const READS: usize = 4;

struct Mem(Arc<[u8]>);

impl ReadAt for Mem {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let data: Arc<[u8]> = data.into();
    let raw_backing: Arc<[u8]> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let resolve = |name: &str| -> Result<Arc<dyn ReadAt>, Qcow2Error> {
        if name.starts_with("raw") {
            Ok(Arc::new(Mem(raw_backing.clone())))
        } else if name.starts_with("missing") {
            Err(Qcow2Error::Backing(format!("no backing file {name}")))
        } else {
            Ok(Arc::new(Mem(data.clone())))
        }
    };
    let Ok(image) = Qcow2::open(Arc::new(Mem(data.clone())), &resolve) else {
        return;
    };
    let size = image.size();
    let _ = image.backing_file();
    // Offsets: the start, the end, and places picked by the input's last bytes.
    let tail = data
        .get(data.len().saturating_sub(8 * READS)..)
        .unwrap_or(&[]);
    let mut offsets = vec![0, size.saturating_sub(MAX_READ)];
    offsets.extend(tail.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b) % size.max(1)
    }));
    let mut buf = vec![0u8; MAX_READ as usize];
    for offset in offsets.into_iter().take(READS) {
        let len = (size - offset).min(MAX_READ) as usize;
        let _ = image.read_at(offset, &mut buf[..len]);
        // Out-of-range reads must fail cleanly too.
        let _ = image.read_at(size.saturating_sub(1), &mut buf[..2]);
    }
});
