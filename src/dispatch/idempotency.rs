//! Idempotency decisions: one per (softphone, `Idempotency-Key`), taken before
//! publishing and atomically across replicas with a key-value `create`, kept
//! for `commands.idempotency_ttl` (the bucket's max age).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::CommandSettings;
use crate::broker::bucket::Bucket;
use crate::contract::{Callback, SoftphoneId};
use crate::softphones::command::Serialized;

/// How long a request waits for an earlier one with the same key that is
/// still publishing before it is answered `409 in-progress`.
pub const IN_PROGRESS_WAIT: Duration = Duration::from_secs(5);
/// How often it looks while waiting.
const POLL: Duration = Duration::from_millis(25);

/// What is kept for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Decision {
    /// SHA-256 (hex) of the command as decoded: the same command, whatever
    /// its whitespace or field order, has the same hash.
    pub body_hash: String,
    pub message_id: String,
    /// When the command expires: a decision still publishing after it is stale.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Where it was stored, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// The answer to a claim on a key.
#[derive(Debug)]
pub(super) enum Claim {
    /// This request decides: publish, then [`Keys::complete`] (or [`Keys::abandon`]).
    Won { revision: u64 },
    /// An earlier request with this key and the same command was published.
    Published(Decision),
    /// The key was used for another command.
    Conflict,
    /// An earlier request with this key is still publishing.
    InProgress,
}

/// The idempotency bucket, bound on first use.
#[derive(Clone)]
pub(super) struct Keys {
    bucket: Bucket,
}

impl Keys {
    pub(super) fn new(js: jetstream::Context, settings: &CommandSettings) -> Self {
        Self {
            bucket: Bucket::new(js, &settings.bucket),
        }
    }

    async fn store(&self) -> Result<&kv::Store, String> {
        self.bucket.open().await.map_err(|e| e.to_string())
    }

    /// Claims `key` for `decision`: exactly one request per key wins, on any replica.
    pub(super) async fn claim(&self, key: &str, decision: &Decision) -> Result<Claim, String> {
        let store = self.store().await?;
        let value: bytes::Bytes = serde_json::to_vec(decision)
            .expect("decisions serialize")
            .into();
        let deadline = tokio::time::Instant::now() + IN_PROGRESS_WAIT;
        loop {
            match store.create(key, value.clone()).await {
                Ok(revision) => return Ok(Claim::Won { revision }),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot claim an idempotency key: {e}")),
            }
            let found = store
                .entry(key)
                .await
                .map_err(|e| format!("cannot read an idempotency key: {e}"))?;
            // Gone meanwhile (expired, or abandoned after a failed publish): claim again.
            let Some(found) = found.filter(|f| f.operation == kv::Operation::Put) else {
                continue;
            };
            let earlier: Decision = serde_json::from_slice(&found.value)
                .map_err(|e| format!("an idempotency decision is not readable: {e}"))?;
            if earlier.body_hash != decision.body_hash {
                return Ok(Claim::Conflict);
            }
            if earlier.seq.is_some() {
                return Ok(Claim::Published(earlier));
            }
            // Still publishing past its command's expiry: its replica stopped
            // before finishing, and the command it held is moot. Take it over.
            if earlier.expires_at < OffsetDateTime::now_utc() {
                match store.update(key, value.clone(), found.revision).await {
                    Ok(revision) => return Ok(Claim::Won { revision }),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(format!("cannot take over an idempotency key: {e}")),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Claim::InProgress);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What an earlier request with this key decided, without claiming it:
    /// [`Claim::Published`] for the same command published, else [`Claim::InProgress`]
    /// or [`Claim::Conflict`]; `Won` means the key is free.
    pub(super) async fn peek(&self, key: &str, decision: &Decision) -> Result<Claim, String> {
        let store = self.store().await?;
        let found = store
            .entry(key)
            .await
            .map_err(|e| format!("cannot read an idempotency key: {e}"))?;
        let Some(found) = found.filter(|f| f.operation == kv::Operation::Put) else {
            return Ok(Claim::Won { revision: 0 });
        };
        let earlier: Decision = serde_json::from_slice(&found.value)
            .map_err(|e| format!("an idempotency decision is not readable: {e}"))?;
        Ok(if earlier.body_hash != decision.body_hash {
            Claim::Conflict
        } else if earlier.seq.is_some() {
            Claim::Published(earlier)
        } else {
            Claim::InProgress
        })
    }

    /// Records where the command was stored, for the requests that repeat it.
    pub(super) async fn complete(
        &self,
        key: &str,
        revision: u64,
        decision: &Decision,
    ) -> Result<(), String> {
        let store = self.store().await?;
        let value = serde_json::to_vec(decision).expect("decisions serialize");
        store
            .update(key, value.into(), revision)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot record an idempotency decision: {e}"))
    }

    /// Gives the key back after a failed publish, so a retry may publish.
    pub(super) async fn abandon(&self, key: &str, revision: u64) {
        let Ok(store) = self.store().await else {
            return;
        };
        if let Err(e) = store.delete_expect_revision(key, Some(revision)).await {
            tracing::warn!(error = %e, "Cannot give an idempotency key back; retries get 409 in-progress until the command's expiry.");
        }
    }
}

/// The bucket key of (softphone, idempotency key): a hash, since either may
/// hold characters a key-value key may not.
pub fn bucket_key(softphone: &SoftphoneId, key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(softphone.as_str().as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    hex::encode(hash.finalize())
}

/// SHA-256 (hex) of a command as decoded: the same command, whatever its
/// field order or whitespace, has the same hash.
pub fn command_hash(callback: &Callback) -> String {
    hash(&Serialized::new(callback))
}

/// [`command_hash`] of a command serialised already.
pub(crate) fn hash(callback: &Serialized) -> String {
    hex::encode(Sha256::digest(callback.json()))
}

/// The bucket's configuration, for provisioning.
pub fn bucket_config(settings: &CommandSettings, replicas: usize) -> kv::Config {
    crate::broker::bucket::config(
        &settings.bucket,
        "idempotency decisions of commands (softphone, key) -> body hash, stream, seq",
        settings.idempotency_ttl,
        replicas,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_scoped_to_the_softphone() {
        let a: SoftphoneId = "agent-1".parse().unwrap();
        let b: SoftphoneId = "agent-2".parse().unwrap();
        let key = bucket_key(&a, "click 1/ä");
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(key, bucket_key(&b, "click 1/ä"));
        assert_ne!(
            bucket_key(&a, "x"),
            bucket_key(&"agent-1x".parse().unwrap(), "")
        );
    }
}
