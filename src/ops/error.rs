//! What a command can fail with, sorted by who has to act (like jj's `CommandError`): the user
//! (a bad manifest, an unknown target: exit 1), the environment (a missing tool, a full disk, a
//! refused permission, an unreachable server: exit 1 with what to do), ccb itself (a bug:
//! exit 70, "please report"), or the command line (usage: exit 2).

/// Who has to act on a failure; it decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The input is wrong: a manifest, an element, a target, a failed check.
    User,
    /// The host is not ready: a missing tool, a full disk, a permission, the network.
    Environment,
    /// A bug in ccb.
    Internal,
    /// The command line itself.
    Usage,
}

impl ErrorKind {
    /// The process exit code: 1 for user and environment errors, 70 (`EX_SOFTWARE`) for a
    /// bug, 2 for usage.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::User | ErrorKind::Environment => 1,
            ErrorKind::Internal => 70,
            ErrorKind::Usage => 2,
        }
    }
}

/// A failed command: its kind and a rendered diagnostic (none when the failure was already
/// reported line by line, e.g. lint findings).
pub struct CommandError {
    pub kind: ErrorKind,
    report: Option<miette::Report>,
    /// What to do, for environment errors found in a typed error's chain (and "please
    /// report" for a typed internal error).
    hint: Option<&'static str>,
}

impl std::fmt::Debug for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message())
    }
}

const NETWORK_HINT: &str =
    "the network failed: check the connection, or build with --offline from what the store holds";

/// What the host's operator does about an OS error, if it is theirs to fix.
fn io_hint(io: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind as K;
    // No stable kind of its own: a disk or file system of the host failing.
    if io.raw_os_error() == Some(libc::EIO) {
        return Some("an I/O error: a disk or file system of this host failed (see `dmesg`)");
    }
    match io.kind() {
        K::StorageFull | K::QuotaExceeded => Some(
            "the disk is full: free space (e.g. `ccb cache gc`) or point CCB_CACHE_DIR at a \
             larger disk",
        ),
        K::PermissionDenied => Some("permission denied: ccb builds run as root"),
        K::ReadOnlyFilesystem => Some("the file system is read-only"),
        K::ConnectionRefused
        | K::ConnectionReset
        | K::TimedOut
        | K::HostUnreachable
        | K::NetworkUnreachable => Some(NETWORK_HINT),
        _ => None,
    }
}

/// An environment failure's hint from the first I/O error of a chain, if it is one the user
/// fixes on the host.
fn environment_hint(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<crate::process::ProcessError>()
            .is_some_and(|p| p.is_missing_tool())
        {
            return Some(
                "a program ccb runs is not installed: `ccb doctor` lists what this host lacks",
            );
        }
        if let Some(crate::bootcheck::BootError::MissingFirmware { .. }) = e.downcast_ref() {
            return Some("install the firmware package named above");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_hint(io);
        }
        // ureq's error keeps its causes to itself (no `source()`): read it here (boxed, it
        // is the box that is in the chain).
        let http = e
            .downcast_ref::<ureq::Error>()
            .or_else(|| e.downcast_ref::<Box<ureq::Error>>().map(|b| &**b));
        if let Some(http) = http {
            return match http {
                ureq::Error::Io(io) => io_hint(io),
                ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
                | ureq::Error::Timeout(_) => Some(NETWORK_HINT),
                _ => None,
            };
        }
        cur = e.source();
    }
    None
}

/// Whether a typed error's chain holds a failure ccb rules out (a bug): the build's, the
/// sandbox's, the remote cache's, a builder's or publishing's internal errors.
pub(crate) fn is_internal(err: &(dyn std::error::Error + 'static)) -> bool {
    use crate::remote::builder::BuilderError;
    let mut cur = Some(err);
    while let Some(e) = cur {
        let bug = e
            .downcast_ref::<crate::action::BuildError>()
            .is_some_and(|b| b.blame() == crate::action::event::Blame::Bug)
            || matches!(
                e.downcast_ref::<crate::action::runner::RunError>(),
                Some(crate::action::runner::RunError::Internal(_))
            )
            || e.downcast_ref::<crate::remote::RemoteError>()
                .is_some_and(|r| r.is_internal())
            || matches!(
                e.downcast_ref::<BuilderError>(),
                Some(BuilderError::Internal(_) | BuilderError::NoBuilder(_))
            )
            || matches!(
                e.downcast_ref::<crate::publish::PublishError>(),
                Some(crate::publish::PublishError::Internal(_))
            );
        if bug {
            return true;
        }
        cur = e.source();
    }
    false
}

impl CommandError {
    /// A typed failure; an I/O error in its chain that the host must fix makes it an
    /// environment error, with what to do; an internal error in it is a bug (exit 70).
    pub fn from_diag<E: miette::Diagnostic + Send + Sync + 'static>(e: E) -> Self {
        // A malformed target or --arch, wherever it was parsed, is a usage error.
        if (&e as &(dyn std::error::Error + 'static))
            .downcast_ref::<crate::label::LabelError>()
            .is_some_and(|l| l.is_usage())
        {
            return Self::usage_diag(e);
        }
        if is_internal(&e) {
            return Self {
                kind: ErrorKind::Internal,
                report: Some(miette::Report::new(e)),
                hint: Some("this is a bug in ccb: please report it with the command line"),
            };
        }
        let hint = environment_hint(&e);
        Self {
            kind: if hint.is_some() {
                ErrorKind::Environment
            } else {
                ErrorKind::User
            },
            report: Some(miette::Report::new(e)),
            hint,
        }
    }

    /// A typed failure of the command line (exit 2), e.g. an unknown site.
    pub fn usage_diag<E: miette::Diagnostic + Send + Sync + 'static>(e: E) -> Self {
        Self {
            kind: ErrorKind::Usage,
            report: Some(miette::Report::new(e)),
            hint: None,
        }
    }

    /// A user error with a message.
    pub fn msg(text: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::User,
            report: Some(miette::miette!("{}", text.into())),
            hint: None,
        }
    }

    /// The host lacks something: a message and what to do about it.
    pub fn environment(text: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Environment,
            report: Some(miette::miette!(help = hint.into(), "{}", text.into())),
            hint: None,
        }
    }

    /// A bug in ccb.
    pub fn internal(text: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            report: Some(miette::miette!(
                help = "this is a bug in ccb: please report it with the command line",
                "internal error: {}",
                text.into()
            )),
            hint: None,
        }
    }

    /// A failure already reported (e.g. lint findings printed one by one).
    pub fn silent() -> Self {
        Self {
            kind: ErrorKind::User,
            report: None,
            hint: None,
        }
    }

    /// A failure already reported that is a bug in ccb (exit 70).
    pub fn silent_internal() -> Self {
        Self {
            kind: ErrorKind::Internal,
            report: None,
            hint: None,
        }
    }

    /// A bad command line (exit 2).
    pub fn usage(text: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Usage,
            report: Some(miette::miette!("{}", text.into())),
            hint: None,
        }
    }

    /// The rendered message, one line (for JSON reports).
    pub fn message(&self) -> String {
        self.report
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default()
    }

    /// What to do about an environment error.
    pub fn hint(&self) -> Option<&'static str> {
        self.hint
    }

    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// The diagnostic to print, if not already reported.
    pub fn report(&self) -> Option<&miette::Report> {
        self.report.as_ref()
    }
}

impl<E: miette::Diagnostic + Send + Sync + 'static> From<E> for CommandError {
    fn from(e: E) -> Self {
        Self::from_diag(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error, miette::Diagnostic)]
    #[error("writing {path}")]
    struct Write {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_full_disk_deep_in_a_chain_is_an_environment_error_with_what_to_do() {
        let e = CommandError::from_diag(Write {
            path: crate::store::Layout::layer_dir("x"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(e.kind, ErrorKind::Environment);
        assert_eq!(e.exit_code(), 1);
        assert!(e.hint().is_some_and(|h| h.contains("disk is full")));
        assert!(e.message().contains("writing layers/x"), "{}", e.message());
    }

    #[test]
    fn a_missing_tool_or_firmware_is_an_environment_error() {
        let missing = crate::process::Process::new("ccb-no-such-tool")
            .output()
            .unwrap_err();
        let e = CommandError::from_diag(crate::bootcheck::BootError::Program {
            what: "qemu-img create (overlay)".into(),
            source: missing,
        });
        assert_eq!(e.kind, ErrorKind::Environment);
        assert!(e.hint().is_some_and(|h| h.contains("ccb doctor")));
        let e = CommandError::from_diag(crate::bootcheck::BootError::MissingFirmware {
            firmware: "UEFI",
            package: "ovmf",
        });
        assert_eq!(e.kind, ErrorKind::Environment);
        assert!(e.message().contains("install the ovmf package"));
    }

    #[test]
    fn other_failures_are_the_users_and_bugs_exit_70() {
        let e = CommandError::from_diag(Write {
            path: "x".into(),
            source: std::io::Error::other("bad"),
        });
        assert_eq!(e.kind, ErrorKind::User);
        assert_eq!(CommandError::internal("x").exit_code(), 70);
        assert_eq!(CommandError::usage("x").exit_code(), 2);
    }

    #[test]
    fn a_full_local_disk_while_publishing_is_the_hosts_to_fix() {
        // What a local site's write gives (see publish::local's tests for a real one).
        let e = CommandError::from_diag(crate::publish::PublishError::Io {
            what: "write",
            path: "/srv/images/current.json".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(e.kind, ErrorKind::Environment);
        assert_eq!(e.exit_code(), 1);
        assert!(e.hint().is_some_and(|h| h.contains("disk is full")));
    }

    #[test]
    fn a_publishing_state_ccb_rules_out_is_a_bug_that_exits_70() {
        let e = CommandError::from_diag(crate::publish::PublishError::Internal(
            "the hashing thread panicked",
        ));
        assert_eq!(e.kind, ErrorKind::Internal);
        assert_eq!(e.exit_code(), 70);
        assert!(e.hint().is_some_and(|h| h.contains("please report")));
    }

    /// A secret the build could not read, as the action reports it.
    fn secret_failure(source: crate::manifest::SecretError) -> crate::action::BuildError {
        crate::action::BuildError::Secret {
            id: "layer:x:amd64".into(),
            var: "TOKEN".into(),
            from: "file secrets/token".into(),
            source,
        }
    }

    #[test]
    fn a_secret_the_project_does_not_provide_is_the_users_one_the_host_cannot_read_is_not() {
        use crate::action::event::Blame;
        use crate::manifest::SecretSource;
        let dir = tempfile::tempdir().unwrap();
        let missing = SecretSource {
            file: Some("secrets/token".into()),
            env: None,
        };
        let unset = SecretSource {
            file: None,
            env: Some("CCB_TEST_NO_SUCH_SECRET_VARIABLE".into()),
        };
        for src in [missing, unset] {
            let e = secret_failure(src.read(dir.path()).unwrap_err());
            assert_eq!(e.blame(), Blame::Input, "{}", e.message());
            let c = CommandError::from_diag(e);
            assert_eq!(c.kind, ErrorKind::User, "{}", c.message());
            assert!(c.message().contains("secret `TOKEN`"), "{}", c.message());
        }
        // What reading it gives when the file's permissions or the disk under it refuse (root
        // reads any mode, so the OS errors are made here).
        for (errno, hint) in [(libc::EACCES, "permission"), (libc::EIO, "dmesg")] {
            let e = secret_failure(crate::manifest::SecretError::Read {
                path: dir.path().join("secrets/token"),
                source: std::io::Error::from_raw_os_error(errno),
            });
            assert_eq!(e.blame(), Blame::Host, "{}", e.message());
            let c = CommandError::from_diag(e);
            assert_eq!(c.kind, ErrorKind::Environment, "{}", c.message());
            assert!(c.hint().is_some_and(|h| h.contains(hint)), "{:?}", c.hint());
            assert!(c.message().contains("secrets/token"), "{}", c.message());
        }
    }

    #[test]
    fn a_remote_cache_that_refuses_the_connection_is_the_networks_problem() {
        // A port nothing listens on any more: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cache = crate::remote::backend::open(&format!("http://127.0.0.1:{port}/c")).unwrap();
        let e = cache.get(&format!("ac/{}", "0".repeat(64))).unwrap_err();
        assert!(
            matches!(&e, crate::remote::RemoteError::Transport { .. }),
            "{e}"
        );
        let shown = e.to_string();
        let c = CommandError::from_diag(Upload(e));
        assert_eq!(c.kind, ErrorKind::Environment, "{}", c.message());
        assert!(
            c.hint().is_some_and(|h| h.contains("network")),
            "{:?}",
            c.hint()
        );
        // The message is what it was when the error was text.
        assert!(shown.starts_with(&format!("remote cache http://127.0.0.1:{port}/c: GET ac/")));
        assert!(shown.contains("io: "), "{shown}");
    }

    #[derive(Debug, thiserror::Error, miette::Diagnostic)]
    #[error("uploading")]
    struct Upload(#[source] crate::remote::RemoteError);

    #[test]
    fn a_typed_internal_error_anywhere_in_the_chain_is_a_bug_exit_70_with_please_report() {
        let internal = [
            CommandError::from_diag(crate::action::BuildError::Internal {
                id: "disk:x:amd64".into(),
                what: "no spec".into(),
            }),
            CommandError::from_diag(Upload(crate::remote::RemoteError::Internal(
                "a chunk was not stored",
            ))),
            CommandError::from_diag(crate::remote::builder::BuilderError::Internal(
                "an action without an image or arch sent to a builder",
            )),
        ];
        for e in internal {
            assert_eq!(e.kind, ErrorKind::Internal, "{}", e.message());
            assert_eq!(e.exit_code(), 70);
            assert!(e.hint().is_some_and(|h| h.contains("please report")));
        }
        // The same chain with an I/O error instead is the host's, not a bug.
        let full = CommandError::from_diag(Upload(crate::remote::RemoteError::Write(
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        )));
        assert_eq!(full.kind, ErrorKind::Environment);
        assert!(full.hint().is_some_and(|h| h.contains("disk is full")));
    }
}
