//! The operators' commands, beside the service they inspect and mend: `dlq`
//! (dead letters: list, show, replay, purge), `replay` (kept events through
//! a CRM connection again), `status` (lanes, replicas, dead letters, API
//! usage), `doctor` (a line per check), `nats-config` (the server's
//! configuration), `health` (the container health check), and what only they
//! use: `console` (times, confirmation, progress at the terminal) and `scan`
//! (reading a stream in order).

mod console;
pub(crate) mod dlq;
pub(crate) mod doctor;
pub(crate) mod health;
pub mod nats_config;
pub(crate) mod replay;
mod scan;
pub(crate) mod status;
