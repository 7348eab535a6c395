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
//! callbacks on `softphone.cmd.<id>` ([`load`], [`command`]). CRMs send
//! callbacks the other way (click-to-dial, presence) through an HTTP API or
//! a NATS service ([`http`], [`service`], both via [`dispatch`]), authorised
//! against the softphone [`registry`].
//!
//! - [`config`]: layered settings (defaults, TOML file, `SOFTPHONE_BRIDGE_*`).
//! - [`broker`]: NATS connection; the streams and consumers it should have.
//! - [`provision`]: those compared with the server's, then created or updated.
//! - [`pipeline`]: intake → lane → CRM → outcome, in that order.
//! - [`crm`]: the CRM trait, the `log`, `webhook`, `salesforce` and
//!   `dynamics` adapters (the last two on the machinery they share), and the
//!   configured connections by name (deploy/salesforce.md, deploy/dynamics.md).
//! - [`http`]: the command API for CRMs, health, readiness, metrics.
//! - [`dispatch`]: validate, authorise, publish: the command path of HTTP and the NATS service.
//! - [`service`]: the same command path as a NATS micro service, and `softphone.load`.
//! - `door`: with `[callout]`, partners' `loaded` and `agent.status_changed`
//!   stored with the login the server vouches sent them.
//! - [`heartbeat`]: softphone heartbeats that keep a softphone's last sign of life fresh.
//! - [`registry`]: softphone (with `[callout]`, per partner) -> partner,
//!   presence, last seen (JetStream KV);
//!   `bucket` opens it and every other key-value bucket the bridge keeps.
//! - [`callout`]: the NATS auth callout: platform logins become users of their
//!   partner's account; `ops::nats_config` renders the server's configuration
//!   (deploy/tenancy.md).
//! - [`metric`]: Prometheus series and the recorder behind `/metrics`.
//! - [`startup`]: the [`Application`] that wires it together and shuts down cleanly.
//! - [`tls`]: the rustls crypto provider every TLS user installs first.
//! - [`cli`]: the `softphone-bridge` subcommands; `ops` holds the
//!   operators' commands (`dlq`, `replay`, `status`, `doctor`, `nats-config`,
//!   `health` the container health check) and what only they use (`console`,
//!   `scan`).

pub mod broker;
mod bucket;
pub mod callout;
pub mod cli;
mod command;
pub mod config;
pub mod contract;
pub mod crm;
pub mod dispatch;
mod door;
mod heartbeat;
pub mod http;
mod load;
pub mod metric;
mod ops;
pub mod pipeline;
pub mod provision;
pub mod registry;
mod service;
pub mod startup;
pub mod telemetry;
mod text;
pub mod tls;

pub use ops::nats_config;
pub use startup::Application;
