//! A lane partition's stage: what the one consume loop ([`super::unit`])
//! does with each event of a CRM connection's lane (or of the softphone
//! lane). Each body is decoded once, when the event is pulled: the decoded
//! event gives its order key and goes to the CRM as it is.
//!
//! An event's own failure is retried here, in process: the event stays in
//! progress, waits its backoff step and is tried again (attempts count from
//! its delivery count on), so the next event of its conversation waits for
//! it instead of overtaking it; at `worker.max_deliveries` it is
//! dead-lettered. While its connection is in trouble the event is held
//! without spending an attempt (see [`super::gate`]), and the lane pauses.

use std::sync::Arc;

use async_nats::jetstream;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::WorkerSettings;
use super::delivery::Delivery;
use super::gate::Gate;
use super::outcome::{self, HandleError, Outcome, decide};
use super::share::Fence;
use super::unit::{Accepted, Stage};
use crate::contract::{ContractError, Event, LaneTarget};
use crate::crm::{CrmError, CrmEvent};

/// What a lane does with each event.
pub(super) trait Work: Send + Sync + 'static {
    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), HandleError>>;
}

pub(super) struct Lane<W> {
    /// `crm-<connection>` or `softphones`, for logs and metrics.
    name: String,
    /// The CRM connection, for a CRM lane.
    connection: Option<String>,
    settings: WorkerSettings,
    work: W,
    /// The connection's health in this replica, shared by its partitions.
    gate: Option<Arc<Gate>>,
    fence: Fence,
}

/// An event of the lane, decoded once.
pub(super) struct Job {
    delivery: Delivery,
    event: Result<CrmEvent, ContractError>,
}

impl<W: Work> Lane<W> {
    pub fn new(
        connection: Option<String>,
        settings: WorkerSettings,
        work: W,
        gate: Option<Arc<Gate>>,
        fence: Fence,
    ) -> Self {
        Self {
            name: connection
                .as_ref()
                .map_or_else(|| "softphones".to_owned(), |c| format!("crm-{c}")),
            connection,
            settings,
            work,
            gate,
            fence,
        }
    }

    fn target(&self) -> LaneTarget<'_> {
        match &self.connection {
            Some(connection) => LaneTarget::Crm(connection),
            None => LaneTarget::Softphone,
        }
    }

    /// The event, decoded once; its body is kept verbatim for the CRM.
    fn decode(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
    ) -> Result<CrmEvent, ContractError> {
        let kind = delivery
            .kind
            .ok_or_else(|| ContractError::UnknownSubject(message.subject.to_string()))?;
        let event = Event::decode(kind, &message.payload)?;
        // Goes to the CRM verbatim inside a JSON document.
        std::str::from_utf8(&message.payload)
            .map_err(|e| ContractError::Json(format!("not UTF-8: {e}")))?;
        Ok(CrmEvent {
            id: delivery.id.clone(),
            event,
            raw: message.payload.clone(),
            published: delivery.published,
            sequence: delivery.sequence,
        })
    }

    /// Handles the event until it has a fate other than being held or
    /// retried; [`Outcome::GiveBack`] when `stop` comes first.
    async fn attempt(
        &self,
        event: &CrmEvent,
        delivery: &mut Delivery,
        stop: &CancellationToken,
    ) -> Outcome {
        let mut held = None;
        let mut probe = None;
        let first_step = self.settings.backoff_after(1);
        // A lane that paused after this event was pulled: wait before calling.
        if let Some(gate) = &self.gate
            && gate.paused()
        {
            held = Some((gate.hold(), gate.answered()));
            tokio::select! {
                _ = stop.cancelled() => return outcome::given_back(),
                turn = gate.turn(first_step) => probe = turn.probe(),
            }
        }
        loop {
            if !self.fence.valid() {
                return outcome::given_back();
            }
            if probe.is_some() {
                tracing::info!(lane = %self.name, "Probing the CRM connection.");
            }
            let result = self.work.handle(event).await;
            let answered_since = self.record(&result, held.as_ref().map(|(_, at)| *at));
            drop(probe.take());
            let fate = decide(result, delivery.attempts, answered_since, &self.settings);
            let wait = match &fate {
                Outcome::Retry { delay, reason } => {
                    tracing::warn!(%reason, attempt = delivery.attempts, retry_in_ms = delay.as_millis() as u64, "Event failed; retrying it here, its conversation waits.");
                    delivery.count(&fate);
                    delivery.attempts += 1;
                    *delay
                }
                Outcome::Hold {
                    reason,
                    retry_after,
                } => {
                    tracing::debug!(%reason, "Connection in trouble; event held.");
                    if let Some(gate) = &self.gate {
                        let answered = gate.answered();
                        match &mut held {
                            Some((_, at)) => *at = answered,
                            None => held = Some((gate.hold(), answered)),
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return outcome::given_back(),
                            turn = gate.turn(retry_after.unwrap_or(first_step)) => probe = turn.probe(),
                        }
                        continue;
                    }
                    retry_after.map_or(first_step, |asked| asked.min(self.settings.max_retry_after))
                }
                _ => return fate,
            };
            tokio::select! {
                _ = stop.cancelled() => return outcome::given_back(),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Tells the gate how the CRM call went; whether the connection had
    /// answered others since `held_at`.
    fn record(&self, result: &Result<(), HandleError>, held_at: Option<u64>) -> bool {
        let Some(gate) = &self.gate else {
            return false;
        };
        let answered_before = gate.answered();
        match result {
            Ok(()) => gate.record(None),
            Err(HandleError::Crm(e)) => gate.record(Some(e)),
            Err(_) => {}
        }
        matches!(result, Err(HandleError::Crm(CrmError::Unavailable { .. })))
            && held_at.is_some_and(|at| answered_before > at)
    }
}

impl<W: Work> Stage for Lane<W> {
    type Job = Job;

    async fn accept(&self, message: &jetstream::Message) -> Result<Accepted<Job>, Outcome> {
        let kind = self
            .target()
            .kind_of(&message.subject)
            .map(|(_, kind)| kind);
        let delivery = Delivery::from_lane(message, kind, &self.name)?;
        let event = self.decode(message, &delivery);
        let key = match &event {
            Ok(event) => self
                .target()
                .order_key(&event.event, &delivery.id)
                .to_owned(),
            // It goes to the dead letters at once, holding nothing back.
            Err(_) => format!("event:{}", delivery.id),
        };
        Ok(Accepted {
            job: Job { delivery, event },
            key,
        })
    }

    async fn work(
        &self,
        job: &mut Job,
        _message: &jetstream::Message,
        stop: &CancellationToken,
    ) -> Outcome {
        if let Some(fate) = outcome::exhausted(job.delivery.delivered, &self.settings) {
            return fate;
        }
        match &job.event {
            Ok(event) => {
                if let Some(conversation) = event.event.conversation_id() {
                    tracing::Span::current().record("conversation_id", conversation.as_str());
                }
                self.attempt(event, &mut job.delivery, stop).await
            }
            Err(e) => decide(
                Err(e.clone().into()),
                job.delivery.attempts,
                false,
                &self.settings,
            ),
        }
    }

    fn delivery(job: &Job) -> &Delivery {
        &job.delivery
    }

    fn span(&self, job: &Job) -> tracing::Span {
        tracing::info_span!(
            "event",
            lane = %self.name,
            subject = %job.delivery.subject,
            event_id = %job.delivery.id,
            conversation_id = tracing::field::Empty,
            delivery = job.delivery.delivered,
        )
    }
}
