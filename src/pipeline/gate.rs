//! A lane's view, in one replica, of its CRM connection's health.
//!
//! Every connection failure ([`CrmError::Unavailable`]) holds the event that
//! met it, in progress, spending none of its deliveries. After
//! `lanes.pause_after` of them in a row the lane pauses in this replica: it
//! calls the CRM only to probe it, once every `lanes.probe_every`, and holds
//! every event it pulls, so it stops pulling once its room
//! (`worker.concurrency`) is full. The held events take turns at probing, in
//! the order they came to wait, so one event that the CRM keeps failing
//! cannot pass for an outage and hold the lane for ever. The first answer
//! resumes the lane and the held events go at once. Busy is not trouble: a
//! lane simply pulls no more than it has room for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(super) use super::settings::LaneSettings;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::crm::CrmError;
use crate::telemetry::metric;

/// One lane's gate in this replica.
pub(super) struct Gate {
    connection: String,
    settings: LaneSettings,
    max_wait: Duration,
    state: Mutex<State>,
    /// Whether the lane is paused; every change of the state notifies it.
    paused: watch::Sender<bool>,
    held_gauge: metrics::Gauge,
    paused_gauge: metrics::Gauge,
    pauses: metrics::Counter,
}

#[derive(Default)]
struct State {
    /// Connection failures in a row.
    failures: u32,
    /// How many times the connection answered: a held event compares it to
    /// tell whether the connection works for others.
    answered: u64,
    paused_at: Option<Instant>,
    /// The last connection failure's reason, until the connection answers.
    reason: Option<String>,
    next_probe: Option<Instant>,
    probing: bool,
    /// Held events waiting for their turn, by the order they came to wait:
    /// the first probes next.
    queue: BTreeSet<u64>,
    tickets: u64,
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
    pub(super) fn probe(self) -> Option<ProbeGuard> {
        match self {
            Turn::Go => None,
            Turn::Probe(probe) => Some(probe),
        }
    }
}

impl Gate {
    /// A gate for `connection`'s lane.
    pub(super) fn new(connection: &str, settings: &LaneSettings, max_wait: Duration) -> Arc<Self> {
        let label = [("lane", connection.to_owned())];
        Arc::new(Self {
            connection: connection.to_owned(),
            settings: settings.clone(),
            max_wait,
            state: Mutex::default(),
            paused: watch::Sender::new(false),
            held_gauge: metrics::gauge!(metric::LANE_HELD, &label),
            paused_gauge: metrics::gauge!(metric::LANE_PAUSED, &label),
            pauses: metrics::counter!(metric::LANE_PAUSES, &label),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes everyone who waits on the gate.
    fn publish(&self, state: &State) {
        self.paused.send_replace(state.paused_at.is_some());
    }

    /// Whether the lane is paused in this replica.
    pub(super) fn paused(&self) -> bool {
        self.state().paused_at.is_some()
    }

    /// What operators see of the gate (read-only).
    pub(super) fn view(&self) -> GateView {
        let state = self.state();
        let circuit = match (state.paused_at, state.probing) {
            (Some(_), true) => Circuit::HalfOpen,
            (Some(_), false) => Circuit::Open,
            (None, _) if state.failures > 0 => Circuit::Failing,
            (None, _) => Circuit::Closed,
        };
        let paused_since = state.paused_at.map(|at| {
            let since = time::OffsetDateTime::now_utc() - at.elapsed();
            since
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        GateView {
            paused: state.paused_at.is_some(),
            circuit,
            failures: state.failures,
            reason: state.reason.clone(),
            paused_since,
            held: state.held,
        }
    }

    /// How many times the connection has answered so far.
    pub(super) fn answered(&self) -> u64 {
        self.state().answered
    }

    /// Takes note of how a CRM call went: `None` for success, else its error.
    pub(super) fn record(&self, failure: Option<&CrmError>) {
        let mut state = self.state();
        let Some(CrmError::Unavailable {
            reason,
            retry_after,
        }) = failure
        else {
            // An answer, even a refusal, says the connection works.
            state.failures = 0;
            state.reason = None;
            state.answered += 1;
            if let Some(since) = state.paused_at.take() {
                state.next_probe = None;
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
        state.reason = Some(reason.clone());
        let wait = retry_after
            .unwrap_or_default()
            .min(self.max_wait)
            .max(self.settings.probe_every);
        let now = Instant::now();
        if state.paused_at.is_some() {
            // A failed probe: the next one after another interval.
            state.next_probe = Some(now + wait);
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

    /// Counts an event as held until the returned guard is dropped.
    pub(super) fn hold(self: &Arc<Self>) -> HeldGuard {
        self.state().held += 1;
        self.held_gauge.increment(1.0);
        HeldGuard(Arc::clone(self))
    }

    /// Waits until a held event may try again: after `delay` while the lane
    /// is not paused, else when it resumes or it is this event's turn to probe.
    pub(super) async fn turn(self: &Arc<Self>, delay: Duration) -> Turn {
        let mut changes = self.paused.subscribe();
        if !*changes.borrow_and_update() {
            tokio::select! {
                _ = tokio::time::sleep(delay.min(self.settings.probe_every)) => {}
                _ = changes.changed() => {}
            }
        }
        let place = InQueue::join(self);
        loop {
            let next_probe = {
                let mut state = self.state();
                if state.paused_at.is_none() {
                    return Turn::Go;
                }
                let first = !state.probing && state.queue.first() == Some(&place.1);
                match state.next_probe {
                    Some(at) if first && at <= Instant::now() => {
                        state.probing = true;
                        drop(state);
                        drop(place);
                        return Turn::Probe(ProbeGuard(Arc::clone(self)));
                    }
                    Some(at) if first => Some(at),
                    // Not this event's turn: wait for a change.
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
                _ = changes.changed() => {}
            }
        }
    }
}

/// A lane's circuit, as a breaker would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Circuit {
    /// The connection answers.
    Closed,
    /// Failures in a row, not yet `lanes.pause_after`.
    Failing,
    /// Paused: only probes call the CRM.
    Open,
    /// Paused, and a probe is under way.
    HalfOpen,
}

/// A lane's gate in one replica, as `softphone-bridge status` and
/// `nats micro stats` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateView {
    pub paused: bool,
    pub circuit: Circuit,
    /// Connection failures in a row.
    pub failures: u32,
    /// The last connection failure's reason, while it lasts.
    pub reason: Option<String>,
    /// When the lane paused (RFC 3339).
    pub paused_since: Option<String>,
    /// Events held in this replica while the connection is in trouble.
    pub held: usize,
}

/// Every CRM lane's gate in this replica, by connection, for views only.
#[derive(Clone, Default)]
pub struct Gates(Arc<Mutex<BTreeMap<String, Arc<Gate>>>>);

impl Gates {
    pub(super) fn insert(&self, connection: &str, gate: &Arc<Gate>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connection.to_owned(), Arc::clone(gate));
    }

    /// Each running CRM lane's view, by connection.
    pub(crate) fn views(&self) -> BTreeMap<String, GateView> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(connection, gate)| (connection.clone(), gate.view()))
            .collect()
    }
}

/// A held event's place in the queue for probing, left when dropped.
struct InQueue(Arc<Gate>, u64);

impl InQueue {
    fn join(gate: &Arc<Gate>) -> Self {
        let mut state = gate.state();
        state.tickets += 1;
        let ticket = state.tickets;
        state.queue.insert(ticket);
        InQueue(Arc::clone(gate), ticket)
    }
}

impl Drop for InQueue {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.queue.remove(&self.1);
        self.0.publish(&state);
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
        state.probing = false;
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
                ..Default::default()
            },
            Duration::from_secs(60),
        )
    }

    const STEP: Duration = Duration::from_millis(200);

    #[tokio::test(start_paused = true)]
    async fn pauses_after_failures_in_a_row_then_one_probe_resumes() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        assert!(!gate.paused(), "one failure does not pause");
        let started = Instant::now();
        assert!(matches!(gate.turn(STEP).await, Turn::Go));
        assert_eq!(started.elapsed(), STEP, "tried again after the step");
        assert_eq!(gate.view().circuit, Circuit::Failing);
        gate.record(Some(&unavailable()));
        assert!(gate.paused(), "two in a row pause");
        let view = gate.view();
        assert_eq!(view.circuit, Circuit::Open);
        assert_eq!(view.reason.as_deref(), Some("down"));
        assert!(view.paused_since.is_some());

        let started = Instant::now();
        let Turn::Probe(probe) = gate.turn(STEP).await else {
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
            tokio::spawn(async move { matches!(gate.turn(STEP).await, Turn::Go) })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!second.is_finished(), "waits for the probe's answer");
        let answered = gate.answered();
        gate.record(None);
        drop(probe);
        assert!(second.await.unwrap(), "the lane resumed for everyone");
        assert!(!gate.paused());
        let view = gate.view();
        assert_eq!((view.circuit, view.reason), (Circuit::Closed, None));
        assert_eq!(gate.answered(), answered + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn held_events_take_turns_at_probing() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let waiter = |name: &'static str| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let probe = gate.turn(STEP).await.probe();
                (name, probe.is_some())
            })
        };
        let a = waiter("a");
        tokio::task::yield_now().await;
        let b = waiter("b");
        tokio::task::yield_now().await;
        let (name, probed) = a.await.unwrap();
        assert_eq!(
            (name, probed),
            ("a", true),
            "the first to wait probes first"
        );
        gate.record(Some(&unavailable()));
        // `a` failed and waits again, behind `b`.
        let a_again = waiter("a");
        let (name, probed) = b.await.unwrap();
        assert_eq!((name, probed), ("b", true), "then the next one");
        gate.record(None);
        assert_eq!(a_again.await.unwrap(), ("a", false), "resumed: `a` goes");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_over_at_once() {
        let gate = gate();
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let Turn::Probe(probe) = gate.turn(STEP).await else {
            panic!("probe");
        };
        drop(probe);
        let started = Instant::now();
        assert!(matches!(gate.turn(STEP).await, Turn::Probe(_)));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
