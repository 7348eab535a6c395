//! Settings for the CRM connections and how partners are routed to them.

use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

use super::dynamics::settings::DynamicsSettings;
use super::salesforce::settings::SalesforceSettings;
pub use crate::redact::HttpUrl;

/// Which CRM receives events.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CrmSettings {
    /// Write each CRM action as one JSON line on standard output.
    #[default]
    Log,
    /// POST each event, signed, to an HTTP endpoint.
    Webhook(WebhookSettings),
    /// Write call activity to a Salesforce org through its REST API.
    Salesforce(Box<SalesforceSettings>),
    /// Write call activity to a Dynamics 365 environment (Dataverse Web API).
    Dynamics(Box<DynamicsSettings>),
}

/// Name of the default CRM connection (`[crm]`).
pub const DEFAULT_CONNECTION: &str = "crm";

/// A signed HTTP webhook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where events are POSTed (http or https).
    pub url: HttpUrl,
    /// Standard Webhooks signing secret(s): one string, or a list while
    /// rotating (every request then carries one `v1,` signature per secret).
    /// `whsec_<base64>` is the spec's form (the key is the decoded bytes);
    /// any other string is used as the key's bytes as written.
    pub secret: WebhookSecrets,
    /// Whole-request timeout.
    #[serde(default = "default_crm_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// The webhook signing secrets, in configured order; never shown.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "OneOrMany")]
pub struct WebhookSecrets(Vec<SecretString>);

impl WebhookSecrets {
    /// The HMAC keys: a `whsec_` secret's base64 decoded, any other secret's bytes.
    pub fn keys(&self) -> Vec<SecretSlice<u8>> {
        self.0
            .iter()
            .map(|secret| {
                let key = key_bytes(secret.expose_secret()).expect("checked with the settings");
                SecretSlice::from(key)
            })
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("must name at least one secret".into());
        }
        for secret in &self.0 {
            if key_bytes(secret.expose_secret())?.is_empty() {
                return Err("must not be empty".into());
            }
        }
        Ok(())
    }
}

impl From<SecretString> for WebhookSecrets {
    fn from(secret: SecretString) -> Self {
        WebhookSecrets(vec![secret])
    }
}

const WHSEC: &str = "whsec_";

fn key_bytes(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix(WHSEC) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("a `whsec_` secret is not base64 after its prefix ({e})")),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a secret or a list of secrets")]
enum OneOrMany {
    One(SecretString),
    Many(Vec<SecretString>),
}

impl From<OneOrMany> for WebhookSecrets {
    fn from(value: OneOrMany) -> Self {
        let secrets = match value {
            OneOrMany::One(secret) => vec![secret],
            OneOrMany::Many(secrets) => secrets,
        };
        WebhookSecrets(secrets)
    }
}

impl Serialize for WebhookSecrets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.len() {
            1 => s.serialize_str("[redacted]"),
            n => s.collect_seq((0..n).map(|_| "[redacted]")),
        }
    }
}

fn default_crm_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CrmSettings {
    /// Checks one connection: `Err((field, why))`.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            CrmSettings::Log => Ok(()),
            CrmSettings::Webhook(webhook) => webhook.secret.check().map_err(|why| ("secret", why)),
            CrmSettings::Salesforce(salesforce) => salesforce.check(),
            CrmSettings::Dynamics(dynamics) => dynamics.check(),
        }
    }
}
