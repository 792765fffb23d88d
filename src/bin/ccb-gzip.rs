//! `ccb-gzip FALLBACK [GZIP ARGUMENTS]`: the image's `gzip` during a host-tools step
//! (src/gzip.rs says why). What [`gzip::Invocation`] knows is compressed here, on every
//! core; anything else runs FALLBACK, the image's own gzip, with the same arguments.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

#[path = "../gzip.rs"]
mod gzip;

use gzip::{Invocation, compress};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(fallback) = args.next() else {
        let _ = writeln!(io::stderr(), "usage: ccb-gzip FALLBACK [GZIP ARGUMENTS]");
        return ExitCode::from(2);
    };
    let args: Vec<OsString> = args.collect();
    match Invocation::parse(&args) {
        Invocation::Compress { level, input } => {
            let stdout = io::stdout().lock();
            let out = io::BufWriter::with_capacity(1 << 20, stdout);
            let done = match &input {
                Some(path) => std::fs::File::open(path)
                    .and_then(|f| compress(io::BufReader::with_capacity(1 << 20, f), out, level)),
                None => compress(io::stdin().lock(), out, level),
            };
            match done {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    let what = input.map_or("stdin".into(), |p| p.display().to_string());
                    let _ = writeln!(io::stderr(), "gzip (ccb-gzip): {what}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::Other => {
            let e = std::process::Command::new(&fallback)
                .arg0("gzip")
                .args(&args)
                .exec();
            let _ = writeln!(
                io::stderr(),
                "gzip (ccb-gzip): could not run the image's gzip ({}): {e}",
                std::path::Path::new(&fallback).display()
            );
            ExitCode::FAILURE
        }
    }
}
