//! The one place that decides every fate of a delivered message, at the
//! intake and in the lanes (and of a message set aside for headers the
//! client cannot read); the one consume loop ([`super::unit`]) carries each
//! one out.
//!
//! The rule: a delivery counts against an event only when the failure is the
//! event's own. Trouble that belongs to the CRM connection or to NATS holds
//! the event (kept in progress, handled again when the lane may go on) and
//! spends none of its deliveries.

use std::time::Duration;

use super::WorkerSettings;
use crate::contract::ContractError;
use crate::crm::CrmError;
use crate::softphones::command::CommandError;
use crate::softphones::registry::RegistryError;

/// What becomes of a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or routed): acknowledge.
    Ack,
    /// Failed for its own reasons, for now: kept in progress and tried
    /// again after `delay`, in this replica, so no later event of its
    /// conversation passes it. Spends one attempt (attempts count from the
    /// delivery count on).
    Retry { delay: Duration, reason: String },
    /// Its connection (or NATS) is in trouble: keep it in progress and handle
    /// it again once the lane may go on. Spends nothing.
    Hold {
        reason: String,
        /// What the CRM asked for, if anything.
        retry_after: Option<Duration>,
    },
    /// Cannot be handled: copy to the dead-letter stream with the reason, then terminate.
    DeadLetter {
        reason: String,
        detail: Option<String>,
    },
    /// Not worked here after all (shutting down, the partition moving to
    /// another replica, a delivery without metadata): given back at once
    /// (`-NAK`), for whichever replica works the partition next.
    GiveBack { reason: String },
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::Hold { .. } => "hold",
            Outcome::DeadLetter { .. } => "dead_letter",
            Outcome::GiveBack { .. } => "give_back",
        }
    }
}

/// Why handling (or routing) an event failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The intake could not store the routed copy: NATS trouble.
    #[error("cannot route the event: {0}")]
    Route(String),
    /// NATS refused the routed copy for the message itself (see
    /// [`refused_for_itself`]): no retry can store it.
    #[error("NATS refused the event's copy: {0}")]
    Refused(String),
    /// The publisher's `Nats-Msg-Id` cannot be an event id.
    #[error("invalid event id: {0}")]
    EventId(String),
    /// The body names another partner than the account it was published from.
    #[error("partner mismatch: {0}")]
    PartnerMismatch(String),
    /// A partner's `loaded` or `agent.status_changed` about another softphone
    /// than the login the server vouches sent it, or without that login.
    #[error("softphone mismatch: {0}")]
    SoftphoneMismatch(String),
}

/// JetStream's answers that refuse a message for what it is: message size
/// exceeds the maximum allowed (10054), header size exceeds the maximum of
/// 64 KiB (10097).
const REFUSED_FOR_ITSELF: [u64; 2] = [10054, 10097];

/// Whether NATS refused a publish for the message itself (larger than the
/// server takes, headers over 64 KiB), which no retry can mend, rather than
/// for its own trouble (no stream leader, a timeout, a lost connection),
/// which passes.
pub(super) fn refused_for_itself(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::context::PublishErrorKind;
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|answer| REFUSED_FOR_ITSELF.contains(&answer.error_code().0)),
        _ => false,
    }
}

/// How a failed publish of an event's copy counts against it.
pub(super) fn copy_failed(error: &async_nats::jetstream::context::PublishError) -> HandleError {
    if refused_for_itself(error) {
        HandleError::Refused(error.to_string())
    } else {
        HandleError::Route(error.to_string())
    }
}

/// Decides the fate of attempt number `delivered` (1-based: the delivery
/// count, plus the attempts made since in process) given how handling went. `connection_answered` says whether the event's connection
/// answered other events since this one was last held: a connection that
/// works for others cannot be blamed for this event's failures any more.
pub fn decide(
    result: Result<(), HandleError>,
    delivered: u32,
    connection_answered: bool,
    settings: &WorkerSettings,
) -> Outcome {
    let (reason, retry_after) = match result {
        Ok(()) => return Outcome::Ack,
        Err(HandleError::Contract(e)) => {
            return Outcome::DeadLetter {
                reason: format!("invalid payload: {e}"),
                detail: None,
            };
        }
        // A body that claims another partner, or another softphone, than
        // the server vouches for.
        Err(HandleError::PartnerMismatch(detail)) => {
            return Outcome::DeadLetter {
                reason: "partner mismatch".into(),
                detail: Some(detail),
            };
        }
        Err(HandleError::SoftphoneMismatch(detail)) => {
            return Outcome::DeadLetter {
                reason: "softphone mismatch".into(),
                detail: Some(detail),
            };
        }
        // What NATS will never carry onward is the message's own failure:
        // dead-lettered at once, so it holds back no other event.
        Err(e @ (HandleError::EventId(_) | HandleError::Refused(_))) => {
            return Outcome::DeadLetter {
                reason: e.to_string(),
                detail: None,
            };
        }
        Err(HandleError::Crm(CrmError::Permanent { reason, detail })) => {
            return Outcome::DeadLetter { reason, detail };
        }
        // The event's own fault (it would move a live softphone to another
        // partner): redelivering it cannot help.
        Err(HandleError::Registry(e)) if e.is_partner_conflict() => {
            return Outcome::DeadLetter {
                reason: "partner conflict".into(),
                detail: Some(e.to_string()),
            };
        }
        Err(HandleError::Crm(CrmError::Unavailable {
            reason,
            retry_after,
        })) if !connection_answered => {
            return Outcome::Hold {
                reason,
                retry_after,
            };
        }
        Err(HandleError::Crm(
            CrmError::Transient {
                reason,
                retry_after,
            }
            | CrmError::Unavailable {
                reason,
                retry_after,
            },
        )) => (reason, retry_after),
        Err(e @ (HandleError::Command(_) | HandleError::Registry(_) | HandleError::Route(_))) => {
            return Outcome::Hold {
                reason: e.to_string(),
                retry_after: None,
            };
        }
    };
    if delivered >= settings.max_deliveries {
        return Outcome::DeadLetter {
            reason: format!(
                "gave up after {delivered} deliveries (worker.max_deliveries = {}): {reason}",
                settings.max_deliveries
            ),
            detail: None,
        };
    }
    let delay = match retry_after {
        Some(asked) => asked.min(settings.max_retry_after),
        None => settings.backoff_after(delivered),
    };
    Outcome::Retry { delay, reason }
}

/// The fate of a lane delivery that arrives after `max_deliveries` already
/// happened without an outcome (a replica crashed while handling it each
/// time). The intake has no such limit: routing fails only for NATS's
/// trouble or an invalid body, never for an event's own reasons.
pub(super) fn exhausted(delivered: u32, settings: &WorkerSettings) -> Option<Outcome> {
    (delivered > settings.max_deliveries).then(|| Outcome::DeadLetter {
        reason: format!(
            "delivered {delivered} times without an outcome (worker.max_deliveries = {})",
            settings.max_deliveries
        ),
        detail: None,
    })
}

/// A message of `SOFTPHONE_EVENTS` whose headers the client cannot read
/// (found by the intake's sweep, see [`super::unreadable`]): dead-lettered
/// with the headers as they are stored, then deleted from the stream.
pub(super) fn unreadable_headers(why: &str, headers: &[u8]) -> Outcome {
    Outcome::DeadLetter {
        reason: format!("unreadable NATS headers: {why}"),
        detail: Some(headers.escape_ascii().to_string()),
    }
}

/// A delivery without JetStream metadata (which a JetStream consumer never
/// sends): given back at once.
pub(super) fn unreadable_metadata(error: impl std::fmt::Display) -> Outcome {
    Outcome::GiveBack {
        reason: format!("delivery without JetStream metadata: {error}"),
    }
}

/// An event not worked here after all: the unit stops (shutdown, or its
/// partition moves to another replica). Given back at once, so whoever works
/// the partition next takes it, before anything newer.
pub(super) fn given_back() -> Outcome {
    Outcome::GiveBack {
        reason: "the partition stops here".into(),
    }
}

/// The dead-letter stream did not take the copy: NATS trouble, so the event
/// is held and dead-lettered again later; the original is never terminated
/// before its copy is stored.
pub(super) fn dead_letter_failed(error: impl std::fmt::Display) -> Outcome {
    Outcome::Hold {
        reason: format!("cannot dead-letter the event: {error}"),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WorkerSettings {
        WorkerSettings {
            max_deliveries: 3,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(4)],
            max_retry_after: Duration::from_secs(60),
            ..Default::default()
        }
    }

    fn transient(retry_after: Option<Duration>) -> Result<(), HandleError> {
        Err(CrmError::Transient {
            reason: "UNABLE_TO_LOCK_ROW".into(),
            retry_after,
        }
        .into())
    }

    fn unavailable() -> Result<(), HandleError> {
        Err(CrmError::Unavailable {
            reason: "CRM answered 503".into(),
            retry_after: Some(Duration::from_secs(7)),
        }
        .into())
    }

    #[test]
    fn success_is_acked() {
        assert_eq!(decide(Ok(()), 1, false, &settings()), Outcome::Ack);
    }

    #[test]
    fn an_events_own_failures_back_off_then_dead_letter() {
        let s = settings();
        assert_eq!(
            decide(transient(None), 1, false, &s),
            Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: "UNABLE_TO_LOCK_ROW".into()
            }
        );
        assert!(
            matches!(decide(transient(None), 2, false, &s), Outcome::Retry { delay, .. } if delay == Duration::from_secs(4))
        );
        match decide(transient(None), 3, false, &s) {
            Outcome::DeadLetter { reason, .. } => {
                assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
                assert!(reason.contains("UNABLE_TO_LOCK_ROW"), "{reason}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn the_connections_trouble_holds_whatever_the_delivery_count() {
        let s = settings();
        for delivered in [1, 3, 100] {
            assert_eq!(
                decide(unavailable(), delivered, false, &s),
                Outcome::Hold {
                    reason: "CRM answered 503".into(),
                    retry_after: Some(Duration::from_secs(7))
                }
            );
        }
    }

    #[test]
    fn a_connection_that_answers_others_cannot_be_blamed_any_more() {
        let s = settings();
        assert!(matches!(
            decide(unavailable(), 1, true, &s),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(7)
        ));
        assert!(matches!(
            decide(unavailable(), 3, true, &s),
            Outcome::DeadLetter { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let s = settings();
        assert!(
            matches!(decide(transient(Some(Duration::from_secs(9))), 1, false, &s),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(9))
        );
        assert!(
            matches!(decide(transient(Some(Duration::from_secs(3600))), 1, false, &s),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(60))
        );
    }

    #[test]
    fn permanent_failures_and_bad_payloads_dead_letter_at_once() {
        let s = settings();
        let permanent = Err(CrmError::Permanent {
            reason: "CRM answered 422".into(),
            detail: Some("bad".into()),
        }
        .into());
        assert_eq!(
            decide(permanent, 1, false, &s),
            Outcome::DeadLetter {
                reason: "CRM answered 422".into(),
                detail: Some("bad".into())
            }
        );
        let invalid = Err(ContractError::Json("EOF".into()).into());
        assert!(
            matches!(decide(invalid, 1, false, &s), Outcome::DeadLetter { reason, .. } if reason.starts_with("invalid payload"))
        );
    }

    #[test]
    fn nats_trouble_holds() {
        let s = settings();
        let failed = || Err(RegistryError::new("cannot write agent-1: timed out").into());
        for delivered in [1, 3] {
            assert!(matches!(decide(failed(), delivered, false, &s),
                Outcome::Hold { reason, .. } if reason.contains("timed out")));
        }
        assert!(matches!(
            decide(
                Err(HandleError::Route("no responders".into())),
                5,
                false,
                &s
            ),
            Outcome::Hold { .. }
        ));
        assert!(matches!(
            dead_letter_failed("timed out"),
            Outcome::Hold { .. }
        ));
    }

    #[test]
    fn a_partner_conflict_is_dead_lettered_at_once() {
        let s = settings();
        let phone: crate::contract::SoftphoneId = "agent-1".parse().unwrap();
        let bound = crate::softphones::registry::Sighting::Loaded {
            partner: Some("215fd887-39be-4935-981f-2670d6afeaa7".parse().unwrap()),
            at: time::OffsetDateTime::UNIX_EPOCH,
        }
        .merge(&phone, None);
        let spoof = crate::softphones::registry::Sighting::Loaded {
            partner: Some("d6afeaa7-39be-4935-981f-2670215fd887".parse().unwrap()),
            at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(spoof.try_merge(&phone, Some(bound)).is_err());
        let conflict = RegistryError::partner_conflict("agent-1 is bound to another partner");
        assert_eq!(
            decide(Err(conflict.into()), 1, false, &s),
            Outcome::DeadLetter {
                reason: "partner conflict".into(),
                detail: Some("softphone registry: agent-1 is bound to another partner".into()),
            }
        );
    }

    #[test]
    fn nats_refusing_a_message_for_itself_is_its_own_failure_and_nats_trouble_holds() {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind};
        let answered = |code: u16, err_code: u64| {
            let answer: async_nats::jetstream::Error = serde_json::from_str(&format!(
                r#"{{"code":{code},"err_code":{err_code},"description":"from the server"}}"#
            ))
            .unwrap();
            PublishError::with_source(PublishErrorKind::Other, answer)
        };
        let s = settings();
        for own in [
            PublishError::new(PublishErrorKind::MaxPayloadExceeded),
            answered(400, 10097),
            answered(400, 10054),
        ] {
            assert!(refused_for_itself(&own), "{own}");
            assert!(matches!(
                decide(Err(copy_failed(&own)), 1, false, &s),
                Outcome::DeadLetter { reason, .. } if reason.starts_with("NATS refused the event's copy")
            ));
        }
        for trouble in [
            PublishError::new(PublishErrorKind::TimedOut),
            PublishError::new(PublishErrorKind::StreamNotFound),
            PublishError::new(PublishErrorKind::BrokenPipe),
            PublishError::new(PublishErrorKind::Other),
            // Stream store failed; no leader.
            answered(503, 10077),
            answered(503, 10008),
        ] {
            assert!(!refused_for_itself(&trouble), "{trouble}");
            assert!(matches!(
                decide(Err(copy_failed(&trouble)), 100, false, &s),
                Outcome::Hold { .. }
            ));
        }
    }

    #[test]
    fn an_invalid_event_id_is_dead_lettered_at_once() {
        assert!(matches!(
            decide(Err(HandleError::EventId("Nats-Msg-Id \"x\": empty".into())), 1, false, &settings()),
            Outcome::DeadLetter { reason, .. } if reason.starts_with("invalid event id: Nats-Msg-Id")
        ));
    }

    #[test]
    fn deliveries_beyond_the_limit_are_exhausted() {
        let s = settings();
        assert_eq!(exhausted(3, &s), None);
        assert!(exhausted(4, &s).is_some());
    }
}
