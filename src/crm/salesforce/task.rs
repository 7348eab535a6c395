//! Call activity as a Task: which fields each event writes (the agent's
//! word is decided by the machinery every batched CRM shares,
//! `crm::activity::word`). Salesforce-specific rules:
//! - every field has owners, and owners that can both write it write the same
//!   value (`CallType`, `Subject`, `CallObject`, `Type`), except where noted;
//! - `Status` is only written by the terminal events (ended, rejected), so a
//!   late `accepted` can never reopen a completed Task; on create the org's
//!   default status applies;
//! - `CallDisposition` and `Description` hold the agent's word, stamped in
//!   `notes_at_field`;
//! - `TaskSubtype` cannot be updated in Salesforce, so every event that may
//!   create the Task sends it on a create-only path;
//! - values longer than the org accepts are cut with a marker, so the call
//!   is still logged.

use serde_json::Value;
use time::OffsetDateTime;

use crate::contract::{CallType, Event, RejectReason};
use crate::crm::SalesforceSettings;
use crate::crm::activity::{Words, Write, mappable};

pub(crate) const DISPOSITION: &str = "CallDisposition";
pub(crate) const NOTES: &str = "Description";
/// `CallDurationInSeconds` is an integer field.
const MAX_DURATION: f64 = i32::MAX as f64;

/// The names of a Task's agent fields.
pub(crate) fn words(s: &SalesforceSettings) -> Words {
    Words {
        disposition: DISPOSITION.into(),
        notes: NOTES.into(),
        notes_at: s.notes_at_field.clone(),
    }
}

fn direction(w: &mut Write, call_type: CallType) {
    let (call_type, subject) = match call_type {
        CallType::Inbound => ("Inbound", "Inbound call"),
        CallType::Outbound => ("Outbound", "Outbound call"),
    };
    w.set("Type", "Call");
    w.set("CallType", call_type);
    w.set("Subject", subject);
}

fn open(w: &mut Write, call_type: CallType, date: &str) {
    direction(w, call_type);
    w.set("ActivityDate", date);
}

/// The Task write for a call event; `None` for events that are not about a call.
pub(crate) fn task_write(
    event: &Event,
    (published, sequence): (OffsetDateTime, u64),
    s: &SalesforceSettings,
) -> Option<Write> {
    let mut w = Write::new(published, sequence);
    for (field, value) in mappable(event) {
        if let Some(task_field) = s.task_fields.get(field) {
            w.set(task_field, value);
        }
    }
    let conversation = event.conversation_id()?;
    w.set("CallObject", conversation.as_str());
    let date = published.date().to_string();
    // Any call event may be the first the org sees (replicas race, or the
    // softphone never sent the opening one): each creates the Task as a call.
    w.create_only
        .insert("TaskSubtype".into(), Value::String("Call".into()));
    match event {
        Event::CallIncoming(e) => {
            open(&mut w, CallType::Inbound, &date);
            w.lookup = e.caller_ani.clone();
        }
        Event::CallAccepted(e) => {
            direction(&mut w, CallType::Inbound);
            w.set("ActivityDate", &date);
            w.lookup = e.caller_ani.clone();
        }
        Event::CallOutboundInitiated(e) => {
            open(&mut w, CallType::Outbound, &date);
            w.lookup = Some(e.dialled_to.clone());
        }
        Event::CallRejected(e) => {
            direction(&mut w, CallType::Inbound);
            w.set("Status", &s.completed_status);
            w.fields.insert("CallDurationInSeconds".into(), 0.into());
            let disposition = match e.reason {
                RejectReason::Active => &s.rejected_disposition,
                RejectReason::Passive => &s.missed_disposition,
            };
            w.fill(DISPOSITION, Some(disposition));
        }
        Event::CallEnded(e) => {
            if let Some(call_type) = e.call_type {
                direction(&mut w, call_type);
            }
            w.set("Type", "Call");
            w.set("Status", &s.completed_status);
            if let Some(seconds) = e.duration {
                if seconds > MAX_DURATION {
                    w.cut
                        .push(("CallDurationInSeconds".into(), seconds as usize));
                }
                w.fields.insert(
                    "CallDurationInSeconds".into(),
                    (seconds.round().min(MAX_DURATION) as u64).into(),
                );
            }
            w.fill(DISPOSITION, e.disposition.as_deref());
            w.fill(NOTES, e.notes.as_deref());
        }
        Event::CallNotesSubmitted(e) => {
            w.word(
                &words(s),
                published,
                e.disposition.as_deref(),
                e.notes.as_deref(),
            );
        }
        Event::Loaded(_) | Event::AgentStatusChanged(_) => return None,
    }
    w.fit(|field| max_length(field, s));
    Some(w)
}

/// The most characters the org accepts in a Task field, where known.
fn max_length(field: &str, s: &SalesforceSettings) -> Option<usize> {
    if let Some(n) = s.field_lengths.get(field) {
        return Some(*n);
    }
    match field {
        NOTES => Some(32_000),
        DISPOSITION | "Subject" | "CallObject" => Some(255),
        _ if s.task_fields.values().any(|f| f == field) => Some(255),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::EventKind;
    use crate::crm::activity::{AgentFields, CUT_MARKER, parse_at};
    use serde_json::Map;

    fn test_words() -> Words {
        Words {
            notes_at: "Notes_At__c".into(),
            ..words(&settings())
        }
    }

    const CONV: &str = "57053e21-0440-4689-a27a-513d7dceebde";
    const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";

    fn settings() -> SalesforceSettings {
        let toml = r#"
            auth = "client_credentials"
            login_url = "https://x.my.salesforce.com"
            client_id = "id"
            client_secret = "s"
            [task_fields]
            language = "Language__c"
            ivrExitPath = "Ivr_Exit__c"
        "#;
        toml::from_str(toml).unwrap()
    }

    /// The event's write, published in the usual order of a call's events.
    fn write(kind: EventKind, extra: &str) -> Write {
        let second = match kind {
            EventKind::CallIncoming | EventKind::CallOutboundInitiated => 0,
            EventKind::CallAccepted => 1,
            EventKind::CallEnded | EventKind::CallRejected => 2,
            _ => 3,
        };
        write_at(kind, extra, second)
    }

    fn write_at(kind: EventKind, extra: &str, second: i64) -> Write {
        let body = format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{CONV}"{extra}}}"#);
        let event = Event::decode(kind, body.as_bytes()).unwrap();
        let published = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(second);
        task_write(&event, (published, second as u64), &settings()).unwrap()
    }

    /// Applies writes in order as Salesforce would (fill after a read).
    fn apply(writes: Vec<Write>) -> Map<String, Value> {
        let mut task = Map::new();
        for mut w in writes {
            w.resolve(
                &mut AgentFields::of_record(&task, &test_words()),
                &test_words(),
            );
            if task.is_empty() {
                task.extend(w.create_only);
            }
            task.extend(w.fields);
        }
        task
    }

    /// The writes of a call's four events, in the order they were published.
    fn lifecycle() -> Vec<Write> {
        vec![
            write(EventKind::CallIncoming, r#","callerANI":"+18883973342""#),
            write(EventKind::CallAccepted, r#","ivrExitPath":"billing""#),
            write(
                EventKind::CallEnded,
                r#","duration":61.6,"disposition":"Sale","notes":"first","callType":"inbound""#,
            ),
            write(
                EventKind::CallNotesSubmitted,
                r#","disposition":"Callback","notes":"final""#,
            ),
        ]
    }

    /// Applies writes in order as the call memory decides them: what each
    /// write claims is what the next one is decided against.
    fn apply_remembered(writes: Vec<Write>) -> (Map<String, Value>, AgentFields) {
        let mut task = Map::new();
        let mut agent = AgentFields::default();
        for mut w in writes {
            w.resolve(&mut agent, &test_words());
            if task.is_empty() {
                task.extend(w.create_only);
            }
            task.extend(w.fields);
        }
        (task, agent)
    }

    #[test]
    fn the_memory_decides_as_a_read_would_and_lets_a_fill_be_retried() {
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1], [0, 3, 2, 1]] {
            let ordered = || {
                let all = lifecycle();
                order.iter().map(|&i| all[i].clone()).collect::<Vec<_>>()
            };
            let (remembered, agent) = apply_remembered(ordered());
            assert_eq!(remembered, apply(ordered()), "{order:?}");
            assert_eq!(agent.word_at, Some(3000), "{order:?}");
        }
        // ended claims its fill, its write fails: its retry fills again;
        // another event's fill (rejected, say) does not.
        let ended = write(EventKind::CallEnded, r#","notes":"at the end""#);
        let (_, claimed) = apply_remembered(vec![ended.clone()]);
        assert_eq!(claimed.set["Description"], Some(2000));
        let mut retry = ended;
        retry.resolve(&mut claimed.clone(), &test_words());
        assert_eq!(retry.fields["Description"], "at the end");
        let mut other = write_at(EventKind::CallEnded, r#","notes":"other""#, 4);
        other.resolve(&mut claimed.clone(), &test_words());
        assert!(!other.fields.contains_key("Description"));
        // Joined, a word's claim wins over a fill's.
        let (_, worded) = apply_remembered(vec![write(
            EventKind::CallNotesSubmitted,
            r#","notes":"n""#,
        )]);
        let joined = claimed.join(&worded);
        assert_eq!(joined.set["Description"], None);
        assert_eq!(joined.word_at, Some(3000));
    }

    #[test]
    fn only_terminal_events_write_status() {
        for (kind, extra) in [
            (EventKind::CallIncoming, ""),
            (EventKind::CallAccepted, r#","ivrExitPath":"billing""#),
            (
                EventKind::CallOutboundInitiated,
                r#","dialledTo":"+18449401117""#,
            ),
            (EventKind::CallNotesSubmitted, r#","notes":"n""#),
        ] {
            assert!(!write(kind, extra).fields.contains_key("Status"), "{kind}");
        }
        assert_eq!(
            write(EventKind::CallEnded, "").fields["Status"],
            "Completed"
        );
        assert_eq!(
            write(EventKind::CallRejected, r#","reason":"active""#).fields["Status"],
            "Completed"
        );
    }

    #[test]
    fn mapped_fields_are_written_and_empty_values_never() {
        let w = write(
            EventKind::CallAccepted,
            r#","ivrExitPath":"billing","language":"fr_FR","channelName":"""#,
        );
        assert_eq!(w.fields["Ivr_Exit__c"], "billing");
        assert_eq!(w.fields["Language__c"], "fr_FR");
        let w = write(
            EventKind::CallNotesSubmitted,
            r#","notes":"  ","disposition":"Sale""#,
        );
        assert!(!w.fields.contains_key("Description"));
        assert_eq!(w.fields["CallDisposition"], "Sale");
    }

    #[test]
    fn any_order_gives_the_same_task() {
        let events = lifecycle;
        let in_order = apply(events());
        assert_eq!(in_order["TaskSubtype"], "Call");
        assert_eq!(in_order["Notes_At__c"], "1970-01-01T00:00:03.000Z");
        assert_eq!(in_order["Status"], "Completed");
        assert_eq!(in_order["CallDisposition"], "Callback");
        assert_eq!(in_order["Description"], "final");
        assert_eq!(in_order["CallDurationInSeconds"], 62);
        // Every permutation of the four: same fields, TaskSubtype included
        // (whichever event creates the Task creates it as a call).
        let orders = [
            [3, 2, 1, 0],
            [2, 3, 0, 1],
            [1, 2, 3, 0],
            [2, 0, 3, 1],
            [3, 0, 2, 1],
        ];
        for order in orders {
            let mut writes: Vec<Option<Write>> = events().into_iter().map(Some).collect();
            let got = apply(order.iter().map(|&i| writes[i].take().unwrap()).collect());
            assert_eq!(got, in_order, "{order:?}");
        }
        // A redelivery changes nothing.
        let mut again = events();
        again.push(write(
            EventKind::CallAccepted,
            r#","ivrExitPath":"billing""#,
        ));
        assert_eq!(apply(again), in_order);
    }

    #[test]
    fn the_latest_word_wins_whatever_is_retried_after_it() {
        let newer = write_at(EventKind::CallNotesSubmitted, r#","notes":"newer""#, 20);
        let older = write_at(EventKind::CallNotesSubmitted, r#","notes":"older""#, 10);
        let late_ended = write_at(EventKind::CallEnded, r#","notes":"at the end""#, 5);
        let task = apply(vec![newer, older, late_ended]);
        assert_eq!(task["Description"], "newer");
        assert_eq!(task["Notes_At__c"], "1970-01-01T00:00:20.000Z");
        // ended only fills: notes submitted during the call stay.
        let during = write_at(EventKind::CallNotesSubmitted, r#","notes":"during""#, 1);
        let ended = write_at(EventKind::CallEnded, r#","notes":"final""#, 2);
        assert_eq!(apply(vec![during, ended])["Description"], "during");
        // The org's own format of the stamp reads the same.
        assert_eq!(
            parse_at(&Value::String("1970-01-01T00:00:20.000+0000".into())),
            Some(20_000)
        );
    }

    #[test]
    fn values_the_org_would_refuse_are_cut_with_a_marker() {
        let notes = "n".repeat(40_000);
        let disposition = "d".repeat(300);
        let w = write(
            EventKind::CallEnded,
            &format!(r#","notes":"{notes}","disposition":"{disposition}","duration":1e12"#),
        );
        let description = w.fill["Description"].as_str().unwrap();
        assert_eq!(description.chars().count(), 32_000);
        assert!(description.ends_with(CUT_MARKER));
        assert_eq!(
            w.fill["CallDisposition"].as_str().unwrap().chars().count(),
            255
        );
        assert_eq!(w.fields["CallDurationInSeconds"], i32::MAX as u64);
        let cut: Vec<&str> = w.cut.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(cut.len(), 3, "{cut:?}");
        let w = write(
            EventKind::CallAccepted,
            &format!(r#","ivrExitPath":"{}""#, "é".repeat(300)),
        );
        assert_eq!(
            w.fields["Ivr_Exit__c"].as_str().unwrap().chars().count(),
            255
        );
    }

    #[test]
    fn every_call_event_creates_the_task_as_a_call() {
        for (kind, extra) in [
            (EventKind::CallAccepted, ""),
            (EventKind::CallEnded, ""),
            (EventKind::CallRejected, r#","reason":"active""#),
            (EventKind::CallNotesSubmitted, r#","notes":"n""#),
        ] {
            assert_eq!(
                write(kind, extra).create_only["TaskSubtype"],
                "Call",
                "{kind}"
            );
        }
    }
}
