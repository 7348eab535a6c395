//! What a call costs a Dataverse environment in Web API requests, and what
//! batching adds to its latency: the real bridge (intake, lane, the
//! `dynamics` adapter, the call memory) through a real NATS
//! (testcontainers), against the fake Dataverse of the tests
//! (`tests/api/helpers/fakes/dataverse/`) over real HTTP.
//!
//! Each call is four events, published at the call's pace (benches/common);
//! every caller has a number of their own. Calls start at 1, 10 and 100 per
//! second (20, 100 and 500 calls), then once more at 10 per second with
//! `batch.max_records = 1` (no batching).
//!
//! Columns: HTTP requests to the Web API (token requests aside) per call;
//! the requests Dataverse executed inside them (`$batch` parts: what service
//! protection and request entitlements count) per call; the latency from
//! publishing an event to the environment applying its write, p50 and p99
//! over every event, and the p99 of each kind.
//!
//! `cargo bench --bench dynamics` (needs the NATS image: deploy/nats-image.sh).

#[allow(dead_code)]
#[path = "../tests/api/helpers/fakes/mod.rs"]
mod fakes;

mod common;

use std::time::{Duration, Instant};

use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;
use softphone_bridge::crm::phonecall_id;

use fakes::dataverse::FakeDataverse;

const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
const MAX_WAIT: Duration = Duration::from_millis(500);

fn settings(nats: &str, dv: &FakeDataverse, max_records: usize) -> Settings {
    let crm = dv.crm_toml(&format!(
        "disposition_column = \"new_disposition\"\nnotes_at_column = \"new_notesat\"\n\
         [crm.columns]\nivrExitPath = \"new_ivrexitpath\"\n\
         [crm.batch]\nmax_records = {max_records}\nmax_wait = \"{}ms\"",
        MAX_WAIT.as_millis()
    ));
    Settings::from_toml(&format!(
        "[nats]\nurl = \"{nats}\"\n[worker]\nconsumer = \"bench\"\n\
         [partners.\"{PARTNER}\"]\nbusiness_segment_id = \"4f3c1a52-8d1e-4a57-9f0e-000000000000\"\n\
         channel_origin_id = \"9b2e7d44-6c3f-4e21-8a5b-000000000000\"\n[crm]\n{crm}"
    ))
    .unwrap()
}

/// The column only that kind of event writes: how its write is recognised.
fn mark(kind: EventKind) -> &'static str {
    match kind {
        EventKind::CallIncoming => "actualstart",
        EventKind::CallAccepted => "new_ivrexitpath",
        EventKind::CallEnded => "actualend",
        _ => "new_notesat",
    }
}

struct Row {
    name: String,
    calls: usize,
    requests: usize,
    operations: usize,
    latencies: Vec<(EventKind, Duration)>,
    missing: usize,
}

async fn run(rate: f64, calls: usize, max_records: usize) -> Row {
    let (container, url) = common::start_nats().await;
    let dv = FakeDataverse::start().await;
    let settings = settings(&url, &dv, max_records);
    let (js, shutdown, running) = common::spawn_bridge(&url, settings).await;
    // The token is had before the clock starts (one request an hour).
    let warm = uuid::Uuid::new_v4().to_string();
    js.publish(
        EventKind::CallNotesSubmitted.subject(),
        common::body(PARTNER, EventKind::CallNotesSubmitted, &warm, 0).into(),
    )
    .await
    .unwrap();
    while dv.phonecalls() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(MAX_WAIT * 2).await;
    let (requests_before, operations_before) = {
        let org = dv.org();
        (org.requests, org.operations)
    };

    let conversations: Vec<String> = (0..calls)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let ids: Vec<String> = conversations
        .iter()
        .map(|c| phonecall_id(&dv.uri(), c).to_string())
        .collect();
    let started = tokio::time::Instant::now();
    let mut published = Vec::new();
    let mut acks = Vec::new();
    for (at, call, kind) in common::schedule(rate, calls) {
        tokio::time::sleep_until(started + at).await;
        let body = common::body(PARTNER, kind, &conversations[call], call + 1);
        acks.push(js.publish(kind.subject(), body.into()).await.unwrap());
        published.push((Instant::now(), call, kind));
    }
    for ack in acks {
        ack.await.unwrap();
    }
    // Every notes_submitted applied, or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let notes = dv
            .org()
            .writes
            .iter()
            .filter(|w| w.body.contains_key("new_notesat"))
            .count();
        if notes > calls || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(MAX_WAIT).await;
    let (requests, operations, writes) = {
        let org = dv.org();
        (
            org.requests - requests_before,
            org.operations - operations_before,
            org.writes.clone(),
        )
    };
    let mut latencies = Vec::new();
    let mut missing = 0;
    for (at, call, kind) in published {
        let written = writes
            .iter()
            .find(|w| w.at >= at && w.id == ids[call] && w.body.contains_key(mark(kind)));
        match written {
            Some(w) => latencies.push((kind, w.at - at)),
            None => missing += 1,
        }
    }
    shutdown.cancel();
    let _ = running.await;
    let _ = container.rm().await;
    Row {
        name: if max_records == 1 {
            format!("{rate} calls/s, unbatched")
        } else {
            format!("{rate} calls/s")
        },
        calls,
        requests,
        operations,
        latencies,
        missing,
    }
}

fn print(rows: &[Row]) {
    println!(
        "\n{:<24} {:>6} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "load",
        "calls",
        "requests",
        "req/call",
        "ops/call",
        "p50",
        "p99",
        "p99 inc",
        "p99 acc",
        "p99 end",
        "p99 notes",
        "missing"
    );
    for row in rows {
        let [p50, p99, incoming, accepted, ended, notes] =
            <[String; 6]>::try_from(common::latency_columns(&row.latencies)).expect("six columns");
        println!(
            "{:<24} {:>6} {:>9} {:>9.2} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            row.name,
            row.calls,
            row.requests,
            row.requests as f64 / row.calls as f64,
            row.operations as f64 / row.calls as f64,
            p50,
            p99,
            incoming,
            accepted,
            ended,
            notes,
            row.missing
        );
    }
    println!(
        "\nbatch.max_wait = {} ms; latency = publish -> the environment applies the event's write",
        MAX_WAIT.as_millis()
    );
}

fn main() {
    print(&common::crm_loads(100, run));
}
