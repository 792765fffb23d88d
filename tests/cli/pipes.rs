//! A closed stdout (`ccb … | head -1`) ends every listing command quietly with status 0:
//! all output goes through one place that treats a broken pipe as the reader being done. A
//! command that changes things is the exception: it runs to its end with its output discarded
//! and exits by its real result.

use std::process::Stdio;

use crate::common::{Env, repo};

/// Runs ccb with its stdout a pipe whose reading end is already closed.
fn into_closed_pipe(env: &Env, args: &[&str]) -> (i32, String) {
    closed(env.cmd().args(args))
}

#[test]
fn every_listing_command_ends_quietly_on_a_closed_pipe() {
    let env = Env::new();
    let root = repo().display().to_string();
    let listings: &[&[&str]] = &[
        &["query", "targets"],
        &["query", "targets", "--format", "json"],
        &["query", "manifest", "debian12"],
        &["query", "elements", "debian12"],
        &["query", "deps", "debian12"],
        &["query", "rdeps", "//images:debian12"],
        &["query", "graph"],
        &["query", "hash", "debian12"],
        &["query", "explain", "debian12"],
        &["query", "manifest", "debian12", "--format", "json"],
        &["query", "elements", "debian12", "--format", "json"],
        &["query", "deps", "debian12", "--format", "json"],
        &["query", "rdeps", "//images:debian12", "--format", "json"],
        &["query", "hash", "debian12", "--format", "json"],
        &["query", "explain", "debian12", "--format", "json"],
        &["build", "--dry-run"],
        &["build", "--dry-run", "--format", "json"],
        &["check"],
        &["check", "--format", "json"],
        &["lint"],
        &["lint", "--format", "json"],
        &["doctor"],
        &["doctor", "--format", "json"],
        &["cache", "rm", "debian12"],
        &["cache", "rm", "debian12", "--format", "json"],
        &["cache", "ls"],
        &["cache", "ls", "--format", "json"],
        &["cache", "verify"],
        &["cache", "verify", "--format", "json"],
        &["cache", "gc", "--dry-run"],
        &["cache", "gc", "--dry-run", "--format", "json"],
        &["query", "graph", "--format", "json"],
        &["--help"],
    ];
    for args in listings {
        let mut full = vec!["--root", root.as_str()];
        full.extend_from_slice(args);
        let (code, stderr) = into_closed_pipe(&env, &full);
        assert_eq!(code, 0, "ccb {}: exit {code}\n{stderr}", args.join(" "));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "ccb {}:\n{stderr}",
            args.join(" ")
        );
    }
}

/// `query elements -e` needs no project: run from a directory that is none.
#[test]
fn element_listings_outside_a_project_end_quietly_on_a_closed_pipe() {
    let env = Env::new();
    let elements = repo().join("elements");
    let elements = elements.to_str().unwrap();
    for format in ["text", "json"] {
        let args = [
            "query",
            "elements",
            "--element-path",
            elements,
            "-e",
            "debian",
            "cc-motd",
            "--format",
            format,
        ];
        let (code, stderr) = into_closed_pipe(&env, &args);
        assert_eq!(code, 0, "ccb {}: exit {code}\n{stderr}", args.join(" "));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "ccb {}:\n{stderr}",
            args.join(" ")
        );
    }
}

const LOCAL_SITE: &str = "{ here = { name = \"Here\", baremetal = true, kind = 'local, path = \"site\", formats = ['qcow2, 'raw] } }\n";

/// What is live in the local site's scope: image name → version.
fn live(p: &crate::publish::Project, scope: &str) -> serde_json::Map<String, serde_json::Value> {
    match std::fs::read_to_string(p.root().join("site").join(scope).join("current")) {
        Ok(text) => serde_json::from_str(&text).unwrap(),
        Err(_) => serde_json::Map::new(),
    }
}

/// A dry run is a listing: it ends at the closed pipe, and nothing reaches the site.
#[test]
fn publish_dry_run_ends_quietly_on_a_closed_pipe() {
    let p = crate::publish::Project::new(LOCAL_SITE);
    let images = p.images(&["CC-Pa", "CC-Pb"], 20_000, 3);
    let images = images.to_str().unwrap();
    for format in ["text", "json"] {
        let args = [
            "publish",
            "--outputs",
            images,
            "CC-Pa",
            "CC-Pb",
            "--scope",
            "prod",
            "--dry-run",
            "--format",
            format,
        ];
        let mut cmd = p.cmd(&args);
        let (code, stderr) = closed(&mut cmd);
        assert_eq!(code, 0, "ccb {}: exit {code}\n{stderr}", args.join(" "));
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(live(&p, "prod").is_empty(), "a dry run publishes nothing");
}

/// `ccb publish … | head -1`: the reader leaves after the first image's line, and the
/// publish still does all of its work (the second image too) and exits by its result.
#[test]
fn a_publish_into_a_closed_pipe_still_publishes_every_image() {
    let p = crate::publish::Project::new(LOCAL_SITE);
    let images = p.images(&["CC-Pa", "CC-Pb"], 20_000, 4);
    let images = images.to_str().unwrap();
    let args = [
        "publish",
        "--outputs",
        images,
        "CC-Pa",
        "CC-Pb",
        "--scope",
        "prod",
    ];
    let (code, stderr) = closed(&mut p.cmd(&args));
    assert_eq!(code, 0, "exit {code}\n{stderr}");
    let live = live(&p, "prod");
    assert!(
        live.contains_key("CC-Pa") && live.contains_key("CC-Pb"),
        "both images are live: {live:?}\n{stderr}"
    );

    // Pruning removes every old version, however early the reader left.
    let more = p.images(&["CC-Pa", "CC-Pb"], 20_000, 5);
    p.ccb(&[
        "publish",
        "--outputs",
        more.to_str().unwrap(),
        "CC-Pa",
        "CC-Pb",
        "--scope",
        "prod",
        "-q",
    ])
    .ok();
    let versions = p.root().join("site/prod/versions");
    let count = |name: &str| {
        std::fs::read_dir(&versions)
            .unwrap()
            .filter(|v| {
                v.as_ref()
                    .unwrap()
                    .path()
                    .join(format!("{name}.manifest"))
                    .exists()
            })
            .count()
    };
    assert_eq!((count("CC-Pa"), count("CC-Pb")), (2, 2));
    let (code, stderr) = closed(&mut p.cmd(&[
        "versions", "prune", "--site", "here", "--scope", "prod", "--keep", "1",
    ]));
    assert_eq!(code, 0, "exit {code}\n{stderr}");
    assert_eq!(
        (count("CC-Pa"), count("CC-Pb")),
        (1, 1),
        "both images' old versions are pruned"
    );
}

/// A failure is not hidden by the closed pipe: the command exits by its real result.
#[test]
fn a_failed_publish_into_a_closed_pipe_exits_with_its_failure() {
    let p = crate::publish::Project::new(LOCAL_SITE);
    let images = p.images(&["CC-Pa"], 20_000, 6);
    let file = images.join("CC-Pa.qcow2");
    let mut data = std::fs::read(&file).unwrap();
    data[100] ^= 1;
    std::fs::write(&file, data).unwrap();
    let (code, stderr) = closed(&mut p.cmd(&[
        "publish",
        "--outputs",
        images.to_str().unwrap(),
        "CC-Pa",
        "--scope",
        "prod",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not match its recorded SHA-256"),
        "{stderr}"
    );
}

/// Runs a prepared ccb command with its stdout a pipe whose reading end is already closed.
fn closed(cmd: &mut std::process::Command) -> (i32, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ccb");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for ccb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The listings that read an image or a site (`inspect ls|cat` of a disk, its checks,
/// `versions list|prune`), and `update` of a project with nothing to pin.
#[test]
fn image_and_site_listings_end_quietly_on_a_closed_pipe() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let disk = crate::inspect::disk(dir.path(), "CC-Pipe", 0o755, "2.36-9");
    let disk = disk.to_str().unwrap();
    let project = dir.path().join("project");
    crate::common::write(project.join("manifests/images.ncl"), "{}\n");
    crate::common::write(
        project.join("manifests/sites.ncl"),
        "{ here = { name = \"Here\", baremetal = true, kind = 'local, path = \"site\", formats = ['raw] } }\n",
    );
    let root = project.display().to_string();
    let listings: &[&[&str]] = &[
        &["--root", &root, "inspect", "ls", disk, "/"],
        &["--root", &root, "inspect", "ls", disk, "/usr/bin"],
        &[
            "--root",
            &root,
            "inspect",
            "cat",
            disk,
            "/var/lib/dpkg/status",
        ],
        &[
            "--root", &root, "versions", "list", "--site", "here", "--scope", "prod",
        ],
        &[
            "--root", &root, "versions", "list", "--site", "here", "--scope", "prod", "--format",
            "json",
        ],
        &[
            "--root", &root, "inspect", "ls", disk, "/", "--format", "json",
        ],
        &[
            "--root",
            &root,
            "inspect",
            "cat",
            disk,
            "/var/lib/dpkg/status",
            "--format",
            "json",
        ],
        &["--root", &root, "inspect", disk],
        &["--root", &root, "inspect", disk, "--format", "json"],
        &[
            "--root",
            &root,
            "versions",
            "prune",
            "--site",
            "here",
            "--scope",
            "prod",
            "--keep",
            "1",
            "--dry-run",
        ],
        &[
            "--root",
            &root,
            "versions",
            "prune",
            "--site",
            "here",
            "--scope",
            "prod",
            "--keep",
            "1",
            "--dry-run",
            "--format",
            "json",
        ],
        &["--root", &root, "update", "--dry-run"],
        &["--root", &root, "update", "--dry-run", "--format", "json"],
    ];
    for args in listings {
        let (code, stderr) = into_closed_pipe(&env, args);
        assert_eq!(code, 0, "ccb {}: exit {code}\n{stderr}", args.join(" "));
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "ccb {}:\n{stderr}",
            args.join(" ")
        );
    }
}
