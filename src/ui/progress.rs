//! Build progress: one live line per running action on a terminal (action, phase/script,
//! elapsed), plain lines otherwise (CI logs, pipes), nothing but errors with `-q`. `-v`
//! streams the output of every script, prefixed by its action.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

enum Mode {
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<String, ProgressBar>,
    },
    Lines,
    Quiet,
}

pub struct Progress {
    mode: Mutex<Mode>,
    /// The last tenth of each transfer reported as a line (plain mode).
    tenths: Mutex<BTreeMap<String, u64>>,
    pub verbose: bool,
}

/// The one terminal decision: live progress and colours are drawn only when stderr is a
/// terminal, not a dumb one (`TERM=dumb`), not a CI log (`CI`), and `NO_COLOR` is unset.
pub fn live_terminal() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
        && std::env::var_os("CI").is_none()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Progress {
    pub fn new(quiet: bool, verbose: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if live_terminal() {
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: BTreeMap::new(),
            }
        } else {
            Mode::Lines
        };
        Self {
            mode: Mutex::new(mode),
            tenths: Mutex::new(BTreeMap::new()),
            verbose,
        }
    }

    /// Draws byte bars on a live terminal and nothing elsewhere (what a [`Transfer`] shows:
    /// an upload's bar, never a line per tenth in a log).
    fn bars_only() -> Self {
        let mut progress = Self::new(false, false);
        if matches!(
            progress.mode.get_mut().unwrap_or_else(|e| e.into_inner()),
            Mode::Lines
        ) {
            progress.mode = Mutex::new(Mode::Quiet);
        }
        progress
    }

    fn line(mode: &Mode, text: &str) {
        match mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Lines => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
            Mode::Quiet => {}
        }
    }

    pub fn started(&self, id: &str) {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *mode {
            Mode::Bars { multi, bars } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:.bold} {wide_msg} {elapsed:>5}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(id.to_string());
                bar.set_message("starting");
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(id.to_string(), bar);
            }
            m => Self::line(m, &format!("   started {id}")),
        }
    }

    pub fn step(&self, id: &str, phase: &str, element: &str, name: &str) {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match &*mode {
            Mode::Bars { bars, .. } => {
                if let Some(bar) = bars.get(id) {
                    bar.set_message(format!("{phase}/{name} ({element})"));
                }
            }
            m => Self::line(m, &format!("           {id}: {phase}/{name} ({element})")),
        }
    }

    /// A download's progress: a byte bar on a terminal, a line per tenth otherwise.
    pub fn transfer(&self, id: &str, done: u64, total: Option<u64>) {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match &*mode {
            Mode::Bars { bars, .. } => {
                if let Some(bar) = bars.get(id) {
                    if let Some(total) = total
                        && bar.length() != Some(total)
                    {
                        bar.set_length(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                    }
                    bar.set_position(done);
                }
            }
            Mode::Lines => {
                let Some(total) = total.filter(|t| *t > 0) else {
                    return;
                };
                let tenth = done.saturating_mul(10) / total;
                let mut tenths = self.tenths.lock().unwrap_or_else(|e| e.into_inner());
                if tenths.get(id) != Some(&tenth) {
                    tenths.insert(id.to_string(), tenth);
                    Self::line(
                        &mode,
                        &format!("           {id}: {}% of {}", tenth * 10, human_bytes(total)),
                    );
                }
            }
            Mode::Quiet => {}
        }
    }

    pub fn output(&self, id: &str, line: &str) {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        Self::line(&mode, &format!("{id} | {line}"));
    }

    pub fn warn(&self, id: &str, message: &str) {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match &*mode {
            Mode::Quiet => {
                let _ = writeln!(std::io::stderr(), "warning: {id}: {message}");
            }
            m => Self::line(m, &format!("warning: {id}: {message}")),
        }
    }

    /// An action ended: `verb` is "built", "cached", "failed", "cancelled".
    pub fn finished(&self, id: &str, verb: &str, elapsed: Option<Duration>) {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let text = match elapsed {
            Some(d) => format!("{verb:>10} {id} in {}", human_duration(d)),
            None => format!("{verb:>10} {id}"),
        };
        if let Mode::Bars { bars, .. } = &mut *mode
            && let Some(bar) = bars.remove(id)
        {
            bar.finish_and_clear();
        }
        Self::line(&mode, &text);
    }

    /// Takes an action's live line away without a line of its own.
    pub fn clear(&self, id: &str) {
        let mut mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        if let Mode::Bars { bars, .. } = &mut *mode
            && let Some(bar) = bars.remove(id)
        {
            bar.finish_and_clear();
        }
    }

    /// Prints a block (an error report) without tearing the live lines.
    pub fn block(&self, text: &str) {
        let mode = self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match &*mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.suspend(|| writeln!(std::io::stderr(), "{text}"));
            }
            _ => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }
}

/// The bytes of one transfer (an upload, a download), counted by the threads that move them
/// and drawn as a bar of a [`Progress`] where [`live_terminal`] says so (never with `-q`).
pub struct Transfer {
    label: String,
    total: u64,
    done: AtomicU64,
    progress: Option<Progress>,
}

impl Transfer {
    pub fn new(label: &str, total: u64, visible: bool) -> Self {
        let progress = visible.then(|| {
            let p = Progress::bars_only();
            p.started(label);
            p.transfer(label, 0, Some(total));
            p
        });
        Self {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            progress,
        }
    }

    /// A transfer counted but never drawn.
    pub fn hidden() -> Self {
        Self::new("", 0, false)
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.draw(done);
    }

    /// Takes back bytes of an attempt that will be sent again.
    pub fn sub(&self, n: u64) {
        let before = self.done.fetch_sub(n.min(self.done()), Ordering::Relaxed);
        self.draw(before.saturating_sub(n));
    }

    /// Sets the count (a download that reports its position).
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.draw(done);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        if let Some(p) = &self.progress {
            p.clear(&self.label);
        }
    }

    fn draw(&self, done: u64) {
        if let Some(p) = &self.progress {
            p.transfer(&self.label, done, Some(self.total));
        }
    }
}

/// `538 MiB`, `1.6 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let m = (s / 60.0).floor();
        format!("{}m{:02.0}s", m as u64, s - m * 60.0)
    }
}
