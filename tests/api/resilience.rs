//! NATS outages and authentication: the worker rides out a server restart, and
//! credentials are used without ever being shown.

use async_nats::jetstream;
use softphone_bridge::contract::EventKind;
use softphone_bridge::{Application, broker};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Publishes, retrying while the client reconnects after a server restart.
async fn publish_when_back(js: &jetstream::Context, kind: EventKind, body: &str, id: &str) {
    eventually("NATS to take a publish again", || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let ack = js
            .publish_with_headers(kind.subject(), headers, body.to_owned().into())
            .await
            .ok()?;
        ack.await.ok().map(drop)
    })
    .await
}

#[tokio::test]
async fn the_worker_carries_on_after_nats_restarts() {
    let crm = FakeCrm::start().await;
    let nats = start_nats_pinned().await;
    let settings = settings(&nats.url, &webhook_crm(&crm.url()));
    let app = spawn_app(nats, settings).await;

    app.publish(
        EventKind::CallIncoming,
        &call_body(&conversation(), ""),
        Some("before"),
    )
    .await;
    assert_eq!(idempotency_key(&crm.next_request().await), "before");
    app.settled().await;

    app.nats.container.stop().await.expect("NATS stops");
    app.nats.container.start().await.expect("NATS starts again");

    publish_when_back(
        &app.js,
        EventKind::CallEnded,
        &call_body(&conversation(), ""),
        "after",
    )
    .await;
    assert_eq!(
        idempotency_key(&crm.next_request().await),
        "after",
        "consuming resumed after the restart"
    );
    app.settled().await;
    app.stop().await;
}

#[tokio::test]
async fn token_authentication_is_used_and_never_shown() {
    const TOKEN: &str = "s3cr3t-nats-token";
    let nats = start_nats_with(None, &["--auth", TOKEN]).await;
    let crm = FakeCrm::start().await;
    let mut settings = settings(&nats.url, &webhook_crm(&crm.url()));

    // Without the token the one-shot connection fails, with a reason.
    let err = broker::connect(&settings.nats, broker::FirstConnect::FailFast)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("cannot connect to NATS"),
        "{err:#}"
    );

    settings.nats.token = Some(TOKEN.to_owned().into());
    assert!(!format!("{settings:?}").contains(TOKEN));
    assert!(!settings.to_redacted_toml().contains(TOKEN));
    let client = broker::connect(&settings.nats, broker::FirstConnect::FailFast)
        .await
        .expect("token accepted");
    let js = broker::jetstream(client, &settings.nats);
    broker::provision(&js, &settings).await.unwrap();

    let shutdown = CancellationToken::new();
    let app = Application::build(settings.clone()).await.unwrap();
    let running = tokio::spawn(app.run_until(shutdown.clone()));
    publish(
        &js,
        EventKind::CallRejected,
        &call_body(&conversation(), r#""reason":"passive""#),
        Some("auth-1"),
    )
    .await;
    assert_eq!(idempotency_key(&crm.next_request().await), "auth-1");
    settled(&js, &settings.worker.consumer).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
