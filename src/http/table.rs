//! Each listener's table of open connections, at most `http.max_connections`:
//! a newcomer beyond it sheds the oldest connection that has not
//! authenticated and is not being answered, or is refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::connection::Connection;
use crate::telemetry::metric;

/// A listener's open connections, oldest first, at most `max`.
pub(super) struct Table {
    /// The `listener` label of the metrics.
    listener: &'static str,
    max: usize,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    next: AtomicU64,
    /// Connections closed since [`Table::closed_since`] last looked.
    closed: AtomicUsize,
}

impl Table {
    pub(super) fn new(listener: &'static str, max: usize) -> Arc<Self> {
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
    pub(super) fn admit(self: &Arc<Self>) -> Option<Admitted> {
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
    pub(super) fn dropped(&self, reason: &'static str) {
        metrics::counter!(metric::HTTP_CONNECTIONS_DROPPED, "listener" => self.listener, "reason" => reason)
            .increment(1);
    }

    /// How many connections closed since the last call.
    pub(super) fn closed_since(&self) -> usize {
        self.closed.swap(0, Ordering::Relaxed)
    }

    fn count(&self, open: usize) {
        metrics::gauge!(metric::HTTP_CONNECTIONS, "listener" => self.listener).set(open as f64);
    }
}

/// A connection's place in its table, given back when dropped.
pub(super) struct Admitted {
    table: Arc<Table>,
    connection: Arc<Connection>,
}

impl Admitted {
    pub(super) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    pub(super) fn table(&self) -> &Table {
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
    use crate::http::connection::{ConnectionMark, Exchange};

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
}
