//! Measures what the worker costs: the per-event hot path (decode, validate,
//! build the CRM document) in-process, and end-to-end throughput through a real
//! NATS (testcontainers) with the `log` CRM writing to a sink, at several
//! concurrency settings, with the process's peak memory.
//!
//! `cargo bench --bench throughput` (needs the NATS image: deploy/nats-image.sh).
//! BENCH_EVENTS sets the number of events (default 20000).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::value::RawValue;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{EVENTS_STREAM, Event, EventKind};
use softphone_bridge::crm::{CrmEvent, LogCrm};
use softphone_bridge::{Application, broker};
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};
use tokio_util::sync::CancellationToken;

const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";

fn body(kind: EventKind, i: usize) -> String {
    let conv = format!("57053e21-0440-4689-a27a-{i:012x}");
    match kind {
        EventKind::CallAccepted => format!(
            r#"{{"partnerId":"{PARTNER}","conversationId":"{conv}","callerANI":"+18883973342","language":"en_US","ivrExitPath":"billing","channelName":"voice","reservationStartDate":"2026-12-01","specialEvent":"none","escalationType":"none","recordingStatus":"ON"}}"#
        ),
        _ => format!(
            r#"{{"partnerId":"{PARTNER}","conversationId":"{conv}","duration":183.5,"disposition":"Booked","notes":"Customer rebooked for Friday; sent confirmation.","callType":"inbound"}}"#
        ),
    }
}

fn hot_path() {
    const N: usize = 200_000;
    for kind in [EventKind::CallAccepted, EventKind::CallEnded] {
        let payload = body(kind, 7);
        let started = Instant::now();
        let mut bytes = 0usize;
        for i in 0..N {
            let event = Event::decode(kind, payload.as_bytes()).expect("valid");
            let raw: Box<RawValue> = serde_json::from_str(&payload).expect("json");
            let doc = CrmEvent {
                id: "seq:1".into(),
                event,
                raw,
                published: time::OffsetDateTime::UNIX_EPOCH,
                sequence: i as u64,
            }
            .to_json();
            bytes += black_box(doc).len();
        }
        let per = started.elapsed() / N as u32;
        println!(
            "hot path {:<16} {:>6} ns/event  ({} B payload, {} B document)",
            kind.name(),
            per.as_nanos(),
            payload.len(),
            bytes / N
        );
    }
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

async fn end_to_end(events: usize) {
    let image = std::env::var("SOFTPHONE_NATS_IMAGE")
        .unwrap_or_else(|_| "softphone-bridge/nats:2.12.8".into());
    let (name, tag) = image.rsplit_once(':').expect("image:tag");
    let container = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(4222))
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_cmd(["--jetstream", "--store_dir", "/data"])
        .start()
        .await
        .expect("NATS starts (run deploy/nats-image.sh)");
    let url = format!(
        "nats://127.0.0.1:{}",
        container.get_host_port_ipv4(4222).await.unwrap()
    );
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let base = Settings::from_toml(&format!("[nats]\nurl = \"{url}\"\n")).unwrap();
    broker::provision(&js, &base).await.unwrap();

    let started = Instant::now();
    let mut acks = Vec::with_capacity(1000);
    for i in 0..events {
        let kind = if i % 2 == 0 {
            EventKind::CallAccepted
        } else {
            EventKind::CallEnded
        };
        acks.push(
            js.publish(kind.subject(), body(kind, i).into())
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
        "publish          {events} events in {:>7.1?} = {:>7.0} events/s (JetStream acked)",
        published,
        events as f64 / published.as_secs_f64()
    );

    for concurrency in [1, 8, 32, 128] {
        let consumer = format!("bench-c{concurrency}");
        let settings = Settings::from_toml(&format!(
            "[nats]\nurl = \"{url}\"\n[worker]\nconsumer = \"{consumer}\"\nconcurrency = {concurrency}\nmax_ack_pending = 10000\n"
        ))
        .unwrap();
        broker::provision(&js, &settings).await.unwrap();
        let crm: Arc<dyn softphone_bridge::crm::Crm> = Arc::new(LogCrm::new(Box::new(std::io::sink())));
        let connections = softphone_bridge::crm::Connections::new([("crm".to_owned(), crm)]);
        let app = Application::build_with_connections(settings, connections).await.unwrap();
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn(app.run_until(shutdown.clone()));
        let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
        loop {
            let info = stream.consumer_info(&consumer).await.unwrap();
            if info.ack_floor.consumer_sequence as usize >= events && info.num_ack_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let redelivered = stream
            .consumer_info(&consumer)
            .await
            .unwrap()
            .num_redelivered;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        println!(
            "consume c={concurrency:<4} {events} events in {:>7.1?} = {:>7.0} events/s; peak RSS {} MiB; {redelivered} redelivered",
            took,
            events as f64 / took.as_secs_f64(),
            peak_rss_kib() / 1024
        );
    }
}

fn main() {
    let events = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    hot_path();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(end_to_end(events));
}
