//! The NATS micro service on `softphone.api.command`: discoverable, and the
//! same validation, publication and answers as the HTTP route.

use serde_json::{Value, json};
use softphone_bridge::contract::{API_COMMAND_SUBJECT, COMMANDS_STREAM, LOAD_REQUEST_SUBJECT};

use crate::helpers::*;

async fn app() -> App {
    let nats = start_nats().await;
    App::builder(nats).http().spawn().await
}

/// Sends a request to the service; returns the error code header (if any) and the body.
async fn request(app: &App, body: Value) -> (Option<u16>, Value) {
    let reply = tokio::time::timeout(
        PATIENCE,
        app.client
            .request(API_COMMAND_SUBJECT, body.to_string().into()),
    )
    .await
    .expect("the service answers in time")
    .expect("the service answers");
    service_reply(&reply)
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
    let mut endpoints: Vec<(&str, &str)> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("command", API_COMMAND_SUBJECT),
            ("load", LOAD_REQUEST_SUBJECT)
        ],
        "{info}"
    );
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
    let (_, received, expires) = next_command_body(&mut softphone).await;
    assert_eq!(expires, first["expiresAt"]);
    assert_eq!(received, start_call());

    let (code, again) = request(&app, keyed).await;
    assert_eq!(code, None, "{again}");
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
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.commands.offline_after = std::time::Duration::from_secs(1))
        .spawn()
        .await;
    app.load("agent-off", Some(PARTNER)).await;
    eventually("agent-off to count as offline", || async {
        let seen = app.entry("agent-off").await["lastSeen"]
            .as_str()
            .unwrap()
            .to_owned();
        let seen =
            time::OffsetDateTime::parse(&seen, &time::format_description::well_known::Rfc3339)
                .unwrap();
        (time::OffsetDateTime::now_utc() - seen > time::Duration::seconds(2)).then_some(())
    })
    .await;
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
        ("agent-off", start_call(), 409),
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
    // Refusals are service errors: `nats micro stats` counts them.
    let stats = app
        .client
        .request("$SRV.STATS.softphone-bridge", "".into())
        .await
        .expect("STATS answers");
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    let command = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "command")
        .unwrap();
    assert_eq!(command["num_errors"], 8, "{stats}");
    assert_eq!(command["num_requests"], 8, "{stats}");
    app.stop().await;
}
