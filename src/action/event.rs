//! The sandbox reports to its parent through JSON lines on its stdout.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum Event {
    /// A step starts.
    Step {
        phase: String,
        element: String,
        name: String,
    },
    /// One line of a step's output (only when output is streamed).
    Output { line: String },
    /// A step ended with `status` (0 is success).
    StepDone(StepRecord),
    /// Bytes of a download so far (a `fetch` action).
    Transfer { done: u64, total: Option<u64> },
    /// Something the operator should know that does not stop the build.
    Warning { message: String },
    /// A step's output said a command it called does not exist.
    MissingCommand(super::dib::MissingCommand),
    /// The step that failed, and its last lines of output.
    Failed {
        phase: String,
        element: String,
        name: String,
        status: String,
        tail: Vec<String>,
    },
    /// A failure of the engine itself (a mount, a copy), not of a script.
    Error(EngineFailure),
}

/// An engine failure as it crosses the sandbox's boundary: the message of its whole chain,
/// the OS error under it, and who has to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineFailure {
    pub message: String,
    /// The `errno` of the I/O error or system call under it, if any.
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub blame: Blame,
}

/// Who has to act on an engine failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Blame {
    /// The image's input (its elements, layout, files).
    #[default]
    Input,
    /// The host: a full disk, a permission, a read-only file system.
    Host,
    /// A program the engine runs is not installed on the host.
    MissingTool,
    /// A download failed: the network, or the server.
    Network,
    /// ccb itself.
    Bug,
}

/// OS errors the host's operator fixes (not the image's author): a full disk, a
/// permission, a read-only or failing file system, exhausted memory.
pub fn host_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOSPC
            | libc::EDQUOT
            | libc::EACCES
            | libc::EPERM
            | libc::EROFS
            | libc::EIO
            | libc::ENOMEM
    )
}

/// The error an engine failure reported by the sandbox stands for, in the parent.
#[derive(Debug, thiserror::Error)]
#[error("{}", failure.message)]
pub struct SandboxFailure {
    pub failure: EngineFailure,
    /// The OS error rebuilt from its `errno`, so the chain tells a full disk as any I/O
    /// error does.
    #[source]
    os: Option<std::io::Error>,
}

impl From<EngineFailure> for SandboxFailure {
    fn from(failure: EngineFailure) -> Self {
        let os = failure.errno.map(std::io::Error::from_raw_os_error);
        Self { failure, os }
    }
}

impl SandboxFailure {
    pub fn blame(&self) -> Blame {
        self.failure.blame
    }
}

/// A step as the action record keeps it (the record is the graph's).
pub use crate::graph::StepRecord;

/// Writes one event; the parent reads lines, so a write never splits one.
pub fn emit(event: &Event) {
    use std::io::Write;
    if let Ok(mut line) = serde_json::to_string(event) {
        line.push('\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}
