//! The reads a batch of Task writes depends on, side by side: one SOSL
//! search for the batch's uncached caller numbers (a search cannot be a
//! Composite subrequest) and one SOQL `IN` query for the Tasks whose agent
//! fields must be known first and the call memory does not know in full;
//! then the matches applied (`WhoId`, several recorded) and the ringing
//! calls' screen pops published.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::SalesforceCrm;
use super::composite::{Sub, SubResult};
use super::lookup;
use crate::contract::PhoneNumber;
use crate::crm::CrmError;
use crate::crm::activity::{
    AgentFields, Callers, Group, Match, Write, knew, request_failure, several,
};

impl SalesforceCrm {
    /// Caller lookups and the Task reads, at once; fills in matches,
    /// screen pops and each group's current record (or its failure).
    pub(super) async fn read(&self, groups: &mut [Group]) {
        let mut callers = Callers::of(groups, &self.lookups, self.settings.lookup.enabled);
        let numbers = std::mem::take(&mut callers.unknown);
        let fills_read = self.settings.read_before_fill;
        let (to_read, remembered): (Vec<&Group>, Vec<&Group>) = groups
            .iter()
            .filter(|g| g.needs_read(&self.words))
            .partition(|g| !g.complete || (fills_read && g.fills()));
        knew(&self.name, "remembered", remembered.len());
        knew(&self.name, "read", to_read.len());
        let to_read: Vec<&str> = to_read.iter().map(|g| g.conversation.as_str()).collect();
        let searches: Vec<&[PhoneNumber]> = numbers.chunks(lookup::NUMBERS_PER_SEARCH).collect();
        let mut subs: Vec<Sub> = searches
            .iter()
            .map(|numbers| Sub {
                method: Method::GET,
                path: "search/".into(),
                query: vec![("q", lookup::sosl(numbers))],
                body: None,
            })
            .collect();
        if !to_read.is_empty() {
            subs.push(Sub {
                method: Method::GET,
                path: "query/".into(),
                query: vec![("q", self.soql(&to_read))],
                body: None,
            });
        }
        let reading = !to_read.is_empty();
        let to_read: Vec<String> = to_read.into_iter().map(str::to_owned).collect();
        let mut results = if subs.is_empty() {
            Vec::new()
        } else {
            self.send(subs).await
        };
        let read: Option<SubResult> = reading.then(|| results.pop().expect("one per sub"));
        for (numbers, result) in searches.iter().zip(results) {
            let found = result.and_then(|body| {
                serde_json::from_value::<lookup::SearchResponse>(body)
                    .map(|answer| answer.matches(numbers))
                    .map_err(|e| CrmError::Permanent {
                        reason: format!("unreadable Salesforce search answer: {e}"),
                        detail: None,
                    })
            });
            callers.learn(&self.name, &self.lookups, numbers, found);
        }
        let records: Result<HashMap<String, Map<String, Value>>, CrmError> = match read {
            None => Ok(HashMap::new()),
            Some(result) => result.map(|body| self.records_by_id(body)),
        };
        let mut pops = Vec::new();
        for group in groups.iter_mut() {
            if to_read.contains(&group.conversation) {
                match &records {
                    Ok(records) => {
                        // Read, the Task's agent fields are known in full.
                        group.complete = true;
                        if let Some(record) = records.get(&group.conversation) {
                            group.agent = AgentFields::of_record(record, &self.words)
                                .join(&std::mem::take(&mut group.agent));
                            group.exists = true;
                        }
                    }
                    Err(e) => group.failure = Some(request_failure(e.clone(), to_read.len())),
                }
            }
        }
        callers.apply(groups, |conversation, write, ringing, number, matches| {
            self.apply_matches(conversation, write, matches);
            if ringing && let Some(api_name) = &self.settings.lookup.screen_pop_event {
                pops.push(json!({
                    "attributes": {"type": api_name},
                    "Conversation_Id__c": conversation,
                    "Caller_Number__c": number.as_str(),
                    "Match_Count__c": matches.len(),
                    "Matches__c": serde_json::to_string(&matches).unwrap_or_default(),
                }));
            }
        });
        if !pops.is_empty() {
            self.screen_pops(pops).await;
        }
    }

    /// `SELECT <ext>, CallDisposition, Description, <notes_at> FROM Task WHERE <ext> IN (...)`.
    fn soql(&self, conversations: &[&str]) -> String {
        let ext = &self.settings.external_id_field;
        let mut fields = vec![ext.as_str(), "CallDisposition", "Description"];
        if !self.settings.notes_at_field.is_empty() {
            fields.push(&self.settings.notes_at_field);
        }
        let ids: Vec<String> = conversations
            .iter()
            .map(|c| format!("'{}'", c.replace('\\', "\\\\").replace('\'', "\\'")))
            .collect();
        format!(
            "SELECT {} FROM Task WHERE {ext} IN ({})",
            fields.join(", "),
            ids.join(", ")
        )
    }

    fn records_by_id(&self, body: Value) -> HashMap<String, Map<String, Value>> {
        let ext = &self.settings.external_id_field;
        body["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let record = r.as_object()?.clone();
                let id = record.get(ext)?.as_str()?.to_owned();
                Some((id, record))
            })
            .collect()
    }

    fn apply_matches(&self, conversation: &str, w: &mut Write, matches: &[Match]) {
        match matches {
            [one] => {
                w.fields
                    .insert("WhoId".into(), Value::String(one.id.clone()));
            }
            [] => tracing::debug!(crm = %self.name, conversation, "No record matches the caller."),
            many => several(
                &self.name,
                conversation,
                w,
                many,
                self.settings.lookup.matches_field.as_ref(),
                "WhoId",
            ),
        }
    }

    /// Screen pops are only useful while the call rings: one request for the
    /// batch's, and a refused one is logged, never retried.
    async fn screen_pops(&self, records: Vec<Value>) {
        let count = records.len();
        let body = json!({"allOrNone": false, "records": records});
        let sub = Sub {
            method: Method::POST,
            path: "composite/sobjects".into(),
            query: Vec::new(),
            body: Some(body),
        };
        match self.send(vec![sub]).await.pop().expect("one result") {
            Ok(results) => {
                for result in results.as_array().into_iter().flatten() {
                    if result["success"] != true {
                        tracing::warn!(crm = %self.name, errors = %result["errors"], "Screen pop not published.");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(crm = %self.name, count, error = %e, "Screen pops not published.")
            }
        }
    }
}
