//! A lane: one durable consumer on `SOFTPHONE_LANES` and what handles its
//! events, in every replica. Each CRM connection has its own lane, and the
//! softphone lane keeps the registry and `load` callbacks apart from every
//! CRM. A replica handles at most `worker.concurrency` events of a lane at
//! once and pulls no more than it has room for (back-pressure, not an error),
//! so every event it pulled is kept in progress until its fate.
//! While its connection is in trouble the lane holds what it pulls without
//! calling the CRM but to probe it (see [`super::gate`]), so it stops pulling
//! once its room is full of held events.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::WorkerSettings;
use super::delivery::{Delivery, unreadable, with_progress};
use super::gate::Gate;
use super::outcome::{self, HandleError, Outcome, decide};
use super::pull::{Next, Puller};
use crate::contract::{Event, LaneTarget};
use crate::crm::{CrmError, CrmEvent};
use crate::metric;

/// What a lane does with each event.
pub(super) trait Work: Send + Sync + 'static {
    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), HandleError>>;
}

pub(super) struct Lane<W> {
    /// `crm-<connection>` or `softphones`, for logs.
    name: String,
    /// The CRM connection, for a CRM lane.
    connection: Option<String>,
    settings: WorkerSettings,
    js: jetstream::Context,
    work: W,
    /// The connection's health, for CRM lanes.
    gate: Option<Arc<Gate>>,
}

impl<W: Work> Lane<W> {
    pub fn new(
        connection: Option<String>,
        settings: WorkerSettings,
        js: jetstream::Context,
        work: W,
        gate: Option<Arc<Gate>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: connection
                .as_ref()
                .map_or_else(|| "softphones".to_owned(), |c| format!("crm-{c}")),
            connection,
            settings,
            js,
            work,
            gate,
        })
    }

    fn target(&self) -> LaneTarget<'_> {
        match &self.connection {
            Some(connection) => LaneTarget::Crm(connection),
            None => LaneTarget::Softphone,
        }
    }

    /// Consumes until `shutdown`, then stops pulling, gives back what it
    /// had pulled but not started, lets in-flight events finish within the
    /// shutdown deadline and gives back what is left.
    pub async fn run(self: Arc<Self>, consumer: PullConsumer, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        // Room first: a replica never pulls more than it can work. A paused
        // lane holds what it pulls, so it stops pulling once its room is
        // full of held events, and has nothing else pulled meanwhile.
        let mut puller = Puller::new(consumer, self.settings.concurrency);
        let sequencer = Arc::new(Sequencer::default());
        while let Next::Message(message, permit) = puller.next(&shutdown).await {
            let turn = sequencer.enter(&message.payload);
            let lane = Arc::clone(&self);
            let abandon = abandon.clone();
            tracker.spawn(async move {
                lane.process(message, turn, abandon).await;
                drop(permit);
            });
        }
        tracker.close();
        if tokio::time::timeout(self.settings.shutdown_deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(lane = %self.name, in_flight = tracker.len(), "Shutdown deadline passed; giving back events still in flight.");
            abandon.cancel();
            tracker.wait().await;
        }
        tracing::info!(lane = %self.name, "Lane stopped.");
    }

    /// Handles one delivery and applies its fate. Never panics, never drops
    /// a message without an ack, a nak or a dead-letter.
    async fn process(
        &self,
        message: jetstream::Message,
        mut turn: InOrder,
        abandon: CancellationToken,
    ) {
        let delivery = match Delivery::from_lane(
            &message,
            self.target().kind_of(&message.subject),
            &self.name,
        ) {
            Ok(delivery) => delivery,
            Err(fate) => return unreadable(&message, fate).await,
        };
        let span = tracing::info_span!(
            "event",
            lane = %self.name,
            subject = %delivery.subject,
            event_id = %delivery.id,
            conversation_id = tracing::field::Empty,
            delivery = delivery.delivered,
        );
        let in_flight = metrics::gauge!(metric::IN_FLIGHT);
        in_flight.increment(1.0);
        async {
            let settle = with_progress(&message, self.settings.ack_wait, async {
                turn.wait().await;
                self.settle(&message, &delivery).await;
            });
            tokio::select! {
                () = settle => {}
                _ = abandon.cancelled() => {
                    // Nak only: a dead-letter is never half-applied.
                    let _ = delivery.apply(&self.js, &message, &outcome::abandoned()).await;
                }
            }
        }
        .instrument(span)
        .await;
        in_flight.decrement(1.0);
        drop(turn);
    }

    /// Decides the delivery's fate, holding it while its connection is in
    /// trouble, and applies it.
    async fn settle(&self, message: &jetstream::Message, delivery: &Delivery) {
        let fate = match outcome::exhausted(delivery.delivered, &self.settings) {
            Some(fate) => fate,
            None => match self.decode(message, delivery) {
                Ok(event) => {
                    if let Some(conversation) = event.event.conversation_id() {
                        tracing::Span::current().record("conversation_id", conversation.as_str());
                    }
                    self.attempt(&event, delivery.delivered).await
                }
                Err(e) => decide(Err(e.into()), delivery.delivered, false, &self.settings),
            },
        };
        while let Err(held) = delivery.apply(&self.js, message, &fate).await {
            self.wait(&held).await;
        }
    }

    fn decode(
        &self,
        message: &jetstream::Message,
        delivery: &Delivery,
    ) -> Result<CrmEvent, crate::contract::ContractError> {
        let kind = delivery.kind.ok_or_else(|| {
            crate::contract::ContractError::UnknownSubject(message.subject.to_string())
        })?;
        let event = Event::decode(kind, &message.payload)?;
        // decode succeeded, so the body is one JSON value.
        let raw = serde_json::from_slice(&message.payload)
            .map_err(|e| crate::contract::ContractError::Json(e.to_string()))?;
        Ok(CrmEvent {
            id: delivery.id.clone(),
            event,
            raw,
            published: delivery.published,
            sequence: delivery.sequence,
        })
    }

    /// Handles the event until it has a fate other than being held.
    async fn attempt(&self, event: &CrmEvent, delivered: u32) -> Outcome {
        let mut held = None;
        let mut probe = None;
        let first_step = self.settings.backoff_after(1);
        // A lane that paused after this event was pulled: wait before calling.
        if let Some(gate) = &self.gate
            && gate.paused()
        {
            held = Some((gate.hold(), gate.answered()));
            probe = gate.turn(first_step).await.probe();
        }
        loop {
            if probe.is_some() {
                tracing::info!(lane = %self.name, "Probing the CRM connection.");
            }
            let result = self.work.handle(event).await;
            let answered_since = self.record(&result, held.as_ref().map(|(_, at)| *at));
            drop(probe.take());
            let fate = decide(result, delivered, answered_since, &self.settings);
            let Outcome::Hold {
                reason,
                retry_after,
            } = &fate
            else {
                return fate;
            };
            tracing::debug!(%reason, "Connection in trouble; event held.");
            let Some(gate) = &self.gate else {
                self.wait(&fate).await;
                continue;
            };
            let answered = gate.answered();
            match &mut held {
                Some((_, at)) => *at = answered,
                None => held = Some((gate.hold(), answered)),
            }
            probe = gate.turn(retry_after.unwrap_or(first_step)).await.probe();
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

    /// Waits before trying a held fate again, where no gate says when.
    async fn wait(&self, held: &Outcome) {
        let delay = match held {
            Outcome::Hold {
                retry_after: Some(asked),
                ..
            } => (*asked).min(self.settings.max_retry_after),
            _ => self.settings.backoff_after(1),
        };
        tokio::time::sleep(delay).await;
    }
}

/// Keeps a replica's events of one conversation in the order the lane
/// delivered them: each waits for the one before it to settle.
#[derive(Default)]
struct Sequencer {
    last: std::sync::Mutex<std::collections::HashMap<String, (u64, oneshot::Receiver<()>)>>,
    entered: std::sync::atomic::AtomicU64,
}

/// An event's place in its conversation's order.
struct InOrder {
    before: Option<oneshot::Receiver<()>>,
    done: Option<(Arc<Sequencer>, String, u64, oneshot::Sender<()>)>,
}

impl Sequencer {
    fn enter(self: &Arc<Self>, body: &[u8]) -> InOrder {
        #[derive(serde::Deserialize)]
        struct Key<'a> {
            #[serde(rename = "conversationId", borrow)]
            conversation_id: Option<std::borrow::Cow<'a, str>>,
        }
        let Some(key) = serde_json::from_slice::<Key>(body)
            .ok()
            .and_then(|k| k.conversation_id)
        else {
            return InOrder {
                before: None,
                done: None,
            };
        };
        let key = key.into_owned();
        let entered = self
            .entered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, after) = oneshot::channel();
        let before = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), (entered, after))
            .map(|(_, before)| before);
        InOrder {
            before,
            done: Some((Arc::clone(self), key, entered, done)),
        }
    }
}

impl InOrder {
    /// Until the conversation's previous event has settled (or was dropped).
    async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            let _ = before.await;
        }
    }
}

impl Drop for InOrder {
    fn drop(&mut self) {
        if let Some((sequencer, key, entered, done)) = self.done.take() {
            let _ = done.send(());
            let mut last = sequencer.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(&key).is_some_and(|(latest, _)| *latest == entered) {
                last.remove(&key);
            }
        }
    }
}
