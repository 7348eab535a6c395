//! The softphone contract: subject names, event payloads, callbacks and their
//! validation. This module mirrors subjects.md; nothing else spells a subject.

mod callback;
mod event;
mod partition;
pub mod tenant;
mod value;

pub use callback::{Callback, ParticipantType, PartnerConfig, StartCall, UpdatePresence};
pub use event::{
    AgentStatusChanged, CallAccepted, CallEnded, CallIncoming, CallNotesSubmitted, CallRejected,
    CallType, ContractError, Event, EventKind, Loaded, OutboundCallInitiated, RecordingStatus,
    RejectReason,
};
pub use partition::{fnv1a64, order_key, partition_of, softphone_key};
pub use value::{Guid, InvalidValue, PhoneNumber, SoftphoneId};

/// The stream that captures every softphone event.
pub const EVENTS_STREAM: &str = "SOFTPHONE_EVENTS";
/// The stream of routed events: the intake copies each valid event to the
/// lane of the CRM connection it belongs to (and `loaded`/`status_changed`
/// to the softphone lane), once.
pub const LANES_STREAM: &str = "SOFTPHONE_LANES";
/// Subjects of `SOFTPHONE_LANES`.
pub const LANE_SUBJECTS: &str = "softphone.lane.>";
/// The stream that holds callbacks on their way to softphones.
pub const COMMANDS_STREAM: &str = "SOFTPHONE_COMMANDS";
/// The stream that keeps events the bridge could not handle, with the reason.
pub const DLQ_STREAM: &str = "SOFTPHONE_DLQ";

/// Every subject starts with this token.
pub(crate) const SUBJECT_ROOT: &str = "softphone";
/// Subjects of `SOFTPHONE_COMMANDS`.
pub const COMMAND_SUBJECTS: &str = "softphone.cmd.>";
/// Subjects of `SOFTPHONE_DLQ`.
pub const DLQ_SUBJECTS: &str = "softphone.dlq.>";
/// Core NATS request subject for a synchronous `load` (served by a queue group,
/// captured by no stream).
pub const LOAD_REQUEST_SUBJECT: &str = "softphone.load";
/// Core NATS request subject of the command service (a NATS micro service
/// endpoint; the HTTP command route's twin).
pub const API_COMMAND_SUBJECT: &str = "softphone.api.command";
/// Core NATS subjects of softphone heartbeats, `softphone.heartbeat.<softphoneId>`
/// (body ignored; captured by no stream): each refreshes the softphone's last
/// sign of life, which decides whether commands reach it.
pub(crate) const HEARTBEAT_SUBJECTS: &str = "softphone.heartbeat.*";
/// What the reply subject of a request to the service must start with: a
/// requester's inbox (`_INBOX.<id>` by default, `_INBOX_<user>.<id>` with a
/// per-user prefix, see deploy/nats-permissions.md). The service answers
/// nowhere else, so no requester can make it publish, with its own rights,
/// onto a stream's subject or the JetStream API.
pub(crate) const INBOX_PREFIX: &str = "_INBOX";
/// Where `softphone-bridge dlq replay` publishes a dead letter again,
/// `softphone.replay.<event>` (e.g. `softphone.replay.call.ended`): captured
/// by `SOFTPHONE_EVENTS` beside the event subjects, and publishable only by
/// the bridge's own user (deploy/nats-permissions.conf). Only a message on
/// one of these subjects may carry [`replay_header`]s: on any other subject
/// the intake ignores them, so no publisher chooses the id a CRM sees.
pub const REPLAY_SUBJECTS: &str = "softphone.replay.>";
/// The longest event id (a publisher's `Nats-Msg-Id`), in bytes: the id
/// travels in the lane copy's headers, the dead letter's and a CRM's
/// `Idempotency-Key`, each of which must stay far below NATS's 64 KiB
/// header limit.
pub const MAX_EVENT_ID: usize = 256;
/// Queue group every replica joins for [`LOAD_REQUEST_SUBJECT`] and [`API_COMMAND_SUBJECT`].
pub const LOAD_QUEUE_GROUP: &str = "softphone-bridge";

/// Headers the dead-letter queue adds to the original body.
pub mod dlq_header {
    /// Why the event was dead-lettered, one line.
    pub const REASON: &str = "Softphone-Dlq-Reason";
    /// The CRM's or decoder's own error text, when there is one (truncated).
    pub const DETAIL: &str = "Softphone-Dlq-Detail";
    /// The subject the event was published on.
    pub const SUBJECT: &str = "Softphone-Original-Subject";
    /// The event's sequence in `SOFTPHONE_EVENTS`.
    pub const SEQUENCE: &str = "Softphone-Stream-Sequence";
    /// How many times the event had been delivered.
    pub const DELIVERIES: &str = "Softphone-Delivery-Count";
    /// The event id (see subjects.md).
    pub const EVENT_ID: &str = "Softphone-Event-Id";
    /// When `SOFTPHONE_EVENTS` stored the event (RFC 3339), when known.
    pub const PUBLISHED: &str = "Softphone-Published-At";
    /// Present when the dead letter is stored without the event's body
    /// (NATS refused the copy for its size): why. The body stays in
    /// `SOFTPHONE_EVENTS` at `SEQUENCE` while the stream keeps it.
    pub const BODY_OMITTED: &str = "Softphone-Dlq-Body-Omitted";
}

/// Headers `softphone-bridge dlq replay` puts on a replayed event, so that it
/// keeps its identity: the pipeline takes the event id and the publish time
/// from them instead of the new message's.
pub mod replay_header {
    /// The event id the event had when it was dead-lettered.
    pub const EVENT_ID: &str = "Softphone-Original-Event-Id";
    /// When `SOFTPHONE_EVENTS` first stored the event (RFC 3339).
    pub const PUBLISHED: &str = "Softphone-Original-Published-At";
}

/// Headers the intake puts on a routed event, so that every lane sees the
/// event as it was first stored in `SOFTPHONE_EVENTS`.
pub mod lane_header {
    /// `PUBLISHED`: when `SOFTPHONE_EVENTS` stored the event (RFC 3339).
    pub use super::dlq_header::{EVENT_ID, PUBLISHED, SEQUENCE, SUBJECT};
    /// The CRM connection the event was routed to (decided once, by the
    /// intake; `replay`'s chosen connection): what the softphone lane asks
    /// for a `loaded`'s dispositions.
    pub const CONNECTION: &str = "Softphone-Connection";
}

/// The lane an event is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneTarget<'a> {
    /// The CRM connection named in the configuration (`crm` or a `[crms.<name>]`).
    Crm(&'a str),
    /// The softphone lane: registry and `load` callbacks.
    Softphone,
}

impl LaneTarget<'_> {
    /// `softphone.lane.crm.<connection>.<p>.>` or `softphone.lane.softphone.<p>.>`:
    /// what the consumer of partition `partition` reads.
    pub fn filter(&self, partition: u16) -> String {
        format!("{}.{partition}.>", self.prefix())
    }

    /// The subject an event of `kind` in `partition` is routed on.
    pub fn subject(&self, partition: u16, kind: EventKind) -> String {
        format!("{}.{partition}.{}", self.prefix(), kind.name())
    }

    /// The partition of an event in this lane: of its order key (see
    /// [`order_key`]; the softphone lane orders by softphone).
    pub fn partition(&self, event: &Event, event_id: &str, partitions: u16) -> u16 {
        let key = match self {
            LaneTarget::Crm(_) => order_key(event, event_id),
            LaneTarget::Softphone => softphone_key(event, event_id),
        };
        partition_of(key, partitions)
    }

    /// The order key of an event in this lane.
    pub fn order_key<'e>(&self, event: &'e Event, event_id: &'e str) -> &'e str {
        match self {
            LaneTarget::Crm(_) => order_key(event, event_id),
            LaneTarget::Softphone => softphone_key(event, event_id),
        }
    }

    fn prefix(&self) -> String {
        match self {
            LaneTarget::Crm(connection) => format!("{SUBJECT_ROOT}.lane.crm.{connection}"),
            LaneTarget::Softphone => format!("{SUBJECT_ROOT}.lane.softphone"),
        }
    }

    /// The partition and the event kind a routed subject of this lane carries.
    pub(crate) fn kind_of(&self, subject: &str) -> Option<(u16, EventKind)> {
        let rest = subject.strip_prefix(&self.prefix())?.strip_prefix('.')?;
        let (partition, name) = rest.split_once('.')?;
        let partition = partition.parse().ok()?;
        let kind = EventKind::parse(name).filter(|kind| kind.name() == name)?;
        Some((partition, kind))
    }
}

/// The subject callbacks for one softphone instance are published on.
pub(crate) fn command_subject(softphone: &SoftphoneId) -> String {
    format!("{SUBJECT_ROOT}.cmd.{softphone}")
}

/// The softphone a heartbeat subject names, if it names exactly one.
pub(crate) fn heartbeat_softphone(subject: &str) -> Option<SoftphoneId> {
    let id = subject
        .strip_prefix(SUBJECT_ROOT)?
        .strip_prefix(".heartbeat.")?;
    SoftphoneId::try_from(id.to_owned()).ok()
}

/// What a subject of `SOFTPHONE_EVENTS` says about its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventSubject {
    pub kind: EventKind,
    /// Published again by `dlq replay` (a [`REPLAY_SUBJECTS`] subject).
    pub replayed: bool,
    /// The partner the server vouches for: the account the event was
    /// published from (`softphone.p.<partnerId>.<event>`, see
    /// [`tenant`]); `None` for the contract's own subjects.
    pub partner: Option<Guid>,
    /// The subject as first published (a replay's without its prefix).
    pub original: String,
}

/// The event a subject of `SOFTPHONE_EVENTS` carries: a contract subject,
/// a partner's (`softphone.p.<partnerId>.<event>`), or either replayed
/// (`softphone.replay.<…>`).
pub(crate) fn event_subject(subject: &str) -> Option<EventSubject> {
    let replay = format!("{SUBJECT_ROOT}.replay.");
    let (original, replayed) = match subject.strip_prefix(&replay) {
        Some(rest) => (format!("{SUBJECT_ROOT}.{rest}"), true),
        None => (subject.to_owned(), false),
    };
    let (kind, partner) = match tenant::partner_event(&original) {
        Some((partner, kind)) => (kind, Some(partner)),
        None => (EventKind::from_subject(&original)?, None),
    };
    Some(EventSubject {
        kind,
        replayed,
        partner,
        original,
    })
}

/// The subject `dlq replay` publishes an event first published on
/// `original` on again: `softphone.replay.<original without "softphone.">`,
/// so a partner's event keeps the partner the server vouched for.
pub(crate) fn replay_subject(original: &str) -> Option<String> {
    let parsed = event_subject(original).filter(|s| !s.replayed)?;
    let rest = parsed.original.strip_prefix(SUBJECT_ROOT)?;
    Some(format!("{SUBJECT_ROOT}.replay{rest}"))
}

/// Whether `id` may be an event id: 1 to [`MAX_EVENT_ID`] bytes of printable
/// ASCII without spaces (`!` to `~`), so that it fits every header it is
/// copied into (NATS, HTTP) unchanged. `Err` says why not.
pub(crate) fn check_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty".into());
    }
    if id.len() > MAX_EVENT_ID {
        return Err(format!(
            "{} bytes, more than the {MAX_EVENT_ID} allowed",
            id.len()
        ));
    }
    match id.bytes().position(|b| !b.is_ascii_graphic()) {
        Some(at) => Err(format!(
            "byte {at} is {:#04x}: only printable ASCII without spaces is allowed",
            id.as_bytes()[at]
        )),
        None => Ok(()),
    }
}

/// The dead-letter subject for an event subject: `softphone.dlq.<subject without "softphone.">`.
pub(crate) fn dlq_subject(event_subject: &str) -> String {
    let rest = event_subject
        .strip_prefix("softphone.")
        .unwrap_or(event_subject);
    format!("{SUBJECT_ROOT}.dlq.{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlq_subject_strips_the_root() {
        assert_eq!(
            dlq_subject("softphone.call.ended"),
            "softphone.dlq.call.ended"
        );
        assert_eq!(dlq_subject("other.thing"), "softphone.dlq.other.thing");
    }

    #[test]
    fn lane_subjects_name_the_connection_the_partition_and_the_event() {
        let lane = LaneTarget::Crm("acme");
        assert_eq!(
            lane.subject(3, EventKind::CallEnded),
            "softphone.lane.crm.acme.3.call.ended"
        );
        assert_eq!(lane.filter(3), "softphone.lane.crm.acme.3.>");
        assert_eq!(
            lane.kind_of("softphone.lane.crm.acme.3.call.ended"),
            Some((3, EventKind::CallEnded))
        );
        assert_eq!(lane.kind_of("softphone.lane.crm.acme2.3.call.ended"), None);
        assert_eq!(lane.kind_of("softphone.lane.crm.acme.3.callEnded"), None);
        assert_eq!(lane.kind_of("softphone.lane.crm.acme.call.ended"), None);
        assert_eq!(
            LaneTarget::Softphone.kind_of(&LaneTarget::Softphone.subject(0, EventKind::Loaded)),
            Some((0, EventKind::Loaded))
        );
    }

    #[test]
    fn replay_subjects_carry_their_event_and_partner() {
        assert_eq!(
            replay_subject("softphone.call.ended").as_deref(),
            Some("softphone.replay.call.ended")
        );
        let replayed = event_subject("softphone.replay.call.ended").unwrap();
        assert_eq!(
            (
                replayed.kind,
                replayed.replayed,
                replayed.partner,
                replayed.original.as_str()
            ),
            (EventKind::CallEnded, true, None, "softphone.call.ended")
        );
        let partner = "215fd887-39be-4935-981f-2670d6afeaa7";
        let theirs = format!("softphone.p.{partner}.call.ended");
        let replay = replay_subject(&theirs).unwrap();
        assert_eq!(replay, format!("softphone.replay.p.{partner}.call.ended"));
        let parsed = event_subject(&replay).unwrap();
        assert_eq!(parsed.partner.unwrap().as_str(), partner);
        assert_eq!(parsed.original, theirs);
        assert!(parsed.replayed);
        assert!(!event_subject("softphone.call.ended").unwrap().replayed);
        assert_eq!(event_subject("softphone.replay.callEnded"), None);
        assert_eq!(event_subject("softphone.replay.softphone.call.ended"), None);
        assert_eq!(replay_subject("softphone.replay.call.ended"), None);
    }

    #[test]
    fn event_ids_are_short_printable_ascii() {
        assert!(check_event_id("accepted-57053e21-0440-4689-a27a-513d7dceebde").is_ok());
        assert!(check_event_id(&"x".repeat(MAX_EVENT_ID)).is_ok());
        assert!(check_event_id(&"x".repeat(MAX_EVENT_ID + 1)).is_err());
        assert!(check_event_id("").is_err());
        for bad in ["a\u{1}b", "a\u{7f}", "a b", "é"] {
            assert!(check_event_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn command_subject_is_one_token_per_softphone() {
        let id = SoftphoneId::try_from("agent-7".to_owned()).unwrap();
        assert_eq!(command_subject(&id), "softphone.cmd.agent-7");
    }
}
