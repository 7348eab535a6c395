//! What a call costs a Salesforce org in API requests, and what batching
//! adds to its latency: the real bridge (intake, lane, the `salesforce`
//! adapter) through a real NATS (testcontainers), against the fake org of the
//! tests (`tests/api/helpers/fakes/salesforce/`) over real HTTP.
//!
//! Each call is four events, published at the call's pace: `incoming` at its
//! start, `accepted` 0.5 s later, `ended` at 1 s, `notes_submitted` at 1.5 s;
//! every caller has a number of their own (no lookup is saved by the cache
//! across calls). Calls start at 1, 10 and 100 per second (20, 100 and 500
//! calls), then once more at 10 per second with `batch.max_records = 1` (no
//! batching: what every event cost before batching).
//!
//! Columns: API requests to the org (token requests aside) per call; the
//! latency from publishing an event to the org receiving its Task write, p50
//! and p99 over every event, and the p99 of each kind.
//!
//! `cargo bench --bench salesforce` (needs the NATS image:
//! deploy/nats-image.sh; SOFTPHONE_NATS_IMAGE names another).
//! BENCH_MAX_WAIT_MS sets `batch.max_wait` (default 500, the setting's default).

#[allow(dead_code)]
#[path = "../tests/api/helpers/fakes/mod.rs"]
mod fakes;

use std::time::{Duration, Instant};

use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;

use fakes::salesforce::FakeSalesforce;

mod common;

const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";

/// `batch.max_wait` of the runs.
fn max_wait() -> Duration {
    let ms = std::env::var("BENCH_MAX_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    Duration::from_millis(ms)
}

fn settings(nats: &str, sf: &FakeSalesforce, max_records: usize) -> Settings {
    let crm = sf.crm_toml(
        "client_credentials",
        &format!(
            "[crm.task_fields]\nivrExitPath = \"Ivr_Exit_Path__c\"\n[crm.batch]\nmax_records = {max_records}\nmax_wait = \"{}ms\"",
            max_wait().as_millis()
        ),
    );
    Settings::from_toml(&format!(
        "[nats]\nurl = \"{nats}\"\n[worker]\nconsumer = \"bench\"\n\
         [partners.\"{PARTNER}\"]\nbusiness_segment_id = \"4f3c1a52-8d1e-4a57-9f0e-000000000000\"\n\
         channel_origin_id = \"9b2e7d44-6c3f-4e21-8a5b-000000000000\"\n[crm]\n{crm}"
    ))
    .unwrap()
}

fn body(kind: EventKind, conversation: &str, call: usize) -> String {
    common::body(PARTNER, kind, conversation, call)
}

/// The field only that kind of event writes: how its write is recognised.
fn mark(kind: EventKind) -> &'static str {
    match kind {
        EventKind::CallIncoming => "TaskSubtype",
        EventKind::CallAccepted => "Ivr_Exit_Path__c",
        EventKind::CallEnded => "Status",
        _ => "Softphone_Notes_At__c",
    }
}

struct Row {
    name: String,
    calls: usize,
    requests: usize,
    latencies: Vec<(EventKind, Duration)>,
    missing: usize,
}

async fn run(rate: f64, calls: usize, max_records: usize) -> Row {
    let (container, url) = common::start_nats().await;
    let sf = FakeSalesforce::start().await;
    let settings = settings(&url, &sf, max_records);
    let (js, shutdown, running) = common::spawn_bridge(&url, settings).await;
    // The token is had before the clock starts (one request per hour).
    let warm = uuid::Uuid::new_v4().to_string();
    js.publish(
        EventKind::CallNotesSubmitted.subject(),
        body(EventKind::CallNotesSubmitted, &warm, 0).into(),
    )
    .await
    .unwrap();
    while !sf.org().tasks.contains_key(&warm) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(max_wait() * 2).await;
    sf.drain().await;

    let conversations: Vec<String> = (0..calls)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let schedule = common::schedule(rate, calls);
    let started = tokio::time::Instant::now();
    let mut published = Vec::with_capacity(schedule.len());
    let mut acks = Vec::new();
    for (at, call, kind) in schedule {
        tokio::time::sleep_until(started + at).await;
        let ack = js
            .publish(
                kind.subject(),
                body(kind, &conversations[call], call + 1).into(),
            )
            .await
            .unwrap();
        published.push((Instant::now(), call, kind));
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    // Every notes_submitted written, or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let notes = sf
            .org()
            .writes
            .iter()
            .filter(|(_, _, fields)| fields.iter().any(|f| f == "Softphone_Notes_At__c"))
            .count();
        if notes > calls || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(max_wait()).await;
    let requests = sf.api_calls().await;
    let writes = sf.org().writes.clone();
    let mut latencies = Vec::new();
    let mut missing = 0;
    for (at, call, kind) in published {
        let written = writes.iter().find(|(when, conversation, fields)| {
            *when >= at
                && *conversation == conversations[call]
                && fields.iter().any(|f| f == mark(kind))
        });
        match written {
            Some((when, _, _)) => latencies.push((kind, *when - at)),
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
        latencies,
        missing,
    }
}

fn print(rows: &[Row]) {
    println!(
        "\n{:<24} {:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "load",
        "calls",
        "requests",
        "req/call",
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
            "{:<24} {:>6} {:>9} {:>10.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            row.name,
            row.calls,
            row.requests,
            row.requests as f64 / row.calls as f64,
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
        "\nbatch.max_wait = {} ms; latency = publish -> the org receives the event's Task write",
        max_wait().as_millis()
    );
}

fn main() {
    print(&common::crm_loads(200, run));
}
