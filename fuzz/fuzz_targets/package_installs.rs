//! Arbitrary bytes as an element's `package-installs.yaml`, judged for a Debian amd64 image:
//! the parser must return package lists or an error naming the element, never panic or hang
//! (YAML aliases included), and never hand the installer an empty or spaced package name or
//! a phase that installs nothing.
#![no_main]

use ccb::element::packages::parse_installs;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: BTreeMap<String, String> = [
        ("ARCH", "amd64"),
        ("DISTRO_NAME", "debian"),
        ("DIB_RELEASE", "bookworm"),
        ("DIB_PYTHON_VERSION", "3"),
        ("DIB_DEFAULT_INSTALLTYPE", "package"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let Ok(lists) = parse_installs("fuzzed", "package-installs.yaml", text, &env) else {
        return;
    };
    for (phase, l) in &lists {
        assert!(
            ["pre-install.d", "install.d", "post-install.d"].contains(&phase.as_str()),
            "{phase}"
        );
        for p in l.install.iter().chain(&l.uninstall) {
            assert!(!p.is_empty() && !p.chars().any(char::is_whitespace), "{p:?}");
        }
    }
});
