//! One batch of Task writes, flushed for all its events at once: what the
//! call memory knows of each call (memory.rs), the reads the writes still
//! depend on (read.rs: one search, and one query for calls the memory does
//! not know in full, side by side), the writes decided and claimed in the
//! memory, then the creates and upserts in one request (sObject
//! Collections), and each event answered with its own record's result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::SalesforceCrm;
use super::composite::{Sub, SubResult};
use super::error::{classify_item, item_code};
use super::memory::{ClaimError, Entry, Facts};
use super::task::{AgentFields, DISPOSITION, NOTES, TaskWrite};
use crate::crm::CrmError;

/// A Task written, for the call memory.
struct Written {
    conversation: String,
    entry: Entry,
    /// This write created the Task.
    created: bool,
    /// A write of the agent's fields, answered once no later word can be
    /// under it ([`SalesforceCrm::keep_latest_word`]), and the agent fields
    /// as decided.
    unanswered: Option<(Group, AgentFields)>,
}

/// Claims of one call retried after other replicas claimed first.
const MAX_CLAIMS: usize = 8;

/// One event's Task write, waiting in a batch for its result.
pub(crate) struct Pending {
    pub conversation: String,
    /// `publishedAt` and stream sequence: the order of a call's events.
    pub order: (OffsetDateTime, u64),
    /// An incoming call, still ringing: its matches are popped.
    pub ringing: bool,
    pub write: TaskWrite,
    pub reply: oneshot::Sender<Result<(), CrmError>>,
}

/// Conversations whose Task this process has seen in the org: their writes
/// skip the create attempt.
pub(crate) struct Known(Mutex<HashMap<String, Instant>>);

const KNOWN_FOR: Duration = Duration::from_secs(3600);

impl Known {
    pub fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

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
pub(super) struct Group {
    pub conversation: String,
    /// In event order.
    pub items: Vec<Pending>,
    /// Why its events fail before any write (a read, lookup or claim failed).
    pub failure: Option<CrmError>,
    /// What is known of the Task's agent fields before this batch.
    pub agent: AgentFields,
    /// `agent` holds every write since the Task was created (from the call
    /// memory, or a read): the Task need not be read.
    pub complete: bool,
    /// The call memory's entry; `None` when the memory is not in use.
    memory: Option<Entry>,
    /// The merged record to write, and the agent fields as it leaves them.
    record: Map<String, Value>,
    decided: AgentFields,
    create_only: Map<String, Value>,
    /// Known to be in the org: written by update.
    pub exists: bool,
}

impl Group {
    /// What the call memory's `entry` knows, over what the group knew.
    fn adopt(&mut self, entry: Entry) {
        if let Some(facts) = &entry.facts {
            self.exists |= facts.task;
            self.agent = if facts.complete {
                facts.agent.clone()
            } else {
                std::mem::take(&mut self.agent).join(&facts.agent)
            };
            self.complete |= facts.complete;
        }
        self.memory = Some(entry);
    }

    fn answer(self, result: Result<(), CrmError>) {
        for item in self.items {
            let _ = item.reply.send(result.clone());
        }
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
/// that record; with several, the org's trouble (not every event's fault).
pub(super) fn request_failure(error: CrmError, records: usize) -> CrmError {
    match error {
        CrmError::Permanent { reason, .. } if records > 1 => CrmError::Unavailable {
            reason: format!("{reason} (a batch of {records} records)"),
            retry_after: None,
        },
        other => other,
    }
}

impl SalesforceCrm {
    /// Writes the batch and answers every event in it.
    pub(crate) async fn flush(&self, items: Vec<Pending>) {
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
                }
            })
            .collect();
        self.recall(&mut groups).await;
        let mut groups = answer_failed(groups);
        self.read(&mut groups).await;
        futures::future::join_all(
            groups
                .iter_mut()
                .filter(|g| g.failure.is_none())
                .map(|g| self.decide(g)),
        )
        .await;
        self.write(answer_failed(groups)).await;
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

    /// Decides the group's record against what is known of its Task, and
    /// claims it in the call memory; decided again on the facts of a replica
    /// that claimed first.
    async fn decide(&self, group: &mut Group) {
        for _ in 0..MAX_CLAIMS {
            let agent = self.merge(group);
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
                    self.knew("conflict", 1);
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

    /// The group's writes in event order, each decided against the Task as
    /// the earlier ones leave it: sets the record to write, returns the
    /// agent fields as it leaves them.
    fn merge(&self, group: &mut Group) -> AgentFields {
        let notes_at = self.settings.notes_at_field.as_str();
        let mut agent = group.agent.clone();
        group.record = Map::new();
        group.create_only = Map::new();
        for item in &group.items {
            let mut w = item.write.clone();
            w.resolve(&mut agent, notes_at);
            group.record.extend(w.fields);
            for (field, value) in w.create_only {
                group.create_only.entry(field).or_insert(value);
            }
        }
        agent
    }

    /// Creates (for Tasks not known to exist) and upserts, in one request;
    /// a create that meets the Task, or an upsert that raced a create
    /// (`DUPLICATE_VALUE`), is written again as an update.
    async fn write(&self, groups: Vec<Group>) {
        let mut pending = groups;
        let mut written = Vec::new();
        // A record written again (DUPLICATE_VALUE, a value cut) goes in the
        // next round; three rounds at most.
        for _ in 0..3 {
            if pending.is_empty() {
                break;
            }
            let (creates, upserts): (Vec<Group>, Vec<Group>) =
                pending.into_iter().partition(|g| !g.exists);
            let mut subs = Vec::new();
            if !creates.is_empty() {
                subs.push(self.collection(&creates, true));
            }
            if !upserts.is_empty() {
                subs.push(self.collection(&upserts, false));
            }
            let mut results = self.send(subs).await.into_iter();
            pending = Vec::new();
            if !creates.is_empty() {
                let result = results.next().expect("one per sub");
                pending.extend(self.settle(creates, result, true, &mut written));
            }
            if !upserts.is_empty() {
                let result = results.next().expect("one per sub");
                pending.extend(self.settle(upserts, result, false, &mut written));
            }
        }
        for group in pending {
            group.answer(Err(CrmError::Transient {
                reason: "Salesforce refused the record three times in a row".into(),
                retry_after: None,
            }));
        }
        // The memory learns which Tasks exist, and which the bridge created
        // (then it knows every write of their agent fields); a write of the
        // agent's fields that may have landed after a newer word's puts the
        // newer word back before its events are done.
        let Some(memory) = &self.memory else { return };
        futures::future::join_all(written.into_iter().map(|w| async move {
            let learnt = Facts {
                task: true,
                complete: w.created,
                agent: AgentFields::default(),
            };
            memory.learn(&w.conversation, w.entry, &learnt).await;
            if let Some((group, agent)) = w.unanswered {
                let kept = self.keep_latest_word(&w.conversation, agent).await;
                group.answer(kept);
            }
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
        conversation: &str,
        mut agent: AgentFields,
    ) -> Result<(), CrmError> {
        let Some(memory) = &self.memory else {
            return Ok(());
        };
        let notes_at = self.settings.notes_at_field.as_str();
        for _ in 0..3 {
            let Some(facts) = memory.reload(conversation).await?.facts else {
                return Ok(());
            };
            let word = facts.agent.latest_word(notes_at);
            if facts.agent.word_order() <= agent.word_order() || word.is_empty() {
                return Ok(());
            }
            tracing::info!(crm = %self.name, conversation, "A later word was claimed while this write went out; writing it again.");
            self.knew("rewritten", 1);
            let sub = self.tasks(vec![(conversation, word)], false);
            match self.send(vec![sub]).await.pop().expect("one result") {
                Ok(Value::Array(results))
                    if results.first().is_some_and(|r| r["success"] == true) => {}
                Ok(other) => {
                    return Err(CrmError::Transient {
                        reason: format!(
                            "the later word was not written again: {}",
                            other[0]["errors"]
                        ),
                        retry_after: None,
                    });
                }
                Err(e) => return Err(e),
            }
            agent = facts.agent;
        }
        Err(CrmError::Transient {
            reason: "later words kept coming while this one was written".into(),
            retry_after: None,
        })
    }

    fn collection(&self, groups: &[Group], create: bool) -> Sub {
        let records = groups
            .iter()
            .map(|g| {
                let mut record = g.record.clone();
                if create {
                    record.extend(g.create_only.clone());
                }
                (g.conversation.as_str(), record)
            })
            .collect();
        self.tasks(records, create)
    }

    /// Creates or upserts of Task records, by conversation.
    fn tasks(&self, records: Vec<(&str, Map<String, Value>)>, create: bool) -> Sub {
        let ext = &self.settings.external_id_field;
        let records: Vec<Value> = records
            .into_iter()
            .map(|(conversation, fields)| {
                let mut record = Map::new();
                record.insert("attributes".into(), json!({"type": "Task"}));
                record.extend(fields);
                record.insert(ext.clone(), Value::String(conversation.to_owned()));
                Value::Object(record)
            })
            .collect();
        Sub {
            method: if create { Method::POST } else { Method::PATCH },
            path: if create {
                "composite/sobjects".into()
            } else {
                format!("composite/sobjects/Task/{ext}")
            },
            query: Vec::new(),
            body: Some(json!({"allOrNone": false, "records": records})),
        }
    }

    /// Answers each group with its record's result; returns the groups to
    /// write again as updates (`DUPLICATE_VALUE`), and adds the Tasks written
    /// (with the memory's entry, and whether this write created the Task) to
    /// `written`.
    fn settle(
        &self,
        groups: Vec<Group>,
        result: SubResult,
        create: bool,
        written: &mut Vec<Written>,
    ) -> Vec<Group> {
        let results = match result {
            Ok(Value::Array(results)) if results.len() == groups.len() => results,
            Ok(other) => {
                let e = CrmError::Unavailable {
                    reason: format!(
                        "Salesforce answered {} records for {}",
                        other.as_array().map_or(0, Vec::len),
                        groups.len()
                    ),
                    retry_after: None,
                };
                groups.into_iter().for_each(|g| g.answer(Err(e.clone())));
                return Vec::new();
            }
            Err(e) => {
                let e = request_failure(e, groups.len());
                groups.into_iter().for_each(|g| g.answer(Err(e.clone())));
                return Vec::new();
            }
        };
        let mut again = Vec::new();
        for (mut group, result) in groups.into_iter().zip(results) {
            if result["success"] == true {
                self.known.insert(&group.conversation);
                let Some(entry) = group.memory.take() else {
                    group.answer(Ok(()));
                    continue;
                };
                let agent = [DISPOSITION, NOTES]
                    .iter()
                    .any(|f| group.record.contains_key(*f));
                let conversation = group.conversation.clone();
                let unanswered = if agent {
                    let decided = std::mem::take(&mut group.decided);
                    Some((group, decided))
                } else {
                    group.answer(Ok(()));
                    None
                };
                written.push(Written {
                    conversation,
                    entry,
                    created: create,
                    unanswered,
                });
                continue;
            }
            let errors = &result["errors"];
            if item_code(errors) == Some("DUPLICATE_VALUE") {
                if create {
                    tracing::debug!(crm = %self.name, conversation = %group.conversation, "The Task exists already; updating it.");
                } else {
                    tracing::info!(crm = %self.name, conversation = %group.conversation, "An upsert raced a create; updating the Task.");
                }
                group.exists = true;
                again.push(group);
                continue;
            }
            if item_code(errors) == Some("STRING_TOO_LONG")
                && let Some(fields) = errors[0]["fields"].as_array()
                && fields
                    .iter()
                    .any(|f| f.as_str().is_some_and(|f| group.record.contains_key(f)))
            {
                // A field shorter than `field_lengths` says: the call is
                // logged without that value rather than refused.
                for field in fields.iter().filter_map(Value::as_str) {
                    group.record.remove(field);
                    tracing::warn!(crm = %self.name, conversation = %group.conversation, field, "Value too long for the org's field; written without it (set field_lengths).");
                }
                again.push(group);
                continue;
            }
            let error = classify_item(errors);
            tracing::debug!(crm = %self.name, conversation = %group.conversation, %error, "Salesforce refused a Task record.");
            group.answer(Err(error));
        }
        again
    }
}
