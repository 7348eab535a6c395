//! One batch of Task writes, flushed for all its events at once: the reads
//! the writes depend on (read.rs: one search, one query, side by side), then
//! the creates and upserts in one request (sObject Collections), and each
//! event answered with its own record's result.

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
use super::task::TaskWrite;
use crate::crm::CrmError;

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
    /// Why its events fail before any write (a read or lookup failed).
    pub failure: Option<CrmError>,
    /// The Task as read, then the merged record to write.
    pub record: Map<String, Value>,
    create_only: Map<String, Value>,
    /// Known to be in the org: written by update.
    pub exists: bool,
}

impl Group {
    fn answer(self, result: Result<(), CrmError>) {
        for item in self.items {
            let _ = item.reply.send(result.clone());
        }
    }
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
                    record: Map::new(),
                    create_only: Map::new(),
                }
            })
            .collect();
        self.read(&mut groups).await;
        for group in &mut groups {
            if group.failure.is_none() {
                self.merge(group);
            }
        }
        let (failed, ready): (Vec<Group>, Vec<Group>) =
            groups.into_iter().partition(|g| g.failure.is_some());
        for mut group in failed {
            let failure = group.failure.take().expect("partitioned on it");
            group.answer(Err(failure));
        }
        self.write(ready).await;
    }

    /// The group's writes in event order, each decided against the Task as
    /// the earlier ones leave it.
    fn merge(&self, group: &mut Group) {
        let notes_at = self.settings.notes_at_field.as_str();
        let mut current = std::mem::take(&mut group.record);
        let mut record = Map::new();
        for item in &mut group.items {
            let w = &mut item.write;
            w.resolve(&current, notes_at);
            for (field, value) in &w.fields {
                current.insert(field.clone(), value.clone());
                record.insert(field.clone(), value.clone());
            }
            for (field, value) in std::mem::take(&mut w.create_only) {
                group.create_only.entry(field).or_insert(value);
            }
        }
        group.record = record;
    }

    /// Creates (for Tasks not known to exist) and upserts, in one request;
    /// a create that meets the Task, or an upsert that raced a create
    /// (`DUPLICATE_VALUE`), is written again as an update.
    async fn write(&self, groups: Vec<Group>) {
        let mut pending = groups;
        // A record written again (DUPLICATE_VALUE, a value cut) goes in the
        // next round; three rounds at most.
        for _ in 0..3 {
            if pending.is_empty() {
                return;
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
                pending.extend(self.settle(creates, result, true));
            }
            if !upserts.is_empty() {
                let result = results.next().expect("one per sub");
                pending.extend(self.settle(upserts, result, false));
            }
        }
        for group in pending {
            group.answer(Err(CrmError::Transient {
                reason: "Salesforce refused the record three times in a row".into(),
                retry_after: None,
            }));
        }
    }

    fn collection(&self, groups: &[Group], create: bool) -> Sub {
        let ext = &self.settings.external_id_field;
        let records: Vec<Value> = groups
            .iter()
            .map(|g| {
                let mut record = Map::new();
                record.insert("attributes".into(), json!({"type": "Task"}));
                record.extend(g.record.clone());
                if create {
                    record.extend(g.create_only.clone());
                }
                record.insert(ext.clone(), Value::String(g.conversation.clone()));
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
    /// write again as updates (`DUPLICATE_VALUE`).
    fn settle(&self, groups: Vec<Group>, result: SubResult, create: bool) -> Vec<Group> {
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
                group.answer(Ok(()));
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
