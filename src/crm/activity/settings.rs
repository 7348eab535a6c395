//! Settings of what batched CRMs share: the batch window (each adapter's
//! `batch`) and the call memory (`[call_memory]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Batched writes: the record writes of events handled at the same moment
/// go to the CRM as one request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Most records in one request (Salesforce allows 200; a Dataverse
    /// `$batch` 1,000 requests, up to three a record). Twice this is the
    /// lane's concurrency for this connection, if higher than
    /// `worker.concurrency`, so that a batch can fill while the previous one
    /// is written.
    pub max_records: usize,
    /// Longest a write waits for others to join its request; a write to an
    /// org that had no request within this time goes at once. A flush costs
    /// a lookup (new callers) and the writes, plus a read of calls the call
    /// memory does not know, so this bounds an org's rate to about two
    /// requests per `max_wait` (deploy/salesforce.md and deploy/dynamics.md
    /// have what each setting costs).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_records: 200,
            max_wait: Duration::from_millis(500),
        }
    }
}

/// What the bridge has written to each call's record, shared by every
/// replica in a JetStream key-value bucket: the agent's word and the `ended`
/// fill are decided against it instead of a read of the record (provisioned
/// when a `salesforce` or `dynamics` connection is configured; without the
/// bucket, records are read).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallMemorySettings {
    /// Key-value bucket name (letters, digits, `-`, `_`).
    pub bucket: String,
    /// An entry not written for this long expires (the bucket's max age);
    /// an event of a call forgotten reads the record again.
    #[serde(with = "humantime_serde")]
    pub remember_for: Duration,
}

impl Default for CallMemorySettings {
    fn default() -> Self {
        Self {
            bucket: "SOFTPHONE_CALLS".into(),
            remember_for: Duration::from_secs(3 * 24 * 3600),
        }
    }
}
