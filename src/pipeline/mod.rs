//! The event pipeline, in the order an event travels it:
//!
//! 1. [`intake`]: one consumer on `SOFTPHONE_EVENTS` validates each event,
//!    dead-letters an invalid one, and routes a valid one to its partition
//!    of its CRM connection's lane in `SOFTPHONE_LANES` (and `loaded` and
//!    `status_changed` to the softphone lane as well): the only place the
//!    pipeline picks an event's CRM lane.
//! 2. [`lane`]: each lane in `lanes.partitions` consumers (a hash of the
//!    conversation); each event decoded when it is pulled (decoding repeats
//!    the contract's checks the intake made) and kept for every attempt, a
//!    conversation's worked one at a time in order, its own failures
//!    retried in process; a CRM lane's [`gate`] pauses it while its
//!    connection is in trouble.
//! 3. [`work`]: the CRM connection's actions, or the registry and `load`
//!    callbacks of the softphone lane.
//! 4. [`outcome`]: decides every fate (ack, retry, hold, dead-letter, give
//!    back); the unit carries each one out, through [`delivery`] (and
//!    [`dead_letter`], which keeps the copy).
//!
//! Every consumer (the intake, each partition) is a unit worked by one
//! replica at a time: [`share`] decides which (membership and ownership
//! leases in two key-value buckets), and [`unit`] is the one consume loop
//! that works it, pulling no more than its room, in order ([`sequencer`]),
//! and carries out every fate: a stage ([`intake`], [`lane`]) only says what
//! one attempt is and how a held event waits for its turn.

mod dead_letter;
mod delivery;
mod gate;
mod intake;
mod lane;
mod outcome;
mod pull;
mod sequencer;
pub(crate) mod settings;
mod share;
mod unit;
mod unreadable;
mod work;

use std::sync::Arc;

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::contract::{EVENTS_STREAM, LANES_STREAM, LaneTarget};
use crate::crm::Connections;

pub(crate) use delivery::Delivery;
pub use gate::{Circuit, GateView, Gates};
pub(crate) use intake::{lane_copy, vouched};
pub use outcome::{HandleError, Outcome, decide};
pub use settings::LaneSettings;
pub use settings::WorkerSettings;
pub use share::{Owned, key_token, target};

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

/// One durable consumer of the pipeline: the intake, or one partition of a
/// lane. Each is worked by one replica at a time (see [`share`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub role: Role,
    pub stream: &'static str,
    pub name: String,
    /// The lane partition it reads; `None` for the intake.
    pub partition: Option<u16>,
    /// The subjects it reads (all of its stream's when `None`).
    pub filter: Option<String>,
}

impl Consumer {
    /// The lane this consumer is a partition of; `None` for the intake.
    pub fn lane(&self) -> Option<LaneTarget<'_>> {
        match &self.role {
            Role::Intake => None,
            Role::Softphones => Some(LaneTarget::Softphone),
            Role::Crm(connection) => Some(LaneTarget::Crm(connection)),
        }
    }
}

/// The pipeline's consumers for these settings: the intake, the softphone
/// lane's partitions, then each CRM connection's partitions
/// (`<worker.consumer>-softphones-<p>`, `<worker.consumer>-crm-<name>-<p>`).
pub fn consumers(settings: &Settings) -> Vec<Consumer> {
    let prefix = &settings.worker.consumer;
    let partitions = settings.lanes.partitions;
    let mut consumers = vec![Consumer {
        role: Role::Intake,
        stream: EVENTS_STREAM,
        name: format!("{prefix}-intake"),
        partition: None,
        filter: None,
    }];
    let lanes = std::iter::once((Role::Softphones, format!("{prefix}-softphones"))).chain(
        settings
            .connections()
            .map(|(name, _)| (Role::Crm(name.to_owned()), format!("{prefix}-crm-{name}"))),
    );
    for (role, lane) in lanes {
        for partition in 0..partitions {
            let filter = match &role {
                Role::Crm(name) => LaneTarget::Crm(name).filter(partition),
                _ => LaneTarget::Softphone.filter(partition),
            };
            consumers.push(Consumer {
                role: role.clone(),
                stream: LANES_STREAM,
                name: format!("{lane}-{partition}"),
                partition: Some(partition),
                filter: Some(filter),
            });
        }
    }
    consumers
}

/// What a replica shows of its pipeline, as it runs.
pub struct Views<'a> {
    /// Each CRM lane's gate, for `status` and the NATS service.
    pub gates: &'a Gates,
    /// The units it works, for readiness and the consumers' gauges.
    pub owned: &'a Owned,
}

/// What a replica works with: the pipeline's consumers, bound, and the
/// buckets that share them out.
pub struct Bound {
    pub consumers: Vec<(Consumer, PullConsumer)>,
    /// The live replicas (`lanes.members_bucket`).
    pub members: kv::Store,
    /// Who works each consumer (`lanes.owners_bucket`).
    pub owners: kv::Store,
}

/// Runs this replica's share of the pipeline until `shutdown`: joins the
/// pool, works the units it owns (the intake, lane partitions), hands over
/// those that move, and on shutdown settles or gives back what it holds
/// within the shutdown deadline, releases its units and leaves the pool.
/// `intake_connects` changes on every (re)connect of the intake's own
/// connection; each CRM lane's gate joins `views.gates`, and the units it
/// works are kept in `views.owned`.
pub async fn run(
    settings: Arc<Settings>,
    js: jetstream::Context,
    connections: Connections,
    bound: Bound,
    intake_connects: tokio::sync::watch::Receiver<u64>,
    views: Views<'_>,
    shutdown: CancellationToken,
) {
    let Views { gates, owned } = views;
    let share = share::Share::new(
        &settings.worker.consumer,
        bound.members,
        bound.owners,
        settings.lanes.lease,
        owned.clone(),
    );
    let fence = share.fence.clone();
    let worker = &settings.worker;
    let softphones = Arc::new(lane::Lane::new(
        None,
        worker.clone(),
        work::SoftphoneWork::new(Arc::clone(&settings), connections.clone(), js.clone()),
        None,
    ));
    let mut crm_lanes = std::collections::BTreeMap::new();
    let intake = Arc::new(intake::Intake::new(
        Arc::clone(&settings),
        js.clone(),
        intake_connects,
    ));
    let mut slots = Vec::new();
    for (consumer, pull) in bound.consumers {
        let settings_for = |room: usize, ack_wait| Template {
            name: consumer.name.clone(),
            js: js.clone(),
            room,
            ack_wait,
            settings: worker.clone(),
            give_back_within: settings.lanes.lease / 4,
            fence: fence.clone(),
        };
        let start: share::Start = match &consumer.role {
            Role::Intake => {
                let template = settings_for(worker.intake_window, worker.intake_ack_wait);
                let intake = Arc::clone(&intake);
                Box::new(move |consumer, stop| {
                    let unit = template.unit(Arc::clone(&intake));
                    Box::pin(unit.run(consumer, stop))
                })
            }
            Role::Softphones => {
                let template = settings_for(worker.concurrency, worker.ack_wait);
                let lane = Arc::clone(&softphones);
                Box::new(move |consumer, stop| {
                    let unit = template.unit(Arc::clone(&lane));
                    Box::pin(unit.run(consumer, stop))
                })
            }
            Role::Crm(connection) => {
                let Some(crm) = connections.get(connection) else {
                    tracing::error!(%connection, "No adapter for a configured connection; its lane is not consumed.");
                    continue;
                };
                // An adapter that batches (Salesforce) asks for room to fill a batch.
                let room = worker.concurrency.max(crm.concurrency().unwrap_or(0));
                let lane = crm_lanes
                    .entry(connection.clone())
                    .or_insert_with(|| {
                        let gate =
                            gate::Gate::new(connection, &settings.lanes, worker.max_retry_after);
                        gates.insert(connection, &gate);
                        Arc::new(lane::Lane::new(
                            Some(connection.clone()),
                            worker.clone(),
                            work::CrmWork::new(connection, Arc::clone(crm)),
                            Some(gate),
                        ))
                    })
                    .clone();
                let template = settings_for(room, worker.ack_wait);
                Box::new(move |consumer, stop| {
                    let unit = template.unit(Arc::clone(&lane));
                    Box::pin(unit.run(consumer, stop))
                })
            }
        };
        slots.push(share::Slot {
            key: consumer.name.clone(),
            stream: consumer.stream,
            consumer: pull,
            ack_wait: match consumer.role {
                Role::Intake => worker.intake_ack_wait,
                _ => worker.ack_wait,
            },
            start,
        });
    }
    share.run(slots, shutdown).await;
}

/// What a unit of one consumer is made of, but its stage.
#[derive(Clone)]
struct Template {
    name: String,
    js: jetstream::Context,
    room: usize,
    ack_wait: std::time::Duration,
    settings: WorkerSettings,
    give_back_within: std::time::Duration,
    fence: share::Fence,
}

impl Template {
    fn unit<S: unit::Stage>(&self, stage: Arc<S>) -> unit::Unit<S> {
        unit::Unit {
            name: self.name.clone(),
            stage,
            js: self.js.clone(),
            room: self.room,
            ack_wait: self.ack_wait,
            settings: self.settings.clone(),
            give_back_within: self.give_back_within,
            fence: self.fence.clone(),
        }
    }
}
