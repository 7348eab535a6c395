//! softphone-bridge: the "wrapper library" of the softphone contract, as a
//! NATS JetStream worker.
//!
//! Softphones publish contract events on `softphone.*` subjects. A pool of
//! replicas shares the [`pipeline`]'s durable consumers: an intake that
//! validates each event ([`contract`]) and routes it to the lane of its
//! partner's CRM connection (the pipeline's one place that lane is picked),
//! where the CRM's actions are performed ([`crm`]); a connection in trouble
//! pauses its own lane and holds its events, one module decides every fate
//! (ack, hold, retry, dead-letter), and a softphone lane answers `load` with
//! callbacks on `softphone.cmd.<id>` ([`softphones`]). CRMs send callbacks
//! the other way (click-to-dial, presence) through an HTTP API or a NATS
//! service ([`http`], `service`, both via [`dispatch`]), authorised against
//! the softphone registry.
//!
//! The rooms:
//! - the event's path: [`contract`] (what softphones say), [`pipeline`]
//!   (intake → lane → CRM → outcome, in that order), [`crm`] (the CRM trait,
//!   the `log`, `webhook`, `salesforce` and `dynamics` adapters on the
//!   machinery they share, and the connections by name);
//! - what the bridge keeps and sends for softphones besides their events:
//!   [`softphones`] (the registry, heartbeats, `load` callbacks, the door of
//!   partners' `loaded` and status changes, publishing callbacks);
//! - the command path from CRMs: [`dispatch`], behind [`http`] (the command
//!   API, health, readiness, metrics) and `service` (the NATS micro service);
//! - tenancy: [`callout`] (the NATS auth callout: platform logins become
//!   users of their partner's account; `ops::nats_config` renders the
//!   server's configuration, deploy/tenancy.md);
//! - the ground: [`broker`] (NATS connections, the streams, consumers and
//!   buckets it should have, provisioning), [`config`] (layered settings),
//!   [`telemetry`] (logs and metrics), [`tls`], `text`, `redact` (secrets
//!   kept out of what is shown);
//! - running it: [`startup`] (the [`Application`] that wires it together and
//!   shuts down cleanly), [`cli`] (the subcommands), `ops` (the operators'
//!   commands: `dlq`, `replay`, `status`, `doctor`, `nats-config`, `health`,
//!   and what only they use).

#![warn(unreachable_pub)]

pub mod broker;
pub mod callout;
pub mod cli;
pub mod config;
pub mod contract;
pub mod crm;
pub mod dispatch;
pub mod http;
mod ops;
pub mod pipeline;
mod redact;
mod service;
pub mod softphones;
pub mod startup;
pub mod telemetry;
mod text;
pub mod tls;

pub use ops::nats_config;
pub use startup::Application;
