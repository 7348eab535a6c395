//! The event pipeline, in the order an event travels it:
//!
//! 1. [`intake`]: one consumer on `SOFTPHONE_EVENTS` validates each event
//!    once, dead-letters an invalid one, and routes a valid one once, to its
//!    CRM connection's lane in `SOFTPHONE_LANES` (and `loaded` and
//!    `status_changed` to the softphone lane as well).
//! 2. [`lane`]: one consumer per lane, shared by every replica, each
//!    replica working at most `worker.concurrency` of its events at once; a
//!    CRM lane's [`gate`] pauses it while its connection is in trouble.
//! 3. [`work`]: the CRM connection's actions, or the registry and `load`
//!    callbacks of the softphone lane.
//! 4. [`outcome`]: decides every fate (ack, retry, hold, dead-letter);
//!    [`delivery`] applies it, [`dead_letter`] keeps the copy.

mod dead_letter;
mod delivery;
mod gate;
mod intake;
mod lane;
mod outcome;
mod pull;
mod settings;
mod unreadable;
mod work;

use std::sync::Arc;

use async_nats::jetstream::{self, consumer::PullConsumer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::contract::{EVENTS_STREAM, LANES_STREAM, LaneTarget};
use crate::crm::Connections;

pub(crate) use delivery::Delivery;
pub use gate::{Circuit, GateView, Gates, LaneSettings};
pub(crate) use intake::lane_copy;
pub use outcome::{HandleError, Outcome, decide};
pub use settings::WorkerSettings;

/// What a durable consumer of the pipeline does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Validates and routes `SOFTPHONE_EVENTS`.
    Intake,
    /// The softphone lane: registry and `load` callbacks.
    Softphones,
    /// A CRM connection's lane.
    Crm(String),
}

/// One durable consumer every replica shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub role: Role,
    pub stream: &'static str,
    pub name: String,
    /// The subjects it reads (all of its stream's when `None`).
    pub filter: Option<String>,
}

/// The pipeline's consumers for these settings: the intake, the softphone
/// lane, then one lane per CRM connection.
pub fn consumers(settings: &Settings) -> Vec<Consumer> {
    let prefix = &settings.worker.consumer;
    let mut consumers = vec![
        Consumer {
            role: Role::Intake,
            stream: EVENTS_STREAM,
            name: format!("{prefix}-intake"),
            filter: None,
        },
        Consumer {
            role: Role::Softphones,
            stream: LANES_STREAM,
            name: format!("{prefix}-softphones"),
            filter: Some(LaneTarget::Softphone.filter()),
        },
    ];
    consumers.extend(settings.connections().map(|(name, _)| Consumer {
        role: Role::Crm(name.to_owned()),
        stream: LANES_STREAM,
        name: format!("{prefix}-crm-{name}"),
        filter: Some(LaneTarget::Crm(name).filter()),
    }));
    consumers
}

/// Runs every consumer of the pipeline until `shutdown`, then lets each
/// finish what it holds within the shutdown deadline. `intake_connects`
/// changes on every (re)connect of the intake's own connection; each CRM
/// lane's gate joins `gates`, for views.
pub async fn run(
    settings: Arc<Settings>,
    js: jetstream::Context,
    connections: Connections,
    bound: Vec<(Consumer, PullConsumer)>,
    intake_connects: tokio::sync::watch::Receiver<u64>,
    gates: &Gates,
    shutdown: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    for (consumer, pull) in bound {
        tracing::info!(
            consumer = %consumer.name,
            stream = consumer.stream,
            concurrency = settings.worker.concurrency,
            "Consuming."
        );
        let shutdown = shutdown.clone();
        match consumer.role {
            Role::Intake => {
                let intake = intake::Intake::new(Arc::clone(&settings), js.clone());
                running.spawn(intake.run(pull, intake_connects.clone(), shutdown));
            }
            Role::Softphones => {
                let work = work::SoftphoneWork::new(
                    Arc::clone(&settings),
                    connections.clone(),
                    js.clone(),
                );
                let lane = lane::Lane::new(None, settings.worker.clone(), js.clone(), work, None);
                running.spawn(lane.run(pull, shutdown));
            }
            Role::Crm(connection) => {
                let Some(crm) = connections.get(&connection) else {
                    tracing::error!(%connection, "No adapter for a configured connection; its lane is not consumed.");
                    continue;
                };
                let gate = gate::Gate::new(
                    &connection,
                    &settings.lanes,
                    settings.worker.max_retry_after,
                );
                gates.insert(&connection, &gate);
                let work = work::CrmWork::new(&connection, Arc::clone(crm));
                // An adapter that batches (Salesforce) asks for room to fill a batch.
                let mut worker = settings.worker.clone();
                worker.concurrency = worker.concurrency.max(crm.concurrency().unwrap_or(0));
                let lane = lane::Lane::new(Some(connection), worker, js.clone(), work, Some(gate));
                running.spawn(lane.run(pull, shutdown));
            }
        }
    }
    while let Some(ended) = running.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "A consumer task panicked.");
        }
    }
}
