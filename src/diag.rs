//! Diagnostics that point into source files (manifests, element files), rendered by miette.
//!
//! Nickel reports errors as codespan diagnostics over its own file database; [`SourceDiagnostic`]
//! owns everything it needs (so it is `Send` and outlives the Nickel program), and is also what
//! ccb's own semantic checks produce, so both kinds of error look the same.

use std::fmt;
use std::path::Path;

use codespan_reporting::diagnostic::Severity as CsSeverity;
use miette::{Diagnostic, LabeledSpan, NamedSource, Severity, SourceSpan};

/// One diagnostic: a message, optionally a source file with labelled spans, help, and related
/// diagnostics (Nickel labels a second file, e.g. the contract in `ccb.ncl`, that way).
#[derive(Debug, Clone)]
pub struct SourceDiagnostic {
    pub message: String,
    pub source: Option<NamedSource<String>>,
    pub labels: Vec<LabeledSpan>,
    pub help: Option<String>,
    pub related: Vec<SourceDiagnostic>,
    pub severity: Severity,
}

impl SourceDiagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
            labels: Vec::new(),
            help: None,
            related: Vec::new(),
            severity: Severity::Error,
        }
    }

    /// Points at `span` (byte offsets) of `contents`, a file shown as `name`.
    pub fn with_source(
        mut self,
        name: &str,
        contents: String,
        span: std::ops::Range<usize>,
        label: impl Into<String>,
    ) -> Self {
        let len = contents.len();
        let start = span.start.min(len);
        let end = span.end.clamp(start, len);
        self.source = Some(NamedSource::new(name, contents).with_language(language_of(name)));
        self.labels.push(LabeledSpan::new_primary_with_span(
            Some(label.into()),
            SourceSpan::from(start..end),
        ));
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Converts Nickel's codespan diagnostics for one error into one miette diagnostic: the first
    /// diagnostic's primary file becomes the source, labels in other files and further
    /// diagnostics (call-stack entries) become related diagnostics.
    pub fn from_nickel(
        diags: Vec<nickel_lang_core::error::Diagnostic<nickel_lang_core::files::FileId>>,
        files: &nickel_lang_core::files::Files,
    ) -> Self {
        let mut iter = diags.into_iter();
        let Some(first) = iter.next() else {
            return Self::new("manifest evaluation failed");
        };
        let mut main = convert_one(first, files);
        main.related.extend(iter.map(|d| convert_one(d, files)));
        main
    }
}

fn language_of(name: &str) -> &'static str {
    if name.ends_with(".toml") {
        "toml"
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        "yaml"
    } else {
        "nickel"
    }
}

fn file_display_name(
    files: &nickel_lang_core::files::Files,
    id: nickel_lang_core::files::FileId,
) -> String {
    let name = files.name(id);
    crate::fsutil::display_path(Path::new(name))
}

fn convert_one(
    diag: nickel_lang_core::error::Diagnostic<nickel_lang_core::files::FileId>,
    files: &nickel_lang_core::files::Files,
) -> SourceDiagnostic {
    use nickel_lang_core::error::LabelStyle;
    use std::collections::BTreeMap;

    let severity = match diag.severity {
        CsSeverity::Warning => Severity::Warning,
        CsSeverity::Note | CsSeverity::Help => Severity::Advice,
        _ => Severity::Error,
    };
    // Group labels by file, primary file first.
    let primary_file = diag
        .labels
        .iter()
        .find(|l| l.style == LabelStyle::Primary)
        .or_else(|| diag.labels.first())
        .map(|l| l.file_id);
    let mut by_file: BTreeMap<usize, (nickel_lang_core::files::FileId, Vec<LabeledSpan>)> =
        BTreeMap::new();
    let mut order = Vec::new();
    for label in &diag.labels {
        let key = order
            .iter()
            .position(|f| *f == label.file_id)
            .unwrap_or_else(|| {
                order.push(label.file_id);
                order.len() - 1
            });
        let text = if label.message.is_empty() {
            None
        } else {
            Some(label.message.clone())
        };
        let span = SourceSpan::from(label.range.clone());
        let labeled = if label.style == LabelStyle::Primary {
            LabeledSpan::new_primary_with_span(text, span)
        } else {
            LabeledSpan::new_with_span(text, span)
        };
        by_file
            .entry(key)
            .or_insert_with(|| (label.file_id, Vec::new()))
            .1
            .push(labeled);
    }
    let mut help_lines: Vec<String> = Vec::new();
    let mut lines = diag.message.lines();
    let message = lines.next().unwrap_or("error").to_string();
    help_lines.extend(lines.map(str::to_string));
    help_lines.extend(diag.notes.iter().cloned());

    let mut out = SourceDiagnostic::new(message);
    out.severity = severity;
    if !help_lines.is_empty() {
        out.help = Some(help_lines.join("\n"));
    }
    for (_, (file_id, labels)) in by_file {
        let name = file_display_name(files, file_id);
        let source = NamedSource::new(&name, files.source(file_id).to_string())
            .with_language(language_of(&name));
        if Some(file_id) == primary_file && out.source.is_none() {
            out.source = Some(source);
            out.labels = labels;
        } else {
            let mut rel = SourceDiagnostic::new(format!("see {name}"));
            rel.severity = Severity::Advice;
            rel.source = Some(source);
            rel.labels = labels;
            out.related.push(rel);
        }
    }
    out
}

impl fmt::Display for SourceDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceDiagnostic {}

impl Diagnostic for SourceDiagnostic {
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|d| d as &dyn Diagnostic)))
        }
    }
}

/// A [`SourceDiagnostic`] in a form that crosses a process boundary (the manifest evaluation
/// runs in a child process: see `manifest::eval`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WireDiagnostic {
    message: String,
    /// The file's display name and contents.
    source: Option<(String, String)>,
    /// (label, byte offset, length, primary).
    labels: Vec<(Option<String>, usize, usize, bool)>,
    help: Option<String>,
    related: Vec<WireDiagnostic>,
    /// 0 advice, 1 warning, 2 error.
    severity: u8,
}

impl From<&SourceDiagnostic> for WireDiagnostic {
    fn from(d: &SourceDiagnostic) -> Self {
        Self {
            message: d.message.clone(),
            source: d
                .source
                .as_ref()
                .map(|s| (s.name().to_string(), s.inner().clone())),
            labels: d
                .labels
                .iter()
                .map(|l| {
                    (
                        l.label().map(str::to_string),
                        l.offset(),
                        l.len(),
                        l.primary(),
                    )
                })
                .collect(),
            help: d.help.clone(),
            related: d.related.iter().map(WireDiagnostic::from).collect(),
            severity: match d.severity {
                Severity::Advice => 0,
                Severity::Warning => 1,
                Severity::Error => 2,
            },
        }
    }
}

impl From<WireDiagnostic> for SourceDiagnostic {
    fn from(w: WireDiagnostic) -> Self {
        let mut d = SourceDiagnostic::new(w.message);
        d.source = w
            .source
            .map(|(name, text)| NamedSource::new(&name, text).with_language(language_of(&name)));
        d.labels = w
            .labels
            .into_iter()
            .map(|(text, offset, len, primary)| {
                let span = SourceSpan::from(offset..offset + len);
                if primary {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                }
            })
            .collect();
        d.help = w.help;
        d.related = w.related.into_iter().map(SourceDiagnostic::from).collect();
        d.severity = match w.severity {
            0 => Severity::Advice,
            1 => Severity::Warning,
            _ => Severity::Error,
        };
        d
    }
}

/// "did you mean" over a list of candidates, by normalized Levenshtein similarity.
pub fn did_you_mean(word: &str, candidates: &[String]) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    let best = candidates
        .iter()
        .map(|c| {
            (
                strsim::normalized_levenshtein(&lower, &c.to_ascii_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score > 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    Some(format!("did you mean `{}`?", best.1))
}
