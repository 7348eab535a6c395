//! Shared test plumbing, by concern: a NATS server ([`nats`], [`nats_process`]),
//! fake CRMs over real HTTP ([`fakes`]), the app in this process started one
//! way ([`app`]: `App::builder`) and its HTTP API ([`http`]), the real binary
//! ([`bridge`]), a tenancy deployment and its logins ([`tenancy`], [`login`]),
//! clients driven by hand and `/proc` ([`raw`]) and the test data ([`data`]).

#![allow(dead_code)]

mod app;
mod bridge;
mod data;
pub mod fakes;
mod http;
mod login;
mod nats;
mod nats_process;
mod raw;
mod tenancy;

use std::sync::Once;
use std::time::Duration;

pub use app::*;
pub use bridge::*;
pub use data::*;
pub use fakes::PATIENCE;
pub use fakes::webhook::*;
pub use http::*;
pub use login::*;
pub use nats::*;
pub use nats_process::*;
pub use raw::*;
pub use tenancy::*;

static LOGS: Once = Once::new();

/// `TEST_LOG=1` shows the app's logs.
pub fn init_logs() {
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("softphone_bridge=debug,info")
                .with_test_writer()
                .init();
        }
    });
}

/// A TCP port free on 127.0.0.1 a moment ago, for a process that cannot be
/// told to bind port 0 and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `probe` until it returns `Some`, failing after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(PATIENCE, what, probe).await
}

/// Polls `probe` until it returns `Some`, failing after `patience`.
pub async fn eventually_within<T, F, Fut>(patience: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
