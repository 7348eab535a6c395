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
//!    once (`common::Webhook`): the floor for one CRM call.
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
//! The floors are in `floors.rs`, the pipeline's runs (one connection,
//! fifty, three replicas) in `bridge.rs`, what each costs in `measure.rs`.
//!
//! `cargo bench --bench throughput` (needs the NATS image: deploy/nats-image.sh;
//! SOFTPHONE_NATS_IMAGE names another). BENCH_EVENTS sets the number of events
//! (default 20000).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use softphone_bridge::broker::provision;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{EVENTS_STREAM, Event, EventKind, Guid};
use softphone_bridge::crm::CrmEvent;
use softphone_bridge::{Application, pipeline};
use testcontainers::{ContainerAsync, GenericImage};
use tokio_util::sync::CancellationToken;

mod bridge;
#[path = "../common/mod.rs"]
mod common;
mod floors;
mod measure;

use bridge::*;
// `CONCURRENCY`: the bridge's `worker.concurrency`, and the raw POST's.
use common::{CONCURRENCY, Webhook, other_process_cpu};
use floors::*;
use measure::*;

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
        vouched: None,
    }
    .to_json()
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
