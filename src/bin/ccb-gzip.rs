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
    let mut args = std::env::args_os();
    // The name it was started by (the wrapper passes its own): only `gzip` compresses.
    let name = args.next().unwrap_or_default();
    let name = std::path::Path::new(&name)
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| "gzip".into());
    let Some(fallback) = args.next() else {
        let _ = writeln!(io::stderr(), "usage: ccb-gzip FALLBACK [GZIP ARGUMENTS]");
        return ExitCode::from(2);
    };
    let args: Vec<OsString> = args.collect();
    // GNU gzip also reads options from $GZIP, and POSIXLY_CORRECT stops its options at the
    // first file: with either set, the image's gzip decides.
    let env_options = ["GZIP", "POSIXLY_CORRECT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let invocation = if name != "gzip" || env_options {
        Invocation::Other
    } else {
        Invocation::parse(&args)
    };
    // Only a regular file (or standard input) is compressed here: GNU gzip refuses a
    // directory or a device with its own message, before it writes anything.
    let invocation = match invocation {
        Invocation::Compress {
            input: Some(ref path),
            ..
        } if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) => Invocation::Other,
        other => other,
    };
    match invocation {
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
                .arg0(&name)
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
