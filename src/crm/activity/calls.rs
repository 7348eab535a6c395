//! One batch of call-record writes, flushed for all its events at once, the
//! same way for every batched CRM: the events grouped by call, what the call
//! memory knows of each call (memory.rs), the adapter's reads (lookups, and
//! the records the memory does not know in full), the writes decided
//! (word.rs) and claimed in the memory, the adapter's write request, then
//! the memory taught what was written and each event answered with its own
//! record's result.
//!
//! The adapter ([`Org`]) only speaks its CRM's API: what it reads, how it
//! writes a batch of records, how it writes a word again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::BatchSettings;
use super::batch::Batcher;
use super::memory::{ClaimError, Entry, Facts, Memory};
use super::word::{AgentFields, Words, Write};
use crate::contract::Event;
use crate::crm::{CrmError, CrmEvent};
use crate::telemetry::metric;

/// What an adapter does for the shared machinery: its CRM's reads and writes.
pub(crate) trait Org: Send + Sync {
    /// The connection's name, for logs and metrics.
    fn connection(&self) -> &str;

    /// The CRM's names of the agent's fields.
    fn words(&self) -> &Words;

    /// Caller lookups (each write's `lookup`, applied to its fields) and the
    /// records of the groups whose writes need them (`complete` and `agent`
    /// set from a read; `exists` and `closed` too); a group whose reads
    /// failed gets its `failure`.
    fn read<'a>(&'a self, groups: &'a mut [Group]) -> impl Future<Output = ()> + Send + 'a;

    /// Writes each group's `record` (`create_only` too where the record may
    /// be created), answering the groups the CRM refused; returns those
    /// written, with `created` when this write created the record.
    fn write(&self, groups: Vec<Group>) -> impl Future<Output = Vec<Written>> + Send + '_;

    /// Writes the agent's latest `word` to the call's record again (known
    /// as `facts`).
    fn rewrite<'a>(
        &'a self,
        conversation: &'a str,
        word: Map<String, Value>,
        facts: &'a Facts,
    ) -> impl Future<Output = Result<(), CrmError>> + Send + 'a;
}

/// A call's record written.
pub(crate) struct Written {
    pub group: Group,
    /// This write created the record.
    pub created: bool,
}

/// Claims of one call retried after other replicas claimed first.
const MAX_CLAIMS: usize = 8;

/// One event's write, waiting in a batch for its result.
pub(crate) struct Pending {
    pub conversation: String,
    /// `publishedAt` and stream sequence: the order of a call's events.
    pub order: (OffsetDateTime, u64),
    /// An incoming call, still ringing: its matches are popped.
    pub ringing: bool,
    pub write: Write,
    reply: oneshot::Sender<Result<(), CrmError>>,
}

/// Conversations whose record this process has seen in the CRM: their
/// writes skip the create attempt.
struct Known(Mutex<HashMap<String, Instant>>);

const KNOWN_FOR: Duration = Duration::from_secs(3600);

impl Known {
    fn contains(&self, conversation: &str) -> bool {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(conversation)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    fn insert(&self, conversation: &str) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= 50_000 {
            known.retain(|_, at| at.elapsed() < KNOWN_FOR);
        }
        known.insert(conversation.to_owned(), Instant::now());
    }
}

/// A conversation's events in the batch, merged into one record.
pub(crate) struct Group {
    pub conversation: String,
    /// In event order.
    pub items: Vec<Pending>,
    /// Why its events fail before any write (a read, lookup or claim failed).
    pub failure: Option<CrmError>,
    /// What is known of the record's agent fields before this batch.
    pub agent: AgentFields,
    /// `agent` holds every write since the record was created (from the
    /// call memory, or a read): the record need not be read.
    pub complete: bool,
    /// The call memory's entry; `None` when the memory is not in use.
    memory: Option<Entry>,
    /// The merged record to write.
    pub record: Map<String, Value>,
    /// The agent fields as the record leaves them.
    decided: AgentFields,
    pub create_only: Map<String, Value>,
    /// Known to be in the CRM: written by update.
    pub exists: bool,
    /// The state the record is closed with (empty: open or unknown); the
    /// adapter sets what its write leaves.
    pub closed: Map<String, Value>,
}

impl Group {
    /// What the call memory's `entry` knows, over what the group knew.
    fn adopt(&mut self, entry: Entry) {
        if let Some(facts) = &entry.facts {
            self.exists |= facts.exists;
            self.agent = if facts.complete {
                facts.agent.clone()
            } else {
                std::mem::take(&mut self.agent).join(&facts.agent)
            };
            self.complete |= facts.complete;
            if !facts.closed.is_empty() {
                self.closed = facts.closed.clone();
            }
        }
        self.memory = Some(entry);
    }

    /// Answers every event of the group with `result`.
    pub(crate) fn answer(self, result: Result<(), CrmError>) {
        for item in self.items {
            let _ = item.reply.send(result.clone());
        }
    }

    /// Whether any of its writes needs the record read, unless the call
    /// memory knows it in full.
    pub(crate) fn needs_read(&self, words: &Words) -> bool {
        self.items.iter().any(|i| i.write.needs_read(words))
    }

    /// Whether any of its writes fills a value.
    pub(crate) fn fills(&self) -> bool {
        self.items.iter().any(|i| i.write.fills())
    }
}

/// Answers the groups that failed; the others, to go on with.
fn answer_failed(groups: Vec<Group>) -> Vec<Group> {
    let mut ready = Vec::new();
    for mut group in groups {
        match group.failure.take() {
            Some(failure) => group.answer(Err(failure)),
            None => ready.push(group),
        }
    }
    ready
}

/// A request refused as a whole is one record's fate when it held only
/// that record; with several, the CRM's trouble (not every event's fault).
pub(crate) fn request_failure(error: CrmError, records: usize) -> CrmError {
    match error {
        CrmError::Permanent { reason, .. } if records > 1 => CrmError::Unavailable {
            reason: format!("{reason} (a batch of {records} records)"),
            retry_after: None,
        },
        other => other,
    }
}

/// Counts `count` records known one way (`outcome`) before writing.
pub(crate) fn knew(connection: &str, outcome: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(metric::CALL_KNOWLEDGE, "crm" => connection.to_owned(), "outcome" => outcome)
            .increment(count as u64);
    }
}

/// The call writes of one connection: batched, decided against the call
/// memory, written by its adapter.
pub(crate) struct Calls {
    batcher: Batcher<Pending>,
    known: Known,
    memory: Option<Memory>,
}

impl Calls {
    pub(crate) fn new(batch: &BatchSettings) -> Self {
        Self {
            batcher: Batcher::new(batch.max_records, batch.max_wait),
            known: Known(Mutex::new(HashMap::new())),
            memory: None,
        }
    }

    /// Decides against the call memory `memory` instead of reads.
    pub(crate) fn remember(&mut self, memory: Memory) {
        self.memory = Some(memory);
    }

    /// Writes `event`'s `write` to the record of its call (with the writes
    /// of concurrent events, in one batch): its own result.
    pub(crate) async fn submit(
        &self,
        org: &impl Org,
        event: &CrmEvent,
        write: Write,
    ) -> Result<(), CrmError> {
        let conversation = event
            .event
            .conversation_id()
            .expect("record writes are for call events")
            .as_str();
        let order = (event.published, event.sequence);
        let ringing = matches!(event.event, Event::CallIncoming(_));
        for (field, length) in &write.cut {
            tracing::warn!(crm = %org.connection(), conversation, field, length, "Value longer than the CRM accepts; cut, the call is logged.");
        }
        let (reply, result) = oneshot::channel();
        let pending = Pending {
            conversation: conversation.to_owned(),
            order,
            ringing,
            write,
            reply,
        };
        if let Some(leader) = self.batcher.join(pending) {
            let batch = leader.gather().await;
            self.flush(org, batch).await;
        }
        result.await.unwrap_or_else(|_| {
            Err(CrmError::Unavailable {
                reason: "the batch holding this write was abandoned".into(),
                retry_after: None,
            })
        })
    }

    /// Writes the batch and answers every event in it.
    async fn flush(&self, org: &impl Org, items: Vec<Pending>) {
        let mut by_conversation: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for item in items {
            by_conversation
                .entry(item.conversation.clone())
                .or_default()
                .push(item);
        }
        let mut groups: Vec<Group> = by_conversation
            .into_iter()
            .map(|(conversation, mut items)| {
                items.sort_by_key(|i| i.order);
                Group {
                    exists: self.known.contains(&conversation),
                    conversation,
                    items,
                    failure: None,
                    agent: AgentFields::default(),
                    complete: false,
                    memory: None,
                    record: Map::new(),
                    decided: AgentFields::default(),
                    create_only: Map::new(),
                    closed: Map::new(),
                }
            })
            .collect();
        self.recall(&mut groups).await;
        let mut groups = answer_failed(groups);
        org.read(&mut groups).await;
        futures::future::join_all(
            groups
                .iter_mut()
                .filter(|g| g.failure.is_none())
                .map(|g| self.decide(org, g)),
        )
        .await;
        let written = org.write(answer_failed(groups)).await;
        self.settle(org, written).await;
    }

    /// What the call memory knows of the batch's calls.
    async fn recall(&self, groups: &mut [Group]) {
        let Some(memory) = &self.memory else { return };
        let conversations: Vec<&str> = groups.iter().map(|g| g.conversation.as_str()).collect();
        match memory.load(&conversations).await {
            Ok(None) => {}
            Ok(Some(entries)) => {
                for (group, entry) in groups.iter_mut().zip(entries) {
                    group.adopt(entry);
                }
            }
            // Decided without the memory, the writes would claim nothing
            // that other replicas rely on: they wait for it.
            Err(e) => groups.iter_mut().for_each(|g| g.failure = Some(e.clone())),
        }
    }

    /// Decides the group's record against what is known of it, and claims
    /// it in the call memory; decided again on the facts of a replica that
    /// claimed first.
    async fn decide(&self, org: &impl Org, group: &mut Group) {
        for _ in 0..MAX_CLAIMS {
            let agent = merge(org.words(), group);
            group.decided = agent.clone();
            let (Some(memory), Some(entry)) = (&self.memory, &group.memory) else {
                return;
            };
            let before = entry.facts.clone().unwrap_or_default();
            let claimed = Facts {
                complete: before.complete || group.complete,
                agent,
                ..before.clone()
            };
            if claimed == before {
                return;
            }
            match memory
                .claim(&group.conversation, &claimed, entry.revision)
                .await
            {
                Ok(revision) => {
                    group.memory = Some(Entry {
                        facts: Some(claimed),
                        revision: Some(revision),
                    });
                    return;
                }
                Err(ClaimError::Conflict) => {
                    knew(org.connection(), "conflict", 1);
                    let fresh = match memory.reload(&group.conversation).await {
                        Ok(fresh) => fresh,
                        Err(e) => {
                            group.failure = Some(e);
                            return;
                        }
                    };
                    group.adopt(fresh);
                }
                Err(ClaimError::Unavailable(e)) => {
                    group.failure = Some(e);
                    return;
                }
            }
        }
        group.failure = Some(CrmError::Transient {
            reason: "other replicas kept writing this call's facts at the same moment".into(),
            retry_after: None,
        });
    }

    /// The memory learns which records exist, which the bridge created (then
    /// it knows every write of their agent fields) and how they were closed;
    /// a write of the agent's fields that may have landed after a newer
    /// word's puts the newer word back before its events are done.
    async fn settle(&self, org: &impl Org, written: Vec<Written>) {
        for w in &written {
            self.known.insert(&w.group.conversation);
        }
        let Some(memory) = &self.memory else {
            written.into_iter().for_each(|w| w.group.answer(Ok(())));
            return;
        };
        futures::future::join_all(written.into_iter().map(|mut w| async move {
            let Some(entry) = w.group.memory.take() else {
                w.group.answer(Ok(()));
                return;
            };
            let learnt = Facts {
                exists: true,
                complete: w.created,
                agent: AgentFields::default(),
                closed: w.group.closed.clone(),
            };
            let conversation = w.group.conversation.clone();
            memory.learn(&conversation, entry, &learnt).await;
            let worded = org.words().fields().any(|f| w.group.record.contains_key(f));
            let result = if worded {
                let decided = std::mem::take(&mut w.group.decided);
                self.keep_latest_word(org, memory, &conversation, decided)
                    .await
            } else {
                Ok(())
            };
            w.group.answer(result);
        }))
        .await;
    }

    /// After a write of the agent's fields decided on `agent`: while the
    /// memory holds a later word than the one written, another replica
    /// claimed it meanwhile and its write may have landed first, so it is
    /// written again. Until that is done the write's events are not: an
    /// error retries them, and their retry writes the later word.
    async fn keep_latest_word(
        &self,
        org: &impl Org,
        memory: &Memory,
        conversation: &str,
        mut agent: AgentFields,
    ) -> Result<(), CrmError> {
        for _ in 0..3 {
            let Some(facts) = memory.reload(conversation).await?.facts else {
                return Ok(());
            };
            let word = facts.agent.latest_word(org.words());
            if facts.agent.word_order() <= agent.word_order() || word.is_empty() {
                return Ok(());
            }
            tracing::info!(crm = %org.connection(), conversation, "A later word was claimed while this write went out; writing it again.");
            knew(org.connection(), "rewritten", 1);
            org.rewrite(conversation, word, &facts).await?;
            agent = facts.agent;
        }
        Err(CrmError::Transient {
            reason: "later words kept coming while this one was written".into(),
            retry_after: None,
        })
    }
}

/// The group's writes in event order, each decided against the record as
/// the earlier ones leave it: sets the record to write, returns the agent
/// fields as it leaves them.
fn merge(words: &Words, group: &mut Group) -> AgentFields {
    let mut agent = group.agent.clone();
    group.record = Map::new();
    group.create_only = Map::new();
    for item in &group.items {
        let mut w = item.write.clone();
        w.resolve(&mut agent, words);
        group.record.extend(w.fields);
        for (field, value) in w.create_only {
            group.create_only.entry(field).or_insert(value);
        }
    }
    agent
}
