//! Routes each partner's events to its own CRM connection, and keeps one
//! connection's trouble from holding back the others: each connection has a
//! bounded number of calls in flight and a circuit breaker, and refuses at once
//! (a transient error with a retry delay, so the event is nak'd and its worker
//! slot freed) when saturated or open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Crm, CrmError, CrmEvent};
use crate::config::{RoutingSettings, Settings};
use crate::contract::Guid;

pub use crate::config::DEFAULT_CONNECTION;

/// The CRM the worker talks to: picks the partner's connection.
pub struct CrmRouter {
    default: Connection,
    named: HashMap<String, Connection>,
    partners: HashMap<Guid, String>,
}

struct Connection {
    name: String,
    crm: Arc<dyn Crm>,
    max_in_flight: usize,
    in_flight: Semaphore,
    breaker: Mutex<Breaker>,
    settings: RoutingSettings,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

impl CrmRouter {
    /// Builds every connection of the settings (`[crm]` and `[crms.*]`).
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        use anyhow::Context;
        let default = super::build(DEFAULT_CONNECTION, &settings.crm).context("[crm]")?;
        let mut named = HashMap::new();
        for (name, crm) in &settings.crms {
            let crm = super::build(name, crm).with_context(|| format!("[crms.{name}]"))?;
            named.insert(name.clone(), crm);
        }
        Ok(Self::new(settings, default, named))
    }

    /// A router over connections built elsewhere (tests, embedders).
    pub fn new(
        settings: &Settings,
        default: Arc<dyn Crm>,
        named: HashMap<String, Arc<dyn Crm>>,
    ) -> Self {
        let max_in_flight = settings.max_in_flight();
        let connection = |name: &str, crm| Connection {
            name: name.to_owned(),
            crm,
            max_in_flight,
            in_flight: Semaphore::new(max_in_flight),
            breaker: Mutex::new(Breaker::default()),
            settings: settings.routing.clone(),
        };
        let partners = settings
            .partners
            .keys()
            .map(|id| (id.clone(), settings.connection_for(Some(id)).to_owned()))
            .filter(|(_, name)| name != DEFAULT_CONNECTION)
            .collect();
        Self {
            default: connection(DEFAULT_CONNECTION, default),
            named: named
                .into_iter()
                .map(|(name, crm)| (name.clone(), connection(&name, crm)))
                .collect(),
            partners,
        }
    }

    fn connection(&self, event: &CrmEvent) -> &Connection {
        self.partner_connection(event.event.partner_id())
    }

    fn partner_connection(&self, partner: Option<&Guid>) -> &Connection {
        partner
            .and_then(|partner| self.partners.get(partner))
            .and_then(|name| self.named.get(name))
            .unwrap_or(&self.default)
    }
}

impl Connection {
    async fn handle(&self, event: &CrmEvent) -> Result<(), CrmError> {
        if let Some(wait) = self.open_for() {
            return Err(CrmError::Transient {
                reason: format!("CRM connection {} is failing (circuit open)", self.name),
                retry_after: Some(wait),
            });
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(CrmError::Transient {
                reason: format!(
                    "CRM connection {} has {} calls in flight (routing.max_in_flight)",
                    self.name, self.max_in_flight
                ),
                retry_after: Some(self.settings.busy_retry_after),
            });
        };
        let result = self.crm.handle(event).await;
        self.record(&result);
        result
    }

    /// How long the circuit stays open, if it is.
    fn open_for(&self) -> Option<Duration> {
        let breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let until = breaker.open_until?;
        let now = Instant::now();
        // Once the delay has passed, calls go through again (half-open): one
        // more failure reopens it, one success closes it.
        (until > now).then(|| until - now)
    }

    fn record(&self, result: &Result<(), CrmError>) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            // A refused event says nothing about the connection's health.
            Ok(()) | Err(CrmError::Permanent { .. }) => *breaker = Breaker::default(),
            Err(CrmError::Transient { .. }) => {
                breaker.failures += 1;
                if breaker.failures >= self.settings.breaker_failures {
                    if breaker
                        .open_until
                        .is_none_or(|until| until <= Instant::now())
                    {
                        tracing::warn!(crm = %self.name, failures = breaker.failures, open_for_ms = self.settings.breaker_open_for.as_millis() as u64, "CRM connection failing; circuit opened.");
                    }
                    breaker.open_until = Some(Instant::now() + self.settings.breaker_open_for);
                }
            }
        }
    }
}

impl Crm for CrmRouter {
    fn name(&self) -> &str {
        "router"
    }

    fn name_for(&self, event: &CrmEvent) -> &str {
        self.connection(event).crm.name()
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        Box::pin(self.connection(event).handle(event))
    }

    fn dispositions<'a>(&'a self, partner: Option<&'a Guid>) -> BoxFuture<'a, Option<Vec<String>>> {
        self.partner_connection(partner).crm.dispositions(partner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails while `fail` is set, and counts calls.
    struct Flaky {
        fail: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicU32,
    }

    impl Crm for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn handle<'a>(&'a self, _: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            let result = if self.fail.load(SeqCst) {
                Err(CrmError::Transient {
                    reason: "down".into(),
                    retry_after: None,
                })
            } else {
                Ok(())
            };
            Box::pin(std::future::ready(result))
        }
    }

    fn event() -> CrmEvent {
        let body = br#"{"partnerId":"215fd887-39be-4935-981f-2670d6afeaa7","conversationId":"57053e21-0440-4689-a27a-513d7dceebde","reason":"active"}"#;
        CrmEvent {
            id: "e".into(),
            event: crate::contract::Event::decode(crate::contract::EventKind::CallRejected, body)
                .unwrap(),
            raw: serde_json::from_slice(body).unwrap(),
            published: time::OffsetDateTime::UNIX_EPOCH,
            sequence: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_failures_and_closes_after_a_success() {
        use std::sync::atomic::Ordering::SeqCst;
        let settings =
            Settings::from_toml("[routing]\nbreaker_failures = 2\nbreaker_open_for = \"10s\"")
                .unwrap();
        let flaky = Arc::new(Flaky {
            fail: true.into(),
            calls: 0.into(),
        });
        let router = CrmRouter::new(&settings, flaky.clone(), HashMap::new());
        let e = event();
        assert_eq!(
            router.name_for(&e),
            "flaky",
            "metrics name the adapter, not the router"
        );
        for _ in 0..2 {
            assert!(router.handle(&e).await.is_err());
        }
        match router.handle(&e).await {
            Err(CrmError::Transient {
                retry_after: Some(wait),
                reason,
            }) => {
                assert!(
                    wait <= Duration::from_secs(10) && reason.contains("circuit open"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(flaky.calls.load(SeqCst), 2, "an open circuit makes no call");
        tokio::time::advance(Duration::from_secs(11)).await;
        flaky.fail.store(false, SeqCst);
        assert!(
            router.handle(&e).await.is_ok(),
            "half-open lets a call through"
        );
        flaky.fail.store(true, SeqCst);
        assert!(router.handle(&e).await.is_err());
        assert!(
            router.handle(&e).await.is_err(),
            "closed again: two failures to reopen"
        );
        assert_eq!(flaky.calls.load(SeqCst), 5);
    }
}
