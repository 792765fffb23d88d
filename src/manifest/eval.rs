//! Nickel evaluation of a project's manifests, and the evaluation cache.
//!
//! All categories are evaluated in one Nickel program (one `Program` costs ~8 ms of stdlib setup,
//! so one per file would multiply that), generated as:
//!
//! ```nickel
//! let ccb = import "ccb.ncl" in
//! { images = (import "images.ncl") & (import "images.toml"), sites = …, … } | ccb.Project
//! ```
//!
//! The result is cached under the store with the stat (size, mtime, ctime, inode) of every file
//! Nickel read and the listing of `manifests/`; a warm run compares stats and skips Nickel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nickel_lang_core::error::IntoDiagnostics;
use nickel_lang_core::eval::cache::CacheImpl;
use nickel_lang_core::program::{BuilderError, Program, ProgramBuilder};
use nickel_lang_core::serialize::{self, ExportFormat};
use serde::{Deserialize, Serialize};

use super::validate::RawProject;
use super::{CATEGORIES, ManifestError};
use crate::diag::SourceDiagnostic;
use crate::fsutil::{self, FsError};
use crate::store::{self, Store};

/// The stdlib compiled into the binary, used when the project has no `stdlib/ccb.ncl`.
pub const STDLIB_SOURCE: &str = include_str!("../../stdlib/ccb.ncl");

/// Where the embedded stdlib is written so that Nickel can import it (Nickel imports only from
/// disk): `<store>/stdlib-<hash>/ccb.ncl`, written once, atomically.
pub struct EmbeddedStdlib;

impl EmbeddedStdlib {
    pub fn dir(store: &Store) -> Result<PathBuf, ManifestError> {
        let hash = &blake3::hash(STDLIB_SOURCE.as_bytes()).to_hex()[..16];
        let dir = store.path(&crate::store::Layout::stdlib_dir(hash));
        let file = dir.join("ccb.ncl");
        if !file.exists() {
            fsutil::write_atomic(&file, STDLIB_SOURCE.as_bytes())?;
        }
        Ok(dir)
    }
}

/// The evaluated manifests, decoded, with the files of each category.
pub(super) struct Evaluated {
    pub project: RawProject,
    /// Things worth saying that are not errors (a misspelt category file, …).
    pub warnings: Vec<String>,
    pub files: BTreeMap<String, Vec<PathBuf>>,
    pub from_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok()?;
        Some(Self {
            path: path.to_path_buf(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            ino: md.ino(),
        })
    }
}

/// What decides whether an evaluation record still holds: the first line of the record, the
/// evaluated manifests' JSON follows it (see [`split_head`]). Kept apart so that a warm run
/// checks the stamps before decoding the value, and decodes the value once, straight into
/// the model's types (a record that held the JSON as a string in JSON decoded it twice).
#[derive(Debug, Serialize, Deserialize)]
struct EvalHead {
    engine: String,
    listing: Vec<String>,
    stdlib_dir: PathBuf,
    inputs: Vec<Stamp>,
}

/// `HEAD\nVALUE`: a head serialised compactly (JSON strings escape newlines, so the first
/// newline ends it) and the bytes after it. `None` when there is no newline: not this format.
fn split_head(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    Some((&bytes[..nl], &bytes[nl + 1..]))
}

/// A record's head and its value as one file.
fn framed<T: Serialize>(head: &T, value: &str) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(head)?;
    out.push(b'\n');
    out.extend_from_slice(value.as_bytes());
    Ok(out)
}

/// The manifests as a valid record of this project evaluated them: `None` (evaluate again)
/// when the record is absent, stale, of an older format (the JSON as a string in one JSON
/// document: the head decodes, no value follows) or does not decode into the model's types.
fn cached(
    store: &Store,
    record: &str,
    listing: &[String],
    stdlib_dir: &Path,
) -> Option<(EvalHead, RawProject)> {
    let bytes = std::fs::read(store.path(record)).ok()?;
    let (head, value) = split_head(&bytes)?;
    let head: EvalHead = serde_json::from_slice(head).ok()?;
    let fresh = head.engine == crate::ENGINE_VERSION
        && head.listing == listing
        && head.stdlib_dir == stdlib_dir
        && head
            .inputs
            .iter()
            .all(|s| Stamp::of(&s.path).as_ref() == Some(s));
    if !fresh {
        return None;
    }
    let project = serde_json::from_slice(value).ok()?;
    Some((head, project))
}

fn listing(manifests: &Path) -> Result<Vec<String>, FsError> {
    let rd = std::fs::read_dir(manifests).map_err(|e| FsError::new("list", manifests, e))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn category_files(manifests: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut files = BTreeMap::new();
    for cat in CATEGORIES {
        let found: Vec<PathBuf> = ["ncl", "toml"]
            .iter()
            .map(|ext| manifests.join(format!("{cat}.{ext}")))
            .filter(|p| p.is_file())
            .collect();
        files.insert(cat.to_string(), found);
    }
    files
}

fn stdlib_dir(root: &Path, store: &Store) -> Result<PathBuf, ManifestError> {
    let project = root.join("stdlib");
    if project.join("ccb.ncl").is_file() {
        Ok(project)
    } else {
        EmbeddedStdlib::dir(store)
    }
}

/// The generated program that gathers every category under the `Project` contract.
fn aggregate_source(files: &BTreeMap<String, Vec<PathBuf>>) -> String {
    let mut src = String::from("let ccb = import \"ccb.ncl\" in\n{\n");
    for (cat, paths) in files {
        if paths.is_empty() {
            continue;
        }
        let imports: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| format!("(import {:?})", n.to_string_lossy()))
            .collect();
        src.push_str(&format!("  {cat} = {},\n", imports.join(" & ")));
    }
    src.push_str("} | ccb.Project\n");
    src
}

pub(super) fn evaluate(root: &Path, store: &Store) -> Result<Evaluated, ManifestError> {
    let manifests = root.join("manifests");
    let files = category_files(&manifests);
    let listing = listing(&manifests)?;
    let stdlib_dir = stdlib_dir(root, store)?;
    let record_name = crate::store::Layout::eval_record(&store::name_for(&format!(
        "{}\0{}",
        root.display(),
        crate::ENGINE_VERSION
    )));

    if let Some((head, project)) = cached(store, &record_name, &listing, &stdlib_dir) {
        let warnings = stray_files(
            &manifests,
            &listing,
            head.inputs.iter().map(|s| s.path.as_path()),
        );
        return Ok(Evaluated {
            project,
            warnings,
            files,
            from_cache: true,
        });
    }

    check_utf8(root, &manifests, &listing)?;
    let started = std::time::SystemTime::now();
    let (json, read) = run_bounded(root, &manifests, &stdlib_dir, &files)?;
    let project = super::validate::decode(&json)?;

    // A file modified in the same clock tick as our read could change again without changing
    // its stamp ("racy" stamps, as git calls them): only cache when every input is older than
    // a couple of seconds.
    let now_ns = started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let warnings = stray_files(&manifests, &listing, read.iter().map(PathBuf::as_path));
    let inputs: Option<Vec<Stamp>> = read.iter().map(|p| Stamp::of(p)).collect();
    // The embedded stdlib, written by this very run into a directory named by its hash,
    // never changes in place: it is not racy, and a fresh store would otherwise evaluate twice.
    let embedded = (stdlib_dir != root.join("stdlib")).then_some(&stdlib_dir);
    if let Some(inputs) = inputs
        && inputs.iter().all(|s| {
            embedded.is_some_and(|e| s.path.starts_with(e))
                || now_ns - s.mtime_ns.max(s.ctime_ns) > 2_000_000_000
        })
    {
        let head = EvalHead {
            engine: crate::ENGINE_VERSION.to_string(),
            listing,
            stdlib_dir,
            inputs,
        };
        // A cache that cannot be written only costs time next run (and one that is lost
        // in a crash too: it is not fsynced).
        if let Ok(bytes) = framed(&head, &json) {
            let _ = fsutil::write_atomic_cache(&store.path(&record_name), &bytes);
        }
    }
    Ok(Evaluated {
        project,
        warnings,
        files,
        from_cache: false,
    })
}

/// Nickel/TOML files in `manifests/` that are neither a category nor imported by one: most
/// likely a misspelt category (`site.ncl`), which would otherwise be silently ignored.
fn stray_files<'a>(
    manifests: &Path,
    listing: &[String],
    read: impl Iterator<Item = &'a Path>,
) -> Vec<String> {
    let read: Vec<&Path> = read.collect();
    let categories: Vec<String> = CATEGORIES.iter().map(|c| c.to_string()).collect();
    let mut out = Vec::new();
    for name in listing {
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if !(ext == "ncl" || ext == "toml") || CATEGORIES.contains(&stem) {
            continue;
        }
        let path = manifests.join(name);
        if read.iter().any(|r| *r == path) {
            continue;
        }
        let hint = crate::diag::did_you_mean(stem, &categories)
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        out.push(format!(
            "manifests/{name} is not a manifest category ({}) and no manifest imports it{hint}",
            CATEGORIES.join(", ")
        ));
    }
    out
}

/// Nickel reads a file that is not UTF-8 as "not found": say what is wrong, and where.
fn check_utf8(root: &Path, manifests: &Path, listing: &[String]) -> Result<(), ManifestError> {
    for name in listing {
        if !(name.ends_with(".ncl") || name.ends_with(".toml")) {
            continue;
        }
        let path = manifests.join(name);
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| FsError::new("read", &path, e))?;
        if let Err(e) = std::str::from_utf8(&bytes) {
            let at = e.valid_up_to();
            let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
            let shown = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            return Err(SourceDiagnostic::new(format!(
                "{shown} is not UTF-8: byte {at} (line {line}) is 0x{:02x}",
                bytes[at]
            ))
            .with_source(
                &shown,
                String::from_utf8_lossy(&bytes).into_owned(),
                at..at + 1,
                "not UTF-8",
            )
            .with_help("manifests are UTF-8 text; re-encode the file (e.g. `iconv -t UTF-8`)")
            .into());
        }
    }
    Ok(())
}

/// The hidden argument that makes ccb a manifest evaluator (see `run_bounded`).
pub const EVAL_ARG: &str = "__eval";

/// How long an evaluation may take and how much memory it may map: the real manifests
/// evaluate in well under a second and a few hundred MiB; a manifest that recurses without
/// end would otherwise take the host's memory (gigabytes in seconds) or hang every command.
const DEFAULT_EVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
const DEFAULT_EVAL_MEMORY: u64 = 4 << 30;

/// The limits from `CCB_EVAL_TIMEOUT` (seconds) and `CCB_EVAL_MEMORY` (bytes, or with a
/// K/M/G/T suffix), or the defaults.
fn limits() -> Result<(std::time::Duration, u64), ManifestError> {
    let bad = |var: &str, value: String, expected: &str| {
        ManifestError::from(
            SourceDiagnostic::new(format!("{var}={value:?} is not {expected}")).with_help(format!(
                "unset {var} for the default, or see the README's limits"
            )),
        )
    };
    let bad = |e: crate::units::BadLimit| bad(e.var, e.value, e.expected);
    let timeout = crate::units::seconds_from_env("CCB_EVAL_TIMEOUT")
        .map_err(bad)?
        .map_or(DEFAULT_EVAL_TIMEOUT, std::time::Duration::from_secs);
    let memory = crate::units::memory_from_env("CCB_EVAL_MEMORY")
        .map_err(bad)?
        .unwrap_or(DEFAULT_EVAL_MEMORY);
    Ok((timeout, memory))
}

/// What the evaluator process sends back on its stdout, as one line; after `Ok`'s, the
/// evaluated manifests' JSON (see [`framed`]), so that it is not escaped into a JSON string
/// and unescaped again.
#[derive(Serialize, Deserialize)]
enum Outcome {
    Ok { read: Vec<PathBuf> },
    Err(crate::diag::WireDiagnostic),
}

/// The evaluator's answer: the outcome, and for `Ok` the JSON after it.
fn parse_answer(stdout: &[u8]) -> Option<(Outcome, &str)> {
    let (head, value) = split_head(stdout)?;
    let outcome = serde_json::from_slice(head).ok()?;
    Some((outcome, std::str::from_utf8(value).ok()?))
}

/// Evaluates in a child process (ccb re-executed with [`EVAL_ARG`]) under a time limit and an
/// address-space limit, so that a manifest that recurses without end ends in an error naming
/// the manifests instead of exhausting the host: Nickel can be neither interrupted nor
/// limited in memory from inside the process, and a failed allocation aborts it. Only a cold
/// evaluation pays for the child (a few ms); a warm one reads the cache and starts nothing.
fn run_bounded(
    root: &Path,
    manifests: &Path,
    stdlib_dir: &Path,
    files: &BTreeMap<String, Vec<PathBuf>>,
) -> Result<(String, Vec<PathBuf>), ManifestError> {
    let (timeout, memory) = limits()?;
    let named: Vec<String> = files
        .values()
        .flatten()
        .map(|p| format!("`{}`", p.strip_prefix(root).unwrap_or(p).display()))
        .collect();
    let named = if named.is_empty() {
        format!("`{}`", manifests.display())
    } else {
        named.join(", ")
    };
    let run = crate::process::Process::new(crate::process::ccb_binary())
        .arg(EVAL_ARG)
        .arg(manifests)
        .arg(stdlib_dir)
        .memory_limit(memory)
        .output_bounded(timeout, crate::process::Confine::ProcessGroup)
        .map_err(|e| ManifestError::EvalStart(Box::new(e)))?;
    if run.timed_out {
        return Err(ManifestError::EvalTimeout {
            manifests: named,
            seconds: timeout.as_secs(),
        });
    }
    let out = run.output;
    if out.status.success()
        && let Some((outcome, json)) = parse_answer(&out.stdout)
    {
        return match outcome {
            Outcome::Ok { read } => Ok((json.to_string(), read)),
            Outcome::Err(d) => Err(SourceDiagnostic::from(d).into()),
        };
    }
    if out.status.success() {
        // Exit 0 without an answer: not ccb's evaluator (a program embedding the library
        // that neither dispatches `__eval` nor names ccb with `process::use_ccb_binary`).
        return Err(ManifestError::EvalNoAnswer {
            manifests: named,
            program: crate::process::ccb_binary(),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return Err(ManifestError::EvalMemory {
            manifests: named,
            limit: crate::ui::progress::human_bytes(memory),
        });
    }
    use std::os::unix::process::ExitStatusExt;
    let how = match (out.status.code(), out.status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    };
    Err(ManifestError::EvalCrashed {
        manifests: named,
        detail: format!("{how}: {}", crate::process::tail(&out.stderr, 4)),
    })
}

/// `ccb __eval MANIFESTS STDLIB_DIR`: the evaluator process's main; writes an `Outcome` to
/// stdout. Returns the exit code.
pub fn evaluator_main(manifests: &Path, stdlib_dir: &Path) -> i32 {
    use std::io::Write;
    let files = category_files(manifests);
    let (outcome, json) = match run_nickel(manifests, stdlib_dir, &files) {
        Ok((json, read)) => (Outcome::Ok { read }, json),
        Err(ManifestError::Invalid(d)) => (Outcome::Err((&*d).into()), String::new()),
        Err(other) => (
            Outcome::Err((&SourceDiagnostic::new(other.to_string())).into()),
            String::new(),
        ),
    };
    let Ok(bytes) = framed(&outcome, &json) else {
        return 70;
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 74,
    }
}

/// Evaluates the aggregate program; returns the JSON export and every on-disk file Nickel read.
fn run_nickel(
    manifests: &Path,
    stdlib_dir: &Path,
    files: &BTreeMap<String, Vec<PathBuf>>,
) -> Result<(String, Vec<PathBuf>), ManifestError> {
    let source = aggregate_source(files);
    let name = manifests.join("<ccb project>.ncl");
    let mut prog: Program<CacheImpl> = ProgramBuilder::new()
        .add_source_string(source, name.clone().into_os_string())
        .add_import_paths([stdlib_dir.to_path_buf()])
        .build()
        .map_err(|e| match e {
            BuilderError::Io { path, error } => ManifestError::Fs(FsError::new(
                "read",
                path.unwrap_or_else(|| manifests.to_path_buf()),
                error,
            )),
            BuilderError::NoInputs => {
                ManifestError::from(SourceDiagnostic::new("no manifest input"))
            }
        })?;
    let result = prog.eval_full_for_export();
    let mut nfiles = prog.files();
    let value = match result {
        Ok(v) => v,
        Err(err) => {
            let diags = err.into_diagnostics(&mut nfiles);
            return Err(SourceDiagnostic::from_nickel(diags, &nfiles).into());
        }
    };
    // Compact, not Nickel's pretty export: a third of the bytes to send, store and decode.
    let json = serialize::validate(ExportFormat::Json, &value)
        .and_then(|()| {
            serde_json::to_string(&value)
                .map_err(|e| nickel_lang_core::error::ExportErrorKind::Other(e.to_string()).into())
        })
        .map_err(|e| {
            let err = nickel_lang_core::error::Error::export_error(prog.pos_table().clone(), e);
            let diags = err.into_diagnostics(&mut nfiles);
            ManifestError::from(SourceDiagnostic::from_nickel(diags, &nfiles))
        })?;
    let read: Vec<PathBuf> = nfiles
        .filenames()
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_file())
        .collect();
    Ok((json, read))
}
