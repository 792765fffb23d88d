//! Output: data to stdout, status and warnings to stderr. A closed stdout ends a listing
//! quietly (`ccb query targets | head` is normal use, not an error); a command that changes
//! things goes on to its end with its output discarded, so that a reader leaving early never
//! leaves half a publish behind.

pub mod progress;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a closed stdout (the reader went away: `| head -1`) means for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClosedPipe {
    /// The reader has what it wanted: end at once, status 0 (listings, queries).
    #[default]
    End,
    /// Carry on with the output discarded and exit by the command's real result (build, test,
    /// publish, update, versions promote/rollback/prune, cache gc/rm, fetch): stopping them
    /// half-way would leave work undone behind an exit status of 0.
    Discard,
}

/// Set once stdout has been found closed under [`ClosedPipe::Discard`]: later output is
/// dropped without another write.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// `--format`: text for people, JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// The one output of a command (in the spirit of cargo's `Shell`): data to stdout (a closed
/// pipe handled as [`ClosedPipe`] says), status lines and warnings to stderr, progress drawn
/// only where [`progress::live_terminal`] says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shell {
    /// `-q`: only data and errors.
    pub quiet: bool,
    /// `-v` count.
    pub verbose: u8,
    /// What a closed stdout does: chosen per command by the command line.
    pub closed_pipe: ClosedPipe,
}

impl Shell {
    /// The output of a listing: a closed stdout ends the command.
    pub fn new(quiet: bool, verbose: u8) -> Self {
        Self {
            quiet,
            verbose,
            closed_pipe: ClosedPipe::End,
        }
    }

    /// This shell with `closed_pipe` as what a closed stdout does.
    pub fn on_closed_pipe(self, closed_pipe: ClosedPipe) -> Self {
        Self {
            closed_pipe,
            ..self
        }
    }

    /// Data on stdout.
    pub fn out(&self, text: &str) {
        self.out_bytes(text.as_bytes())
    }

    /// Raw bytes (a file of an image) on stdout.
    pub fn out_bytes(&self, data: &[u8]) {
        if STDOUT_CLOSED.load(Ordering::Relaxed) {
            return;
        }
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_all(data).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                match self.closed_pipe {
                    ClosedPipe::End => std::process::exit(0),
                    ClosedPipe::Discard => {
                        STDOUT_CLOSED.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
            // Any other stdout failure (disk full on a redirect) is reported once.
            let _ = writeln!(std::io::stderr(), "error: failed to write to stdout: {e}");
            std::process::exit(1);
        }
    }

    /// A JSON document (pretty, one trailing newline) on stdout.
    pub fn out_json<T: serde::Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(mut s) => {
                s.push('\n');
                self.out(&s);
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

    /// A status line on stderr, unless quiet.
    pub fn status(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }

    /// A warning on stderr, always.
    pub fn warn(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "warning: {text}");
    }

    /// A command's failure on stderr: its diagnostic (none when already reported), and what
    /// to do for an environment error.
    pub fn error(&self, report: Option<&miette::Report>, hint: Option<&str>) {
        let mut stderr = std::io::stderr().lock();
        if let Some(report) = report {
            let _ = writeln!(stderr, "{report:?}");
        }
        if let Some(hint) = hint {
            let _ = writeln!(stderr, "  help: {hint}");
        }
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

/// A key, digest or commit shortened for text output to its first `width` characters (whole
/// when shorter, or not ASCII).
pub fn short(hex: &str, width: usize) -> &str {
    if hex.is_ascii() && hex.len() > width {
        &hex[..width]
    } else {
        hex
    }
}

/// The width of an action key or store entry in text listings.
pub const KEY_WIDTH: usize = 16;
/// The width of a commit or digest beside a name (`source@0123456789ab`).
pub const COMMIT_WIDTH: usize = 12;
