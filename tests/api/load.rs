//! `load`: callbacks on `softphone.cmd.<id>`, and as a request's reply.

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use softphone_bridge::contract::{COMMANDS_STREAM, EventKind, LOAD_REQUEST_SUBJECT};
use wiremock::ResponseTemplate;

use crate::helpers::*;

async fn next_command(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a callback arrived in time")
        .expect("subscription open")
}

fn msg_id(message: &async_nats::Message) -> String {
    message
        .headers
        .as_ref()
        .unwrap()
        .get(async_nats::header::NATS_MESSAGE_ID)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn loaded_event_sends_the_partners_dispositions_and_config() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let mut commands = app.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    app.client.flush().await.unwrap();

    app.publish(
        EventKind::Loaded,
        &format!(r#"{{"softphoneId":"agent-7","partnerId":"{PARTNER}"}}"#),
        Some("load-1"),
    )
    .await;

    let disposition = next_command(&mut commands).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&disposition.payload).unwrap(),
        json!({"type": "disposition", "payload": ["Booked", "Cancelled", "Callback"]})
    );
    assert_eq!(msg_id(&disposition), "load-1:disposition");
    let config = next_command(&mut commands).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&config.payload).unwrap(),
        json!({"type": "partner_config", "payload": {
            "partnerId": PARTNER, "businessSegmentId": SEGMENT, "channelOriginId": ORIGIN}})
    );
    assert_eq!(msg_id(&config), "load-1:partner_config");
    // The CRM hears of the load too.
    assert_eq!(
        crm.next_request()
            .await
            .headers
            .get("X-Softphone-Event")
            .unwrap(),
        "loaded"
    );
    app.settled().await;
    app.stop().await;
}

#[tokio::test]
async fn unknown_partners_get_the_default_list_and_no_partner_config() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let mut commands = app.client.subscribe("softphone.cmd.>").await.unwrap();
    app.client.flush().await.unwrap();

    app.publish(
        EventKind::Loaded,
        r#"{"softphoneId":"agent-8","partnerId":"00000000-0000-4000-8000-000000000000"}"#,
        None,
    )
    .await;
    let disposition = next_command(&mut commands).await;
    assert_eq!(disposition.subject.as_str(), "softphone.cmd.agent-8");
    assert_eq!(
        serde_json::from_slice::<Value>(&disposition.payload).unwrap(),
        json!({"type": "disposition", "payload": ["Sale", "No sale"]})
    );
    crm.next_request().await;
    app.settled().await;
    assert_eq!(
        stream_messages(&app.js, COMMANDS_STREAM).await,
        1,
        "only the disposition callback was sent"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_load_does_not_send_its_callbacks_twice() {
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(500)]);
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    app.publish(
        EventKind::Loaded,
        &format!(r#"{{"softphoneId":"agent-9","partnerId":"{PARTNER}"}}"#),
        None,
    )
    .await;

    // Callbacks go out, the CRM fails, the event is redelivered and the
    // callbacks are published again: the commands stream keeps one copy.
    crm.next_request().await;
    crm.next_request().await;
    app.settled().await;
    assert_eq!(
        stream_messages(&app.js, COMMANDS_STREAM).await,
        2,
        "disposition and partner_config, once each"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_load_request_gets_both_callbacks_in_one_reply() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    // The responder subscribes once the app is up; retry until it answers.
    let body = format!(r#"{{"softphoneId":"agent-1","partnerId":"{PARTNER}"}}"#);
    let reply = request_until_answered(&app.client, body).await;
    assert_eq!(
        reply,
        json!({"softphoneId": "agent-1", "callbacks": [
            {"type": "disposition", "payload": ["Booked", "Cancelled", "Callback"]},
            {"type": "partner_config", "payload": {
                "partnerId": PARTNER, "businessSegmentId": SEGMENT, "channelOriginId": ORIGIN}}
        ]})
    );

    // A refusal is a service error (counted by `nats micro stats`) with its problem.
    let refused = request_until_answered(&app.client, r#"{"softphoneId":"a b"}"#.into()).await;
    assert_eq!(refused["status"], 400, "{refused}");
    let error = refused["detail"].as_str().unwrap();
    assert!(
        error.contains("softphoneId") && error.contains("one NATS subject token"),
        "{error}"
    );

    // No stream captures the request subject (else the request would be
    // answered by a publish ack), and the CRM is not involved.
    let js = jetstream::new(app.client.clone());
    assert!(js.stream_by_subject(LOAD_REQUEST_SUBJECT).await.is_err());
    assert!(crm.drain().await.is_empty());
    app.stop().await;
}

async fn request_until_answered(client: &async_nats::Client, body: String) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match client
            .request(LOAD_REQUEST_SUBJECT, body.clone().into())
            .await
        {
            Ok(reply) => return service_reply(&reply).1,
            Err(e) if tokio::time::Instant::now() < deadline => {
                // No responders yet: the app is still starting.
                assert_eq!(
                    e.kind(),
                    async_nats::client::RequestErrorKind::NoResponders,
                    "{e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no load responder: {e}"),
        }
    }
}
