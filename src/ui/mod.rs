//! Output: data to stdout, status and warnings to stderr, and a closed stdout ends the program
//! quietly (`ccb query targets | head` is normal use, not an error).

pub mod progress;

use std::io::Write;

/// `--format`: text for people, JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Writes data to stdout; on a closed pipe, exits 0 at once.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Any other stdout failure (disk full on a redirect) is reported once.
        let _ = writeln!(std::io::stderr(), "error: failed to write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Writes a JSON document (pretty, one trailing newline) to stdout.
pub fn out_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(mut s) => {
            s.push('\n');
            out(&s);
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: failed to encode JSON output: {e}"
            );
            std::process::exit(1);
        }
    }
}

/// A status line on stderr (suppressed by `-q`).
pub fn status(quiet: bool, text: &str) {
    if !quiet {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

/// A warning on stderr; never suppressed.
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "warning: {text}");
}
