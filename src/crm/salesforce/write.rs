//! A batch's Task writes in one request (sObject Collections): creates for
//! Tasks not known to exist, upserts on the external id for the others, and
//! each record's result read back; the shared machinery
//! (`crm::activity::calls`) decided the records and answers the events.

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::SalesforceCrm;
use super::composite::{Sub, SubResult};
use super::error::{classify_item, item_code};
use crate::crm::CrmError;
use crate::crm::activity::{Group, Written, request_failure};

impl SalesforceCrm {
    /// Creates (for Tasks not known to exist) and upserts, in one request;
    /// a create that meets the Task, or an upsert that raced a create
    /// (`DUPLICATE_VALUE`), is written again as an update.
    pub(super) async fn write_batch(&self, groups: Vec<Group>) -> Vec<Written> {
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
        written
    }

    /// Writes the agent's latest `word` to the call's Task again.
    pub(super) async fn rewrite_word(
        &self,
        conversation: &str,
        word: Map<String, Value>,
    ) -> Result<(), CrmError> {
        let sub = self.tasks(vec![(conversation, word)], false);
        match self.send(vec![sub]).await.pop().expect("one result") {
            Ok(Value::Array(results)) if results.first().is_some_and(|r| r["success"] == true) => {
                Ok(())
            }
            Ok(other) => Err(CrmError::Transient {
                reason: format!(
                    "the later word was not written again: {}",
                    other[0]["errors"]
                ),
                retry_after: None,
            }),
            Err(e) => Err(e),
        }
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

    /// Answers each refused group with its record's result; returns the
    /// groups to write again as updates (`DUPLICATE_VALUE`), and adds the
    /// Tasks written (and whether this write created the Task) to `written`.
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
                written.push(Written {
                    group,
                    created: create,
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
