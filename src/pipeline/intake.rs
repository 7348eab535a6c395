//! The intake: one durable consumer on `SOFTPHONE_EVENTS`, shared by every
//! replica. Each event is validated once and routed once: an invalid body is
//! dead-lettered here; a valid one is copied, verbatim, to the lane of the
//! CRM connection its partner uses (and `loaded`/`status_changed` to the
//! softphone lane too), with `Nats-Msg-Id` set from the event id so that a
//! crash between the copy and the ack cannot make two copies. The routing
//! decision is made once, by whichever replica takes the event: a routing
//! change rolled out replica by replica never loses or doubles an event.
//!
//! Routing is cheap and ordered: a replica reads its deliveries in order,
//! publishes each copy without waiting, and acks the originals in the same
//! order as their copies are stored, with up to `worker.intake_window` events
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
//! the client cannot read drops that connection (see [`unreadable`], which
//! sets such messages aside), and only that one. While NATS does not store
//! an event's copies, the intake holds it (and those behind it); after
//! `worker.intake_renew_after` of that it renews its connection, since
//! publish acks can stop reaching a connection that still looks healthy
//! (seen after a cluster node's restart), and goes on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, consumer::PullConsumer, context::PublishAckFuture, message::PublishMessage,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::delivery::{Delivery, unreadable};
use super::outcome::{self, HandleError, Outcome, decide};
use super::pull::{Next, Puller};
use super::unreadable as unreadable_headers;
use crate::config::Settings;
use crate::contract::{ContractError, Event, EventKind, LaneTarget, lane_header};
use crate::metric;

pub(super) struct Intake {
    settings: Arc<Settings>,
    js: jetstream::Context,
    holding: Holding,
}

/// The deliveries the intake holds, from their pull to their fate, by the
/// order it took them in.
#[derive(Default)]
struct Holding(Mutex<(u64, BTreeMap<u64, jetstream::Message>)>);

impl Holding {
    fn hold(&self, message: &jetstream::Message) -> u64 {
        let mut held = self.0.lock().expect("holding lock");
        let (next, messages) = &mut *held;
        *next += 1;
        messages.insert(*next, message.clone());
        *next
    }

    fn release(&self, key: u64) {
        self.0.lock().expect("holding lock").1.remove(&key);
    }

    fn held(&self) -> Vec<jetstream::Message> {
        self.0
            .lock()
            .expect("holding lock")
            .1
            .values()
            .cloned()
            .collect()
    }

    /// Tells the server every third of the ack wait that each held delivery
    /// is still being worked on: one held at the head (NATS slow to store its
    /// copies) must not send those behind it back to the pool.
    async fn keep_alive(&self, ack_wait: Duration, stop: CancellationToken) {
        let every = ack_wait / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            for message in self.held() {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "Cannot extend the ack wait.");
                }
            }
        }
    }
}

/// A delivery on its way to its fate, in arrival order.
struct Routing {
    /// Its key in [`Holding`].
    held: u64,
    /// Its place in `worker.intake_window`, given back with its fate.
    _permit: OwnedSemaphorePermit,
    message: jetstream::Message,
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

impl Intake {
    pub fn new(settings: Arc<Settings>, js: jetstream::Context) -> Arc<Self> {
        Arc::new(Self {
            settings,
            js,
            holding: Holding::default(),
        })
    }

    /// Routes until `shutdown`, then gives back what it pulled and settles
    /// what it routed within the shutdown deadline. Meanwhile sets aside the
    /// events the client cannot read, after each change of `connects` (a
    /// (re)connect of the connection `consumer` pulls on).
    pub async fn run(
        self: Arc<Self>,
        consumer: PullConsumer,
        connects: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        let window = self.settings.worker.intake_window;
        let (routed, in_order) = mpsc::channel(window);
        let abandon = CancellationToken::new();
        let settled = CancellationToken::new();
        let keep_alive = tokio::spawn({
            let intake = Arc::clone(&self);
            let settled = settled.clone();
            async move {
                let ack_wait = intake.settings.worker.intake_ack_wait;
                intake.holding.keep_alive(ack_wait, settled).await;
            }
        });
        let info = consumer.cached_info();
        let sweeper = tokio::spawn(unreadable_headers::sweep_until(
            self.js.clone(),
            info.stream_name.clone(),
            info.name.clone(),
            connects,
            shutdown.clone(),
        ));
        let settler = tokio::spawn(Arc::clone(&self).settle_in_order(in_order, abandon.clone()));
        // The window's permits bound what the intake holds, from its pull to
        // its fate; each travels with its delivery to the settler.
        let mut puller = Puller::new(consumer, window);
        while let Next::Message(message, permit) = puller.next(&shutdown).await {
            let held = self.holding.hold(&message);
            match self.route(held, message, permit).await {
                Some(routing) => {
                    if routed.send(routing).await.is_err() {
                        unreachable!("the settler outlives the router");
                    }
                }
                None => self.holding.release(held),
            }
        }
        drop(routed);
        let mut settler = settler;
        if tokio::time::timeout(self.settings.worker.shutdown_deadline, &mut settler)
            .await
            .is_err()
        {
            tracing::warn!("Shutdown deadline passed; giving back events not routed yet.");
            abandon.cancel();
            let _ = settler.await;
        }
        settled.cancel();
        let _ = keep_alive.await;
        let _ = sweeper.await;
        tracing::info!("Intake stopped.");
    }

    /// Validates the event and publishes its copies; `None` for a delivery
    /// given back at once.
    async fn route(
        &self,
        held: u64,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
    ) -> Option<Routing> {
        let delivery = match Delivery::from_events(&message) {
            Ok(delivery) => delivery,
            Err(fate) => {
                unreadable(&message, fate).await;
                return None;
            }
        };
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
                let fate = self.copy(&message, &delivery, &routes).await;
                (routes, fate)
            }
            Err(fate) => (Vec::new(), Fate::Decided(fate)),
        };
        Some(Routing {
            held,
            _permit: permit,
            message,
            delivery,
            routes,
            fate,
        })
    }

    /// The lanes an event goes to, with the message id of each copy.
    fn routes(&self, event: &Event, delivery: &Delivery) -> Vec<(String, String)> {
        let kind = event.kind();
        let id = &delivery.copy_key;
        // The partner the server vouches for, else (one account) the body's.
        let partner = delivery.partner.as_ref().or(event.partner_id());
        let connection = self.settings.connection_for(partner);
        let mut routes = vec![(LaneTarget::Crm(connection).subject(kind), id.to_owned())];
        if matches!(kind, EventKind::Loaded | EventKind::AgentStatusChanged) {
            routes.push((
                LaneTarget::Softphone.subject(kind),
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

    /// Applies each delivery's fate in arrival order: acks an original once
    /// its copies are stored, holds it (and those behind it) while NATS does
    /// not store them.
    async fn settle_in_order(
        self: Arc<Self>,
        mut in_order: mpsc::Receiver<Routing>,
        abandon: CancellationToken,
    ) {
        while let Some(Routing {
            held,
            _permit,
            message,
            delivery,
            routes,
            fate,
        }) = in_order.recv().await
        {
            // Kept alive by `Holding::keep_alive` until here.
            tokio::select! {
                () = self.settle(&message, &delivery, &routes, fate) => {}
                _ = abandon.cancelled() => {
                    let _ = delivery.apply(&self.js, &message, &outcome::abandoned()).await;
                }
            }
            self.holding.release(held);
        }
    }

    async fn settle(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
        routes: &[(String, String)],
        fate: Fate,
    ) {
        let mut fate = match fate {
            Fate::Copied(acks) => stored(acks, delivery, &self.settings).await,
            Fate::Decided(fate) => fate,
        };
        let mut held_since = None;
        loop {
            if let Outcome::Hold { reason, .. } = &fate {
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
                tokio::time::sleep(self.settings.worker.backoff_after(1)).await;
                fate = match self.copy(message, delivery, routes).await {
                    Fate::Copied(acks) => stored(acks, delivery, &self.settings).await,
                    Fate::Decided(fate) => fate,
                };
                continue;
            }
            // A fate that could not be carried out (the dead-letter stream
            // did not take the copy) is carried out again, never replaced:
            // an event refused for itself is not copied after all.
            while let Err(held) = delivery.apply(&self.js, message, &fate).await {
                if let Outcome::Hold { reason, .. } = &held {
                    tracing::warn!(%reason, "Cannot carry out the event's fate; holding it.");
                }
                tokio::time::sleep(self.settings.worker.backoff_after(1)).await;
            }
            return;
        }
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
