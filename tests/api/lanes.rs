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

    // A's org never saw more than its lane's concurrency (8 here) at once.
    let api_calls = sf.api_calls().await;
    assert!(
        (1..=8).contains(&api_calls),
        "{api_calls} calls to A's hanging org so far"
    );
    app.stop().await;
}

