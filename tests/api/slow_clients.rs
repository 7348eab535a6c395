//! Slow and hostile HTTP clients against the real binary, with good events
//! flowing to a webhook CRM and counted: half-sent requests closed within the
//! header timeout, the connection cap shedding unauthenticated connections
//! first, and SIGTERM bounded by the shutdown deadline and the drain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use softphone_bridge::contract::EventKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::helpers::*;

/// The command API's open connections.
const OPEN: &str = r#"softphone_bridge_http_connections{listener="api"}"#;

/// The most a good event, a readiness probe or a CRM's command may take,
/// floods or not, on a machine shared with other tests: room for a SYN the
/// flooded accept queue dropped twice (retried after 1 s, then 2 s more),
/// far below the tens of seconds an unbounded flood cost.
const PROMPT: Duration = Duration::from_secs(5);

/// What a hostile client sends before it falls silent.
const HALF_SENT: &[u8] = b"POST /v1/";

/// The real binary with the command API on `api` (`http_toml` added to its
/// `[http]`), a webhook CRM, and `agent-1` loaded for [`PARTNER`].
struct Setup {
    _nats: Nats,
    js: async_nats::jetstream::Context,
    crm: Arc<FakeCrm>,
    bridge: Bridge,
    api: SocketAddr,
    /// `/metrics` and `/readyz` apart from the API, when asked for.
    ops: Option<SocketAddr>,
}

async fn start(http_toml: &str, worker_toml: &str, ops: bool) -> Setup {
    let nats = start_nats().await;
    let crm = Arc::new(FakeCrm::start().await);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ops = ops.then(|| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() });
    let ops_listen = ops
        .map(|a| format!("ops_listen = \"{a}\"\n"))
        .unwrap_or_default();
    let hash = token_settings("crm-all", TOKEN, None).sha256;
    let config = bridge_config(
        &crm.url(),
        &format!(
            "[http]\nlisten = \"{api}\"\n{ops_listen}{http_toml}\n\
             [[http.tokens]]\nname = \"crm-all\"\nsha256 = \"{hash}\"\n"
        ),
    );
    let config = config.replace("shutdown_deadline = \"10s\"\n", worker_toml);
    let bridge = Bridge::start(&nats.url, &config);
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let setup = Setup {
        _nats: nats,
        js,
        crm,
        bridge,
        api,
        ops,
    };
    eventually("the bridge to be ready", || async {
        (setup.probe("/readyz").await? == 200).then_some(())
    })
    .await;
    let loaded = format!(r#"{{"softphoneId":"agent-1","partnerId":"{PARTNER}"}}"#);
    publish(&setup.js, EventKind::Loaded, &loaded, None).await;
    eventually("agent-1 to be in the registry", || async {
        let mut raw = Raw::connect(setup.api).await.ok()?;
        (raw.request(&get_softphone()).await?.0 == 200).then_some(())
    })
    .await;
    setup
}

impl Setup {
    fn pid(&self) -> u32 {
        self.bridge.pid()
    }

    /// The status of GET `path` on the ops address, on a fresh connection.
    async fn probe(&self, path: &str) -> Option<u16> {
        let addr = self.ops.unwrap_or(self.api);
        let mut raw = Raw::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        raw.request(&request).await.map(|(status, _)| status)
    }

    /// SIGTERM, and a clean exit.
    async fn stop(self) {
        self.bridge.terminate();
        let (exit, stderr) = self.bridge.wait().await;
        assert!(exit.success(), "{stderr}");
    }

    async fn metrics(&self) -> String {
        let addr = self.ops.unwrap_or(self.api);
        let mut raw = Raw::connect(addr).await.unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        raw.request(request).await.expect("metrics answer").1
    }
}

/// An authenticated command for agent-1, as request text.
fn command() -> String {
    let body = start_call().to_string();
    format!(
        "POST /v1/softphones/agent-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An authenticated read of agent-1's registry entry, as request text.
fn get_softphone() -> String {
    format!(
        "GET /v1/softphones/agent-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
}

/// Good events published one after another while a test runs, and when each
/// reached the CRM.
struct Traffic {
    stop: Arc<AtomicBool>,
    publisher: tokio::task::JoinHandle<Vec<(String, Instant)>>,
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(setup: &Setup) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = tokio::spawn({
            let (js, stop) = (setup.js.clone(), Arc::clone(&stop));
            async move {
                let mut published = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("good-{}", conversation());
                    let at = Instant::now();
                    let body = call_body(&conversation(), "");
                    publish(&js, EventKind::CallAccepted, &body, Some(&id)).await;
                    published.push((id, at));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                published
            }
        });
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let collector = tokio::spawn({
            let (crm, arrivals) = (Arc::clone(&setup.crm), Arc::clone(&arrivals));
            async move {
                loop {
                    for request in crm.drain().await {
                        let key = idempotency_key(&request);
                        arrivals.lock().unwrap().push((key, Instant::now()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Traffic {
            stop,
            publisher,
            arrivals,
            collector,
        }
    }

    /// Stops publishing; checks that every good event reached the CRM once
    /// and none later than [`PROMPT`].
    async fn check(self) {
        self.stop.store(true, Ordering::Relaxed);
        let published = self.publisher.await.unwrap();
        let arrivals = eventually("every good event to reach the CRM", || async {
            let arrivals = self.arrivals.lock().unwrap().clone();
            let seen: BTreeMap<&str, Instant> =
                arrivals.iter().map(|(k, at)| (k.as_str(), *at)).collect();
            published
                .iter()
                .all(|(id, _)| seen.contains_key(id.as_str()))
                .then_some(arrivals)
        })
        .await;
        self.collector.abort();
        let mut times: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
        for (key, at) in &arrivals {
            times.entry(key.as_str()).or_default().push(*at);
        }
        let mut latest = Duration::ZERO;
        for (id, sent) in &published {
            let calls = &times[id.as_str()];
            assert_eq!(calls.len(), 1, "{id} reached the CRM once");
            latest = latest.max(calls[0] - *sent);
        }
        let events = published.len();
        eprintln!("{events} good events, each once, the latest {latest:?} after publishing");
        assert!(events > 0, "good traffic flowed");
        assert!(latest < PROMPT, "{latest:?}");
    }
}

#[tokio::test]
async fn half_sent_requests_are_closed_within_the_header_timeout_and_cost_nothing_lasting() {
    const FLOOD: usize = 3000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
    let setup = start(
        "header_read_timeout = \"1s\"\nmax_connections = 5000\n",
        "shutdown_deadline = \"10s\"\n",
        false,
    )
    .await;
    let pid = setup.pid();
    let traffic = Traffic::start(&setup);
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));
    let peaks = Peaks::watch(pid);

    let closed = Arc::new(AtomicUsize::new(0));
    let flooding = tokio::spawn(flood(setup.api, FLOOD, HALF_SENT, Arc::clone(&closed)));
    // Through the flood, readiness and a CRM's command answer promptly, each
    // on a connection of its own.
    let (mut probes, mut slowest) = (0, Duration::ZERO);
    let deadline = Instant::now() + PATIENCE;
    while closed.load(Ordering::Relaxed) < FLOOD {
        assert!(
            Instant::now() < deadline,
            "the flood was not closed in time"
        );
        let started = Instant::now();
        assert_eq!(setup.probe("/readyz").await, Some(200));
        let mut crm = Raw::connect(setup.api).await.unwrap();
        assert_eq!(crm.request(&command()).await.map(|a| a.0), Some(202));
        slowest = slowest.max(started.elapsed());
        probes += 1;
    }
    let watchers = flooding.await.unwrap();
    let mut closed_after = Vec::new();
    for watcher in watchers {
        closed_after.push(watcher.await.unwrap().expect("closed by the server"));
    }
    let (fds_peak, rss_peak) = peaks.stop();
    closed_after.sort();
    let latest = *closed_after.last().unwrap();
    eprintln!(
        "{FLOOD} half-sent requests closed {:?}..{latest:?} after their bytes; {probes} probe pairs \
         (readyz + command), slowest {slowest:?}; fds {fds_before} -> peak {fds_peak}; \
         VmRSS {rss_before} KiB -> peak {rss_peak} KiB",
        closed_after[0]
    );
    assert!(
        latest <= HEADER_TIMEOUT + Duration::from_millis(1500),
        "closed within the header timeout: {latest:?}"
    );
    assert!(probes >= 3, "probed during the flood");
    assert!(slowest < PROMPT, "{slowest:?}");
    assert!(fds_peak <= fds_before + FLOOD + 64, "{fds_peak}");
    assert!(rss_peak <= rss_before + 150 * 1024, "{rss_peak} KiB");

    // Afterwards the descriptors and the memory come back.
    let fds_after = eventually("the descriptors to be given back", || async {
        let fds = open_fds(pid);
        (fds <= fds_before + 16).then_some(fds)
    })
    .await;
    let rss_after = eventually("the memory to be given back", || async {
        let rss = rss_kib(pid);
        (rss <= rss_before + 8 * 1024).then_some(rss)
    })
    .await;
    eprintln!("after: fds {fds_after}, VmRSS {rss_after} KiB");
    let metrics = setup.metrics().await;
    let timeouts = r#"softphone_bridge_http_connections_dropped_total{listener="api",reason="header_timeout"}"#;
    assert!(
        sample_value(&metrics, timeouts) >= Some(FLOOD as f64),
        "{metrics}"
    );

    // A header flood is still a 431 that costs its connection only.
    let mut flood_of_headers = Raw::connect(setup.api).await.unwrap();
    let padding = "x".repeat(100 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n\r\n");
    assert_eq!(
        flood_of_headers.request(&request).await.map(|a| a.0),
        Some(431)
    );

    traffic.check().await;
    setup.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_unauthenticated_connections_are_shed_and_crms_served() {
    const CAP: usize = 20;
    const FLOOD: usize = 200;
    let setup = start(
        "max_connections = 20\nheader_read_timeout = \"60s\"\n",
        "shutdown_deadline = \"10s\"\n",
        true,
    )
    .await;
    let pid = setup.pid();
    let traffic = Traffic::start(&setup);
    let fds_before = open_fds(pid);

    // A CRM's connection, authenticated and kept alive.
    let mut crm = Raw::connect(setup.api).await.unwrap();
    assert_eq!(crm.request(&command()).await.map(|a| a.0), Some(202));
    // Each newcomer beyond the cap closes the oldest half-sent connection.
    let closed = Arc::new(AtomicUsize::new(0));
    let watchers = flood(setup.api, FLOOD, HALF_SENT, Arc::clone(&closed)).await;
    eventually("the oldest half-sent connections to be shed", || async {
        (closed.load(Ordering::Relaxed) == FLOOD - (CAP - 1)).then_some(())
    })
    .await;
    let fds = open_fds(pid);
    eprintln!("{FLOOD} half-sent connections at a cap of {CAP}: fds {fds_before} -> {fds}");
    assert!(fds <= fds_before + CAP + 8, "{fds_before} -> {fds}");
    // The CRM is still served on its connection, and a new CRM connection too.
    assert_eq!(crm.request(&command()).await.map(|a| a.0), Some(202));
    let mut authenticated = vec![crm];
    while authenticated.len() < CAP {
        let mut another = Raw::connect(setup.api).await.unwrap();
        assert_eq!(
            another.request(&get_softphone()).await.map(|a| a.0),
            Some(200)
        );
        authenticated.push(another);
    }
    eventually("every half-sent connection to be shed", || async {
        (closed.load(Ordering::Relaxed) == FLOOD).then_some(())
    })
    .await;
    // Every connection is a CRM's now: a newcomer is closed at once.
    let mut newcomer = Raw::connect(setup.api).await.unwrap();
    assert_eq!(newcomer.request(&get_softphone()).await, None);
    for crm in &mut authenticated {
        assert_eq!(crm.request(&get_softphone()).await.map(|a| a.0), Some(200));
    }

    let metrics = setup.metrics().await;
    let dropped = |reason: &str| {
        let series = format!(
            r#"softphone_bridge_http_connections_dropped_total{{listener="api",reason="{reason}"}}"#
        );
        sample_value(&metrics, &series).unwrap_or(0.0)
    };
    assert_eq!(dropped("shed"), FLOOD as f64, "{metrics}");
    assert!(dropped("refused") >= 1.0, "{metrics}");
    assert_eq!(sample_value(&metrics, OPEN), Some(CAP as f64), "{metrics}");
    for watcher in watchers {
        assert!(watcher.await.unwrap().is_some());
    }
    traffic.check().await;
    setup.stop().await;
}

#[tokio::test]
async fn sigterm_with_hundreds_of_half_sent_requests_stops_within_the_deadline_and_drain() {
    const HALF_SENT_REQUESTS: usize = 300;
    // worker.shutdown_deadline and the drain (http.request_timeout).
    const DEADLINE: Duration = Duration::from_secs(1);
    const DRAIN: Duration = Duration::from_secs(3);
    let setup = start(
        "request_timeout = \"3s\"\nheader_read_timeout = \"60s\"\n",
        "shutdown_deadline = \"1s\"\n",
        false,
    )
    .await;
    let traffic = Traffic::start(&setup);
    let closed = Arc::new(AtomicUsize::new(0));
    let watchers = flood(
        setup.api,
        HALF_SENT_REQUESTS,
        HALF_SENT,
        Arc::clone(&closed),
    )
    .await;
    // Each is a descriptor of the process, besides its standard streams,
    // listener and NATS connections.
    eventually("the bridge to hold every half-sent request", || async {
        (open_fds(setup.pid()) > HALF_SENT_REQUESTS).then_some(())
    })
    .await;
    traffic.check().await;

    // A request being answered: its handler waits for the body (it asked for
    // it with 100 Continue).
    let body = start_call().to_string();
    let head = format!(
        "POST /v1/softphones/agent-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut in_flight = Raw::connect(setup.api).await.unwrap();
    in_flight
        .0
        .get_mut()
        .write_all(head.as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    in_flight.0.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    in_flight.0.read_line(&mut line).await.unwrap();

    let stopping = Instant::now();
    setup.bridge.terminate();
    eventually("the half-sent requests to be closed at once", || async {
        (closed.load(Ordering::Relaxed) == HALF_SENT_REQUESTS).then_some(())
    })
    .await;
    let closed_within = stopping.elapsed();
    // The request being answered still finishes.
    in_flight
        .0
        .get_mut()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, in_flight.answer())
        .await
        .unwrap();
    assert_eq!(answer.map(|a| a.0), Some(202));
    let (exit, stderr) = setup.bridge.wait().await;
    let stopped = stopping.elapsed();
    eprintln!(
        "SIGTERM with {HALF_SENT_REQUESTS} half-sent requests: closed within {closed_within:?}, \
         exited after {stopped:?}"
    );
    assert!(exit.success(), "{stderr}");
    assert!(stderr.contains("HTTP server stopped."), "{stderr}");
    assert!(closed_within < DRAIN, "{closed_within:?}");
    assert!(stopped <= DEADLINE + DRAIN, "{stopped:?}");
    for watcher in watchers {
        assert!(watcher.await.unwrap().is_some());
    }
}

#[tokio::test]
async fn tls_handshakes_that_never_finish_are_closed_within_the_header_timeout() {
    const SILENT: usize = 100;
    let nats = start_nats().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let mut settings = http_settings(&nats.url);
    settings.http.header_read_timeout = Duration::from_secs(1);
    settings.http.tls = Some(softphone_bridge::config::HttpTls {
        cert_file,
        key_file,
    });
    let app = App::builder(nats).with(settings).spawn().await;
    let addr = app.addr();

    // Connections that say nothing, and others that start a ClientHello
    // (a handshake record's header) and stop.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut watchers = flood(addr, SILENT, b"", Arc::clone(&closed)).await;
    watchers.extend(
        flood(
            addr,
            SILENT,
            &[0x16, 0x03, 0x01, 0x02, 0x00],
            Arc::clone(&closed),
        )
        .await,
    );
    // A client that completes its handshake is served meanwhile.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", addr.port());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    let mut latest = Duration::ZERO;
    for watcher in watchers {
        latest = latest.max(watcher.await.unwrap().expect("closed by the server"));
    }
    eprintln!(
        "{} unfinished TLS handshakes closed within {latest:?}",
        2 * SILENT
    );
    assert!(latest <= Duration::from_secs(2), "{latest:?}");
    app.stop().await;
}

#[test]
fn connection_settings_have_defaults_and_refuse_zero() {
    let defaults = softphone_bridge::config::Settings::from_toml("")
        .unwrap()
        .http;
    assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    assert_eq!(defaults.max_connections, 1024);
    for (toml, key) in [
        ("header_read_timeout = \"0s\"", "http.header_read_timeout"),
        ("idle_timeout = \"0s\"", "http.idle_timeout"),
        ("max_connections = 0", "http.max_connections"),
        ("max_connection = 10", "max_connection"),
    ] {
        let err = softphone_bridge::config::Settings::from_toml(&format!("[http]\n{toml}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}
