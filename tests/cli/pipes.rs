//! A closed stdout (`ccb … | head -1`) ends every listing command quietly with status 0:
//! all output goes through one place that treats a broken pipe as the reader being done.

use std::process::Stdio;

use crate::common::{Env, repo};

/// Runs ccb with its stdout a pipe whose reading end is already closed.
fn into_closed_pipe(env: &Env, args: &[&str]) -> (i32, String) {
    let mut child = env
        .cmd()
        .args(args)
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
        &["cache", "rm", "debian12"],
        &["cache", "ls"],
        &["cache", "ls", "--format", "json"],
        &["cache", "verify"],
        &["cache", "gc", "--dry-run"],
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
