//! The NATS micro service on `softphone.api.command`: discoverable, and the
//! same validation, publication and answers as the HTTP route.

use futures::StreamExt;
use serde_json::{Value, json};
use softphone_bridge::contract::{API_COMMAND_SUBJECT, COMMANDS_STREAM};

use crate::helpers::*;

async fn app() -> HttpApp {
    let nats = start_nats().await;
    let settings = http_settings(&nats.url);
    spawn_http_app(nats, settings).await
}

/// Sends a request to the service; returns the error code header (if any) and the body.
async fn request(app: &HttpApp, body: Value) -> (Option<u16>, Value) {
    let reply = tokio::time::timeout(
        PATIENCE,
        app.client
            .request(API_COMMAND_SUBJECT, body.to_string().into()),
    )
    .await
    .expect("the service answers in time")
    .expect("the service answers");
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().parse().unwrap());
    (
        code,
        serde_json::from_slice(&reply.payload).expect("JSON reply"),
    )
}

fn command(softphone: &str, mut command: Value) -> Value {
    command["softphoneId"] = json!(softphone);
    command
}

#[tokio::test]
async fn the_service_is_discoverable() {
    let app = app().await;
    let reply = app
        .client
        .request("$SRV.INFO.softphone-bridge", "".into())
        .await
        .expect("INFO answers");
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(info["name"], "softphone-bridge");
    assert_eq!(
        info["endpoints"][0]["subject"], API_COMMAND_SUBJECT,
        "{info}"
    );
    assert_eq!(info["endpoints"][0]["name"], "command", "{info}");
    app.stop().await;
}

#[tokio::test]
async fn a_nats_request_publishes_the_command_like_http() {
    let app = app().await;
    app.load("agent-1", Some(PARTNER)).await;
    let mut softphone = app.client.subscribe("softphone.cmd.agent-1").await.unwrap();
    app.client.flush().await.unwrap();

    let mut keyed = command("agent-1", start_call());
    keyed["idempotencyKey"] = json!("nats-1");
    let (code, first) = request(&app, keyed.clone()).await;
    assert_eq!(code, None, "{first}");
    assert_eq!(first["stream"], "SOFTPHONE_COMMANDS");
    assert_eq!(first["duplicate"], false);
    let message = tokio::time::timeout(PATIENCE, softphone.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&message.payload).unwrap(),
        start_call()
    );

    let (_, again) = request(&app, keyed).await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], first["seq"]);
    // The HTTP route with the same key is the same command.
    let http = app
        .command("agent-1", &start_call(), TOKEN, Some("nats-1"))
        .await;
    assert_eq!(http.json::<Value>().await.unwrap()["seq"], first["seq"]);
    app.stop().await;
}

#[tokio::test]
async fn refusals_are_the_same_problems_as_over_http() {
    let app = app().await;
    app.load("agent-1", Some(PARTNER)).await;
    let before = stream_messages(&app.js, COMMANDS_STREAM).await;
    let mut bad_number = start_call();
    bad_number["payload"]["dialFrom"] = json!("0044");
    let cases = [
        ("a.b", start_call(), 400),
        ("*", start_call(), 400),
        ("agent-1", bad_number, 422),
        (
            "agent-1",
            json!({"type": "update_presence", "payload": {}}),
            422,
        ),
        ("nobody", start_call(), 404),
    ];
    for (softphone, body, status) in cases {
        let (code, nats) = request(&app, command(softphone, body.clone())).await;
        assert_eq!(code, Some(status), "{softphone}: {nats}");
        let http: Value = app
            .command(softphone, &body, TOKEN, None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(nats, http, "same answer over NATS and HTTP");
    }
    let (code, doc) = request(&app, json!({"type": "start_call"})).await;
    assert_eq!(code, Some(422));
    assert_eq!(doc["field"], "softphoneId");
    let reply = app
        .client
        .request(API_COMMAND_SUBJECT, "not json".into())
        .await
        .unwrap();
    assert_eq!(
        reply
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "400"
    );
    assert_eq!(
        stream_messages(&app.js, COMMANDS_STREAM).await,
        before,
        "nothing was published"
    );
    app.stop().await;
}
