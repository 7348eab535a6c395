//! Settings for the NATS connection and the streams.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::redact::{redact_opt, redact_url, redacted_url};

/// Connection to NATS. At most one of token, user/password and creds_file.
#[derive(Clone, Deserialize, Serialize)]
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

/// The fields as derived, the URL redacted.
impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redacted_url(&self.url))
            .field("name", &self.name)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
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
