//! Hostile input: an image is the image's business, the host is not. ccb writes into image
//! trees from the host (install-static, install-bin, the chroot's policy-rc.d and dpkg
//! settings); links inside the image must resolve inside it, as they would after `chroot`.

use std::path::{Path, PathBuf};

use crate::common::{Env, copy_tree, repo, script, write};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The layered fixture plus a child whose elements plant links to host directories, and a
/// grandchild built on top of those links.
struct HostileProject {
    env: Env,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl HostileProject {
    fn new(host_static: &Path, host_dpkg: &Path, marker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layered");
        copy_tree(&repo().join("tests/fixtures/layered"), &root);
        let el = root.join("elements/tiny-hostile");
        write(el.join("README.rst"), "Plants links to host directories.\n");
        write(el.join("element-deps"), "install-static\n");
        // Runs in the chroot before install-static: an absolute link to a directory that
        // exists on the host (and not in the image), and dpkg's configuration directory
        // turned into one.
        script(
            el.join("install.d/05-plant-links"),
            &format!(
                "#!/bin/bash\nset -eu\nmkdir -p /opt\nln -s {} /opt/escape\n\
                 rm -rf /etc/dpkg/dpkg.cfg.d\nln -s {} /etc/dpkg/dpkg.cfg.d\n",
                host_static.display(),
                host_dpkg.display()
            ),
        );
        // /var/run is a link to /run in every Debian base.
        write(el.join("static/var/run").join(marker), "inside the image\n");
        write(el.join("static/opt/escape/owned"), "inside the image\n");
        let next = root.join("elements/tiny-after");
        write(
            next.join("README.rst"),
            "Builds on a tree with hostile links.\n",
        );
        script(
            next.join("install.d/30-after"),
            "#!/bin/bash\nset -eu\necho after > /etc/tiny-after\n",
        );
        let images = root.join("manifests/images.ncl");
        let text = std::fs::read_to_string(&images).unwrap();
        let text = text.trim_end().trim_end_matches('}').to_string()
            + r#"  tiny-hostile = { name = "Tiny-Hostile", description = "links to the host", from = "tiny", elements = ["tiny-hostile"] },
  tiny-after = { name = "Tiny-After", description = "on top of them", from = "tiny-hostile", elements = ["tiny-after"] },
}
"#;
        std::fs::write(&images, text).unwrap();
        Self {
            env: Env::new(),
            _dir: dir,
            root,
        }
    }

    fn build_layers(&self, target: &str) -> crate::common::Run {
        let elements = repo().join("elements");
        self.env.run(&[
            "--root",
            self.root.to_str().unwrap(),
            "build",
            target,
            "--until",
            "layer",
            "--format",
            "json",
            "--element-path",
            elements.to_str().unwrap(),
        ])
    }

    fn layer_tree(&self, id: &str) -> PathBuf {
        let ls = self
            .env
            .run(&[
                "--root",
                self.root.to_str().unwrap(),
                "cache",
                "ls",
                "--format",
                "json",
            ])
            .ok()
            .json();
        let key = ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id && e["current"] == true)
            .unwrap_or_else(|| panic!("no current entry for {id}: {ls}"))["key"]
            .as_str()
            .unwrap()
            .to_string();
        self.env.cache.path().join("layers").join(key).join("tree")
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn links_in_an_image_never_lead_the_builds_writes_onto_the_host() {
    assert!(is_root(), "builds root filesystems: run as root");
    let host_static = tempfile::tempdir_in("/var/tmp").unwrap();
    let host_dpkg = tempfile::tempdir_in("/var/tmp").unwrap();
    let marker = format!("ccb-escape-{}", std::process::id());
    let p = HostileProject::new(host_static.path(), host_dpkg.path(), &marker);

    p.build_layers("tiny-after").ok();

    assert!(
        !Path::new("/run").join(&marker).exists(),
        "static/var/run/{marker} was written into the host's /run"
    );
    assert_eq!(
        entries(host_static.path()),
        Vec::<String>::new(),
        "install-static wrote through the image's absolute link"
    );
    assert_eq!(
        entries(host_dpkg.path()),
        Vec::<String>::new(),
        "the chroot's dpkg settings were written through the image's link"
    );
    // Where the files went instead: the image's own /run and /opt/escape.
    let hostile = p.layer_tree("layer:tiny-hostile:amd64");
    assert_eq!(
        std::fs::read_to_string(hostile.join("run").join(&marker)).unwrap(),
        "inside the image\n"
    );
    assert!(hostile.join("opt/escape/owned").is_file());
    let after = p.layer_tree("layer:tiny-after:amd64");
    assert!(after.join("etc/tiny-after").is_file());
}

/// Runs ccb and waits at most `limit`: a hang is a failure of its own, not a stuck suite.
fn run_within(env: &Env, args: &[&str], limit: std::time::Duration) -> crate::common::Run {
    use std::process::Stdio;
    let mut child = env
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ccb {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap().into()
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn a_fifo_as_an_image_or_a_backing_file_is_refused_instead_of_waiting_for_a_writer() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top.qcow2");
    // -u: qemu-img does not open the backing file (it would block on the FIFO too).
    let st = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-b", "back.raw", "-F", "raw",
        ])
        .arg(&top)
        .arg("1M")
        .status()
        .expect("qemu-img is installed");
    assert!(st.success());
    mkfifo(&dir.path().join("back.raw"));
    let limit = std::time::Duration::from_secs(30);
    run_within(&env, &["inspect", "ls", top.to_str().unwrap(), "/"], limit)
        .fails()
        .stderr_has("not a regular file");
    let fifo = dir.path().join("image.raw");
    mkfifo(&fifo);
    run_within(&env, &["inspect", "ls", fifo.to_str().unwrap(), "/"], limit)
        .fails()
        .stderr_has("not a regular file");
}

#[test]
fn a_fifo_as_a_file_artifact_is_refused_and_leaves_nothing_in_the_store() {
    let f = crate::distros::Fixture::new();
    let fifo = f.served.join("tool.fifo");
    mkfifo(&fifo);
    write(
        f.project.join("manifests/artifacts.ncl"),
        &format!(
            "{{ tool = {{ url = \"file://{}\", sha256 = \"{}\" }} }}\n",
            fifo.display(),
            "0".repeat(64)
        ),
    );
    let centos = crate::distros::sha256(&f.served.join("centos/rootfs.tar.gz"));
    f.images_with(
        &centos,
        "  tool = { name = \"Tool\", from = \"fake-ubuntu\", elements = [\"ubuntu\"], artifacts = { TOOL = \"tool\" } },\n",
    );
    let elements = repo().join("elements");
    let root = f.project.to_str().unwrap();
    let args = [
        "--root",
        root,
        "fetch",
        "tool",
        "--element-path",
        elements.to_str().unwrap(),
    ];
    run_within(&f.env, &args, std::time::Duration::from_secs(60))
        .fails()
        .stderr_has("not a regular file");
    let artifacts = f.env.cache.path().join("artifacts");
    let left: Vec<String> = std::fs::read_dir(&artifacts)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".fetch-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(left, Vec::<String>::new(), "a half-fetched file was left");
}
