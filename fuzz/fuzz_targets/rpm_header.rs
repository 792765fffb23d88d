//! Arbitrary bytes as one header blob of the rpm database (a row of `Packages` in
//! `rpmdb.sqlite`): parsing must return a package or an error, never panic; and the comparison
//! against the manifest a build of that package would write must be empty.
#![no_main]

use ccb::inspect::dpkg::{Manifest, ManifestPackage};
use ccb::inspect::rpm::{compare, parse_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse_header(data) else {
        return;
    };
    assert!(!p.name.is_empty());
    // What `rpm -qa --qf` in 99-write-dpkg-manifest writes for it.
    let manifest = Manifest {
        packages: vec![ManifestPackage {
            package: p.name.clone(),
            arch: if p.arch.is_empty() {
                "(none)".into()
            } else {
                p.arch.clone()
            },
            version: p.evr(),
            status: None,
        }],
    };
    let c = compare(&manifest, std::slice::from_ref(&p));
    assert!(c.is_empty() && c.checked == 1, "{p:?}: {c:?}");
    let _ = p.key();
});
