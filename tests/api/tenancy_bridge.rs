//! The bridge's side of tenancy (deploy/tenancy.md): who the server vouches
//! for, commands published to a partner's account only, the NATS service and
//! heartbeats on partners' subjects; on the real nats-server started with
//! the rendered configuration, the bridge's real callout, real clients over
//! TCP and WebSocket.

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use softphone_bridge::contract::tenant::{REQUEST_INFO_HEADER, vouched_publisher};
use softphone_bridge::contract::{EVENTS_STREAM, SoftphoneId};

use crate::helpers::*;

const A: &str = PARTNER;
const B: &str = PARTNER_B;

/// The next message of `messages`, in time.
async fn next(messages: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(PATIENCE, messages.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
}

#[tokio::test]
async fn the_server_vouches_for_the_publishers_login_and_a_client_cannot_forge_it() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let mut beats = tenancy
        .bridge
        .subscribe("softphone.p.*.heartbeat.*")
        .await
        .unwrap();
    tenancy.bridge_round_trip().await;
    // A's `agent-7`, over WebSocket, names its connection after another
    // softphone and sends the header itself, spelt as the server spells it
    // and otherwise.
    let a7 = async_nats::ConnectOptions::with_token(Tenancy::softphone_token("agent-7", A))
        .name("agent-8")
        .custom_inbox_prefix("_INBOX_agent-7")
        .connect(tenancy.ws_url.as_str())
        .await
        .expect("A's softphone logs in over WebSocket");
    let forged = format!(r#"{{"acc":"{B}","user":"agent-8"}}"#);
    for name in [
        REQUEST_INFO_HEADER,
        "nats-request-info",
        "NATS-REQUEST-INFO",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(name, forged.as_str());
        headers.append(name, forged.as_str());
        a7.publish_with_headers("softphone.heartbeat.agent-7", headers, "".into())
            .await
            .unwrap();
    }
    a7.publish("softphone.heartbeat.agent-7", "".into())
        .await
        .unwrap();
    a7.flush().await.unwrap();
    for _ in 0..4 {
        let beat = next(&mut beats).await;
        assert_eq!(
            beat.subject.as_str(),
            format!("softphone.p.{A}.heartbeat.agent-7")
        );
        let headers = beat.headers.as_ref().expect("the server's header");
        let vouched = vouched_publisher(Some(headers)).unwrap_or_else(|| {
            panic!("the server vouches for the publisher: {headers:?}");
        });
        assert_eq!(vouched.user, "agent-7", "{headers:?}");
        assert_eq!(vouched.partner().as_ref().map(|p| p.as_str()), Some(A));
        // Nothing secret crosses: neither the login token nor a JWT.
        let info = headers.get(REQUEST_INFO_HEADER).unwrap().as_str();
        assert!(!info.contains("eyJ"), "{info}");
    }
    // A `load` request carries it too, over TCP.
    let mut loads = tenancy
        .bridge
        .subscribe("softphone.p.*.load")
        .await
        .unwrap();
    tenancy.bridge_round_trip().await;
    let b5 = Login::softphone(&tenancy.url, "agent-5", B).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(REQUEST_INFO_HEADER, forged.as_str());
    let request = tokio::spawn({
        let client = b5.client.clone();
        async move {
            client
                .request_with_headers("softphone.load", headers, "{}".into())
                .await
        }
    });
    let asked = next(&mut loads).await;
    let vouched = vouched_publisher(asked.headers.as_ref()).expect("vouched");
    assert_eq!(
        (vouched.account.as_str(), vouched.user.as_str()),
        (B, "agent-5")
    );
    tenancy
        .bridge
        .publish(asked.reply.unwrap(), "ok".into())
        .await
        .unwrap();
    request.await.unwrap().unwrap();
    // An event's header never reaches the stream: the intake cannot read it.
    a7.publish(
        "softphone.call.accepted",
        call_body(&conversation(), "").into(),
    )
    .await
    .unwrap();
    let stream = jetstream::new(tenancy.bridge.clone())
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap();
    let stored = eventually("the event to be stored", || async {
        stream
            .get_last_raw_message_by_subject(&format!("softphone.p.{A}.call.accepted"))
            .await
            .ok()
    })
    .await;
    assert!(
        stored.headers.get(REQUEST_INFO_HEADER).is_none(),
        "{:?}",
        stored.headers
    );
}

/// Keeps the compiler quiet until the tests below use them.
#[allow(dead_code)]
fn unused(_: Value, _: SoftphoneId) {
    let _ = json!({});
}
