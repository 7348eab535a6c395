//! Application: connects NATS, provisions, builds the CRM connections, binds
//! HTTP, and runs the event pipeline, the HTTP server, the NATS service
//! (commands and `softphone.load`) and the heartbeat listener until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::crm::Connections;
use crate::dispatch::Dispatcher;
use crate::http::Readiness;
use crate::http::Tokens;
use crate::http::{self, AppState, HttpServer};
use crate::softphones::heartbeat;
use crate::softphones::registry::Registry;
use crate::telemetry::metric;
use crate::{pipeline, service};

/// A configured bridge, connected (or connecting) to NATS.
pub struct Application {
    settings: Arc<Settings>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The intake's connection of its own (see [`broker::connect_intake`]).
    intake: broker::IntakeConnection,
    intake_js: jetstream::Context,
    connections: Connections,
    http: Option<HttpServer>,
    readiness: Readiness,
    dispatcher: Dispatcher,
    /// The CRM lanes' gates, which the NATS service shows.
    gates: pipeline::Gates,
    /// The NATS auth callout, when `[callout]` is configured.
    callout: Option<Arc<crate::callout::Callout>>,
}

impl Application {
    /// Starts the NATS client (connecting in the background) and builds the
    /// CRM connections.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let callout = crate::callout::Callout::new(&settings)?.map(Arc::new);
        if callout.is_none() {
            tracing::warn!(
                "No [callout]: softphones share one account, and a partner's identity is taken from the payload (deploy/tenancy.md)."
            );
        }
        let client = broker::connect(&settings.nats, FirstConnect::Retry).await?;
        let js = broker::jetstream(client.clone(), &settings.nats);
        let connections = Connections::build(&settings, Some(&js))?;
        let intake = broker::connect_intake(&settings.nats, FirstConnect::Retry).await?;
        let intake_js = broker::jetstream(intake.client.clone(), &settings.nats);
        let readiness =
            Readiness::new(client.clone(), intake.client.clone(), js.clone(), &settings);
        // Installed before anything records; several apps in one process share it.
        metric::handle();
        let http = HttpServer::bind(&settings.http).await?;

        let dispatcher = Dispatcher::new(
            client.clone(),
            js.clone(),
            Registry::new(js.clone(), &settings.registry),
            settings.http.unknown_softphones,
            &settings.commands,
            callout.is_some(),
        );
        Ok(Self {
            settings: Arc::new(settings),
            client,
            js,
            intake,
            intake_js,
            connections,
            http,
            readiness,
            dispatcher,
            gates: pipeline::Gates::default(),
            callout,
        })
    }

    /// The command API's address, when `http.listen` is set (port 0 binds a free one).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(HttpServer::local_addr)
    }

    /// The health and metrics address: `http.ops_listen`'s, else the API's.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::ops_addr)
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The auth callout this replica serves, when `[callout]` is configured.
    pub fn callout(&self) -> Option<Arc<crate::callout::Callout>> {
        self.callout.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops cleanly: stop pulling,
    /// finish or nak in-flight events, drain the connection.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // HTTP and the command service start at once: readyz tells when the rest is there.
        let http = self.http.take().map(|server| {
            let state = AppState::new(http::Inner {
                dispatcher: self.dispatcher.clone(),
                tokens: Tokens::new(&self.settings.http.tokens),
                readiness: self.readiness.clone(),
                body_limit: self.settings.http.body_limit,
                request_timeout: self.settings.http.request_timeout,
                in_flight: tokio::sync::Semaphore::new(self.settings.http.max_in_flight),
            });
            tokio::spawn(server.serve(state, shutdown.clone()))
        });
        let service = tokio::spawn(service::serve(
            self.client.clone(),
            self.dispatcher.clone(),
            service::Load {
                settings: Arc::clone(&self.settings),
                connections: self.connections.clone(),
            },
            self.gates.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        ));
        let heartbeats = tokio::spawn(heartbeat::serve(
            self.client.clone(),
            Registry::new(self.js.clone(), &self.settings.registry),
            self.settings.commands.clone(),
            self.callout.is_some(),
            shutdown.clone(),
        ));
        let callout = self.callout.clone().map(|callout| {
            tokio::spawn(crate::callout::serve(
                self.client.clone(),
                callout,
                shutdown.clone(),
            ))
        });
        if let Some(consumers) = self.bind(&shutdown).await {
            self.readiness.set_bound(true);
            self.consume(consumers, shutdown).await;
        }
        // Shutdown was asked for. A task still setting up on a NATS that is
        // unreachable would wait for ever: each gets the NATS request timeout.
        let grace = self.settings.nats.request_timeout;
        if let Some(http) = http {
            report("HTTP server", http.await);
        }
        let (service, heartbeats) = tokio::join!(
            ended_within(service, grace),
            ended_within(heartbeats, grace)
        );
        report("NATS command service", service);
        report("Heartbeat listener", heartbeats);
        if let Some(callout) = callout {
            report("Auth callout", ended_within(callout, grace).await);
        }
        self.close().await
    }

    async fn consume(&self, bound: pipeline::Bound, shutdown: CancellationToken) {
        pipeline::run(
            Arc::clone(&self.settings),
            self.js.clone(),
            self.connections.clone(),
            bound,
            self.intake.connects.clone(),
            pipeline::Views {
                gates: &self.gates,
                owned: &self.readiness.owned(),
            },
            shutdown,
        )
        .await;
    }

    /// Provisions (unless configured off) and binds the pipeline's consumers
    /// and buckets, retrying with backoff while NATS is unreachable. `None`
    /// when shutdown came first.
    async fn bind(&self, shutdown: &CancellationToken) -> Option<pipeline::Bound> {
        let mut delay = Duration::from_millis(250);
        loop {
            let attempt = async {
                if self.settings.streams.provision_on_start {
                    crate::broker::provision::apply(&self.js, &self.settings)
                        .await?
                        .log();
                }
                broker::bind(&self.js, &self.intake_js, &self.settings).await
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = attempt => result,
            };
            match result {
                Ok(consumers) => return Some(consumers),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "Not ready; retrying."
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Flushes and drains both connections, each within the NATS request
    /// timeout: with NATS unreachable there is nothing to flush, and a replica
    /// asked to stop must not wait for a server that may never come back.
    async fn close(self) -> anyhow::Result<()> {
        let wait = self.settings.nats.request_timeout;
        let mut drained = Ok(());
        for (connection, client) in [("intake", &self.intake.client), ("shared", &self.client)] {
            if client.connection_state() != async_nats::connection::State::Connected {
                tracing::warn!(connection, "NATS is not connected; nothing to drain.");
                continue;
            }
            // Acks are fire-and-forget publishes: flush them before draining.
            match tokio::time::timeout(wait, client.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(connection, error = %e, "Cannot flush the NATS connection.")
                }
                Err(_) => tracing::warn!(
                    connection,
                    "NATS did not take the last acks in time; their events return after the ack wait."
                ),
            }
            match tokio::time::timeout(wait, client.drain()).await {
                Ok(Ok(())) => tracing::info!(connection, "NATS connection drained."),
                Ok(Err(e)) if drained.is_ok() => drained = Err(e),
                Ok(Err(e)) => {
                    tracing::warn!(connection, error = %e, "Cannot drain the NATS connection.")
                }
                Err(_) => {
                    tracing::warn!(connection, "NATS connection not drained in time; closing.")
                }
            }
        }
        Ok(drained?)
    }
}

/// The longest a replica takes to stop once asked to, NATS slow or
/// unreachable, as [`Application::run_until`] does it: in-flight events get
/// `worker.shutdown_deadline` while the HTTP server stops alongside: idle
/// and half-sent connections closed at once, requests being answered given
/// `http.request_timeout`, then closed too; then what is left is given
/// back and the partitions released, each within a quarter of `lanes.lease`;
/// then the command service and the heartbeat listener get
/// `nats.request_timeout`, together; then each of the two NATS connections is
/// flushed and drained, each step within `nats.request_timeout`. An
/// orchestrator's grace period before it kills the process
/// (`terminationGracePeriodSeconds`) must be longer.
pub fn stop_within(settings: &Settings) -> Duration {
    let nats = settings.nats.request_timeout;
    let events = settings
        .worker
        .shutdown_deadline
        .max(settings.http.request_timeout);
    let release = 2 * (settings.lanes.lease / 4);
    let tasks = nats;
    let connections = 2 * (nats + nats);
    events + release + tasks + connections
}

/// How a task that was asked to stop ended, or `Ok` after aborting it once
/// `grace` has passed.
async fn ended_within(
    mut task: tokio::task::JoinHandle<anyhow::Result<()>>,
    grace: Duration,
) -> Result<anyhow::Result<()>, tokio::task::JoinError> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(ended) => ended,
        Err(_) => {
            task.abort();
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "A task still waiting for NATS was stopped."
            );
            Ok(Ok(()))
        }
    }
}

/// Logs how a background task ended.
fn report(task: &str, ended: Result<anyhow::Result<()>, tokio::task::JoinError>) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "{task} failed."),
        Err(e) => tracing::error!(error = %e, "{task} panicked."),
    }
}
