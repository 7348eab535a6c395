//! Each of the eight contract events flows end to end to a webhook CRM.

use serde_json::Value;
use softphone_bridge::contract::EventKind;
use standardwebhooks::Webhook;

use crate::helpers::*;

fn eight_events(conv: &str) -> Vec<(EventKind, String)> {
    vec![
        (
            EventKind::Loaded,
            format!(r#"{{"softphoneId":"agent-1","partnerId":"{PARTNER}"}}"#),
        ),
        (
            EventKind::CallIncoming,
            call_body(conv, r#""callerANI":"+18883973342""#),
        ),
        (
            EventKind::CallAccepted,
            call_body(
                conv,
                r#""callerANI":"+18883973342","language":"fr_FR","ivrExitPath":"billing","recordingStatus":"ON","customField":{"k":[1,2]}"#,
            ),
        ),
        (
            EventKind::CallRejected,
            call_body(conv, r#""reason":"passive""#),
        ),
        (
            EventKind::CallEnded,
            call_body(
                conv,
                r#""duration":125.5,"disposition":"Booked","notes":"ok","callType":"inbound""#,
            ),
        ),
        (
            EventKind::CallNotesSubmitted,
            call_body(conv, r#""disposition":"Callback","notes":"late notes""#),
        ),
        (
            EventKind::CallOutboundInitiated,
            call_body(conv, r#""dialledTo":"+18449401117""#),
        ),
        (
            EventKind::AgentStatusChanged,
            format!(r#"{{"softphoneId":"{STATUS}","instanceId":"agent-1"}}"#),
        ),
    ]
}

/// Verifies a request with the Standard Webhooks reference library, which
/// also checks that `webhook-timestamp` is within five minutes of now.
pub(crate) fn verify_signature(request: &wiremock::Request) {
    let verifier = Webhook::from_bytes(WEBHOOK_SECRET.as_bytes().to_vec()).unwrap();
    verifier
        .verify(&request.body, &request.headers)
        .expect("the request verifies with the shared secret");
}

#[tokio::test]
async fn every_event_reaches_the_webhook_signed_and_verbatim() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let conv = conversation();

    for (kind, body) in eight_events(&conv) {
        let ack = app.publish(kind, &body, None).await;
        let request = crm.next_request().await;

        assert_eq!(request.method.as_str(), "POST");
        assert_eq!(request.url.path(), "/events");
        let h = |name: &str| {
            request
                .headers
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(h("X-Softphone-Event"), kind.name());
        let id = format!("seq:{}", ack.sequence);
        assert_eq!(h("Idempotency-Key"), id);
        assert_eq!(h("webhook-id"), id);
        verify_signature(&request);

        let doc: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(doc["event"], kind.name());
        assert_eq!(doc["id"], id);
        assert_eq!(doc["sequence"], ack.sequence);
        assert!(doc["publishedAt"].as_str().unwrap().ends_with('Z'));
        // The contract payload is forwarded verbatim, unknown fields included.
        let sent: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["data"], sent, "{kind}");
        match kind {
            EventKind::Loaded => {
                assert_eq!(doc["partnerId"], PARTNER);
                assert!(doc.get("conversationId").is_none());
            }
            EventKind::AgentStatusChanged => {
                assert!(doc.get("partnerId").is_none());
                assert!(doc.get("conversationId").is_none());
            }
            _ => {
                assert_eq!(doc["partnerId"], PARTNER);
                assert_eq!(doc["conversationId"], conv.as_str());
            }
        }
    }
    app.settled().await;
    let info = app.intake_info().await;
    assert_eq!(info.delivered.stream_sequence, 8);
    assert!(crm.drain().await.is_empty(), "each event was posted once");
    app.stop().await;
}

#[tokio::test]
async fn publisher_message_id_is_the_event_id_and_duplicates_are_dropped() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let body = call_body(&conversation(), r#""reason":"active""#);

    let first = app
        .publish(EventKind::CallRejected, &body, Some("evt-42"))
        .await;
    let again = app
        .publish(EventKind::CallRejected, &body, Some("evt-42"))
        .await;
    assert!(!first.duplicate);
    assert!(again.duplicate, "the stream drops a re-published event id");

    let request = crm.next_request().await;
    assert_eq!(request.headers.get("Idempotency-Key").unwrap(), "evt-42");
    let doc: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(doc["id"], "evt-42");
    app.settled().await;
    assert!(crm.drain().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn webhook_signatures_verify_with_every_secret_while_rotating() {
    // The new secret in the spec's `whsec_` form, the old one as plain text
    // (its UTF-8 bytes are the key).
    const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let crm = FakeCrm::start().await;
    let nats = start_nats().await;
    let section = webhook_crm(&crm.url()).replace(
        &format!("secret = \"{WEBHOOK_SECRET}\""),
        &format!("secret = [\"{NEW}\", \"{WEBHOOK_SECRET}\"]"),
    );
    let app = App::builder(nats).crm(&section).spawn().await;

    let ack = app
        .publish(
            EventKind::CallEnded,
            &call_body(&conversation(), r#""disposition":"Sale""#),
            None,
        )
        .await;
    let request = crm.next_request().await;

    let header = |name: &str| request.headers.get(name).unwrap().to_str().unwrap();
    assert_eq!(header("webhook-id"), format!("seq:{}", ack.sequence));
    let signatures: Vec<&str> = header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "one signature per secret");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    // A receiver that knows either secret accepts the request: the reference
    // library takes the `whsec_` string as is, and the plain one as bytes.
    Webhook::new(NEW)
        .unwrap()
        .verify(&request.body, &request.headers)
        .expect("verifies with the new secret");
    verify_signature(&request);
    // A receiver with some other secret does not.
    let stranger = Webhook::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    assert!(stranger.verify(&request.body, &request.headers).is_err());
}
