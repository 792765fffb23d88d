//! clouds.yaml, secure.yaml and `OS_*` variables, read the way openstacksdk reads them, so a
//! Chameleon operator's existing configuration works unchanged:
//!
//! - files: `OS_CLIENT_CONFIG_FILE` first, then `./`, `$XDG_CONFIG_HOME/openstack` (default
//!   `~/.config/openstack`), `~/.config/openstack`, each of `$XDG_CONFIG_DIRS/openstack`
//!   (default `/etc/xdg/openstack`), `/etc/openstack`; in each, `clouds.yaml`, `clouds.yml`,
//!   `clouds.json`. The first file that exists wins (files are never merged). `secure.yaml` is
//!   found the same way (`OS_CLIENT_SECURE_FILE` first) and deep-merged over it;
//! - the cloud: the site's `cloud`, else `OS_CLOUD`, else the `envvars` cloud built from the
//!   `OS_*` variables when any is set (besides the selectors), else the file's only cloud;
//! - normalisation: keys at the top of the cloud or under `auth:`, dashes or underscores,
//!   `tenant_*` for `project_*`, `auth_token` for `token`, `auth_plugin` for `auth_type`,
//!   `domain_*` copied to the user and project domains, a `regions:` list's first entry as the
//!   region, `publicURL`-style interfaces, `verify: false` / `insecure: true`, `cacert`.
//!
//! We read clouds.yaml ourselves rather than through the `openstack_sdk` crate: see the
//! project notes for the evaluation (it is async, brings a second HTTP stack, and the file
//! semantics above are a few hundred lines with tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::secret::Secret;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CloudsError {
    #[error("no clouds.yaml found (looked in: {})", searched.join(", "))]
    #[diagnostic(
        code(ccb::clouds::no_file),
        help(
            "write ~/.config/openstack/clouds.yaml, set OS_CLIENT_CONFIG_FILE, or set OS_AUTH_URL and friends"
        )
    )]
    NoFile { searched: Vec<String> },
    #[error("{}: {message}", path.display())]
    #[diagnostic(code(ccb::clouds::parse))]
    Parse { path: PathBuf, message: String },
    #[error("cloud `{name}` is not in {}{}", path.display(), if known.is_empty() { String::new() } else { format!(" (clouds there: {})", known.join(", ")) })]
    #[diagnostic(code(ccb::clouds::unknown))]
    Unknown {
        name: String,
        path: PathBuf,
        known: Vec<String>,
    },
    #[error("cloud `{cloud}`: {message}")]
    #[diagnostic(code(ccb::clouds::invalid))]
    Invalid { cloud: String, message: String },
    #[error("no cloud chosen: {path} has {count} clouds and neither the site's `cloud` nor OS_CLOUD names one", path = path.display())]
    #[diagnostic(code(ccb::clouds::ambiguous))]
    Ambiguous { path: PathBuf, count: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// `password`: the generic plugin (version discovery on auth_url).
    Password,
    V3Password,
    V3ApplicationCredential,
    /// `token` / `v3token`: an existing token, re-scoped.
    Token,
}

/// One cloud, normalised. Secrets are [`Secret`]s: they never print.
#[derive(Debug, Clone)]
pub struct Cloud {
    pub name: String,
    pub auth_type: AuthType,
    pub auth_url: String,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub token: Option<Secret>,
    pub region_name: Option<String>,
    pub interface: String,
    pub object_store_endpoint_override: Option<String>,
    pub object_store_interface: Option<String>,
    pub object_store_region_name: Option<String>,
    pub object_store_service_type: String,
    pub object_store_service_name: Option<String>,
    pub cacert: Option<PathBuf>,
    pub verify: bool,
    /// Where the settings came from (a file, or `environment`), for messages.
    pub source: String,
}

/// The process environment and locations, as data (tests give their own).
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            vars: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

fn config_dirs(env: &Env) -> Vec<PathBuf> {
    let mut dirs = vec![env.cwd.clone()];
    let home_config = env.home.as_ref().map(|h| h.join(".config"));
    match env.var("XDG_CONFIG_HOME") {
        Some(x) => dirs.push(Path::new(x).join("openstack")),
        None => dirs.extend(home_config.iter().map(|c| c.join("openstack"))),
    }
    dirs.extend(home_config.iter().map(|c| c.join("openstack")));
    match env.var("XDG_CONFIG_DIRS") {
        Some(x) => dirs.extend(
            x.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join("openstack")),
        ),
        None => dirs.push(PathBuf::from("/etc/xdg/openstack")),
    }
    dirs.push(PathBuf::from("/etc/openstack"));
    dirs.dedup();
    dirs
}

/// The first existing file among the candidates for `stem` (`clouds`, `secure`).
fn find_file(env: &Env, stem: &str, override_var: &str) -> (Option<PathBuf>, Vec<String>) {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(f) = env.var(override_var) {
        candidates.push(PathBuf::from(f));
    }
    for d in config_dirs(env) {
        for ext in ["yaml", "yml", "json"] {
            candidates.push(d.join(format!("{stem}.{ext}")));
        }
    }
    let searched = candidates.iter().map(|p| p.display().to_string()).collect();
    (candidates.into_iter().find(|p| p.is_file()), searched)
}

fn read_yaml(path: &Path) -> Result<Value, CloudsError> {
    let text = std::fs::read_to_string(path).map_err(|e| CloudsError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_yaml::from_str(&text).map_err(|e| CloudsError::Parse {
        path: path.to_path_buf(),
        // serde_yaml's messages name the location, never the value.
        message: e.to_string(),
    })
}

/// Deep merge: mappings key by key, everything else replaced by `over`.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

const SELECTORS: [&str; 5] = [
    "OS_CLOUD",
    "OS_REGION_NAME",
    "OS_CLIENT_CONFIG_FILE",
    "OS_CLIENT_SECURE_FILE",
    "OS_CLOUD_NAME",
];

/// The `envvars` cloud's settings: every `OS_*` variable but the selectors and the test and
/// logging ones, `OS_` dropped and lowercased. `None` when there is none.
fn envvars_cloud(env: &Env) -> Option<Mapping> {
    let mut m = Mapping::new();
    let mut any = false;
    for (k, v) in &env.vars {
        let Some(rest) = k.strip_prefix("OS_") else {
            continue;
        };
        if rest.starts_with("TEST") || rest.starts_with("STD") || rest.starts_with("LOG") {
            continue;
        }
        if !SELECTORS.contains(&k.as_str()) {
            any = true;
        }
        if k == "OS_CLOUD" || k == "OS_CLIENT_CONFIG_FILE" || k == "OS_CLIENT_SECURE_FILE" {
            continue;
        }
        m.insert(
            Value::from(rest.to_ascii_lowercase()),
            Value::from(v.clone()),
        );
    }
    any.then_some(m)
}

/// Loads the cloud named `wanted` (the site's `cloud`), or the one the environment chooses.
pub fn load(wanted: Option<&str>, env: &Env) -> Result<Cloud, CloudsError> {
    let name = wanted
        .map(str::to_string)
        .or_else(|| env.var("OS_CLOUD").map(str::to_string));
    let envvars_name = env.var("OS_CLOUD_NAME").unwrap_or("envvars").to_string();
    if (name.is_none() || name.as_deref() == Some(envvars_name.as_str()))
        && let Some(m) = envvars_cloud(env)
    {
        return normalise(&envvars_name, m, "environment (OS_*)");
    }
    let (file, searched) = find_file(env, "clouds", "OS_CLIENT_CONFIG_FILE");
    let Some(file) = file else {
        return Err(CloudsError::NoFile { searched });
    };
    let mut doc = read_yaml(&file)?;
    let (secure, _) = find_file(env, "secure", "OS_CLIENT_SECURE_FILE");
    if let Some(secure) = &secure {
        merge(&mut doc, read_yaml(secure)?);
    }
    let clouds = doc
        .get("clouds")
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let mut known: Vec<String> = clouds
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    known.sort();
    let name = match name {
        Some(n) => n,
        None if known.len() == 1 => known[0].clone(),
        None => {
            return Err(CloudsError::Ambiguous {
                path: file,
                count: known.len(),
            });
        }
    };
    let cloud = clouds
        .get(Value::from(name.clone()))
        .and_then(Value::as_mapping)
        .cloned()
        .ok_or_else(|| CloudsError::Unknown {
            name: name.clone(),
            path: file.clone(),
            known: known.clone(),
        })?;
    let source = match &secure {
        Some(s) => format!("{} + {}", file.display(), s.display()),
        None => file.display().to_string(),
    };
    let mut cloud = normalise(&name, cloud, &source)?;
    // OS_REGION_NAME selects a region of a file's cloud, as the SDK does.
    if cloud.region_name.is_none() {
        cloud.region_name = env.var("OS_REGION_NAME").map(str::to_string);
    }
    Ok(cloud)
}

fn key(k: &str) -> String {
    let k = k.replace('-', "_");
    match k.as_str() {
        "tenant_name" => "project_name".into(),
        "tenant_id" => "project_id".into(),
        "auth_token" => "token".into(),
        "auth_plugin" => "auth_type".into(),
        _ => k,
    }
}

fn flatten(m: &Mapping) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let Some(k) = k.as_str() else { continue };
        if k == "auth" {
            if let Some(a) = v.as_mapping() {
                for (ak, av) in a {
                    if let Some(ak) = ak.as_str() {
                        out.insert(key(ak), av.clone());
                    }
                }
            }
        } else {
            out.entry(key(k)).or_insert_with(|| v.clone());
        }
    }
    out
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Some(true),
            "false" | "no" | "0" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn normalise(name: &str, m: Mapping, source: &str) -> Result<Cloud, CloudsError> {
    let f = flatten(&m);
    let get = |k: &str| f.get(k).and_then(text);
    let secret = |k: &str| get(k).map(Secret::new);
    let invalid = |message: String| CloudsError::Invalid {
        cloud: name.to_string(),
        message,
    };
    let auth_type = auth_type(get("auth_type").as_deref()).map_err(invalid)?;
    let auth_url = get("auth_url").ok_or_else(|| invalid("no auth_url".into()))?;
    register_userinfo(&auth_url);
    let interface = {
        let i = get("interface").unwrap_or_else(|| "public".into());
        i.trim_end_matches("URL").to_ascii_lowercase()
    };
    if !matches!(interface.as_str(), "public" | "internal" | "admin") {
        return Err(invalid(format!(
            "interface `{interface}` is not public, internal or admin"
        )));
    }
    let region_name = get("region_name").or_else(|| {
        f.get("regions")
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .and_then(|r| text(r).or_else(|| r.get("name").and_then(text)))
    });
    let verify = match (
        f.get("verify").and_then(truthy),
        f.get("insecure").and_then(truthy),
    ) {
        (Some(v), _) => v,
        (None, Some(insecure)) => !insecure,
        (None, None) => true,
    };
    let project_scoped = get("project_name").is_some() || get("project_id").is_some();
    let domain = |which: &str| {
        get(&format!("{which}_domain_name")).or_else(|| {
            if project_scoped || which == "user" {
                get("domain_name")
            } else {
                None
            }
        })
    };
    let domain_id = |which: &str| {
        get(&format!("{which}_domain_id")).or_else(|| {
            if project_scoped || which == "user" {
                get("domain_id")
            } else {
                None
            }
        })
    };
    let cloud = Cloud {
        name: name.to_string(),
        auth_type,
        auth_url,
        username: get("username"),
        user_id: get("user_id"),
        password: secret("password"),
        user_domain_name: domain("user"),
        user_domain_id: domain_id("user"),
        project_name: get("project_name"),
        project_id: get("project_id"),
        project_domain_name: domain("project"),
        project_domain_id: domain_id("project"),
        application_credential_id: get("application_credential_id"),
        application_credential_name: get("application_credential_name"),
        application_credential_secret: secret("application_credential_secret"),
        token: secret("token"),
        region_name,
        interface,
        object_store_endpoint_override: get("object_store_endpoint_override")
            .or_else(|| get("object_store_endpoint")),
        object_store_interface: get("object_store_interface")
            .map(|i| i.trim_end_matches("URL").to_ascii_lowercase()),
        object_store_region_name: get("object_store_region_name"),
        object_store_service_type: get("object_store_service_type")
            .unwrap_or_else(|| "object-store".into()),
        object_store_service_name: get("object_store_service_name"),
        cacert: get("cacert").map(PathBuf::from),
        verify,
        source: source.to_string(),
    };
    cloud.check_credentials().map_err(|m| invalid(m.into()))?;
    Ok(cloud)
}

fn auth_type(given: Option<&str>) -> Result<AuthType, String> {
    Ok(match given.unwrap_or("password") {
        "password" => AuthType::Password,
        "v3password" => AuthType::V3Password,
        "v3applicationcredential" | "applicationcredential" => AuthType::V3ApplicationCredential,
        "token" | "v3token" => AuthType::Token,
        other => {
            return Err(format!(
                "auth_type `{other}` is not supported (supported: password, v3password, \
                 v3applicationcredential, token, v3token)"
            ));
        }
    })
}

/// `http://user:pass@keystone/…` works, so its user-info is a credential like any other.
fn register_userinfo(auth_url: &str) {
    if let Some((_, rest)) = auth_url.split_once("://")
        && let Some((userinfo, _)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        crate::redact::register(userinfo);
        if let Some((_, password)) = userinfo.split_once(':') {
            crate::redact::register(password);
        }
    }
}

impl Cloud {
    /// What the auth type needs is there.
    fn check_credentials(&self) -> Result<(), &'static str> {
        match self.auth_type {
            AuthType::Password | AuthType::V3Password => {
                if self.username.is_none() && self.user_id.is_none() {
                    return Err("password auth needs username or user_id");
                }
                if self.password.is_none() {
                    return Err(
                        "password auth needs a password (in clouds.yaml, secure.yaml or OS_PASSWORD)",
                    );
                }
            }
            AuthType::V3ApplicationCredential => {
                if self.application_credential_secret.is_none() {
                    return Err("application credential auth needs application_credential_secret");
                }
                if self.application_credential_id.is_none()
                    && (self.application_credential_name.is_none()
                        || (self.username.is_none() && self.user_id.is_none()))
                {
                    return Err(
                        "application credential auth needs application_credential_id, or \
                         application_credential_name with username or user_id",
                    );
                }
            }
            AuthType::Token => {
                if self.token.is_none() {
                    return Err("token auth needs a token");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path, vars: &[(&str, &str)]) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: dir.join("cwd"),
            home: Some(dir.join("home")),
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const CLOUDS: &str = r#"
clouds:
  tacc:
    auth:
      auth_url: https://kvm.example:5000/v3
      username: alice
      tenant-name: CH-1
      domain_name: Default
    regions: [CHI@TACC, other]
    interface: publicURL
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://kvm.example:5000
      application_credential_id: abc
    verify: false
"#;

    #[test]
    fn the_first_file_found_wins_and_secure_yaml_is_merged_over_it() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("home/.config/openstack/clouds.yaml"), CLOUDS);
        // A later directory's file is never read.
        write(&d.path().join("etc/clouds.yaml"), "clouds: {}\n");
        write(
            &d.path().join("home/.config/openstack/secure.yaml"),
            "clouds:\n  tacc:\n    auth:\n      password: s3cret\n  appcred:\n    auth:\n      application_credential_secret: shh\n",
        );
        let e = env(d.path(), &[]);
        let c = load(Some("tacc"), &e).unwrap();
        assert_eq!(c.auth_type, AuthType::Password);
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cret");
        // Aliases and defaults: tenant-name, domain_name to both domains, regions, publicURL.
        assert_eq!(c.project_name.as_deref(), Some("CH-1"));
        assert_eq!(c.user_domain_name.as_deref(), Some("Default"));
        assert_eq!(c.project_domain_name.as_deref(), Some("Default"));
        assert_eq!(c.region_name.as_deref(), Some("CHI@TACC"));
        assert_eq!(c.interface, "public");
        let a = load(Some("appcred"), &e).unwrap();
        assert_eq!(a.auth_type, AuthType::V3ApplicationCredential);
        assert!(!a.verify);
        assert_eq!(a.application_credential_secret.unwrap().expose(), "shh");
    }

    #[test]
    fn os_client_config_file_comes_first_and_os_cloud_chooses() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("cwd/clouds.yaml"), "clouds: {}\n");
        write(&d.path().join("x/mine.yaml"), CLOUDS);
        let path = d.path().join("x/mine.yaml");
        let e = env(
            d.path(),
            &[
                ("OS_CLIENT_CONFIG_FILE", path.to_str().unwrap()),
                ("OS_CLOUD", "appcred"),
            ],
        );
        // No secret anywhere: a clear error naming the cloud, not the file's content.
        let err = load(None, &e).unwrap_err().to_string();
        assert!(err.contains("cloud `appcred`"), "{err}");
        assert!(err.contains("application_credential_secret"), "{err}");
    }

    #[test]
    fn os_variables_make_the_envvars_cloud() {
        let d = tempfile::tempdir().unwrap();
        let e = env(
            d.path(),
            &[
                ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
                ("OS_USERNAME", "ccb"),
                ("OS_PASSWORD", "pw"),
                ("OS_PROJECT_NAME", "ccb"),
                ("OS_USER_DOMAIN_NAME", "Default"),
                ("OS_REGION_NAME", "RegionOne"),
                ("OS_TEST_TIMEOUT", "5"),
            ],
        );
        let c = load(None, &e).unwrap();
        assert_eq!(c.name, "envvars");
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.password.unwrap().expose(), "pw");
        // Selectors alone make no cloud.
        let only = env(d.path(), &[("OS_REGION_NAME", "R")]);
        assert!(matches!(load(None, &only), Err(CloudsError::NoFile { .. })));
    }

    #[test]
    fn unknown_and_ambiguous_clouds_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("cwd/clouds.yaml"), CLOUDS);
        let e = env(d.path(), &[]);
        let err = load(Some("nope"), &e).unwrap_err().to_string();
        assert!(err.contains("appcred, tacc"), "{err}");
        assert!(matches!(
            load(None, &e),
            Err(CloudsError::Ambiguous { count: 2, .. })
        ));
    }

    #[test]
    fn a_cloud_never_prints_its_secrets() {
        let d = tempfile::tempdir().unwrap();
        write(
            &d.path().join("cwd/clouds.yaml"),
            "clouds:\n  c:\n    auth: {auth_url: http://x/v3, username: u, password: hunter2, project_id: p}\n",
        );
        let c = load(None, &env(d.path(), &[])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
