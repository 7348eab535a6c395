//! Each fate a message can meet: ack, held while its connection is in
//! trouble, retried for its own failure, dead-lettered with the reason.

use std::time::{Duration, Instant};

use serde_json::Value;
use softphone_bridge::contract::{EventKind, dlq_header};
use wiremock::ResponseTemplate;

use crate::helpers::*;

#[tokio::test]
async fn a_connection_blip_holds_the_event_and_spends_no_delivery() {
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(503)]);
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    app.publish(
        EventKind::CallEnded,
        &call_body(&conversation(), r#""duration":3"#),
        None,
    )
    .await;

    let first = crm.next_request().await;
    let failed_at = Instant::now();
    let second = crm.next_request().await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(200),
        "tried again after the 1st backoff step"
    );
    assert_eq!(
        idempotency_key(&first),
        idempotency_key(&second),
        "the event id survives redelivery"
    );
    assert_eq!(first.body, second.body, "the same document is sent again");
    let info = app.settled().await;
    assert_eq!(info.ack_floor, 1);
    assert_eq!(info.num_redelivered, 0, "held, not redelivered");
    assert!(crm.drain().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn retry_after_from_the_crm_is_honoured() {
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(429).insert_header("Retry-After", "1")]);
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    app.publish(
        EventKind::CallRejected,
        &call_body(&conversation(), r#""reason":"active""#),
        None,
    )
    .await;

    crm.next_request().await;
    let limited_at = Instant::now();
    crm.next_request().await;
    assert!(
        limited_at.elapsed() >= Duration::from_secs(1),
        "waited as the CRM asked"
    );
    app.settled().await;
    app.stop().await;
}

#[tokio::test]
async fn timeouts_hold_the_event_and_it_is_tried_again() {
    let crm = FakeCrm::start().await;
    // The webhook timeout in tests is 2s.
    crm.script([ResponseTemplate::new(200).set_delay(Duration::from_secs(4))]);
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    app.publish(
        EventKind::CallIncoming,
        &call_body(&conversation(), ""),
        None,
    )
    .await;

    let first = crm.next_request().await;
    let second = crm.next_request().await;
    assert_eq!(idempotency_key(&first), idempotency_key(&second));
    let info = app.settled().await;
    assert_eq!(info.num_redelivered, 0);
    app.stop().await;
}

#[tokio::test]
async fn invalid_payloads_are_dead_lettered_verbatim_with_the_reason() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let mut dlq = app.dead_letters().await;
    let cases = [
        (
            EventKind::CallAccepted,
            "{not json".to_owned(),
            "malformed JSON",
        ),
        (
            EventKind::CallEnded,
            call_body(&conversation(), r#""callType":"sideways""#),
            "contract violation at `callType`",
        ),
        (
            EventKind::CallIncoming,
            format!(r#"{{"partnerId":"{PARTNER}"}}"#),
            "missing field `conversationId`",
        ),
        (
            EventKind::Loaded,
            r#"{"softphoneId":"agent.*"}"#.to_owned(),
            "softphoneId",
        ),
    ];
    for (kind, body, why) in cases {
        let ack = app.publish(kind, &body, None).await;
        let dead = dlq.next().await;
        assert_eq!(
            dead.subject.as_str(),
            format!("softphone.dlq.{}", kind.name())
        );
        assert_eq!(
            dead.payload.as_ref(),
            body.as_bytes(),
            "original body, verbatim"
        );
        let reason = header(&dead, dlq_header::REASON);
        assert!(reason.starts_with("invalid payload"), "{reason}");
        assert!(reason.contains(why), "{reason} should say {why}");
        assert_eq!(header(&dead, dlq_header::SUBJECT), kind.subject());
        assert_eq!(
            header(&dead, dlq_header::SEQUENCE),
            ack.sequence.to_string()
        );
        assert_eq!(header(&dead, dlq_header::DELIVERIES), "1");
        assert_eq!(
            header(&dead, dlq_header::EVENT_ID),
            format!("seq:{}", ack.sequence)
        );
    }
    app.settled().await;
    assert!(
        crm.drain().await.is_empty(),
        "the CRM never saw an invalid event"
    );
    app.stop().await;
}

#[tokio::test]
async fn permanent_crm_refusals_are_dead_lettered_with_the_crm_error() {
    let crm = FakeCrm::answering(
        ResponseTemplate::new(422).set_body_string(r#"{"error":"unknown partner"}"#),
    )
    .await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let mut dlq = app.dead_letters().await;
    let body = call_body(&conversation(), r#""disposition":"x""#);
    app.publish(EventKind::CallNotesSubmitted, &body, Some("notes-1"))
        .await;

    let dead = dlq.next().await;
    assert_eq!(
        header(&dead, dlq_header::REASON),
        "CRM answered 422 Unprocessable Entity"
    );
    assert_eq!(
        header(&dead, dlq_header::DETAIL),
        r#"{"error":"unknown partner"}"#
    );
    assert_eq!(header(&dead, dlq_header::EVENT_ID), "notes-1");
    assert_eq!(dead.payload.as_ref(), body.as_bytes());
    crm.next_request().await;
    app.settled().await;
    assert!(
        crm.drain().await.is_empty(),
        "a permanent refusal is not retried"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_failing_where_others_pass_is_dead_lettered_after_max_deliveries() {
    // The CRM answers 503 for one call only, while other calls go through:
    // the connection is healthy, so the failure is the event's own and
    // spends its deliveries.
    let crm = FakeCrm::start().await;
    let bad = conversation();
    crm.refuse(&bad, ResponseTemplate::new(503));
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let mut dlq = app.dead_letters().await;
    app.publish(EventKind::CallAccepted, &call_body(&bad, ""), None)
        .await;
    let others = app.steady_traffic();

    let dead = dlq.next().await;
    others.abort();
    let reason = header(&dead, dlq_header::REASON);
    assert!(reason.contains("gave up after 3 deliveries"), "{reason}");
    assert!(reason.contains("503"), "{reason}");
    assert_eq!(header(&dead, dlq_header::DELIVERIES), "3");
    assert!(String::from_utf8_lossy(&dead.payload).contains(&bad));
    app.settled().await;
    assert_eq!(
        stream_messages(&app.js, softphone_bridge::contract::DLQ_STREAM).await,
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_crm_holds_its_events_until_it_listens() {
    // A port that was just free: nothing listens there, yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&webhook_crm(&format!("http://{closed}/events")))
        .spawn()
        .await;
    app.publish(
        EventKind::CallEnded,
        &call_body(&conversation(), ""),
        Some("patient"),
    )
    .await;
    lane_paused(true).await;

    let crm = FakeCrm::on(std::net::TcpListener::bind(closed).unwrap()).await;
    assert_eq!(idempotency_key(&crm.next_request().await), "patient");
    let info = app.settled().await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(
        stream_messages(&app.js, softphone_bridge::contract::DLQ_STREAM).await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn webhook_documents_carry_the_ids_people_search_by() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let conv = conversation();
    app.publish(
        EventKind::CallOutboundInitiated,
        &call_body(&conv, r#""dialledTo":"+18449401117""#),
        Some("out-1"),
    )
    .await;
    let doc: Value = serde_json::from_slice(&crm.next_request().await.body).unwrap();
    assert_eq!(doc["conversationId"], conv.as_str());
    assert_eq!(doc["partnerId"], PARTNER);
    assert_eq!(doc["id"], "out-1");
    app.settled().await;
    app.stop().await;
}
