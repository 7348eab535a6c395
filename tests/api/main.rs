//! Black-box tests against a real NATS server with JetStream (started through
//! testcontainers), fake CRMs served over real HTTP, and the real binary where
//! processes matter. One test binary; `TEST_LOG=1` shows the app's logs.

mod events;
mod helpers;
mod http;
mod ops;
mod registry;
mod security;
mod service;
