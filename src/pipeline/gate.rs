//! A lane's view, in one replica, of its CRM connection's health.
//!
//! Every connection failure ([`CrmError::Unavailable`]) holds the event that
//! met it. After `lanes.pause_after` of them in a row the lane pauses: this
//! replica stops pulling the lane, the lane's consumer is paused on the
//! server (so the whole pool stops feeding it, and `nats consumer info` shows
//! it), and the held events wait. One of them probes the connection every
//! `lanes.probe_every`; the first answer resumes the lane, and the held
//! events go at once. Busy is not trouble: a lane simply pulls no more than
//! it has room for.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::contract::LANES_STREAM;
use crate::crm::CrmError;
use crate::metric;

/// How a lane holds back while its CRM connection is in trouble.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneSettings {
    /// Connection failures in a row (unreachable, timeouts, 5xx, 429,
    /// refused credentials, API allowance) that pause the lane.
    pub pause_after: u32,
    /// While a lane is paused, how often one held event probes the
    /// connection (a CRM's longer `Retry-After` wins, up to `worker.max_retry_after`).
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
    /// `Some(until)` while paused: what the server-side pause is set to.
    paused: watch::Sender<Option<time::OffsetDateTime>>,
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
    next_probe: Option<Instant>,
    probing: bool,
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
    /// A gate for `connection`'s lane, whose consumer `consumer` on
    /// `SOFTPHONE_LANES` it pauses and resumes on the server.
    pub fn new(
        connection: &str,
        consumer: &str,
        js: jetstream::Context,
        settings: &LaneSettings,
        max_wait: Duration,
    ) -> std::sync::Arc<Self> {
        let (paused, server_view) = watch::channel(None);
        tokio::spawn(sync_server(
            js,
            connection.to_owned(),
            consumer.to_owned(),
            server_view,
        ));
        let label = [("lane", connection.to_owned())];
        std::sync::Arc::new(Self {
            connection: connection.to_owned(),
            settings: settings.clone(),
            max_wait,
            state: Mutex::default(),
            paused,
            held_gauge: metrics::gauge!(metric::LANE_HELD, &label),
            paused_gauge: metrics::gauge!(metric::LANE_PAUSED, &label),
            pauses: metrics::counter!(metric::LANE_PAUSES, &label),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times the connection has answered so far.
    pub fn answered(&self) -> u64 {
        self.state().answered
    }

    /// Whether the lane is paused in this replica, and a way to wait for a change.
    pub fn watch(&self) -> watch::Receiver<Option<time::OffsetDateTime>> {
        self.paused.subscribe()
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
                tracing::info!(
                    lane = %self.connection,
                    paused_ms = since.elapsed().as_millis() as u64,
                    held = state.held,
                    "CRM connection answers again; lane resumed."
                );
                self.paused_gauge.set(0.0);
                self.paused.send_replace(None);
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
            // A failed probe: the next one after another interval.
            state.next_probe = Some(now + wait);
            self.paused.send_replace(Some(server_until(wait)));
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
            self.paused.send_replace(Some(server_until(wait)));
        }
    }

    /// Counts an event as held until the returned guard is dropped.
    pub fn hold(self: &std::sync::Arc<Self>) -> HeldGuard {
        self.state().held += 1;
        self.held_gauge.increment(1.0);
        HeldGuard(std::sync::Arc::clone(self))
    }

    /// Waits until a held event may try again: after a short delay while the
    /// lane is not paused, else when it resumes or it is this event's turn to probe.
    pub async fn turn(self: &std::sync::Arc<Self>, retry_after: Option<Duration>) -> Turn {
        let mut paused = self.watch();
        if paused.borrow_and_update().is_none() {
            let delay = retry_after
                .unwrap_or(self.settings.probe_every)
                .min(self.settings.probe_every);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = paused.changed() => {}
            }
        }
        loop {
            let next_probe = {
                let mut state = self.state();
                if state.paused_at.is_none() {
                    return Turn::Go;
                }
                match state.next_probe {
                    Some(at) if at <= Instant::now() && !state.probing => {
                        state.probing = true;
                        return Turn::Probe(ProbeGuard(std::sync::Arc::clone(self)));
                    }
                    Some(at) if at > Instant::now() => Some(at),
                    // Someone else probes now: wait for their answer.
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
                _ = paused.changed() => {}
            }
        }
    }
}

/// The server-side pause lasts two probe intervals: long enough that the
/// probing replica extends it, short enough that the pool goes on by itself
/// if that replica dies.
fn server_until(wait: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + wait * 2
}

/// Held events of a lane, for its gauge.
pub(super) struct HeldGuard(std::sync::Arc<Gate>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.state().held -= 1;
        self.0.held_gauge.decrement(1.0);
    }
}

/// The probing event's right to probe; given up when dropped, whatever the
/// probe's fate, so an abandoned probe never leaves the lane without one.
pub(super) struct ProbeGuard(std::sync::Arc<Gate>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.state().probing = false;
    }
}

/// Mirrors this replica's pause onto the lane's consumer on the server,
/// latest state first, until the gate is gone.
async fn sync_server(
    js: jetstream::Context,
    connection: String,
    consumer: String,
    mut paused: watch::Receiver<Option<time::OffsetDateTime>>,
) {
    let mut server_paused = false;
    while paused.changed().await.is_ok() {
        let until = *paused.borrow_and_update();
        let result = async {
            let stream = js.get_stream_no_info(LANES_STREAM).await?;
            match until {
                Some(until) => stream.pause_consumer(&consumer, until).await?,
                None if server_paused => stream.resume_consumer(&consumer).await?,
                None => return Ok(()),
            };
            Ok::<_, async_nats::Error>(())
        }
        .await;
        match result {
            Ok(()) => server_paused = until.is_some(),
            // The local pause holds this replica back all the same.
            Err(e) => {
                tracing::warn!(lane = %connection, error = %e, "Cannot pause or resume the lane's consumer on the server.")
            }
        }
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

    async fn gate() -> std::sync::Arc<Gate> {
        // The server-side mirror fails quietly without a server: the local
        // gate is what is under test here.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        Gate::new(
            "acme",
            "c",
            jetstream::new(client),
            &LaneSettings {
                pause_after: 2,
                probe_every: Duration::from_secs(5),
            },
            Duration::from_secs(60),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_after_failures_in_a_row_then_one_probe_resumes() {
        let gate = gate().await;
        gate.record(Some(&unavailable()));
        assert!(
            gate.watch().borrow().is_none(),
            "one failure does not pause"
        );
        assert!(matches!(gate.turn(None).await, Turn::Go));
        gate.record(Some(&unavailable()));
        assert!(gate.watch().borrow().is_some(), "two in a row pause");

        let started = Instant::now();
        let Turn::Probe(probe) = gate.turn(None).await else {
            panic!("the first waiter probes");
        };
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "after the interval"
        );
        // A second waiter does not probe while the first does.
        let second = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { matches!(gate.turn(None).await, Turn::Go) })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!second.is_finished(), "waits for the probe's answer");
        gate.record(Some(&unavailable()));
        drop(probe);
        let Turn::Probe(probe) = gate.turn(None).await else {
            panic!("a failed probe is followed by another");
        };
        let answered = gate.answered();
        gate.record(None);
        drop(probe);
        assert!(second.await.unwrap(), "the lane resumed for everyone");
        assert!(gate.watch().borrow().is_none());
        assert_eq!(gate.answered(), answered + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_over_at_once() {
        let gate = gate().await;
        gate.record(Some(&unavailable()));
        gate.record(Some(&unavailable()));
        let Turn::Probe(probe) = gate.turn(None).await else {
            panic!("probe");
        };
        drop(probe);
        let started = Instant::now();
        assert!(matches!(gate.turn(None).await, Turn::Probe(_)));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
