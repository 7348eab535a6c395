//! Settings for the CRM connections and how partners are routed to them.

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{SalesforceSettings, Settings, redact, redacted_url};
use crate::contract::Guid;

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
}

/// Name of the default CRM connection (`[crm]`).
pub const DEFAULT_CONNECTION: &str = "crm";

impl Settings {
    /// The connection a partner's events go to: `partners.<id>.crm`, else `[crm]`.
    pub fn connection_for(&self, partner: Option<&Guid>) -> &str {
        partner
            .and_then(|id| self.partners.get(id))
            .and_then(|p| p.crm.as_deref())
            .filter(|name| self.crms.contains_key(*name))
            .unwrap_or(DEFAULT_CONNECTION)
    }

    /// Every connection: `crm` (the `[crm]` section) first, then each `[crms.<name>]`.
    pub fn connections(&self) -> impl Iterator<Item = (&str, &CrmSettings)> {
        std::iter::once((DEFAULT_CONNECTION, &self.crm))
            .chain(self.crms.iter().map(|(name, crm)| (name.as_str(), crm)))
    }
}

/// A signed HTTP webhook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where events are POSTed (http or https).
    pub url: HttpUrl,
    /// HMAC-SHA256 key of `X-Softphone-Signature`.
    #[serde(serialize_with = "redact")]
    pub secret: SecretString,
    /// Whole-request timeout.
    #[serde(default = "default_crm_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// An absolute http(s) URL; any `user:password@` part is never echoed back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(Url);

impl HttpUrl {
    pub fn as_url(&self) -> &Url {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let shown = redacted_url(&text);
        let url = Url::parse(&text).map_err(|e| format!("url {shown:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {shown:?} is not an http(s) URL"));
        }
        Ok(HttpUrl(url))
    }
}

impl From<HttpUrl> for String {
    fn from(url: HttpUrl) -> String {
        url.0.into()
    }
}

fn default_crm_timeout() -> Duration {
    Duration::from_secs(10)
}

impl CrmSettings {
    /// Checks one connection: `Err((field, why))`.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            CrmSettings::Log => Ok(()),
            CrmSettings::Webhook(webhook) => {
                if secrecy::ExposeSecret::expose_secret(&webhook.secret).is_empty() {
                    return Err(("secret", "must not be empty".into()));
                }
                Ok(())
            }
            CrmSettings::Salesforce(salesforce) => salesforce.check(),
        }
    }
}
