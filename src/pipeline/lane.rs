//! A lane partition's stage: what the one consume loop ([`super::unit`])
//! does with each event of a CRM connection's lane (or of the softphone
//! lane). Each body is decoded when the event is pulled, and the decoded
//! event is kept for every attempt: it gives its order key and goes to the
//! CRM as it is. Decoding runs the contract's checks, so an event the
//! intake judged valid is checked a second time here (a body that fails,
//! e.g. under a newer contract mid-upgrade, is dead-lettered at once).
//!
//! One attempt is one CRM call (or the softphone lane's work); the unit
//! retries an event's own failure in process (the event stays in progress,
//! so the next event of its conversation waits for it instead of overtaking
//! it). While its connection is in trouble the event is held without
//! spending an attempt, and waits here for its turn on the lane's
//! [`super::gate`] (which pauses the lane in this replica).

use std::sync::Arc;

use async_nats::jetstream;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::WorkerSettings;
use super::delivery::Delivery;
use super::gate::{Gate, HeldGuard, ProbeGuard};
use super::outcome::{HandleError, Outcome};
use super::unit::{Accepted, Stage, StoredKey, Tried, Wait};
use super::unreadable;
use crate::contract::{ContractError, Event, LaneTarget, lane_header};
use crate::crm::{CrmError, CrmEvent};

/// What a lane does with each event.
pub(super) trait Work: Send + Sync + 'static {
    /// Does the lane's work for `event`, which the intake routed to the CRM
    /// connection `routed_to` (its copy's `Softphone-Connection`, if any).
    fn handle<'a>(
        &'a self,
        event: &'a CrmEvent,
        routed_to: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), HandleError>>;
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
}

/// An event of the lane, decoded when pulled and kept for every attempt.
pub(super) struct Job {
    delivery: Delivery,
    event: Result<CrmEvent, ContractError>,
    /// The CRM connection the intake routed the event to.
    routed_to: Option<String>,
    /// While its connection is in trouble: counted as held, and how many
    /// times the connection had answered when it was last held.
    held: Option<(HeldGuard, u64)>,
    /// Its right to probe the paused connection, for its next attempt.
    probe: Option<ProbeGuard>,
}

impl<W: Work> Lane<W> {
    pub(super) fn new(
        connection: Option<String>,
        settings: WorkerSettings,
        work: W,
        gate: Option<Arc<Gate>>,
    ) -> Self {
        Self {
            name: connection
                .as_ref()
                .map_or_else(|| "softphones".to_owned(), |c| format!("crm-{c}")),
            connection,
            settings,
            work,
            gate,
        }
    }

    fn target(&self) -> LaneTarget<'_> {
        match &self.connection {
            Some(connection) => LaneTarget::Crm(connection),
            None => LaneTarget::Softphone,
        }
    }

    /// The event, decoded; its body is kept verbatim for the CRM.
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
            vouched: delivery.partner.clone(),
        })
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

    const STAGE: &'static str = "lane";
    const DELIVERY_LIMIT: bool = true;

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
        let routed_to = message
            .headers
            .as_ref()
            .and_then(|h| h.get(lane_header::CONNECTION))
            .map(|v| v.as_str().to_owned());
        Ok(Accepted {
            job: Job {
                delivery,
                event,
                routed_to,
                held: None,
                probe: None,
            },
            key,
        })
    }

    /// A lane that paused waits for its turn before calling the CRM (its
    /// probe, or its resumption); a held event waits for its turn on the
    /// gate (the softphone lane, without one: the CRM's `Retry-After`, capped,
    /// else the first backoff step).
    async fn ready(&self, job: &mut Job, wait: Wait, stop: &CancellationToken) -> bool {
        let first_step = self.settings.backoff_after(1);
        let retry_after = match wait {
            Wait::Go => match &self.gate {
                Some(gate) if gate.paused() => None,
                _ => return true,
            },
            Wait::Held { retry_after, .. } => retry_after,
        };
        let Some(gate) = &self.gate else {
            let delay =
                retry_after.map_or(first_step, |asked| asked.min(self.settings.max_retry_after));
            return tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(delay) => true,
            };
        };
        let answered = gate.answered();
        match &mut job.held {
            Some((_, at)) => *at = answered,
            None => job.held = Some((gate.hold(), answered)),
        }
        tokio::select! {
            _ = stop.cancelled() => false,
            turn = gate.turn(retry_after.unwrap_or(first_step)) => {
                job.probe = turn.probe();
                true
            }
        }
    }

    /// Calls the CRM (or the softphone lane's work) once and tells the gate
    /// how it went.
    async fn attempt(&self, job: &mut Job, _message: &jetstream::Message) -> Tried {
        let event = match &job.event {
            Ok(event) => event,
            Err(e) => {
                return Tried {
                    result: Err(e.clone().into()),
                    answered: false,
                };
            }
        };
        if job.probe.is_some() {
            tracing::info!(lane = %self.name, "Probing the CRM connection.");
        }
        let result = self.work.handle(event, job.routed_to.as_deref()).await;
        let answered = self.record(&result, job.held.as_ref().map(|(_, at)| *at));
        job.probe = None;
        Tried { result, answered }
    }

    /// A stored event's conversation (or softphone); an event without one,
    /// or one that does not decode, orders nothing after it.
    fn stored_key(&self, raw: &unreadable::Raw) -> StoredKey {
        let decoded = self
            .target()
            .kind_of(&raw.subject)
            .and_then(|(_, kind)| Event::decode(kind, &raw.payload).ok());
        match decoded
            .as_ref()
            .map(|event| self.target().order_key(event, ""))
        {
            Some(key) if !key.is_empty() => StoredKey::Key(key.to_owned()),
            _ => StoredKey::Alone,
        }
    }

    fn delivery(job: &Job) -> &Delivery {
        &job.delivery
    }

    fn delivery_mut(job: &mut Job) -> &mut Delivery {
        &mut job.delivery
    }

    fn span(&self, job: &Job) -> tracing::Span {
        let conversation = job
            .event
            .as_ref()
            .ok()
            .and_then(|event| event.event.conversation_id())
            .map(|c| c.as_str().to_owned());
        tracing::info_span!(
            "event",
            lane = %self.name,
            subject = %job.delivery.subject,
            event_id = %job.delivery.id,
            conversation_id = conversation.as_deref().unwrap_or_default(),
            delivery = job.delivery.delivered,
        )
    }
}
