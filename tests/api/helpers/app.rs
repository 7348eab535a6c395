//! The app, running in this process against a container NATS.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, publish::PublishAck};
use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;
use softphone_bridge::{Application, pipeline, provision};
use tokio_util::sync::CancellationToken;

use super::*;

/// Settings for tests: fast retries, a short ack wait, the given CRM section.
pub fn settings(nats_url: &str, crm_toml: &str) -> Settings {
    settings_with(nats_url, crm_toml, None, "")
}

/// Test settings as [`settings`] makes them, plus `extra` TOML appended
/// (more tables: `[crms.x]`, `[routing]`, another partner ...), and
/// `partner_crm` as the first partner's `crm` key when given.
pub fn settings_with(
    nats_url: &str,
    crm_toml: &str,
    partner_crm: Option<&str>,
    extra: &str,
) -> Settings {
    let partner_crm = partner_crm
        .map(|name| format!("crm = \"{name}\""))
        .unwrap_or_default();
    Settings::from_toml(&format!(
        r#"
dispositions = ["Sale", "No sale"]

[nats]
url = "{nats_url}"

[worker]
concurrency = 8
ack_wait = "5s"
max_deliveries = 3
backoff = ["200ms", "400ms"]
max_retry_after = "2s"
shutdown_deadline = "5s"

[crm]
{crm_toml}

[partners.{PARTNER}]
business_segment_id = "{SEGMENT}"
channel_origin_id = "{ORIGIN}"
dispositions = ["Booked", "Cancelled", "Callback"]
{partner_crm}

{extra}
"#
    ))
    .map(|mut settings| {
        small_lanes(&mut settings);
        settings
    })
    .expect("test settings are valid")
}

/// The tests' lanes: two partitions each, a short lease (unless set).
pub fn small_lanes(settings: &mut Settings) {
    let defaults = softphone_bridge::config::LaneSettings::default();
    if settings.lanes.partitions == defaults.partitions {
        settings.lanes.partitions = TEST_PARTITIONS;
    }
    if settings.lanes.lease == defaults.lease {
        settings.lanes.lease = TEST_LEASE;
    }
}

/// Partitions per lane in tests.
pub const TEST_PARTITIONS: u16 = 2;
/// The membership lease in tests.
pub const TEST_LEASE: Duration = Duration::from_secs(4);

/// The app, running in this process against a container NATS.
pub struct TestApp {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub settings: Settings,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The API's and the health/metrics addresses, when `http.listen` is set.
    pub(super) http_addrs: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// Provisions the streams (so tests can publish at once), then starts the app.
pub async fn spawn_app(nats: Nats, settings: Settings) -> TestApp {
    let client = async_nats::connect(&nats.url)
        .await
        .expect("test client connects");
    let js = jetstream::new(client.clone());
    provision::apply(&js, &settings)
        .await
        .expect("provisioning works");
    let shutdown = CancellationToken::new();
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let http_addrs = app.http_addr().zip(app.ops_addr());
    let handle = tokio::spawn(app.run_until(shutdown.clone()));
    TestApp {
        nats,
        client,
        js,
        settings,
        shutdown,
        handle,
        http_addrs,
    }
}

/// NATS, then the app with `crm_toml` as `[crm]`, whose lane pauses after two
/// connection failures and then probes every 300 ms.
pub async fn spawn_pausing_app(crm_toml: &str) -> TestApp {
    let nats = start_nats().await;
    let settings = settings_with(
        &nats.url,
        crm_toml,
        None,
        "[lanes]\npause_after = 2\nprobe_every = \"300ms\"\n",
    );
    spawn_app(nats, settings).await
}

/// Waits until the default connection's lane is paused (or not) in the app,
/// as its gauge on `/metrics` says (each test runs in a process of its own).
pub async fn lane_paused(paused: bool) {
    let sample = format!(
        "softphone_bridge_lane_paused{{lane=\"crm\"}} {}",
        u8::from(paused)
    );
    eventually(&sample, || async {
        softphone_bridge::metric::handle()
            .render()
            .contains(&sample)
            .then_some(())
    })
    .await;
}

/// NATS, then the app with a webhook CRM pointing at `crm`.
pub async fn spawn_webhook_app(crm: &FakeCrm) -> TestApp {
    let nats = start_nats().await;
    let settings = settings(&nats.url, &webhook_crm(&crm.url()));
    spawn_app(nats, settings).await
}

impl TestApp {
    /// Publishes an event body through JetStream, optionally with a Nats-Msg-Id.
    pub async fn publish(&self, kind: EventKind, body: &str, msg_id: Option<&str>) -> PublishAck {
        publish(&self.js, kind, body, msg_id).await
    }

    /// Publishes `count` events of `kind`, each for a new conversation of `partner`.
    pub async fn publish_calls(&self, kind: EventKind, partner: &str, extra: &str, count: usize) {
        for _ in 0..count {
            let body = partner_call_body(partner, &conversation(), extra);
            self.publish(kind, &body, None).await;
        }
    }

    /// Publishes a good call event every 50 ms until the returned task is
    /// aborted: traffic that shows the CRM connection answering.
    pub fn steady_traffic(&self) -> tokio::task::JoinHandle<()> {
        let js = self.js.clone();
        tokio::spawn(async move {
            loop {
                publish(
                    &js,
                    EventKind::CallAccepted,
                    &call_body(&conversation(), ""),
                    None,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Stops the app as SIGTERM would and waits for it.
    pub async fn stop(self) -> Nats {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("app task joins")
            .expect("app stops cleanly");
        self.nats
    }

    /// The default CRM connection's lane consumers.
    pub async fn consumer_info(&self) -> LaneInfo {
        lane_info(&self.js, &self.settings, "crm").await
    }

    /// The intake's consumer on `SOFTPHONE_EVENTS`.
    pub async fn intake_info(&self) -> consumer::Info {
        let intake = pipeline_consumer(&self.settings, |r| *r == pipeline::Role::Intake);
        consumer_info(&self.js, intake.stream, &intake.name).await
    }

    /// Waits until the intake and every lane have nothing pending or
    /// unacknowledged; returns the default CRM lane's consumers.
    pub async fn settled(&self) -> LaneInfo {
        settled(&self.js, &self.settings).await
    }

    /// The next dead-lettered message (reads SOFTPHONE_DLQ in order).
    pub async fn dead_letters(&self) -> DeadLetters {
        DeadLetters::open(&self.js).await
    }
}
