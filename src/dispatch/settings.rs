//! The `[commands]` settings: how long an idempotency decision lasts, how long
//! a command may wait for its softphone, when a softphone counts as offline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Settings};

/// Commands from CRMs (HTTP API and NATS service).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandSettings {
    /// Key-value bucket of idempotency decisions (letters, digits, `-`, `_`).
    pub bucket: String,
    /// How long the answer to an `Idempotency-Key` is kept: a retry within it
    /// gets the original answer and publishes nothing (the bucket's max age).
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// How long a `start_call` may wait for its softphone (`expiresAt` and the
    /// message's `Nats-TTL`, in whole seconds, rounded up); later it is never delivered.
    #[serde(with = "humantime_serde")]
    pub start_call_ttl: Duration,
    /// The same for every other command (`update_presence`, `disposition`, `partner_config`).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// A softphone whose last sign of life (`loaded`, `status_changed`, a
    /// heartbeat) is older than this gets `409 softphone-offline`.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            bucket: "SOFTPHONE_COMMAND_KEYS".into(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            start_call_ttl: Duration::from_secs(30),
            ttl: Duration::from_secs(60),
            offline_after: Duration::from_secs(120),
        }
    }
}

impl CommandSettings {
    /// How often one replica writes a softphone's heartbeats to the registry:
    /// often enough that it never looks offline, rarely enough to be cheap.
    pub fn heartbeat_write_every(&self) -> Duration {
        self.offline_after / 4
    }
}

/// Checks the `[commands]` keys; `error` words a message naming the key.
pub fn check(
    settings: &Settings,
    error: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let fail = |key: &str, why: String| Err(error(key, why));
    let c = &settings.commands;
    if let Err(why) = crate::config::bucket_name(&c.bucket) {
        return fail("commands.bucket", why);
    }
    if c.bucket == settings.registry.bucket {
        return fail("commands.bucket", "must differ from registry.bucket".into());
    }
    if c.idempotency_ttl < Duration::from_secs(1) {
        return fail("commands.idempotency_ttl", "must be at least 1s".into());
    }
    let max_age = settings.streams.commands_max_age;
    for (key, ttl) in [
        ("commands.start_call_ttl", c.start_call_ttl),
        ("commands.ttl", c.ttl),
    ] {
        if ttl < Duration::from_secs(1) {
            return fail(
                key,
                "must be at least 1s (Nats-TTL counts whole seconds)".into(),
            );
        }
        if ttl > max_age {
            return fail(
                key,
                format!("must not exceed streams.commands_max_age ({max_age:?})"),
            );
        }
    }
    if c.offline_after < Duration::from_secs(1) {
        return fail("commands.offline_after", "must be at least 1s".into());
    }
    Ok(())
}
