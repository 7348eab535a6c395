//! Tenancy (deploy/tenancy.md) on the real nats-server with the
//! configuration `nats-config` renders:
//! - logins per second through the auth callout: the callout's answer alone
//!   (verify the login token, sign the user and the response), then whole
//!   logins, clients connecting with their tokens, answered by two callout
//!   replicas;
//! - events per second a softphone stores through its partner's account (the
//!   service import, publish acks crossing back) divided by the same published
//!   straight into the bridge's account, as today's single account does.
//!
//! `cargo bench --bench tenancy`; BENCH_LOGINS (2000), BENCH_CONCURRENCY
//! (32), BENCH_EVENTS (20000) and BENCH_ROUNDS (3) size it. Needs the static
//! nats-server (`source deploy/nats-env.sh && ensure_nats_binary`).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use softphone_bridge::callout::{self, Callout, JwtClaims, encode_jwt};
use softphone_bridge::config::Settings;
use softphone_bridge::nats_config::{Listeners, render};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
const SECRET: &str = "a-platform-login-secret-32-bytes!";

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

fn settings() -> Settings {
    Settings::from_toml(&format!(
        "[nats]\nuser = \"bridge\"\npassword = \"bench-password\"\n\
         [callout]\nissuer_seed = \"{}\"\ntoken_secret = \"{SECRET}\"\n\
         [partners.{PARTNER}]\nbusiness_segment_id = \"{PARTNER}\"\nchannel_origin_id = \"{PARTNER}\"\n",
        nkeys::KeyPair::new_account().seed().unwrap()
    ))
    .unwrap()
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
fn answer_alone(logins: usize) -> f64 {
    let settings = settings();
    let callout = Callout::new(&settings).unwrap().unwrap();
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

/// Whole logins against the real server, then events through a partner's
/// account and straight into the bridge's; prints what it measures.
async fn logins_through_the_server(logins: usize, concurrency: usize) {
    let settings = settings();
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
    std::fs::write(&conf, render(&settings, &listeners, [3; 16]).unwrap()).unwrap();
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
    let callout = Arc::new(Callout::new(&settings).unwrap().unwrap());
    let stop = CancellationToken::new();
    for _ in 0..2 {
        let client = async_nats::ConnectOptions::with_user_and_password(
            "bridge".into(),
            "bench-password".into(),
        )
        .connect(&url)
        .await
        .unwrap();
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

    // Events: the bridge's own user on the contract's subject (today's single
    // account) and a softphone through its partner's account, in turns.
    let bridge = async_nats::ConnectOptions::with_user_and_password(
        "bridge".into(),
        "bench-password".into(),
    )
    .connect(&url)
    .await
    .unwrap();
    softphone_bridge::provision::apply(&async_nats::jetstream::new(bridge.clone()), &settings)
        .await
        .unwrap();
    let softphone = async_nats::ConnectOptions::with_token(token(0))
        .custom_inbox_prefix("_INBOX_agent-0")
        .connect(&url)
        .await
        .unwrap();
    let events = env_or("BENCH_EVENTS", 20_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let single = publish_events(&bridge, events).await;
        let partner = publish_events(&softphone, events).await;
        println!(
            "round {round}/{rounds}: {events} events stored with acks: single account {single:.0}/s, \
             through a partner account {partner:.0}/s, ratio {:.2}",
            partner / single
        );
        ratios.push(partner / single);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "partner account / single account, median of {rounds}: {:.2} (goal: at least 0.9)",
        ratios[rounds / 2]
    );
    stop.cancel();
}

/// Publishes `events` call events on `softphone.call.accepted`, at most 256
/// awaiting their ack; events per second.
async fn publish_events(client: &async_nats::Client, events: usize) -> f64 {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let body = bytes::Bytes::from(format!(
        r#"{{"partnerId":"{PARTNER}","conversationId":"57053e21-0440-4689-a27a-513d7dceebde","callerANI":"+18883973342"}}"#
    ));
    let started = Instant::now();
    let mut acks = futures::stream::iter(0..events)
        .map(|_| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                js.publish("softphone.call.accepted", body)
                    .await
                    .expect("published")
                    .await
                    .expect("stored")
            }
        })
        .buffer_unordered(256);
    while acks.next().await.is_some() {}
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let logins = env_or("BENCH_LOGINS", 2000);
    let concurrency = env_or("BENCH_CONCURRENCY", 32);
    let alone = answer_alone(logins);
    println!("callout answer alone (verify + sign, 1 core): {alone:.0} logins/s");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(logins_through_the_server(logins, concurrency));
}
