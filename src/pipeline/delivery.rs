//! One delivered message: what it says about its event, and applying the
//! fate [`outcome`](super::outcome) decided for it (ack, nak, or
//! dead-letter then terminate).

use async_nats::jetstream::{self, AckKind};
use time::OffsetDateTime;

use super::dead_letter;
use super::outcome::{self, Outcome};
use crate::contract::tenant::LOGIN_HEADER;
use crate::contract::{EventKind, check_event_id, event_subject, lane_header, replay_header};
use crate::telemetry::metric;

/// An event as one delivery presents it.
pub(crate) struct Delivery {
    /// Stays the same across redeliveries, replicas and lanes (see subjects.md).
    pub id: String,
    /// What its copies to the lanes are de-duplicated by: the message's own
    /// id, so a replay (same event id, new message) is routed again.
    pub copy_key: String,
    /// The subject it was first published on (a replay's original one).
    pub subject: String,
    /// Its sequence in `SOFTPHONE_EVENTS`.
    pub sequence: u64,
    /// When `SOFTPHONE_EVENTS` stored it.
    pub published: OffsetDateTime,
    /// This delivery's number, 1-based.
    pub delivered: u32,
    /// Attempts so far: the delivery count, plus the retries made since in
    /// process. What `worker.max_deliveries` bounds and a dead letter shows.
    pub attempts: u32,
    /// The message's sequence in the stream it was delivered from.
    pub consumer_key: u64,
    /// The event, from its subject (a replay's too).
    pub kind: Option<EventKind>,
    /// The partner the server vouches for (the publisher's account), from a
    /// partner's subject (at a lane, the one its copy says it was first
    /// published on); `None` in the single account.
    pub partner: Option<crate::contract::Guid>,
    /// On a partner's subject at the intake: the login the door stored the
    /// event with ([`LOGIN_HEADER`], the server's word on who sent it).
    pub login: Option<String>,
    /// Why the publisher's `Nats-Msg-Id` cannot be an event id, if it cannot
    /// (the event is then dead-lettered at the intake under `seq:<sequence>`).
    pub invalid_id: Option<String>,
    /// `intake` or `lane`, for metrics.
    stage: &'static str,
    /// The lane (connection) that delivered it; `None` at the intake.
    lane: Option<String>,
    /// Read from its stream by sequence, not delivered (set aside).
    read_raw: bool,
}

impl Delivery {
    /// An event delivered from `SOFTPHONE_EVENTS`. Its id is the publisher's
    /// `Nats-Msg-Id` when that is a valid event id (else `seq:<sequence>`,
    /// and [`Delivery::invalid_id`] says why); a replay (on a
    /// [`REPLAY_SUBJECTS`](crate::contract::REPLAY_SUBJECTS) subject, which
    /// only the bridge may publish) keeps its original id and publish time
    /// from its [`replay_header`]s, which any other subject's are not taken from.
    pub(crate) fn from_events(message: &jetstream::Message) -> Result<Self, Outcome> {
        let info = message.info().map_err(outcome::unreadable_metadata)?;
        let sequence = info.stream_sequence;
        let parsed = event_subject(&message.subject);
        let replayed = parsed.as_ref().is_some_and(|s| s.replayed);
        let mut invalid_id = None;
        let copy_key = match header(message, async_nats::header::NATS_MESSAGE_ID.as_ref()) {
            Some(id) => match check_event_id(id) {
                Ok(()) => id.to_owned(),
                Err(why) => {
                    invalid_id = Some(format!("Nats-Msg-Id {}: {why}", shown(id)));
                    format!("seq:{sequence}")
                }
            },
            None => format!("seq:{sequence}"),
        };
        let original_id = header(message, replay_header::EVENT_ID)
            .filter(|id| replayed && check_event_id(id).is_ok());
        let (id, published) = identity(
            original_id,
            header(message, replay_header::PUBLISHED),
            &copy_key,
            info.published,
        );
        let partner = parsed.as_ref().and_then(|s| s.partner.clone());
        Ok(Self {
            id,
            copy_key,
            kind: parsed.as_ref().map(|s| s.kind),
            login: partner
                .as_ref()
                .and_then(|_| header(message, LOGIN_HEADER))
                .map(str::to_owned),
            partner,
            subject: parsed.map_or_else(|| message.subject.to_string(), |s| s.original),
            sequence,
            published,
            delivered: info.delivered.max(1) as u32,
            attempts: info.delivered.max(1) as u32,
            consumer_key: info.stream_sequence,
            invalid_id,
            stage: "intake",
            lane: None,
            read_raw: false,
        })
    }

    /// A routed event delivered from `SOFTPHONE_LANES`: the intake's headers
    /// say what it was in `SOFTPHONE_EVENTS`.
    pub(crate) fn from_lane(
        message: &jetstream::Message,
        kind: Option<EventKind>,
        lane: &str,
    ) -> Result<Self, Outcome> {
        let info = message.info().map_err(outcome::unreadable_metadata)?;
        let published = header(message, lane_header::PUBLISHED)
            .and_then(parse_time)
            .unwrap_or(info.published);
        let sequence = header(message, lane_header::SEQUENCE)
            .and_then(|seq| seq.parse().ok())
            .unwrap_or(info.stream_sequence);
        let id = header(message, lane_header::EVENT_ID).map_or_else(
            || format!("lane-seq:{}", info.stream_sequence),
            str::to_owned,
        );
        let subject = header(message, lane_header::SUBJECT)
            .map_or_else(|| message.subject.to_string(), str::to_owned);
        Ok(Self {
            copy_key: id.clone(),
            id,
            partner: event_subject(&subject).and_then(|s| s.partner),
            subject,
            sequence,
            published,
            delivered: info.delivered.max(1) as u32,
            attempts: info.delivered.max(1) as u32,
            consumer_key: info.stream_sequence,
            kind,
            login: None,
            invalid_id: None,
            stage: "lane",
            lane: Some(lane.to_owned()),
            read_raw: false,
        })
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        self.kind.map_or("unknown", EventKind::name)
    }

    /// A message read raw from `SOFTPHONE_EVENTS` by its sequence (its
    /// headers unreadable to the client, see [`super::unreadable`]): no
    /// delivery count, no publish time, the id `seq:<sequence>`.
    pub(crate) fn set_aside(subject: &str, sequence: u64) -> Self {
        let parsed = event_subject(subject);
        Self {
            id: format!("seq:{sequence}"),
            copy_key: format!("seq:{sequence}"),
            subject: subject.to_owned(),
            sequence,
            published: OffsetDateTime::UNIX_EPOCH,
            delivered: 0,
            attempts: 0,
            consumer_key: sequence,
            kind: parsed.as_ref().map(|s| s.kind),
            partner: parsed.and_then(|s| s.partner),
            login: None,
            invalid_id: None,
            stage: "intake",
            lane: None,
            read_raw: true,
        }
    }

    /// A delivery whose JetStream metadata cannot be read (which a
    /// JetStream consumer never sends): only its subject is known.
    pub(crate) fn unread(message: &jetstream::Message, stage: &'static str) -> Self {
        Self {
            id: "unread".into(),
            copy_key: "unread".into(),
            subject: message.subject.to_string(),
            sequence: 0,
            published: OffsetDateTime::UNIX_EPOCH,
            delivered: 0,
            attempts: 0,
            consumer_key: 0,
            kind: None,
            partner: None,
            login: None,
            invalid_id: None,
            stage,
            lane: None,
            read_raw: false,
        }
    }

    /// Applies a fate that ends a message to `original`: every such fate of
    /// every message, delivered or set aside, goes through here (logs and
    /// metrics alike), from the one consume loop. `Err` when it was not
    /// carried out: a dead letter the dead-letter stream did not take (held,
    /// and carried out again), or a fate worked in process (retry, hold).
    pub(crate) async fn apply_to(
        &self,
        js: &jetstream::Context,
        original: &Original<'_>,
        outcome: &Outcome,
    ) -> Result<(), Outcome> {
        let kind = self.kind_name();
        let acked = match outcome {
            Outcome::Ack => {
                tracing::debug!("Event handled.");
                if let Some(lane) = &self.lane {
                    let age = (OffsetDateTime::now_utc() - self.published).as_seconds_f64();
                    metrics::histogram!(metric::EVENT_AGE, "lane" => lane.clone(), "type" => kind)
                        .record(age.max(0.0));
                }
                original.settle(AckKind::Ack).await
            }
            Outcome::GiveBack { reason } => {
                tracing::debug!(%reason, "Event given back.");
                original.settle(AckKind::Nak(None)).await
            }
            // Worked again in process, not applied.
            Outcome::Retry { .. } | Outcome::Hold { .. } => return Err(outcome.clone()),
            Outcome::DeadLetter { reason, detail } => {
                let origin = dead_letter::Origin {
                    subject: &self.subject,
                    sequence: self.sequence,
                    delivered: self.attempts,
                    event_id: &self.id,
                    published: (!self.read_raw).then_some(self.published),
                    login: self.login.as_deref(),
                };
                let copied =
                    dead_letter::publish(js, &origin, original.body(), reason, detail.as_deref())
                        .await;
                if let Err(e) = copied {
                    tracing::warn!(%reason, error = %e, "Cannot dead-letter the event; holding it.");
                    return Err(outcome::dead_letter_failed(e));
                }
                tracing::error!(%reason, "Event dead-lettered.");
                metrics::counter!(metric::DEAD_LETTERED, "type" => kind).increment(1);
                original.settle(AckKind::Term).await
            }
        };
        count(kind, self.stage, outcome.label());
        if self.delivered > 1 {
            metrics::counter!(metric::REDELIVERIES, "type" => kind).increment(1);
        }
        if let Err(e) = acked {
            // The server redelivers after the ack wait; CRM writes are idempotent.
            tracing::warn!(outcome = outcome.label(), error = %e, "Cannot acknowledge the event.");
        }
        Ok(())
    }

    /// Counts a fate carried out in process (a retry, which is an attempt
    /// after the first).
    pub(crate) fn count(&self, outcome: &Outcome) {
        count(self.kind_name(), self.stage, outcome.label());
        if matches!(outcome, Outcome::Retry { .. }) {
            metrics::counter!(metric::REDELIVERIES, "type" => self.kind_name()).increment(1);
        }
    }
}

fn count(kind: &'static str, stage: &'static str, outcome: &'static str) {
    metrics::counter!(metric::EVENTS, "type" => kind, "stage" => stage, "outcome" => outcome)
        .increment(1);
}

/// What a fate is applied to.
pub(crate) enum Original<'a> {
    /// A delivery of a consumer: acked, nak'd or terminated.
    Delivered(&'a jetstream::Message),
    /// A message read from its stream, not delivered: a fate that ends it
    /// (dead-lettered) deletes it from the stream.
    Stored {
        stream: &'a jetstream::stream::Stream,
        sequence: u64,
        body: bytes::Bytes,
    },
}

impl Original<'_> {
    fn body(&self) -> bytes::Bytes {
        match self {
            Original::Delivered(message) => message.payload.clone(),
            Original::Stored { body, .. } => body.clone(),
        }
    }

    async fn settle(&self, kind: AckKind) -> Result<(), async_nats::Error> {
        match (self, kind) {
            (Original::Delivered(message), kind) => message.ack_with(kind).await,
            (
                Original::Stored {
                    stream, sequence, ..
                },
                AckKind::Term,
            ) => {
                stream.delete_message(*sequence).await?;
                Ok(())
            }
            // Nothing else ends a message that was never delivered.
            (Original::Stored { .. }, _) => Ok(()),
        }
    }
}

/// The start of a refused id as it can be shown in one line: escaped, at
/// most 64 characters.
fn shown(id: &str) -> String {
    let escaped: String = id.escape_debug().take(64).collect();
    if escaped.chars().count() < id.escape_debug().count() {
        format!("\"{escaped}…\" ({} bytes)", id.len())
    } else {
        format!("\"{escaped}\"")
    }
}

fn parse_time(at: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

/// An event's id and publish time: a replay's original ones when it is a
/// replay, else the message's id and the stream's time.
fn identity(
    original_id: Option<&str>,
    original_published: Option<&str>,
    message_id: &str,
    published: OffsetDateTime,
) -> (String, OffsetDateTime) {
    match original_id {
        Some(id) => (
            id.to_owned(),
            original_published.and_then(parse_time).unwrap_or(published),
        ),
        None => (message_id.to_owned(), published),
    }
}

fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{identity, parse_time};

    #[test]
    fn a_replayed_event_keeps_its_original_id_and_publish_time() {
        let now = parse_time("2026-11-24T19:00:00Z").unwrap();
        assert_eq!(
            identity(
                Some("evt-1"),
                Some("2026-11-20T08:30:00Z"),
                "replay:7:evt-1",
                now
            ),
            (
                "evt-1".to_owned(),
                parse_time("2026-11-20T08:30:00Z").unwrap()
            )
        );
        // An unreadable original time falls back to the stream's.
        assert_eq!(
            identity(Some("evt-1"), Some("yesterday"), "replay:7:evt-1", now),
            ("evt-1".to_owned(), now)
        );
        assert_eq!(
            identity(None, Some("2026-11-20T08:30:00Z"), "m-1", now),
            ("m-1".to_owned(), now)
        );
    }
}
