//! Order within a unit: each event waits for the one before it with the same
//! key (a lane's conversation or softphone; the intake's one key for all) to
//! be settled before it is worked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The last event entered per key, which the next one with that key waits for.
#[derive(Default)]
pub(super) struct Sequencer {
    last: Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    entered: AtomicU64,
}

/// An event's place in its key's order; settled (and the next one let go)
/// when dropped.
pub(super) struct Turn {
    before: Option<oneshot::Receiver<()>>,
    done: Option<(Arc<Sequencer>, String, u64, oneshot::Sender<()>)>,
}

impl Sequencer {
    /// Enters an event with `key`, behind the last one entered with it.
    pub(super) fn enter(self: &Arc<Self>, key: &str) -> Turn {
        let entered = self.entered.fetch_add(1, Ordering::Relaxed);
        let (done, after) = oneshot::channel();
        let before = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (entered, after))
            .map(|(_, before)| before);
        Turn {
            before,
            done: Some((Arc::clone(self), key.to_owned(), entered, done)),
        }
    }
}

impl Turn {
    /// Until the previous event with the same key has settled.
    pub(super) async fn wait(&mut self) {
        if let Some(before) = self.before.as_mut() {
            let _ = before.await;
            self.before = None;
        }
    }
}

impl Drop for Turn {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn events_with_one_key_go_one_after_another() {
        let sequencer = Arc::new(Sequencer::default());
        let mut first = sequencer.enter("a");
        let mut second = sequencer.enter("a");
        let mut other = sequencer.enter("b");
        assert!(first.wait().now_or_never().is_some());
        assert!(
            other.wait().now_or_never().is_some(),
            "another key goes at once"
        );
        assert!(
            second.wait().now_or_never().is_none(),
            "waits for the first"
        );
        drop(first);
        assert!(second.wait().now_or_never().is_some());
        drop(second);
        assert!(sequencer.last.lock().unwrap().len() == 1, "only b is left");
    }
}
