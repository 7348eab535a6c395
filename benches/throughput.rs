//! What one event costs the worker, and how close the pipeline comes to the
//! floors beneath it, all measured in one run:
//!
//! 1. **Hot path**, in-process: decode and validate an event, build the CRM
//!    document.
//! 2. **Raw consume**: a plain durable pull consumer on `SOFTPHONE_EVENTS`
//!    (no bridge) receiving and acking every event: the floor for one
//!    JetStream delivery and ack.
//! 3. **Raw POST**: a pooled `reqwest` client POSTing a CRM document, 32 at a
//!    time, to an in-process axum server on 127.0.0.1 that answers 200 at
//!    once: the floor for one CRM call.
//! 4. **Bridge, 1 connection**: the whole pipeline (intake, then the CRM
//!    lane) with `[crm] kind = "webhook"` pointing at that same server, every
//!    event for one partner.
//! 5. **Bridge, 50 connections**: `[crms.c0]` to `[crms.c49]` (all webhooks
//!    to the same server, as is `[crm]`: 51 lanes), 50 partners each routed
//!    to its own connection, every event for one of them.
//! 6. **Bridge, 1 connection, 3 replicas**: as 4, with three replicas in
//!    this process sharing the lane's partitions (`lanes.partitions`, 4),
//!    each event of its own conversation.
//!
//! Each NATS measurement gets a fresh NATS container (testcontainers, its
//! store on a tmpfs); every event is published before the clock starts, so
//! the publisher is idle while the consumers work. A bridge run is timed from
//! `Application::build` until every consumer of `pipeline::consumers` has
//! nothing pending and nothing unacknowledged and the server has answered one
//! request per event, with `worker.concurrency = 32` and
//! `worker.max_ack_pending = 10000`.
//!
//! Columns of the closing table:
//! - "CPU µs/ev": the process's user+system time (`getrusage(RUSAGE_SELF)`)
//!   over the timed phase, per event. The in-process HTTP server is part of
//!   it: "server µs" is its thread's share, "excl. server" the rest.
//! - "NATS µs": the NATS server process's CPU (it runs in its container, so
//!   the process figure leaves it out), read from /proc when this machine
//!   can see it; "proxy µs": the `docker-proxy` forwarding its port to
//!   127.0.0.1, when Docker uses one.
//! - "csw/ev": the process's context switches (voluntary and not) per event.
//! - "1st req": how long the bridge took to start and make its first CRM
//!   call; "ev/s after": the rate from then on.
//! - "redelivered": `num_redelivered` summed over the consumers.
//! - "RSS MiB": the process's peak resident memory so far.
//!
//! Measurements 2 to 5 run in rounds (BENCH_ROUNDS, default 3), each round
//! every one of them once; the table shows, for each, the run of median rate,
//! and the rates of every round follow it.
//!
//! `cargo bench --bench throughput` (needs the NATS image: deploy/nats-image.sh;
//! SOFTPHONE_NATS_IMAGE names another). BENCH_EVENTS sets the number of events
//! (default 20000).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::StreamExt;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{EVENTS_STREAM, Event, EventKind, Guid};
use softphone_bridge::crm::CrmEvent;
use softphone_bridge::{Application, pipeline, provision};
use testcontainers::{ContainerAsync, GenericImage};
use tokio_util::sync::CancellationToken;

mod common;

/// The bridge's `worker.concurrency`, and the raw POST's.
const CONCURRENCY: usize = 32;
/// How long one measurement may take before it is reported as stalled.
const STALL_AFTER: Duration = Duration::from_secs(90);
/// How often a measurement looks at its progress.
const POLL_EVERY: Duration = Duration::from_millis(5);

/// The partner of `index`: the one with traffic is 0.
fn partner(index: usize) -> String {
    format!("215fd887-39be-4935-981f-{index:012x}")
}

fn body(kind: EventKind, partner: &str, i: usize) -> String {
    let conv = format!("57053e21-0440-4689-a27a-{i:012x}");
    match kind {
        EventKind::CallAccepted => format!(
            r#"{{"partnerId":"{partner}","conversationId":"{conv}","callerANI":"+18883973342","language":"en_US","ivrExitPath":"billing","channelName":"voice","reservationStartDate":"2026-12-01","specialEvent":"none","escalationType":"none","recordingStatus":"ON"}}"#
        ),
        _ => format!(
            r#"{{"partnerId":"{partner}","conversationId":"{conv}","duration":183.5,"disposition":"Booked","notes":"Customer rebooked for Friday; sent confirmation.","callType":"inbound"}}"#
        ),
    }
}

/// The CRM document the bridge would send for this event.
fn document(kind: EventKind, payload: &str, sequence: u64) -> Vec<u8> {
    let event = Event::decode(kind, payload.as_bytes()).expect("valid");
    let raw = Bytes::copy_from_slice(payload.as_bytes());
    CrmEvent {
        id: "seq:1".into(),
        event,
        raw,
        published: time::OffsetDateTime::UNIX_EPOCH,
        sequence,
    }
    .to_json()
}

fn hot_path() -> Vec<(EventKind, Duration)> {
    const N: usize = 200_000;
    let mut results = Vec::new();
    for kind in [EventKind::CallAccepted, EventKind::CallEnded] {
        let payload = body(kind, &partner(0), 7);
        let started = Instant::now();
        let mut bytes = 0usize;
        for i in 0..N {
            bytes += black_box(document(kind, &payload, i as u64)).len();
        }
        let per = started.elapsed() / N as u32;
        println!(
            "hot path {:<16} {:>6} ns/event  ({} B payload, {} B document)",
            kind.name(),
            per.as_nanos(),
            payload.len(),
            bytes / N
        );
        results.push((kind, per));
    }
    results
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User+system CPU time of the whole process, and its context switches
/// (voluntary and not).
fn process_cpu() -> (Duration, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        time(usage.ru_utime) + time(usage.ru_stime),
        (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
    )
}

/// CPU time of one thread of this process: the scheduler's exact figure,
/// else user+system clock ticks (a thread id is a pid to /proc).
fn thread_cpu(tid: i64) -> Duration {
    if let Some(ns) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return Duration::from_nanos(ns);
    }
    other_process_cpu(tid).unwrap_or_default()
}

/// User+system CPU time of another process (all its threads), when it can be read.
fn other_process_cpu(pid: i64) -> Option<Duration> {
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

/// The `docker-proxy` processes forwarding `host_port` on this machine.
fn docker_proxies(host_port: u16) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let port = host_port.to_string();
            args.first().is_some_and(|a| a.ends_with(b"docker-proxy"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-host-port" && w[1] == port.as_bytes())
        })
        .collect()
}

/// The in-process CRM: answers every POST with 200 at once, on a thread of
/// its own so that its CPU time can be told apart.
struct Webhook {
    url: String,
    requests: Arc<AtomicU64>,
    tid: i64,
}

impl Webhook {
    fn start() -> Self {
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

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn answer(State(requests): State<Arc<AtomicU64>>, _body: Bytes) -> StatusCode {
    requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// CPU spent so far: the process's, the webhook server thread's, and the
/// NATS server's (in its container, when its process can be seen).
#[derive(Clone, Copy)]
struct Cpu {
    process: Duration,
    /// The process's context switches.
    switches: u64,
    server: Duration,
    nats: Option<Duration>,
    /// The docker-proxy in front of the NATS port, when there is one.
    proxy: Option<Duration>,
}

impl Cpu {
    fn now(webhook: &Webhook, nats: Option<&Nats>) -> Self {
        let (process, switches) = process_cpu();
        Self {
            process,
            switches,
            server: thread_cpu(webhook.tid),
            nats: nats.and_then(|n| n.pid).and_then(other_process_cpu),
            proxy: nats.and_then(|n| {
                n.proxies
                    .iter()
                    .map(|pid| other_process_cpu(*pid))
                    .sum::<Option<Duration>>()
                    .filter(|_| !n.proxies.is_empty())
            }),
        }
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(earlier.process),
            switches: self.switches.saturating_sub(earlier.switches),
            server: self.server.saturating_sub(earlier.server),
            nats: self
                .nats
                .zip(earlier.nats)
                .map(|(now, then)| now.saturating_sub(then)),
            proxy: self
                .proxy
                .zip(earlier.proxy)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }
}

/// One timed measurement.
struct Measured {
    name: String,
    events: usize,
    took: Duration,
    cpu: Cpu,
    /// From the start until the first CRM request (bridge runs).
    first_request: Option<Duration>,
    /// How long `Application::build` took (bridge runs).
    built: Option<Duration>,
    /// CRM requests the server answered (bridge runs).
    requests: Option<u64>,
    redelivered: Option<usize>,
    /// Whether it finished before `STALL_AFTER`.
    complete: bool,
    peak_rss_kib: u64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    /// The rate from the first CRM request on (startup left out).
    fn running_rate(&self) -> Option<f64> {
        self.first_request
            .map(|first| self.events as f64 / (self.took - first).as_secs_f64())
    }

    fn switches_per_event(&self) -> f64 {
        self.cpu.switches as f64 / self.events as f64
    }

    fn us_per_event(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.events as f64
    }

    fn print(&self) {
        let mut line = format!(
            "{:<22} {} events in {:>7.1?} = {:>7.0} events/s; CPU {:>6.1} µs/event ({:.1} µs in the HTTP server); {:.1} context switches/event",
            self.name,
            self.events,
            self.took,
            self.rate(),
            self.us_per_event(self.cpu.process),
            self.us_per_event(self.cpu.server),
            self.switches_per_event(),
        );
        if let Some(nats) = self.cpu.nats {
            line += &format!("; NATS server {:.1} µs/event", self.us_per_event(nats));
        }
        if let Some(proxy) = self.cpu.proxy {
            line += &format!("; docker-proxy {:.1} µs/event", self.us_per_event(proxy));
        }
        if let Some(built) = self.built {
            line += &format!("; built in {built:.1?}");
        }
        if let Some(first) = self.first_request {
            line += &format!("; first CRM request after {first:.1?}");
        }
        if let Some(requests) = self.requests {
            line += &format!("; {requests} CRM requests");
        }
        if let Some(redelivered) = self.redelivered {
            line += &format!("; {redelivered} redelivered");
        }
        line += &format!("; peak RSS {} MiB", self.peak_rss_kib / 1024);
        if !self.complete {
            line += "  ** STALLED: did not finish **";
        }
        println!("{line}");
    }
}

/// A fresh NATS server in a container, with a client of the bench's own.
struct Nats {
    container: ContainerAsync<GenericImage>,
    url: String,
    js: jetstream::Context,
    /// The server's process id as this machine sees it.
    pid: Option<i64>,
    /// The docker-proxy processes that forward its client port.
    proxies: Vec<i64>,
}

impl Nats {
    async fn start() -> Self {
        let (container, url) = common::start_nats().await;
        let port = container.get_host_port_ipv4(4222).await.unwrap();
        let client = async_nats::connect(&url).await.unwrap();
        let pid = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", container.id()])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .filter(|pid: &i64| *pid > 0 && other_process_cpu(*pid).is_some());
        Self {
            container,
            url,
            js: jetstream::new(client),
            pid,
            proxies: docker_proxies(port),
        }
    }

    async fn stop(self) {
        drop(self.js);
        let _ = self.container.rm().await;
    }

    /// Publishes `events` events of `partner`, alternately `call_accepted`
    /// and `call_ended`, each acked by JetStream.
    async fn publish(&self, events: usize, partner: &str) {
        let started = Instant::now();
        let mut acks = Vec::with_capacity(1000);
        for i in 0..events {
            let kind = if i % 2 == 0 {
                EventKind::CallAccepted
            } else {
                EventKind::CallEnded
            };
            acks.push(
                self.js
                    .publish(kind.subject(), body(kind, partner, i).into())
                    .await
                    .unwrap(),
            );
            if acks.len() == 1000 {
                for ack in acks.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in acks.drain(..) {
            ack.await.unwrap();
        }
        let published = started.elapsed();
        println!(
            "  published {events} events in {:>7.1?} = {:>7.0} events/s (JetStream acked)",
            published,
            events as f64 / published.as_secs_f64()
        );
    }

    /// Whether every consumer has nothing pending and nothing unacknowledged,
    /// and their redeliveries; all asked at once.
    async fn drained(&self, consumers: &[(&'static str, String)]) -> (bool, usize) {
        let infos = futures::future::join_all(consumers.iter().map(|(stream, name)| async move {
            let stream = self.js.get_stream_no_info(*stream).await.unwrap();
            stream.consumer_info(name).await.unwrap()
        }))
        .await;
        let clean = infos
            .iter()
            .all(|info| info.num_pending == 0 && info.num_ack_pending == 0);
        (clean, infos.iter().map(|info| info.num_redelivered).sum())
    }

    /// Polls until `consumers` are drained (once `ready` says the work is
    /// done) or the measurement stalls. The time it took, when the first
    /// request arrived, whether it completed, the redeliveries.
    async fn wait_drained(
        &self,
        consumers: &[(&'static str, String)],
        started: Instant,
        mut progress: impl FnMut() -> (bool, bool),
    ) -> (Duration, Option<Duration>, bool, usize) {
        let mut first = None;
        loop {
            let (begun, done) = progress();
            if begun && first.is_none() {
                first = Some(started.elapsed());
            }
            if done {
                let (clean, redelivered) = self.drained(consumers).await;
                if clean {
                    return (started.elapsed(), first, true, redelivered);
                }
            }
            if started.elapsed() > STALL_AFTER {
                let (_, redelivered) = self.drained(consumers).await;
                for (stream, name) in consumers {
                    let info = self
                        .js
                        .get_stream_no_info(*stream)
                        .await
                        .unwrap()
                        .consumer_info(name)
                        .await
                        .unwrap();
                    println!(
                        "  stalled: {name}: {} pending, {} unacknowledged, {} redelivered, ack floor {}",
                        info.num_pending,
                        info.num_ack_pending,
                        info.num_redelivered,
                        info.ack_floor.stream_sequence
                    );
                }
                return (started.elapsed(), first, false, redelivered);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// A plain durable pull consumer on the events, acking each one.
async fn raw_consume(webhook: &Webhook, events: usize) -> Measured {
    let nats = Nats::start().await;
    let settings = Settings::from_toml(&format!("[nats]\nurl = \"{}\"\n", nats.url)).unwrap();
    provision::apply(&nats.js, &settings).await.unwrap();
    nats.publish(events, &partner(0)).await;
    let name = "bench-raw".to_owned();
    let consumer = nats
        .js
        .get_stream_no_info(EVENTS_STREAM)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumed = Arc::new(AtomicUsize::new(0));
    let cpu = Cpu::now(webhook, Some(&nats));
    let started = Instant::now();
    let counting = Arc::clone(&consumed);
    let consuming = tokio::spawn(async move {
        let mut messages = consumer.messages().await.unwrap();
        for _ in 0..events {
            let message = messages.next().await.unwrap().unwrap();
            message.ack().await.unwrap();
            counting.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (took, _, complete, redelivered) = nats
        .wait_drained(&[(EVENTS_STREAM, name)], started, || {
            let n = consumed.load(Ordering::Relaxed);
            (n > 0, n >= events)
        })
        .await;
    let cpu = Cpu::now(webhook, Some(&nats)).since(cpu);
    consuming.abort();
    let measured = Measured {
        name: "raw consume+ack".into(),
        events,
        took,
        cpu,
        first_request: None,
        built: None,
        requests: None,
        redelivered: Some(redelivered),
        complete,
        peak_rss_kib: peak_rss_kib(),
    };
    nats.stop().await;
    measured
}

/// A pooled client POSTing CRM documents, `CONCURRENCY` at a time.
async fn raw_post(webhook: &Webhook, requests: usize) -> Measured {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let payload = body(EventKind::CallEnded, &partner(0), 7);
    let document = Bytes::from(document(EventKind::CallEnded, &payload, 7));
    println!("  POST body: {} B CRM document", document.len());
    let next = Arc::new(AtomicUsize::new(0));
    let before = webhook.requests();
    let cpu = Cpu::now(webhook, None);
    let started = Instant::now();
    let mut posting = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, document, next) = (
            client.clone(),
            webhook.url.clone(),
            document.clone(),
            Arc::clone(&next),
        );
        posting.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let response = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(document.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
            }
        });
    }
    while let Some(done) = posting.join_next().await {
        done.unwrap();
    }
    let took = started.elapsed();
    let cpu = Cpu::now(webhook, None).since(cpu);
    Measured {
        name: format!("raw POST (c={CONCURRENCY})"),
        events: requests,
        took,
        cpu,
        first_request: None,
        built: None,
        requests: Some(webhook.requests() - before),
        redelivered: None,
        complete: true,
        peak_rss_kib: peak_rss_kib(),
    }
}

/// The bridge's settings: `[crm]` and `extra` more connections, all webhooks
/// to `hook`, and a partner per connection (partner 0 on the last one).
fn bridge_settings(nats: &str, hook: &str, prefix: &str, extra: usize) -> Settings {
    let webhook = format!("kind = \"webhook\"\nurl = \"{hook}\"\nsecret = \"bench-secret\"\n");
    let mut toml = format!(
        "[nats]\nurl = \"{nats}\"\n\
         [worker]\nconsumer = \"{prefix}\"\nconcurrency = {CONCURRENCY}\nmax_ack_pending = 10000\n\
         [crm]\n{webhook}"
    );
    for c in 0..extra {
        toml += &format!("[crms.c{c}]\n{webhook}");
    }
    let partners = extra.max(1);
    for p in 0..partners {
        toml += &format!(
            "[partners.\"{}\"]\nbusiness_segment_id = \"4f3c1a52-8d1e-4a57-9f0e-{p:012x}\"\nchannel_origin_id = \"9b2e7d44-6c3f-4e21-8a5b-{p:012x}\"\n",
            partner(p)
        );
        if extra > 0 {
            toml += &format!("crm = \"c{p}\"\n");
        }
    }
    Settings::from_toml(&toml).unwrap()
}

/// The whole bridge as `replicas` replicas (in this process), from a fresh
/// NATS holding every event already.
async fn bridge(webhook: &Webhook, events: usize, extra: usize, replicas: usize) -> Measured {
    let nats = Nats::start().await;
    let connections = extra.max(1);
    let prefix = format!("bench-{connections}");
    let settings = bridge_settings(&nats.url, &webhook.url, &prefix, extra);
    let lane = settings.connection_for(Some(&Guid::try_from(partner(0)).unwrap()));
    println!(
        "  {} CRM connection(s) configured, every event for one partner, on lane {lane}",
        settings.connections().count()
    );
    provision::apply(&nats.js, &settings).await.unwrap();
    nats.publish(events, &partner(0)).await;
    let consumers: Vec<(&'static str, String)> = pipeline::consumers(&settings)
        .into_iter()
        .map(|c| (c.stream, c.name))
        .collect();
    let before = webhook.requests();
    let cpu = Cpu::now(webhook, Some(&nats));
    let started = Instant::now();
    let mut apps = Vec::new();
    for _ in 0..replicas {
        apps.push(Application::build(settings.clone()).await.unwrap());
    }
    let built = started.elapsed();
    let shutdown = CancellationToken::new();
    let running: Vec<_> = apps
        .into_iter()
        .map(|app| tokio::spawn(app.run_until(shutdown.clone())))
        .collect();
    let (took, first_request, complete, redelivered) = nats
        .wait_drained(&consumers, started, || {
            let handled = webhook.requests() - before;
            (handled > 0, handled >= events as u64)
        })
        .await;
    let cpu = Cpu::now(webhook, Some(&nats)).since(cpu);
    let requests = webhook.requests() - before;
    shutdown.cancel();
    for running in running {
        running.await.unwrap().unwrap();
    }
    let measured = Measured {
        name: format!(
            "bridge, {connections} conn{}",
            match replicas {
                1 => String::new(),
                n => format!(", {n} repl."),
            }
        ),
        events,
        took,
        cpu,
        first_request,
        built: Some(built),
        requests: Some(requests),
        redelivered: Some(redelivered),
        complete,
        peak_rss_kib: peak_rss_kib(),
    };
    nats.stop().await;
    measured
}

fn table(hot: &[(EventKind, Duration)], rows: &[&Measured], ratios: &[(&str, f64)]) {
    println!(
        "{:<22} {:>7} {:>9} {:>10} {:>10} {:>10} {:>12} {:>9} {:>9} {:>7} {:>9} {:>10} {:>11} {:>8}",
        "measurement",
        "events",
        "time s",
        "events/s",
        "CPU µs/ev",
        "server µs",
        "excl. server",
        "NATS µs",
        "proxy µs",
        "csw/ev",
        "1st req",
        "ev/s after",
        "redelivered",
        "RSS MiB"
    );
    for (kind, per) in hot {
        println!(
            "{:<22} {:>7} {:>9} {:>10.0} {:>10.2} {:>10} {:>12} {:>9} {:>9} {:>7} {:>9} {:>10} {:>11} {:>8}",
            format!("hot path {}", kind.name()),
            "-",
            "-",
            1.0 / per.as_secs_f64(),
            per.as_secs_f64() * 1e6,
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-"
        );
    }
    for row in rows {
        println!(
            "{:<22} {:>7} {:>9.3} {:>10.0} {:>10.1} {:>10.1} {:>12.1} {:>9} {:>9} {:>7.2} {:>9} {:>10} {:>11} {:>8}{}",
            row.name,
            row.events,
            row.took.as_secs_f64(),
            row.rate(),
            row.us_per_event(row.cpu.process),
            row.us_per_event(row.cpu.server),
            row.us_per_event(row.cpu.process.saturating_sub(row.cpu.server)),
            row.cpu
                .nats
                .map_or("-".into(), |n| format!("{:.1}", row.us_per_event(n))),
            row.cpu
                .proxy
                .map_or("-".into(), |n| format!("{:.1}", row.us_per_event(n))),
            row.switches_per_event(),
            row.first_request
                .map_or("-".into(), |d| format!("{} ms", d.as_millis())),
            row.running_rate().map_or("-".into(), |r| format!("{r:.0}")),
            row.redelivered.map_or("-".into(), |r| r.to_string()),
            row.peak_rss_kib / 1024,
            if row.complete { "" } else { "  STALLED" }
        );
    }
    for (name, ratio) in ratios {
        println!("{name:<60} {ratio:>6.3}");
    }
}

/// The run of median rate.
fn median<'a>(runs: &[&'a Measured]) -> &'a Measured {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted[(sorted.len() - 1) / 2]
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let events: usize = env_or("BENCH_EVENTS", 20_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3).max(1);
    softphone_bridge::tls::install_provider();
    let hot = hot_path();
    let webhook = Webhook::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut runs: Vec<[Measured; 5]> = Vec::new();
    for round in 1..=rounds {
        let measured = runtime.block_on(async {
            println!("round {round}/{rounds}, raw POST:");
            let raw_post = raw_post(&webhook, events).await;
            raw_post.print();
            println!("round {round}/{rounds}, raw consume+ack:");
            let raw_consume = raw_consume(&webhook, events).await;
            raw_consume.print();
            println!("round {round}/{rounds}, bridge, 1 connection:");
            let one = bridge(&webhook, events, 0, 1).await;
            one.print();
            println!("round {round}/{rounds}, bridge, 50 connections:");
            let fifty = bridge(&webhook, events, 50, 1).await;
            fifty.print();
            println!("round {round}/{rounds}, bridge, 1 connection, 3 replicas:");
            let three = bridge(&webhook, events, 0, 3).await;
            three.print();
            [raw_consume, raw_post, one, fifty, three]
        });
        for run in &measured[2..] {
            if run.requests != Some(events as u64) {
                println!(
                    "note: {} answered {:?} CRM requests for {events} events",
                    run.name, run.requests
                );
            }
        }
        runs.push(measured);
    }
    let of = |i: usize| runs.iter().map(|r| &r[i]).collect::<Vec<_>>();
    let medians: Vec<&Measured> = (0..5).map(|i| median(&of(i))).collect();
    let (raw_consume, one, fifty, three) = (medians[0], medians[2], medians[3], medians[4]);
    println!();
    println!("median of {rounds} round(s) by events/s, each row one whole run:");
    table(
        &hot,
        &medians,
        &[
            (
                "bridge 1-connection rate / raw consume+ack rate",
                one.rate() / raw_consume.rate(),
            ),
            (
                "bridge 50-connection rate / 1-connection rate (goal >= 0.9)",
                fifty.rate() / one.rate(),
            ),
            (
                "  the same, from the first CRM request on (startup left out)",
                fifty.running_rate().unwrap_or(f64::NAN) / one.running_rate().unwrap_or(f64::NAN),
            ),
            (
                "bridge 3-replica rate / 1-replica rate (1 connection)",
                three.rate() / one.rate(),
            ),
        ],
    );
    println!();
    println!("per round, events/s:");
    println!(
        "{:<7} {:>12} {:>10} {:>10} {:>10} {:>10} {:>16} {:>12} {:>8}",
        "round",
        "raw consume",
        "raw POST",
        "bridge 1",
        "bridge 50",
        "50 / 1",
        "50 / 1 after 1st",
        "3 replicas",
        "3r / 1"
    );
    for (round, [raw_consume, raw_post, one, fifty, three]) in runs.iter().enumerate() {
        println!(
            "{:<7} {:>12.0} {:>10.0} {:>10.0} {:>10.0} {:>10.3} {:>16.3} {:>12.0} {:>8.3}",
            round + 1,
            raw_consume.rate(),
            raw_post.rate(),
            one.rate(),
            fifty.rate(),
            fifty.rate() / one.rate(),
            fifty.running_rate().unwrap_or(f64::NAN) / one.running_rate().unwrap_or(f64::NAN),
            three.rate(),
            three.rate() / one.rate(),
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
}
