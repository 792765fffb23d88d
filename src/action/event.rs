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
    Error { message: String },
}

/// What the action record keeps of every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub phase: String,
    pub element: String,
    pub name: String,
    pub status: i32,
    pub duration_ms: u64,
}

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
