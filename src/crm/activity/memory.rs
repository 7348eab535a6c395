//! What the bridge has written to each call's record (a Salesforce Task, a
//! Dataverse phone call), shared by every replica through a JetStream
//! key-value bucket (`call_memory.bucket`), so that a batch decides the
//! agent's word and `ended`'s fill without reading the records from the CRM.
//!
//! One entry per org and call holds [`Facts`]: whether the record exists
//! (and how it was closed), and
//! who wrote the agent's fields (the latest word by `publishedAt`, or the fill
//! of `ended`/`rejected`). A batch loads the entries of its calls, decides
//! its writes against them, *claims* what it is about to write (written with
//! the revision it read, so a replica that claimed in between makes the
//! claim fail and the decision is made again on its facts), then writes to
//! the CRM. A claim whose write fails stays: the event's retry holds the same
//! claim and writes again.
//!
//! Facts are `complete` when they hold every write of the agent's fields
//! since the record was created: the bridge created it, or read it from the
//! CRM. A call the memory does not know in full (written before the bucket
//! existed, or forgotten after `remember_for`) is read from the CRM once, as
//! without the bucket; a bridge that cannot open the bucket reads records
//! as before and tries the bucket again a minute later.

use std::time::Duration;

use crate::broker::bucket::Bucket;
use async_nats::jetstream::{self, kv};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::CallMemorySettings;
use super::word::AgentFields;
use crate::crm::CrmError;

/// How long a bucket that could not be opened is left alone.
const REOPEN_AFTER: Duration = Duration::from_secs(60);
/// Entries read at once by one batch.
const CONCURRENT: usize = 64;

/// What the bridge knows of one call's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Facts {
    /// The record exists in the CRM (`task`: the name entries have had
    /// since the Salesforce Tasks).
    #[serde(default, rename = "task")]
    pub exists: bool,
    /// `agent` holds every write of the agent's fields since the record was
    /// created (the bridge created it, or read it).
    #[serde(default)]
    pub complete: bool,
    #[serde(default)]
    pub agent: AgentFields,
    /// The state the record was closed with, for CRMs whose closed records
    /// must be reopened to be written (Dataverse's activities); empty while
    /// open or unknown.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub closed: Map<String, Value>,
}

impl Facts {
    /// These facts and `other`'s, as one: what either knows.
    pub(crate) fn join(mut self, other: &Facts) -> Facts {
        self.exists |= other.exists;
        self.complete |= other.complete;
        self.agent = self.agent.join(&other.agent);
        if !other.closed.is_empty() {
            self.closed = other.closed.clone();
        }
        self
    }
}

/// One call's entry as read: its facts (none when the call is unknown) and
/// the revision a claim must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub facts: Option<Facts>,
    pub revision: Option<u64>,
}

/// Why a claim was not written.
pub(crate) enum ClaimError {
    /// Another replica wrote the entry since it was read.
    Conflict,
    /// The bucket cannot be reached.
    Unavailable(CrmError),
}

/// The call memory of one org.
pub(crate) struct Memory {
    bucket: Bucket,
    /// The org's prefix in keys: connections to one org share its entries.
    org: String,
    failed_at: std::sync::Mutex<Option<Instant>>,
}

impl Memory {
    pub(crate) fn new(js: jetstream::Context, settings: &CallMemorySettings, org: &str) -> Self {
        Self {
            bucket: Bucket::new(js, &settings.bucket),
            org: org.to_owned(),
            failed_at: std::sync::Mutex::new(None),
        }
    }

    /// The bucket; `None` while it does not exist (the records are read; asked
    /// again a minute later), an error while NATS cannot say.
    async fn store(&self) -> Result<Option<&kv::Store>, CrmError> {
        if let Some(store) = self.bucket.opened() {
            return Ok(Some(store));
        }
        {
            let failed_at = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
            if failed_at.is_some_and(|at| at.elapsed() < REOPEN_AFTER) {
                return Ok(None);
            }
        }
        match self.bucket.open().await {
            Ok(store) => Ok(Some(store)),
            Err(e) if e.is_missing() => {
                tracing::warn!(bucket = %self.bucket.name(), "No call memory bucket (run `softphone-bridge provision`); call records are read from the CRM instead.");
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(None)
            }
            Err(e) => Err(unavailable(self.bucket.name(), &e.to_string())),
        }
    }

    fn key(&self, conversation: &str) -> String {
        format!("{}.{conversation}", self.org)
    }

    /// The entries of `conversations`, in order; `None` when there is no
    /// bucket (then nothing is claimed either).
    pub(crate) async fn load(
        &self,
        conversations: &[&str],
    ) -> Result<Option<Vec<Entry>>, CrmError> {
        let Some(store) = self.store().await? else {
            return Ok(None);
        };
        let owned: Vec<String> = conversations.iter().map(|c| c.to_string()).collect();
        futures::stream::iter(owned)
            .map(|c| self.entry(store, c))
            .buffered(CONCURRENT)
            .try_collect()
            .await
            .map(Some)
    }

    /// One call's entry, read again (after a conflict).
    pub(crate) async fn reload(&self, conversation: &str) -> Result<Entry, CrmError> {
        let store = self.opened().await?;
        self.entry(store, conversation.to_owned()).await
    }

    /// The bucket a claim goes to: it was there when the batch loaded.
    async fn opened(&self) -> Result<&kv::Store, CrmError> {
        self.store()
            .await?
            .ok_or_else(|| unavailable(self.bucket.name(), "the bucket is gone"))
    }

    async fn entry(&self, store: &kv::Store, conversation: String) -> Result<Entry, CrmError> {
        let found = store
            .entry(self.key(&conversation))
            .await
            .map_err(|e| unavailable(self.bucket.name(), &e.to_string()))?;
        Ok(match found {
            Some(found) if found.operation == kv::Operation::Put => Entry {
                // An entry of another shape is no knowledge: the record is read.
                facts: serde_json::from_slice(&found.value).ok(),
                revision: Some(found.revision),
            },
            // A deleted or purged key is written over its marker's revision.
            Some(found) => Entry {
                facts: None,
                revision: Some(found.revision),
            },
            None => Entry::default(),
        })
    }

    /// Writes `facts` over the entry read at `revision` (created when there
    /// was none); the new revision.
    pub(crate) async fn claim(
        &self,
        conversation: &str,
        facts: &Facts,
        revision: Option<u64>,
    ) -> Result<u64, ClaimError> {
        let store = self.opened().await.map_err(ClaimError::Unavailable)?;
        let key = self.key(conversation);
        let value = serde_json::to_vec(facts).expect("facts serialize").into();
        match revision {
            Some(revision) => {
                store
                    .update(&key, value, revision)
                    .await
                    .map_err(|e| match e.kind() {
                        kv::UpdateErrorKind::WrongLastRevision => ClaimError::Conflict,
                        _ => self.unavailable(&e.to_string()),
                    })
            }
            None => store.create(&key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => ClaimError::Conflict,
                _ => self.unavailable(&e.to_string()),
            }),
        }
    }

    /// Adds `learnt` to the call's facts, whatever other replicas wrote
    /// meanwhile (facts only grow). Best effort: facts not written only cost
    /// a read or a create attempt later.
    pub(crate) async fn learn(&self, conversation: &str, mut entry: Entry, learnt: &Facts) {
        for _ in 0..5 {
            let facts = entry.facts.clone().unwrap_or_default().join(learnt);
            if entry.facts.as_ref() == Some(&facts) {
                return;
            }
            match self.claim(conversation, &facts, entry.revision).await {
                Ok(_) => return,
                Err(ClaimError::Conflict) => match self.reload(conversation).await {
                    Ok(fresh) => entry = fresh,
                    Err(_) => return,
                },
                Err(ClaimError::Unavailable(e)) => {
                    tracing::debug!(conversation, error = %e, "Call memory not updated.");
                    return;
                }
            }
        }
    }

    fn unavailable(&self, why: &str) -> ClaimError {
        ClaimError::Unavailable(unavailable(self.bucket.name(), why))
    }
}

fn unavailable(bucket: &str, why: &str) -> CrmError {
    CrmError::Unavailable {
        reason: format!("call memory {bucket}: {why}"),
        retry_after: None,
    }
}

/// The org a connection writes to, as a key token: a hash of what
/// identifies it (`identity`: its URL, the integration's client and user),
/// so that connections to one org share their entries and the org's names
/// stay out of the bucket.
pub(crate) fn org_key(identity: &str) -> String {
    hex::encode(&Sha256::digest(identity.as_bytes())[..8])
}

/// The bucket as provisioning creates it.
pub fn bucket_config(settings: &CallMemorySettings, replicas: usize) -> kv::Config {
    crate::broker::bucket::config(
        &settings.bucket,
        "what each call's CRM record holds (exists, the agent's word, ended's fill, closed)",
        settings.remember_for,
        replicas,
    )
}
