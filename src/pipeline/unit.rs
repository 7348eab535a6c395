//! The one consume loop. A unit is one durable consumer worked by this
//! replica (the intake, or one partition of a lane) while it holds it; the
//! [`Stage`] says what to do with each message, the unit does the rest for
//! every stage alike:
//!
//! - pulls no more than its room (each message travels with its permit);
//! - reads each delivery in pull order ([`Stage::accept`]) and enters it
//!   behind the last one with the same order key ([`Sequencer`]): a
//!   conversation's events are worked one at a time, in stream order;
//! - keeps every delivery it holds alive with progress acks, while this
//!   replica's membership is valid ([`Fence`]);
//! - applies each fate ([`Delivery::apply`]), holding a delivery whose
//!   dead letter NATS did not take;
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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::delivery::{Delivery, unreadable};
use super::outcome::{self, Outcome};
use super::pull::{Next, Puller};
use super::sequencer::Sequencer;
use super::share::Fence;
use crate::metric;

/// What a unit does with each message of its consumer.
pub(super) trait Stage: Send + Sync + 'static {
    type Job: Send + Sync + 'static;

    /// Reads a delivery, in pull order: its job and order key, or the fate
    /// it has without one (a delivery without metadata).
    fn accept(
        &self,
        message: &jetstream::Message,
    ) -> impl Future<Output = Result<Accepted<Self::Job>, Outcome>> + Send;

    /// Works the job once its turn came, until its fate; a wait in it ends
    /// with [`Outcome::GiveBack`] once `stop` is cancelled.
    fn work<'a>(
        &'a self,
        job: &'a mut Self::Job,
        message: &'a jetstream::Message,
        stop: &'a CancellationToken,
    ) -> impl Future<Output = Outcome> + Send + 'a;

    /// The delivery a job's fate is applied to.
    fn delivery(job: &Self::Job) -> &Delivery;

    /// The span the job is worked in.
    fn span(&self, job: &Self::Job) -> tracing::Span;
}

/// A delivery read by its stage.
pub(super) struct Accepted<J> {
    pub job: J,
    /// What orders it: the next message with the same key waits for it.
    pub key: String,
}

/// How a unit ended.
pub(super) struct Ended {
    /// Whether every message it pulled was settled, and the server confirmed
    /// every one it gave back: the next owner may pull at once.
    pub clean: bool,
}

pub(super) struct Unit<S> {
    pub name: String,
    pub stage: Arc<S>,
    pub js: jetstream::Context,
    /// Messages worked at once, at most.
    pub room: usize,
    pub ack_wait: Duration,
    pub shutdown_deadline: Duration,
    pub backoff: Duration,
    /// How long giving back what is left may take (a quarter of the lease).
    pub give_back_within: Duration,
    pub fence: Fence,
}

impl<S: Stage> Unit<S> {
    /// Waits `wait` (a previous owner's deliveries coming back), then runs.
    pub async fn run_after(
        self,
        wait: Duration,
        consumer: PullConsumer,
        stop: CancellationToken,
    ) -> Ended {
        tokio::select! {
            _ = stop.cancelled() => return Ended { clean: true },
            _ = tokio::time::sleep(wait) => {}
        }
        self.run(consumer, stop).await
    }

    /// Works `consumer` until `stop`, then settles or gives back everything
    /// it pulled.
    pub async fn run(self, consumer: PullConsumer, stop: CancellationToken) -> Ended {
        let unit = Arc::new(self);
        let holding = Arc::new(Holding::default());
        let settled = CancellationToken::new();
        let keep_alive = tokio::spawn(Arc::clone(&holding).keep_alive(
            unit.ack_wait,
            unit.fence.clone(),
            settled.clone(),
        ));
        let sequencer = Arc::new(Sequencer::default());
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        let given_back: Arc<Mutex<Vec<jetstream::Message>>> = Arc::default();
        let mut puller = Puller::new(consumer, unit.room);
        loop {
            let (message, permit) = match puller.next(&stop).await {
                Next::Message(message, permit) => (message, permit),
                Next::Shutdown(delivered) => {
                    given_back.lock().expect("lock").extend(delivered);
                    break;
                }
            };
            let Accepted { mut job, key } = match unit.stage.accept(&message).await {
                Ok(accepted) => accepted,
                Err(fate) => {
                    unreadable(&message, fate).await;
                    continue;
                }
            };
            let sequence = S::delivery(&job).consumer_key;
            holding.hold(sequence, &message);
            let mut turn = sequencer.enter(&key);
            let span = unit.stage.span(&job);
            let (unit, stop, abandon, holding, given_back) = (
                Arc::clone(&unit),
                stop.clone(),
                abandon.clone(),
                Arc::clone(&holding),
                Arc::clone(&given_back),
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
                        let fate = unit.stage.work(&mut job, &message, &stop).await;
                        unit.settle(&job, &message, fate, &stop).await
                    };
                    let fate = tokio::select! {
                        fate = worked => fate,
                        _ = abandon.cancelled() => outcome::given_back(),
                    };
                    if matches!(fate, Outcome::GiveBack { .. }) {
                        given_back.lock().expect("lock").push(message);
                    }
                    holding.release(sequence);
                    in_flight.decrement(1.0);
                    drop(turn);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        tracker.close();
        if tokio::time::timeout(unit.shutdown_deadline, tracker.wait())
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
        let clean = unit.give_back(&mut back).await;
        tracing::info!(unit = %unit.name, given_back = back.len(), clean, "Stopped working the consumer.");
        Ended { clean }
    }

    /// Applies a fate; a dead letter NATS did not take is tried again after
    /// a backoff step, until it is taken or the unit stops.
    async fn settle(
        &self,
        job: &S::Job,
        message: &jetstream::Message,
        fate: Outcome,
        stop: &CancellationToken,
    ) -> Outcome {
        loop {
            if matches!(fate, Outcome::GiveBack { .. }) {
                return fate;
            }
            if !self.fence.valid() && !matches!(fate, Outcome::Ack) {
                // Declared dead, perhaps: another replica may work the
                // partition now. Only an ack is harmless.
                tracing::warn!(unit = %self.name, "Membership not renewed; leaving the event to the ack wait.");
                return outcome::given_back();
            }
            // A fate NATS could not carry out is carried out again, never
            // replaced by the hold that says so.
            match S::delivery(job).apply(&self.js, message, &fate).await {
                Ok(()) => return fate,
                Err(held) => {
                    if let Outcome::Hold { reason, .. } = &held {
                        tracing::warn!(%reason, "Cannot carry out the event's fate; holding it.");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return outcome::given_back(),
                _ = tokio::time::sleep(self.backoff) => {}
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

/// The deliveries a unit holds, from their pull to their fate, by sequence.
#[derive(Default)]
struct Holding(Mutex<BTreeMap<u64, jetstream::Message>>);

impl Holding {
    fn hold(&self, sequence: u64, message: &jetstream::Message) {
        self.0
            .lock()
            .expect("holding lock")
            .insert(sequence, message.clone());
    }

    fn release(&self, sequence: u64) {
        self.0.lock().expect("holding lock").remove(&sequence);
    }

    fn held(&self) -> Vec<jetstream::Message> {
        self.0
            .lock()
            .expect("holding lock")
            .values()
            .cloned()
            .collect()
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
