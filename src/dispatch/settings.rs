//! The `[commands]` settings: how long an idempotency decision lasts, how long
//! a command may wait for its softphone, when a softphone counts as offline.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a command for a softphone missing from the registry gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSoftphones {
    /// 404: only softphones that loaded recently can be commanded.
    Reject,
    /// Published anyway (partner-scoped tokens still get 404: no bound partner to check).
    Allow,
}

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
    pub(crate) fn heartbeat_write_every(&self) -> Duration {
        self.offline_after / 4
    }
}

/// Checks the `[commands]` keys against the commands stream's max age
/// (`streams.commands_max_age`): the key at fault and why. (The bucket's
/// name is checked with the others', in [`crate::config`].)
pub(crate) fn check(c: &CommandSettings, max_age: Duration) -> Result<(), (&'static str, String)> {
    if c.idempotency_ttl < Duration::from_secs(1) {
        return Err(("commands.idempotency_ttl", "must be at least 1s".into()));
    }
    for (key, ttl) in [
        ("commands.start_call_ttl", c.start_call_ttl),
        ("commands.ttl", c.ttl),
    ] {
        if ttl < Duration::from_secs(1) {
            return Err((
                key,
                "must be at least 1s (Nats-TTL counts whole seconds)".into(),
            ));
        }
        if ttl > max_age {
            return Err((
                key,
                format!("must not exceed streams.commands_max_age ({max_age:?})"),
            ));
        }
    }
    if c.offline_after < Duration::from_secs(1) {
        return Err(("commands.offline_after", "must be at least 1s".into()));
    }
    Ok(())
}
