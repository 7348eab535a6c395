//! Shared test plumbing: a NATS container, a recording fake CRM, and the app.

#![allow(dead_code)]

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, publish::PublishAck};
use futures::StreamExt;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{DLQ_STREAM, EventKind, LANES_STREAM};
use softphone_bridge::pipeline;
use softphone_bridge::{Application, broker};
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
pub const SEGMENT: &str = "d6afeaa7-39be-4935-981f-2670215fd887";
pub const ORIGIN: &str = "57053e21-0440-4689-a27a-513d7dceebde";
pub const STATUS: &str = "9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

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

/// The NATS image; deploy/nats-image.sh makes it available offline.
fn nats_image() -> (String, String) {
    let image = std::env::var("SOFTPHONE_NATS_IMAGE")
        .unwrap_or_else(|_| "softphone-bridge/nats:2.12.8".to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A NATS server with JetStream in a container of its own.
pub struct Nats {
    pub container: ContainerAsync<GenericImage>,
    pub url: String,
}

pub async fn start_nats() -> Nats {
    start_nats_with(None, &[], &[]).await
}

/// NATS on a fixed host port, so that the URL survives a stop and start.
pub async fn start_nats_pinned() -> Nats {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    start_nats_with(Some(port), &[], &[]).await
}

/// NATS with extra server arguments (e.g. `--auth <token>`) and files copied
/// into the container (`(path, contents)`), on `port` if given.
pub async fn start_nats_with(port: Option<u16>, args: &[&str], files: &[(&str, &[u8])]) -> Nats {
    init_logs();
    let (name, tag) = nats_image();
    let mut cmd = vec!["--jetstream", "--store_dir", "/data"];
    cmd.extend_from_slice(args);
    let image = GenericImage::new(name.clone(), tag.clone())
        .with_exposed_port(ContainerPort::Tcp(4222))
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"));
    let mut request = match port {
        Some(port) => image
            .with_cmd(cmd)
            .with_mapped_port(port, ContainerPort::Tcp(4222)),
        None => image.with_cmd(cmd),
    };
    for (path, contents) in files {
        request = request.with_copy_to(path.to_string(), contents.to_vec());
    }
    let container = request.start().await.unwrap_or_else(|e| {
        panic!("cannot start NATS from image {name}:{tag} (run deploy/nats-image.sh first): {e}")
    });
    let port = container
        .get_host_port_ipv4(4222)
        .await
        .expect("NATS port is mapped");
    Nats {
        container,
        url: format!("nats://127.0.0.1:{port}"),
    }
}

/// Settings for tests: fast retries, a short ack wait, the given CRM section.
pub fn settings(nats_url: &str, crm_toml: &str) -> Settings {
    settings_with(nats_url, crm_toml, None, "")
}

/// The `[crm]` section for a webhook at `url`.
pub fn webhook_crm(url: &str) -> String {
    format!("kind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{WEBHOOK_SECRET}\"\ntimeout = \"2s\"")
}

/// A fake CRM over real HTTP: answers from a script, then with a default, and
/// reports every request on a channel.
pub struct FakeCrm {
    pub server: MockServer,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
    script: Arc<Mutex<Vec<ResponseTemplate>>>,
    default: Arc<Mutex<ResponseTemplate>>,
    /// Answers for requests whose body names a conversation, before anything else.
    refusals: Arc<Mutex<Vec<(String, ResponseTemplate)>>>,
}

struct Recorder {
    sent: mpsc::UnboundedSender<Request>,
    script: Arc<Mutex<Vec<ResponseTemplate>>>,
    default: Arc<Mutex<ResponseTemplate>>,
    refusals: Arc<Mutex<Vec<(String, ResponseTemplate)>>>,
}

impl Respond for Recorder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let _ = self.sent.send(request.clone());
        let body = String::from_utf8_lossy(&request.body);
        let refusals = self.refusals.lock().unwrap();
        if let Some((_, answer)) = refusals
            .iter()
            .find(|(conv, _)| body.contains(conv.as_str()))
        {
            return answer.clone();
        }
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            self.default.lock().unwrap().clone()
        } else {
            script.remove(0)
        }
    }
}

impl FakeCrm {
    /// Answers 200 unless scripted otherwise.
    pub async fn start() -> FakeCrm {
        Self::answering(ResponseTemplate::new(200)).await
    }

    pub async fn answering(default: ResponseTemplate) -> FakeCrm {
        Self::serve(MockServer::start().await, default).await
    }

    /// Answers 200 on `listener` (a CRM that starts listening late).
    pub async fn on(listener: std::net::TcpListener) -> FakeCrm {
        let server = MockServer::builder().listener(listener).start().await;
        Self::serve(server, ResponseTemplate::new(200)).await
    }

    async fn serve(server: MockServer, default: ResponseTemplate) -> FakeCrm {
        let (sent, requests) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(Vec::new()));
        let default = Arc::new(Mutex::new(default));
        let refusals = Arc::new(Mutex::new(Vec::new()));
        Mock::given(wiremock::matchers::any())
            .respond_with(Recorder {
                sent,
                script: Arc::clone(&script),
                default: Arc::clone(&default),
                refusals: Arc::clone(&refusals),
            })
            .mount(&server)
            .await;
        FakeCrm {
            server,
            requests: tokio::sync::Mutex::new(requests),
            script,
            default,
            refusals,
        }
    }

    /// From now on, answers `answer` unless scripted otherwise (a CRM going
    /// down, or coming back).
    pub fn answer(&self, answer: ResponseTemplate) {
        *self.default.lock().unwrap() = answer;
    }

    /// From now on, answers `answer` to every request about `conversation`.
    pub fn refuse(&self, conversation: &str, answer: ResponseTemplate) {
        self.refusals
            .lock()
            .unwrap()
            .push((conversation.to_owned(), answer));
    }

    pub fn url(&self) -> String {
        format!("{}/events", self.server.uri())
    }

    /// The next responses, in order, before the default one.
    pub fn script(&self, responses: impl IntoIterator<Item = ResponseTemplate>) {
        self.script.lock().unwrap().extend(responses);
    }

    /// The next request the CRM receives.
    pub async fn next_request(&self) -> Request {
        tokio::time::timeout(PATIENCE, self.requests.lock().await.recv())
            .await
            .expect("the CRM received a request in time")
            .expect("the recorder is alive")
    }

    /// Whatever has arrived and not been taken yet.
    pub async fn drain(&self) -> Vec<Request> {
        let mut rx = self.requests.lock().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// The app, running in this process against a container NATS.
pub struct TestApp {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub settings: Settings,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The API's and the health/metrics addresses, when `http.listen` is set.
    http_addrs: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

/// Provisions the streams (so tests can publish at once), then starts the app.
pub async fn spawn_app(nats: Nats, settings: Settings) -> TestApp {
    let client = async_nats::connect(&nats.url)
        .await
        .expect("test client connects");
    let js = jetstream::new(client.clone());
    broker::provision(&js, &settings)
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

    /// The default CRM connection's lane consumer.
    pub async fn consumer_info(&self) -> consumer::Info {
        lane_info(&self.js, &self.settings, "crm").await
    }

    /// The intake's consumer on `SOFTPHONE_EVENTS`.
    pub async fn intake_info(&self) -> consumer::Info {
        let intake = pipeline_consumer(&self.settings, |r| *r == pipeline::Role::Intake);
        consumer_info(&self.js, intake.stream, &intake.name).await
    }

    /// Waits until the intake and every lane have nothing pending or
    /// unacknowledged; returns the default CRM lane's consumer.
    pub async fn settled(&self) -> consumer::Info {
        settled(&self.js, &self.settings).await
    }

    /// The next dead-lettered message (reads SOFTPHONE_DLQ in order).
    pub async fn dead_letters(&self) -> DeadLetters {
        DeadLetters::open(&self.js).await
    }
}

pub async fn publish(
    js: &jetstream::Context,
    kind: EventKind,
    body: &str,
    msg_id: Option<&str>,
) -> PublishAck {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    js.publish_with_headers(kind.subject(), headers, body.to_owned().into())
        .await
        .expect("publish is sent")
        .await
        .expect("the events stream acknowledges")
}

/// How many messages a stream holds now.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

pub async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let stream = js.get_stream(stream).await.expect("stream exists");
    stream.consumer_info(name).await.expect("consumer exists")
}

/// The pipeline consumer of the settings that `pick` chooses.
pub fn pipeline_consumer(
    settings: &Settings,
    pick: impl Fn(&pipeline::Role) -> bool,
) -> pipeline::Consumer {
    pipeline::consumers(settings)
        .into_iter()
        .find(|c| pick(&c.role))
        .expect("the pipeline has that consumer")
}

/// The lane consumer of CRM connection `connection`.
pub async fn lane_info(
    js: &jetstream::Context,
    settings: &Settings,
    connection: &str,
) -> consumer::Info {
    let lane = pipeline_consumer(settings, |r| *r == pipeline::Role::Crm(connection.into()));
    consumer_info(js, LANES_STREAM, &lane.name).await
}

/// Polls one consumer until nothing is pending or in flight (with a deadline).
pub async fn consumer_settled(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    eventually(
        "the consumer to have nothing pending or unacknowledged",
        || async {
            let info = consumer_info(js, stream, name).await;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
        },
    )
    .await
}

/// Waits until the intake, then every lane, has nothing pending or
/// unacknowledged; returns the default CRM lane's consumer.
pub async fn settled(js: &jetstream::Context, settings: &Settings) -> consumer::Info {
    // The intake acks an event once its copies are stored: settled first, it
    // leaves nothing more for the lanes.
    for consumer in pipeline::consumers(settings) {
        consumer_settled(js, consumer.stream, &consumer.name).await;
    }
    lane_info(js, settings, "crm").await
}

/// Reads the dead-letter stream from its start.
pub struct DeadLetters {
    messages: jetstream::consumer::pull::Stream,
}

impl DeadLetters {
    async fn open(js: &jetstream::Context) -> Self {
        let stream = js.get_stream(DLQ_STREAM).await.expect("DLQ stream exists");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("ephemeral DLQ reader");
        Self {
            messages: consumer.messages().await.expect("DLQ reader pulls"),
        }
    }

    pub async fn next(&mut self) -> jetstream::Message {
        tokio::time::timeout(PATIENCE, self.messages.next())
            .await
            .expect("a dead letter arrived in time")
            .expect("DLQ stream open")
            .expect("DLQ message")
    }
}

pub fn header<'a>(message: &'a jetstream::Message, name: &str) -> &'a str {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .unwrap_or_else(|| panic!("header {name} present"))
}

/// The `Idempotency-Key` a CRM request carries: the event id.
pub fn idempotency_key(request: &Request) -> String {
    request
        .headers
        .get("Idempotency-Key")
        .expect("Idempotency-Key header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// A call event body with the given extra fields.
pub fn call_body(conversation: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{conversation}"{sep}{extra}}}"#)
}

/// A fresh conversation GUID.
pub fn conversation() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A `softphone-bridge run` process of the real binary, configured by a TOML
/// file (worker and CRM) and environment variables (the NATS URL).
pub struct Bridge {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Bridge {
    pub fn start(nats_url: &str, config_toml: &str) -> Bridge {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        std::fs::write(&file, config_toml).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .env("SOFTPHONE_BRIDGE_NATS__URL", nats_url)
            .env("RUST_LOG", "softphone_bridge=debug,info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the softphone-bridge binary starts");
        Bridge { child, _dir: dir }
    }

    /// Sends SIGTERM, as an orchestrator would.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits for the process to exit; returns its status and standard error.
    pub async fn wait(self) -> (std::process::ExitStatus, String) {
        let output = tokio::time::timeout(PATIENCE, self.child.wait_with_output())
            .await
            .expect("the bridge exits in time")
            .expect("the bridge can be waited for");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{stderr}");
        }
        (output.status, stderr)
    }
}

/// A config file for a `Bridge` posting to `crm_url`, with extra TOML appended.
pub fn bridge_config(crm_url: &str, extra: &str) -> String {
    format!(
        r#"
[worker]
concurrency = 4
ack_wait = "5s"
max_deliveries = 3
backoff = ["200ms"]
shutdown_deadline = "10s"

[crm]
kind = "webhook"
url = "{crm_url}"
secret = "{WEBHOOK_SECRET}"
timeout = "10s"
{extra}
"#
    )
}

/// Waits until `count` pull requests wait on the default CRM lane: that many
/// replicas are consuming.
pub async fn replicas_pulling(js: &jetstream::Context, settings: &Settings, count: usize) {
    let lane = pipeline_consumer(settings, |r| *r == pipeline::Role::Crm("crm".into()));
    eventually(&format!("{count} replicas to pull"), || async {
        let stream = js.get_stream(LANES_STREAM).await.ok()?;
        let info = stream.consumer_info(&lane.name).await.ok()?;
        (info.num_waiting >= count).then_some(())
    })
    .await
}

// ---- HTTP API, registry and readiness (issue 4) ----

/// A bearer token allowed to command every softphone.
pub const TOKEN: &str = "test-token-all-partners";
/// A bearer token scoped to [`PARTNER`].
pub const PARTNER_TOKEN: &str = "test-token-partner-a";
/// A partner no token above is scoped to.
pub const OTHER_PARTNER: &str = "0c7d1a52-4f0b-4e8e-9a51-8f3e2b6d7c10";

/// [`settings`] with the HTTP API on a free port and [`TOKEN`], [`PARTNER_TOKEN`].
pub fn http_settings(nats_url: &str) -> Settings {
    let mut settings = settings(nats_url, "kind = \"log\"");
    settings.http.listen = Some("127.0.0.1:0".into());
    settings.http.tokens = vec![
        token_settings("crm-all", TOKEN, None),
        token_settings("crm-partner-a", PARTNER_TOKEN, Some(vec![PARTNER])),
    ];
    settings
}

pub fn token_settings(
    name: &str,
    token: &str,
    partners: Option<Vec<&str>>,
) -> softphone_bridge::config::TokenSettings {
    softphone_bridge::config::TokenSettings {
        name: name.into(),
        sha256: hex::encode(softphone_bridge::http::auth::hash_token(token)),
        partners: partners.map(|list| list.into_iter().map(|p| p.parse().unwrap()).collect()),
    }
}

/// The app with its HTTP addresses, and an HTTP client for it.
pub struct HttpApp {
    pub app: TestApp,
    pub addr: std::net::SocketAddr,
    pub ops: std::net::SocketAddr,
    pub http: reqwest::Client,
}

impl std::ops::Deref for HttpApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// Like [`spawn_app`], keeping the bound HTTP addresses; waits until ready.
pub async fn spawn_http_app(nats: Nats, settings: Settings) -> HttpApp {
    let app = spawn_app(nats, settings).await;
    let (addr, ops) = app.http_addrs.expect("http.listen is set");
    let app = HttpApp {
        app,
        addr,
        ops,
        http: reqwest::Client::new(),
    };
    app.ready().await;
    app
}

/// Starts one more app in this process (a replica); stops when the token is cancelled.
pub async fn start_replica(
    settings: Settings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let app = Application::build(settings).await.expect("app builds");
    let addr = app.http_addr().expect("http.listen is set");
    let ops = app.ops_addr().expect("http.listen is set");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until(shutdown.clone()));
    (shutdown, handle, addr, ops)
}

impl HttpApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// The readiness status code.
    pub async fn readyz(&self) -> u16 {
        match self.http.get(self.ops_url("/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(e) => panic!("readyz answers: {e}"),
        }
    }

    /// Waits until `/readyz` says 200.
    pub async fn ready(&self) {
        eventually("readyz to answer 200", || async {
            (self.readyz().await == 200).then_some(())
        })
        .await;
    }

    /// POSTs a command as a CRM would.
    pub async fn command(
        &self,
        softphone: &str,
        body: &serde_json::Value,
        token: &str,
        key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(&format!("/v1/softphones/{softphone}/commands")))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("the API answers")
    }

    /// Publishes `softphone.loaded` and waits until the registry has the softphone.
    pub async fn load(&self, softphone: &str, partner: Option<&str>) {
        let body = match partner {
            Some(p) => format!(r#"{{"softphoneId":"{softphone}","partnerId":"{p}"}}"#),
            None => format!(r#"{{"softphoneId":"{softphone}"}}"#),
        };
        self.publish(EventKind::Loaded, &body, None).await;
        self.settled().await;
    }

    pub async fn stop(self) -> Nats {
        self.app.stop().await
    }
}

/// How many messages `SOFTPHONE_COMMANDS` holds for one softphone.
pub async fn commands_for(js: &jetstream::Context, softphone: &str) -> u64 {
    let subject = format!("softphone.cmd.{softphone}");
    let stream = js
        .get_stream(softphone_bridge::contract::COMMANDS_STREAM)
        .await
        .expect("commands stream exists");
    let info = stream
        .info_with_subjects(subject.clone())
        .await
        .expect("stream info");
    let mut total = 0;
    let mut subjects = info;
    while let Some(Ok((name, count))) = subjects.next().await {
        if name == subject {
            total += count as u64;
        }
    }
    total
}

/// Polls `probe` until it returns `Some`, failing after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
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

/// A valid `start_call` command for [`PARTNER`].
pub fn start_call() -> serde_json::Value {
    serde_json::json!({
        "type": "start_call",
        "payload": {
            "partnerId": PARTNER,
            "businessSegmentId": SEGMENT,
            "channelOriginId": ORIGIN,
            "dialTo": "+18883973342",
            "dialFrom": "+18449401117",
            "participantType": "Traveler"
        }
    })
}

/// The second partner of routing tests.
pub const PARTNER_B: &str = "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

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
    .expect("test settings are valid")
}

/// A call event body of another partner.
pub fn partner_call_body(partner: &str, conversation: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"partnerId":"{partner}","conversationId":"{conversation}"{sep}{extra}}}"#)
}
