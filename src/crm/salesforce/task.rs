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
//!   *fill* them where the Task has none yet;
//! - notes_submitted writes only over notes published no later: a retried
//!   older notes_submitted never overwrites the agent's later word. It stamps
//!   the Task (`notes_at_field`) with its `publishedAt`;
//! - both are decided against [`AgentFields`]: what the call memory
//!   (memory.rs) knows of the Task, else what a read of the Task shows;
//! - `TaskSubtype` cannot be updated in Salesforce, so every event that may
//!   create the Task sends it on a create-only path;
//! - values longer than the org accepts are cut with a marker, so the call
//!   is still logged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::config::SalesforceSettings;
use crate::contract::{CallType, Event, PhoneNumber, RecordingStatus, RejectReason};

/// What one event writes to the conversation's Task.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TaskWrite {
    /// Written by upsert, unconditionally.
    pub fields: Map<String, Value>,
    /// Written only where the Task has no value yet.
    pub fill: Map<String, Value>,
    /// Fields allowed only when the Task is created.
    pub create_only: Map<String, Value>,
    /// The other party's number, to look up for `WhoId`.
    pub lookup: Option<PhoneNumber>,
    /// When the event was published, if it writes the agent's word
    /// (notes_submitted).
    pub word_at: Option<OffsetDateTime>,
    /// The event's sequence in `SOFTPHONE_EVENTS`: orders words published
    /// in the same millisecond.
    pub sequence: u64,
    /// When the event was published (milliseconds since the epoch): the
    /// owner of the values it fills.
    pub at: i64,
    /// Values cut to what the org accepts: (field, original length).
    pub cut: Vec<(String, usize)>,
}

pub(crate) const DISPOSITION: &str = "CallDisposition";
pub(crate) const NOTES: &str = "Description";
/// Appended to a value cut to fit its field.
pub(crate) const CUT_MARKER: &str = "…[truncated]";
/// `CallDurationInSeconds` is an integer field.
const MAX_DURATION: f64 = i32::MAX as f64;

/// The Task write for a call event; `None` for events that are not about a call.
pub(crate) fn task_write(
    event: &Event,
    (published, sequence): (OffsetDateTime, u64),
    s: &SalesforceSettings,
) -> Option<TaskWrite> {
    let mut w = TaskWrite {
        at: millis(published),
        sequence,
        ..TaskWrite::default()
    };
    let conversation = event.conversation_id()?;
    w.set("CallObject", conversation.as_str());
    w.map(s, "partnerId", event.partner_id().map(|p| p.as_str()));
    let date = published.date().to_string();
    // Any call event may be the first the org sees (replicas race, or the
    // softphone never sent the opening one): each creates the Task as a call.
    w.create_only
        .insert("TaskSubtype".into(), Value::String("Call".into()));
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
            w.set_some(DISPOSITION, e.disposition.as_deref());
            w.set_some(NOTES, e.notes.as_deref());
            w.word_at = Some(published);
        }
        Event::Loaded(_) | Event::AgentStatusChanged(_) => return None,
    }
    w.fit(s);
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

/// `value` cut to `max` characters, the marker included.
pub(crate) fn cut(value: &str, max: usize) -> String {
    let marker = CUT_MARKER.chars().count();
    let keep = max.saturating_sub(marker);
    let mut out: String = value.chars().take(keep).collect();
    out.push_str(&CUT_MARKER.chars().take(max - keep).collect::<String>());
    out
}

/// What is known of a Task's agent fields (`CallDisposition`,
/// `Description`): from the call memory, or read from the org.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentFields {
    /// `publishedAt` (milliseconds) of the latest word written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_at: Option<i64>,
    /// Its sequence in `SOFTPHONE_EVENTS` (unknown when read from the org).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_seq: Option<u64>,
    /// The agent fields with a value: the `publishedAt` of the fill that
    /// wrote it, or none (a word wrote it, or the org holds it).
    #[serde(default)]
    pub set: BTreeMap<String, Option<i64>>,
    /// The latest word's values, as the memory keeps them (a read leaves
    /// them out): what an older word writes instead of its own.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub word: Map<String, Value>,
}

impl AgentFields {
    /// The agent fields of a Task as read from the org.
    pub fn of_record(record: &Map<String, Value>, notes_at: &str) -> Self {
        let word_at = (!notes_at.is_empty())
            .then(|| record.get(notes_at).and_then(parse_at))
            .flatten();
        let set = [DISPOSITION, NOTES]
            .into_iter()
            .filter(|field| match record.get(*field) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) => !s.trim().is_empty(),
                Some(_) => true,
            })
            .map(|field| (field.to_owned(), None))
            .collect();
        Self {
            word_at,
            word_seq: None,
            set,
            word: Map::new(),
        }
    }

    /// The latest word's place in the order of words: `publishedAt`, then
    /// the stream sequence (none when only the org's stamp is known, which
    /// a word of the same millisecond may then write over).
    pub fn word_order(&self) -> Option<(i64, u64)> {
        self.word_at.map(|at| (at, self.word_seq.unwrap_or(0)))
    }

    /// What these and `other` know together: the later word, every field
    /// set (a word's claim over a fill's).
    pub fn join(mut self, other: &AgentFields) -> Self {
        if other.word_order() > self.word_order() {
            self.word_at = other.word_at;
            self.word_seq = other.word_seq;
            self.word = other.word.clone();
        }
        for (field, owner) in &other.set {
            self.set
                .entry(field.clone())
                .and_modify(|mine| {
                    if owner.is_none() {
                        *mine = None;
                    }
                })
                .or_insert(*owner);
        }
        self
    }
}

impl AgentFields {
    /// The latest word's fields as the memory holds them, stamped; empty
    /// when it holds none.
    pub fn latest_word(&self, notes_at: &str) -> Map<String, Value> {
        let mut fields = self.word.clone();
        if let (false, false, Some(at)) = (fields.is_empty(), notes_at.is_empty(), self.word_at) {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                .expect("a stamp the memory wrote");
            fields.insert(notes_at.to_owned(), Value::String(format_at(at)));
        }
        fields
    }
}

fn millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Milliseconds since the epoch of a Salesforce DateTime
/// (`2026-11-24T18:11:35.123Z`, or `...+0000` as the org answers).
pub(crate) fn parse_at(value: &Value) -> Option<i64> {
    let text = value.as_str()?;
    let mut normal = text.to_owned();
    let bytes = text.as_bytes();
    if bytes.len() > 5
        && matches!(bytes[bytes.len() - 5], b'+' | b'-')
        && bytes[bytes.len() - 4..].iter().all(u8::is_ascii_digit)
    {
        normal.insert(text.len() - 2, ':');
    }
    OffsetDateTime::parse(&normal, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(millis)
}

/// A Salesforce DateTime to the millisecond, as [`parse_at`] reads it.
pub(crate) fn format_at(at: OffsetDateTime) -> String {
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(at);
    let t = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
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
    }

    /// Cuts every value longer than its field accepts, noting it in `cut`.
    fn fit(&mut self, s: &SalesforceSettings) {
        for map in [&mut self.fields, &mut self.fill] {
            for (field, value) in map.iter_mut() {
                let (Some(max), Value::String(text)) = (max_length(field, s), &*value) else {
                    continue;
                };
                let len = text.chars().count();
                if len > max {
                    self.cut.push((field.clone(), len));
                    *value = Value::String(cut(text, max));
                }
            }
        }
    }

    /// Whether this write fills values where the Task has none.
    pub fn fills(&self) -> bool {
        !self.fill.is_empty()
    }

    /// Whether this write depends on what the Task holds: the call memory,
    /// else a read of the Task, must tell.
    pub fn needs_read(&self, notes_at: &str) -> bool {
        self.fills() || (!notes_at.is_empty() && self.word_at.is_some())
    }

    /// Decides the agent's word and the fill against what is known of the
    /// Task (`agent`), and records there what this write does: a word
    /// stamped later stays (and is written again in place of an older one,
    /// when the memory holds it), a fill goes only where the Task has no
    /// value (or where this same event filled it: its retry); a word written
    /// is stamped with its event's time.
    pub fn resolve(&mut self, agent: &mut AgentFields, notes_at: &str) {
        if let Some(word_at) = self.word_at {
            let at = millis(word_at);
            if agent.word_order() > Some((at, self.sequence)) {
                self.fields.remove(DISPOSITION);
                self.fields.remove(NOTES);
                self.fields.extend(agent.latest_word(notes_at));
            } else {
                let word: Map<String, Value> = [DISPOSITION, NOTES]
                    .into_iter()
                    .filter_map(|f| Some((f.to_owned(), self.fields.get(f)?.clone())))
                    .collect();
                if !word.is_empty() {
                    agent.word_at = Some(at);
                    agent.word_seq = Some(self.sequence);
                    for field in word.keys() {
                        agent.set.insert(field.clone(), None);
                    }
                    agent.word = word;
                    if !notes_at.is_empty() {
                        self.fields
                            .insert(notes_at.to_owned(), Value::String(format_at(word_at)));
                    }
                }
            }
        }
        for (field, value) in std::mem::take(&mut self.fill) {
            let free = agent
                .set
                .get(&field)
                .is_none_or(|owner| *owner == Some(self.at));
            if free && !self.fields.contains_key(&field) {
                agent.set.insert(field.clone(), Some(self.at));
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

    /// The event's write, published in the usual order of a call's events.
    fn write(kind: EventKind, extra: &str) -> TaskWrite {
        let second = match kind {
            EventKind::CallIncoming | EventKind::CallOutboundInitiated => 0,
            EventKind::CallAccepted => 1,
            EventKind::CallEnded | EventKind::CallRejected => 2,
            _ => 3,
        };
        write_at(kind, extra, second)
    }

    fn write_at(kind: EventKind, extra: &str, second: i64) -> TaskWrite {
        let body = format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{CONV}"{extra}}}"#);
        let event = Event::decode(kind, body.as_bytes()).unwrap();
        let published = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(second);
        task_write(&event, (published, second as u64), &settings()).unwrap()
    }

    /// Applies writes in order as Salesforce would (fill after a read).
    fn apply(writes: Vec<TaskWrite>) -> Map<String, Value> {
        let mut task = Map::new();
        for mut w in writes {
            w.resolve(
                &mut AgentFields::of_record(&task, "Notes_At__c"),
                "Notes_At__c",
            );
            if task.is_empty() {
                task.extend(w.create_only);
            }
            task.extend(w.fields);
        }
        task
    }

    /// The writes of a call's four events, in the order they were published.
    fn lifecycle() -> Vec<TaskWrite> {
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
    fn apply_remembered(writes: Vec<TaskWrite>) -> (Map<String, Value>, AgentFields) {
        let mut task = Map::new();
        let mut agent = AgentFields::default();
        for mut w in writes {
            w.resolve(&mut agent, "Notes_At__c");
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
        retry.resolve(&mut claimed.clone(), "Notes_At__c");
        assert_eq!(retry.fields["Description"], "at the end");
        let mut other = write_at(EventKind::CallEnded, r#","notes":"other""#, 4);
        other.resolve(&mut claimed.clone(), "Notes_At__c");
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
            let mut writes: Vec<Option<TaskWrite>> = events().into_iter().map(Some).collect();
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
