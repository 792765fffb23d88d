//! Arbitrary bytes as `ccb.lock`: parsing must return a lock or an error, never panic; a lock it
//! accepts holds only well-formed ids and digests (they become store paths), and writing it
//! back reads as the same lock.
#![no_main]

use ccb::lock::{is_git_object_id, is_sha256, parse};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(lock) = parse(text, Path::new("ccb.lock")) else {
        return;
    };
    for s in lock.sources.values() {
        assert!(is_git_object_id(&s.commit) && is_git_object_id(&s.tree), "{s:?}");
    }
    for a in lock.artifacts.values() {
        assert!(is_sha256(&a.sha256), "{a:?}");
    }
    let written = toml::to_string(&lock).expect("an accepted lock serializes");
    let again = parse(&written, Path::new("ccb.lock")).expect("a written lock parses");
    assert_eq!(again, lock);
});
