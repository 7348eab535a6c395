//! A batch's reads and writes, each in one `$batch`: the reads the writes
//! depend on (contacts and accounts for the batch's uncached caller
//! numbers, the phone calls the call memory does not know in full), then
//! every call's writes as a change set of its own (`Prefer:
//! odata.continue-on-error`: a refused call costs only its own events).
//! The shared machinery (`crm::activity::calls`) decided the records and
//! answers the events.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::DynamicsCrm;
use super::batch::{Answer, Op, Part, Response};
use super::error;
use super::phonecall::{STATECODE, STATUSCODE, activity_id, open_columns, split_state};
use crate::contract::PhoneNumber;
use crate::crm::CrmError;
use crate::crm::activity::{
    AgentFields, Callers, Facts, Group, Match, Write, Written, holds, knew, national_form,
    request_failure, several,
};

/// Numbers in one lookup query: each in two forms over three (contacts) or
/// two (accounts) columns keeps the query's URL far below the 64 KB a
/// `$batch` allows.
const NUMBERS_PER_QUERY: usize = 20;
/// Phone calls read in one query.
const CALLS_PER_QUERY: usize = 50;

const CONTACT_PHONES: [&str; 3] = ["telephone1", "mobilephone", "telephone2"];
const ACCOUNT_PHONES: [&str; 2] = ["telephone1", "telephone2"];

/// `<column> eq '<form>'` for every column and form of every number.
fn phone_filter(numbers: &[PhoneNumber], columns: &[&str]) -> String {
    let mut terms = Vec::new();
    for number in numbers {
        let mut forms = vec![number.as_str().to_owned()];
        forms.extend(national_form(number));
        for form in forms {
            for column in columns {
                // A number is `+` and digits: nothing to escape in a literal.
                terms.push(format!("{column} eq '{form}'"));
            }
        }
    }
    encode(&terms.join(" or "))
}

/// A query option's value, percent-encoded for the request line.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// What a read of people found, by number.
fn matches_of(
    answer: &Response,
    numbers: &[PhoneNumber],
    kind: &str,
) -> HashMap<String, Vec<Match>> {
    let (id, name, columns): (&str, &str, &[&str]) = match kind {
        "contact" => ("contactid", "fullname", &CONTACT_PHONES),
        _ => ("accountid", "name", &ACCOUNT_PHONES),
    };
    let records = answer.json()["value"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    numbers
        .iter()
        .map(|number| {
            let found = records
                .iter()
                .filter(|r| holds(columns.iter().filter_map(|c| r[*c].as_str()), number))
                .filter_map(|r| {
                    Some(Match {
                        object: kind.to_owned(),
                        id: r[id].as_str()?.to_owned(),
                        name: r[name].as_str().unwrap_or_default().to_owned(),
                    })
                })
                .collect();
            (number.as_str().to_owned(), found)
        })
        .collect()
}

/// An answer to a read: its JSON, or the error it is.
fn read_result(answer: Answer) -> Result<Response, CrmError> {
    match answer {
        Answer::One(r) if (200..300).contains(&r.status) => Ok(r),
        Answer::One(r) => Err(error::classify(r.status, r.retry_after, &r.body)),
        Answer::Many(_) => Err(CrmError::Unavailable {
            reason: "Dataverse answered a read with a change set".into(),
            retry_after: None,
        }),
    }
}

impl DynamicsCrm {
    /// Caller lookups and the phone call reads, in one `$batch`; fills in
    /// matches and each group's current record (or its failure).
    pub(super) async fn read_batch(&self, groups: &mut [Group]) {
        let mut callers = Callers::of(groups, &self.lookups, self.settings.lookup.enabled);
        let numbers = std::mem::take(&mut callers.unknown);
        // A call the memory does not know in full is read: its agent fields
        // decide the word and the fills, its state whether writes must
        // reopen it.
        let to_read: Vec<usize> = (0..groups.len()).filter(|&i| !groups[i].complete).collect();
        knew(&self.name, "remembered", groups.len() - to_read.len());
        knew(&self.name, "read", to_read.len());
        let mut parts = Vec::new();
        let chunks: Vec<&[PhoneNumber]> = numbers.chunks(NUMBERS_PER_QUERY).collect();
        for chunk in &chunks {
            parts.push(Part::Get(format!(
                "contacts?$select=contactid,fullname,{}&$filter={}",
                CONTACT_PHONES.join(","),
                phone_filter(chunk, &CONTACT_PHONES)
            )));
            parts.push(Part::Get(format!(
                "accounts?$select=accountid,name,{}&$filter={}",
                ACCOUNT_PHONES.join(","),
                phone_filter(chunk, &ACCOUNT_PHONES)
            )));
        }
        let reads: Vec<&[usize]> = to_read.chunks(CALLS_PER_QUERY).collect();
        for chunk in &reads {
            let ids: Vec<String> = chunk
                .iter()
                .map(|&i| format!("activityid eq {}", self.activity(&groups[i].conversation)))
                .collect();
            let mut select = vec!["activityid", STATECODE, STATUSCODE];
            select.extend(self.words.fields());
            if !self.words.notes_at.is_empty() {
                select.push(&self.words.notes_at);
            }
            parts.push(Part::Get(format!(
                "phonecalls?$select={}&$filter={}",
                select.join(","),
                encode(&ids.join(" or "))
            )));
        }
        if parts.is_empty() {
            return;
        }
        let answers = match self.send(&parts).await {
            Ok(answers) => answers,
            Err(e) => {
                let e = request_failure(e, groups.len());
                groups.iter_mut().for_each(|g| g.failure = Some(e.clone()));
                return;
            }
        };
        let mut answers = answers.into_iter();
        for chunk in &chunks {
            let contacts = read_result(answers.next().expect("one per part"));
            let accounts = read_result(answers.next().expect("one per part"));
            let found = contacts.and_then(|contacts| {
                let mut found = matches_of(&contacts, chunk, "contact");
                for (number, more) in matches_of(&accounts?, chunk, "account") {
                    found.entry(number).or_default().extend(more);
                }
                Ok(found)
            });
            callers.learn(&self.name, &self.lookups, chunk, found);
        }
        for chunk in &reads {
            match read_result(answers.next().expect("one per part")) {
                Ok(answer) => {
                    let records: HashMap<String, Map<String, Value>> = answer.json()["value"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| {
                            Some((
                                r["activityid"].as_str()?.to_lowercase(),
                                r.as_object()?.clone(),
                            ))
                        })
                        .collect();
                    for &i in chunk.iter() {
                        let id = self.activity(&groups[i].conversation).to_string();
                        let group = &mut groups[i];
                        // Read, the call's agent fields are known in full.
                        group.complete = true;
                        if let Some(record) = records.get(&id) {
                            group.exists = true;
                            group.agent = AgentFields::of_record(record, &self.words)
                                .join(&std::mem::take(&mut group.agent));
                            if record.get(STATECODE).and_then(Value::as_u64).unwrap_or(0) != 0 {
                                let (_, state) = split_state(record);
                                group.closed = state;
                            }
                        }
                    }
                }
                Err(e) => {
                    let e = request_failure(e, chunk.len());
                    for &i in chunk.iter() {
                        groups[i].failure = Some(e.clone());
                    }
                }
            }
        }
        callers.apply(groups, |conversation, write, _, _, matches| {
            let outbound = write.fields.get("directioncode") == Some(&Value::Bool(true));
            self.apply_matches(conversation, write, matches, outbound);
        });
    }

    /// One match is the call's regarding record and its other party (the
    /// caller inbound, the called outbound); several are recorded for the
    /// screen pop (`lookup.matches_column`) and logged.
    fn apply_matches(&self, conversation: &str, w: &mut Write, matches: &[Match], outbound: bool) {
        match matches {
            [one] => {
                let set = if one.object == "contact" {
                    "contacts"
                } else {
                    "accounts"
                };
                let bind = format!("/{set}({})", one.id);
                w.fields.insert(
                    format!("regardingobjectid_{}_phonecall@odata.bind", one.object),
                    Value::String(bind.clone()),
                );
                // 1: the sender (From) of an inbound call; 2: the recipient (To).
                let mask = if outbound { 2 } else { 1 };
                w.fields.insert(
                    "phonecall_activity_parties".into(),
                    json!([{ "participationtypemask": mask, format!("partyid_{}@odata.bind", one.object): bind }]),
                );
            }
            [] => tracing::debug!(crm = %self.name, conversation, "No record matches the caller."),
            many => several(
                &self.name,
                conversation,
                w,
                many,
                self.settings.lookup.matches_column.as_ref(),
                "the regarding record",
            ),
        }
    }

    /// The phone call of `conversation`.
    pub(super) fn activity(&self, conversation: &str) -> uuid::Uuid {
        activity_id(self.settings.url.as_url().as_str(), conversation)
    }

    /// The change set that writes `columns` and leaves the call in `state`
    /// (none: as it is), knowing it `closed` (empty: open or new): a closed
    /// call is reopened first and closed again after, as Dataverse refuses
    /// writes to closed activities. The state it leaves.
    fn change_set(
        &self,
        conversation: &str,
        columns: Map<String, Value>,
        state: Map<String, Value>,
        closed: &Map<String, Value>,
    ) -> (Vec<Op>, Map<String, Value>) {
        let path = format!("phonecalls({})", self.activity(conversation));
        let op = |body: Map<String, Value>| Op {
            method: "PATCH",
            path: path.clone(),
            body: Value::Object(body),
        };
        let reopen =
            !closed.is_empty() && (!columns.is_empty() || (!state.is_empty() && state != *closed));
        let mut ops = Vec::new();
        if reopen {
            ops.push(op(open_columns()));
        }
        if !columns.is_empty() {
            ops.push(op(columns));
        }
        let target = if !state.is_empty() {
            state
        } else if reopen {
            closed.clone()
        } else {
            Map::new()
        };
        if !target.is_empty() && (reopen || target != *closed) {
            ops.push(op(target.clone()));
        }
        let after = if target.is_empty() {
            closed.clone()
        } else {
            target
        };
        (ops, after)
    }

    /// Every group's writes, each call a change set, in one `$batch`.
    pub(super) async fn write_batch(&self, groups: Vec<Group>) -> Vec<Written> {
        let mut parts = Vec::new();
        let mut sending = Vec::new();
        let mut written = Vec::new();
        for mut group in groups {
            let (mut columns, state) = split_state(&group.record);
            if !group.exists {
                for (k, v) in &group.create_only {
                    columns.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            let (ops, after) = self.change_set(&group.conversation, columns, state, &group.closed);
            group.closed = after;
            let created = !group.exists;
            if ops.is_empty() {
                written.push(Written { group, created });
                continue;
            }
            parts.push(Part::ChangeSet(ops));
            sending.push(group);
        }
        if parts.is_empty() {
            return written;
        }
        let answers = match self.send(&parts).await {
            Ok(answers) => answers,
            Err(e) => {
                let e = request_failure(e, sending.len());
                sending.into_iter().for_each(|g| g.answer(Err(e.clone())));
                return written;
            }
        };
        for (group, answer) in sending.into_iter().zip(answers) {
            match settled(answer) {
                Ok(()) => {
                    let created = !group.exists;
                    written.push(Written { group, created });
                }
                Err(failed) => refused(&self.name, group, &failed),
            }
        }
        written
    }

    /// Writes the agent's latest `word` to the call's phone call again.
    pub(super) async fn rewrite_word(
        &self,
        conversation: &str,
        word: Map<String, Value>,
        facts: &Facts,
    ) -> Result<(), CrmError> {
        let (ops, _) = self.change_set(conversation, word, Map::new(), &facts.closed);
        let answer = self
            .send(&[Part::ChangeSet(ops)])
            .await?
            .pop()
            .expect("one part");
        settled(answer)
            .map_err(|failed| error::classify(failed.status, failed.retry_after, &failed.body))
    }
}

/// A change set's answer: written, or the response that refused it.
fn settled(answer: Answer) -> Result<(), Response> {
    let success = |r: &Response| (200..300).contains(&r.status);
    match answer {
        Answer::Many(responses) => match responses.into_iter().find(|r| !success(r)) {
            None => Ok(()),
            Some(failed) => Err(failed),
        },
        Answer::One(failed) => Err(failed),
    }
}

/// A call's change set refused: its events' fate.
fn refused(connection: &str, group: Group, failed: &Response) {
    let error = error::classify(failed.status, failed.retry_after, &failed.body);
    tracing::debug!(crm = %connection, conversation = %group.conversation, %error, "Dataverse refused a phone call.");
    group.answer(Err(error));
}
