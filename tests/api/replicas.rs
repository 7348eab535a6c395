//! The real binary: replicas sharing the consumer, and graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use softphone_bridge::contract::EventKind;
use wiremock::ResponseTemplate;

use crate::helpers::*;

#[tokio::test]
async fn two_replicas_share_the_work_and_handle_each_event_once() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm =
        FakeCrm::answering(ResponseTemplate::new(204).set_delay(Duration::from_millis(30))).await;
    let base = crm.server.uri();
    // Sixteen partitions: the chance that one replica owns every partition
    // of the lane is 2 in 65 536.
    let mut settings = defaults();
    settings.lanes.partitions = 16;
    let config = |path: &str| {
        bridge_config(&format!("{base}/{path}"), "").replace("partitions = 2", "partitions = 16")
    };
    let a = Bridge::start(&nats.url, &config("a"));
    let b = Bridge::start(&nats.url, &config("b"));
    replicas_pulling(&js, &settings, 2).await;

    const EVENTS: usize = 120;
    for i in 0..EVENTS {
        let body = call_body(&conversation(), r#""duration":60,"callType":"inbound""#);
        publish(&js, EventKind::CallEnded, &body, Some(&format!("evt-{i}"))).await;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_replica: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..EVENTS {
        let request = crm.next_request().await;
        *seen.entry(idempotency_key(&request)).or_default() += 1;
        *by_replica.entry(request.url.path().to_owned()).or_default() += 1;
    }
    settled(&js, &settings).await;
    assert_eq!(seen.len(), EVENTS, "every event was handled");
    assert!(seen.values().all(|n| *n == 1), "no event was handled twice");
    assert!(crm.drain().await.is_empty());
    assert_eq!(
        by_replica.len(),
        2,
        "both replicas took work: {by_replica:?}"
    );

    a.terminate();
    b.terminate();
    for bridge in [a, b] {
        let (status, stderr) = bridge.wait().await;
        assert!(status.success(), "clean exit: {stderr}");
        assert!(stderr.contains("NATS connection drained"), "{stderr}");
        assert!(
            !stderr.contains(WEBHOOK_SECRET),
            "the secret never reaches the logs"
        );
    }
}

#[tokio::test]
async fn replicas_killed_mid_burst_lose_nothing_and_dead_letter_nothing() {
    // Three replicas share a burst; two are killed (SIGKILL) while events are
    // between the intake and the CRM, and come back. Every event reaches the
    // CRM; a repeat carries the same idempotency key.
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm =
        FakeCrm::answering(ResponseTemplate::new(204).set_delay(Duration::from_millis(20))).await;
    let config = bridge_config(&crm.url(), "").replace("concurrency = 4", "concurrency = 16");
    let mut replicas: Vec<Bridge> = (0..3).map(|_| Bridge::start(&nats.url, &config)).collect();
    replicas_pulling(&js, &defaults(), 3).await;

    const EVENTS: usize = 1500;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let body = call_body(&conversation(), r#""duration":60,"callType":"inbound""#);
                publish(
                    &js,
                    EventKind::CallEnded,
                    &body,
                    Some(&format!("burst-{i}")),
                )
                .await;
            }
        })
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut requests = 0;
    for round in 0..2 {
        while requests < 300 * (round + 1) {
            *seen
                .entry(idempotency_key(&crm.next_request().await))
                .or_default() += 1;
            requests += 1;
        }
        replicas.remove(0).kill().await;
        replicas.push(Bridge::start(&nats.url, &config));
    }
    publisher.await.unwrap();

    while seen.len() < EVENTS {
        *seen
            .entry(idempotency_key(&crm.next_request().await))
            .or_default() += 1;
    }
    settled(&js, &defaults()).await;
    for request in crm.drain().await {
        *seen.entry(idempotency_key(&request)).or_default() += 1;
    }
    assert_eq!(seen.len(), EVENTS, "every event reached the CRM");
    assert!(
        seen.keys().all(|key| key.starts_with("burst-")),
        "repeats carry the event's own key"
    );
    assert_eq!(
        stream_messages(&js, softphone_bridge::contract::DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    let repeated = seen.values().filter(|n| **n > 1).count();
    eprintln!("{repeated} of {EVENTS} events reached the CRM more than once (in flight at a kill)");
    for bridge in replicas {
        bridge.terminate();
        let (status, stderr) = bridge.wait().await;
        assert!(status.success(), "{stderr}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_work_finish_then_exits_cleanly() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(200).set_delay(Duration::from_millis(1500))]);
    let bridge = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));

    publish(
        &js,
        EventKind::CallEnded,
        &call_body(&conversation(), ""),
        Some("slow-1"),
    )
    .await;
    crm.next_request().await;
    bridge.terminate();

    let (status, stderr) = bridge.wait().await;
    assert!(status.success(), "exit 0 after finishing: {stderr}");
    let info = lane_info(&js, &defaults(), "crm").await;
    assert_eq!(info.ack_floor, 1, "the in-flight event was acked");
    assert_eq!(info.num_ack_pending, 0);
    assert!(crm.drain().await.is_empty());
}

#[tokio::test]
async fn work_still_in_flight_at_the_deadline_is_nakd_for_another_replica() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(200).set_delay(Duration::from_secs(8))]);
    let config = bridge_config(&crm.url(), "").replace(
        "shutdown_deadline = \"10s\"",
        "shutdown_deadline = \"300ms\"",
    );
    let bridge = Bridge::start(&nats.url, &config);

    publish(
        &js,
        EventKind::CallEnded,
        &call_body(&conversation(), ""),
        Some("stuck-1"),
    )
    .await;
    assert_eq!(idempotency_key(&crm.next_request().await), "stuck-1");
    bridge.terminate();
    let (status, stderr) = bridge.wait().await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Shutdown deadline passed"), "{stderr}");

    // The nak makes it available at once: a new replica handles it.
    let successor = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));
    assert_eq!(
        idempotency_key(&crm.next_request().await),
        "stuck-1",
        "redelivered with the same id"
    );
    settled(&js, &defaults()).await;
    successor.terminate();
    let (status, _) = successor.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_replica_asked_to_stop_while_nats_is_unreachable_exits_promptly() {
    // Nothing listens where NATS should be: the replica keeps trying to
    // connect, and SIGTERM must still end it (an orchestrator waits only so long).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("nats://{}", listener.local_addr().unwrap());
    drop(listener);
    let bridge = Bridge::start(&nowhere, &bridge_config("http://127.0.0.1:9/events", ""));
    // Signals are handled from before the first connection attempt.
    bridge.logged("Not ready; retrying.").await;
    bridge.terminate();
    let (status, stderr) = bridge.wait().await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Shutdown requested"), "{stderr}");
}

#[tokio::test]
async fn an_intake_whose_copies_are_never_acknowledged_renews_its_connection() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let bridge = Bridge::start(
        &nats.url,
        &bridge_config(&crm.url(), "")
            .replace("[worker]\n", "[worker]\nintake_renew_after = \"2s\"\n"),
    );
    replicas_pulling(&js, &defaults(), 1).await;
    let body = || call_body(&conversation(), "");
    publish(&js, EventKind::CallIncoming, &body(), Some("before")).await;
    assert_eq!(idempotency_key(&crm.next_request().await), "before");

    // NATS stops answering the intake's copies: the lanes stream is gone and
    // a plain subscriber listens on its subjects, so a copy gets neither an
    // ack nor a "no responders".
    js.delete_stream(softphone_bridge::contract::LANES_STREAM)
        .await
        .unwrap();
    let listener = js.client().subscribe("softphone.lane.>").await.unwrap();
    publish(&js, EventKind::CallEnded, &body(), Some("during")).await;
    bridge.logged("renewing the intake's connection").await;

    // NATS stores copies again: the event held all along is handled once.
    drop(listener);
    softphone_bridge::broker::provision::apply(&js, &defaults())
        .await
        .unwrap();
    assert_eq!(idempotency_key(&crm.next_request().await), "during");
    settled(&js, &defaults()).await;
    assert!(crm.drain().await.is_empty(), "handled once");
    bridge.terminate();
    let (status, stderr) = bridge.wait().await;
    assert!(status.success(), "clean exit: {stderr}");
}
