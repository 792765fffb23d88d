//! Keystone v3 tokens for a cloud of clouds.yaml, and the object-store endpoint from the
//! token's catalog. The token is renewed when it has less than two minutes left (as
//! keystoneauth does) or when Swift refuses it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::PublishError;
use super::clouds::{AuthType, Cloud};
use super::swift::Auth;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum KeystoneError {
    #[error("cloud `{cloud}`: Keystone at {url} refused the credentials (HTTP {status}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    #[diagnostic(
        code(ccb::keystone::refused),
        help(
            "check the cloud's credentials in clouds.yaml / secure.yaml (they are never printed)"
        )
    )]
    Refused {
        cloud: String,
        url: String,
        status: u16,
        detail: Option<String>,
    },
    #[error("cloud `{cloud}`: cannot reach Keystone at {url}: {message}")]
    #[diagnostic(code(ccb::keystone::unreachable))]
    Unreachable {
        cloud: String,
        url: String,
        message: String,
    },
    #[error("cloud `{cloud}`: {message}")]
    #[diagnostic(code(ccb::keystone::invalid))]
    Invalid { cloud: String, message: String },
}

/// Renew when a token has less than this left (keystoneauth's MIN_TOKEN_LIFE_SECONDS).
const MIN_TOKEN_LIFE: u64 = 120;

struct TokenState {
    token: Secret,
    expires_at: u64,
    storage_url: String,
}

/// A Keystone session for one cloud: [`Auth`] for [`super::swift::SwiftSite`].
pub struct Session {
    cloud: Cloud,
    agent: ureq::Agent,
    region: Option<String>,
    state: Mutex<Option<TokenState>>,
    min_life: u64,
}

/// An HTTP agent honouring the cloud's `cacert` and `verify`.
pub fn agent_for(cloud: &Cloud) -> Result<ureq::Agent, KeystoneError> {
    let mut tls = ureq::tls::TlsConfig::builder().disable_verification(!cloud.verify);
    if let Some(path) = &cloud.cacert {
        let pem = std::fs::read(path).map_err(|e| KeystoneError::Invalid {
            cloud: cloud.name.clone(),
            message: format!("cacert {}: {e}", path.display()),
        })?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(KeystoneError::Invalid {
                cloud: cloud.name.clone(),
                message: format!("cacert {} holds no PEM certificate", path.display()),
            });
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(300)))
        .tls_config(tls.build())
        .build()
        .new_agent())
}

impl Session {
    /// `region`: the site's, else the cloud's.
    pub fn new(cloud: Cloud, region: Option<String>) -> Result<Self, KeystoneError> {
        let agent = agent_for(&cloud)?;
        Ok(Self {
            region: region.or_else(|| {
                cloud
                    .object_store_region_name
                    .clone()
                    .or_else(|| cloud.region_name.clone())
            }),
            cloud,
            agent,
            state: Mutex::new(None),
            min_life: MIN_TOKEN_LIFE,
        })
    }

    /// Renew tokens that have less than `d` left (default two minutes).
    pub fn renew_when_less_than(mut self, d: Duration) -> Self {
        self.min_life = d.as_secs();
        self
    }

    pub fn agent(&self) -> ureq::Agent {
        self.agent.clone()
    }

    fn invalid(&self, message: impl Into<String>) -> KeystoneError {
        KeystoneError::Invalid {
            cloud: self.cloud.name.clone(),
            message: message.into(),
        }
    }

    /// `…/v3`, whatever form auth_url has (with or without the version).
    fn v3_url(&self) -> String {
        let base = self.cloud.auth_url.trim_end_matches('/');
        if base.ends_with("/v3") {
            base.to_string()
        } else {
            format!("{base}/v3")
        }
    }

    fn body(&self) -> Value {
        let c = &self.cloud;
        let domain = |name: &Option<String>, id: &Option<String>| match (id, name) {
            (Some(id), _) => Some(json!({ "id": id })),
            (None, Some(name)) => Some(json!({ "name": name })),
            (None, None) => None,
        };
        let user = || {
            let mut u = serde_json::Map::new();
            if let Some(id) = &c.user_id {
                u.insert("id".into(), json!(id));
            } else if let Some(name) = &c.username {
                u.insert("name".into(), json!(name));
                u.insert(
                    "domain".into(),
                    domain(&c.user_domain_name, &c.user_domain_id)
                        .unwrap_or_else(|| json!({ "id": "default" })),
                );
            }
            u
        };
        let scope = || -> Option<Value> {
            if let Some(id) = &c.project_id {
                return Some(json!({ "project": { "id": id } }));
            }
            c.project_name.as_ref().map(|name| {
                json!({ "project": {
                    "name": name,
                    "domain": domain(&c.project_domain_name, &c.project_domain_id)
                        .unwrap_or_else(|| json!({ "id": "default" })),
                }})
            })
        };
        let mut auth = match c.auth_type {
            AuthType::Password | AuthType::V3Password => {
                let mut u = user();
                u.insert(
                    "password".into(),
                    json!(c.password.as_ref().map(Secret::expose).unwrap_or_default()),
                );
                json!({ "identity": { "methods": ["password"], "password": { "user": u } } })
            }
            AuthType::V3ApplicationCredential => {
                let mut ac = serde_json::Map::new();
                if let Some(id) = &c.application_credential_id {
                    ac.insert("id".into(), json!(id));
                } else {
                    ac.insert("name".into(), json!(c.application_credential_name));
                    ac.insert("user".into(), Value::Object(user()));
                }
                ac.insert(
                    "secret".into(),
                    json!(
                        c.application_credential_secret
                            .as_ref()
                            .map(Secret::expose)
                            .unwrap_or_default()
                    ),
                );
                json!({ "identity": { "methods": ["application_credential"], "application_credential": ac } })
            }
            AuthType::Token => json!({ "identity": { "methods": ["token"], "token": {
                "id": c.token.as_ref().map(Secret::expose).unwrap_or_default() } } }),
        };
        // Application credentials carry their project and refuse a scope.
        if c.auth_type != AuthType::V3ApplicationCredential
            && let Some(s) = scope()
        {
            auth["scope"] = s;
        }
        json!({ "auth": auth })
    }

    fn authenticate(&self) -> Result<TokenState, PublishError> {
        let url = format!("{}/auth/tokens", self.v3_url());
        // What reaches the error is redacted: the auth URL may carry user-info, and a
        // transport error may quote what was sent.
        let shown = crate::redact::url(&url);
        let unreachable = |message: String| KeystoneError::Unreachable {
            cloud: self.cloud.name.clone(),
            url: shown.clone(),
            message: crate::redact::text(&message),
        };
        let body = serde_json::to_vec(&self.body()).expect("a token request serializes");
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .map_err(|e| unreachable(e.to_string()))?;
        if status != 201 && status != 200 {
            let detail = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(crate::redact::text));
            return Err(KeystoneError::Refused {
                cloud: self.cloud.name.clone(),
                url: shown,
                status,
                detail,
            }
            .into());
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new)
            .ok_or_else(|| self.invalid("Keystone's reply has no X-Subject-Token"))?;
        let doc: Value = serde_json::from_slice(&text)
            .map_err(|e| self.invalid(format!("Keystone's token reply is not JSON: {e}")))?;
        let expires_at = doc["token"]["expires_at"]
            .as_str()
            .and_then(parse_time)
            .ok_or_else(|| self.invalid("Keystone's token has no readable expires_at"))?;
        let storage_url = match &self.cloud.object_store_endpoint_override {
            Some(u) => u.clone(),
            None => self.endpoint(&doc["token"]["catalog"])?,
        };
        Ok(TokenState {
            token,
            expires_at,
            storage_url,
        })
    }

    /// The object-store endpoint of the catalog for the interface and region.
    fn endpoint(&self, catalog: &Value) -> Result<String, KeystoneError> {
        let c = &self.cloud;
        let interface = c
            .object_store_interface
            .clone()
            .unwrap_or_else(|| c.interface.clone());
        let services = catalog.as_array().cloned().unwrap_or_default();
        let mut seen = Vec::new();
        for s in &services {
            if s["type"].as_str() != Some(c.object_store_service_type.as_str()) {
                continue;
            }
            if let Some(name) = &c.object_store_service_name
                && s["name"].as_str() != Some(name.as_str())
            {
                continue;
            }
            for e in s["endpoints"].as_array().into_iter().flatten() {
                let region = e["region_id"].as_str().or(e["region"].as_str());
                seen.push(format!(
                    "{} {}",
                    e["interface"].as_str().unwrap_or("?"),
                    region.unwrap_or("-")
                ));
                if e["interface"].as_str() != Some(interface.as_str()) {
                    continue;
                }
                if let Some(want) = &self.region
                    && e["region_id"].as_str() != Some(want.as_str())
                    && e["region"].as_str() != Some(want.as_str())
                {
                    continue;
                }
                if let Some(url) = e["url"].as_str() {
                    return Ok(url.to_string());
                }
            }
        }
        Err(self.invalid(format!(
            "no {} endpoint for interface `{interface}`{} in the catalog (it has: {})",
            c.object_store_service_type,
            self.region
                .as_deref()
                .map(|r| format!(" in region `{r}`"))
                .unwrap_or_default(),
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        )))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth for Session {
    fn credentials(&self) -> Result<(Secret, String), PublishError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| self.invalid("token state poisoned"))?;
        let fresh = state
            .as_ref()
            .is_some_and(|s| s.expires_at > now() + self.min_life);
        if !fresh {
            *state = Some(self.authenticate()?);
        }
        let s = state.as_ref().expect("set above");
        Ok((s.token.clone(), s.storage_url.clone()))
    }

    fn invalidate(&self) {
        if let Ok(mut s) = self.state.lock() {
            *s = None;
        }
    }
}

/// Seconds since the epoch of a Keystone time (`2026-11-27T18:21:43.000000Z`, or with an
/// offset of `+00:00`). Written here rather than pulling a date crate for one format.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time
        .trim_end_matches('Z')
        .trim_end_matches("+00:00")
        .split('.')
        .next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_times_parse_to_unix_seconds() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2000-02-29T00:00:00.000000Z"), Some(951_782_400));
        assert_eq!(
            parse_time("2026-11-27T18:21:43.000000Z"),
            Some(1_795_803_703)
        );
        assert_eq!(parse_time("2026-11-27T18:21:43+00:00"), Some(1_795_803_703));
        assert_eq!(parse_time("nonsense"), None);
        // Round trip with the formatter the provenance uses.
        let (iso, _) = crate::contract::utc(1_795_803_703);
        assert_eq!(parse_time(&iso), Some(1_795_803_703));
    }
}
