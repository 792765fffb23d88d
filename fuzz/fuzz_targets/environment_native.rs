//! Arbitrary text as environment.d fragments (split at 0x1E) read by ccb's native parser
//! (`ccb::element::env::evaluate_native`), which stands in for bash when every fragment only
//! exports plain values: it must never panic, and what it accepts must be an environment
//! (identifier keys, no NUL in a value, the declared variables still there, ccb's own PATH
//! and LC_ALL left out) that is the same each time.
#![no_main]

use std::collections::BTreeMap;

use ccb::element::env::evaluate_native;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let bodies: Vec<&str> = text.split('\u{1e}').take(8).collect();
    let declared: BTreeMap<String, String> = [
        ("DIB_RELEASE".to_string(), "bookworm".to_string()),
        ("EMPTY".to_string(), String::new()),
    ]
    .into();
    let Some(env) = evaluate_native(&bodies, &declared) else {
        return;
    };
    for (k, v) in &env {
        let mut chars = k.chars();
        assert!(
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{k:?}"
        );
        assert!(!v.contains('\0'), "{k}={v:?}");
    }
    assert!(env.contains_key("DIB_RELEASE") && env.contains_key("EMPTY"), "{env:?}");
    assert!(!env.contains_key("PATH") && !env.contains_key("LC_ALL"), "{env:?}");
    assert_eq!(evaluate_native(&bodies, &declared), Some(env));
});
