//! The agent's last word, for every CRM that keeps a call as one record:
//! which values an event writes, and how its disposition and notes are
//! decided against what is known of the record.
//!
//! Events of a call may come again (a redelivery, an operator's replay), so
//! the writes are designed to commute:
//! - empty or absent values are never sent, so they never clear a field;
//! - the disposition and notes are the agent's words: notes_submitted (the
//!   later, authoritative word) writes them, while ended and rejected only
//!   *fill* them where the record has none yet;
//! - notes_submitted writes only over notes published no later: a retried
//!   older notes_submitted never overwrites the agent's later word; it
//!   stamps the record (`notes_at`) with its `publishedAt`;
//! - both are decided against [`AgentFields`]: what the call memory
//!   (memory.rs) knows of the record, else what a read of it shows;
//! - values longer than the CRM accepts are cut with a marker
//!   ([`Write::fit`]), so the call is still logged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::contract::PhoneNumber;

/// The CRM's names of the agent's fields: the disposition, the notes, and
/// the stamp of the word they hold (empty: none).
#[derive(Debug, Clone)]
pub(crate) struct Words {
    pub disposition: String,
    pub notes: String,
    pub notes_at: String,
}

impl Words {
    /// The disposition and the notes (a CRM without a disposition column
    /// has only the notes).
    pub(crate) fn fields(&self) -> impl Iterator<Item = &str> {
        [self.disposition.as_str(), self.notes.as_str()]
            .into_iter()
            .filter(|name| !name.is_empty())
    }
}

/// What one event writes to its call's record.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Write {
    /// Written by upsert, unconditionally.
    pub fields: Map<String, Value>,
    /// Written only where the record has no value yet.
    pub fill: Map<String, Value>,
    /// Fields allowed only when the record is created.
    pub create_only: Map<String, Value>,
    /// The other party's number, to look up.
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
    /// Values cut to what the CRM accepts: (field, original length).
    pub cut: Vec<(String, usize)>,
}

impl Write {
    /// An event's write, published at `published` with `sequence`.
    pub(crate) fn new(published: OffsetDateTime, sequence: u64) -> Self {
        Self {
            at: millis(published),
            sequence,
            ..Self::default()
        }
    }

    /// The agent's word (notes_submitted): `disposition` and `notes`.
    pub(crate) fn word(
        &mut self,
        words: &Words,
        published: OffsetDateTime,
        disposition: Option<&str>,
        notes: Option<&str>,
    ) {
        if !words.disposition.is_empty() {
            self.set_some(&words.disposition, disposition);
        }
        self.set_some(&words.notes, notes);
        self.word_at = Some(published);
    }

    /// Cuts every value longer than `max_length` says its field accepts,
    /// noting it in `cut`.
    pub(crate) fn fit(&mut self, max_length: impl Fn(&str) -> Option<usize>) {
        for map in [&mut self.fields, &mut self.fill] {
            for (field, value) in map.iter_mut() {
                let (Some(max), Value::String(text)) = (max_length(field), &*value) else {
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
    pub(crate) fn set(&mut self, field: &str, value: &str) {
        self.fields
            .insert(field.to_owned(), Value::String(value.to_owned()));
    }

    pub(crate) fn set_some(&mut self, field: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            self.set(field, v);
        }
    }

    pub(crate) fn fill(&mut self, field: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            self.fill
                .insert(field.to_owned(), Value::String(v.to_owned()));
        }
    }

    /// Whether this write fills values where the record has none.
    pub(crate) fn fills(&self) -> bool {
        !self.fill.is_empty()
    }

    /// Whether this write depends on what the record holds: the call
    /// memory, else a read of the record, must tell.
    pub(crate) fn needs_read(&self, words: &Words) -> bool {
        self.fills() || (!words.notes_at.is_empty() && self.word_at.is_some())
    }

    /// Decides the agent's word and the fill against what is known of the
    /// record (`agent`), and records there what this write does: a word
    /// stamped later stays (and is written again in place of an older one,
    /// when the memory holds it), a fill goes only where the record has no
    /// value (or where this same event filled it: its retry); a word written
    /// is stamped with its event's time.
    pub(crate) fn resolve(&mut self, agent: &mut AgentFields, words: &Words) {
        let notes_at = words.notes_at.as_str();
        if let Some(word_at) = self.word_at {
            let at = millis(word_at);
            if agent.word_order() > Some((at, self.sequence)) {
                for field in words.fields() {
                    self.fields.remove(field);
                }
                self.fields.extend(agent.latest_word(words));
            } else {
                let word: Map<String, Value> = words
                    .fields()
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

/// Appended to a value cut to fit its field.
pub(crate) const CUT_MARKER: &str = "…[truncated]";

/// `value` cut to `max` characters, the marker included.
fn cut(value: &str, max: usize) -> String {
    let marker = CUT_MARKER.chars().count();
    let keep = max.saturating_sub(marker);
    let mut out: String = value.chars().take(keep).collect();
    out.push_str(&CUT_MARKER.chars().take(max - keep).collect::<String>());
    out
}

/// What is known of a call record's agent fields (its disposition and
/// notes): from the call memory, or read from the CRM.
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
    /// The agent fields of a record as read from the CRM.
    pub(crate) fn of_record(record: &Map<String, Value>, words: &Words) -> Self {
        let notes_at = words.notes_at.as_str();
        let word_at = (!notes_at.is_empty())
            .then(|| record.get(notes_at).and_then(parse_at))
            .flatten();
        let set = words
            .fields()
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
    pub(crate) fn word_order(&self) -> Option<(i64, u64)> {
        self.word_at.map(|at| (at, self.word_seq.unwrap_or(0)))
    }

    /// What these and `other` know together: the later word, every field
    /// set (a word's claim over a fill's).
    pub(crate) fn join(mut self, other: &AgentFields) -> Self {
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
    pub(crate) fn latest_word(&self, words: &Words) -> Map<String, Value> {
        let notes_at = words.notes_at.as_str();
        let mut fields = self.word.clone();
        if let (false, false, Some(at)) = (fields.is_empty(), notes_at.is_empty(), self.word_at) {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                .expect("a stamp the memory wrote");
            fields.insert(notes_at.to_owned(), Value::String(format_at(at)));
        }
        fields
    }
}

pub(crate) fn millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Milliseconds since the epoch of a CRM's DateTime (`2026-11-24T18:11:35.123Z`,
/// `...+00:00`, or `...+0000` as Salesforce answers).
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

/// A DateTime to the millisecond, in UTC, as [`parse_at`] reads it.
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
