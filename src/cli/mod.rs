//! The command line: parsing, dispatch and error rendering. Each command lives in its own file
//! with its clap `*Args` and a short `run` that parses, calls one operation of [`crate::ops`]
//! and renders its report (text, or `--format json`). No command calls another, and no command
//! module imports another's; renderings two commands share are in `render`.

mod build;
mod builder;
mod cache;
mod check;
mod doctor;
mod inspect;
mod lint;
mod publish;
mod query;
mod render;
mod test;
mod update;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::manifest::{self, Model};
use crate::store::Store;

/// ccb builds, tests, inspects and publishes Chameleon's supported disk images.
#[derive(Debug, Parser)]
#[command(name = "ccb", version, about, max_term_width = 100)]
pub struct Cli {
    /// The project root (default: the nearest ancestor directory holding `manifests/`)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Print only data and errors, no status lines
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print more detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Use only what is in the store: fetch no source or artifact (CCB_DISTDIR is still read)
    #[arg(long, global = true, env = "CCB_OFFLINE", value_parser = clap::builder::FalseyValueParser::new())]
    offline: bool,
    /// Share results with other build hosts through this remote cache (over the project's
    /// `cache` setting): http(s)://host/path (Bazel's HTTP cache protocol: bazel-remote, nginx
    /// WebDAV), swift://CLOUD/CONTAINER[/PREFIX] (clouds.yaml) or a directory
    #[arg(long, global = true, value_name = "URL", env = "CCB_REMOTE_CACHE")]
    remote_cache: Option<String>,
    /// Store what this build makes in the remote cache (else it is only read)
    #[arg(long, global = true)]
    remote_cache_upload: bool,
    /// Use no remote cache, whatever the project says
    #[arg(long, global = true, conflicts_with_all = ["remote_cache", "remote_cache_upload"])]
    no_remote_cache: bool,
    /// Send every root filesystem and disk to the project's `builders` (else only those of an
    /// arch this host cannot build natively)
    #[arg(long, global = true, conflicts_with = "no_remote_builders")]
    remote_builders_only: bool,
    /// Build everything on this host, whatever the project's `builders` say
    #[arg(long, global = true)]
    no_remote_builders: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate and validate every manifest and element reference
    Check(check::CheckArgs),
    /// Ask questions about targets, elements and the build graph
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Build images: every action of the targets not already in the store
    Build(build::BuildArgs),
    /// Fetch what the targets need (artifacts, sources) into the store: `build --until fetch`,
    /// after which builds run with --offline
    Fetch(build::BuildArgs),
    /// Check elements against diskimage-builder's dib-lint rules
    Lint(lint::LintArgs),
    /// Boot the targets' disks in QEMU (BIOS and UEFI) and run the checks inside
    Test(test::TestArgs),
    /// Look after the store: list, garbage-collect, verify and remove entries
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Check images without root or mounts: required executables, packages; local or remote
    Inspect(inspect::InspectArgs),
    /// Publish images to the sites (Swift containers or directories), building what is missing
    Publish(publish::PublishArgs),
    /// List, promote, roll back and prune the published versions of a site
    #[command(subcommand)]
    Versions(publish::VersionsCommand),
    /// Rebuild targets in a scratch store and compare them with the store's (or a site's)
    /// copy, file by file: equal keys must give equal bytes
    Verify(verify::VerifyArgs),
    /// Pin sources' refs to commits (and "latest" artifacts to digests) in ccb.lock
    Update(update::UpdateArgs),
    /// Say what this host can build and test: arches (native, emulated), KVM, loop devices,
    /// overlayfs, binfmt_misc, tools and their versions
    Doctor(doctor::DoctorArgs),
    /// What a remote builder runs over ssh (see `builders` in the project settings)
    #[command(name = "remote-builder", subcommand, hide = true)]
    RemoteBuilder(builder::BuilderCommand),
}

impl Command {
    /// What a closed stdout means for this command: a command that changes things (the store,
    /// a site, ccb.lock) runs to its end with its output discarded and exits by its result;
    /// a listing, a query or a dry run ends at once, status 0.
    fn closed_pipe(&self) -> crate::ui::ClosedPipe {
        use crate::ui::ClosedPipe::{Discard, End};
        let changes = match self {
            Command::Build(a) | Command::Fetch(a) => !a.dry_run,
            Command::Test(_) => true,
            Command::Publish(a) => !a.dry_run,
            Command::Update(a) => !a.dry_run,
            Command::Versions(v) => match v {
                publish::VersionsCommand::List(_) => false,
                publish::VersionsCommand::Promote(_) | publish::VersionsCommand::Rollback(_) => {
                    true
                }
                publish::VersionsCommand::Prune(a) => !a.dry_run,
            },
            Command::Cache(c) => match c {
                cache::CacheCommand::Gc(a) => !a.dry_run,
                cache::CacheCommand::Rm(_) => true,
                cache::CacheCommand::Ls(_) | cache::CacheCommand::Verify(_) => false,
            },
            Command::Check(_)
            | Command::Query(_)
            | Command::Lint(_)
            | Command::Inspect(_)
            | Command::Verify(_)
            | Command::Doctor(_)
            | Command::RemoteBuilder(_) => false,
        };
        if changes { Discard } else { End }
    }
}

/// What every command may need: the global flags, the project and the store, loaded lazily
/// (`ccb query elements -e …` and `ccb lint` work outside a project).
pub struct Context {
    pub quiet: bool,
    pub verbose: u8,
    pub offline: bool,
    /// `--remote-cache`, `--remote-cache-upload`, `--no-remote-cache`.
    pub remote: crate::remote::Choice,
    /// What a closed stdout means for this command (see [`Command::closed_pipe`]).
    closed_pipe: crate::ui::ClosedPipe,
    root_arg: Option<PathBuf>,
    store: Option<Store>,
}

impl Context {
    /// The output of this command.
    pub fn shell(&self) -> crate::ui::Shell {
        crate::ui::Shell::new(self.quiet, self.verbose).on_closed_pipe(self.closed_pipe)
    }

    pub fn store(&mut self) -> Result<Store, CliError> {
        if self.store.is_none() {
            self.store = Some(Store::from_env().map_err(CliError::from_diag)?);
        }
        Ok(self.store.clone().expect("set above"))
    }

    /// The project root: `--root`, else the nearest ancestor of the current directory with
    /// `manifests/`.
    pub fn root(&self) -> Result<PathBuf, CliError> {
        match &self.root_arg {
            Some(r) => r
                .canonicalize()
                .map_err(|e| CliError::from_diag(crate::fsutil::FsError::new("resolve", r, e))),
            None => {
                let cwd = std::env::current_dir().map_err(|e| {
                    CliError::from_diag(crate::fsutil::FsError::new("resolve", Path::new("."), e))
                })?;
                manifest::find_root(&cwd).map_err(CliError::from_diag)
            }
        }
    }

    pub fn root_if_any(&self) -> Option<PathBuf> {
        self.root().ok()
    }

    /// The project's model with `ccb.lock` applied: a missing or stale lock is an error here,
    /// for every command but `ccb update`.
    pub fn model(&mut self) -> Result<Model, CliError> {
        let root = self.root()?;
        let store = self.store()?;
        crate::ops::load_model(&root, &store, true, &self.shell())
    }

    /// The session of a command that builds: the locked model, the element path and the
    /// `--env` settings, over `store` (from [`Context::store`]).
    pub fn session<'s>(
        &mut self,
        store: &'s crate::store::Store,
        element_path: Vec<String>,
        env: Vec<String>,
    ) -> Result<crate::ops::Session<'s>, CliError> {
        let model = self.model()?;
        let opts = crate::ops::SessionOptions {
            element_path,
            env,
            offline: self.offline,
            remote: self.remote.clone(),
        };
        crate::ops::Session::open(model, store, &opts, &self.shell())
    }

    /// The model as the manifests declare it, without the lock.
    pub fn unlocked_model(&mut self) -> Result<Model, CliError> {
        let root = self.root()?;
        let store = self.store()?;
        crate::ops::load_model(&root, &store, false, &self.shell())
    }
}

/// A failed command: the operations' error, with its kind and exit code.
pub use crate::ops::CommandError as CliError;

fn install_report_hook() {
    let color = crate::ui::progress::live_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .color(color)
                .unicode(color)
                .terminal_links(false)
                .wrap_lines(false)
                .context_lines(2)
                .build(),
        )
    }));
}

/// A panic is a bug in ccb: after the default message, say so and exit 70 (`EX_SOFTWARE`), not
/// the 101 of an ordinary panic, so scripts can tell a bug from a failed build.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let err = CliError::internal("ccb panicked (the message is above)");
        crate::ui::Shell::default().error(err.report(), err.hint());
        std::process::exit(70);
    }));
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    // The sandbox is ccb re-executed (see `action::sandbox`): not a user command.
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == crate::action::sandbox::SANDBOX_ARG => {
            let spec = args.next().map(PathBuf::from).unwrap_or_default();
            return ExitCode::from(crate::action::sandbox::main(&spec).clamp(0, 255) as u8);
        }
        // The manifest evaluator is ccb re-executed too (see `manifest::eval`).
        Some(a) if a == crate::manifest::EVAL_ARG => {
            let manifests = args.next().map(PathBuf::from).unwrap_or_default();
            let stdlib = args.next().map(PathBuf::from).unwrap_or_default();
            let code = crate::manifest::evaluator_main(&manifests, &stdlib);
            return ExitCode::from(code.clamp(0, 255) as u8);
        }
        _ => {}
    }
    install_report_hook();
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    // Builds (and fetches) stop cleanly on Ctrl-C inside ops::build; publishing too (its
    // uploads stop between segments). Other commands keep the default: a QEMU boot or a query
    // that never looks at the flag must not need a second Ctrl-C.
    if matches!(cli.command, Command::Publish(_)) {
        crate::interrupt::flag();
    }
    let mut ctx = Context {
        quiet: cli.quiet,
        verbose: cli.verbose,
        offline: cli.offline,
        remote: crate::remote::Choice {
            url: cli.remote_cache.filter(|u| !u.is_empty()),
            upload: cli.remote_cache_upload,
            disabled: cli.no_remote_cache,
            builders_only: cli.remote_builders_only,
            no_builders: cli.no_remote_builders,
        },
        closed_pipe: cli.command.closed_pipe(),
        root_arg: cli.root,
        store: None,
    };
    let shell = ctx.shell();
    let result = match cli.command {
        Command::Check(args) => check::run(&mut ctx, args),
        Command::Query(cmd) => query::run(&mut ctx, cmd),
        Command::Build(args) => build::run(&mut ctx, args),
        Command::Fetch(mut args) => {
            args.until = Some(crate::ops::build::Stage::Fetch);
            build::run(&mut ctx, args)
        }
        Command::Lint(args) => lint::run(&mut ctx, args),
        Command::Cache(cmd) => cache::run(&mut ctx, cmd),
        Command::Test(args) => test::run(&mut ctx, args),
        Command::Inspect(args) => inspect::run(&mut ctx, args),
        Command::Publish(args) => publish::run(&mut ctx, args),
        Command::Versions(cmd) => publish::versions(&mut ctx, cmd),
        Command::Update(args) => update::run(&mut ctx, args),
        Command::Verify(args) => verify::run(&mut ctx, args),
        Command::Doctor(args) => doctor::run(&mut ctx, args),
        Command::RemoteBuilder(cmd) => builder::run(&mut ctx, cmd),
    };
    match result {
        // Interrupted: whatever stopped (or finished) last, the command did not run to the
        // operator's end, and a script must see 130.
        _ if crate::interrupt::requested() => {
            if let Err(err) = &result {
                shell.error(err.report(), None);
            }
            shell.error(None, Some("interrupted"));
            ExitCode::from(crate::interrupt::EXIT_CODE)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            shell.error(err.report(), err.hint());
            ExitCode::from(err.exit_code())
        }
    }
}
