//! Arbitrary bytes as `/var/lib/dpkg/status`: parsing must return packages or an error, never
//! panic; and the comparison against a manifest made of the same packages must be empty.
#![no_main]

use ccb::inspect::dpkg::{Manifest, ManifestPackage, compare, installed, parse_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(packages) = parse_status(data) else {
        return;
    };
    let image = installed(&packages);
    // The manifest a build of this very image would write: nothing missing, nothing different.
    let manifest = Manifest {
        packages: image
            .values()
            .map(|p| ManifestPackage {
                package: p.name.clone(),
                arch: p.arch.clone(),
                version: p.version.clone(),
                status: Some("ii ".into()),
            })
            .collect(),
    };
    let c = compare(&manifest, &packages);
    assert!(c.is_empty(), "{c:?}");
});
