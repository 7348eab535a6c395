//! Typed settings, read in layers: built-in defaults, then a TOML file, then
//! `SOFTPHONE_BRIDGE_*` environment variables (`__` separates nested keys).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::contract::Guid;

mod http;

pub use http::{HttpSettings, HttpTls, RegistrySettings, TokenSettings, UnknownSoftphones};
pub use salesforce::{
    DispositionSource, LookupSettings, MAPPABLE_FIELDS, PresenceAction, PresenceSettings,
    SalesforceAuth, SalesforceSettings,
};

mod salesforce;

/// Prefix of the environment variables read as settings.
pub const ENV_PREFIX: &str = "SOFTPHONE_BRIDGE_";
/// Environment variable naming the TOML file (`--config` wins over it).
pub const CONFIG_ENV: &str = "SOFTPHONE_BRIDGE_CONFIG";

/// Everything softphone-bridge can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsSettings,
    /// The JetStream streams the bridge provisions.
    #[serde(default)]
    pub streams: StreamSettings,
    /// The event consumer.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// The CRM that receives events (partners without a CRM of their own).
    #[serde(default)]
    pub crm: CrmSettings,
    /// Named CRM connections that partners are routed to (`partners.<id>.crm`).
    #[serde(default)]
    pub crms: BTreeMap<String, CrmSettings>,
    /// How events are spread over CRM connections.
    #[serde(default)]
    pub routing: RoutingSettings,
    /// Disposition codes sent on `load` to softphones whose partner has no list.
    #[serde(default = "default_dispositions")]
    pub dispositions: Vec<String>,
    /// Per-partner settings, keyed by the partner's GUID.
    #[serde(default)]
    pub partners: BTreeMap<Guid, PartnerSettings>,
    /// Logs.
    #[serde(default)]
    pub log: LogSettings,
    /// The HTTP command API, health and metrics.
    #[serde(default)]
    pub http: HttpSettings,
    /// The softphone registry (a JetStream key-value bucket).
    #[serde(default)]
    pub registry: RegistrySettings,
}

/// Connection to NATS. At most one of token, user/password and creds_file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL(s), comma separated: `nats://host:4222,tls://other:4222`.
    #[serde(serialize_with = "redact_url")]
    pub url: String,
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Token authentication.
    #[serde(serialize_with = "redact_opt")]
    pub token: Option<SecretString>,
    /// User for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[serde(serialize_with = "redact_opt")]
    pub password: Option<SecretString>,
    /// A `.creds` file (JWT and NKey seed), as issued by `nsc`.
    pub creds_file: Option<PathBuf>,
    /// TLS towards the server.
    pub tls: NatsTls,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a JetStream API call or publish acknowledgement may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: "softphone-bridge".into(),
            token: None,
            user: None,
            password: None,
            creds_file: None,
            tls: NatsTls::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTls {
    /// Refuse to connect without TLS.
    pub required: bool,
    /// PEM file of the CA(s) that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The streams `provision` creates or updates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Create or update the streams and the consumer when `run` starts.
    pub provision_on_start: bool,
    /// Replicas of each stream (1, or 3 on a cluster).
    pub replicas: usize,
    /// How long unconsumed events are kept.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// How long a callback waits for its softphone. Short, so an offline softphone
    /// catches up on reconnect but a stale click-to-dial never fires late.
    #[serde(with = "humantime_serde")]
    pub commands_max_age: Duration,
    /// How long dead-lettered events are kept.
    #[serde(with = "humantime_serde")]
    pub dlq_max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            provision_on_start: true,
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            commands_max_age: Duration::from_secs(60),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// The durable consumer all replicas share, and how each replica works it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Durable consumer name; replicas with the same name share the work.
    pub consumer: String,
    /// Events one replica handles at once.
    pub concurrency: usize,
    /// Events the whole pool may hold unacknowledged at once.
    pub max_ack_pending: i64,
    /// How long the server waits for an ack before redelivering. The worker
    /// signals progress while a CRM call runs, so this only bounds crashes.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries after which a still-failing event is dead-lettered.
    pub max_deliveries: u32,
    /// Redelivery delays after the 1st, 2nd, ... failure; the last repeats.
    #[serde(with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Upper bound on a CRM's `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// On SIGTERM, how long in-flight events may take before they are nak'd.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            consumer: "softphone-bridge".into(),
            concurrency: 32,
            max_ack_pending: 1000,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 8,
            backoff: [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec(),
            max_retry_after: Duration::from_secs(900),
            shutdown_deadline: Duration::from_secs(20),
        }
    }
}

impl WorkerSettings {
    /// The delay before the next delivery, after `deliveries` failed ones.
    pub fn backoff_after(&self, deliveries: u32) -> Duration {
        let index = (deliveries.max(1) - 1) as usize;
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

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

/// What the bridge knows of one partner.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSettings {
    /// `businessSegmentId` of the `partner_config` callback.
    pub business_segment_id: Guid,
    /// `channelOriginId` of the `partner_config` callback.
    pub channel_origin_id: Guid,
    /// Disposition codes for this partner's softphones (else the global list).
    #[serde(default)]
    pub dispositions: Option<Vec<String>>,
    /// Name of the `[crms.<name>]` connection for this partner's events
    /// (else `[crm]`).
    #[serde(default)]
    pub crm: Option<String>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: LogFormat,
    /// Filter directives (`info`, `softphone_bridge=debug,async_nats=warn`);
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

fn default_dispositions() -> Vec<String> {
    ["Resolved", "Follow-up required", "Escalated", "No answer"]
        .map(String::from)
        .to_vec()
}

/// A URL list with any `user:password@` part replaced, for logs and errors.
pub fn redacted_url(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}[redacted]@{}", &url[..scheme + 3], &url[at + 1..])
            }
            (None, Some(at)) => format!("[redacted]@{}", &url[at + 1..]),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

/// `["1s", "5s", "2m"]` as a list of durations.
mod duration_list {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(Serde::from))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<Serde<Duration>>::deserialize(d)?;
        Ok(list.into_iter().map(Serde::into_inner).collect())
    }
}

fn redact<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => redact(secret, s),
        None => s.serialize_none(),
    }
}

impl CrmSettings {
    /// Checks one connection: `Err((field, why))`.
    fn check(&self) -> Result<(), (&'static str, String)> {
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

/// A configuration error: one line naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Reads the layers: defaults, the TOML file (if any), the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let figment = Self::figment(file)?;
        let settings: Settings = figment.extract().map_err(describe)?;
        settings.check(&figment)?;
        Ok(settings)
    }

    /// Reads settings from TOML text alone (no file, no environment): for tests
    /// and tools that build a configuration in code.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let figment = Figment::from(Toml::string(text));
        let settings: Settings = figment.extract().map_err(describe)?;
        settings.check(&figment)?;
        Ok(settings)
    }

    fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")))
    }

    /// Checks what serde cannot: relations between keys.
    fn check(&self, figment: &Figment) -> Result<(), ConfigError> {
        let fail = |key: &str, why: String| {
            Err(ConfigError(format!("{key}: {why}{}", origin(figment, key))))
        };
        for url in self.nats.url.split(',') {
            if let Err(e) = url.trim().parse::<async_nats::ServerAddr>() {
                let url = redacted_url(url);
                return fail(
                    "nats.url",
                    format!("{url:?} is not a NATS server address ({e})"),
                );
            }
        }
        let auth_methods = [
            self.nats.token.is_some(),
            self.nats.user.is_some() || self.nats.password.is_some(),
            self.nats.creds_file.is_some(),
        ];
        if auth_methods.iter().filter(|set| **set).count() > 1 {
            return fail(
                "nats",
                "set only one of token, user/password and creds_file".into(),
            );
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return fail("nats.user", "user and password go together".into());
        }
        if self.nats.tls.cert_file.is_some() != self.nats.tls.key_file.is_some() {
            return fail(
                "nats.tls.cert_file",
                "cert_file and key_file go together".into(),
            );
        }
        if self.worker.concurrency == 0 {
            return fail("worker.concurrency", "must be at least 1".into());
        }
        if self.worker.max_deliveries == 0 {
            return fail("worker.max_deliveries", "must be at least 1".into());
        }
        if self.worker.backoff.is_empty() {
            return fail("worker.backoff", "needs at least one delay".into());
        }
        if self.worker.ack_wait < Duration::from_secs(1) {
            return fail("worker.ack_wait", "must be at least 1s".into());
        }
        if self.streams.replicas == 0 || self.streams.replicas > 5 {
            return fail("streams.replicas", "must be between 1 and 5".into());
        }
        http::check(self, &|key, why| {
            ConfigError(format!("{key}: {why}{}", origin(figment, key)))
        })?;
        let bucket = &self.registry.bucket;
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return fail(
                "registry.bucket",
                format!("{bucket:?} is not a bucket name (letters, digits, '-', '_')"),
            );
        }
        if self.registry.idle_ttl < Duration::from_secs(1) {
            return fail("registry.idle_ttl", "must be at least 1s".into());
        }
        let crms = std::iter::once(("crm".to_owned(), &self.crm)).chain(
            self.crms
                .iter()
                .map(|(name, crm)| (format!("crms.{name}"), crm)),
        );
        for (key, crm) in crms {
            if let Err((field, why)) = crm.check() {
                return fail(&format!("{key}.{field}"), why);
            }
        }
        for name in self.crms.keys() {
            // The name becomes part of a consumer name.
            let token = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !token || name == DEFAULT_CONNECTION {
                return fail(
                    &format!("crms.{name}"),
                    format!(
                        "a connection name is 1 to 64 letters, digits, '-' or '_', and not {DEFAULT_CONNECTION:?}"
                    ),
                );
            }
        }
        for (id, partner) in &self.partners {
            if let Some(name) = &partner.crm
                && !self.crms.contains_key(name)
            {
                let known: Vec<&str> = self.crms.keys().map(String::as_str).collect();
                return fail(
                    &format!("partners.{id}.crm"),
                    format!("no [crms.{name}] connection is defined (defined: {known:?})"),
                );
            }
        }
        if self.routing.max_in_flight == Some(0) {
            return fail("routing.max_in_flight", "must be at least 1".into());
        }
        if self.routing.breaker_failures == 0 {
            return fail("routing.breaker_failures", "must be at least 1".into());
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// The partner's settings, if it is configured.
    pub fn partner(&self, partner_id: &Guid) -> Option<&PartnerSettings> {
        self.partners.get(partner_id)
    }
}

/// " (set in <where>)", for the key's value, if figment knows its source.
fn origin(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|md| format!(" (set in {})", source_name(md, key)))
        .unwrap_or_default()
}

fn source_name(md: &figment::Metadata, key: &str) -> String {
    match &md.source {
        // figment shows files relative to the working directory; show them as given.
        Some(figment::Source::File(path)) => format!("{} {}", md.name, path.display()),
        Some(source) => format!("{} {source}", md.name),
        None if md.name.contains("environment") => {
            let var = format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            );
            if std::env::var_os(&var).is_some() {
                format!("environment variable {var}")
            } else {
                format!("environment variables {var}__*")
            }
        }
        None => md.name.to_string(),
    }
}

fn describe(error: figment::Error) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            // Name the missing key itself, not only the section it belongs in.
            if let figment::error::Kind::MissingField(field) = &e.kind {
                path.push(field.to_string());
            }
            let key = path.join(".");
            let section = e.path.join(".");
            let place = e
                .metadata
                .as_ref()
                .map(|md| format!(" (set in {})", source_name(md, &section)))
                .unwrap_or_default();
            let key = if key.is_empty() {
                "<top level>".into()
            } else {
                format!("`{key}`")
            };
            format!("{key}: {}{place}", e.kind)
        })
        .collect();
    ConfigError(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_repeats_its_last_step() {
        let w = WorkerSettings {
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            ..Default::default()
        };
        assert_eq!(w.backoff_after(1), Duration::from_secs(1));
        assert_eq!(w.backoff_after(2), Duration::from_secs(5));
        assert_eq!(w.backoff_after(9), Duration::from_secs(5));
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redacted_url("nats://bob:pw@a:4222, tls://tok@b:4222,c:4222"),
            "nats://[redacted]@a:4222, tls://[redacted]@b:4222,c:4222"
        );
    }

    #[test]
    fn secrets_are_redacted_in_the_rendered_config() {
        let settings = Settings {
            crm: CrmSettings::Webhook(WebhookSettings {
                url: HttpUrl::try_from("https://crm.example/hook".to_owned()).unwrap(),
                secret: SecretString::from("s3cr3t-value"),
                timeout: Duration::from_secs(3),
            }),
            ..figment::Figment::new().extract::<Settings>().unwrap()
        };
        let rendered = settings.to_redacted_toml();
        assert!(!rendered.contains("s3cr3t-value"));
        assert!(rendered.contains("[redacted]"));
        assert!(!format!("{settings:?}").contains("s3cr3t-value"));
    }

    const SALESFORCE: &str = r#"
kind = "salesforce"
auth = "client_credentials"
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9-consumer-key"
client_secret = "sf-client-s3cr3t"
"#;

    #[test]
    fn partners_route_to_named_connections_that_exist() {
        let base = format!(
            "[crms.acme]\n{SALESFORCE}\n[partners.215fd887-39be-4935-981f-2670d6afeaa7]\nbusiness_segment_id = \"d6afeaa7-39be-4935-981f-2670215fd887\"\nchannel_origin_id = \"57053e21-0440-4689-a27a-513d7dceebde\"\n"
        );
        let ok = Settings::from_toml(&format!("{base}crm = \"acme\"\n")).unwrap();
        assert!(matches!(ok.crms["acme"], CrmSettings::Salesforce(_)));
        let err = Settings::from_toml(&format!("{base}crm = \"other\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partners.215fd887-39be-4935-981f-2670d6afeaa7.crm")
                && err.contains("[crms.other]"),
            "{err}"
        );
    }

    #[test]
    fn salesforce_settings_are_checked_and_redacted() {
        let jwt_without_key = "[crm]\nkind = \"salesforce\"\nauth = \"jwt_bearer\"\nlogin_url = \"https://login.salesforce.com\"\nclient_id = \"k\"\nusername = \"u@x\"\n";
        let err = Settings::from_toml(jwt_without_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("crm.private_key_file"), "{err}");
        let err = Settings::from_toml(&format!(
            "[crms.x]\n{SALESFORCE}task_fields = {{ colour = \"Colour__c\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("crms.x.task_fields"), "{err}");
        let settings = Settings::from_toml(&format!(
            "[crm]\n{SALESFORCE}private_key = \"-----BEGIN PRIVATE KEY-----\"\n"
        ))
        .unwrap();
        let rendered = settings.to_redacted_toml();
        assert!(
            !rendered.contains("sf-client-s3cr3t") && !rendered.contains("BEGIN PRIVATE"),
            "{rendered}"
        );
        assert!(!format!("{settings:?}").contains("sf-client-s3cr3t"));
    }

    #[test]
    fn connections_share_the_workers_only_once_there_are_several() {
        let alone = Settings::from_toml("[worker]\nconcurrency = 32").unwrap();
        assert_eq!(
            alone.max_in_flight(),
            32,
            "one connection: no cap of its own"
        );
        let shared =
            Settings::from_toml("[worker]\nconcurrency = 32\n[crms.b]\nkind = \"log\"").unwrap();
        assert_eq!(shared.max_in_flight(), 16);
        let set =
            Settings::from_toml("[crms.b]\nkind = \"log\"\n[routing]\nmax_in_flight = 3").unwrap();
        assert_eq!(set.max_in_flight(), 3);
        assert!(Settings::from_toml("[routing]\nmax_in_flight = 0").is_err());
    }
}
