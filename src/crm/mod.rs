//! The CRM side: a trait every adapter implements (`log`, `webhook`,
//! `salesforce`, `dynamics`), the record it receives, the split of failures into the
//! connection's trouble (the lane holds its events) and the event's own
//! (retry or dead-letter), and the configured connections by name.

pub(crate) mod activity;
pub(crate) mod dynamics;
mod http;
mod log;
pub(crate) mod salesforce;
pub(crate) mod settings;
mod tokens;
mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::config::Settings;
use crate::contract::{Event, EventKind, Guid};

pub use self::activity::bucket_config;
pub use self::activity::{BatchSettings, CallMemorySettings};
pub use self::dynamics::{DynamicsCrm, DynamicsLookup, DynamicsSettings, phonecall_id};
pub use self::http::{classify_response, client as http_client};
pub use self::log::LogCrm;
pub use self::salesforce::{
    DispositionSource, JWT_BEARER_GRANT, LIMIT_INFO_HEADER, LookupSettings, MAPPABLE_FIELDS,
    PresenceAction, PresenceSettings, SalesforceAuth, SalesforceCrm, SalesforceSettings,
};
pub use self::settings::{CrmSettings, DEFAULT_CONNECTION, HttpUrl, WebhookSettings};
pub use self::webhook::{WebhookCrm, sign};

/// An event as the CRM sees it: stable id, decoded payload, verbatim body.
#[derive(Debug, Clone)]
pub struct CrmEvent {
    /// Stays the same across redeliveries and replicas (see subjects.md).
    pub id: String,
    pub event: Event,
    /// The body exactly as the softphone published it: one JSON value in
    /// UTF-8 (the lane checked both when it decoded the event, once).
    pub raw: bytes::Bytes,
    /// When JetStream stored the event: orders events of one call.
    pub published: time::OffsetDateTime,
    /// The event's sequence in `SOFTPHONE_EVENTS`.
    pub sequence: u64,
    /// With `[callout]`: the partner the server vouches for, the account the
    /// event was published from (its body names no other: the intake
    /// dead-lettered any that did).
    pub vouched: Option<Guid>,
}

impl CrmEvent {
    pub fn kind(&self) -> EventKind {
        self.event.kind()
    }

    /// The event's partner: the one the server vouches for, else the one its
    /// body names.
    pub fn partner(&self) -> Option<&Guid> {
        self.vouched.as_ref().or(self.event.partner_id())
    }

    /// The JSON document adapters send or write: `{"event", "id", "partnerId",
    /// "conversationId", "publishedAt", "sequence", "data"}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Document<'a> {
            event: &'a str,
            id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            partner_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            conversation_id: Option<&'a str>,
            published_at: String,
            sequence: u64,
        }
        let published_at = self
            .published
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut document = serde_json::to_vec(&Document {
            event: self.kind().name(),
            id: &self.id,
            partner_id: self.partner().map(|g| g.as_str()),
            conversation_id: self.event.conversation_id().map(|g| g.as_str()),
            published_at,
            sequence: self.sequence,
        })
        .expect("a document of strings always serializes");
        // The body goes in verbatim as `data`, without parsing it again.
        document.pop();
        document.reserve(self.raw.len() + 9);
        document.extend_from_slice(b",\"data\":");
        document.extend_from_slice(&self.raw);
        document.push(b'}');
        document
    }
}

/// Why a CRM action failed: the connection's trouble, or the event's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    /// The connection is in trouble, whatever the event: unreachable, timing
    /// out, 5xx, rate-limited, refusing the integration's credentials, out of
    /// API allowance. The event is not at fault: its lane holds it (and
    /// pauses once the trouble persists), spending none of its deliveries.
    #[error("CRM connection unavailable: {reason}")]
    Unavailable {
        reason: String,
        /// What the CRM asked for (`Retry-After`), if anything.
        retry_after: Option<Duration>,
    },
    /// This event failed for now (its record is locked, a write raced
    /// another): retried through redelivery, spending one delivery.
    #[error("transient CRM failure: {reason}")]
    Transient {
        reason: String,
        /// What the CRM asked for (`Retry-After`), if anything.
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: the CRM refused this event.
    #[error("CRM refused the event: {reason}")]
    Permanent {
        reason: String,
        /// The CRM's own error text, truncated.
        detail: Option<String>,
    },
}

/// A CRM connection. Implementations must be idempotent per event id: a
/// conversation's events come one at a time in publish order, but the same
/// event may come again (redelivered after a replica died mid-call, or
/// replayed by an operator).
pub trait Crm: Send + Sync + 'static {
    /// The adapter's kind (`log`, `webhook`, `salesforce`, `dynamics`).
    fn name(&self) -> &str;

    /// Performs whatever the CRM does for this event.
    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>>;

    /// Events of this connection's lane a replica should work at once, when
    /// the adapter needs more than `worker.concurrency` (to fill its batches).
    fn concurrency(&self) -> Option<usize> {
        None
    }

    /// The API usage `(used, limit)` as last reported, for CRMs that report
    /// one (Salesforce: the org's daily requests; Dataverse: the requests of
    /// the service protection window).
    fn api_usage(&self) -> Option<(u64, u64)> {
        None
    }

    /// Checks that the connection works, for `softphone-bridge doctor`:
    /// what was checked, or why it fails (never a secret).
    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(std::future::ready(Ok("nothing to reach".to_owned())))
    }

    /// The disposition codes the CRM itself allows for the partner's calls,
    /// when it knows them; `None` leaves the configured lists in charge.
    fn dispositions<'a>(&'a self, partner: Option<&'a Guid>) -> BoxFuture<'a, Option<Vec<String>>> {
        let _ = partner;
        Box::pin(std::future::ready(None))
    }
}

/// Routing: which connection a partner's events go to. Decided once for an
/// event, by the intake; the lanes read it from the event's copy.
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

    /// Whether a connection logs calls as records (Salesforce, Dynamics):
    /// then the call memory is used.
    pub(crate) fn uses_call_memory(&self) -> bool {
        self.connections()
            .any(|(_, crm)| matches!(crm, CrmSettings::Salesforce(_) | CrmSettings::Dynamics(_)))
    }
}

/// Every configured CRM connection, by its name in the configuration (`crm`
/// for `[crm]`, else the key of `[crms.<name>]`).
#[derive(Clone)]
pub struct Connections(BTreeMap<String, Arc<dyn Crm>>);

impl Connections {
    /// Builds the adapter of every connection the settings define; with
    /// `js`, Salesforce connections share the call memory (`call_memory`).
    pub fn build(settings: &Settings, js: Option<&jetstream::Context>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let client = http_client()?;
        settings
            .connections()
            .map(|(name, crm)| {
                let key = if name == DEFAULT_CONNECTION {
                    "[crm]".to_owned()
                } else {
                    format!("[crms.{name}]")
                };
                let crm = build(name, crm, &client, js.map(|js| (js, &settings.call_memory)))
                    .context(key)?;
                Ok((name.to_owned(), crm))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// Connections built elsewhere (tests, benchmarks, embedders).
    pub fn new(connections: impl IntoIterator<Item = (String, Arc<dyn Crm>)>) -> Self {
        Self(connections.into_iter().collect())
    }

    /// The connection of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Crm>> {
        self.0.get(name)
    }

    /// The connection a partner's events go to (see [`Settings::connection_for`]).
    pub(crate) fn for_partner(
        &self,
        settings: &Settings,
        partner: Option<&Guid>,
    ) -> Option<&Arc<dyn Crm>> {
        self.get(settings.connection_for(partner))
    }

    /// Every connection, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Crm>)> {
        self.0.iter().map(|(name, crm)| (name.as_str(), crm))
    }
}

/// Builds the CRM adapter the settings describe; `name` is its name in the
/// configuration (`crm`, or the key of `[crms.<name>]`).
fn build(
    name: &str,
    settings: &CrmSettings,
    client: &reqwest::Client,
    memory: Option<(&jetstream::Context, &CallMemorySettings)>,
) -> anyhow::Result<Arc<dyn Crm>> {
    Ok(match settings {
        CrmSettings::Log => Arc::new(LogCrm::stdout()),
        CrmSettings::Webhook(webhook) => Arc::new(WebhookCrm::new(webhook, client.clone())),
        CrmSettings::Salesforce(salesforce) => {
            let crm = SalesforceCrm::new(name, salesforce, client.clone())?;
            Arc::new(match memory {
                Some((js, settings)) => crm.with_memory(js.clone(), settings),
                None => crm,
            })
        }
        CrmSettings::Dynamics(dynamics) => {
            let crm = DynamicsCrm::new(name, dynamics, client.clone())?;
            Arc::new(match memory {
                Some((js, settings)) => crm.with_memory(js.clone(), settings),
                None => crm,
            })
        }
    })
}
