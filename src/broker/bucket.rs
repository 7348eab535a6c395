//! The JetStream key-value buckets the bridge keeps (the softphone registry,
//! the commands' idempotency keys, the call memory): how provisioning
//! creates each, and a handle that opens one on first use and keeps it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind, kv};
use tokio::sync::OnceCell;

/// A bucket as provisioning creates it: one value per key, entries expiring
/// `max_age` after their last write, on `replicas` servers.
pub(crate) fn config(
    name: &str,
    description: &str,
    max_age: Duration,
    replicas: usize,
) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: format!("softphone-bridge: {description}"),
        history: 1,
        max_age,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// A handle on one bucket, opened on first use; clones share it.
#[derive(Clone)]
pub(crate) struct Bucket {
    js: jetstream::Context,
    name: String,
    store: Arc<OnceCell<kv::Store>>,
}

/// Why a bucket cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open bucket {bucket} (run `softphone-bridge provision`?): {reason}")]
pub(crate) struct OpenError {
    bucket: String,
    reason: String,
    /// NATS said the bucket does not exist (else NATS could not say).
    missing: bool,
}

impl OpenError {
    /// The bucket does not exist: provisioning has not created it.
    pub(crate) fn is_missing(&self) -> bool {
        self.missing
    }
}

impl Bucket {
    pub(crate) fn new(js: jetstream::Context, name: &str) -> Self {
        Self {
            js,
            name: name.to_owned(),
            store: Arc::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The bucket, if it was opened before.
    pub(crate) fn opened(&self) -> Option<&kv::Store> {
        self.store.get()
    }

    /// The bucket, opened now or before.
    pub(crate) async fn open(&self) -> Result<&kv::Store, OpenError> {
        let e = match self
            .store
            .get_or_try_init(|| self.js.get_key_value(&self.name))
            .await
        {
            Ok(store) => return Ok(store),
            Err(e) => e,
        };
        let missing = matches!(
            self.js.get_stream(format!("KV_{}", self.name)).await,
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
        );
        Err(OpenError {
            bucket: self.name.clone(),
            reason: e.to_string(),
            missing,
        })
    }
}
