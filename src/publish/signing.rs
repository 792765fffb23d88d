//! Signed checksums of a published image: `<Name>.SHA256SUMS` (coreutils' format, over every
//! file of the image in its version: the disk formats, `<Name>.manifest`, `<Name>.spdx.json`)
//! and `<Name>.SHA256SUMS.sig`, an OpenSSH SSHSIG signature (ed25519, namespace
//! [`NAMESPACE`]).
//!
//! Why SSHSIG and not minisign: every operator's machine has `ssh-keygen` (OpenSSH ≥ 8.1
//! verifies with `ssh-keygen -Y verify -f allowed_signers -I <identity> -n ccb-image -s
//! <sig> < <file>`), ed25519 keys are already how Chameleon's operators identify themselves,
//! and an `allowed_signers` file can pin several keys for a rotation. ccb signs and verifies
//! in Rust (RustCrypto's `ssh-key`), so neither step needs the tool.
//!
//! One pair per image rather than one per version: a version directory holds every image
//! published that day, each by its own publisher, and a version's files are never rewritten.

use std::collections::BTreeMap;
use std::path::Path;

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

use crate::manifest::SigningSettings;
use crate::secret::Secret;

/// The SSHSIG namespace: a signature made for ccb's checksums is valid for nothing else.
pub const NAMESPACE: &str = "ccb-image";

pub fn sums_file(image: &str) -> String {
    format!("{image}.SHA256SUMS")
}

pub fn signature_file(image: &str) -> String {
    format!("{image}.SHA256SUMS.sig")
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SigningError {
    /// The private key could not be read from where the project says.
    #[error("signing key ({source_desc}): {problem}")]
    #[diagnostic(
        code(ccb::signing::key),
        help(
            "`signing.key` in manifests/project.ncl names an OpenSSH ed25519 private key without a passphrase (ssh-keygen -t ed25519 -N '' -f ccb-signing)"
        )
    )]
    Key {
        source_desc: String,
        problem: String,
    },
    /// The private key could not be read (a permission in the chain is the host's to fix).
    #[error("signing key ({source_desc})")]
    #[diagnostic(
        code(ccb::signing::read),
        help("`signing.key` in manifests/project.ncl names where the private key is read")
    )]
    Read {
        source_desc: String,
        #[source]
        source: crate::manifest::SecretError,
    },
    /// The private key is not the one `public_key` names.
    #[error("signing key ({source_desc}) is not the key of `signing.public_key`")]
    #[diagnostic(
        code(ccb::signing::mismatch),
        help(
            "set `signing.public_key` to the key's .pub line, or point `signing.key` at its private key"
        )
    )]
    Mismatch { source_desc: String },
    #[error("`signing.public_key` is not an OpenSSH public key line")]
    #[diagnostic(code(ccb::signing::public_key))]
    PublicKey(#[source] ssh_key::Error),
    #[error("signing the checksums")]
    #[diagnostic(code(ccb::signing::sign))]
    Sign(#[source] ssh_key::Error),
}

/// The private key, loaded once per publish.
pub struct Signer {
    key: PrivateKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// The configured public key.
pub fn public_key(settings: &SigningSettings) -> Result<Option<PublicKey>, SigningError> {
    settings
        .public_key
        .as_deref()
        .map(|k| PublicKey::from_openssh(k.trim()).map_err(SigningError::PublicKey))
        .transpose()
}

impl Signer {
    /// The project's signing key, `None` when it configures none. The key's bytes stay in a
    /// [`Secret`] (registered for redaction) until parsed; errors name where it was read.
    pub fn load(settings: &SigningSettings, root: &Path) -> Result<Option<Signer>, SigningError> {
        let Some(src) = &settings.key else {
            return Ok(None);
        };
        let source_desc = src.describe();
        let key_err = |problem: String| SigningError::Key {
            source_desc: source_desc.clone(),
            problem,
        };
        let bytes = src.read(root).map_err(|source| SigningError::Read {
            source_desc: source_desc.clone(),
            source,
        })?;
        let text = Secret::new(
            String::from_utf8(bytes).map_err(|_| key_err("not an OpenSSH private key".into()))?,
        );
        // ssh-key's errors describe the format, never the key material.
        let key = PrivateKey::from_openssh(text.expose().trim())
            .map_err(|e| key_err(format!("not an OpenSSH private key ({e})")))?;
        if key.is_encrypted() {
            return Err(key_err(
                "the key has a passphrase; ccb signs unattended with a key kept in a secret store, without one".into(),
            ));
        }
        if key.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(key_err(format!(
                "a {} key; ccb signs with ed25519",
                key.algorithm()
            )));
        }
        if let Some(public) = public_key(settings)?
            && public.key_data() != key.public_key().key_data()
        {
            return Err(SigningError::Mismatch { source_desc });
        }
        Ok(Some(Signer { key }))
    }

    /// The armored SSHSIG signature of `data`.
    pub fn sign(&self, data: &[u8]) -> Result<String, SigningError> {
        let sig = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, data)
            .map_err(SigningError::Sign)?;
        sig.to_pem(LineEnding::LF).map_err(SigningError::Sign)
    }
}

/// Whether `signature` (armored SSHSIG) is `public`'s signature of `data` in ccb's namespace.
pub fn verify(public: &PublicKey, data: &[u8], signature: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(signature).map_err(|_| "not an armored signature")?;
    let sig = SshSig::from_pem(text).map_err(|e| format!("not an SSHSIG signature: {e}"))?;
    if sig.namespace() != NAMESPACE {
        return Err(format!(
            "signed for namespace `{}`, not `{NAMESPACE}`",
            sig.namespace()
        ));
    }
    public.verify(NAMESPACE, data, &sig).map_err(|_| {
        "the signature does not match the checksums and the configured public key".into()
    })
}

/// `<sha256>  <file>` lines, sorted by file (what `sha256sum -c` reads).
pub fn sums_text(files: &BTreeMap<String, String>) -> String {
    files
        .iter()
        .map(|(file, sha)| format!("{sha}  {file}\n"))
        .collect()
}

/// File → SHA-256 of a SHA256SUMS text (binary-mode `*` accepted).
pub fn parse_sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (sum, file) = l.split_once("  ").or_else(|| l.split_once(" *"))?;
            Some((file.trim_start_matches('*').to_string(), sum.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SecretSource;

    fn keypair(dir: &Path) -> (std::path::PathBuf, String) {
        let key = dir.join("ccb-signing");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci@ccb", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        (key, public.trim().to_string())
    }

    fn settings(key: &Path, public: &str) -> SigningSettings {
        SigningSettings {
            key: Some(SecretSource {
                file: Some(key.display().to_string()),
                env: None,
            }),
            public_key: Some(public.to_string()),
        }
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_not_after_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keypair(dir.path());
        let s = settings(&key, &public);
        let signer = Signer::load(&s, dir.path()).unwrap().unwrap();
        let sums = sums_text(&[("A.qcow2".to_string(), "ab".repeat(32))].into());
        let sig = signer.sign(sums.as_bytes()).unwrap();
        let pk = public_key(&s).unwrap().unwrap();
        verify(&pk, sums.as_bytes(), sig.as_bytes()).unwrap();
        let tampered = sums.replace("ab", "ba");
        assert!(verify(&pk, tampered.as_bytes(), sig.as_bytes()).is_err());
        let (_, other) = keypair(&dir.path().join("other").tap_mkdir());
        let other = PublicKey::from_openssh(&other).unwrap();
        assert!(verify(&other, sums.as_bytes(), sig.as_bytes()).is_err());
        assert!(format!("{signer:?}").contains("redacted"));
    }

    #[test]
    fn a_key_that_is_not_the_public_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = keypair(dir.path());
        let (_, other) = keypair(&dir.path().join("b").tap_mkdir());
        let e = Signer::load(&settings(&key, &other), dir.path()).unwrap_err();
        assert!(matches!(e, SigningError::Mismatch { .. }), "{e}");
    }

    trait Mkdir {
        fn tap_mkdir(self) -> Self;
    }

    impl Mkdir for std::path::PathBuf {
        fn tap_mkdir(self) -> Self {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
