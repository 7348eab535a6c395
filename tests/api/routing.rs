//! Partners routed to their own CRM connections; one failing CRM does not
//! hold back another partner's events.

use std::time::Duration;

use softphone_bridge::contract::EventKind;
use wiremock::ResponseTemplate;

use crate::fake_salesforce::FakeSalesforce;
use crate::helpers::*;

#[tokio::test]
async fn a_hanging_crm_does_not_hold_back_another_partners_events() {
    // Partner A's Salesforce org hangs on every API call (answers after the
    // 6 s timeout); partner B's webhook CRM is healthy.
    let sf = FakeSalesforce::start().await;
    sf.org().api_delay = Some(Duration::from_secs(10));
    let webhook = FakeCrm::answering(ResponseTemplate::new(200)).await;
    let nats = start_nats().await;
    let extra = format!(
        r#"
[partners.{PARTNER_B}]
business_segment_id = "{SEGMENT}"
channel_origin_id = "{ORIGIN}"
crm = "b"

[crms.a]
{a}

[crms.b]
{b}

[routing]
max_in_flight = 2
busy_retry_after = "1s"
"#,
        a = sf
            .crm_toml("client_credentials", "[crms.a.lookup]\nenabled = false")
            .replace("timeout = \"2s\"", "timeout = \"6s\""),
        b = webhook_crm(&webhook.url()),
    );
    let settings = settings_with(&nats.url, "kind = \"log\"", Some("a"), &extra);
    let app = spawn_app(nats, settings).await;

    // A burst for A, more than the worker's 8 slots, then B's events.
    app.publish_calls(EventKind::CallNotesSubmitted, PARTNER, r#""notes":"a""#, 16)
        .await;
    let started = tokio::time::Instant::now();
    let b_conversations: Vec<String> = (0..4).map(|_| conversation()).collect();
    for conv in &b_conversations {
        app.publish(
            EventKind::CallNotesSubmitted,
            &partner_call_body(PARTNER_B, conv, r#""notes":"b""#),
            None,
        )
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let request = webhook.next_request().await;
        let doc: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(doc["partnerId"], PARTNER_B, "only B's events reach B's CRM");
        seen.push(doc["conversationId"].as_str().unwrap().to_owned());
    }
    let waited = started.elapsed();
    // Held behind A, B would wait for A's 6 s timeouts.
    assert!(
        waited < Duration::from_secs(4),
        "B's events waited {waited:?}"
    );
    seen.sort();
    let mut expected = b_conversations.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // A's org never saw more than max_in_flight calls at once: its calls
    // (token request aside) arrived at most two at a time.
    let api_calls = sf.api_calls().await;
    assert!(
        (1..=2).contains(&api_calls),
        "{api_calls} calls to A's hanging org so far"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_crm_opens_its_circuit_while_the_other_partner_flows() {
    // Partner A's org answers 503 to everything; partner B is on [crm].
    let sf = FakeSalesforce::start().await;
    sf.org()
        .script
        .extend((0..100).map(|_| ResponseTemplate::new(503)));
    let webhook = FakeCrm::answering(ResponseTemplate::new(200)).await;
    let nats = start_nats().await;
    let extra = format!(
        r#"
[partners.{PARTNER_B}]
business_segment_id = "{SEGMENT}"
channel_origin_id = "{ORIGIN}"

[crms.a]
{a}

[routing]
breaker_failures = 3
breaker_open_for = "30s"
"#,
        a = sf.crm_toml("client_credentials", ""),
    );
    let settings = settings_with(&nats.url, &webhook_crm(&webhook.url()), Some("a"), &extra);
    let app = spawn_app(nats, settings).await;

    app.publish_calls(EventKind::CallNotesSubmitted, PARTNER, r#""notes":"a""#, 10)
        .await;
    for _ in 0..3 {
        let conv = conversation();
        app.publish(
            EventKind::CallNotesSubmitted,
            &partner_call_body(PARTNER_B, &conv, r#""notes":"b""#),
            None,
        )
        .await;
        let request = webhook.next_request().await;
        let doc: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            doc["conversationId"],
            conv.as_str(),
            "B's event reached B's CRM"
        );
    }

    // A's events are dead-lettered once their deliveries run out; the open
    // circuit spared the org their redeliveries: at most one call per event
    // (those already under way when it opened), not one per delivery.
    let mut letters = app.dead_letters().await;
    for _ in 0..10 {
        let letter = letters.next().await;
        assert_eq!(
            header(&letter, softphone_bridge::contract::dlq_header::DELIVERIES),
            "3"
        );
    }
    app.settled().await;
    let api_calls = sf.api_calls().await;
    assert!(
        (3..=10).contains(&api_calls),
        "{api_calls} calls to the failing org (30 without a breaker)"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_partners_backlog_cannot_stall_the_pool() {
    // The pool may hold only 4 events unacknowledged per consumer. Partner A's
    // CRM fails every call and its events wait 30 s between deliveries, so A's
    // backlog alone would fill a shared budget and stall every partner for
    // 30 s. Each connection has its own lane (consumer), so B's events flow.
    let failing = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let healthy = FakeCrm::answering(ResponseTemplate::new(200)).await;
    let nats = start_nats().await;
    let extra = format!(
        r#"
[partners.{PARTNER_B}]
business_segment_id = "{SEGMENT}"
channel_origin_id = "{ORIGIN}"

[crms.a]
{a}
"#,
        a = webhook_crm(&failing.url()),
    );
    let mut settings = settings_with(&nats.url, &webhook_crm(&healthy.url()), Some("a"), &extra);
    settings.worker.max_ack_pending = 4;
    settings.worker.backoff = vec![Duration::from_secs(30)];
    let lanes = settings.lanes();
    assert_eq!(lanes.len(), 2);
    let app = spawn_app(nats, settings).await;

    app.publish_calls(EventKind::CallEnded, PARTNER, "", 12)
        .await;
    // A's lane is saturated: four of A's events wait for redelivery.
    eventually("A's lane to fill its ack budget", || async {
        let info = consumer_info(&app.js, &lanes[1].consumer).await;
        (info.num_ack_pending == 4).then_some(())
    })
    .await;
    for _ in 0..4 {
        let conv = conversation();
        app.publish(
            EventKind::CallEnded,
            &partner_call_body(PARTNER_B, &conv, ""),
            None,
        )
        .await;
        let doc: serde_json::Value =
            serde_json::from_slice(&healthy.next_request().await.body).unwrap();
        assert_eq!(doc["conversationId"], conv.as_str());
    }
    // The default lane skipped A's events (acked them as not its own) and
    // handled B's; it has nothing left.
    settled(&app.js, &lanes[0].consumer).await;
    assert!(healthy.drain().await.is_empty());
    let a_calls = failing.drain().await;
    assert!(
        a_calls.len() >= 4 && a_calls.len() <= 12,
        "{} calls to A",
        a_calls.len()
    );
}
