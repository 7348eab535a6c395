//! What the bridge has written to each call's Task, shared by every replica
//! through a JetStream key-value bucket (`call_memory.bucket`), so that a
//! batch decides the agent's word and `ended`'s fill without reading the
//! Tasks from the org.
//!
//! One entry per org and call holds [`Facts`]: whether the Task exists, and
//! who wrote the agent's fields (the latest word by `publishedAt`, or the fill
//! of `ended`/`rejected`). A batch loads the entries of its calls, decides
//! its writes against them, *claims* what it is about to write (written with
//! the revision it read, so a replica that claimed in between makes the
//! claim fail and the decision is made again on its facts), then writes to
//! the org. A claim whose write fails stays: the event's retry holds the same
//! claim and writes again.
//!
//! Facts are `complete` when they hold every write of the agent's fields
//! since the Task was created: the bridge created the Task, or read it from
//! the org. A call the memory does not know in full (written before the
//! bucket existed, or forgotten after `remember_for`) is read from the org
//! once, as without the bucket; a bridge that cannot open the bucket reads
//! Tasks as before and tries the bucket again a minute later.

use std::time::Duration;

use crate::bucket::Bucket;
use async_nats::jetstream::{self, kv};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::task::AgentFields;
use crate::config::{CallMemorySettings, SalesforceSettings};
use crate::crm::CrmError;

/// How long a bucket that could not be opened is left alone.
const REOPEN_AFTER: Duration = Duration::from_secs(60);
/// Entries read at once by one batch.
const CONCURRENT: usize = 64;

/// What the bridge knows of one call's Task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Facts {
    /// The Task exists in the org.
    #[serde(default)]
    pub task: bool,
    /// `agent` holds every write of the agent's fields since the Task was
    /// created (the bridge created it, or read it).
    #[serde(default)]
    pub complete: bool,
    #[serde(default)]
    pub agent: AgentFields,
}

impl Facts {
    /// These facts and `other`'s, as one: what either knows.
    pub fn join(mut self, other: &Facts) -> Facts {
        self.task |= other.task;
        self.complete |= other.complete;
        self.agent = self.agent.join(&other.agent);
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
    pub fn new(js: jetstream::Context, settings: &CallMemorySettings, org: &str) -> Self {
        Self {
            bucket: Bucket::new(js, &settings.bucket),
            org: org.to_owned(),
            failed_at: std::sync::Mutex::new(None),
        }
    }

    /// The bucket; `None` while it does not exist (the Tasks are read; asked
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
                tracing::warn!(bucket = %self.bucket.name(), "No call memory bucket (run `softphone-bridge provision`); Tasks are read from the org instead.");
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
    pub async fn load(&self, conversations: &[&str]) -> Result<Option<Vec<Entry>>, CrmError> {
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
    pub async fn reload(&self, conversation: &str) -> Result<Entry, CrmError> {
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
                // An entry of another shape is no knowledge: the Task is read.
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
    pub async fn claim(
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
    pub async fn learn(&self, conversation: &str, mut entry: Entry, learnt: &Facts) {
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

/// The org a connection writes to, as a key token: its login URL, connected
/// app and user (a packaged app can be used by several orgs; a username
/// belongs to one).
pub(crate) fn org_key(settings: &SalesforceSettings) -> String {
    let identity = format!(
        "{} {} {}",
        settings.login_url.as_url().as_str().trim_end_matches('/'),
        settings.client_id,
        settings.username.as_deref().unwrap_or_default()
    );
    hex::encode(&Sha256::digest(identity.as_bytes())[..8])
}

/// The bucket as provisioning creates it.
pub fn bucket_config(settings: &CallMemorySettings, replicas: usize) -> kv::Config {
    crate::bucket::config(
        &settings.bucket,
        "what each call's Salesforce Task holds (exists, the agent's word, ended's fill)",
        settings.remember_for,
        replicas,
    )
}
