//! The floors beneath the pipeline: the hot path in-process, a plain
//! JetStream consumer, and plain POSTs to the in-process CRM.

use super::*;

pub(super) fn hot_path() -> Vec<(EventKind, Duration)> {
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

/// A plain durable pull consumer on the events, acking each one.
pub(super) async fn raw_consume(webhook: &Webhook, events: usize) -> Measured {
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
pub(super) async fn raw_post(webhook: &Webhook, requests: usize) -> Measured {
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
