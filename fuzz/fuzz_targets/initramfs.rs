//! Arbitrary bytes as an initramfs image: reading must return its entries or an error, never
//! panic, hang or run past its limits; what it returns must be consistent.
#![no_main]

use ccb::inspect::drivers::module_of;
use ccb::inspect::initramfs::{Limits, read_with_limits};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_unpacked: 32 << 20,
    max_entries: 1 << 16,
    max_window: 8 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Ok(got) = read_with_limits(data, LIMITS) else {
        return;
    };
    assert!(!got.segments.is_empty());
    assert!(got.unpacked <= LIMITS.max_unpacked);
    assert!(got.entries.len() <= LIMITS.max_entries);
    let mut last = None;
    for s in &got.segments {
        assert!(s.offset < data.len() as u64);
        assert!(last.is_none_or(|l| s.offset > l), "segments go forward");
        last = Some(s.offset);
    }
    let counted: usize = got.segments.iter().map(|s| s.entries).sum();
    assert_eq!(counted, got.entries.len());
    for e in &got.entries {
        assert!(e.name.len() < 4096);
        let _ = module_of(&e.name);
    }
    let _ = got.describe();
});
