//! Black-box tests against a real NATS server with JetStream (started through
//! testcontainers), fake CRMs served over real HTTP, and the real binary where
//! processes matter. One test binary; `TEST_LOG=1` shows the app's logs.

mod bad_input;
mod cli;
mod container;
mod dashboard;
mod deploy;
mod dlq;
mod docs;
mod doctor;
mod dynamics;
mod dynamics_fake;
mod events;
mod helpers;
mod http;
mod http_delivery;
mod lanes;
mod load;
mod ops;
mod order;
mod outcomes;
mod permissions;
mod provision;
mod registry;
mod replay;
mod replicas;
mod resilience;
mod salesforce;
mod salesforce_batch;
mod salesforce_memory;
mod salesforce_org;
mod security;
mod service;
mod slow_clients;
mod status;
mod tenancy;
mod tenancy_bridge;
mod unreadable;
