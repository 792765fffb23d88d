//! ccb's stand-ins for the image's programs during a host-tools step (src/action/native.rs):
//! ccb-gzip (src/gzip.rs) compresses what mkinitramfs asks for on every core, ccb-canon
//! (src/action/canon.c) answers readlink, realpath and mkdir as GNU coreutils does, and both hand
//! every other use to the image's own program.

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
    // Options from $GZIP are gzip's to read: its bytes, not ccb-gzip's.
    let with_env = Command::new(&wrapper)
        .args(["-n", "-c", "main"])
        .env("GZIP", "-1")
        .current_dir(work.path())
        .output()
        .unwrap();
    let gnu_fast = Command::new("gzip")
        .args(["-n", "-c", "main"])
        .env("GZIP", "-1")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        with_env.stdout == gnu_fast.stdout,
        "$GZIP was not left to gzip"
    );
    // A directory is refused by gzip itself, with nothing written.
    std::fs::create_dir(work.path().join("dir")).unwrap();
    let dir = Command::new(&wrapper)
        .args(["-n", "-c", "dir"])
        .current_dir(work.path())
        .output()
        .unwrap();
    let gnu_dir = Command::new("gzip")
        .args(["-n", "-c", "dir"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        dir.stdout.is_empty() && dir.status.code() == gnu_dir.status.code(),
        "{dir:?}"
    );
    // Started by another name (a link such as zcat), it is the image's gzip by that name.
    std::os::unix::fs::symlink(&wrapper, work.path().join("zcat")).unwrap();
    let by_other_name = run(
        &work.path().join("zcat"),
        &["-n", "-c", "main"],
        work.path(),
    );
    assert!(
        by_other_name == gnu,
        "ccb-gzip compressed under another name"
    );
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

/// A tree of every kind of link a path can meet, under a temporary directory.
fn link_maze() -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::write(r.join("d/f"), "f").unwrap();
    std::fs::write(r.join("d/sub/g"), "g").unwrap();
    let name = r.file_name().unwrap().to_str().unwrap();
    for (link, to) in [
        ("abs", r.join("d").to_str().unwrap().to_string()),
        ("rel", "d".into()),
        ("up", format!("../{name}/d")),
        ("chain1", "chain2".into()),
        ("chain2", "d/f".into()),
        ("dirchain", "abs/sub".into()),
        ("dangling", "missing".into()),
        ("dangling_deep", "nothere/x".into()),
        ("loop1", "loop2".into()),
        ("loop2", "loop1".into()),
        ("self", "self".into()),
        ("slash", "d/".into()),
        ("dots", "./d/../d/./sub".into()),
        ("d/sub/back", "../..".into()),
        ("d/sub/here", ".".into()),
        ("d/sub/root", "/".into()),
    ] {
        symlink(to, r.join(link)).unwrap();
    }
    dir
}

#[test]
fn readlink_and_realpath_answer_as_gnu_coreutils_does_for_every_path() {
    let maze = link_maze();
    let root = maze.path().to_str().unwrap().to_string();
    let bin = tempfile::tempdir().unwrap();
    let fallback = tempfile::tempdir().unwrap();
    for name in ["readlink", "realpath"] {
        let program = bin.path().join(name);
        std::fs::write(&program, native::CANON).unwrap();
        std::fs::copy(
            Path::new("/usr/bin").join(name),
            fallback.path().join(format!("{name}.image")),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut paths: Vec<String> = vec!["/".into(), "//".into(), "/..".into(), "///usr//bin".into()];
    for entry in [
        "d",
        "d/f",
        "d/sub",
        "abs",
        "rel",
        "up",
        "chain1",
        "dirchain",
        "dangling",
        "dangling_deep",
        "loop1",
        "self",
        "slash",
        "dots",
        "d/sub/back",
        "d/sub/here",
        "d/sub/root",
        "missing",
    ] {
        for tail in [
            "",
            "/f",
            "/sub/g",
            "/..",
            "/./f",
            "/missing",
            "/missing/x",
            "/",
            "/.",
        ] {
            paths.push(format!("{root}/{entry}{tail}"));
            paths.push(format!("/{root}//{entry}{tail}"));
        }
    }
    paths.extend(["d/f".into(), "".into(), format!("{root}/d/f/x")]);
    let forms: [(&str, &[&str]); 4] = [
        ("readlink", &["-f"]),
        ("realpath", &["-s"]),
        ("realpath", &["-ms"]),
        ("realpath", &["-sm"]),
    ];
    // (stdout, success) of a program on one path.
    let answer = |program: &Path, opts: &[&str], path: &str, fallback: &Path| {
        let out = Command::new(program)
            .args(opts)
            .arg(path)
            .current_dir(&root)
            .env("CCB_CANON_FALLBACK", fallback)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    };
    let mut fast = 0;
    for (name, opts) in forms {
        let ours = bin.path().join(name);
        let gnu = Path::new("/usr/bin").join(name);
        for path in &paths {
            let expected = answer(&gnu, opts, path, fallback.path());
            let got = answer(&ours, opts, path, fallback.path());
            assert_eq!(got, expected, "{name} {opts:?} {path:?}");
            // Without the image's program to fall back on, what is answered is answered by
            // ccb-canon itself, and only ever GNU's answer.
            let alone = answer(&ours, opts, path, Path::new("/nonexistent"));
            if alone.1 {
                assert_eq!(alone, expected, "{name} {opts:?} {path:?} (alone)");
                fast += 1;
            }
        }
    }
    // mkinitramfs's paths (absolute, through linked directories, the last component missing)
    // are answered without the fallback.
    for (name, opt, path) in [
        ("readlink", "-f", format!("{root}/abs/sub/g")),
        ("readlink", "-f", format!("{root}/chain1")),
        ("readlink", "-f", format!("{root}/up/missing")),
        ("readlink", "-f", format!("{root}/dots")),
        ("realpath", "-s", format!("{root}/abs/sub/g")),
        ("realpath", "-ms", format!("//{root}/missing/x/../y")),
    ] {
        let alone = answer(
            &bin.path().join(name),
            &[opt],
            &path,
            Path::new("/nonexistent"),
        );
        assert!(alone.1, "{name} {opt} {path} needed the fallback");
    }
    assert!(fast > 200, "only {fast} answers without the fallback");
}

/// Every entry under `dir` with its type and mode, for comparing two trees.
fn listing(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<(String, u32)> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::symlink_metadata(e.path()).unwrap().mode())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn mkdir_p_makes_what_gnu_mkdir_makes_and_fails_where_it_fails() {
    let fallback = tempfile::tempdir().unwrap();
    std::fs::copy("/usr/bin/mkdir", fallback.path().join("mkdir.image")).unwrap();
    let bin = tempfile::tempdir().unwrap();
    let ours = bin.path().join("mkdir");
    std::fs::write(&ours, native::CANON).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Each case on a fresh copy of the same tree: a directory, a file, a link to the directory.
    let fresh = || {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("have/sub")).unwrap();
        std::fs::write(d.path().join("have/file"), "").unwrap();
        std::os::unix::fs::symlink("have", d.path().join("link")).unwrap();
        d
    };
    for (case, umask) in [
        ("new", "022"),
        ("new/deeper/still", "022"),
        ("have", "022"),
        ("have/sub", "022"),
        ("have/sub/new", "022"),
        ("link/new/x", "022"),
        ("have/file", "022"),
        ("have/file/x", "022"),
        ("//new//double//", "022"),
        ("new/./dot", "022"),
        ("new/../up", "022"),
        ("new/x", "077"),
        ("new/x", "377"),
    ] {
        let (gnu_tree, our_tree) = (fresh(), fresh());
        let run = |program: &Path, tree: &Path, fb: &Path| {
            // The umask is the shell's, as mkinitramfs's would be.
            Command::new("sh")
                .arg("-c")
                .arg(format!("umask {umask}; exec \"$0\" -p \"$1\""))
                .arg(program)
                .arg(format!("{}/{case}", tree.display()))
                .env("CCB_CANON_FALLBACK", fb)
                .status()
                .unwrap()
                .success()
        };
        let gnu = run(
            Path::new("/usr/bin/mkdir"),
            gnu_tree.path(),
            fallback.path(),
        );
        let got = run(&ours, our_tree.path(), fallback.path());
        assert_eq!(got, gnu, "mkdir -p {case} (umask {umask})");
        assert_eq!(
            listing(our_tree.path()),
            listing(gnu_tree.path()),
            "mkdir -p {case} (umask {umask})"
        );
    }
    // mkinitramfs's own calls are made without the image's mkdir.
    let tree = fresh();
    let alone = Command::new(&ours)
        .arg("-p")
        .arg(
            tree.path()
                .join("var/tmp/mkinitramfs_x//usr/lib/modules/6.1.0/kernel"),
        )
        .env("CCB_CANON_FALLBACK", "/nonexistent")
        .status()
        .unwrap();
    assert!(alone.success());
    assert!(
        tree.path()
            .join("var/tmp/mkinitramfs_x/usr/lib/modules/6.1.0/kernel")
            .is_dir()
    );
}
