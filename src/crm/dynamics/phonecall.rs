//! Call activity as a Dataverse phone call (`phonecall`): which columns each
//! event writes (the agent's word is decided by the machinery every batched
//! CRM shares, `crm::activity::word`). Dataverse-specific rules:
//! - the record's id is derived from the environment and the conversation
//!   ([`activity_id`]), so any replica, any order and any redelivery write
//!   one record by `PATCH` upsert;
//! - `subject` and `directioncode` are written by every event that knows the
//!   direction, with the same values;
//! - `statecode`/`statuscode` are only written by the terminal events:
//!   `ended` completes the call (Received inbound, Made outbound),
//!   `rejected` cancels it; a state is never part of a create, and a closed
//!   call is reopened and closed again around a later write in one change
//!   set (write.rs), so a late `accepted` never leaves it open;
//! - `description` and the disposition column hold the agent's word, stamped
//!   in `notes_at_column`; `ended` and `rejected` only fill them;
//! - `actualdurationminutes` (whole minutes, rounded up) and, where the org
//!   has the column, the exact seconds.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::DynamicsSettings;
use crate::contract::{CallType, Event, RejectReason};
use crate::crm::activity::{Words, Write, format_at, mappable};

pub(super) const STATECODE: &str = "statecode";
pub(super) const STATUSCODE: &str = "statuscode";
const NOTES: &str = "description";
/// `actualdurationminutes` and the seconds column are whole numbers.
const MAX_DURATION: f64 = i32::MAX as f64;
/// The namespace of phone call ids (a UUIDv5 of the environment and the
/// conversation): fixed forever, or calls would be logged twice.
const NAMESPACE: Uuid = Uuid::from_u128(0x5b1d_6c0e_93a4_4f0b_9a57_2d4e_8c61_f3a2);

/// The id of `conversation`'s phone call in the environment at `url`.
pub fn activity_id(url: &str, conversation: &str) -> Uuid {
    let name = format!("{}/{conversation}", url.trim_end_matches('/'));
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// The state a call is closed with: (`statecode`, `statuscode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// Completed, Received.
    Received,
    /// Completed, Made.
    Made,
    /// Canceled, Canceled.
    Canceled,
}

impl Closed {
    fn codes(self) -> (u8, u8) {
        match self {
            Closed::Received => (1, 4),
            Closed::Made => (1, 2),
            Closed::Canceled => (2, 3),
        }
    }

    pub(super) fn columns(self) -> Map<String, Value> {
        let (state, status) = self.codes();
        [
            (STATECODE.to_owned(), Value::from(state)),
            (STATUSCODE.to_owned(), Value::from(status)),
        ]
        .into_iter()
        .collect()
    }
}

/// The columns that reopen a closed call: Open, Open.
pub(super) fn open_columns() -> Map<String, Value> {
    [
        (STATECODE.to_owned(), Value::from(0)),
        (STATUSCODE.to_owned(), Value::from(1)),
    ]
    .into_iter()
    .collect()
}

/// The names of a phone call's agent fields.
pub(super) fn words(s: &DynamicsSettings) -> Words {
    Words {
        disposition: s.disposition_column.clone().unwrap_or_default(),
        notes: NOTES.into(),
        notes_at: s.notes_at_column.clone().unwrap_or_default(),
    }
}

fn direction(w: &mut Write, call_type: CallType) {
    let (outbound, subject) = match call_type {
        CallType::Inbound => (false, "Inbound call"),
        CallType::Outbound => (true, "Outbound call"),
    };
    w.fields
        .insert("directioncode".into(), Value::Bool(outbound));
    w.set("subject", subject);
}

fn close(w: &mut Write, closed: Closed, at: OffsetDateTime) {
    w.fields.extend(closed.columns());
    w.set("actualend", &format_at(at));
}

/// The phone call write for a call event; `None` for events that are not
/// about a call.
pub(super) fn phonecall_write(
    event: &Event,
    (published, sequence): (OffsetDateTime, u64),
    s: &DynamicsSettings,
) -> Option<Write> {
    event.conversation_id()?;
    let mut w = Write::new(published, sequence);
    for (field, value) in mappable(event) {
        if let Some(column) = s.columns.get(field) {
            w.set(column, value);
        }
    }
    let words = words(s);
    match event {
        Event::CallIncoming(e) => {
            direction(&mut w, CallType::Inbound);
            w.set("actualstart", &format_at(published));
            w.set_some("phonenumber", e.caller_ani.as_ref().map(|n| n.as_str()));
            w.lookup = e.caller_ani.clone();
        }
        Event::CallAccepted(e) => {
            direction(&mut w, CallType::Inbound);
            w.set_some("phonenumber", e.caller_ani.as_ref().map(|n| n.as_str()));
            w.lookup = e.caller_ani.clone();
        }
        Event::CallOutboundInitiated(e) => {
            direction(&mut w, CallType::Outbound);
            w.set("actualstart", &format_at(published));
            w.set("phonenumber", e.dialled_to.as_str());
            w.lookup = Some(e.dialled_to.clone());
        }
        Event::CallRejected(e) => {
            direction(&mut w, CallType::Inbound);
            close(&mut w, Closed::Canceled, published);
            w.fields.insert("actualdurationminutes".into(), 0.into());
            let disposition = match e.reason {
                RejectReason::Active => &s.rejected_disposition,
                RejectReason::Passive => &s.missed_disposition,
            };
            if !words.disposition.is_empty() {
                w.fill(&words.disposition, Some(disposition));
            }
        }
        Event::CallEnded(e) => {
            let closed = match e.call_type {
                Some(call_type) => {
                    direction(&mut w, call_type);
                    match call_type {
                        CallType::Inbound => Closed::Received,
                        CallType::Outbound => Closed::Made,
                    }
                }
                None => Closed::Received,
            };
            close(&mut w, closed, published);
            if let Some(seconds) = e.duration {
                let seconds = seconds.max(0.0);
                if seconds > MAX_DURATION {
                    w.cut
                        .push(("actualdurationminutes".into(), seconds as usize));
                }
                let seconds = seconds.round().min(MAX_DURATION) as u64;
                w.fields
                    .insert("actualdurationminutes".into(), seconds.div_ceil(60).into());
                if let Some(column) = &s.duration_seconds_column {
                    w.fields.insert(column.clone(), seconds.into());
                }
            }
            if !words.disposition.is_empty() {
                w.fill(&words.disposition, e.disposition.as_deref());
            }
            w.fill(NOTES, e.notes.as_deref());
        }
        Event::CallNotesSubmitted(e) => {
            w.word(
                &words,
                published,
                e.disposition.as_deref(),
                e.notes.as_deref(),
            );
        }
        Event::Loaded(_) | Event::AgentStatusChanged(_) => return None,
    }
    w.fit(|column| max_length(column, s));
    Some(w)
}

/// The most characters Dataverse accepts in a `phonecall` column, where known.
fn max_length(column: &str, s: &DynamicsSettings) -> Option<usize> {
    if let Some(n) = s.column_lengths.get(column) {
        return Some(*n);
    }
    match column {
        NOTES => Some(2000),
        "subject" | "phonenumber" => Some(200),
        _ if s.disposition_column.as_deref() == Some(column) => Some(100),
        _ if s.columns.values().any(|c| c == column) => Some(100),
        _ => None,
    }
}

/// Splits a record to write into its columns and the state it sets.
pub(super) fn split_state(record: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    record
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| k != STATECODE && k != STATUSCODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::EventKind;
    use crate::crm::activity::AgentFields;

    const CONV: &str = "57053e21-0440-4689-a27a-513d7dceebde";
    const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";

    fn settings() -> DynamicsSettings {
        toml::from_str(
            r#"
            url = "https://contoso.crm.dynamics.com"
            tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
            client_id = "51f81489-12ee-4a9e-aaae-a2591f45987d"
            client_secret = "s"
            disposition_column = "new_disposition"
            notes_at_column = "new_notesat"
            duration_seconds_column = "new_durationseconds"
            [columns]
            ivrExitPath = "new_ivrexitpath"
            "#,
        )
        .unwrap()
    }

    fn write_at(kind: EventKind, extra: &str, second: i64) -> Write {
        let body = format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{CONV}"{extra}}}"#);
        let event = Event::decode(kind, body.as_bytes()).unwrap();
        let published = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(second);
        phonecall_write(&event, (published, second as u64), &settings()).unwrap()
    }

    #[test]
    fn the_id_is_the_same_for_a_conversation_and_differs_between_environments() {
        let a = activity_id("https://contoso.crm.dynamics.com", CONV);
        assert_eq!(a, activity_id("https://contoso.crm.dynamics.com/", CONV));
        assert_ne!(a, activity_id("https://fabrikam.crm.dynamics.com", CONV));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn a_call_is_written_as_dataverse_takes_it() {
        let incoming = write_at(EventKind::CallIncoming, r#","callerANI":"+18883973342""#, 0);
        assert_eq!(incoming.fields["directioncode"], false);
        assert_eq!(incoming.fields["phonenumber"], "+18883973342");
        assert_eq!(incoming.fields["actualstart"], "1970-01-01T00:00:00.000Z");
        assert!(
            !incoming.fields.contains_key(STATECODE),
            "never in a create"
        );
        let accepted = write_at(EventKind::CallAccepted, r#","ivrExitPath":"billing""#, 1);
        assert_eq!(accepted.fields["new_ivrexitpath"], "billing");
        assert!(!accepted.fields.contains_key(STATECODE), "never reopens");
        let ended = write_at(
            EventKind::CallEnded,
            r#","duration":61.6,"notes":"first","callType":"outbound""#,
            2,
        );
        assert_eq!(ended.fields[STATECODE], 1);
        assert_eq!(ended.fields[STATUSCODE], 2, "Made");
        assert_eq!(ended.fields["actualdurationminutes"], 2);
        assert_eq!(ended.fields["new_durationseconds"], 62);
        assert_eq!(ended.fill["description"], "first");
        let rejected = write_at(EventKind::CallRejected, r#","reason":"passive""#, 2);
        assert_eq!(rejected.fields[STATECODE], 2);
        assert_eq!(rejected.fill["new_disposition"], "Missed");
        let (columns, state) = split_state(&ended.fields);
        assert_eq!(state, Closed::Made.columns());
        assert!(!columns.contains_key(STATUSCODE));
    }

    #[test]
    fn the_latest_word_wins_with_the_shared_rules() {
        let words = words(&settings());
        let mut agent = AgentFields::default();
        let mut later = write_at(
            EventKind::CallNotesSubmitted,
            r#","notes":"final","disposition":"Sale""#,
            9,
        );
        later.resolve(&mut agent, &words);
        let mut older = write_at(EventKind::CallNotesSubmitted, r#","notes":"draft""#, 5);
        older.resolve(&mut agent, &words);
        assert_eq!(
            older.fields["description"], "final",
            "the older word writes the latest"
        );
        assert_eq!(older.fields["new_disposition"], "Sale");
        let mut ended = write_at(EventKind::CallEnded, r#","notes":"at the end""#, 3);
        ended.resolve(&mut agent, &words);
        assert!(
            !ended.fields.contains_key("description"),
            "a fill never overwrites a word"
        );
        assert_eq!(agent.word_at, Some(9000));
    }
}
