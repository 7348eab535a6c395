//! Tenancy (deploy/tenancy.md) on the real nats-server with the
//! configuration `nats-config` renders:
//! - logins per second through the auth callout: the callout's answer alone
//!   (verify the login token, sign the user and the response), then whole
//!   logins, clients connecting with their tokens, answered by two callout
//!   replicas;
//! - events per second a softphone stores through its partner's account (the
//!   service import, publish acks crossing back) divided by the same published
//!   straight into the bridge's account, as today's single account does: the
//!   NATS floor;
//! - the same ratio for the whole pipeline: the real `softphone-bridge run`
//!   binary (these settings, `[callout]` included, on the same server)
//!   consuming call events and delivering each to the instant webhook CRM
//!   (`common::Webhook`), timed from the first publish until the CRM has
//!   received every event. The events are whole calls (`common::LIFECYCLE`)
//!   in the order calls starting at 1 000 per second publish them
//!   (`common::schedule`), published as fast as their acks come back, 256 in
//!   flight: by a softphone logged in through the callout into its partner's
//!   account (`softphone.call.…` there, `softphone.p.<partnerId>.call.…` in
//!   the bridge's `SOFTPHONE_EVENTS`), and by the bridge's own user on
//!   `softphone.call.…`, in turns: single, partner, single, partner…
//!
//! `cargo bench --bench tenancy`; BENCH_LOGINS (2000), BENCH_CONCURRENCY
//! (32), BENCH_EVENTS (20000) and BENCH_ROUNDS (3) size the logins and the
//! stored events, BENCH_PIPELINE_EVENTS (20000) and BENCH_PIPELINE_ROUNDS (7)
//! the pipeline's runs. Needs the static nats-server (`source
//! deploy/nats-env.sh && ensure_nats_binary`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use softphone_bridge::callout::{self, Callout, JwtClaims, encode_jwt};
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{EVENTS_STREAM, EventKind, tenant};
use softphone_bridge::nats_config::{Listeners, render};
use softphone_bridge::pipeline;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
const SECRET: &str = "a-platform-login-secret-32-bytes!";
/// How long one pipeline run may take before it is reported as stalled.
const STALL_AFTER: Duration = Duration::from_secs(60);
/// How often a pipeline run looks at the CRM's count.
const POLL_EVERY: Duration = Duration::from_millis(2);
/// Events published through each path before the timed runs, once the
/// bridge has started: both paths flow, connections and pools are warm.
const WARM_UP: usize = 400;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn token(softphone: usize) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": format!("agent-{softphone}"), "role": "softphone", "partnerId": PARTNER, "exp": now() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The bench's settings, the server's and the bridge binary's alike: the
/// bridge's own user, the callout (a fresh issuer), one partner, and the
/// webhook benches' worker with `[crm]` the webhook at `hook`.
fn settings_toml(hook: &str) -> String {
    format!(
        "[nats]\nuser = \"bridge\"\npassword = \"bench-password\"\n\
         [callout]\nissuer_seed = \"{}\"\ntoken_secret = \"{SECRET}\"\n\
         [partners.{PARTNER}]\nbusiness_segment_id = \"{PARTNER}\"\nchannel_origin_id = \"{PARTNER}\"\n\
         {}[crm]\n{}",
        nkeys::KeyPair::new_account().seed().unwrap(),
        common::worker_toml("bench"),
        common::webhook_toml(hook)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nats_binary() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let env = std::fs::read_to_string(format!("{root}/deploy/nats-env.sh")).unwrap();
    let version = env
        .lines()
        .find_map(|l| l.strip_prefix("NATS_VERSION=\"${NATS_VERSION:-"))
        .and_then(|rest| rest.split('}').next())
        .unwrap();
    format!("{root}/target/nats-{version}/nats-server")
}

/// The callout's answer alone, on one core.
fn answer_alone(settings: &Settings, logins: usize) -> f64 {
    let callout = Callout::new(settings).unwrap().unwrap();
    let server = nkeys::KeyPair::new_server();
    let tokens: Vec<String> = (0..logins).map(token).collect();
    let requests: Vec<Vec<u8>> = tokens
        .iter()
        .map(|token| {
            let nats = json!({
                "server_id": {"name": "bench", "host": "127.0.0.1", "id": server.public_key()},
                "user_nkey": nkeys::KeyPair::new_user().public_key(),
                "client_info": {"host": "127.0.0.1"},
                "connect_opts": {"auth_token": token, "protocol": 1},
                "type": "authorization_request", "version": 2
            });
            let claims = JwtClaims {
                audience: "nats-authorization-request".into(),
                expires: now() + 60,
                subject: "bench".into(),
                ..JwtClaims::default()
            };
            encode_jwt(claims, &nats, &server, now()).into_bytes()
        })
        .collect();
    let started = Instant::now();
    for request in &requests {
        let (answer, _) = callout.answer(request, None, now());
        assert!(answer.is_some());
    }
    logins as f64 / started.elapsed().as_secs_f64()
}

/// The real nats-server on the configuration rendered for the settings, two
/// callout replicas in this process, and the bridge's own connection (its
/// account provisioned).
struct Deployment {
    server: tokio::process::Child,
    url: String,
    bridge: async_nats::Client,
    /// Stops the callout replicas.
    stop: CancellationToken,
    /// The server's store, the bridge binary's settings and log.
    dir: tempfile::TempDir,
}

impl Deployment {
    async fn start(settings: &Settings) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let listeners = Listeners {
            listen: format!("127.0.0.1:{}", free_port()),
            websocket: format!("127.0.0.1:{}", free_port()),
            store_dir: dir.path().join("jetstream"),
            tls_cert: None,
            tls_key: None,
            monitor: None,
        };
        let conf = dir.path().join("nats.conf");
        std::fs::write(&conf, render(settings, &listeners, [3; 16]).unwrap()).unwrap();
        let mut server = tokio::process::Command::new(nats_binary())
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts (source deploy/nats-env.sh && ensure_nats_binary)");
        let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Server is ready") {
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url = format!("nats://{}", listeners.listen);
        let bridge_user = || {
            async_nats::ConnectOptions::with_user_and_password(
                "bridge".into(),
                "bench-password".into(),
            )
            .connect(&url)
        };
        let callout = Arc::new(Callout::new(settings).unwrap().unwrap());
        let stop = CancellationToken::new();
        for _ in 0..2 {
            let client = bridge_user().await.unwrap();
            let requests = callout::subscribe(&client).await.unwrap();
            client.flush().await.unwrap();
            tokio::spawn(callout::serve_requests(
                client,
                requests,
                Arc::clone(&callout),
                stop.clone(),
            ));
        }
        // The replicas' subscriptions are in force once a login goes through.
        let probe = token(usize::MAX);
        while async_nats::ConnectOptions::with_token(probe.clone())
            .connect(&url)
            .await
            .is_err()
        {}
        let bridge = bridge_user().await.unwrap();
        softphone_bridge::broker::provision::apply(&jetstream::new(bridge.clone()), settings)
            .await
            .unwrap();
        Deployment {
            server,
            url,
            bridge,
            stop,
            dir,
        }
    }

    /// Softphone `agent-0`, logged in through the callout into its partner's account.
    async fn softphone(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_token(token(0))
            .custom_inbox_prefix("_INBOX_agent-0")
            .connect(&self.url)
            .await
            .unwrap()
    }
}

/// Whole logins against the real server; prints what it measures.
async fn logins_through_the_server(deployment: &Deployment, logins: usize, concurrency: usize) {
    let url = &deployment.url;
    let tokens: Arc<Vec<String>> = Arc::new((0..logins).map(token).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (tokens, next, url) = (Arc::clone(&tokens), Arc::clone(&next), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(token) = tokens.get(i) else { break };
                    let began = Instant::now();
                    let client = async_nats::ConnectOptions::with_token(token.clone())
                        .connect(&url)
                        .await
                        .expect("a login");
                    latencies.push(began.elapsed());
                    drop(client);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let rate = logins as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "logins through nats-server and 2 callout replicas ({logins} logins, {concurrency} at once): \
         {rate:.0} logins/s, connect p50 {:.1} ms, p99 {:.1} ms (goal: 1000/s; a 10 000-agent shift change in a minute needs 170/s)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

/// Events stored (no bridge running): the bridge's own user on the
/// contract's subject (today's single account) and a softphone through its
/// partner's account, in turns; prints what it measures.
async fn events_stored(deployment: &Deployment, softphone: &async_nats::Client) {
    let events = env_or("BENCH_EVENTS", 20_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let body = Bytes::from(format!(
        r#"{{"partnerId":"{PARTNER}","conversationId":"57053e21-0440-4689-a27a-513d7dceebde","callerANI":"+18883973342"}}"#
    ));
    let messages = vec![(EventKind::CallAccepted.subject(), body); events];
    let rate = |took: Duration| events as f64 / took.as_secs_f64();
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let single = rate(publish(&deployment.bridge, &messages).await);
        let partner = rate(publish(softphone, &messages).await);
        println!(
            "round {round}/{rounds}: {events} events stored with acks: single account {single:.0}/s, \
             through a partner account {partner:.0}/s, ratio {:.2}",
            partner / single
        );
        ratios.push(partner / single);
    }
    println!(
        "partner account / single account, median of {rounds}: {:.2} (goal: at least 0.9)",
        median(&mut ratios)
    );
}

/// Publishes `messages` through JetStream on `client`, at most 256 awaiting
/// their ack; how long until the last was stored.
async fn publish(client: &async_nats::Client, messages: &[(&'static str, Bytes)]) -> Duration {
    let js = jetstream::new(client.clone());
    let started = Instant::now();
    let mut acks = futures::stream::iter(messages)
        .map(|(subject, body)| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                js.publish(*subject, body)
                    .await
                    .expect("published")
                    .await
                    .expect("stored")
            }
        })
        .buffer_unordered(256);
    while acks.next().await.is_some() {}
    started.elapsed()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// The way events reach the bridge's account.
#[derive(Clone, Copy)]
enum Path {
    /// The bridge's own user publishes on `softphone.call.…`: today's single account.
    Single,
    /// A softphone publishes in its partner's account, stored as
    /// `softphone.p.<partnerId>.call.…`.
    Partner,
}

/// What one pipeline run measured.
struct Delivered {
    events: usize,
    /// From the first publish until the CRM had received every event.
    took: Duration,
    /// Until every publish was acked.
    published: Duration,
    /// CPU time over the run of the bridge binary, nats-server and this
    /// process (the publisher and the CRM).
    cpu: [Option<Duration>; 3],
}

impl Delivered {
    fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    fn describe(&self) -> String {
        let us = |cpu: Option<Duration>| {
            cpu.map_or("-".into(), |cpu| {
                format!("{:.0}", cpu.as_secs_f64() * 1e6 / self.events as f64)
            })
        };
        format!(
            "{:.0}/s (acked in {:.0} ms; CPU µs/event: bridge {}, nats-server {}, publisher and CRM {})",
            self.rate(),
            self.published.as_secs_f64() * 1e3,
            us(self.cpu[0]),
            us(self.cpu[1]),
            us(self.cpu[2])
        )
    }
}

/// The pipeline's runs: the bridge binary on `deployment`'s server with the
/// bench's settings (`toml`, parsed as `settings`), delivering to `webhook`;
/// prints what it measures.
async fn whole_pipeline(
    deployment: &Deployment,
    softphone: &async_nats::Client,
    settings: &Settings,
    toml: &str,
    webhook: &common::Webhook,
) {
    let events = env_or("BENCH_PIPELINE_EVENTS", 20_000).div_ceil(4).max(1) * 4;
    let rounds = env_or("BENCH_PIPELINE_ROUNDS", 7).max(1);
    let js = jetstream::new(deployment.bridge.clone());
    // What the events measurements stored would be the bridge's first work.
    js.get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let mut bridge = common::spawn_bridge_process(deployment.dir.path(), toml, &deployment.url);
    let mut runs = Runs {
        js,
        clients: [&deployment.bridge, softphone],
        webhook,
        pids: [
            bridge.id(),
            deployment.server.id(),
            Some(std::process::id()),
        ]
        .map(|pid| pid.map(i64::from)),
        run: 0,
    };
    let stalled = |what: &str| {
        println!(
            "{what}: the CRM did not receive every event within {STALL_AFTER:?}; the bridge's log ends:\n{}",
            common::log_tail(deployment.dir.path(), 20)
        );
    };
    for path in [Path::Single, Path::Partner] {
        if runs.deliver(path, WARM_UP).await.is_none() {
            return stalled("pipeline warm-up");
        }
    }
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let (Some(single), Some(partner)) = (
            runs.deliver(Path::Single, events).await,
            runs.deliver(Path::Partner, events).await,
        ) else {
            return stalled(&format!("pipeline round {round}/{rounds}"));
        };
        println!(
            "pipeline round {round}/{rounds}: {events} call events through the bridge to the webhook CRM: \
             single account {}, through a partner account {}, ratio {:.2}",
            single.describe(),
            partner.describe(),
            partner.rate() / single.rate()
        );
        rates[0].push(single.rate());
        rates[1].push(partner.rate());
        ratios.push(partner.rate() / single.rate());
    }
    let [single, partner] = rates.map(|mut rates| median(&mut rates));
    println!(
        "whole pipeline, partner account / single account, median of {rounds}: {:.2} (goal: at least 0.9); \
         median rates: single account {single:.0}/s, through a partner account {partner:.0}/s",
        median(&mut ratios)
    );
    // What could flatter a run: requests counted twice, redeliveries, trouble.
    let published = 2 * (WARM_UP + rounds * events);
    let mut redelivered = 0;
    for consumer in pipeline::consumers(settings) {
        let stream = runs.js.get_stream_no_info(consumer.stream).await.unwrap();
        redelivered += stream
            .consumer_info(&consumer.name)
            .await
            .unwrap()
            .num_redelivered;
    }
    let log = std::fs::read_to_string(deployment.dir.path().join("bridge.log")).unwrap_or_default();
    let troubles: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    println!(
        "pipeline: {} CRM requests for {published} events published, {redelivered} redelivered; \
         the bridge logged {} warnings or errors{}",
        webhook.requests(),
        troubles.len(),
        troubles
            .iter()
            .take(5)
            .map(|line| format!("\n  {line}"))
            .collect::<String>()
    );
    if let Ok(Some(status)) = bridge.try_wait() {
        println!("note: the bridge exited during the runs: {status}");
    }
}

/// The pipeline's runs so far, and what each needs.
struct Runs<'a> {
    /// The bridge's account, to count what `SOFTPHONE_EVENTS` stored.
    js: jetstream::Context,
    /// Who publishes on each [`Path`]: the bridge's own user, the softphone.
    clients: [&'a async_nats::Client; 2],
    webhook: &'a common::Webhook,
    /// The process ids of the bridge binary, nats-server and this process.
    pids: [Option<i64>; 3],
    run: usize,
}

impl Runs<'_> {
    /// Publishes `events` call events on `path` with the bridge running, and
    /// waits until the CRM has received as many requests more; `None` when
    /// that takes longer than [`STALL_AFTER`]. Asserts that
    /// `SOFTPHONE_EVENTS` stored them all on the path's subjects.
    async fn deliver(&mut self, path: Path, events: usize) -> Option<Delivered> {
        self.run += 1;
        let messages = call_events(self.run, events);
        let before = stored(&self.js).await;
        let target = self.webhook.requests() + events as u64;
        let cpu = || self.pids.map(|pid| pid.and_then(common::other_process_cpu));
        let cpu_before = cpu();
        let started = Instant::now();
        let (published, took) =
            tokio::join!(publish(self.clients[path as usize], &messages), async {
                while self.webhook.requests() < target {
                    if started.elapsed() > STALL_AFTER {
                        return None;
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Some(started.elapsed())
            });
        let cpu_after = cpu();
        let after = stored(&self.js).await;
        let delta = [after[0] - before[0], after[1] - before[1]];
        assert_eq!(
            (delta[path as usize], delta[1 - path as usize]),
            (events, 0),
            "SOFTPHONE_EVENTS stores each path's events on its own subjects"
        );
        Some(Delivered {
            events,
            took: took?,
            published,
            cpu: [0, 1, 2].map(|i| Some(cpu_after[i]?.saturating_sub(cpu_before[i]?))),
        })
    }
}

/// Run `run`'s `events` call events: whole calls, each a conversation of its
/// own, in the order calls starting at 1 000 per second publish them.
fn call_events(run: usize, events: usize) -> Vec<(&'static str, Bytes)> {
    common::schedule(1000.0, events / 4)
        .into_iter()
        .map(|(_, call, kind)| {
            let conversation = format!("57053e21-0440-4689-a27a-{run:04x}{call:08x}");
            let body = common::body(PARTNER, kind, &conversation, call);
            (kind.subject(), Bytes::from(body))
        })
        .collect()
}

/// Call events `SOFTPHONE_EVENTS` holds, by [`Path`]: on the contract's
/// own subjects, and on `PARTNER`'s.
async fn stored(js: &jetstream::Context) -> [usize; 2] {
    let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let mut subjects = stream.info_with_subjects(">").await.unwrap();
    let mut stored = [0; 2];
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.unwrap();
        match tenant::partner_event(&subject) {
            Some((of, _)) if of.as_str() == PARTNER => stored[Path::Partner as usize] += count,
            None if EventKind::ALL.iter().any(|k| k.subject() == subject) => {
                stored[Path::Single as usize] += count
            }
            _ => {}
        }
    }
    stored
}

fn main() {
    let logins = env_or("BENCH_LOGINS", 2000);
    let concurrency = env_or("BENCH_CONCURRENCY", 32);
    let webhook = common::Webhook::start();
    let toml = settings_toml(&webhook.url);
    let settings = Settings::from_toml(&toml).unwrap();
    let alone = answer_alone(&settings, logins);
    println!("callout answer alone (verify + sign, 1 core): {alone:.0} logins/s");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deployment = Deployment::start(&settings).await;
        logins_through_the_server(&deployment, logins, concurrency).await;
        let softphone = deployment.softphone().await;
        events_stored(&deployment, &softphone).await;
        whole_pipeline(&deployment, &softphone, &settings, &toml, &webhook).await;
        deployment.stop.cancel();
    });
}
