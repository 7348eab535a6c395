//! The intake's stage: one durable consumer on `SOFTPHONE_EVENTS`, worked by
//! one replica at a time (a unit of its own, see [`super::share`]), so lane
//! copies are stored in the order events were published. Each event is
//! validated once and routed once: an invalid body is dead-lettered here; a
//! valid one is copied, verbatim, to its partition of the lane of the CRM
//! connection its partner uses (and `loaded`/`status_changed` to the
//! softphone lane too), with `Nats-Msg-Id` set from the event id so that a
//! crash between the copy and the ack cannot make two copies. The routing
//! decision is made once, by whichever replica takes the event: a routing
//! change rolled out replica by replica never loses or doubles an event.
//!
//! Routing is cheap and ordered: the unit reads its deliveries in order,
//! publishes each copy without waiting ([`Stage::accept`]), and acks the
//! originals in the same order as their copies are stored (every event is
//! entered under one order key), with up to `worker.intake_window` events
//! pulled and not yet settled (it pulls no more). Every delivery it holds,
//! from its pull to its fate, is kept alive with progress acks:
//! `worker.intake_ack_wait` is short.
//!
//! Bad input costs only itself: an event whose `Nats-Msg-Id` cannot be an
//! event id (see [`check_event_id`](crate::contract::check_event_id)), whose
//! body breaks the contract, or whose copy NATS refuses for what it is (too
//! large) is dead-lettered at once, and those behind it go on.
//!
//! The intake pulls on a NATS connection of its own: a message whose headers
//! the client cannot read drops that connection (see [`super::unreadable`], which
//! sets such messages aside), and only that one. While NATS does not store
//! an event's copies, the intake holds it (and those behind it); after
//! `worker.intake_renew_after` of that it renews its connection, since
//! publish acks can stop reaching a connection that still looks healthy
//! (seen after a cluster node's restart), and goes on.

use std::sync::Arc;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::outcome::{self, HandleError, Outcome, decide};
use super::unit::{Accepted, Stage};
use crate::config::Settings;
use crate::contract::{ContractError, Event, EventKind, LaneTarget, lane_header};
use crate::metric;

pub(super) struct Intake {
    settings: Arc<Settings>,
    js: jetstream::Context,
}

/// A delivery on its way to its fate.
pub(super) struct Job {
    delivery: Delivery,
    /// Where its copies go: `(subject, message id)`.
    routes: Vec<(String, String)>,
    fate: Fate,
}

enum Fate {
    /// Copies published; their acks are awaited in order.
    Copied(Vec<PublishAckFuture>),
    Decided(Outcome),
}

/// Every event of the intake is ordered after the one before it.
const IN_ARRIVAL_ORDER: &str = "";

impl Intake {
    pub fn new(settings: Arc<Settings>, js: jetstream::Context) -> Self {
        Self { settings, js }
    }

    /// The lanes an event goes to, with the message id of each copy.
    fn routes(&self, event: &Event, delivery: &Delivery) -> Vec<(String, String)> {
        let kind = event.kind();
        let partitions = self.settings.lanes.partitions;
        // The partner the server vouches for, else (one account) the body's.
        let partner = delivery.partner.as_ref().or(event.partner_id());
        let connection = self.settings.connection_for(partner);
        let lane = LaneTarget::Crm(connection);
        let id = &delivery.copy_key;
        let mut routes = vec![(
            lane.subject(lane.partition(event, &delivery.id, partitions), kind),
            id.to_owned(),
        )];
        if matches!(kind, EventKind::Loaded | EventKind::AgentStatusChanged) {
            let lane = LaneTarget::Softphone;
            routes.push((
                lane.subject(lane.partition(event, &delivery.id, partitions), kind),
                format!("{id}:softphones"),
            ));
        }
        routes
    }

    /// Publishes the copies without waiting for their acks.
    async fn copy(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
        routes: &[(String, String)],
    ) -> Fate {
        let mut acks = Vec::with_capacity(routes.len());
        for (subject, id) in routes {
            let copy = lane_copy(delivery, message.payload.clone(), id);
            match self.js.send_publish(subject.clone(), copy).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    return Fate::Decided(decide(
                        Err(outcome::copy_failed(&e)),
                        delivery.delivered,
                        false,
                        &self.settings.worker,
                    ));
                }
            }
        }
        Fate::Copied(acks)
    }
}

impl Stage for Intake {
    type Job = Job;

    /// Validates the event and publishes its copies, in pull order.
    async fn accept(&self, message: &jetstream::Message) -> Result<Accepted<Job>, Outcome> {
        let delivery = Delivery::from_events(message)?;
        // No delivery limit here: routing cannot fail for an event's own
        // reasons but for its id, its body or a copy NATS refuses for what it
        // is, each dead-lettered at once; a redelivery at the intake is
        // NATS's trouble or a replica's crash, and the copy it makes again is
        // dropped as a duplicate.
        let decoded = match (&delivery.invalid_id, delivery.kind) {
            (Some(why), _) => Err(HandleError::EventId(why.clone())),
            (None, Some(kind)) => Event::decode(kind, &message.payload)
                .map_err(HandleError::from)
                .and_then(|event| vouched(&delivery, event)),
            (None, None) => Err(ContractError::UnknownSubject(message.subject.to_string()).into()),
        }
        .map_err(|e| decide(Err(e), delivery.delivered, false, &self.settings.worker));
        let (routes, fate) = match decoded {
            Ok(event) => {
                let routes = self.routes(&event, &delivery);
                let fate = self.copy(message, &delivery, &routes).await;
                (routes, fate)
            }
            Err(fate) => (Vec::new(), Fate::Decided(fate)),
        };
        Ok(Accepted {
            job: Job {
                delivery,
                routes,
                fate,
            },
            key: IN_ARRIVAL_ORDER.to_owned(),
        })
    }

    /// Once the events before it are settled: acks the original once its
    /// copies are stored; holds it (and those behind it) while NATS does not
    /// store them, copying again every backoff step and renewing the
    /// connection after `worker.intake_renew_after`.
    async fn work(
        &self,
        job: &mut Job,
        message: &jetstream::Message,
        stop: &CancellationToken,
    ) -> Outcome {
        let fate = std::mem::replace(&mut job.fate, Fate::Decided(Outcome::Ack));
        let mut fate = match fate {
            Fate::Copied(acks) => stored(acks, &job.delivery, &self.settings).await,
            Fate::Decided(fate) => fate,
        };
        let mut held_since = None;
        while let Outcome::Hold { reason, .. } = &fate {
            let since = *held_since.get_or_insert_with(tokio::time::Instant::now);
            let renew_after = self.settings.worker.intake_renew_after;
            if since.elapsed() >= renew_after {
                tracing::warn!(%reason, held_for_s = since.elapsed().as_secs(), "NATS has not stored the event's copies for worker.intake_renew_after; renewing the intake's connection.");
                if let Err(e) = self.js.client().force_reconnect().await {
                    tracing::warn!(error = %e, "Cannot renew the intake's connection.");
                }
                held_since = Some(tokio::time::Instant::now());
            } else {
                tracing::warn!(%reason, "Cannot route the event; holding it.");
            }
            tokio::select! {
                _ = stop.cancelled() => return outcome::given_back(),
                _ = tokio::time::sleep(self.settings.worker.backoff_after(1)) => {}
            }
            fate = match self.copy(message, &job.delivery, &job.routes).await {
                Fate::Copied(acks) => stored(acks, &job.delivery, &self.settings).await,
                Fate::Decided(fate) => fate,
            };
        }
        fate
    }

    fn delivery(job: &Job) -> &Delivery {
        &job.delivery
    }

    fn span(&self, job: &Job) -> tracing::Span {
        tracing::info_span!(
            "intake",
            subject = %job.delivery.subject,
            event_id = %job.delivery.id,
            delivery = job.delivery.delivered,
        )
    }
}

/// `event`, unless it names another partner than the one the server vouches
/// for (the account it was published from): then a `partner mismatch`,
/// counted, which reaches no CRM.
fn vouched(delivery: &Delivery, event: Event) -> Result<Event, HandleError> {
    match (&delivery.partner, event.partner_id()) {
        (Some(vouched), Some(named)) if vouched != named => {
            metrics::counter!(metric::PARTNER_MISMATCHES, "type" => event.kind().name())
                .increment(1);
            Err(HandleError::PartnerMismatch(format!(
                "the body names partner {named}; it was published from partner {vouched}'s account"
            )))
        }
        _ => Ok(event),
    }
}

/// A valid event's copy for a lane: its body verbatim, with the headers that
/// tell the lane what the event was in `SOFTPHONE_EVENTS` (id, subject,
/// sequence, publish time), stored once in `SOFTPHONE_LANES` per `id` (its
/// `Nats-Msg-Id`) within the duplicate window. `softphone-bridge replay`
/// sends events again through it.
pub(crate) fn lane_copy(delivery: &Delivery, payload: bytes::Bytes, id: &str) -> PublishMessage {
    let published = delivery
        .published
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(lane_header::EVENT_ID, delivery.id.as_str());
    headers.insert(lane_header::SUBJECT, delivery.subject.as_str());
    headers.insert(
        lane_header::SEQUENCE,
        delivery.sequence.to_string().as_str(),
    );
    headers.insert(lane_header::PUBLISHED, published.as_str());
    PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(id)
}

/// `Ack` once every copy is stored, else the held fate.
async fn stored(acks: Vec<PublishAckFuture>, delivery: &Delivery, settings: &Settings) -> Outcome {
    for ack in acks {
        if let Err(e) = ack.await {
            return decide(
                Err(outcome::copy_failed(&e)),
                delivery.delivered,
                false,
                &settings.worker,
            );
        }
    }
    Outcome::Ack
}
