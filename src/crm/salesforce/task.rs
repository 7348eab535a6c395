//! Call activity as a Task: which fields each event writes.
//!
//! Salesforce cannot read-then-write atomically, and events of one call arrive
//! in any order and more than once, so the writes are designed to commute:
//! - every field has owners, and owners that can both write it write the same
//!   value (`CallType`, `Subject`, `CallObject`, `Type`), except where noted;
//! - `Status` is only written by the terminal events (ended, rejected), so a
//!   late `accepted` can never reopen a completed Task; on create the org's
//!   default status applies;
//! - empty or absent values are never sent, so they never clear a field;
//! - `CallDisposition` and `Description` are the agent's words: notes_submitted
//!   (the later, authoritative word) writes them, while ended and rejected only
//!   *fill* them where the Task has none yet (one read before the write);
//! - `TaskSubtype` cannot be updated in Salesforce, so only the opening events
//!   (incoming, outbound_initiated) send it, on a create-only path.

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::config::SalesforceSettings;
use crate::contract::{CallType, Event, PhoneNumber, RecordingStatus, RejectReason};

/// What one event writes to the conversation's Task.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct TaskWrite {
    /// Written by upsert, unconditionally.
    pub fields: Map<String, Value>,
    /// Written only where the Task has no value yet.
    pub fill: Map<String, Value>,
    /// Fields allowed only when the Task is created.
    pub create_only: Map<String, Value>,
    /// The other party's number, to look up for `WhoId`.
    pub lookup: Option<PhoneNumber>,
}

const DISPOSITION: &str = "CallDisposition";
const NOTES: &str = "Description";

/// The Task write for a call event; `None` for events that are not about a call.
pub(crate) fn task_write(
    event: &Event,
    published: OffsetDateTime,
    s: &SalesforceSettings,
) -> Option<TaskWrite> {
    let mut w = TaskWrite::default();
    let conversation = event.conversation_id()?;
    w.set("CallObject", conversation.as_str());
    w.map(s, "partnerId", event.partner_id().map(|p| p.as_str()));
    let date = published.date().to_string();
    match event {
        Event::CallIncoming(e) => {
            w.open(CallType::Inbound, &date);
            w.map(s, "language", Some(&e.language));
            w.map(
                s,
                "callerANI",
                e.caller_ani.as_ref().map(PhoneNumber::as_str),
            );
            w.lookup = e.caller_ani.clone();
        }
        Event::CallAccepted(e) => {
            w.direction(CallType::Inbound);
            w.set("ActivityDate", &date);
            w.map(s, "language", Some(&e.language));
            w.map(
                s,
                "callerANI",
                e.caller_ani.as_ref().map(PhoneNumber::as_str),
            );
            w.map(s, "ivrExitPath", e.ivr_exit_path.as_deref());
            w.map(s, "channelName", e.channel_name.as_deref());
            w.map(
                s,
                "reservationStartDate",
                e.reservation_start_date.as_deref(),
            );
            w.map(s, "specialEvent", e.special_event.as_deref());
            w.map(s, "escalationType", e.escalation_type.as_deref());
            let recording = e.recording_status.map(|r| match r {
                RecordingStatus::On => "ON",
                RecordingStatus::Off => "OFF",
            });
            w.map(s, "recordingStatus", recording);
            w.lookup = e.caller_ani.clone();
        }
        Event::CallOutboundInitiated(e) => {
            w.open(CallType::Outbound, &date);
            w.map(s, "dialledTo", Some(e.dialled_to.as_str()));
            w.lookup = Some(e.dialled_to.clone());
        }
        Event::CallRejected(e) => {
            w.direction(CallType::Inbound);
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
                w.direction(call_type);
            }
            w.set("Type", "Call");
            w.set("Status", &s.completed_status);
            if let Some(seconds) = e.duration {
                w.fields.insert(
                    "CallDurationInSeconds".into(),
                    (seconds.round() as u64).into(),
                );
            }
            w.fill(DISPOSITION, e.disposition.as_deref());
            w.fill(NOTES, e.notes.as_deref());
        }
        Event::CallNotesSubmitted(e) => {
            w.set_some(DISPOSITION, e.disposition.as_deref());
            w.set_some(NOTES, e.notes.as_deref());
        }
        Event::Loaded(_) | Event::AgentStatusChanged(_) => return None,
    }
    Some(w)
}

impl TaskWrite {
    fn set(&mut self, field: &str, value: &str) {
        self.fields
            .insert(field.to_owned(), Value::String(value.to_owned()));
    }

    fn set_some(&mut self, field: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            self.set(field, v);
        }
    }

    fn fill(&mut self, field: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            self.fill
                .insert(field.to_owned(), Value::String(v.to_owned()));
        }
    }

    /// A contract field, under the Task field the settings map it to (if any).
    fn map(&mut self, s: &SalesforceSettings, contract_field: &str, value: Option<&str>) {
        if let Some(task_field) = s.task_fields.get(contract_field) {
            self.set_some(task_field, value);
        }
    }

    fn direction(&mut self, call_type: CallType) {
        let (call_type, subject) = match call_type {
            CallType::Inbound => ("Inbound", "Inbound call"),
            CallType::Outbound => ("Outbound", "Outbound call"),
        };
        self.set("Type", "Call");
        self.set("CallType", call_type);
        self.set("Subject", subject);
    }

    fn open(&mut self, call_type: CallType, date: &str) {
        self.direction(call_type);
        self.set("ActivityDate", date);
        self.create_only
            .insert("TaskSubtype".into(), Value::String("Call".into()));
    }

    /// Keeps the fill values the Task (as read) has no value for, as plain fields.
    pub fn resolve_fill(&mut self, current: &Map<String, Value>) {
        for (field, value) in std::mem::take(&mut self.fill) {
            let empty = match current.get(&field) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                Some(_) => false,
            };
            if empty {
                self.fields.insert(field, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::EventKind;

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

    fn write(kind: EventKind, extra: &str) -> TaskWrite {
        let body = format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{CONV}"{extra}}}"#);
        let event = Event::decode(kind, body.as_bytes()).unwrap();
        task_write(&event, OffsetDateTime::UNIX_EPOCH, &settings()).unwrap()
    }

    /// Applies writes in order as Salesforce would (fill after a read).
    fn apply(writes: Vec<TaskWrite>) -> Map<String, Value> {
        let mut task = Map::new();
        for mut w in writes {
            w.resolve_fill(&task);
            if task.is_empty() {
                task.extend(w.create_only);
            }
            task.extend(w.fields);
        }
        task
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
        let events = || {
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
        };
        let in_order = apply(events());
        assert_eq!(in_order["Status"], "Completed");
        assert_eq!(in_order["CallDisposition"], "Callback");
        assert_eq!(in_order["Description"], "final");
        assert_eq!(in_order["CallDurationInSeconds"], 62);
        // Every permutation of the four: same fields (TaskSubtype aside, which
        // only a creating incoming can set).
        let orders = [
            [3, 2, 1, 0],
            [2, 3, 0, 1],
            [1, 2, 3, 0],
            [2, 0, 3, 1],
            [3, 0, 2, 1],
        ];
        for order in orders {
            let mut writes: Vec<Option<TaskWrite>> = events().into_iter().map(Some).collect();
            let got = apply(order.iter().map(|&i| writes[i].take().unwrap()).collect());
            let strip = |mut m: Map<String, Value>| {
                m.remove("TaskSubtype");
                m
            };
            assert_eq!(strip(got), strip(in_order.clone()), "{order:?}");
        }
        // A redelivery changes nothing.
        let mut again = events();
        again.push(write(
            EventKind::CallAccepted,
            r#","ivrExitPath":"billing""#,
        ));
        assert_eq!(apply(again), in_order);
    }
}
