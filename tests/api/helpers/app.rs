//! The app, running in this process against a container NATS: its test
//! settings, the one way to start it ([`App::builder`]), and replicas of it.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, publish::PublishAck};
use softphone_bridge::broker::provision;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;
use softphone_bridge::{Application, pipeline};
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

/// The app, running in this process against a container NATS, with an HTTP
/// client for its API when it serves one. Started by [`App::builder`].
pub struct App {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub settings: Settings,
    /// An HTTP client for the app's API.
    pub http: reqwest::Client,
    running: Running,
}

/// One app task in this process: what stops it, its HTTP addresses.
struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The API's and the health/metrics addresses, when `http.listen` is set.
    http_addrs: Option<(SocketAddr, SocketAddr)>,
}

impl Running {
    async fn start(settings: Settings) -> Running {
        let app = Application::build(settings).await.expect("app builds");
        let http_addrs = app.http_addr().zip(app.ops_addr());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until(shutdown.clone()));
        Running {
            shutdown,
            handle,
            http_addrs,
        }
    }

    /// Stops the app as SIGTERM would and waits for it.
    async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("app task joins")
            .expect("app stops cleanly");
    }
}

/// How an [`App`] is set up: the test settings ([`settings_with`]) with a
/// `[crm]` section (`kind = "log"` unless told), or settings given whole
/// ([`AppBuilder::with`]), then the edits, in order.
pub struct AppBuilder {
    nats: Nats,
    crm: String,
    partner_crm: Option<String>,
    toml: String,
    settings: Option<Settings>,
    edits: Vec<Edit>,
}

/// A change to the settings, made before the app starts.
type Edit = Box<dyn FnOnce(&mut Settings)>;

impl App {
    /// Starts describing an app on `nats`.
    pub fn builder(nats: Nats) -> AppBuilder {
        AppBuilder {
            nats,
            crm: "kind = \"log\"".into(),
            partner_crm: None,
            toml: String::new(),
            settings: None,
            edits: Vec::new(),
        }
    }
}

impl AppBuilder {
    /// The `[crm]` section's body.
    pub fn crm(mut self, crm_toml: &str) -> Self {
        self.crm = crm_toml.to_owned();
        self
    }

    /// A webhook `[crm]` posting to `crm`.
    pub fn webhook(self, crm: &FakeCrm) -> Self {
        self.crm(&webhook_crm(&crm.url()))
    }

    /// The first partner's `crm` key.
    pub fn partner_crm(mut self, name: &str) -> Self {
        self.partner_crm = Some(name.to_owned());
        self
    }

    /// More TOML appended to the settings (`[crms.x]`, `[routing]`, `[lanes]` ...).
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self
    }

    /// A lane that pauses after two connection failures and then probes
    /// every 300 ms.
    pub fn pausing(self) -> Self {
        self.toml("[lanes]\npause_after = 2\nprobe_every = \"300ms\"\n")
    }

    /// These settings, instead of the test settings made from the `[crm]`,
    /// the partner's connection and the TOML.
    pub fn with(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// The HTTP API on a free port with [`TOKEN`] and [`PARTNER_TOKEN`]
    /// ([`serve_http`]).
    pub fn http(self) -> Self {
        self.settings(serve_http)
    }

    /// Edits the settings (after the ones above, in order).
    pub fn settings(mut self, edit: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.edits.push(Box::new(edit));
        self
    }

    /// NATS and the settings as described, without starting anything.
    pub fn build(self) -> (Nats, Settings) {
        let mut settings = self.settings.unwrap_or_else(|| {
            settings_with(
                &self.nats.url,
                &self.crm,
                self.partner_crm.as_deref(),
                &self.toml,
            )
        });
        for edit in self.edits {
            edit(&mut settings);
        }
        (self.nats, settings)
    }

    /// Provisions the streams (so tests can publish at once), then starts
    /// the app; with its HTTP API served (plain HTTP), waits until it is ready.
    pub async fn spawn(self) -> App {
        let (nats, settings) = self.build();
        let client = async_nats::connect(&nats.url)
            .await
            .expect("test client connects");
        let js = jetstream::new(client.clone());
        provision::apply(&js, &settings)
            .await
            .expect("provisioning works");
        let app = App {
            running: Running::start(settings.clone()).await,
            nats,
            client,
            js,
            settings,
            http: reqwest::Client::new(),
        };
        if app.running.http_addrs.is_some() && app.settings.http.tls.is_none() {
            app.ready().await;
        }
        app
    }
}

/// Another replica of an [`App`] in this process, with the same settings.
pub struct Replica {
    /// Its API's address.
    pub addr: SocketAddr,
    running: Running,
}

impl Replica {
    /// Stops the replica as SIGTERM would and waits for it.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// Waits until the default connection's lane is paused (or not) in the app,
/// as its gauge on `/metrics` says (each test runs in a process of its own).
pub async fn lane_paused(paused: bool) {
    let sample = format!(
        "softphone_bridge_lane_paused{{lane=\"crm\"}} {}",
        u8::from(paused)
    );
    eventually(&sample, || async {
        softphone_bridge::telemetry::metric::handle()
            .render()
            .contains(&sample)
            .then_some(())
    })
    .await;
}

impl App {
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
        self.running.stop().await;
        self.nats
    }

    /// Starts another replica with the same settings.
    pub async fn replica(&self) -> Replica {
        let running = Running::start(self.settings.clone()).await;
        let (addr, _) = running.http_addrs.expect("http.listen is set");
        Replica { addr, running }
    }

    /// The API's and the health/metrics addresses.
    fn http_addrs(&self) -> (SocketAddr, SocketAddr) {
        self.running.http_addrs.expect("http.listen is set")
    }

    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        self.http_addrs().0
    }

    /// The health and metrics address (the API's, unless `http.ops_listen` is set).
    pub fn ops(&self) -> SocketAddr {
        self.http_addrs().1
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
