//! The HTTP command API over real HTTP against the running app and real NATS:
//! delivery to the softphone, idempotency, every error status, injection attempts.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use softphone_bridge::contract::COMMANDS_STREAM;

use crate::helpers::*;

async fn app() -> App {
    let nats = start_nats().await;
    App::builder(nats).http().spawn().await
}

#[tokio::test]
async fn the_softphone_receives_exactly_the_command() {
    let app = app().await;
    app.load("agent-1", Some(PARTNER)).await;
    let mut softphone = app.client.subscribe("softphone.cmd.agent-1").await.unwrap();
    app.client.flush().await.unwrap();

    for token in [TOKEN, PARTNER_TOKEN] {
        let response = app.command("agent-1", &start_call(), token, None).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let accepted: Value = response.json().await.unwrap();
        assert_eq!(accepted["stream"], "SOFTPHONE_COMMANDS");
        assert_eq!(accepted["duplicate"], false);
        assert!(accepted["seq"].as_u64().unwrap() > 0);

        let (message, received, expires) = next_command_body(&mut softphone).await;
        assert_eq!(
            expires, accepted["expiresAt"],
            "the command says when it expires"
        );
        assert_eq!(
            received,
            start_call(),
            "the softphone gets the command as sent"
        );
        assert_eq!(
            message
                .headers
                .as_ref()
                .unwrap()
                .get("Nats-TTL")
                .unwrap()
                .as_str(),
            "30",
            "start_call lives commands.start_call_ttl"
        );
        let id = message
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str();
        assert_eq!(id, accepted["messageId"].as_str().unwrap());
    }

    let presence = json!({"type": "update_presence", "payload": {"softphoneId": STATUS}});
    let response = app.command("agent-1", &presence, TOKEN, None).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let (_, received, _) = next_command_body(&mut softphone).await;
    assert_eq!(received, presence);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_command_with_the_same_key_is_published_once() {
    let app = app().await;
    app.load("agent-2", Some(PARTNER)).await;
    let before = commands_for(&app.js, "agent-2").await;

    let first = app
        .command("agent-2", &start_call(), TOKEN, Some("click-42"))
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // The same command, its fields in another order: the same command.
    let mut reordered = json!({"payload": start_call()["payload"]});
    reordered["type"] = json!("start_call");
    let again = app
        .command("agent-2", &reordered, TOKEN, Some("click-42"))
        .await;
    assert_eq!(again.status(), StatusCode::OK, "the original answer");
    let again: Value = again.json().await.unwrap();

    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(first["expiresAt"], again["expiresAt"]);
    assert_eq!(first["idempotencyKey"], "click-42");
    assert_eq!(
        commands_for(&app.js, "agent-2").await,
        before + 1,
        "one message for two requests"
    );

    let other = app
        .command("agent-2", &start_call(), TOKEN, Some("click-43"))
        .await;
    assert_eq!(other.json::<Value>().await.unwrap()["duplicate"], false);
    assert_eq!(commands_for(&app.js, "agent-2").await, before + 2);

    // The same key for a different command: 409, nothing published.
    let mut changed = start_call();
    changed["payload"]["dialTo"] = json!("+18005550100");
    let doc = problem(
        app.command("agent-2", &changed, TOKEN, Some("click-42"))
            .await,
        409,
    )
    .await;
    assert_eq!(
        doc["type"],
        "urn:softphone-bridge:problem:idempotency-key-reused"
    );
    assert_eq!(commands_for(&app.js, "agent-2").await, before + 2);

    // Without a key, one is generated and returned.
    let unkeyed: Value = app
        .command("agent-2", &start_call(), TOKEN, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unkeyed["idempotencyKey"].as_str().unwrap().len(), 36);
    app.stop().await;
}

#[tokio::test]
async fn every_error_is_a_precise_problem() {
    let app = app().await;
    app.load("agent-3", Some(PARTNER)).await;
    app.load("agent-b", Some(OTHER_PARTNER)).await;
    app.load("agent-np", None).await;
    let before = stream_messages(&app.js, COMMANDS_STREAM).await;
    let url = app.url("/v1/softphones/agent-3/commands");

    // 401: no token, a wrong token, another scheme.
    let none = app
        .http
        .post(&url)
        .json(&start_call())
        .send()
        .await
        .unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    problem(none, 401).await;
    problem(
        app.command("agent-3", &start_call(), "not-a-token", None)
            .await,
        401,
    )
    .await;
    let basic = app
        .http
        .post(&url)
        .header("Authorization", format!("Basic {TOKEN}"))
        .json(&start_call())
        .send()
        .await
        .unwrap();
    problem(basic, 401).await;

    // 400: malformed JSON.
    let malformed = app
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"type\":")
        .send()
        .await
        .unwrap();
    let doc = problem(malformed, 400).await;
    assert!(doc["detail"].as_str().unwrap().contains("JSON"), "{doc}");

    // 415: not JSON.
    let text = app
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body(start_call().to_string())
        .send()
        .await
        .unwrap();
    problem(text, 415).await;
    let untyped = app
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .body(start_call().to_string())
        .send()
        .await
        .unwrap();
    problem(untyped, 415).await;

    // 413: over http.body_limit (64 KiB by default).
    let huge = json!({"type": "disposition", "payload": vec!["x".repeat(1000); 100]});
    problem(app.command("agent-3", &huge, TOKEN, None).await, 413).await;

    // 422: contract violations name the field and say why.
    let mut bad_number = start_call();
    bad_number["payload"]["dialTo"] = json!("555-1234");
    let doc = problem(app.command("agent-3", &bad_number, TOKEN, None).await, 422).await;
    assert_eq!(doc["field"], "payload.dialTo");
    assert!(doc["detail"].as_str().unwrap().contains("E.164"), "{doc}");
    let mut bad_type = start_call();
    bad_type["payload"]["participantType"] = json!("Robot");
    assert_eq!(
        problem(app.command("agent-3", &bad_type, TOKEN, None).await, 422).await["field"],
        "payload.participantType"
    );
    let mut missing = start_call();
    missing["payload"]
        .as_object_mut()
        .unwrap()
        .remove("dialFrom");
    let doc = problem(app.command("agent-3", &missing, TOKEN, None).await, 422).await;
    assert!(
        doc["detail"].as_str().unwrap().contains("dialFrom"),
        "{doc}"
    );
    let unknown = json!({"type": "hang_up", "payload": {}});
    let doc = problem(app.command("agent-3", &unknown, TOKEN, None).await, 422).await;
    assert_eq!(doc["field"], "type");
    let bad_status = json!({"type": "update_presence", "payload": {"softphoneId": "agent-3"}});
    assert_eq!(
        problem(app.command("agent-3", &bad_status, TOKEN, None).await, 422).await["field"],
        "payload.softphoneId"
    );

    // 404: not in the registry (strict by default); an unknown route.
    let doc = problem(
        app.command("agent-never", &start_call(), TOKEN, None).await,
        404,
    )
    .await;
    assert!(
        doc["detail"].as_str().unwrap().contains("agent-never"),
        "{doc}"
    );
    problem(app.softphone("agent-never", TOKEN).await, 404).await;
    problem(
        app.http.get(app.url("/v2/nothing")).send().await.unwrap(),
        404,
    )
    .await;

    // 404: to a token scoped to PARTNER, another partner's softphone and one
    // without a partner look exactly like one that does not exist.
    let unknown = problem(
        app.command("agent-never", &start_call(), PARTNER_TOKEN, None)
            .await,
        404,
    )
    .await;
    for hidden in ["agent-b", "agent-np"] {
        let doc = problem(
            app.command(hidden, &start_call(), PARTNER_TOKEN, None)
                .await,
            404,
        )
        .await;
        assert!(!doc.to_string().contains(OTHER_PARTNER), "{doc}");
        assert_eq!(
            doc["detail"],
            unknown["detail"]
                .as_str()
                .unwrap()
                .replace("agent-never", hidden)
        );
    }
    // 403: naming another partner in a command to one of its own softphones.
    let mut for_other = start_call();
    for_other["payload"]["partnerId"] = json!(OTHER_PARTNER);
    problem(
        app.command("agent-3", &for_other, PARTNER_TOKEN, None)
            .await,
        403,
    )
    .await;
    problem(app.softphone("agent-b", PARTNER_TOKEN).await, 404).await;

    // 400: a bad Idempotency-Key.
    problem(
        app.command("agent-3", &start_call(), TOKEN, Some(&"k".repeat(200)))
            .await,
        400,
    )
    .await;

    assert_eq!(
        stream_messages(&app.js, COMMANDS_STREAM).await,
        before,
        "no refused command was published"
    );
    // The unscoped token may command the other partner's softphone.
    assert_eq!(
        app.command("agent-b", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    app.stop().await;
}

#[tokio::test]
async fn softphone_ids_that_are_not_one_token_are_refused_before_publishing() {
    let app = app().await;
    app.load("victim", Some(PARTNER)).await;
    let mut everything = app.client.subscribe("softphone.cmd.>").await.unwrap();
    app.client.flush().await.unwrap();
    let before = stream_messages(&app.js, COMMANDS_STREAM).await;

    for raw in [
        "a.b",
        "victim.x",
        "*",
        ">",
        "%2A",
        "%3E",
        "a%20b",
        "%20",
        "a%09b",
        "softphone.cmd.victim",
        "x%2Ey",
        "%C3%A9",
    ] {
        let doc = problem(app.command(raw, &start_call(), TOKEN, None).await, 400).await;
        assert_eq!(doc["title"], "Invalid softphone id", "{raw}: {doc}");
        let doc = problem(app.softphone(raw, TOKEN).await, 400).await;
        assert_eq!(doc["title"], "Invalid softphone id", "{raw}: {doc}");
    }
    // Extra path segments (or dot segments the client resolves) are another
    // route, never a subject.
    for raw in ["a/b", "victim/..", "%2F", "%2E", "..", "."] {
        let status = app
            .command(raw, &start_call(), TOKEN, None)
            .await
            .status()
            .as_u16();
        assert!(matches!(status, 400 | 404 | 405), "{raw}: {status}");
    }
    assert_eq!(
        stream_messages(&app.js, COMMANDS_STREAM).await,
        before,
        "nothing was published"
    );
    // The control command does arrive, and it is the first message there.
    assert_eq!(
        app.command("victim", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let first = tokio::time::timeout(PATIENCE, everything.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.subject.as_str(), "softphone.cmd.victim");
    app.stop().await;
}

#[tokio::test]
async fn without_tokens_the_command_routes_are_off() {
    let nats = start_nats().await;
    let mut settings = http_settings(&nats.url);
    settings.http.tokens.clear();
    let app = App::builder(nats).with(settings).spawn().await;
    let doc = problem(
        app.command("agent-1", &start_call(), TOKEN, None).await,
        404,
    )
    .await;
    assert!(
        doc["detail"].as_str().unwrap().contains("no route"),
        "{doc}"
    );
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_softphones_can_be_allowed() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| {
            s.http.unknown_softphones = softphone_bridge::config::UnknownSoftphones::Allow
        })
        .spawn()
        .await;
    assert_eq!(
        app.command("agent-new", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // A partner-scoped token still needs a bound partner to check: 404.
    problem(
        app.command("agent-new", &start_call(), PARTNER_TOKEN, None)
            .await,
        404,
    )
    .await;
    app.stop().await;
}

#[test]
fn the_openapi_softphone_id_pattern_admits_exactly_the_ids_the_code_admits() {
    let doc: serde_json::Value =
        serde_norway::from_str(include_str!("../../src/http/openapi.yaml")).unwrap();
    let schema = &doc["components"]["parameters"]["softphoneId"]["schema"];
    let pattern = schema["pattern"].as_str().unwrap();
    // `^[<ranges>]+$` with ranges written `\xHH-\xHH`.
    let ranges: Vec<(u8, u8)> = pattern
        .strip_prefix("^[")
        .and_then(|p| p.strip_suffix("]+$"))
        .unwrap()
        .split("\\x")
        .filter(|part| !part.is_empty())
        .map(|part| u8::from_str_radix(part.trim_end_matches('-'), 16).unwrap())
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    for byte in 0u8..=127 {
        let id = format!("a{}b", byte as char);
        let documented = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&byte));
        let accepted = softphone_bridge::contract::SoftphoneId::try_from(id.clone()).is_ok();
        assert_eq!(documented, accepted, "{id:?}");
    }
    assert_eq!(schema["maxLength"], 128);
}
