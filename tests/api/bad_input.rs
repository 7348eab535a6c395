//! Bad input costs only itself: an id, a copy or a header that NATS or a CRM
//! cannot carry is that event's own failure, dead-lettered at once while
//! good events flow past it; a paused lane sends nothing twice. Each test
//! runs the real binary against real NATS and a CRM over real HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use softphone_bridge::contract::{DLQ_STREAM, EventKind, MAX_EVENT_ID, dlq_header, replay_header};

use crate::helpers::*;

/// Publishes `body` on `kind`'s subject with `headers`, waiting for the
/// stream's ack.
async fn publish_with(js: &jetstream::Context, kind: EventKind, body: Vec<u8>, headers: HeaderMap) {
    js.send_publish(
        kind.subject(),
        PublishMessage::build()
            .payload(body.into())
            .headers(headers),
    )
    .await
    .expect("published")
    .await
    .expect("stored by SOFTPHONE_EVENTS");
}

fn with_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    headers
}

/// Publishes `count` good events, each of its own conversation, with ids
/// `<prefix>-<n>`; returns the ids.
async fn good_events(js: &jetstream::Context, prefix: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let body = call_body(&conversation(), r#""notes":"good""#);
        publish(js, EventKind::CallNotesSubmitted, &body, Some(&id)).await;
        ids.push(id);
    }
    ids
}

/// Takes requests from `crm` until every id in `ids` has arrived; fails on
/// any other or any repeat.
async fn each_once(crm: &FakeCrm, ids: &[String]) {
    let mut seen = BTreeMap::<String, usize>::new();
    while seen.len() < ids.len() {
        let key = idempotency_key(&crm.next_request().await);
        assert!(
            ids.contains(&key),
            "only good events reach the CRM: {key:?}"
        );
        *seen.entry(key).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "none twice: {seen:?}");
}

#[tokio::test]
async fn an_oversized_or_malformed_event_id_is_dead_lettered_at_once_and_holds_back_no_one() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let bridge = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));
    replicas_pulling(&js, &defaults(), 1).await;

    // 60 000 characters: the lane copy, carrying the id twice, would pass
    // NATS's 64 KiB header limit. Then control characters, which no HTTP
    // header may carry, and one byte over the limit.
    let oversized = "x".repeat(60_000);
    let bad = [
        oversized.as_str(),
        "evt\u{1}1",
        "evt\u{7f}2",
        &"y".repeat(MAX_EVENT_ID + 1),
    ];
    let mut sequences = Vec::new();
    for id in bad {
        let body = call_body(&conversation(), r#""notes":"bad""#);
        let ack = js
            .send_publish(
                EventKind::CallNotesSubmitted.subject(),
                PublishMessage::build()
                    .payload(body.into())
                    .headers(with_id(id)),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        sequences.push(ack.sequence);
    }
    // Good traffic behind them, and an id at the limit.
    let mut ids = good_events(&js, "good", 40).await;
    let longest = "z".repeat(MAX_EVENT_ID);
    let body = call_body(&conversation(), "");
    publish(&js, EventKind::CallNotesSubmitted, &body, Some(&longest)).await;
    ids.push(longest);
    each_once(&crm, &ids).await;

    // Each bad one dead-lettered once, at once, under its stream sequence,
    // its body kept, the refused id shown escaped and short.
    let mut letters = DeadLetters::open(&js).await;
    for (n, sequence) in sequences.iter().enumerate() {
        let letter = letters.next().await;
        let reason = header(&letter, dlq_header::REASON);
        assert!(
            reason.starts_with("invalid event id: Nats-Msg-Id"),
            "{reason}"
        );
        assert_eq!(
            header(&letter, dlq_header::EVENT_ID),
            format!("seq:{sequence}")
        );
        assert_eq!(
            header(&letter, dlq_header::DELIVERIES),
            "1",
            "dead-lettered at once"
        );
        assert!(
            reason.len() < 400,
            "the refused id is shown short: {}",
            reason.len()
        );
        let body: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        assert_eq!(body["notes"], "bad", "the body is kept ({n})");
    }
    settled(&js, &defaults()).await;
    assert_eq!(stream_messages(&js, DLQ_STREAM).await, bad.len() as u64);
    assert!(crm.drain().await.is_empty(), "nothing more reached the CRM");
    bridge.terminate();
    let (status, _) = bridge.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_copy_nats_refuses_for_its_size_is_dead_lettered_without_its_body_and_holds_back_no_one()
{
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let bridge = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));
    replicas_pulling(&js, &defaults(), 1).await;

    // An event as large as the server takes: stored, but its lane copy
    // (with the intake's headers) and its dead letter are over the limit.
    let max_payload = js.client().server_info().max_payload;
    let conversation = conversation();
    let event = |pad: usize| {
        let extra = format!(r#""notes":"big","pad":"{}""#, "p".repeat(pad));
        call_body(&conversation, &extra)
    };
    // 64 bytes left for the original's headers (its Nats-Msg-Id).
    let body = event(max_payload - event(0).len() - 64);
    serde_json::from_str::<serde_json::Value>(&body).expect("a valid event");
    publish_with(
        &js,
        EventKind::CallNotesSubmitted,
        body.into_bytes(),
        with_id("big-1"),
    )
    .await;
    let ids = good_events(&js, "after-big", 20).await;
    each_once(&crm, &ids).await;

    let letter = DeadLetters::open(&js).await.next().await;
    let reason = header(&letter, dlq_header::REASON);
    assert!(
        reason.starts_with("NATS refused the event's copy"),
        "{reason}"
    );
    assert_eq!(header(&letter, dlq_header::EVENT_ID), "big-1");
    let omitted = header(&letter, dlq_header::BODY_OMITTED);
    assert!(omitted.contains("bytes refused by NATS"), "{omitted}");
    assert!(letter.payload.is_empty(), "stored without its body");
    settled(&js, &defaults()).await;
    assert_eq!(stream_messages(&js, DLQ_STREAM).await, 1);
    bridge.terminate();
    let (status, _) = bridge.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn replay_headers_on_an_ordinary_publish_are_ignored() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let bridge = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));
    replicas_pulling(&js, &defaults(), 1).await;

    // Anyone may publish on an event subject: a forged original id must not
    // become the Idempotency-Key a CRM sees.
    let mut headers = with_id("mine-1");
    headers.insert(replay_header::EVENT_ID, "victims-event");
    headers.insert(replay_header::PUBLISHED, "2020-01-01T00:00:00Z");
    let body = call_body(&conversation(), "");
    publish_with(&js, EventKind::CallAccepted, body.into_bytes(), headers).await;
    let request = crm.next_request().await;
    assert_eq!(idempotency_key(&request), "mine-1");
    let doc: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_ne!(
        doc["publishedAt"], "2020-01-01T00:00:00Z",
        "the forged publish time is ignored too"
    );
    bridge.terminate();
    let (status, _) = bridge.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_lane_paused_longer_than_the_ack_wait_sends_nothing_twice_and_spends_no_delivery() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    // The CRM is down (nothing listens on its port) for three ack waits.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let url = format!("http://{address}/events");
    let config = bridge_config(&url, "").replace("ack_wait = \"5s\"", "ack_wait = \"2s\"");
    let bridge = Bridge::start(&nats.url, &config);
    replicas_pulling(&js, &defaults(), 1).await;

    // More events than the lane's room (4) and a pull's worth behind it.
    let ids = good_events(&js, "held", 24).await;
    bridge.logged("paused").await;
    // The outage itself: three times the ack wait, during which the lane
    // holds what it pulled.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let crm = FakeCrm::on(std::net::TcpListener::bind(address).unwrap()).await;
    each_once(&crm, &ids).await;
    let info = settled(&js, &defaults()).await;
    assert!(crm.drain().await.is_empty(), "nothing sent twice on resume");
    assert_eq!(info.num_redelivered, 0, "holding spent no delivery");
    assert_eq!(stream_messages(&js, DLQ_STREAM).await, 0);
    bridge.terminate();
    let (status, _) = bridge.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_dead_letter_nats_cannot_store_yet_is_held_and_never_routed_instead() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let bridge = Bridge::start(&nats.url, &bridge_config(&crm.url(), ""));
    replicas_pulling(&js, &defaults(), 1).await;

    // No dead-letter stream for a while: NATS's trouble, not the event's.
    js.delete_stream(DLQ_STREAM).await.unwrap();
    let body = call_body(&conversation(), r#""notes":"bad""#);
    publish(
        &js,
        EventKind::CallNotesSubmitted,
        &body,
        Some("bad\u{1}id"),
    )
    .await;
    let ids = good_events(&js, "meanwhile", 10).await;
    each_once(&crm, &ids).await;
    bridge
        .logged("Cannot dead-letter the event; holding it.")
        .await;

    softphone_bridge::broker::provision::apply(&js, &defaults())
        .await
        .unwrap();
    let letter = DeadLetters::open(&js).await.next().await;
    assert!(header(&letter, dlq_header::REASON).starts_with("invalid event id"));
    settled(&js, &defaults()).await;
    assert!(
        crm.drain().await.is_empty(),
        "the refused event never reached the CRM"
    );
    bridge.terminate();
    let (status, _) = bridge.wait().await;
    assert!(status.success());
}
