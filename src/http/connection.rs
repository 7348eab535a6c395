//! One HTTP connection as the server sees it: what it is doing, when it must
//! close, whether it has authenticated.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection may spend at each stage (`http.header_read_timeout`,
/// `http.idle_timeout`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Why the server closed a connection its client had not closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    /// A request head did not arrive within `header_read`.
    HeaderTimeout,
    /// Kept alive with no request for `idle`: the ordinary end of a connection.
    Idle,
    /// A response of which the client read nothing for `idle`.
    Stalled,
}

impl Expiry {
    /// The `reason` label of [`crate::telemetry::metric::HTTP_CONNECTIONS_DROPPED`]; `None` for
    /// the ordinary end of a kept-alive connection.
    pub(super) fn reason(self) -> Option<&'static str> {
        match self {
            Expiry::HeaderTimeout => Some("header_timeout"),
            Expiry::Idle => None,
            Expiry::Stalled => Some("stalled"),
        }
    }
}

/// What a connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Open, no request yet: the TLS handshake and the first request head.
    Opening,
    /// Between requests, nothing of the next one received.
    Idle,
    /// The next request head is arriving.
    Head,
    /// A request is with its handler (bounded by `http.request_timeout`).
    Handling,
    /// The handler answered; the response is being written.
    Responding,
}

struct State {
    phase: Phase,
    /// When `phase` began.
    since: Instant,
    /// When a byte last moved either way.
    last_io: Instant,
    /// Requests dispatched whose response is not written yet.
    exchanges: usize,
}

/// One open connection, shared by its task, its listener's
/// [`Table`](super::table::Table), the I/O that [`Watched`] counts and the
/// requests it carries ([`ConnectionMark`]).
pub(super) struct Connection {
    /// Its place in its table, in order of arrival.
    pub(super) id: u64,
    authenticated: AtomicBool,
    state: Mutex<State>,
    /// Wakes [`Connection::expired`] when the phase changes.
    changed: Notify,
    /// Cancelled when the table sheds the connection to make room.
    pub(super) shed: CancellationToken,
}

impl Connection {
    pub(super) fn new(id: u64) -> Self {
        let now = Instant::now();
        Self {
            id,
            authenticated: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Opening,
                since: now,
                last_io: now,
                exchanges: 0,
            }),
            changed: Notify::new(),
            shed: CancellationToken::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enter(&self, phase: Phase) {
        let now = Instant::now();
        let mut state = self.state();
        state.phase = phase;
        state.since = now;
        state.last_io = now;
        drop(state);
        self.changed.notify_one();
    }

    /// A byte moved; the first one read between requests starts the next head.
    fn moved(&self, read: bool) {
        let now = Instant::now();
        let mut state = self.state();
        state.last_io = now;
        if read && state.phase == Phase::Idle {
            state.phase = Phase::Head;
            state.since = now;
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Whether a request on it is being handled or answered.
    pub(super) fn busy(&self) -> bool {
        matches!(self.state().phase, Phase::Handling | Phase::Responding)
    }

    /// Whether its table may shed it to make room: it has made no
    /// authenticated request and none is being answered.
    pub(super) fn sheddable(&self) -> bool {
        !self.authenticated.load(Ordering::Relaxed) && !self.busy()
    }

    /// Resolves once the table has shed the connection.
    pub(super) async fn shed(&self) {
        self.shed.cancelled().await
    }

    /// When the connection must close and why; `None` while a handler runs.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        let state = self.state();
        match state.phase {
            Phase::Opening | Phase::Head => {
                Some((state.since + timeouts.header_read, Expiry::HeaderTimeout))
            }
            Phase::Idle => Some((state.since + timeouts.idle, Expiry::Idle)),
            Phase::Handling => None,
            Phase::Responding => Some((state.last_io + timeouts.idle, Expiry::Stalled)),
        }
    }

    /// Resolves when the connection has outlived its stage.
    pub(super) async fn expired(&self, timeouts: Timeouts) -> Expiry {
        loop {
            let changed = self.changed.notified();
            let Some((at, _)) = self.deadline(timeouts) else {
                changed.await;
                continue;
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(at) => {
                    // I/O may have moved the deadline without a wake-up.
                    if let Some((at, why)) = self.deadline(timeouts)
                        && at <= Instant::now()
                    {
                        return why;
                    }
                }
            }
        }
    }
}

/// The connection a request came on, in its extensions: the authentication
/// middleware marks it, and its table never sheds it after that.
#[derive(Clone)]
pub(super) struct ConnectionMark(Arc<Connection>);

impl ConnectionMark {
    pub(super) fn new(connection: Arc<Connection>) -> Self {
        Self(connection)
    }

    /// The connection made an authenticated request.
    pub(super) fn authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Relaxed);
    }
}

/// One request on a connection, from its dispatch until its response is
/// written (or dropped with the connection).
pub(super) struct Exchange(Arc<Connection>);

impl Exchange {
    pub(super) fn begin(connection: &Arc<Connection>) -> Self {
        connection.state().exchanges += 1;
        connection.enter(Phase::Handling);
        Self(Arc::clone(connection))
    }

    /// The handler answered: from now on the client must read the response.
    pub(super) fn answered(&self) {
        self.0.enter(Phase::Responding);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.exchanges -= 1;
        let done = state.exchanges == 0;
        drop(state);
        if done {
            self.0.enter(Phase::Idle);
        }
    }
}

/// A response body that ends its [`Exchange`] when the server drops it, that
/// is, once written.
pub(super) struct Tracked<B> {
    body: B,
    _exchange: Exchange,
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, exchange: Exchange) -> Self {
        Self {
            body,
            _exchange: exchange,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's transport, noting when bytes move (plain text, above TLS).
pub(super) struct Watched<IO> {
    io: IO,
    connection: Arc<Connection>,
}

impl<IO> Watched<IO> {
    pub(super) fn new(io: IO, connection: Arc<Connection>) -> Self {
        Self { io, connection }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.moved(true);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.moved(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.moved(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn each_stage_has_its_deadline() {
        let connection = &Arc::new(Connection::new(0));
        let opened = Instant::now();
        assert_eq!(connection.expired(TIMEOUTS).await, Expiry::HeaderTimeout);
        assert_eq!(opened.elapsed(), TIMEOUTS.header_read, "from the opening");

        // A handler has no deadline here (it has http.request_timeout).
        let exchange = Exchange::begin(connection);
        let waiting = tokio::time::timeout(Duration::from_secs(3600), connection.expired(TIMEOUTS));
        assert!(waiting.await.is_err());
        // A response the client does not read.
        exchange.answered();
        let answered = Instant::now();
        assert_eq!(connection.expired(TIMEOUTS).await, Expiry::Stalled);
        assert_eq!(answered.elapsed(), TIMEOUTS.idle);
        // Kept alive: the next request may wait `idle`, its head then `header_read`.
        drop(exchange);
        let idle = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        connection.moved(true);
        assert_eq!(connection.expired(TIMEOUTS).await, Expiry::HeaderTimeout);
        assert_eq!(
            idle.elapsed(),
            Duration::from_secs(30) + TIMEOUTS.header_read
        );
        connection.enter(Phase::Idle);
        let idle = Instant::now();
        assert_eq!(connection.expired(TIMEOUTS).await, Expiry::Idle);
        assert_eq!(idle.elapsed(), TIMEOUTS.idle);
    }
}
