//! The softphone registry, filled by `loaded` and `status_changed` events
//! handled by two replicas at once, read through the API.

use reqwest::StatusCode;
use serde_json::Value;
use softphone_bridge::contract::EventKind;

use crate::helpers::*;

/// Presence statuses, in the order the agents pick them.
const STATUSES: [&str; 4] = [
    "9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
    "1a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d",
    "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
    "12345678-90ab-4cde-8f01-234567890abc",
];

#[tokio::test]
async fn two_replicas_fill_the_registry_without_losing_updates() {
    let nats = start_nats().await;
    let settings = http_settings(&nats.url);
    let app = spawn_http_app(nats, settings.clone()).await;
    let (replica, replica_task, _, _) = start_replica(settings).await;

    // Per softphone: a load, then every status change; all published at once
    // so both replicas work on the same entries concurrently.
    let softphones: Vec<String> = (0..6).map(|i| format!("agent-{i}")).collect();
    for round in 0..=STATUSES.len() {
        let publishes = softphones.iter().map(|phone| {
            let body = match round {
                0 => format!(r#"{{"softphoneId":"{phone}","partnerId":"{PARTNER}"}}"#),
                n => format!(
                    r#"{{"softphoneId":"{}","instanceId":"{phone}"}}"#,
                    STATUSES[n - 1]
                ),
            };
            let kind = if round == 0 {
                EventKind::Loaded
            } else {
                EventKind::AgentStatusChanged
            };
            let js = app.js.clone();
            async move { publish(&js, kind, &body, None).await }
        });
        futures::future::join_all(publishes).await;
    }
    let info = app.settled().await;
    assert_eq!(
        info.delivered.stream_sequence,
        (softphones.len() * (STATUSES.len() + 1)) as u64
    );

    let last = STATUSES[STATUSES.len() - 1];
    for phone in &softphones {
        let response = app
            .http
            .get(app.url(&format!("/v1/softphones/{phone}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let entry: Value = response.json().await.unwrap();
        assert_eq!(entry["softphoneId"], phone.as_str());
        assert_eq!(entry["partnerId"], PARTNER, "{entry}");
        assert_eq!(
            entry["presenceStatus"], last,
            "the latest status wins: {entry}"
        );
        let loaded = entry["loadedAt"].as_str().unwrap();
        let seen = entry["lastSeen"].as_str().unwrap();
        assert!(seen >= loaded, "{entry}");
    }
    // The partner-scoped token sees its partner's softphones too.
    let scoped = app
        .http
        .get(app.url("/v1/softphones/agent-0"))
        .bearer_auth(PARTNER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(scoped.status(), StatusCode::OK);

    replica.cancel();
    replica_task.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_status_change_without_an_instance_touches_no_entry() {
    let nats = start_nats().await;
    let settings = http_settings(&nats.url);
    let app = spawn_http_app(nats, settings).await;
    app.publish(
        EventKind::AgentStatusChanged,
        &format!(r#"{{"softphoneId":"{STATUS}"}}"#),
        None,
    )
    .await;
    app.settled().await;
    let response = app
        .http
        .get(app.url(&format!("/v1/softphones/{STATUS}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
