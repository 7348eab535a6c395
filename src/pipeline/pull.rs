//! Pulling from a durable consumer: the pull stream, re-made with backoff
//! while pulling fails, and back to no delay after a healthy pull.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

pub(super) type Messages = jetstream::consumer::pull::Stream;

/// What the next pull gave.
// Moved once per message; boxing the message would allocate once per message.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    Message(jetstream::Message),
    /// The stream ended or failed for good; make a new one.
    Ended,
    Shutdown,
}

pub(super) struct Puller {
    consumer: PullConsumer,
    batch: usize,
    /// Failed or ended streams since the last message.
    failures: u32,
}

impl Puller {
    pub fn new(consumer: PullConsumer, batch: usize) -> Self {
        Self {
            consumer,
            // A batch of at least 2 and a short expiry work around a client
            // race (a pull answered before it is counted) that could leave a
            // batch-of-1 stream idle until its pull request expired.
            batch: batch.max(2),
            failures: 0,
        }
    }

    /// A new pull stream, after a pause that grows with the failures in a
    /// row (none after a healthy pull). `None` when shutdown came first.
    pub async fn messages(&mut self, shutdown: &CancellationToken) -> Option<Messages> {
        loop {
            if self.failures > 0 {
                let delay = Duration::from_secs(1 << self.failures.min(5) >> 1)
                    .min(Duration::from_secs(30));
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if shutdown.is_cancelled() {
                return None;
            }
            let pulled = self
                .consumer
                .stream()
                .max_messages_per_batch(self.batch)
                .heartbeat(Duration::from_secs(3))
                .expires(Duration::from_secs(10))
                .messages()
                .await;
            match pulled {
                Ok(messages) => return Some(messages),
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(error = %e, "Cannot pull from the consumer; retrying.");
                }
            }
        }
    }

    /// The next message of `messages`.
    pub async fn next(&mut self, messages: &mut Messages, shutdown: &CancellationToken) -> Next {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Next::Shutdown,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    self.failures = 0;
                    return Next::Message(message);
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
                        self.failures += 1;
                        return Next::Ended;
                    }
                }
                None => {
                    self.failures += 1;
                    return Next::Ended;
                }
            }
        }
    }
}

/// Naks what a pull stream already holds, so another replica (or this one,
/// later) gets it now instead of after the ack wait.
pub(super) async fn give_back(mut messages: Messages) {
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(e) = message.ack_with(jetstream::AckKind::Nak(None)).await {
            tracing::warn!(error = %e, "Cannot nak a buffered event; it returns after the ack wait.");
        }
    }
}
