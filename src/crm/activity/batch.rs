//! Gathers the Task writes of concurrent events into batches: the first
//! write of a batch leads it (waits for others, then flushes it for all),
//! the others wait for their own result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Batches of `T`, at most `max_records` each, none waiting past `max_wait`.
pub(crate) struct Batcher<T> {
    max_records: usize,
    max_wait: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The batch writes join, and its id.
    open: Vec<T>,
    open_id: u64,
    /// Batches full before their leader took them.
    sealed: HashMap<u64, Vec<T>>,
    /// Wakes the open batch's leader when it is full.
    full: Arc<Notify>,
    /// When the last batch was taken.
    last_flush: Option<Instant>,
}

/// The write that leads a batch: it gathers it and flushes it. Dropped
/// before gathering (its event abandoned), it drops the batch, so that the
/// others' results fail at once instead of waiting for a flush that never
/// comes.
pub(crate) struct Leader<'a, T> {
    batcher: &'a Batcher<T>,
    id: u64,
    full: Arc<Notify>,
    /// The org had no batch for `max_wait`: this one goes at once.
    quiet: bool,
    gathered: bool,
}

impl<T> Drop for Leader<'_, T> {
    fn drop(&mut self) {
        if !self.gathered {
            drop(self.batcher.take(self.id));
        }
    }
}

impl<T> Batcher<T> {
    pub(super) fn new(max_records: usize, max_wait: Duration) -> Self {
        Self {
            max_records: max_records.max(1),
            max_wait,
            state: Mutex::new(State {
                open: Vec::new(),
                open_id: 0,
                sealed: HashMap::new(),
                full: Arc::new(Notify::new()),
                last_flush: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `item` to the open batch; `Some` when the caller leads it.
    pub(super) fn join(&self, item: T) -> Option<Leader<'_, T>> {
        let mut state = self.state();
        let leader = state.open.is_empty().then(|| {
            state.open_id += 1;
            state.full = Arc::new(Notify::new());
            Leader {
                batcher: self,
                gathered: false,
                id: state.open_id,
                full: Arc::clone(&state.full),
                quiet: state
                    .last_flush
                    .is_none_or(|at| at.elapsed() >= self.max_wait),
            }
        });
        state.open.push(item);
        if state.open.len() >= self.max_records {
            let id = state.open_id;
            let batch = std::mem::take(&mut state.open);
            state.sealed.insert(id, batch);
            state.full.notify_one();
        }
        leader
    }

    /// The batch `id`, sealed or still open.
    fn take(&self, id: u64) -> Vec<T> {
        let mut state = self.state();
        state.last_flush = Some(Instant::now());
        if let Some(batch) = state.sealed.remove(&id) {
            return batch;
        }
        if state.open_id == id {
            return std::mem::take(&mut state.open);
        }
        Vec::new()
    }
}

impl<T> Leader<'_, T> {
    /// Waits until the batch is due (full, `max_wait` after it opened, or at
    /// once when the org was quiet), then takes it.
    pub(super) async fn gather(mut self) -> Vec<T> {
        if !self.quiet {
            tokio::select! {
                _ = tokio::time::sleep(self.batcher.max_wait) => {}
                _ = self.full.notified() => {}
            }
        }
        self.gathered = true;
        self.batcher.take(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_org_goes_at_once_then_writes_gather_until_full_or_max_wait() {
        let b = Arc::new(Batcher::new(3, Duration::from_millis(250)));
        let first = b.join(1).expect("leads");
        assert_eq!(first.gather().await, vec![1], "quiet: at once");

        let started = Instant::now();
        let leader = b.join(2).expect("leads the next batch");
        assert!(b.join(3).is_none());
        assert_eq!(leader.gather().await, vec![2, 3]);
        assert_eq!(started.elapsed(), Duration::from_millis(250), "max_wait");

        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.join(4).expect("leads").gather().await }
        });
        tokio::task::yield_now().await;
        let started = Instant::now();
        assert!(b.join(5).is_none());
        assert!(b.join(6).is_none());
        let next = b.join(7).expect("a full batch is sealed: 7 opens the next");
        assert_eq!(waiting.await.unwrap(), vec![4, 5, 6]);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "full: at once"
        );
        assert_eq!(next.gather().await, vec![7]);

        // A leader dropped before gathering takes its batch with it: the
        // next write leads a batch of its own.
        let abandoned = b.join(8).expect("leads");
        assert!(b.join(9).is_none());
        drop(abandoned);
        let leader = b.join(10).expect("a new batch");
        assert_eq!(leader.gather().await, vec![10]);
    }
}
