//! ccb's integration tests: one binary, one module per area. Each test drives the real `ccb`
//! binary in a fresh cache directory with a scrubbed environment.

mod arm64;
mod bases;
mod builders;
mod checkpoint;
mod common;
mod dib_compat;
mod disk;
mod distros;
mod elements;
mod executor;
mod faults;
mod graph;
mod hostile;
mod inspect;
mod manifests;
mod pipes;
mod publish;
mod remote;
mod sbom;
mod site_contract;
mod sources;
mod verify;

#[test]
fn no_forgotten_test_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli");
    let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs")
            && module != "main"
        {
            assert!(
                main.contains(&format!("mod {module};")),
                "tests/cli/{name} is not registered in main.rs"
            );
        }
    }
}
