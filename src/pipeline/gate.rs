//! A lane's view, in one replica, of its CRM connection's health.
//!
//! Every connection failure ([`CrmError::Unavailable`]) holds the event that
//! met it, in progress, spending none of its deliveries. After
//! `lanes.pause_after` of them in a row the lane pauses in this replica: it
//! pulls no new events and calls the CRM only to probe it, once every
//! `lanes.probe_every`. Probes alternate between the events it holds and a
//! fresh event pulled for the purpose, so one event that the CRM keeps
//! failing cannot pass for an outage and hold the lane for ever. The first
//! answer resumes the lane and the held events go at once. Busy is not
//! trouble: a lane simply pulls no more than it has room for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::crm::CrmError;
use crate::metric;

/// How a lane holds back while its CRM connection is in trouble.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneSettings {
    /// Connection failures in a row (unreachable, timeouts, 5xx, 429,
    /// refused credentials, API allowance) that pause the lane in a replica.
    pub pause_after: u32,
    /// While a lane is paused, how often one event probes the connection (a
    /// CRM's longer `Retry-After` wins, up to `worker.max_retry_after`).
    #[serde(with = "humantime_serde")]
    pub probe_every: Duration,
}

impl Default for LaneSettings {
    fn default() -> Self {
        Self {
            pause_after: 3,
            probe_every: Duration::from_secs(5),
        }
    }
}

/// One lane's gate in this replica.
pub(super) struct Gate {
    connection: String,
    settings: LaneSettings,
    max_wait: Duration,
    state: Mutex<State>,
    /// Tells the lane and its held events when the phase changes.
    phase: watch::Sender<Phase>,
    held_gauge: metrics::Gauge,
    paused_gauge: metrics::Gauge,
    pauses: metrics::Counter,
}

/// What the lane's pull loop and held events watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Phase {
    pub paused: bool,
    /// The next probe should be a fresh event from the lane.
    pub fresh_wanted: bool,
}

#[derive(Default)]
struct State {
    /// Connection failures in a row.
    failures: u32,
    /// How many times the connection answered: a held event compares it to
    /// tell whether the connection works for others.
    answered: u64,
    paused_at: Option<Instant>,
    next_probe: Option<Instant>,
    /// `Some(fresh)` while a probe is under way.
    probing: Option<bool>,
    fresh_wanted: bool,
    held: usize,
}

/// A held event's turn to try again.
pub(super) enum Turn {
    /// The lane goes: try.
    Go,
    /// The lane is paused and this event is its probe.
    Probe(ProbeGuard),
}

impl Turn {
    /// The right to probe, when this turn is a probe.
    pub fn probe(self) -> Option<ProbeGuard> {
        match self {
            Turn::Go => None,
            Turn::Probe(probe) => Some(probe),
        }
    }
}

impl Gate {
    /// A gate for `connection`'s lane.
    pub fn new(connection: &str, settings: &LaneSettings, max_wait: Duration) -> Arc<Self> {
        let label = [("lane", connection.to_owned())];
        Arc::new(Self {
            connection: connection.to_owned(),
            settings: settings.clone(),
            max_wait,
            state: Mutex::default(),
            phase: watch::Sender::new(Phase::default()),
            held_gauge: metrics::gauge!(metric::LANE_HELD, &label),
            paused_gauge: metrics::gauge!(metric::LANE_PAUSED, &label),
            pauses: metrics::counter!(metric::LANE_PAUSES, &label),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: &State) {
        self.phase.send_replace(Phase {
            paused: state.paused_at.is_some(),
            fresh_wanted: state.fresh_wanted,
        });
    }

    pub fn probe_every(&self) -> Duration {
        self.settings.probe_every
    }

    /// How many times the connection has answered so far.
    pub fn answered(&self) -> u64 {
        self.state().answered
    }

    /// The lane's phase, and a way to wait for it to change.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Takes note of how a CRM call went: `None` for success, else its error.
    pub fn record(&self, failure: Option<&CrmError>) {
        let mut state = self.state();
        let Some(CrmError::Unavailable {
            reason,
            retry_after,
        }) = failure
        else {
            // An answer, even a refusal, says the connection works.
            state.failures = 0;
            state.answered += 1;
            if let Some(since) = state.paused_at.take() {
                state.next_probe = None;
                state.fresh_wanted = false;
                tracing::info!(
                    lane = %self.connection,
                    paused_ms = since.elapsed().as_millis() as u64,
                    held = state.held,
                    "CRM connection answers again; lane resumed."
                );
                self.paused_gauge.set(0.0);
                self.publish(&state);
            }
            return;
        };
        state.failures += 1;
        let wait = retry_after
            .unwrap_or_default()
            .min(self.max_wait)
            .max(self.settings.probe_every);
        let now = Instant::now();
        if state.paused_at.is_some() {
            // A failed probe: the next one after another interval, by a
            // fresh event if this one was held.
            state.next_probe = Some(now + wait);
            if state.probing == Some(false) {
                state.fresh_wanted = true;
            }
            self.publish(&state);
        } else if state.failures >= self.settings.pause_after {
            state.paused_at = Some(now);
            state.next_probe = Some(now + wait);
            tracing::warn!(
                lane = %self.connection,
                failures = state.failures,
                %reason,
                probe_in_ms = wait.as_millis() as u64,
                held = state.held,
                "CRM connection in trouble; lane paused, its events are kept."
            );
            self.paused_gauge.set(1.0);
            self.pauses.increment(1);
            self.publish(&state);
        }
    }

    /// The lane found no fresh event to probe with: the held ones probe.
    pub fn no_fresh_event(&self) {
        let mut state = self.state();
        if state.fresh_wanted {
            state.fresh_wanted = false;
            self.publish(&state);
        }
    }

    /// Counts an event as held until the returned guard is dropped.
    pub fn hold(self: &Arc<Self>) -> HeldGuard {
        self.state().held += 1;
        self.held_gauge.increment(1.0);
        HeldGuard(Arc::clone(self))
    }

    /// Waits until a held event may try again: after `delay` while the lane
    /// is not paused, else when it resumes or it is this event's turn to
    /// probe. A `fresh` event was pulled to probe a paused lane.
    pub async fn turn(self: &Arc<Self>, delay: Duration, fresh: bool) -> Turn {
        let mut phase = self.watch();
        if !phase.borrow_and_update().paused {
            tokio::select! {
                _ = tokio::time::sleep(delay.min(self.settings.probe_every)) => {}
                _ = phase.changed() => {}
            }
        }
        loop {
            let next_probe = {
                let mut state = self.state();
                if state.paused_at.is_none() {
                    return Turn::Go;
                }
                // A fresh event that never comes (the lane is empty, or
                // the one pulled waits behind its call's earlier event) leaves
                // the probe to the held events one interval later.
                let overdue = state
                    .next_probe
                    .is_some_and(|at| Instant::now() >= at + self.settings.probe_every);
                let mine = state.probing.is_none()
                    && (fresh == state.fresh_wanted || (!fresh && overdue));
                match state.next_probe {
                    Some(at) if at <= Instant::now() && mine => {
                        state.probing = Some(fresh);
                        state.fresh_wanted = false;
                        self.publish(&state);
                        return Turn::Probe(ProbeGuard(Arc::clone(self)));
                    }
                    Some(at) if at > Instant::now() && mine => Some(at),
                    // Maybe this event's probe once it is overdue.
                    Some(at) if state.probing.is_none() && !fresh => {
                        Some(at + self.settings.probe_every)
                    }
                    // Not this event's probe: wait for a change.
                    _ => None,
                }
            };
            let probe_due = async {
                match next_probe {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = probe_due => {}
                _ = phase.changed() => {}
            }
        }
    }
}

/// Held events of a lane, for its gauge.
pub(super) struct HeldGuard(Arc<Gate>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.state().held -= 1;
        self.0.held_gauge.decrement(1.0);
    }
}

/// The probing event's right to probe; given up when dropped, whatever the
/// probe's fate, so an abandoned probe never leaves the lane without one.
pub(super) struct ProbeGuard(Arc<Gate>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.probing = None;
        self.0.publish(&state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> CrmError {
        CrmError::Unavailable {
            reason: "down".into(),
            retry_after: None,
        }
    }

    fn gate() -> Arc<Gate> {
        Gate::new(
            "acme",
            &LaneSettings {
                pause_after: 2,
                probe_every: Duration::from_secs(5),
            },
            Duration::from_secs(60),
        )
    }

    const STEP: Duration = Duration::from_millis(200);

    #[tokio::test(start_paused = true)]
    async fn pauses_after_failures_in_a_row_then_one_probe_resumes() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        assert!(!gate.watch().borrow().paused, "one failure does not pause");
        let started = Instant::now();
        assert!(matches!(gate.turn(STEP, false).await, Turn::Go));
        assert_eq!(started.elapsed(), STEP, "tried again after the step");
        gate.record(Some(&unavailable()));
        assert!(gate.watch().borrow().paused, "two in a row pause");

        let started = Instant::now();
        let Turn::Probe(probe) = gate.turn(STEP, false).await else {
            panic!("the first waiter probes");
        };
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "after the interval"
        );
        // A second waiter does not probe while the first does.
        let second = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { matches!(gate.turn(STEP, false).await, Turn::Go) })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!second.is_finished(), "waits for the probe's answer");
        let answered = gate.answered();
        gate.record(None);
        drop(probe);
        assert!(second.await.unwrap(), "the lane resumed for everyone");
        assert!(!gate.watch().borrow().paused);
        assert_eq!(gate.answered(), answered + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_held_probe_asks_for_a_fresh_event_next() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let Turn::Probe(probe) = gate.turn(STEP, false).await else {
            panic!("probe");
        };
        gate.record(Some(&unavailable()));
        drop(probe);
        assert!(gate.watch().borrow().fresh_wanted);
        // The held event waits; a fresh one takes the next probe.
        let held = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.turn(STEP, false).await.probe().is_some() })
        };
        let Turn::Probe(fresh) = gate.turn(STEP, true).await else {
            panic!("the fresh event probes");
        };
        assert!(!held.is_finished());
        gate.record(Some(&unavailable()));
        drop(fresh);
        assert!(
            !gate.watch().borrow().fresh_wanted,
            "a fresh probe that failed: held ones next"
        );
        assert!(held.await.unwrap(), "then the held event probes");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_fresh_event_the_held_ones_probe() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let probe = gate.turn(STEP, false).await.probe().unwrap();
        gate.record(Some(&unavailable()));
        drop(probe);
        gate.no_fresh_event();
        assert!(gate.turn(STEP, false).await.probe().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_over_at_once() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let Turn::Probe(probe) = gate.turn(STEP, false).await else {
            panic!("probe");
        };
        drop(probe);
        let started = Instant::now();
        assert!(matches!(gate.turn(STEP, false).await, Turn::Probe(_)));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
