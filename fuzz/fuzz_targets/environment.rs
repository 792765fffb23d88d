//! Arbitrary bytes as the output of `env -0` after environment.d: the captured environment
//! must never hold a key with `=` or NUL, nor a value with NUL (either would break the
//! environment handed to every script), and writing it back the way `env -0` does must read
//! as the same environment.
#![no_main]

use ccb::element::env::parse_captured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = parse_captured(data);
    let mut written = Vec::new();
    for (k, v) in &env {
        assert!(!k.contains('=') && !k.contains('\0'), "{k:?}");
        assert!(!v.contains('\0'), "{v:?}");
        written.extend_from_slice(k.as_bytes());
        written.push(b'=');
        written.extend_from_slice(v.as_bytes());
        written.push(0);
    }
    assert_eq!(parse_captured(&written), env);
});
