//! Softphone -> bridge events: one payload type per contract method, decoded
//! and validated from the verbatim JSON body.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::value::{Guid, PhoneNumber, SoftphoneId};

/// Which contract event a subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Loaded,
    CallIncoming,
    CallAccepted,
    CallRejected,
    CallEnded,
    CallNotesSubmitted,
    CallOutboundInitiated,
    AgentStatusChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Loaded,
        EventKind::CallIncoming,
        EventKind::CallAccepted,
        EventKind::CallRejected,
        EventKind::CallEnded,
        EventKind::CallNotesSubmitted,
        EventKind::CallOutboundInitiated,
        EventKind::AgentStatusChanged,
    ];

    /// The subject without its `softphone.` root, e.g. `call.accepted`.
    pub fn name(self) -> &'static str {
        self.subject().split_once('.').map_or("", |(_, rest)| rest)
    }

    /// The NATS subject the softphone publishes this event on.
    pub fn subject(self) -> &'static str {
        match self {
            EventKind::Loaded => "softphone.loaded",
            EventKind::CallIncoming => "softphone.call.incoming",
            EventKind::CallAccepted => "softphone.call.accepted",
            EventKind::CallRejected => "softphone.call.rejected",
            EventKind::CallEnded => "softphone.call.ended",
            EventKind::CallNotesSubmitted => "softphone.call.notes_submitted",
            EventKind::CallOutboundInitiated => "softphone.call.outbound_initiated",
            EventKind::AgentStatusChanged => "softphone.agent.status_changed",
        }
    }

    /// The contract's own name for the event (its method name).
    pub fn contract_name(self) -> &'static str {
        match self {
            EventKind::Loaded => "load",
            EventKind::CallIncoming => "incomingCall",
            EventKind::CallAccepted => "callAccepted",
            EventKind::CallRejected => "callRejected",
            EventKind::CallEnded => "callEnded",
            EventKind::CallNotesSubmitted => "callNotesSubmitted",
            EventKind::CallOutboundInitiated => "outboundCallInitiated",
            EventKind::AgentStatusChanged => "statusChanged",
        }
    }

    pub(crate) fn from_subject(subject: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.subject() == subject)
    }

    /// Accepts the subject, the subject without `softphone.`, or the contract's name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.subject() == name || k.name() == name || k.contract_name() == name)
    }

    /// The eight subjects softphones publish events on.
    pub fn subjects() -> Vec<String> {
        Self::ALL.iter().map(|k| k.subject().to_owned()).collect()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an event body was refused. Never retried: it goes to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("contract violation at `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no contract event is published on subject {0:?}")]
    UnknownSubject(String),
}

pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ContractError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ContractError::Json(inner.to_string())
        } else if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            // The shape was wrong before the text turned out not to be JSON at all.
            ContractError::Json(syntax.to_string())
        } else {
            ContractError::Invalid {
                field: path,
                reason: strip_position(&inner.to_string()),
            }
        }
    })?;
    de.end()
        .map_err(|err| ContractError::Json(err.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn default_language() -> String {
    "en_US".to_owned()
}

/// A phone number field where absent or `""` means "withheld".
mod optional_number {
    use serde::{Deserialize, Deserializer};

    use super::PhoneNumber;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PhoneNumber>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => PhoneNumber::try_from(s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `load`: a softphone instance started and wants its callbacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Loaded {
    pub softphone_id: SoftphoneId,
    #[serde(default)]
    pub partner_id: Option<Guid>,
}

/// `incomingCall`: a call is ringing at the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallIncoming {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    #[serde(
        default,
        rename = "callerANI",
        deserialize_with = "optional_number::deserialize"
    )]
    pub caller_ani: Option<PhoneNumber>,
    #[serde(default = "default_language")]
    pub language: String,
}

/// `recordingStatus` of `callAccepted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordingStatus {
    On,
    Off,
}

/// `callAccepted`: the agent picked the call up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAccepted {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    #[serde(
        default,
        rename = "callerANI",
        deserialize_with = "optional_number::deserialize"
    )]
    pub caller_ani: Option<PhoneNumber>,
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default)]
    pub ivr_exit_path: Option<String>,
    #[serde(default)]
    pub channel_name: Option<String>,
    #[serde(default)]
    pub reservation_start_date: Option<String>,
    #[serde(default)]
    pub special_event: Option<String>,
    #[serde(default)]
    pub escalation_type: Option<String>,
    #[serde(default)]
    pub recording_status: Option<RecordingStatus>,
}

/// `reason` of `callRejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectReason {
    Active,
    Passive,
}

/// `callRejected`: the agent declined the call, or let it ring out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRejected {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    pub reason: RejectReason,
}

/// `callType` of `callEnded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Inbound,
    Outbound,
}

/// `callEnded`: the call is over (the contract's description of it is a
/// copy of callRejected's; see subjects.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallEnded {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub duration: Option<f64>,
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub call_type: Option<CallType>,
}

mod duration {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(secs) if !(secs.is_finite() && secs >= 0.0) => Err(serde::de::Error::custom(
                format!("duration must be a non-negative number of seconds, got {secs}"),
            )),
            other => Ok(other),
        }
    }
}

/// `callNotesSubmitted`: disposition and notes, possibly after the call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallNotesSubmitted {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// `outboundCallInitiated`: the agent dialled out from the dialpad.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundCallInitiated {
    pub partner_id: Guid,
    pub conversation_id: Guid,
    /// The number dialled (the contract's "Disposition code" purpose is a slip).
    pub dialled_to: PhoneNumber,
}

/// `statusChanged`: the agent picked another presence status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusChanged {
    /// The GUID of the presence *status* (the contract's name for it).
    pub softphone_id: Guid,
    /// The softphone instance whose agent changed status, when the publisher says so.
    #[serde(default)]
    pub instance_id: Option<SoftphoneId>,
    #[serde(default)]
    pub partner_id: Option<Guid>,
}

/// A decoded, validated contract event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Loaded(Loaded),
    CallIncoming(CallIncoming),
    CallAccepted(CallAccepted),
    CallRejected(CallRejected),
    CallEnded(CallEnded),
    CallNotesSubmitted(CallNotesSubmitted),
    CallOutboundInitiated(OutboundCallInitiated),
    AgentStatusChanged(AgentStatusChanged),
}

impl Event {
    /// Decodes and validates `body` as the payload of `kind`.
    pub fn decode(kind: EventKind, body: &[u8]) -> Result<Event, ContractError> {
        Ok(match kind {
            EventKind::Loaded => Event::Loaded(decode(body)?),
            EventKind::CallIncoming => Event::CallIncoming(decode(body)?),
            EventKind::CallAccepted => Event::CallAccepted(decode(body)?),
            EventKind::CallRejected => Event::CallRejected(decode(body)?),
            EventKind::CallEnded => Event::CallEnded(decode(body)?),
            EventKind::CallNotesSubmitted => Event::CallNotesSubmitted(decode(body)?),
            EventKind::CallOutboundInitiated => Event::CallOutboundInitiated(decode(body)?),
            EventKind::AgentStatusChanged => Event::AgentStatusChanged(decode(body)?),
        })
    }

    #[cfg(test)]
    /// Decodes the body of a message published on `subject`.
    pub(crate) fn decode_subject(subject: &str, body: &[u8]) -> Result<Event, ContractError> {
        let kind = EventKind::from_subject(subject)
            .ok_or_else(|| ContractError::UnknownSubject(subject.to_owned()))?;
        Self::decode(kind, body)
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Loaded(_) => EventKind::Loaded,
            Event::CallIncoming(_) => EventKind::CallIncoming,
            Event::CallAccepted(_) => EventKind::CallAccepted,
            Event::CallRejected(_) => EventKind::CallRejected,
            Event::CallEnded(_) => EventKind::CallEnded,
            Event::CallNotesSubmitted(_) => EventKind::CallNotesSubmitted,
            Event::CallOutboundInitiated(_) => EventKind::CallOutboundInitiated,
            Event::AgentStatusChanged(_) => EventKind::AgentStatusChanged,
        }
    }

    /// The partner the event belongs to, when it names one.
    pub fn partner_id(&self) -> Option<&Guid> {
        match self {
            Event::Loaded(e) => e.partner_id.as_ref(),
            Event::CallIncoming(e) => Some(&e.partner_id),
            Event::CallAccepted(e) => Some(&e.partner_id),
            Event::CallRejected(e) => Some(&e.partner_id),
            Event::CallEnded(e) => Some(&e.partner_id),
            Event::CallNotesSubmitted(e) => Some(&e.partner_id),
            Event::CallOutboundInitiated(e) => Some(&e.partner_id),
            Event::AgentStatusChanged(e) => e.partner_id.as_ref(),
        }
    }

    /// The conversation (call) the event belongs to, for call events.
    pub(crate) fn conversation_id(&self) -> Option<&Guid> {
        match self {
            Event::CallIncoming(e) => Some(&e.conversation_id),
            Event::CallAccepted(e) => Some(&e.conversation_id),
            Event::CallRejected(e) => Some(&e.conversation_id),
            Event::CallEnded(e) => Some(&e.conversation_id),
            Event::CallNotesSubmitted(e) => Some(&e.conversation_id),
            Event::CallOutboundInitiated(e) => Some(&e.conversation_id),
            Event::Loaded(_) | Event::AgentStatusChanged(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const CONV: &str = "57053e21-0440-4689-a27a-513d7dceebde";

    fn call(extra: &str) -> Vec<u8> {
        format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{CONV}"{extra}}}"#).into_bytes()
    }

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_subject(kind.subject()), Some(kind));
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
            assert_eq!(EventKind::parse(kind.contract_name()), Some(kind));
        }
        assert_eq!(EventKind::CallNotesSubmitted.name(), "call.notes_submitted");
    }

    #[test]
    fn accepted_keeps_defaults_and_ignores_unknown_fields() {
        let body = call(r#","callerANI":"+18883973342","recordingStatus":"ON","x-extra":1"#);
        let Event::CallAccepted(e) = Event::decode(EventKind::CallAccepted, &body).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(e.language, "en_US");
        assert_eq!(e.recording_status, Some(RecordingStatus::On));
        assert_eq!(e.caller_ani.unwrap().as_str(), "+18883973342");
    }

    #[test]
    fn empty_caller_ani_means_withheld() {
        let body = call(r#","callerANI":"""#);
        let Event::CallIncoming(e) = Event::decode(EventKind::CallIncoming, &body).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(e.caller_ani, None);
    }

    fn violation(kind: EventKind, body: &[u8]) -> (String, String) {
        match Event::decode(kind, body).unwrap_err() {
            ContractError::Invalid { field, reason } => (field, reason),
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn violations_name_the_field() {
        let cases: Vec<(EventKind, Vec<u8>, &str)> = vec![
            (
                EventKind::CallRejected,
                call(r#","reason":"maybe""#),
                "reason",
            ),
            (
                EventKind::CallEnded,
                call(r#","callType":"sideways""#),
                "callType",
            ),
            (EventKind::CallEnded, call(r#","duration":-1"#), "duration"),
            (
                EventKind::CallEnded,
                call(r#","duration":"12""#),
                "duration",
            ),
            (
                EventKind::CallAccepted,
                call(r#","recordingStatus":"on""#),
                "recordingStatus",
            ),
            (
                EventKind::CallAccepted,
                call(r#","callerANI":"555-1234""#),
                "callerANI",
            ),
            (
                EventKind::CallOutboundInitiated,
                call(r#","dialledTo":"12""#),
                "dialledTo",
            ),
            (
                EventKind::CallIncoming,
                format!(r#"{{"partnerId":"{PARTNER}","conversationId":"nope"}}"#).into_bytes(),
                "conversationId",
            ),
            (
                EventKind::Loaded,
                br#"{"softphoneId":"a.b"}"#.to_vec(),
                "softphoneId",
            ),
        ];
        for (kind, body, field) in cases {
            let (got, reason) = violation(kind, &body);
            assert_eq!(got, field, "{kind}: {reason}");
            assert!(!reason.contains(" at line "), "{reason}");
        }
    }

    #[test]
    fn missing_ids_are_reported() {
        let err = Event::decode(
            EventKind::CallEnded,
            br#"{"partnerId":"215fd887-39be-4935-981f-2670d6afeaa7"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("conversationId"), "{err}");
    }

    #[test]
    fn malformed_json_is_not_a_violation() {
        for body in [&b"{"[..], b"not json", b"{} {}", b""] {
            assert!(matches!(
                Event::decode(EventKind::CallEnded, body),
                Err(ContractError::Json(_))
            ));
        }
    }

    #[test]
    fn status_changed_carries_a_status_guid() {
        let e = Event::decode(
            EventKind::AgentStatusChanged,
            br#"{"softphoneId":"d6afeaa7-39be-4935-981f-2670215fd887","instanceId":"agent-7"}"#,
        )
        .unwrap();
        assert_eq!(e.conversation_id(), None);
        assert!(
            Event::decode(
                EventKind::AgentStatusChanged,
                br#"{"softphoneId":"agent-7"}"#
            )
            .is_err()
        );
    }
}
