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
    let app = App::builder(nats)
        .crm(&webhook_crm(&crm.url()))
        .spawn()
        .await;

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
    let nats = start_nats_with(None, &["--auth", TOKEN], &[]).await;
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
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();

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
    settled(&js, &settings).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn user_and_password_authentication_is_used_and_never_shown() {
    const PASSWORD: &str = "pa55-w0rd-for-nats";
    let nats = start_nats_with(None, &["--user", "bridge", "--pass", PASSWORD], &[]).await;
    let mut settings = settings(&nats.url, "kind = \"log\"");
    settings.nats.user = Some("bridge".into());
    settings.nats.password = Some("not-the-password".to_owned().into());
    let refused = broker::connect(&settings.nats, broker::FirstConnect::FailFast)
        .await
        .unwrap_err();
    assert!(
        !format!("{refused:#}").contains("not-the-password"),
        "{refused:#}"
    );

    settings.nats.password = Some(PASSWORD.to_owned().into());
    assert!(!settings.to_redacted_toml().contains(PASSWORD));
    let client = broker::connect(&settings.nats, broker::FirstConnect::FailFast)
        .await
        .expect("user and password accepted");
    softphone_bridge::broker::provision::apply(
        &broker::jetstream(client, &settings.nats),
        &settings,
    )
    .await
    .expect("provisioning works over the authenticated connection");
}

#[tokio::test]
async fn tls_to_nats_verifies_the_server_with_the_configured_ca() {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let nats = start_nats_with(
        None,
        &[
            "--tls",
            "--tlscert",
            "/server-cert.pem",
            "--tlskey",
            "/server-key.pem",
        ],
        &[
            ("/server-cert.pem", cert_pem.as_bytes()),
            ("/server-key.pem", key_pem.as_bytes()),
        ],
    )
    .await;
    let mut settings = settings(&nats.url, "kind = \"log\"");
    settings.nats.tls.required = true;

    // Without the CA the server's certificate is not trusted.
    let untrusted = broker::connect(&settings.nats, broker::FirstConnect::FailFast).await;
    assert!(
        untrusted.is_err(),
        "a self-signed server is refused without its CA"
    );

    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &cert_pem).unwrap();
    settings.nats.tls.ca_file = Some(ca.path().into());
    let client = broker::connect(&settings.nats, broker::FirstConnect::FailFast)
        .await
        .expect("TLS with the configured CA");
    let js = broker::jetstream(client, &settings.nats);
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    let ack = publish(
        &js,
        EventKind::CallIncoming,
        &call_body(&conversation(), ""),
        None,
    )
    .await;
    assert_eq!(ack.sequence, 1);
}
