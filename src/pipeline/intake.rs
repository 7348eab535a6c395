//! The intake's stage: one durable consumer on `SOFTPHONE_EVENTS`, worked by
//! one replica at a time (a unit of its own, see [`super::share`]), so lane
//! copies are stored in the order events were published. Here an event is
//! judged and routed: an invalid body is dead-lettered; a valid one is
//! copied, verbatim, to its partition of the lane of the CRM connection its
//! partner uses (and `loaded`/`status_changed` to the softphone lane too),
//! with `Nats-Msg-Id` set from the event id so that a crash between the copy
//! and the ack cannot make two copies. (The lane decodes its copy again, and
//! decoding runs the contract's checks: see [`super::lane`].) Which CRM lane
//! an event goes to is decided here and nowhere else in the pipeline, by
//! whichever replica copies it: a routing change rolled out replica by
//! replica never loses or doubles an event. The softphone lane looks the
//! partner's connection up again, by its own replica's settings and the
//! body's `partnerId`, only to ask it for dispositions when it answers
//! `loaded` (as the `softphone.load` reply does); `softphone-bridge replay`
//! routes kept events afresh.
//!
//! Routing is cheap and ordered: the unit reads its deliveries in order,
//! publishes each copy without waiting ([`Stage::accept`]), and acks the
//! originals in the same order as their copies are stored (every event is
//! entered under one order key), with up to `worker.intake_window` events
//! pulled and not yet settled (it pulls no more). An event whose
//! conversation (or softphone) has an earlier event whose copies are not
//! stored yet is copied at its turn instead, after them: a copy NATS loses
//! (a lanes stream changing leader) and the intake stores again can never
//! land behind its successor. Every delivery it holds, from its pull to its
//! fate, is kept alive with progress acks: `worker.intake_ack_wait` is short.
//!
//! Bad input costs only itself: an event whose `Nats-Msg-Id` cannot be an
//! event id (see [`check_event_id`](crate::contract::check_event_id)), whose
//! body breaks the contract, or whose copy NATS refuses for what it is (too
//! large) is dead-lettered at once, and those behind it go on.
//!
//! The intake pulls on a NATS connection of its own: a message whose headers
//! the client cannot read drops that connection (see [`super::unreadable`]:
//! its unit sweeps for such messages after every reconnect and sets them
//! aside), and only that one. While NATS does not store
//! an event's copies, the intake holds it (and those behind it); after
//! `worker.intake_renew_after` of that it renews its connection, since
//! publish acks can stop reaching a connection that still looks healthy
//! (seen after a cluster node's restart), and goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use tokio_util::sync::CancellationToken;

use tokio::sync::watch;

use super::delivery::Delivery;
use super::outcome::{self, HandleError, Outcome};
use super::unit::{Accepted, Stage, StoredKey, Tried, Wait};
use super::unreadable;
use crate::config::Settings;
use crate::contract::{ContractError, Event, EventKind, LaneTarget, event_subject, lane_header};
use crate::telemetry::metric;

pub(super) struct Intake {
    settings: Arc<Settings>,
    js: jetstream::Context,
    /// Per order key (a conversation, a softphone), whether the copies of
    /// its latest event pulled are stored: a later event of the same key is
    /// copied when its turn comes, after them, never ahead of them (a copy
    /// NATS lost and stored again would otherwise land behind its successor).
    copied: std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Changes on every (re)connect of the intake's own connection: the unit
    /// sweeps for messages the client cannot read then.
    connects: watch::Receiver<u64>,
}

/// A delivery on its way to its fate.
pub(super) struct Job {
    delivery: Delivery,
    /// Where its copies go.
    routes: Routes,
    /// What its first attempt awaits: the copies published when it was
    /// pulled, or why it has none; none when it waited for an earlier event
    /// of its key (its first attempt copies). Later attempts copy again.
    first: Option<Result<Vec<PublishAckFuture>, HandleError>>,
    /// Since when NATS has not stored its copies.
    held_since: Option<tokio::time::Instant>,
    /// Set once its copies are stored (see [`Intake::copied`]).
    stored: Arc<AtomicBool>,
}

/// Where an event's copies go: the CRM connection it is routed to, and each
/// copy's `(subject, message id)`.
#[derive(Default)]
struct Routes {
    connection: String,
    copies: Vec<(String, String)>,
}

/// Every event of the intake is ordered after the one before it.
const IN_ARRIVAL_ORDER: &str = "";

impl Intake {
    pub(super) fn new(
        settings: Arc<Settings>,
        js: jetstream::Context,
        connects: watch::Receiver<u64>,
    ) -> Self {
        Self {
            settings,
            js,
            connects,
            copied: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Enters the event of `key` whose copies `stored` tells: whether the
    /// copies of the key's event before it may still be on their way (then
    /// this one is copied at its turn, not now).
    fn behind_unstored(&self, key: &str, stored: &Arc<AtomicBool>) -> bool {
        let mut copied = self.copied.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = copied.insert(key.to_owned(), Arc::clone(stored));
        // Keys whose copies are stored are forgotten as the window moves on.
        if copied.len() > 4 * self.settings.worker.intake_window.max(64) {
            copied.retain(|_, stored| !stored.load(Ordering::Acquire));
        }
        earlier.is_some_and(|earlier| !earlier.load(Ordering::Acquire))
    }

    /// The lanes an event goes to, with the message id of each copy.
    fn routes(&self, event: &Event, delivery: &Delivery) -> Routes {
        let kind = event.kind();
        let partitions = self.settings.lanes.partitions;
        // The partner the server vouches for, else (one account) the body's.
        let partner = delivery.partner.as_ref().or(event.partner_id());
        let connection = self.settings.connection_for(partner).to_owned();
        let lane = LaneTarget::Crm(&connection);
        let id = &delivery.copy_key;
        let mut copies = vec![(
            lane.subject(lane.partition(event, &delivery.id, partitions), kind),
            id.to_owned(),
        )];
        if matches!(kind, EventKind::Loaded | EventKind::AgentStatusChanged) {
            let lane = LaneTarget::Softphone;
            copies.push((
                lane.subject(lane.partition(event, &delivery.id, partitions), kind),
                format!("{id}:softphones"),
            ));
        }
        Routes { connection, copies }
    }

    /// Publishes the copies without waiting for their acks.
    async fn copy(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
        routes: &Routes,
    ) -> Result<Vec<PublishAckFuture>, HandleError> {
        let mut acks = Vec::with_capacity(routes.copies.len());
        for (subject, id) in &routes.copies {
            let copy = lane_copy(delivery, message.payload.clone(), id, &routes.connection);
            let ack = self
                .js
                .send_publish(subject.clone(), copy)
                .await
                .map_err(|e| outcome::copy_failed(&e))?;
            acks.push(ack);
        }
        Ok(acks)
    }
}

impl Stage for Intake {
    type Job = Job;

    const STAGE: &'static str = "intake";
    const DELIVERY_LIMIT: bool = false;

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
        };
        let stored = Arc::new(AtomicBool::new(false));
        let (routes, first) = match decoded {
            Ok(event) => {
                let routes = self.routes(&event, &delivery);
                let key = crate::contract::order_key(&event, &delivery.id);
                let first = if self.behind_unstored(key, &stored) {
                    None
                } else {
                    Some(self.copy(message, &delivery, &routes).await)
                };
                (routes, first)
            }
            Err(e) => (Routes::default(), Some(Err(e))),
        };
        Ok(Accepted {
            job: Job {
                delivery,
                routes,
                first,
                held_since: None,
                stored,
            },
            key: IN_ARRIVAL_ORDER.to_owned(),
        })
    }

    /// Held while NATS does not store the copies: after a backoff step, and
    /// after `worker.intake_renew_after` of that with a renewed connection.
    async fn ready(&self, job: &mut Job, wait: Wait, stop: &CancellationToken) -> bool {
        let Wait::Held { reason, .. } = wait else {
            return true;
        };
        let since = *job.held_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= self.settings.worker.intake_renew_after {
            tracing::warn!(%reason, held_for_s = since.elapsed().as_secs(), "NATS has not stored the event's copies for worker.intake_renew_after; renewing the intake's connection.");
            if let Err(e) = self.js.client().force_reconnect().await {
                tracing::warn!(error = %e, "Cannot renew the intake's connection.");
            }
            job.held_since = Some(tokio::time::Instant::now());
        } else {
            tracing::warn!(%reason, "Cannot route the event; holding it.");
        }
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.settings.worker.backoff_after(1)) => true,
        }
    }

    /// Once the events before it are settled: its copies stored (the ones
    /// published when it was pulled, else copied again).
    async fn attempt(&self, job: &mut Job, message: &jetstream::Message) -> Tried {
        let copied = match job.first.take() {
            Some(first) => first,
            None => self.copy(message, &job.delivery, &job.routes).await,
        };
        let result = match copied {
            Ok(acks) => stored(acks).await,
            Err(e) => Err(e),
        };
        if result.is_ok() {
            job.stored.store(true, Ordering::Release);
        }
        Tried {
            result,
            answered: false,
        }
    }

    fn delivery(job: &Job) -> &Delivery {
        &job.delivery
    }

    fn delivery_mut(job: &mut Job) -> &mut Delivery {
        &mut job.delivery
    }

    fn span(&self, job: &Job) -> tracing::Span {
        tracing::info_span!(
            "intake",
            subject = %job.delivery.subject,
            event_id = %job.delivery.id,
            delivery = job.delivery.delivered,
        )
    }

    fn sweeps(&self) -> Option<watch::Receiver<u64>> {
        Some(self.connects.clone())
    }

    /// A delivery the intake's previous owner may still hold (or a failed
    /// pull request lost): every event waits its turn behind it (the
    /// intake's one order), and the next event of its conversation is copied
    /// at that turn, after it, never ahead of it when NATS gives it back
    /// (which NATS may do after newer events: the server's redelivery order
    /// is no guarantee, see docs/cluster.md, runs 12 and 18).
    fn stored_key(&self, raw: &unreadable::Raw) -> StoredKey {
        let key = event_subject(&raw.subject)
            .and_then(|subject| Event::decode(subject.kind, &raw.payload).ok())
            .map(|event| crate::contract::order_key(&event, "").to_owned())
            .filter(|key| !key.is_empty());
        if let Some(key) = key {
            let mut copied = self.copied.lock().unwrap_or_else(|p| p.into_inner());
            copied.insert(key, Arc::new(AtomicBool::new(false)));
        }
        StoredKey::Key(IN_ARRIVAL_ORDER.to_owned())
    }
}

/// `event`, unless it names another partner than the one the server vouches
/// for (the account it was published from): then a `partner mismatch`; or,
/// a partner's `loaded` or `agent.status_changed`, it is about another
/// softphone than the login the door stored it with (or came without one):
/// then a `softphone mismatch`. Counted; neither reaches a CRM.
pub(crate) fn vouched(delivery: &Delivery, event: Event) -> Result<Event, HandleError> {
    let Some(vouched) = &delivery.partner else {
        return Ok(event);
    };
    let kind = event.kind().name();
    if let Some(named) = event.partner_id().filter(|named| *named != vouched) {
        metrics::counter!(metric::PARTNER_MISMATCHES, "type" => kind).increment(1);
        return Err(HandleError::PartnerMismatch(format!(
            "the body names partner {named}; it was published from partner {vouched}'s account"
        )));
    }
    let about = match &event {
        Event::Loaded(loaded) => Some(&loaded.softphone_id),
        Event::AgentStatusChanged(changed) => changed.instance_id.as_ref(),
        _ => return Ok(event),
    };
    let mismatch = match (&delivery.login, about) {
        (None, _) => format!(
            "it came on partner {vouched}'s subject without the login the server vouched sent it; a partner's `{kind}` is stored through the door (softphone.p.<partnerId>.vouch.{kind}: re-render the NATS configuration)"
        ),
        (Some(login), Some(about)) if login != about.as_str() => format!(
            "the body is about softphone {about}; it was published by softphone {login}'s login"
        ),
        _ => return Ok(event),
    };
    metrics::counter!(metric::SOFTPHONE_MISMATCHES, "type" => kind).increment(1);
    Err(HandleError::SoftphoneMismatch(mismatch))
}

/// A valid event's copy for a lane: its body verbatim, with the headers that
/// tell the lane what the event was in `SOFTPHONE_EVENTS` (id, subject,
/// sequence, publish time) and the CRM connection it was routed to, stored once in `SOFTPHONE_LANES` per `id` (its
/// `Nats-Msg-Id`) within the duplicate window. `softphone-bridge replay`
/// sends events again through it.
pub(crate) fn lane_copy(
    delivery: &Delivery,
    payload: bytes::Bytes,
    id: &str,
    connection: &str,
) -> PublishMessage {
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
    headers.insert(lane_header::CONNECTION, connection);
    PublishMessage::build()
        .payload(payload)
        .headers(headers)
        .message_id(id)
}

/// Once every copy is stored; else how storing failed. A copy stored before
/// (by a replica that died before it acked the original, or by an attempt
/// whose ack was lost) is logged with the sequence it holds in the lanes.
async fn stored(acks: Vec<PublishAckFuture>) -> Result<(), HandleError> {
    for ack in acks {
        let ack = ack.await.map_err(|e| outcome::copy_failed(&e))?;
        if ack.duplicate {
            tracing::info!(lane_sequence = ack.sequence, "The copy was stored before.");
        }
    }
    Ok(())
}
