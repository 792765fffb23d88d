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
    out_bytes(text.as_bytes())
}

/// Writes raw bytes (a file of an image) to stdout; on a closed pipe, exits 0 at once.
pub fn out_bytes(data: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(data).and_then(|()| stdout.flush()) {
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

/// A command's failure on stderr: its diagnostic (none when already reported), and what to
/// do for an environment error.
pub fn error(report: Option<&miette::Report>, hint: Option<&str>) {
    let mut stderr = std::io::stderr().lock();
    if let Some(report) = report {
        let _ = writeln!(stderr, "{report:?}");
    }
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "  help: {hint}");
    }
}

/// A warning on stderr; never suppressed.
pub fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "warning: {text}");
}

/// The one output of a command (in the spirit of cargo's `Shell`): data to stdout through
/// [`out`] (a closed pipe ends the command quietly), status lines and warnings to stderr,
/// progress drawn only where [`progress::live_terminal`] says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shell {
    /// `-q`: only data and errors.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Shell {
    pub fn new(quiet: bool, verbose: u8) -> Self {
        Self { quiet, verbose }
    }

    /// Data on stdout.
    pub fn out(&self, text: &str) {
        out(text)
    }

    /// A JSON document on stdout.
    pub fn out_json<T: serde::Serialize>(&self, value: &T) {
        out_json(value)
    }

    /// A status line on stderr, unless quiet.
    pub fn status(&self, text: &str) {
        status(self.quiet, text)
    }

    /// A warning on stderr, always.
    pub fn warn(&self, text: &str) {
        warn(text)
    }

    /// An error that does not end the command (the others go on), rendered in full.
    pub fn error_report(&self, report: &miette::Report) {
        let _ = writeln!(std::io::stderr(), "{report:?}");
    }

    /// The live progress of running actions.
    pub fn progress(&self) -> progress::Progress {
        progress::Progress::new(self.quiet, self.verbose > 0)
    }
}
