//! The consume loop: pulls events from the shared durable consumer, handles
//! each under a concurrency bound, and applies the outcome (ack, nak with a
//! delay, or dead-letter then terminate).

mod dead_letter;
mod outcome;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::command::CommandPublisher;
use crate::config::{Lane, Settings, WorkerSettings};
use crate::contract::{ContractError, Event, EventKind};
use crate::crm::{Crm, CrmError, CrmEvent};
use crate::registry::Registry;
use crate::{load, metric};

pub use outcome::{HandleError, Outcome, decide};

/// Everything a message handler needs; shared by all in-flight handlers of
/// one lane (a CRM connection and its consumer).
pub struct Worker {
    settings: Arc<Settings>,
    lane: Lane,
    js: jetstream::Context,
    crm: Arc<dyn Crm>,
    commands: CommandPublisher,
    registry: Registry,
}

impl Worker {
    pub fn new(
        settings: Arc<Settings>,
        lane: Lane,
        js: jetstream::Context,
        crm: Arc<dyn Crm>,
    ) -> Self {
        let commands = CommandPublisher::new(js.clone());
        let registry = Registry::new(js.clone(), &settings.registry);
        Self {
            settings,
            lane,
            js,
            crm,
            commands,
            registry,
        }
    }

    fn config(&self) -> &WorkerSettings {
        &self.settings.worker
    }

    /// Consumes until `shutdown`, then stops pulling, lets in-flight events
    /// finish within the shutdown deadline and naks what is left.
    pub async fn run(self: Arc<Self>, consumer: PullConsumer, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let abandon = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(self.config().concurrency));
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            // A batch of at least 2 and a short expiry work around a client
            // race (a pull answered before it is counted) that could leave a
            // batch-of-1 stream idle until its pull request expired.
            let pulled = consumer
                .stream()
                .max_messages_per_batch(self.config().concurrency.max(2))
                .heartbeat(Duration::from_secs(3))
                .expires(Duration::from_secs(10))
                .messages()
                .await;
            let messages = match pulled {
                Ok(messages) => messages,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "Cannot pull from the consumer; retrying.");
                    self.pause(failures, &shutdown).await;
                    continue;
                }
            };
            match self
                .pull(messages, &permits, &tracker, &abandon, &shutdown)
                .await
            {
                Pulled::Shutdown(messages) => {
                    self.nak_buffered(messages).await;
                    break;
                }
                Pulled::Ended => {
                    failures += 1;
                    self.pause(failures, &shutdown).await;
                }
            }
        }
        tracker.close();
        let deadline = self.config().shutdown_deadline;
        if tokio::time::timeout(deadline, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = tracker.len(),
                "Shutdown deadline passed; nak'ing events still in flight."
            );
            abandon.cancel();
            tracker.wait().await;
        }
        tracing::info!("Worker stopped.");
    }

    /// Waits before re-creating the pull stream (1s, 2s, 4s, ... up to 30s).
    async fn pause(&self, failures: u32, shutdown: &CancellationToken) {
        let delay = Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    async fn pull(
        self: &Arc<Self>,
        mut messages: jetstream::consumer::pull::Stream,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
        abandon: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Pulled {
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Pulled::Shutdown(Box::new(messages)),
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Pulled::Shutdown(Box::new(messages)),
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let worker = Arc::clone(self);
                    let abandon = abandon.clone();
                    tracker.spawn(async move {
                        worker.process(message, abandon).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    use jetstream::consumer::pull::MessagesErrorKind as Kind;
                    tracing::warn!(error = %e, "Pull stream error.");
                    if matches!(
                        e.kind(),
                        Kind::ConsumerDeleted
                            | Kind::PushBasedConsumer
                            | Kind::RequestLimitExceeded
                    ) {
                        return Pulled::Ended;
                    }
                }
                None => return Pulled::Ended,
            }
        }
    }

    /// Naks what the pull stream already holds, so another replica gets it now
    /// instead of after the ack wait.
    async fn nak_buffered(&self, mut messages: Box<jetstream::consumer::pull::Stream>) {
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "Cannot nak a buffered event; it returns after the ack wait.");
            }
        }
    }

    /// Handles one delivery and applies its outcome. Never panics, never drops
    /// a message without an ack, a nak or a dead-letter.
    async fn process(&self, message: jetstream::Message, abandon: CancellationToken) {
        let (sequence, delivered, published) = match message.info() {
            Ok(info) => (
                info.stream_sequence,
                info.delivered.max(1) as u32,
                info.published,
            ),
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %e, "Delivery without JetStream metadata; nak'ing.");
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        };
        let id = event_id(&message, sequence);
        let span = tracing::info_span!(
            "event",
            subject = %message.subject,
            event_id = %id,
            conversation_id = tracing::field::Empty,
            delivery = delivered,
        );
        let in_flight = metrics::gauge!(metric::IN_FLIGHT);
        in_flight.increment(1.0);
        async {
            let started = Instant::now();
            let decoded = self.decode(&message, &id, sequence, published);
            if !self.owns(&decoded) {
                // Every lane's consumer sees every event; the owning lane handles it.
                tracing::trace!(lane = %self.lane.connection, "Event belongs to another lane.");
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "Cannot acknowledge another lane's event.");
                }
                return;
            }
            let outcome = match (outcome::exhausted(delivered, self.config()), decoded) {
                (Some(outcome), _) => outcome,
                (None, Err(e)) => decide(Err(e.into()), delivered, self.config()),
                (None, Ok(event)) => {
                    if let Some(conversation) = event.event.conversation_id() {
                        tracing::Span::current().record("conversation_id", conversation.as_str());
                    }
                    let work = self.with_progress(&message, self.handle(&event));
                    tokio::select! {
                        result = work => decide(result, delivered, self.config()),
                        _ = abandon.cancelled() => Outcome::Retry {
                            delay: Duration::ZERO,
                            reason: "shutting down".into(),
                        },
                    }
                }
            };
            self.apply(&message, &id, sequence, delivered, outcome, started)
                .await;
        }
        .instrument(span)
        .await;
        in_flight.decrement(1.0);
    }

    /// Whether this lane handles the event: its partner's connection, or, for
    /// a body that does not decode, the default lane (which dead-letters it once).
    fn owns(&self, decoded: &Result<CrmEvent, ContractError>) -> bool {
        match decoded {
            Ok(event) => {
                self.settings.connection_for(event.event.partner_id()) == self.lane.connection
            }
            Err(_) => self.lane.is_default(),
        }
    }

    fn decode(
        &self,
        message: &jetstream::Message,
        id: &str,
        sequence: u64,
        published: time::OffsetDateTime,
    ) -> Result<CrmEvent, ContractError> {
        let event = Event::decode_subject(&message.subject, &message.payload)?;
        // decode succeeded, so the body is one JSON value.
        let raw = serde_json::from_slice::<Box<RawValue>>(&message.payload)
            .map_err(|e| ContractError::Json(e.to_string()))?;
        Ok(CrmEvent {
            id: id.to_owned(),
            event,
            raw,
            published,
            sequence,
        })
    }

    /// Performs the event's actions: callbacks for `load`, then the CRM.
    async fn handle(&self, event: &CrmEvent) -> Result<(), HandleError> {
        // The registry first: the command API may authorise this softphone at once.
        match &event.event {
            Event::Loaded(loaded) => {
                self.registry.loaded(loaded, event.published).await?;
            }
            Event::AgentStatusChanged(changed) => {
                self.registry
                    .status_changed(changed, event.published)
                    .await?;
            }
            _ => {}
        }
        if let Event::Loaded(loaded) = &event.event {
            let from_crm = self.crm.dispositions(loaded.partner_id.as_ref()).await;
            for callback in load::callbacks_from(&self.settings, loaded, from_crm) {
                let message_id = format!("{}:{}", event.id, callback.type_name());
                let ack = self
                    .commands
                    .publish(&loaded.softphone_id, &callback, &message_id)
                    .await?;
                tracing::debug!(
                    callback = callback.type_name(),
                    seq = ack.sequence,
                    duplicate = ack.duplicate,
                    "Callback published."
                );
            }
        }
        let started = Instant::now();
        let result = self.crm.handle(event).await;
        let label = match &result {
            Ok(()) => "ok",
            Err(CrmError::Transient { .. }) => "transient",
            Err(CrmError::Permanent { .. }) => "permanent",
        };
        metrics::histogram!(metric::CRM_DURATION, "crm" => self.crm.name_for(event).to_owned(), "result" => label)
            .record(started.elapsed().as_secs_f64());
        result?;
        Ok(())
    }

    /// Runs `work`, telling the server every third of the ack wait that the
    /// event is still being worked on, so a slow CRM is not mistaken for a crash.
    async fn with_progress<T>(
        &self,
        message: &jetstream::Message,
        work: impl Future<Output = T>,
    ) -> T {
        let every = self.config().ack_wait / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticks.tick() => {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %e, "Cannot extend the ack wait.");
                    }
                }
            }
        }
    }

    async fn apply(
        &self,
        message: &jetstream::Message,
        id: &str,
        sequence: u64,
        delivered: u32,
        outcome: Outcome,
        started: Instant,
    ) {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let kind = EventKind::from_subject(&message.subject).map_or("unknown", EventKind::name);
        metrics::counter!(metric::EVENTS, "type" => kind, "outcome" => outcome.label())
            .increment(1);
        if delivered > 1 {
            metrics::counter!(metric::REDELIVERIES, "type" => kind).increment(1);
        }
        let acked = match &outcome {
            Outcome::Ack => {
                tracing::info!(elapsed_ms, "Event handled.");
                message.ack().await
            }
            Outcome::Retry { delay, reason } => {
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "Event failed; will retry.");
                message.ack_with(AckKind::Nak(Some(*delay))).await
            }
            Outcome::DeadLetter { reason, detail } => {
                let origin = dead_letter::Origin {
                    subject: &message.subject,
                    sequence,
                    delivered,
                    event_id: id,
                };
                match dead_letter::publish(
                    &self.js,
                    &origin,
                    message.payload.clone(),
                    reason,
                    detail.as_deref(),
                )
                .await
                {
                    Ok(()) => {
                        tracing::error!(%reason, "Event dead-lettered.");
                        metrics::counter!(metric::DEAD_LETTERED, "type" => kind).increment(1);
                        message.ack_with(AckKind::Term).await
                    }
                    Err(e) => {
                        let delay = self.config().backoff_after(delivered);
                        tracing::error!(%reason, error = %e, "Cannot dead-letter the event; will retry.");
                        message.ack_with(AckKind::Nak(Some(delay))).await
                    }
                }
            }
        };
        if let Err(e) = acked {
            // The server redelivers after the ack wait; CRM writes are idempotent.
            tracing::warn!(outcome = outcome.label(), error = %e, "Cannot acknowledge the event.");
        }
    }
}

enum Pulled {
    /// Shutdown was asked for; the stream may hold buffered messages.
    Shutdown(Box<jetstream::consumer::pull::Stream>),
    /// The stream ended or failed for good; make a new one.
    Ended,
}

/// The publisher's `Nats-Msg-Id` when present, else `seq:<stream sequence>`;
/// both stay the same across redeliveries and replicas.
pub fn event_id(message: &jetstream::Message, sequence: u64) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("seq:{sequence}"))
}
