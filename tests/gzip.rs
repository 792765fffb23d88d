//! ccb-gzip as a host-tools step runs it (src/gzip.rs, src/action/native.rs): bound over the
//! image's gzip, it compresses what mkinitramfs asks for on every core and hands every other
//! use to the image's own gzip.

use std::path::Path;
use std::process::Command;

use ccb::action::inroot::TreeRoot;
use ccb::action::native;

/// Bytes that look like an initramfs's: the host's programs, one after another.
fn archive_like() -> Vec<u8> {
    let mut data = Vec::new();
    for name in ["sh", "gzip", "ls", "cp", "tar", "grep", "sed"] {
        if let Ok(bytes) = std::fs::read(Path::new("/usr/bin").join(name)) {
            data.extend_from_slice(&bytes);
        }
    }
    while data.len() < 3 << 20 {
        data.extend_from_within(..data.len().min(1 << 20));
    }
    data
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program:?} {args:?}: {out:?}");
    out.stdout
}

#[test]
fn the_images_gzip_compresses_on_every_core_and_leaves_everything_else_to_the_images_own() {
    let tree = tempfile::tempdir().unwrap();
    let engine = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let images_gzip = tree.path().join("usr/bin/gzip");
    std::fs::create_dir_all(images_gzip.parent().unwrap()).unwrap();
    std::fs::copy("/usr/bin/gzip", &images_gzip).unwrap();
    let image = TreeRoot::open(tree.path()).unwrap();
    // The wrapper is run here on the host, so the chroot's view of the engine directory is
    // the directory itself.
    let engine_in = engine.path().to_str().unwrap();
    let (wrapper, target) = native::ccb_gzip(
        engine.path(),
        engine_in,
        &image,
        Path::new(env!("CARGO_BIN_EXE_ccb-gzip")),
    )
    .unwrap()
    .expect("the image's gzip is a program of its own");
    assert_eq!(target, images_gzip, "bound over the image's gzip itself");
    assert_eq!(
        std::fs::read(&images_gzip).unwrap(),
        std::fs::read("/usr/bin/gzip").unwrap(),
        "nothing in the image changed"
    );

    let data = archive_like();
    std::fs::write(work.path().join("main"), &data).unwrap();
    // mkinitramfs's own call: one gzip member that GNU gzip reads back, made by ccb-gzip
    // (not byte for byte what GNU gzip makes of it).
    let ours = run(&wrapper, &["-n", "-c", "main"], work.path());
    std::fs::write(work.path().join("main.gz"), &ours).unwrap();
    assert_eq!(
        run(Path::new("gzip"), &["-dc", "main.gz"], work.path()),
        data
    );
    let gnu = run(Path::new("gzip"), &["-n", "-c", "main"], work.path());
    assert!(ours != gnu, "GNU gzip, not ccb-gzip, compressed it");
    assert_eq!(&ours[..10], &gnu[..10], "the header gzip -n writes");
    // Standard input, as a pipe would give it.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!("{} -n < main", wrapper.display()))
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(piped.status.success() && piped.stdout == ours, "{piped:?}");

    // Everything else is the image's gzip: decompression, and a header that names the file.
    assert_eq!(run(&wrapper, &["-dc", "main.gz"], work.path()), data);
    let named = run(&wrapper, &["-c", "main"], work.path());
    assert_eq!(
        named[3] & 0x08,
        0x08,
        "FNAME: GNU gzip's header with the file's name"
    );
    assert_eq!(&named[10..15], b"main\0");
}

#[test]
fn an_image_whose_gzip_is_not_a_program_of_its_own_keeps_it() {
    let tree = tempfile::tempdir().unwrap();
    let engine = tempfile::tempdir().unwrap();
    let bin = tree.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let program = Path::new(env!("CARGO_BIN_EXE_ccb-gzip"));
    let image = TreeRoot::open(tree.path()).unwrap();
    let prepare = || native::ccb_gzip(engine.path(), "/tmp/ccb", &image, program).unwrap();
    assert_eq!(prepare(), None, "no gzip at all");
    std::fs::copy("/usr/bin/busybox", bin.join("busybox"))
        .or_else(|_| std::fs::copy("/usr/bin/true", bin.join("busybox")))
        .unwrap();
    std::os::unix::fs::symlink("busybox", bin.join("gzip")).unwrap();
    assert_eq!(prepare(), None, "a name of busybox");
    std::fs::remove_file(bin.join("gzip")).unwrap();
    std::fs::write(bin.join("gzip"), "#!/bin/sh\nexec busybox gzip \"$@\"\n").unwrap();
    assert_eq!(prepare(), None, "a script");
}
