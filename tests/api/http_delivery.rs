//! Exactly once and never late, over real HTTP against real NATS: one command
//! per idempotency key whatever the subscriber and the replica, commands that
//! expire, softphones that go offline and come back with a heartbeat.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use softphone_bridge::contract::COMMANDS_STREAM;

use crate::helpers::*;

async fn app() -> App {
    let nats = start_nats().await;
    App::builder(nats).http().spawn().await
}

/// Posts `body` with `key` three times at once, spread over the replicas at
/// `addrs`; returns the statuses and the answers.
async fn post_thrice(
    http: &reqwest::Client,
    addrs: &[std::net::SocketAddr],
    softphone: &str,
    body: &Value,
    key: &str,
) -> Vec<(u16, Value)> {
    let posts = (0..3).map(|i| async move {
        let response = post_command(
            http,
            addrs[i % addrs.len()],
            softphone,
            body,
            TOKEN,
            Some(key),
        )
        .await;
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    });
    futures::future::join_all(posts).await
}

/// Three answers for one key: one 202 that published, two 200s with its seq.
fn once(answers: &[(u16, Value)]) -> u64 {
    let published: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .collect();
    assert_eq!(published.len(), 1, "one request publishes: {answers:?}");
    let seq = published[0].1["seq"].as_u64().unwrap();
    for (status, answer) in answers {
        assert!(matches!(status, 200 | 202), "{answers:?}");
        assert_eq!(answer["seq"], seq, "{answers:?}");
        assert_eq!(answer["duplicate"], *status == 200, "{answers:?}");
    }
    seq
}

#[tokio::test]
async fn one_key_is_one_command_for_every_subscriber_across_replicas_until_its_ttl() {
    let nats = start_nats().await;
    let mut settings = http_settings(&nats.url);
    // Short, so the test sees the decision expire (and the stream's own
    // Nats-Msg-Id window, which would still drop the repeat, too).
    settings.commands.idempotency_ttl = std::time::Duration::from_secs(3);
    settings.streams.duplicate_window = std::time::Duration::from_secs(1);
    let app = App::builder(nats).with(settings).spawn().await;
    let replica = app.replica().await;
    app.load("agent-1", Some(PARTNER)).await;
    let mut plain = app.client.subscribe("softphone.cmd.agent-1").await.unwrap();
    app.client.flush().await.unwrap();
    let mut consumer = command_consumer(&app.js, "agent-1").await;
    let addrs = [app.addr(), replica.addr];
    // The replica answers once it is ready, like the first app.
    eventually("the replica to answer", || async {
        let status = app
            .http
            .get(format!("http://{}/readyz", replica.addr))
            .send()
            .await
            .ok()?
            .status();
        (status == 200).then_some(())
    })
    .await;

    // The load's own callbacks are there already.
    let loaded = consumer_total(&mut consumer).await;
    let first = once(&post_thrice(&app.http, &addrs, "agent-1", &start_call(), "click-1").await);
    // Within the TTL, on either replica: the original answer, nothing published.
    let again =
        once_more(&post_thrice(&app.http, &addrs, "agent-1", &start_call(), "click-1").await);
    assert_eq!(again, first);
    assert_eq!(core_received(&app.client, &mut plain).await.len(), 1);
    assert_eq!(consumer_total(&mut consumer).await, loaded + 1);

    // After commands.idempotency_ttl the decision is gone: the key publishes
    // again, still exactly once.
    let keys = app
        .js
        .get_key_value("SOFTPHONE_COMMAND_KEYS")
        .await
        .unwrap();
    let key = softphone_bridge::dispatch::bucket_key(&"agent-1".parse().unwrap(), "click-1");
    eventually("the decision to expire", || async {
        keys.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
    let later = once(&post_thrice(&app.http, &addrs, "agent-1", &start_call(), "click-1").await);
    assert!(later > first);
    assert_eq!(core_received(&app.client, &mut plain).await.len(), 1);
    assert_eq!(consumer_total(&mut consumer).await, loaded + 2);

    replica.stop().await;
    app.stop().await;
}

/// Three repeats of a published key: three 200s with its seq.
fn once_more(answers: &[(u16, Value)]) -> u64 {
    let seq = answers[0].1["seq"].as_u64().unwrap();
    for (status, answer) in answers {
        assert_eq!(*status, 200, "{answers:?}");
        assert_eq!(answer["duplicate"], true);
        assert_eq!(answer["seq"], seq);
    }
    seq
}

#[tokio::test]
async fn an_expired_start_call_is_never_delivered() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.commands.start_call_ttl = std::time::Duration::from_secs(1))
        .spawn()
        .await;
    app.load("agent-1", Some(PARTNER)).await;
    // The load's callbacks, which live the stream's max age.
    let loaded = commands_for(&app.js, "agent-1").await;
    let response = app.command("agent-1", &start_call(), TOKEN, None).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    let expires = time::OffsetDateTime::parse(
        accepted["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires - time::OffsetDateTime::now_utc() <= time::Duration::seconds(1));

    // The stream removes it at its TTL; a softphone connecting later gets nothing.
    eventually("the start_call to expire", || async {
        (commands_for(&app.js, "agent-1").await == loaded).then_some(())
    })
    .await;
    assert!(time::OffsetDateTime::now_utc() >= expires);
    let mut late = command_consumer(&app.js, "agent-1").await;
    assert_eq!(consumer_total(&mut late).await, loaded);
    let mut batch = late
        .fetch()
        .max_messages(loaded as usize + 1)
        .expires(std::time::Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    while let Some(message) = batch.next().await {
        let command: Value = serde_json::from_slice(&message.unwrap().payload).unwrap();
        assert_ne!(
            command["type"], "start_call",
            "the expired command is never delivered"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_offline_softphone_gets_409_until_it_beats_again() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.commands.offline_after = std::time::Duration::from_secs(2))
        .spawn()
        .await;
    app.load("agent-1", Some(PARTNER)).await;
    let last_seen = |entry: Value| {
        time::OffsetDateTime::parse(
            entry["lastSeen"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let loaded = last_seen(app.entry("agent-1").await);
    eventually(
        "agent-1 to fall silent for commands.offline_after",
        || async {
            (time::OffsetDateTime::now_utc() - loaded > time::Duration::milliseconds(2100))
                .then_some(())
        },
    )
    .await;
    let before = stream_messages(&app.js, COMMANDS_STREAM).await;
    let doc = problem(
        app.command("agent-1", &start_call(), TOKEN, Some("late"))
            .await,
        409,
    )
    .await;
    assert_eq!(
        doc["type"],
        "urn:softphone-bridge:problem:softphone-offline"
    );
    assert_eq!(stream_messages(&app.js, COMMANDS_STREAM).await, before);

    // A heartbeat (core NATS) is a sign of life.
    app.client
        .publish("softphone.heartbeat.agent-1", "".into())
        .await
        .unwrap();
    eventually("the heartbeat to reach the registry", || async {
        (last_seen(app.entry("agent-1").await) > loaded).then_some(())
    })
    .await;
    assert_eq!(
        app.command("agent-1", &start_call(), TOKEN, Some("late"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    // A heartbeat binds nothing: an unknown softphone stays unknown.
    app.client
        .publish("softphone.heartbeat.agent-ghost", "".into())
        .await
        .unwrap();
    app.client.flush().await.unwrap();
    problem(
        app.command("agent-ghost", &start_call(), TOKEN, None).await,
        404,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_key_still_publishing_is_never_published_twice() {
    use softphone_bridge::contract::Callback;
    use softphone_bridge::dispatch::{IN_PROGRESS_WAIT, bucket_key, command_hash};

    let app = app().await;
    app.load("agent-1", Some(PARTNER)).await;
    let keys = app
        .js
        .get_key_value("SOFTPHONE_COMMAND_KEYS")
        .await
        .unwrap();
    let hash = command_hash(&Callback::decode(start_call().to_string().as_bytes()).unwrap());
    let before = commands_for(&app.js, "agent-1").await;
    // What a replica leaves while it publishes: the decision, no seq yet.
    let publishing = |key: &str, expires: time::OffsetDateTime| {
        let expires = expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        json!({"bodyHash": hash, "messageId": format!("cmd:agent-1:key:{key}"), "expiresAt": expires})
            .to_string()
    };
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    let key = bucket_key(&"agent-1".parse().unwrap(), "busy");
    keys.create(&key, publishing("busy", soon).into())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let doc = problem(
        app.command("agent-1", &start_call(), TOKEN, Some("busy"))
            .await,
        409,
    )
    .await;
    assert_eq!(doc["type"], "urn:softphone-bridge:problem:in-progress");
    assert!(
        started.elapsed() >= IN_PROGRESS_WAIT,
        "it waited for the first"
    );
    assert_eq!(commands_for(&app.js, "agent-1").await, before);

    // A decision left publishing past its command's expiry (its replica
    // stopped) is taken over: the command is published once.
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let key = bucket_key(&"agent-1".parse().unwrap(), "stale");
    keys.create(&key, publishing("stale", past).into())
        .await
        .unwrap();
    assert_eq!(
        app.command("agent-1", &start_call(), TOKEN, Some("stale"))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(commands_for(&app.js, "agent-1").await, before + 1);
    app.stop().await;
}
