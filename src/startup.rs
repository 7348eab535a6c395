//! Application: connects NATS, provisions, builds the CRM, and runs the worker
//! and the load responder until shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::crm::{self, Crm};
use crate::load;
use crate::worker::Worker;

/// A configured bridge, connected (or connecting) to NATS.
pub struct Application {
    settings: Arc<Settings>,
    client: async_nats::Client,
    js: jetstream::Context,
    crm: Arc<dyn Crm>,
}

impl Application {
    /// Starts the NATS client (connecting in the background) and builds the CRM.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let crm = crm::build(&settings.crm)?;
        Self::build_with_crm(settings, crm).await
    }

    /// Like [`Application::build`], with a CRM adapter of the caller's.
    pub async fn build_with_crm(settings: Settings, crm: Arc<dyn Crm>) -> anyhow::Result<Self> {
        let client = broker::connect(&settings.nats, FirstConnect::Retry).await?;
        let js = broker::jetstream(client.clone(), &settings.nats);
        Ok(Self {
            settings: Arc::new(settings),
            client,
            js,
            crm,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Runs until `shutdown` is cancelled, then stops cleanly: stop pulling,
    /// finish or nak in-flight events, drain the connection.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Some(consumer) = self.bind(&shutdown).await else {
            return self.close().await;
        };
        let load = tokio::spawn(load::serve(
            self.client.clone(),
            Arc::clone(&self.settings),
            shutdown.clone(),
        ));
        let worker = Arc::new(Worker::new(
            Arc::clone(&self.settings),
            self.js.clone(),
            Arc::clone(&self.crm),
        ));
        tracing::info!(
            consumer = %self.settings.worker.consumer,
            crm = self.crm.name(),
            concurrency = self.settings.worker.concurrency,
            "Consuming softphone events."
        );
        worker.run(consumer, shutdown).await;
        match load.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Load responder failed."),
            Err(e) => tracing::error!(error = %e, "Load responder panicked."),
        }
        self.close().await
    }

    /// Provisions (unless configured off) and binds the consumer, retrying with
    /// backoff while NATS is unreachable. `None` when shutdown came first.
    async fn bind(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<jetstream::consumer::PullConsumer> {
        let mut delay = Duration::from_millis(250);
        loop {
            let attempt = async {
                if self.settings.streams.provision_on_start {
                    broker::provision(&self.js, &self.settings).await?;
                }
                broker::bind_consumer(&self.js, &self.settings).await
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return None,
                result = attempt => result,
            };
            match result {
                Ok(consumer) => return Some(consumer),
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

    async fn close(self) -> anyhow::Result<()> {
        // Acks are fire-and-forget publishes: flush them before draining.
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "Cannot flush the NATS connection.");
        }
        self.client.drain().await?;
        tracing::info!("NATS connection drained.");
        Ok(())
    }
}
