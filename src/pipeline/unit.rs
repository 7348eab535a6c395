//! The one consume loop. A unit is one durable consumer worked by this
//! replica (the intake, or one partition of a lane) while it holds it; the
//! [`Stage`] says what one attempt at a message is and how a held one waits
//! for its turn, [`outcome`] decides every fate, and the unit carries out
//! every one, for every stage alike:
//!
//! - pulls no more than its room (each message travels with its permit);
//! - reads each delivery in pull order ([`Stage::accept`]) and enters it
//!   behind the last one with the same order key ([`Sequencer`]): a
//!   conversation's events are worked one at a time, in stream order;
//! - keeps every delivery it holds alive with progress acks, while this
//!   replica's membership is valid ([`Fence`]);
//! - attempts each job, has [`outcome::decide`] its fate and carries it out:
//!   a retry waits its delay here (the event stays in progress, its
//!   conversation waits), a hold waits for the stage's turn (a paused lane's
//!   probe, the intake's NATS trouble), an ack or a dead letter goes to
//!   [`Delivery::apply_to`], tried again while NATS does not take it;
//! - sets aside, through the same fates, the messages of its consumer the
//!   client cannot read, when the stage sweeps for them (the intake, see
//!   [`super::unreadable`]);
//! - when asked to stop (shutdown, or the partition moving): pulls no more,
//!   gives back at once what has not begun (and, in a lane, what waits for a
//!   retry or a paused connection), lets what is under way finish within the
//!   shutdown deadline, and gives back what is left, in stream order, so
//!   whoever works the partition next gets them first.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::WorkerSettings;
use super::delivery::{Delivery, Original};
use super::outcome::{self, HandleError, Outcome};
use super::pull::{Connects, Next, Puller};
use super::sequencer::{Sequencer, Turn};
use super::share::{Ended, Fence};
use super::unreadable;
use crate::telemetry::metric;

/// What a unit does with each message of its consumer.
pub(super) trait Stage: Send + Sync + 'static {
    type Job: Send + Sync + 'static;

    /// `intake` or `lane`, for the metrics of a delivery without metadata.
    const STAGE: &'static str;
    /// Whether a delivery past `worker.max_deliveries` is dead-lettered
    /// without another attempt (a lane; the intake has no such limit:
    /// routing fails only for NATS's trouble or an invalid body).
    const DELIVERY_LIMIT: bool;

    /// Reads a delivery, in pull order: its job and order key, or the fate
    /// it has without one (a delivery without metadata).
    fn accept(
        &self,
        message: &jetstream::Message,
    ) -> impl Future<Output = Result<Accepted<Self::Job>, Outcome>> + Send;

    /// Waits until the job may be attempted; `false` when `stop` came first.
    fn ready<'a>(
        &'a self,
        job: &'a mut Self::Job,
        wait: Wait,
        stop: &'a CancellationToken,
    ) -> impl Future<Output = bool> + Send + 'a;

    /// One attempt at the job.
    fn attempt<'a>(
        &'a self,
        job: &'a mut Self::Job,
        message: &'a jetstream::Message,
    ) -> impl Future<Output = Tried> + Send + 'a;

    /// The delivery a job's fate is applied to.
    fn delivery(job: &Self::Job) -> &Delivery;

    fn delivery_mut(job: &mut Self::Job) -> &mut Delivery;

    /// The span the job is worked in.
    fn span(&self, job: &Self::Job) -> tracing::Span;

    /// The order key of a message read from the stream (the deliveries a
    /// previous owner may still hold, or a failed pull request lost, see
    /// [`Unit::take_over`]).
    fn stored_key(&self, raw: &unreadable::Raw) -> StoredKey;

    /// What wakes the unit to sweep its consumer for messages the client
    /// cannot read (the intake's (re)connects); `None`: no sweep.
    fn sweeps(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// A delivery read by its stage.
pub(super) struct Accepted<J> {
    pub job: J,
    /// What orders it: the next message with the same key waits for it.
    pub key: String,
}

/// A stored message's order key, as its stage reads it.
pub(super) enum StoredKey {
    /// Orders no other message (an event of its own).
    Alone,
    Key(String),
}

/// What a job waits for before its next attempt.
pub(super) enum Wait {
    /// Nothing but the stage's own (a paused lane): its first attempt, or
    /// the next one after a retry's delay.
    Go,
    /// Its turn after a hold (the connection's, or NATS's, trouble).
    Held {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// How one attempt went.
pub(super) struct Tried {
    pub result: Result<(), HandleError>,
    /// Whether the job's connection answered other events since the job was
    /// last held (its failures are then its own).
    pub answered: bool,
}

pub(super) struct Unit<S> {
    pub name: String,
    pub stage: Arc<S>,
    pub js: jetstream::Context,
    /// Messages worked at once, at most.
    pub room: usize,
    pub ack_wait: Duration,
    /// What fates are decided with (and `shutdown_deadline`).
    pub settings: WorkerSettings,
    /// How long giving back what is left may take (a quarter of the lease).
    pub give_back_within: Duration,
    pub fence: Fence,
}

impl<S: Stage> Unit<S> {
    /// Works `consumer` until `stop`, then settles or gives back everything
    /// it pulled. Each conversation a previous owner may still hold an event
    /// of (or had given back) waits for it first (see [`Unit::take_over`]).
    pub(super) async fn run(self, mut consumer: PullConsumer, stop: CancellationToken) -> Ended {
        let unit = Arc::new(self);
        let sequencer = Arc::new(Sequencer::default());
        let reserved = Arc::new(Reserved::default());
        match unit.take_over(&mut consumer, &sequencer, &stop).await {
            Out::Kept(found) => reserved.keep(found),
            Out::TooMany => {
                tracing::warn!(unit = %unit.name, wait_ms = unit.ack_wait.as_millis() as u64, "Too many deliveries out to read; waiting out the ack wait before the first pull.");
                if !pause(unit.ack_wait, &stop).await {
                    // Stopped (or moved) before the previous owner's events
                    // came back: not released clean.
                    return Ended { clean: false };
                }
            }
            // Stopped before what is out was read: not released clean.
            Out::Stopped => return Ended { clean: false },
        }
        let holding = Arc::new(Holding::default());
        let settled = CancellationToken::new();
        let keep_alive = tokio::spawn(Arc::clone(&holding).keep_alive(
            unit.ack_wait,
            unit.fence.clone(),
            settled.clone(),
        ));
        let tracker = TaskTracker::new();
        if let Some(connects) = unit.stage.sweeps() {
            let info = consumer.cached_info();
            let (stream, name) = (info.stream_name.clone(), info.name.clone());
            tracker.spawn(Arc::clone(&unit).set_aside_until(stream, name, connects, stop.clone()));
        }
        if !reserved.is_empty() {
            tracker.spawn(resolve(
                unit.js.clone(),
                consumer.clone(),
                Arc::clone(&reserved),
                stop.clone(),
            ));
        }
        let abandon = CancellationToken::new();
        let given_back: Arc<Mutex<Vec<jetstream::Message>>> = Arc::default();
        let mut scanned = consumer.clone();
        // The intake pulls on a connection of its own, whose connects it watches.
        let connects = match unit.stage.sweeps() {
            Some(connects) => Connects::Watched(connects),
            None => Connects::Client(unit.js.client()),
        };
        let mut puller = Puller::new(consumer, connects, unit.room, unit.fence.clone());
        // Whether the last pull request ended before the unit stopped: if
        // not, it may still deliver, and the unit is not released clean.
        let pull_ended: bool;
        // Whether a failed pull request may have lost deliveries that keep
        // no place here: then the unit is not released clean either (its
        // next owner reads what is out before it pulls).
        let mut lost_unknown = false;
        // In-flight work gets `shutdown_deadline` from the stop, the time
        // spent reading the open pull request to its end included.
        let stopped_at: tokio::time::Instant;
        let room = puller.room();
        loop {
            let (message, permit) = match puller.next(&stop).await {
                Next::Message(message, permit) => (message, permit),
                Next::Shutdown(delivered, ended, at) => {
                    stopped_at = at;
                    given_back.lock().expect("lock").extend(delivered);
                    pull_ended = ended;
                    break;
                }
                Next::Failed => {
                    // Deliveries lost in transit keep their places, as a
                    // dead owner's do: no newer event of their conversation
                    // overtakes them when the server gives them back.
                    let was_empty = reserved.is_empty();
                    match unit
                        .missing(&mut scanned, &sequencer, Some(&holding), &stop)
                        .await
                    {
                        Out::Kept(lost) if !lost.is_empty() => {
                            tracing::warn!(unit = %unit.name, lost = lost.len(), "Deliveries lost with a failed pull request keep their places until they come back.");
                            reserved.keep(lost);
                            if was_empty {
                                tracker.spawn(resolve(
                                    unit.js.clone(),
                                    scanned.clone(),
                                    Arc::clone(&reserved),
                                    stop.clone(),
                                ));
                            }
                        }
                        Out::Kept(_) => {}
                        Out::TooMany => {
                            lost_unknown = true;
                            tracing::warn!(unit = %unit.name, "Too many deliveries out to tell which ones a failed pull request lost; they come back after the ack wait.");
                        }
                        // The loop sees the stop next.
                        Out::Stopped => lost_unknown = true,
                    }
                    continue;
                }
            };
            let Accepted { mut job, key } = match unit.stage.accept(&message).await {
                Ok(accepted) => accepted,
                Err(fate) => {
                    tracing::error!(subject = %message.subject, ?fate, "Delivery without JetStream metadata.");
                    let delivery = Delivery::unread(&message, S::STAGE);
                    unit.carry_out(&delivery, &Original::Delivered(&message), fate, &stop)
                        .await;
                    continue;
                }
            };
            let sequence = S::delivery(&job).consumer_key;
            holding.hold(sequence, &message);
            // A delivery a previous owner held takes the place kept for
            // it. While its conversation has other places kept (NATS may
            // give newer events back first), or events waiting behind them,
            // it waits without room, as a newer event does: it gives its
            // room back while it waits (the consumer's `max_ack_pending`
            // bounds those), so the older ones can be pulled when they come
            // back.
            let mut turn = reserved
                .take(sequence)
                .unwrap_or_else(|| sequencer.enter(&key));
            let (mut permit, mut roomless) = match Reserved::roomless(&reserved, &key) {
                Some(roomless) => (None, Some(roomless)),
                None => (Some(permit), None),
            };
            let span = unit.stage.span(&job);
            let (unit, stop, abandon, holding, given_back, room) = (
                Arc::clone(&unit),
                stop.clone(),
                abandon.clone(),
                Arc::clone(&holding),
                Arc::clone(&given_back),
                Arc::clone(&room),
            );
            tracker.spawn(
                async move {
                    let in_flight = metrics::gauge!(metric::IN_FLIGHT);
                    in_flight.increment(1.0);
                    let worked = async {
                        // Not begun when the unit stops: given back, and so
                        // is every later event of its key.
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => return outcome::given_back(),
                            () = turn.wait() => {}
                        }
                        if permit.is_none() {
                            tokio::select! {
                                biased;
                                _ = stop.cancelled() => return outcome::given_back(),
                                taken = room.acquire_owned() => permit = taken.ok(),
                            }
                            roomless = None;
                        }
                        unit.work(&mut job, &message, &stop).await
                    };
                    let fate = tokio::select! {
                        fate = worked => fate,
                        _ = abandon.cancelled() => outcome::given_back(),
                    };
                    if matches!(fate, Outcome::GiveBack { .. }) {
                        S::delivery(&job).count(&fate);
                        given_back.lock().expect("lock").push(message);
                    }
                    holding.release(sequence);
                    in_flight.decrement(1.0);
                    drop(roomless);
                    drop(turn);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        tracker.close();
        if tokio::time::timeout_at(stopped_at + unit.settings.shutdown_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(unit = %unit.name, in_flight = tracker.len(), "Shutdown deadline passed; giving back events still in flight.");
            abandon.cancel();
            tracker.wait().await;
        }
        settled.cancel();
        let _ = keep_alive.await;
        let mut back = std::mem::take(&mut *given_back.lock().expect("lock"));
        // Places still kept for a previous owner's deliveries: those come
        // back only after their ack wait, and the release waits it out (the
        // next owner reads what is out before it pulls in any case).
        let kept = !reserved.is_empty();
        let clean = unit.give_back(&mut back).await && pull_ended && !kept && !lost_unknown;
        tracing::info!(unit = %unit.name, given_back = back.len(), kept, clean, "Stopped working the consumer.");
        Ended { clean }
    }

    /// Taking `consumer` over from whoever had it before (a dead owner, or
    /// one that released it): the deliveries still out are the consumer's
    /// between its ack floor and the last sequence it delivered (none is
    /// delivered to a dead owner after its lease lapsed, see
    /// [`super::pull`]). Read from the stream, each keeps a place in its
    /// order key's line ([`Sequencer`]) until it comes back or is known
    /// settled (the ack floor passed it), so that no newer event of its
    /// conversation overtakes it, while every other conversation goes on at
    /// once. Nothing is pulled before they are read: NATS's redelivery order
    /// is no guarantee (what was given back comes before what outlived its
    /// ack wait, see docs/cluster.md, runs 12 and 18), so while NATS does
    /// not answer the unit asks again.
    async fn take_over(
        &self,
        consumer: &mut PullConsumer,
        sequencer: &Arc<Sequencer>,
        stop: &CancellationToken,
    ) -> Out {
        self.missing(consumer, sequencer, None, stop).await
    }

    /// The deliveries of `consumer` out (between its ack floor and the last
    /// sequence it delivered) that this unit neither `holds` nor settled
    /// lately, each with a place kept in its order key's line; asked again
    /// after a backoff step while NATS does not answer, until `stop`.
    async fn missing(
        &self,
        consumer: &mut PullConsumer,
        sequencer: &Arc<Sequencer>,
        holds: Option<&Holding>,
        stop: &CancellationToken,
    ) -> Out {
        let mut lagging = 0;
        loop {
            let read = match consumer.info().await {
                Ok(info) => {
                    let info = info.clone();
                    // A consumer whose leader just changed can answer with
                    // a state older than what it delivered here (chaos run
                    // 20): its deliveries out would be missed. Asked again
                    // a few times (a consumer made anew never catches up).
                    let held = holds.and_then(Holding::highest);
                    match held.filter(|held| info.delivered.stream_sequence < *held) {
                        Some(held) if lagging < LAGGING_READS => {
                            lagging += 1;
                            tracing::warn!(unit = %self.name, delivered = info.delivered.stream_sequence, held, "The consumer's state lags what this replica holds; asking again.");
                            None
                        }
                        _ => Some(self.read_out(&info, sequencer, holds).await),
                    }
                }
                Err(e) => Some(Err(e.into())),
            };
            match read {
                Some(Ok(out)) => return out,
                Some(Err(e)) => {
                    tracing::warn!(unit = %self.name, error = %e, "Cannot read the deliveries out; asking again before pulling.");
                }
                None => {}
            }
            if !pause(self.settings.backoff_after(1), stop).await {
                return Out::Stopped;
            }
        }
    }

    /// One reading for [`Unit::missing`], of the consumer as `info` says it
    /// is. Places are kept in `sequencer` as they are read; given up
    /// (dropped) unless kept.
    async fn read_out(
        &self,
        info: &jetstream::consumer::Info,
        sequencer: &Arc<Sequencer>,
        holds: Option<&Holding>,
    ) -> Result<Out, async_nats::Error> {
        let known = |sequence| holds.is_some_and(|h| h.knows(sequence));
        let mut reserved = BTreeMap::new();
        let filter = info.config.filter_subject.clone();
        let last = info.delivered.stream_sequence;
        let mut next = info.ack_floor.stream_sequence + 1;
        let mut read = 0;
        while next <= last {
            let raw = match unreadable::next_raw(&self.js, &info.stream_name, next, &filter).await?
            {
                Some(raw) if raw.sequence <= last => raw,
                _ => break,
            };
            read += 1;
            if read > self.take_over_reads() {
                return Ok(Out::TooMany);
            }
            next = raw.sequence + 1;
            if known(raw.sequence) {
                continue;
            }
            match self.stage.stored_key(&raw) {
                StoredKey::Alone => {}
                StoredKey::Key(key) => {
                    let turn = sequencer.enter(&key);
                    reserved.insert(raw.sequence, (key, turn));
                }
            }
        }
        if reserved.is_empty() {
            tracing::info!(unit = %self.name, "Nothing out to wait for; pulling at once.");
        } else {
            tracing::info!(unit = %self.name, unacknowledged = info.num_ack_pending, kept = reserved.len(), "Pulling at once; the conversations the previous owner may hold an event of wait for it.");
        }
        Ok(Out::Kept(reserved))
    }

    /// How many of the consumer's deliveries a reading of what is out reads
    /// from the stream at most (else the unit waits out the ack wait before
    /// its first pull, which is no guarantee of order: chaos run 23): four
    /// times what the consumer may have out, which a take-over after
    /// another's take-over reaches (the events waiting without room count).
    fn take_over_reads(&self) -> usize {
        let out = usize::try_from(self.settings.max_ack_pending).unwrap_or(0);
        TAKE_OVER_READS.max(out.saturating_mul(4))
    }

    /// Works a job until its fate is carried out: attempts it, has
    /// [`outcome::decide`] what became of it, and waits a retry's delay or a
    /// hold's turn before the next attempt. Given back when `stop` comes
    /// first, or when this replica's membership lapsed.
    async fn work(
        &self,
        job: &mut S::Job,
        message: &jetstream::Message,
        stop: &CancellationToken,
    ) -> Outcome {
        let original = Original::Delivered(message);
        if S::DELIVERY_LIMIT
            && let Some(fate) = outcome::exhausted(S::delivery(job).delivered, &self.settings)
        {
            return self
                .carry_out(S::delivery(job), &original, fate, stop)
                .await;
        }
        let mut wait = Wait::Go;
        loop {
            if !self.stage.ready(job, wait, stop).await || !self.fence.valid() {
                return outcome::given_back();
            }
            let Tried { result, answered } = self.stage.attempt(job, message).await;
            let delivery = S::delivery_mut(job);
            let fate = outcome::decide(result, delivery.attempts, answered, &self.settings);
            wait = match fate {
                Outcome::Retry { delay, ref reason } => {
                    tracing::warn!(%reason, attempt = delivery.attempts, retry_in_ms = delay.as_millis() as u64, "Event failed; retrying it here, its conversation waits.");
                    delivery.count(&fate);
                    delivery.attempts += 1;
                    if !pause(delay, stop).await {
                        return outcome::given_back();
                    }
                    Wait::Go
                }
                Outcome::Hold {
                    reason,
                    retry_after,
                } => {
                    tracing::debug!(%reason, "Event held.");
                    Wait::Held {
                        reason,
                        retry_after,
                    }
                }
                Outcome::GiveBack { .. } => return fate,
                Outcome::Ack | Outcome::DeadLetter { .. } => {
                    return self.carry_out(delivery, &original, fate, stop).await;
                }
            };
        }
    }

    /// Carries out a fate that ends a message (ack, dead letter, a give-back
    /// of a delivery without metadata); one NATS could not carry out (a dead
    /// letter not stored) is held and carried out again after a backoff
    /// step, never replaced by the hold that says so, until it is or the
    /// unit stops.
    async fn carry_out(
        &self,
        delivery: &Delivery,
        original: &Original<'_>,
        fate: Outcome,
        stop: &CancellationToken,
    ) -> Outcome {
        loop {
            if !self.fence.valid() && !matches!(fate, Outcome::Ack) {
                // Declared dead, perhaps: another replica may work the
                // partition now. Only an ack is harmless.
                tracing::warn!(unit = %self.name, "Membership not renewed; leaving the event to the ack wait.");
                return outcome::given_back();
            }
            match delivery.apply_to(&self.js, original, &fate).await {
                Ok(()) => return fate,
                Err(Outcome::Hold { reason, .. }) => {
                    tracing::warn!(%reason, "Cannot carry out the event's fate; holding it.");
                }
                Err(_) => {}
            }
            if !pause(self.settings.backoff_after(1), stop).await {
                return outcome::given_back();
            }
        }
    }

    /// Sweeps the consumer for messages the client cannot read when the unit
    /// starts and after each (re)connect of its connection, until `stop`,
    /// and carries out each one's fate (dead-lettered, then deleted from the
    /// stream); one not carried out stays for the next sweep.
    async fn set_aside_until(
        self: Arc<Self>,
        stream: String,
        consumer: String,
        mut connects: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        // The sweep below covers the connects so far.
        connects.mark_unchanged();
        loop {
            let found = tokio::select! {
                _ = stop.cancelled() => return,
                found = unreadable::find(&self.js, &stream, &consumer) => found,
            };
            match found {
                Ok((stream, found)) => {
                    for aside in found {
                        let original = Original::Stored {
                            stream: &stream,
                            sequence: aside.delivery.sequence,
                            body: aside.body,
                        };
                        let span = tracing::warn_span!("set_aside", sequence = aside.delivery.sequence, subject = %aside.delivery.subject);
                        let fate = self
                            .carry_out(&aside.delivery, &original, aside.fate, &stop)
                            .instrument(span)
                            .await;
                        if matches!(fate, Outcome::GiveBack { .. }) {
                            tracing::warn!(
                                sequence = aside.delivery.sequence,
                                "An event whose headers the client cannot read stays until the next sweep."
                            );
                        } else {
                            tracing::warn!(sequence = aside.delivery.sequence, subject = %aside.delivery.subject, "Set aside an event whose headers the client cannot read.");
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "Cannot look for events whose headers the client cannot read; looking again after the next reconnect."
                ),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = connects.changed() => {
                    if changed.is_err() {
                        // The client is gone, and its deliveries with it.
                        return;
                    }
                }
            }
        }
    }

    /// Gives back `messages` in stream order: a nak each, on the connection
    /// each came on (the server takes them in that order), the last one
    /// confirmed by the server (a consumer's acks are processed in order, so
    /// the ones before it were too). Whether it was, within a quarter of the
    /// lease (NATS slow or unreachable: they come back after the ack wait
    /// instead, and the next owner waits for them).
    async fn give_back(&self, messages: &mut [jetstream::Message]) -> bool {
        messages.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
        if !self.fence.valid() {
            // Another replica may work the partition already: a nak now
            // could hand it an earlier event after a later one.
            return messages.is_empty();
        }
        let Some((last, before)) = messages.split_last() else {
            return true;
        };
        let naks = async {
            for message in before {
                if message.ack_with(AckKind::Nak(None)).await.is_err() {
                    return false;
                }
            }
            confirmed_nak(last).await
        };
        tokio::time::timeout(self.give_back_within, naks)
            .await
            .unwrap_or(false)
    }
}

/// Deliveries a take-over reads from the stream at least before it gives
/// up (see [`Unit::take_over_reads`]).
const TAKE_OVER_READS: usize = 4096;

/// How many times a unit asks again for a consumer's state that lags what
/// it holds before it goes on with it.
const LAGGING_READS: u32 = 10;

/// What reading a consumer's deliveries out found.
enum Out {
    /// The ones to wait for, each with its place kept, by stream sequence.
    Kept(BTreeMap<u64, (String, Turn)>),
    /// More than [`Unit::take_over_reads`] to read.
    TooMany,
    /// Asked to stop before NATS answered.
    Stopped,
}
/// How often a take-over looks for the ack floor passing the places it keeps.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// The places a take-over keeps, by stream sequence, for the deliveries a
/// previous owner may still hold (or a failed pull request lost), with their
/// order keys; and, per order key, the places and the events waiting without
/// room behind them. Any event of a key with any of those (one that takes
/// its place too) waits without room, so no event that holds room ever
/// waits behind one that has none (the room cannot fill with events waiting
/// for one that waits for room).
#[derive(Default)]
struct Reserved(Mutex<Places>);

#[derive(Default)]
struct Places {
    kept: BTreeMap<u64, (String, Turn)>,
    roomless: std::collections::HashMap<String, usize>,
}

impl Places {
    fn leave(&mut self, key: &str) {
        if let Some(count) = self.roomless.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                self.roomless.remove(key);
            }
        }
    }
}

impl Reserved {
    fn lock(&self) -> std::sync::MutexGuard<'_, Places> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, kept: BTreeMap<u64, (String, Turn)>) {
        let mut places = self.lock();
        for (key, _) in kept.values() {
            *places.roomless.entry(key.clone()).or_default() += 1;
        }
        places.kept.extend(kept);
    }

    fn is_empty(&self) -> bool {
        self.lock().kept.is_empty()
    }

    fn lowest(&self) -> Option<u64> {
        self.lock().kept.keys().next().copied()
    }

    /// The place kept for the delivery of `sequence`, which came back.
    fn take(&self, sequence: u64) -> Option<Turn> {
        let mut places = self.lock();
        let (key, turn) = places.kept.remove(&sequence)?;
        places.leave(&key);
        Some(turn)
    }

    /// Whether an event with `key` waits without room: while it does, the
    /// guard counts it.
    fn roomless(this: &Arc<Self>, key: &str) -> Option<Roomless> {
        let mut places = this.lock();
        let count = places.roomless.get_mut(key)?;
        *count += 1;
        Some(Roomless(Arc::clone(this), key.to_owned()))
    }

    /// Gives up the places at or below the ack floor: settled by the dead
    /// owner, they never come back.
    fn settled_up_to(&self, floor: u64) {
        self.gone_below(floor.saturating_add(1));
    }

    /// Gives up the places below `sequence`, whose messages are gone.
    fn gone_below(&self, sequence: u64) {
        let mut places = self.lock();
        let above = places.kept.split_off(&sequence);
        let settled = std::mem::replace(&mut places.kept, above);
        for (key, _) in settled.values() {
            places.leave(key);
        }
    }
}

/// An event waiting without room, counted until dropped.
struct Roomless(Arc<Reserved>, String);

impl Drop for Roomless {
    fn drop(&mut self) {
        self.0.lock().leave(&self.1);
    }
}

/// Watches the ack floor of a consumer taken over until every place kept is
/// given up or taken, or `stop`. A place is also given up once its message is no longer in the stream
/// (deleted, or aged out): it cannot come back.
async fn resolve(
    js: jetstream::Context,
    mut consumer: PullConsumer,
    reserved: Arc<Reserved>,
    stop: CancellationToken,
) {
    let info = consumer.cached_info();
    let (stream, filter) = (info.stream_name.clone(), info.config.filter_subject.clone());
    while let Some(lowest) = reserved.lowest() {
        if !pause(RESOLVE_EVERY, &stop).await {
            return;
        }
        match consumer.info().await {
            Ok(info) => reserved.settled_up_to(info.ack_floor.stream_sequence),
            Err(e) => tracing::debug!(error = %e, "Cannot read the consumer's ack floor."),
        }
        match unreadable::next_raw(&js, &stream, lowest, &filter).await {
            Ok(Some(raw)) => reserved.gone_below(raw.sequence),
            Ok(None) => reserved.gone_below(u64::MAX),
            Err(e) => tracing::debug!(error = %e, "Cannot read the stream."),
        }
    }
}

/// Waits `delay`; `false` when `stop` came first.
async fn pause(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Naks `message` on its own connection and waits for the server's answer.
async fn confirmed_nak(message: &jetstream::Message) -> bool {
    let Some(reply) = message.reply.clone() else {
        return false;
    };
    match message.context.client().request(reply, "-NAK".into()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "The server did not confirm the events given back; they return after the ack wait.");
            false
        }
    }
}

/// The deliveries a unit holds, from their pull to their fate, by sequence,
/// and the latest it settled.
#[derive(Default)]
struct Holding(Mutex<Held>);

#[derive(Default)]
struct Held {
    messages: BTreeMap<u64, jetstream::Message>,
    /// The last [`SETTLED_REMEMBERED`] sequences settled here, which a
    /// failed pull request cannot have lost.
    settled: std::collections::BTreeSet<u64>,
}

/// How many settled sequences a unit remembers: more than a consumer has
/// out at once.
const SETTLED_REMEMBERED: usize = 4096;

impl Holding {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(&self, sequence: u64, message: &jetstream::Message) {
        self.lock().messages.insert(sequence, message.clone());
    }

    fn release(&self, sequence: u64) {
        let mut held = self.lock();
        held.messages.remove(&sequence);
        held.settled.insert(sequence);
        if held.settled.len() > SETTLED_REMEMBERED {
            held.settled.pop_first();
        }
    }

    /// The highest sequence delivered here, held or settled lately.
    fn highest(&self) -> Option<u64> {
        let held = self.lock();
        let held_last = held.messages.last_key_value().map(|(s, _)| *s);
        held_last.max(held.settled.last().copied())
    }

    /// Whether the delivery of `sequence` reached this unit: held, or settled lately.
    fn knows(&self, sequence: u64) -> bool {
        let held = self.lock();
        held.messages.contains_key(&sequence) || held.settled.contains(&sequence)
    }

    fn held(&self) -> Vec<jetstream::Message> {
        self.lock().messages.values().cloned().collect()
    }

    /// Tells the server every third of the ack wait that each held delivery
    /// is still being worked on (a slow CRM, a held or waiting event is not
    /// a crash), while this replica is a member: one that may have been
    /// declared dead lets its deliveries go back after the ack wait.
    async fn keep_alive(
        self: Arc<Self>,
        ack_wait: Duration,
        fence: Fence,
        stop: CancellationToken,
    ) {
        let every = ack_wait / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !fence.valid() {
                continue;
            }
            for message in self.held() {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "Cannot extend the ack wait.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn an_event_back_before_an_older_one_of_its_conversation_waits_without_room() {
        let sequencer = Arc::new(Sequencer::default());
        let reserved = Arc::new(Reserved::default());
        reserved.keep(BTreeMap::from([
            (3, ("a".to_owned(), sequencer.enter("a"))),
            (4, ("a".to_owned(), sequencer.enter("a"))),
        ]));
        // NATS gives 4 back first (it was given back; 3 outlived its ack
        // wait): 4 takes its place, and must not hold room while 3 is out,
        // or a room full of such events could never pull 3.
        let mut four = reserved.take(4).expect("its place");
        let four_waits = Reserved::roomless(&reserved, "a").expect("3 is still out");
        let mut three = reserved.take(3).expect("its place");
        assert!(
            Reserved::roomless(&reserved, "a").is_some(),
            "4 waits without room behind it"
        );
        assert!(three.wait().now_or_never().is_some(), "3 goes first");
        assert!(four.wait().now_or_never().is_none());
        drop(three);
        assert!(four.wait().now_or_never().is_some());
        drop(four_waits);
        assert!(Reserved::roomless(&reserved, "a").is_none(), "none left");
    }

    #[test]
    fn events_behind_a_kept_place_wait_without_room_until_none_is_left() {
        let sequencer = Arc::new(Sequencer::default());
        let reserved = Arc::new(Reserved::default());
        reserved.keep(BTreeMap::from([
            (5, ("a".to_owned(), sequencer.enter("a"))),
            (7, ("b".to_owned(), sequencer.enter("b"))),
        ]));
        assert!(
            Reserved::roomless(&reserved, "c").is_none(),
            "no place kept"
        );
        // A newer event of `a` waits without room behind the place.
        let newer = Reserved::roomless(&reserved, "a").expect("waits without room");
        let mut behind = sequencer.enter("a");
        assert!(behind.wait().now_or_never().is_none(), "behind the place");
        // The dead owner's event comes back and takes the place...
        let mut back = reserved.take(5).expect("its place");
        assert!(back.wait().now_or_never().is_some(), "first in its line");
        // ...but a still newer one waits without room too, behind `newer`.
        let newest = Reserved::roomless(&reserved, "a").expect("still without room");
        drop(back);
        assert!(behind.wait().now_or_never().is_some());
        drop((newer, newest));
        assert!(Reserved::roomless(&reserved, "a").is_none(), "none left");
        // The ack floor passing a place gives it up.
        let mut after_b = sequencer.enter("b");
        assert!(after_b.wait().now_or_never().is_none());
        reserved.settled_up_to(7);
        assert!(reserved.is_empty());
        assert!(after_b.wait().now_or_never().is_some());
        assert!(Reserved::roomless(&reserved, "b").is_none());
    }
}
