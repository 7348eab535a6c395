//! Settings for the CRM connections, how partners are routed to them, and
//! the lanes (one consumer per connection) that keep them apart.

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

/// Isolation between CRM connections, so one partner's failing CRM cannot
/// hold back another's events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// Events one replica sends to one CRM connection at once; more are nak'd
    /// with `busy_retry_after` instead of waiting for a worker slot. Unset:
    /// `worker.concurrency` with `[crm]` alone (no cap), half of it once
    /// `[crms.*]` connections share the workers.
    pub max_in_flight: Option<usize>,
    /// Redelivery delay of an event refused because its CRM is saturated.
    #[serde(with = "humantime_serde")]
    pub busy_retry_after: Duration,
    /// Consecutive transient failures that open a connection's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before trying again.
    #[serde(with = "humantime_serde")]
    pub breaker_open_for: Duration,
}

/// Name of the default CRM connection (`[crm]`).
pub const DEFAULT_CONNECTION: &str = "crm";

/// A lane: one CRM connection and the durable consumer that feeds it. Each
/// lane has its own consumer (and so its own `max_ack_pending` budget), so a
/// connection whose events pile up in redelivery cannot stall the others
/// anywhere in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// `crm` (the default connection) or the name of a `[crms.<name>]`.
    pub connection: String,
    /// `worker.consumer` for the default lane, `<worker.consumer>-<name>` else.
    pub consumer: String,
}

impl Lane {
    pub fn is_default(&self) -> bool {
        self.connection == DEFAULT_CONNECTION
    }
}

impl Settings {
    /// The connection a partner's events go to: `partners.<id>.crm`, else `[crm]`.
    pub fn connection_for(&self, partner: Option<&Guid>) -> &str {
        partner
            .and_then(|id| self.partners.get(id))
            .and_then(|p| p.crm.as_deref())
            .filter(|name| self.crms.contains_key(*name))
            .unwrap_or(DEFAULT_CONNECTION)
    }

    /// Every lane: the default one first, then one per `[crms.<name>]`.
    pub fn lanes(&self) -> Vec<Lane> {
        let consumer = &self.worker.consumer;
        std::iter::once(Lane {
            connection: DEFAULT_CONNECTION.to_owned(),
            consumer: consumer.clone(),
        })
        .chain(self.crms.keys().map(|name| Lane {
            connection: name.clone(),
            consumer: format!("{consumer}-{name}"),
        }))
        .collect()
    }

    /// Calls one replica makes to one CRM connection at once (see
    /// [`RoutingSettings::max_in_flight`]).
    pub fn max_in_flight(&self) -> usize {
        self.routing
            .max_in_flight
            .unwrap_or(if self.crms.is_empty() {
                self.worker.concurrency
            } else {
                (self.worker.concurrency / 2).max(1)
            })
    }
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            busy_retry_after: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(30),
        }
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
