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
        &["build", "--dry-run"],
        &["check"],
        &["cache", "ls"],
        &["cache", "ls", "--format", "json"],
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
