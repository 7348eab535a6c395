//! Pulling from a durable consumer, never more than there is room for.
//!
//! Every message a replica pulls comes with a permit of the consumer's room
//! (`worker.concurrency` in a lane, `worker.intake_window` at the intake) and
//! goes straight to work, where it is kept alive with progress acks until
//! its fate. Nothing waits unattended in a client buffer: a pull asks for
//! as many messages as there are free permits, so a lane whose room is full
//! of held events (its connection paused) has nothing pulled that could
//! outlive the ack wait and come back as a second delivery. A pull request
//! stays open until it is filled or expires, so messages that arrive while
//! it is open are delivered at once; a new one is made, after a pause that
//! grows while pulling fails, as soon as the last one ends. No request
//! outlives this replica's membership ([`Fence`]): a replica declared dead
//! is delivered nothing after its lease lapsed, so whoever takes its
//! partitions over knows every event it may still hold (see
//! [`super::share`]). When asked to stop, it reads the open request to its
//! end and hands over all it delivered, for the unit to give back with the
//! rest in stream order: nothing it pulled can come back later, after the
//! unit's next owner went on with newer events. A request that fails (its
//! server shut down), or ends after its connection was renewed while it was
//! open, may have lost deliveries in transit: the unit is told
//! ([`Next::Failed`]) and keeps their places.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::share::Fence;

/// How long one pull request stays open on the server, at most.
/// Short, so that a request lost with a connection (the client gives up
/// on it 5 s after it expires) is soon made again.
const EXPIRES: Duration = Duration::from_secs(5);
/// How long after its expiry a request's end may take to reach the client.
const ENDS_WITHIN: Duration = Duration::from_secs(2);
/// The shortest request worth making: with less of its membership left, a
/// replica waits for the renewal (or for its units to be stopped).
const SHORTEST: Duration = Duration::from_millis(100);

/// What the next pull gave.
// Moved once per message; boxing the message would allocate once per message.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    /// A message, and its place in the room until its fate.
    Message(jetstream::Message, OwnedSemaphorePermit),
    /// Asked to stop: everything the open pull request delivered until it
    /// ended, to be given back with the rest, in stream order; `false` when
    /// it did not end in time (it may still deliver: what it delivers comes
    /// back only after the ack wait); and when the stop was seen.
    Shutdown(Vec<jetstream::Message>, bool, tokio::time::Instant),
    /// The open pull request failed (its server shut down), or ended after
    /// the connection was renewed while it was open: what the server sent it
    /// and the client never read is lost in transit, and comes back only
    /// after the ack wait.
    Failed,
}

/// How many times the connection a consumer pulls on has (re)connected.
pub(super) enum Connects {
    /// A client's own count (the shared connection the lanes pull on).
    Client(async_nats::Client),
    /// A count kept for a connection of its own (the intake's).
    Watched(tokio::sync::watch::Receiver<u64>),
}

impl Connects {
    fn count(&self) -> u64 {
        match self {
            Connects::Client(client) => client
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed),
            Connects::Watched(connects) => *connects.borrow(),
        }
    }
}

/// One pull request that is open: what it may still deliver, and the permits
/// set aside for it.
struct Open {
    batch: jetstream::consumer::pull::Batch,
    permits: Vec<OwnedSemaphorePermit>,
    /// The connection's (re)connects when it was made.
    connects: u64,
}

pub(super) struct Puller {
    consumer: PullConsumer,
    /// The (re)connects of the connection the consumer pulls on.
    connects: Connects,
    fence: Fence,
    room: Arc<Semaphore>,
    size: usize,
    open: Option<Open>,
    /// Failed pulls since the last message.
    failures: u32,
}

impl Puller {
    /// Pulls at most `room` messages at a time for work not yet done, while
    /// `fence` holds.
    pub(super) fn new(
        consumer: PullConsumer,
        connects: Connects,
        room: usize,
        fence: Fence,
    ) -> Self {
        Self {
            consumer,
            connects,
            fence,
            room: Arc::new(Semaphore::new(room)),
            size: room,
            open: None,
            failures: 0,
        }
    }

    /// The room its permits come from.
    pub(super) fn room(&self) -> Arc<Semaphore> {
        Arc::clone(&self.room)
    }

    /// The next message with its permit: waits for room first, then for a
    /// message. `Shutdown` when `shutdown` came first, with what an open
    /// pull request had already delivered.
    pub(super) async fn next(&mut self, shutdown: &CancellationToken) -> Next {
        loop {
            let open = match self.open.as_mut() {
                Some(open) => open,
                None => match self.request(shutdown).await {
                    Some(open) => self.open.insert(open),
                    None => return Next::Shutdown(Vec::new(), true, tokio::time::Instant::now()),
                },
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let at = tokio::time::Instant::now();
                    let (delivered, ended) = self.delivered().await;
                    return Next::Shutdown(delivered, ended, at);
                }
                next = open.batch.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    self.failures = 0;
                    let permit = open
                        .permits
                        .pop()
                        .expect("a pull asks no more than its permits");
                    if open.permits.is_empty() {
                        self.open = None;
                    }
                    return Next::Message(message, permit);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Pull request failed.");
                    self.failures += 1;
                    self.open = None;
                    return Next::Failed;
                }
                // Ended (expired, or given up by the client): its unused
                // permits go back to the room. Had the connection been
                // renewed meanwhile, what it delivered before may be lost.
                None => {
                    let opened_at = open.connects;
                    self.open = None;
                    let renewed = self.connects() > opened_at;
                    if renewed {
                        tracing::warn!("The connection was renewed while a pull request was open.");
                        return Next::Failed;
                    }
                }
            }
        }
    }

    /// A new pull request for as many messages as there is room for (at
    /// least one; it waits for room), after a pause while pulling fails.
    async fn request(&mut self, shutdown: &CancellationToken) -> Option<Open> {
        loop {
            if self.failures > 0 {
                let delay = Duration::from_secs(1 << self.failures.min(5) >> 1)
                    .min(Duration::from_secs(30));
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return None,
                permit = Arc::clone(&self.room).acquire_owned() => permit.expect("the room is never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < self.size {
                match Arc::clone(&self.room).try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let expires = match self.fence.remaining() {
                Some(left) if left >= SHORTEST => left.min(EXPIRES),
                _ => {
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(SHORTEST) => continue,
                    }
                }
            };
            let connects = self.connects();
            let requested = self
                .consumer
                .batch()
                .max_messages(permits.len())
                .expires(expires)
                .messages()
                .await;
            match requested {
                Ok(batch) => {
                    return Some(Open {
                        batch,
                        permits,
                        connects,
                    });
                }
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(error = %e, "Cannot pull from the consumer; retrying.");
                }
            }
        }
    }

    fn connects(&self) -> u64 {
        self.connects.count()
    }

    /// What the open pull request already delivered and was not taken.
    ///
    /// The open request stays open on the server until it is filled or
    /// expires (at most [`EXPIRES`]): a message the server sends it after
    /// the unit stopped reading would be delivered to nobody and come back
    /// only after the ack wait, behind newer events of its conversation
    /// already worked by the unit's next owner. So the request is read to
    /// its end, and whether it ended is said.
    async fn delivered(&mut self) -> (Vec<jetstream::Message>, bool) {
        let mut delivered = Vec::new();
        let Some(mut open) = self.open.take() else {
            return (delivered, true);
        };
        let until = tokio::time::Instant::now() + EXPIRES + ENDS_WITHIN;
        loop {
            match tokio::time::timeout_at(until, open.batch.next()).await {
                Ok(Some(Ok(message))) => delivered.push(message),
                // Ended: expired, or failed (the server ends the request).
                Ok(Some(Err(_)) | None) => return (delivered, true),
                Err(_) => return (delivered, false),
            }
        }
    }
}
