//! The one place that decides a message's fate; the consume loop only applies it.

use std::time::Duration;

use crate::command::CommandError;
use crate::config::WorkerSettings;
use crate::contract::ContractError;
use crate::crm::CrmError;
use crate::registry::RegistryError;

/// What becomes of a delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: acknowledge.
    Ack,
    /// Failed for now: nak with a delay so JetStream redelivers it later.
    Retry { delay: Duration, reason: String },
    /// Cannot be handled: copy to the dead-letter queue with the reason, then terminate.
    DeadLetter {
        reason: String,
        detail: Option<String>,
    },
}

impl Outcome {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter { .. } => "dead_letter",
        }
    }
}

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The registry could not be written: NATS trouble, worth a retry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Decides the fate of delivery number `delivered` (1-based) given how handling went.
pub fn decide(
    result: Result<(), HandleError>,
    delivered: u32,
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
        Err(HandleError::Crm(CrmError::Permanent { reason, detail })) => {
            return Outcome::DeadLetter { reason, detail };
        }
        Err(HandleError::Crm(CrmError::Transient {
            reason,
            retry_after,
        })) => (reason, retry_after),
        Err(e @ (HandleError::Command(_) | HandleError::Registry(_))) => (e.to_string(), None),
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

/// The fate of a delivery that arrives after `max_deliveries` already happened
/// without an outcome (the worker crashed or the ack wait ran out each time).
pub fn exhausted(delivered: u32, settings: &WorkerSettings) -> Option<Outcome> {
    (delivered > settings.max_deliveries).then(|| Outcome::DeadLetter {
        reason: format!(
            "delivered {delivered} times without an outcome (worker.max_deliveries = {})",
            settings.max_deliveries
        ),
        detail: None,
    })
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
            reason: "CRM answered 503".into(),
            retry_after,
        }
        .into())
    }

    #[test]
    fn success_is_acked() {
        assert_eq!(decide(Ok(()), 1, &settings()), Outcome::Ack);
    }

    #[test]
    fn transient_failures_back_off_then_dead_letter() {
        let s = settings();
        assert_eq!(
            decide(transient(None), 1, &s),
            Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: "CRM answered 503".into()
            }
        );
        assert!(
            matches!(decide(transient(None), 2, &s), Outcome::Retry { delay, .. } if delay == Duration::from_secs(4))
        );
        match decide(transient(None), 3, &s) {
            Outcome::DeadLetter { reason, .. } => {
                assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
                assert!(reason.contains("CRM answered 503"), "{reason}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let s = settings();
        assert!(
            matches!(decide(transient(Some(Duration::from_secs(9))), 1, &s),
            Outcome::Retry { delay, .. } if delay == Duration::from_secs(9))
        );
        assert!(
            matches!(decide(transient(Some(Duration::from_secs(3600))), 1, &s),
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
            decide(permanent, 1, &s),
            Outcome::DeadLetter {
                reason: "CRM answered 422".into(),
                detail: Some("bad".into())
            }
        );
        let invalid = Err(ContractError::Json("EOF".into()).into());
        assert!(
            matches!(decide(invalid, 1, &s), Outcome::DeadLetter { reason, .. } if reason.starts_with("invalid payload"))
        );
    }

    #[test]
    fn registry_failures_are_retried() {
        let s = settings();
        let failed = || Err(RegistryError::new("cannot write agent-1: timed out").into());
        assert!(matches!(decide(failed(), 1, &s),
            Outcome::Retry { delay, reason } if delay == Duration::from_secs(1) && reason.contains("timed out")));
        assert!(matches!(
            decide(failed(), 3, &s),
            Outcome::DeadLetter { .. }
        ));
    }

    #[test]
    fn deliveries_beyond_the_limit_are_exhausted() {
        let s = settings();
        assert_eq!(exhausted(3, &s), None);
        assert!(exhausted(4, &s).is_some());
    }
}
