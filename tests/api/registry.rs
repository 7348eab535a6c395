//! The softphone registry, filled by `loaded` and `status_changed` events
//! handled by two replicas at once, read through the API; the partner binding
//! every softphone event and heartbeat obeys.

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
    let app = App::builder(nats).http().spawn().await;
    let replica = app.replica().await;

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
    app.settled().await;
    let info = app.intake_info().await;
    assert_eq!(
        info.delivered.stream_sequence,
        (softphones.len() * (STATUSES.len() + 1)) as u64
    );

    let last = STATUSES[STATUSES.len() - 1];
    for phone in &softphones {
        let response = app.softphone(phone, TOKEN).await;
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
    let scoped = app.softphone("agent-0", PARTNER_TOKEN).await;
    assert_eq!(scoped.status(), StatusCode::OK);

    replica.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_status_change_without_an_instance_touches_no_entry() {
    let nats = start_nats().await;
    let app = App::builder(nats).http().spawn().await;
    app.publish(
        EventKind::AgentStatusChanged,
        &format!(r#"{{"softphoneId":"{STATUS}"}}"#),
        None,
    )
    .await;
    app.settled().await;
    let response = app.softphone(STATUS, TOKEN).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_writers_on_one_entry_lose_nothing() {
    use softphone_bridge::contract::{AgentStatusChanged, Loaded};
    use softphone_bridge::softphones::registry::{Phone, Registry};

    let nats = start_nats().await;
    let settings = http_settings(&nats.url);
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    // Two handles, as two replicas would have.
    let replicas = [
        Registry::new(js.clone(), &settings.registry),
        Registry::new(js.clone(), &settings.registry),
    ];
    let base = time::OffsetDateTime::now_utc();
    let at = |i: i64| base + time::Duration::milliseconds(i);
    let loaded = Loaded {
        softphone_id: "agent-x".parse().unwrap(),
        partner_id: Some(PARTNER.parse().unwrap()),
    };

    // The load and 20 status changes, all racing on the same key; the load is
    // the oldest fact and the status at t=20 the newest.
    let statuses: Vec<String> = (0..20)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let writes = statuses.iter().enumerate().map(|(i, status)| {
        let registry = replicas[i % 2].clone();
        let event = AgentStatusChanged {
            softphone_id: status.parse().unwrap(),
            instance_id: Some("agent-x".parse().unwrap()),
            partner_id: None,
        };
        let when = at(i as i64 + 1);
        async move {
            registry
                .status_changed(&event, None, when)
                .await
                .map(|_| ())
        }
    });
    let load = async { replicas[1].loaded(&loaded, None, at(0)).await.map(|_| ()) };
    let (statuses_written, load_written) = tokio::join!(futures::future::join_all(writes), load);
    load_written.expect("the load is recorded");
    for written in statuses_written {
        written.expect("every write lands, conflicts retried");
    }

    let entry = replicas[0]
        .get(Phone::shared(&"agent-x".parse().unwrap()))
        .await
        .unwrap()
        .expect("an entry");
    assert_eq!(
        entry.partner_id.unwrap().as_str(),
        PARTNER,
        "the load was not overwritten"
    );
    assert_eq!(
        entry.presence_status.unwrap().as_str(),
        statuses[19],
        "the newest status won"
    );
    assert_eq!(entry.loaded_at, Some(at(0)));
    assert_eq!(entry.last_seen, at(20));
}

#[tokio::test]
async fn a_spoofed_load_cannot_widen_a_tokens_reach() {
    let nats = start_nats().await;
    let mut settings = http_settings(&nats.url);
    const OTHER_TOKEN: &str = "test-token-other-partner";
    settings.http.tokens.push(token_settings(
        "crm-other",
        OTHER_TOKEN,
        Some(vec![OTHER_PARTNER]),
    ));
    let app = App::builder(nats).with(settings).spawn().await;
    app.load("agent-7", Some(PARTNER)).await;
    let mut dead_letters = app.dead_letters().await;

    // Anyone allowed to publish `softphone.loaded` names another partner.
    let spoof = format!(r#"{{"softphoneId":"agent-7","partnerId":"{OTHER_PARTNER}"}}"#);
    app.publish(EventKind::Loaded, &spoof, None).await;
    let dead = dead_letters.next().await;
    assert_eq!(header(&dead, "Softphone-Dlq-Reason"), "partner conflict");
    assert_eq!(dead.payload.as_ref(), spoof.as_bytes());
    app.settled().await;

    // The binding stands: the other partner's token still cannot see or command it.
    let entry = app.entry("agent-7").await;
    assert_eq!(entry["partnerId"], PARTNER);
    for response in [
        app.command("agent-7", &start_call(), OTHER_TOKEN, None)
            .await,
        app.softphone("agent-7", OTHER_TOKEN).await,
    ] {
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        app.command("agent-7", &start_call(), PARTNER_TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"softphone_bridge_partner_conflicts_total{type="loaded"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

/// An entry's `lastSeen`.
fn last_seen(entry: &Value) -> time::OffsetDateTime {
    let text = entry["lastSeen"].as_str().expect("lastSeen");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
}

/// A status change as a softphone publishes it.
fn status_change(status: &str, softphone: &str, partner: &str) -> String {
    format!(r#"{{"softphoneId":"{status}","instanceId":"{softphone}","partnerId":"{partner}"}}"#)
}

#[tokio::test]
async fn another_partners_status_change_is_refused_and_heartbeats_bind_nothing() {
    let nats = start_nats().await;
    let app = App::builder(nats).http().spawn().await;
    app.load("agent-a", Some(PARTNER)).await;
    let mut dead_letters = app.dead_letters().await;

    // Partner A's own status change applies.
    let own = status_change(STATUSES[0], "agent-a", PARTNER);
    app.publish(EventKind::AgentStatusChanged, &own, None).await;
    app.settled().await;
    let before = app.entry("agent-a").await;
    assert_eq!(before["presenceStatus"], STATUSES[0], "{before}");

    // Partner B names A's softphone: dead-lettered, A's entry untouched.
    let spoof = status_change(STATUSES[1], "agent-a", OTHER_PARTNER);
    app.publish(EventKind::AgentStatusChanged, &spoof, None)
        .await;
    let dead = dead_letters.next().await;
    assert_eq!(header(&dead, "Softphone-Dlq-Reason"), "partner conflict");
    assert_eq!(
        header(&dead, "Softphone-Original-Subject"),
        "softphone.agent.status_changed"
    );
    assert_eq!(dead.payload.as_ref(), spoof.as_bytes());
    app.settled().await;
    assert_eq!(
        app.entry("agent-a").await,
        before,
        "neither presence nor last sign of life moved"
    );

    // A's traffic still flows: its next status change applies.
    let later = status_change(STATUSES[2], "agent-a", PARTNER);
    app.publish(EventKind::AgentStatusChanged, &later, None)
        .await;
    app.settled().await;
    let after = app.entry("agent-a").await;
    assert_eq!(after["presenceStatus"], STATUSES[2], "{after}");
    assert_eq!(after["partnerId"], PARTNER);
    assert!(last_seen(&after) > last_seen(&before), "{after}");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains(r#"softphone_bridge_partner_conflicts_total{type="agent.status_changed"} 1"#),
        "{metrics}"
    );

    // Heartbeats name no partner: they refresh the last sign of life and
    // neither bind an unbound softphone nor move a bound one.
    app.load("agent-free", None).await;
    for (softphone, partner) in [("agent-free", None), ("agent-a", Some(PARTNER))] {
        let seen = last_seen(&app.entry(softphone).await);
        app.client
            .publish(format!("softphone.heartbeat.{softphone}"), "".into())
            .await
            .unwrap();
        let entry = eventually("the heartbeat to reach the registry", || async {
            let entry = app.entry(softphone).await;
            (last_seen(&entry) > seen).then_some(entry)
        })
        .await;
        assert_eq!(entry["partnerId"].as_str(), partner, "{entry}");
    }
    // The unbound softphone is still bound by its first `loaded` naming a partner.
    app.load("agent-free", Some(OTHER_PARTNER)).await;
    assert_eq!(app.entry("agent-free").await["partnerId"], OTHER_PARTNER);
    app.stop().await;
}
