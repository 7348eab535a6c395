//! One HTTP connection as the server sees it (what it is doing, when it must
//! close, whether it has authenticated), and each listener's table of open
//! connections, which makes room by shedding unauthenticated ones first.

use std::collections::BTreeMap;
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

use crate::metric;

/// How long a connection may spend at each stage (`http.header_read_timeout`,
/// `http.idle_timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Why the server closed a connection its client had not closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive within `header_read`.
    HeaderTimeout,
    /// Kept alive with no request for `idle`: the ordinary end of a connection.
    Idle,
    /// A response of which the client read nothing for `idle`.
    Stalled,
}

impl Expiry {
    /// The `reason` label of [`metric::HTTP_CONNECTIONS_DROPPED`]; `None` for
    /// the ordinary end of a kept-alive connection.
    pub fn reason(self) -> Option<&'static str> {
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

/// One open connection, shared by its task, its listener's [`Table`], the I/O
/// that [`Watched`] counts and the requests it carries ([`ConnectionMark`]).
pub struct Connection {
    id: u64,
    authenticated: AtomicBool,
    state: Mutex<State>,
    /// Wakes [`Connection::expired`] when the phase changes.
    changed: Notify,
    /// Cancelled when the table sheds the connection to make room.
    shed: CancellationToken,
}

impl Connection {
    fn new(id: u64) -> Self {
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
    pub fn busy(&self) -> bool {
        matches!(self.state().phase, Phase::Handling | Phase::Responding)
    }

    fn sheddable(&self) -> bool {
        !self.authenticated.load(Ordering::Relaxed) && !self.busy()
    }

    /// Resolves once the table has shed the connection.
    pub async fn shed(&self) {
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
    pub async fn expired(&self, timeouts: Timeouts) -> Expiry {
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
/// middleware marks it, so the table sheds it last.
#[derive(Clone)]
pub struct ConnectionMark(Arc<Connection>);

impl ConnectionMark {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self(connection)
    }

    /// The connection made an authenticated request.
    pub fn authenticated(&self) {
        self.0.authenticated.store(true, Ordering::Relaxed);
    }
}

/// One request on a connection, from its dispatch until its response is
/// written (or dropped with the connection).
pub struct Exchange(Arc<Connection>);

impl Exchange {
    pub fn begin(connection: &Arc<Connection>) -> Self {
        connection.state().exchanges += 1;
        connection.enter(Phase::Handling);
        Self(Arc::clone(connection))
    }

    /// The handler answered: from now on the client must read the response.
    pub fn answered(&self) {
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
pub struct Tracked<B> {
    body: B,
    _exchange: Exchange,
}

impl<B> Tracked<B> {
    pub fn new(body: B, exchange: Exchange) -> Self {
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
pub struct Watched<IO> {
    io: IO,
    connection: Arc<Connection>,
}

impl<IO> Watched<IO> {
    pub fn new(io: IO, connection: Arc<Connection>) -> Self {
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

/// A listener's open connections, oldest first, at most `max`.
pub struct Table {
    /// The `listener` label of the metrics.
    listener: &'static str,
    max: usize,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next: std::sync::atomic::AtomicU64,
    /// Connections closed since [`Table::closed_since`] last looked.
    closed: std::sync::atomic::AtomicUsize,
}

impl Table {
    pub fn new(listener: &'static str, max: usize) -> Arc<Self> {
        metrics::gauge!(metric::HTTP_CONNECTIONS, "listener" => listener).set(0.0);
        Arc::new(Self {
            listener,
            max,
            open: Mutex::default(),
            next: Default::default(),
            closed: Default::default(),
        })
    }

    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a new connection. When the table is full, the oldest
    /// connection that has not authenticated and is not being answered is shed
    /// to make room; `None` (refused) when there is no such connection.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.open();
        if open.len() >= self.max {
            let Some(oldest) = open.values().find(|c| c.sheddable()).map(|c| c.id) else {
                self.dropped("refused");
                return None;
            };
            if let Some(shed) = open.remove(&oldest) {
                shed.shed.cancel();
                self.dropped("shed");
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection::new(id));
        open.insert(id, Arc::clone(&connection));
        self.count(open.len());
        Some(Admitted {
            table: Arc::clone(self),
            connection,
        })
    }

    /// Counts a connection the server closed, by `reason` (see [`metric::HTTP_CONNECTIONS_DROPPED`]).
    pub fn dropped(&self, reason: &'static str) {
        metrics::counter!(metric::HTTP_CONNECTIONS_DROPPED, "listener" => self.listener, "reason" => reason)
            .increment(1);
    }

    /// How many connections closed since the last call.
    pub fn closed_since(&self) -> usize {
        self.closed.swap(0, Ordering::Relaxed)
    }

    fn count(&self, open: usize) {
        metrics::gauge!(metric::HTTP_CONNECTIONS, "listener" => self.listener).set(open as f64);
    }
}

/// A connection's place in its table, given back when dropped.
pub struct Admitted {
    table: Arc<Table>,
    connection: Arc<Connection>,
}

impl Admitted {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    pub fn table(&self) -> &Table {
        &self.table
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.table.open();
        open.remove(&self.connection.id);
        self.table.count(open.len());
        self.table.closed.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn a_full_table_sheds_the_oldest_idle_unauthenticated_connection_first() {
        let table = Table::new("test", 3);
        let authenticated = table.admit().unwrap();
        ConnectionMark::new(Arc::clone(authenticated.connection())).authenticated();
        let answering = table.admit().unwrap();
        let _exchange = Exchange::begin(answering.connection());
        let half_sent = table.admit().unwrap();

        let newcomer = table.admit().expect("room is made");
        assert!(half_sent.connection().shed.is_cancelled());
        assert!(!authenticated.connection().shed.is_cancelled());
        assert!(!answering.connection().shed.is_cancelled());
        drop(half_sent);
        assert_eq!(table.open().len(), 3, "a shed connection leaves once");

        // Now every connection is authenticated or being answered, but the
        // newcomer, which is shed next; marked, nothing is left to shed.
        let next = table.admit().expect("the newcomer makes room");
        assert!(newcomer.connection().shed.is_cancelled());
        ConnectionMark::new(Arc::clone(next.connection())).authenticated();
        assert!(table.admit().is_none(), "refused at once");
        drop(next);
        assert!(table.admit().is_some(), "a place came free");
    }

    #[tokio::test(start_paused = true)]
    async fn each_stage_has_its_deadline() {
        let table = Table::new("test", 1);
        let admitted = table.admit().unwrap();
        let connection = admitted.connection();
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
