//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as Connection;
use async_nats::jetstream;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

use super::AppState;
use crate::config::Settings;
use crate::contract::{COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM, LANES_STREAM};
use crate::telemetry::metric;

/// The OpenAPI document of the HTTP API.
pub const OPENAPI: &str = include_str!("openapi.yaml");

/// How long one readiness probe may wait for JetStream.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks: the connection, the streams, the registry and
/// idempotency buckets, the pipeline's consumers and the NATS command service.
#[derive(Clone)]
pub struct Readiness {
    client: async_nats::Client,
    /// The intake pulls on a connection of its own.
    intake: async_nats::Client,
    js: jetstream::Context,
    /// The pipeline's units this replica works: only theirs are read, so a
    /// probe costs one replica's share, however many replicas there are.
    owned: crate::pipeline::Owned,
    /// The consumers whose gauges this replica set last.
    reported: Arc<Mutex<BTreeSet<String>>>,
    bucket: String,
    /// The commands' idempotency bucket: without it every command gets 503.
    keys: String,
    bound: Arc<AtomicBool>,
    serving: Arc<AtomicBool>,
}

/// The readiness report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ready: bool,
    /// Check name -> "ok" or why not.
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// `intake` is the intake's connection of its own.
    pub fn new(
        client: async_nats::Client,
        intake: async_nats::Client,
        js: jetstream::Context,
        settings: &Settings,
    ) -> Self {
        Self {
            client,
            intake,
            js,
            owned: crate::pipeline::Owned::default(),
            reported: Arc::default(),
            bucket: settings.registry.bucket.clone(),
            keys: settings.commands.bucket.clone(),
            bound: Arc::default(),
            serving: Arc::default(),
        }
    }

    /// Where the pipeline keeps the units this replica works.
    pub fn owned(&self) -> crate::pipeline::Owned {
        self.owned.clone()
    }

    /// Marks the pipeline's consumers as bound (or not).
    pub(crate) fn set_bound(&self, bound: bool) {
        self.bound.store(bound, Ordering::Relaxed);
    }

    /// Marks the NATS command service as subscribed (or not).
    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Runs every check and sets the readiness gauge to what they say.
    pub async fn check(&self) -> Report {
        let report = self.evaluate().await;
        metrics::gauge!(metric::READY).set(f64::from(u8::from(report.ready)));
        report
    }

    async fn evaluate(&self) -> Report {
        let mut checks = BTreeMap::new();
        let state = self.client.connection_state();
        if state != Connection::Connected {
            checks.insert("nats", format!("not connected ({state})"));
            return Report {
                ready: false,
                checks,
            };
        }
        checks.insert("nats", "ok".into());
        let intake = self.intake.connection_state();
        checks.insert(
            "intake",
            if intake == Connection::Connected {
                "ok".into()
            } else {
                format!("the intake's connection is not connected ({intake})")
            },
        );
        let mut streams = Vec::new();
        for name in [EVENTS_STREAM, LANES_STREAM, COMMANDS_STREAM, DLQ_STREAM] {
            if let Err(e) = probe(self.js.get_stream(name)).await {
                streams.push(format!("{name}: {e}"));
            }
        }
        checks.insert(
            "streams",
            if streams.is_empty() {
                "ok".into()
            } else {
                streams.join("; ")
            },
        );
        let registry = probe(self.js.get_key_value(&self.bucket)).await;
        checks.insert("registry", registry.err().unwrap_or_else(|| "ok".into()));
        let keys = probe(self.js.get_key_value(&self.keys)).await;
        checks.insert("idempotency", keys.err().unwrap_or_else(|| "ok".into()));
        let consumer = if self.bound.load(Ordering::Relaxed) {
            self.consumer_gauges().await
        } else {
            Err("the pipeline has not bound its consumers yet".into())
        };
        checks.insert("consumer", consumer.err().unwrap_or_else(|| "ok".into()));
        let service = if self.serving.load(Ordering::Relaxed) {
            "ok".into()
        } else {
            "the NATS command service is not subscribed yet".into()
        };
        checks.insert("service", service);
        Report {
            ready: checks.values().all(|v| v == "ok"),
            checks,
        }
    }

    /// Reads the counters of the consumers this replica works into the
    /// pending gauges, many at once (a lane has a consumer per partition:
    /// a replica works its share of hundreds with many connections), each
    /// with one request. A consumer it no longer works is set to 0 here (its
    /// owner reports it: dashboards take the maximum over replicas).
    async fn consumer_gauges(&self) -> Result<(), String> {
        use futures::StreamExt as _;
        let units = self.owned.units();
        let now: BTreeSet<String> = units.iter().map(|(_, name)| name.clone()).collect();
        let gone: Vec<String> = {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let gone = reported.difference(&now).cloned().collect();
            *reported = now;
            gone
        };
        for name in gone {
            let label = [("consumer", name)];
            metrics::gauge!(metric::CONSUMER_PENDING, &label).set(0.0);
            metrics::gauge!(metric::CONSUMER_ACK_PENDING, &label).set(0.0);
        }
        let mut reads = Vec::with_capacity(units.len());
        for (stream, name) in units {
            let js = self.js.clone();
            reads.push(async move {
                let info = probe(async {
                    let stream = js.get_stream_no_info(stream).await?;
                    Ok::<_, async_nats::Error>(stream.consumer_info(&name).await?)
                })
                .await
                .map_err(|e| format!("consumer {name}: {e}"))?;
                Ok::<_, String>((name, info))
            });
        }
        let mut infos = futures::stream::iter(reads).buffer_unordered(32);
        while let Some(read) = infos.next().await {
            let (name, info) = read?;
            let label = [("consumer", name)];
            metrics::gauge!(metric::CONSUMER_PENDING, &label).set(info.num_pending as f64);
            metrics::gauge!(metric::CONSUMER_ACK_PENDING, &label).set(info.num_ack_pending as f64);
        }
        Ok(())
    }
}

async fn probe<T, E: std::fmt::Display>(
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// `GET /healthz`: the process is alive.
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when NATS, the streams, the registry and the consumer are there, else 503.
pub(super) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Report>) {
    let report = state.readiness.check().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Refreshes the readiness gauge and the consumers' pending gauges. Best
    // effort: each probe is bounded, and a disconnected client answers at once.
    state.readiness.check().await;
    let handle = metric::handle();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// `GET /openapi.yaml`
pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}
