//! What the benchmarks share: a NATS server with JetStream in a container,
//! the calls the CRM benchmarks publish, the instant webhook CRM and the
//! bridge's settings for it, the bridge in-process or as the real binary.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use softphone_bridge::contract::EventKind;

use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A fresh NATS container (the image deploy/nats-image.sh makes) and its URL.
/// The store is in memory-backed files: what is measured is the bridge and
/// NATS, not the container's storage driver.
pub async fn start_nats() -> (ContainerAsync<GenericImage>, String) {
    let image = std::env::var("SOFTPHONE_NATS_IMAGE")
        .unwrap_or_else(|_| "softphone-bridge/nats:2.12.8".into());
    let (name, tag) = image.rsplit_once(':').expect("image:tag");
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(4222))
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_cmd(["--jetstream", "--store_dir", "/data"])
        .with_mount(Mount::tmpfs_mount("/data"))
        .start()
        .await
        .expect("NATS starts (run deploy/nats-image.sh)");
    let port = container.get_host_port_ipv4(4222).await.unwrap();
    (container, format!("nats://127.0.0.1:{port}"))
}

/// The four events of a call, and when each is published after the call
/// starts: `incoming` at its start, `accepted` 0.5 s later, `ended` at 1 s,
/// `notes_submitted` at 1.5 s.
pub const LIFECYCLE: [(EventKind, u64); 4] = [
    (EventKind::CallIncoming, 0),
    (EventKind::CallAccepted, 500),
    (EventKind::CallEnded, 1000),
    (EventKind::CallNotesSubmitted, 1500),
];

/// When each event of `calls` calls starting at `rate` per second is
/// published: (after the start, call, kind), in time order.
pub fn schedule(rate: f64, calls: usize) -> Vec<(Duration, usize, EventKind)> {
    let mut schedule: Vec<(Duration, usize, EventKind)> = (0..calls)
        .flat_map(|call| {
            let start = Duration::from_secs_f64(call as f64 / rate);
            LIFECYCLE
                .iter()
                .map(move |(kind, after)| (start + Duration::from_millis(*after), call, *kind))
        })
        .collect();
    schedule.sort_by_key(|(at, call, _)| (*at, *call));
    schedule
}

/// The body of `call`'s `kind` event: every caller has a number of their
/// own (no lookup is saved by the cache across calls).
pub fn body(partner: &str, kind: EventKind, conversation: &str, call: usize) -> String {
    let extra = match kind {
        EventKind::CallIncoming => format!(r#","callerANI":"+1888{call:07}""#),
        EventKind::CallAccepted => {
            format!(r#","callerANI":"+1888{call:07}","ivrExitPath":"billing""#)
        }
        EventKind::CallEnded => {
            r#","duration":61,"disposition":"Booked","notes":"ok","callType":"inbound""#.into()
        }
        _ => r#","disposition":"Callback","notes":"call back at 5""#.into(),
    };
    format!(r#"{{"partnerId":"{partner}","conversationId":"{conversation}"{extra}}}"#)
}

/// The `p` quantile of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs a CRM bench's loads in order on a runtime of its own: 1, 10 and 100
/// calls/s batched up to `max_records`, then 10 calls/s unbatched; each
/// load's row, as `run(calls per second, calls, batch.max_records)` makes it.
pub fn crm_loads<R, Fut>(max_records: usize, run: impl Fn(f64, usize, usize) -> Fut) -> Vec<R>
where
    Fut: std::future::Future<Output = R>,
{
    softphone_bridge::tls::install_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        for (rate, calls, max_records) in [
            (1.0, 20, max_records),
            (10.0, 100, max_records),
            (100.0, 500, max_records),
            (10.0, 100, 1),
        ] {
            println!("{rate} calls/s, {calls} calls, batch.max_records = {max_records} ...");
            rows.push(run(rate, calls, max_records).await);
        }
        rows
    })
}

/// The latency columns of a CRM bench's row: p50 and p99 over every event,
/// then the p99 of each kind of [`LIFECYCLE`], in milliseconds.
pub fn latency_columns(latencies: &[(EventKind, Duration)]) -> Vec<String> {
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let sorted = |kind: Option<EventKind>| {
        let mut d: Vec<Duration> = latencies
            .iter()
            .filter(|(k, _)| kind.is_none_or(|kind| *k == kind))
            .map(|(_, d)| *d)
            .collect();
        d.sort();
        d
    };
    let all = sorted(None);
    let mut columns = vec![ms(percentile(&all, 0.5)), ms(percentile(&all, 0.99))];
    columns.extend(
        LIFECYCLE
            .iter()
            .map(|(kind, _)| ms(percentile(&sorted(Some(*kind)), 0.99))),
    );
    columns
}

/// The bridge as a replica runs it, on the NATS at `url` with `settings`
/// (provisioned first): its JetStream context, and how to stop it.
pub async fn spawn_bridge(
    url: &str,
    settings: softphone_bridge::config::Settings,
) -> (
    async_nats::jetstream::Context,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    let app = softphone_bridge::startup::Application::build(settings)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until(shutdown.clone()));
    (js, shutdown, running)
}

/// The bridge's `worker.concurrency` in the webhook benches.
pub const CONCURRENCY: usize = 32;

/// The `[worker]` table of the webhook benches: consumers named by
/// `consumer`, [`CONCURRENCY`], 10 000 events awaiting their ack.
pub fn worker_toml(consumer: &str) -> String {
    format!(
        "[worker]\nconsumer = \"{consumer}\"\nconcurrency = {CONCURRENCY}\nmax_ack_pending = 10000\n"
    )
}

/// The keys of a webhook connection to `hook` (under `[crm]` or `[crms.<name>]`).
pub fn webhook_toml(hook: &str) -> String {
    format!("kind = \"webhook\"\nurl = \"{hook}\"\nsecret = \"bench-secret\"\n")
}

/// The instant CRM: answers every POST to `/hook` with 200 at once and
/// counts it, on a thread of its own so that its CPU time can be told apart.
pub struct Webhook {
    pub url: String,
    pub requests: Arc<AtomicU64>,
    /// The server thread's id (a pid to /proc).
    pub tid: i64,
}

impl Webhook {
    pub fn start() -> Self {
        let requests = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&requests);
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    ready.send((listener.local_addr().unwrap(), tid)).unwrap();
                    let app = axum::Router::new()
                        .route("/hook", axum::routing::post(answer))
                        .with_state(counter);
                    axum::serve(listener, app).await.unwrap();
                });
            })
            .unwrap();
        let (addr, tid): (SocketAddr, i64) = started.recv().unwrap();
        Self {
            url: format!("http://{addr}/hook"),
            requests,
            tid,
        }
    }

    /// The requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn answer(
    axum::extract::State(requests): axum::extract::State<Arc<AtomicU64>>,
    _body: bytes::Bytes,
) -> axum::http::StatusCode {
    requests.fetch_add(1, Ordering::Relaxed);
    axum::http::StatusCode::OK
}

/// User+system CPU time of another process (all its threads), when it can be read.
pub fn other_process_cpu(pid: i64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() != 2 {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(
        fields.iter().sum::<u64>() * 1_000_000 / hz,
    ))
}

/// The real `softphone-bridge run` binary, as a replica runs it: `config`
/// (TOML) written to `dir`, on the NATS at `url`, its standard error in
/// `dir`'s `bridge.log` ([`log_tail`]). Killed when dropped.
pub fn spawn_bridge_process(
    dir: &std::path::Path,
    config: &str,
    url: &str,
) -> tokio::process::Child {
    let file = dir.join("bridge.toml");
    std::fs::write(&file, config).unwrap();
    let log = std::fs::File::create(dir.join("bridge.log")).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .env("SOFTPHONE_BRIDGE_NATS__URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the softphone-bridge binary starts")
}

/// The last `lines` lines the binary [`spawn_bridge_process`] started in
/// `dir` logged.
pub fn log_tail(dir: &std::path::Path, lines: usize) -> String {
    let log = std::fs::read_to_string(dir.join("bridge.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
