//! Lanes: each event is routed once, to its partner's CRM connection; a
//! connection in trouble holds its own lane back (paused, its events kept,
//! none of their deliveries spent) and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use softphone_bridge::contract::{DLQ_STREAM, EventKind, dlq_header};
use softphone_bridge::pipeline::Role;
use wiremock::ResponseTemplate;

use crate::helpers::fakes::salesforce::FakeSalesforce;
use crate::helpers::*;

/// `[crms.<name>]` webhook sections for `names`, all posting to `url`.
fn webhook_connections(names: impl IntoIterator<Item = String>, url: &str) -> String {
    names
        .into_iter()
        .map(|name| format!("[crms.{name}]\n{}\n", webhook_crm(url)))
        .collect()
}

/// The document a webhook request carries.
fn doc(request: &wiremock::Request) -> Value {
    serde_json::from_slice(&request.body).expect("a JSON document")
}

async fn dead_letter_count(app: &App) -> u64 {
    stream_messages(&app.js, DLQ_STREAM).await
}

#[tokio::test]
async fn a_hanging_crm_does_not_hold_back_another_partners_events() {
    // Partner A's Salesforce org hangs on every API call (answers after the
    // 6 s timeout); partner B's webhook CRM is healthy.
    let sf = FakeSalesforce::start().await;
    sf.org().api_delay = Some(Duration::from_secs(10));
    let webhook = FakeCrm::answering(ResponseTemplate::new(200)).await;
    let nats = start_nats().await;
    let a = sf
        .crm_toml("client_credentials", "[crms.a.lookup]\nenabled = false")
        .replace("timeout = \"2s\"", "timeout = \"6s\"");
    let extra = format!(
        "{}\n[crms.a]\n{a}\n",
        partner_b_on_connection_b(&webhook_crm(&webhook.url()))
    );
    let app = App::builder(nats)
        .partner_crm("a")
        .toml(&extra)
        .spawn()
        .await;

    // A burst for A, more than the worker's 8 slots, then B's events.
    app.publish_calls(EventKind::CallNotesSubmitted, PARTNER, r#""notes":"a""#, 16)
        .await;
    let started = tokio::time::Instant::now();
    let b_conversations: Vec<String> = (0..4).map(|_| conversation()).collect();
    for conv in &b_conversations {
        app.publish(
            EventKind::CallNotesSubmitted,
            &partner_call_body(PARTNER_B, conv, r#""notes":"b""#),
            None,
        )
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let request = webhook.next_request().await;
        let doc: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(doc["partnerId"], PARTNER_B, "only B's events reach B's CRM");
        seen.push(doc["conversationId"].as_str().unwrap().to_owned());
    }
    let waited = started.elapsed();
    // Held behind A, B would wait for A's 6 s timeouts.
    assert!(
        waited < Duration::from_secs(4),
        "B's events waited {waited:?}"
    );
    seen.sort();
    let mut expected = b_conversations.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // A's org never saw more than its lane's concurrency (8 here) at once.
    let api_calls = sf.api_calls().await;
    assert!(
        api_calls <= 8,
        "{api_calls} calls to A's hanging org so far"
    );
    app.stop().await;
}

#[tokio::test]
async fn fifty_connections_and_a_burst_through_a_busy_crm_dead_letter_nothing() {
    // A healthy CRM answering in 100 ms, 50 connections configured, a burst
    // for one partner: busy is back-pressure, never a refusal.
    let crm =
        FakeCrm::answering(ResponseTemplate::new(200).set_delay(Duration::from_millis(100))).await;
    let nats = start_nats().await;
    let extra = webhook_connections((0..50).map(|i| format!("c{i}")), &crm.url());
    let app = App::builder(nats)
        .partner_crm("c0")
        .toml(&extra)
        .spawn()
        .await;

    const BURST: usize = 200;
    app.publish_calls(EventKind::CallEnded, PARTNER, r#""duration":5"#, BURST)
        .await;
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..BURST {
        *seen
            .entry(idempotency_key(&crm.next_request().await))
            .or_default() += 1;
    }
    app.settled().await;
    assert_eq!(seen.len(), BURST, "every event reached the CRM");
    assert!(seen.values().all(|n| *n == 1), "none twice");
    assert!(crm.drain().await.is_empty());
    assert_eq!(dead_letter_count(&app).await, 0, "nothing dead-lettered");
    let info = lane_info(&app.js, &app.settings, "c0").await;
    assert_eq!(info.num_redelivered, 0, "busy spent no delivery");
    app.stop().await;
}

#[tokio::test]
async fn a_crm_down_longer_than_the_retry_schedule_loses_nothing_and_keeps_each_calls_order() {
    // The retry schedule (2 deliveries, 30 s apart) would dead-letter every
    // call of an outage this long, or wait 30 s after it; the lane holds them
    // instead and lets them go at the first successful probe.
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let nats = start_nats().await;
    let mut settings = settings_with(
        &nats.url,
        &webhook_crm(&crm.url()),
        None,
        "[lanes]\npause_after = 3\nprobe_every = \"500ms\"\n",
    );
    settings.worker.max_deliveries = 2;
    settings.worker.backoff = vec![Duration::from_secs(30)];
    let app = App::builder(nats).with(settings).spawn().await;

    let calls: Vec<String> = (0..5).map(|_| conversation()).collect();
    let lifecycle = [
        (EventKind::CallIncoming, r#""callerANI":"+18883973342""#),
        (EventKind::CallAccepted, r#""callerANI":"+18883973342""#),
        (
            EventKind::CallEnded,
            r#""duration":42,"callType":"inbound""#,
        ),
        (EventKind::CallNotesSubmitted, r#""notes":"done""#),
    ];
    for (kind, extra) in lifecycle {
        for conv in &calls {
            app.publish(kind, &call_body(conv, extra), None).await;
        }
    }
    lane_paused(true).await;
    // Outlast the whole retry schedule: several failed probes.
    let mut requests = Vec::new();
    while requests.len() < 8 {
        requests.push(crm.next_request().await);
    }
    assert_eq!(dead_letter_count(&app).await, 0);

    crm.answer(ResponseTemplate::new(200));
    let back = tokio::time::Instant::now();
    app.settled().await;
    let took = back.elapsed();
    requests.extend(crm.drain().await);
    assert!(
        took < Duration::from_secs(10),
        "delivered {took:?} after the CRM came back: the probe's interval, not a 30 s backoff step"
    );
    assert_eq!(dead_letter_count(&app).await, 0, "nothing dead-lettered");
    // Every attempt, failed or not, per call: a later event of a call is
    // never tried before an earlier one is done.
    let mut order = BTreeMap::<String, Vec<String>>::new();
    for request in &requests {
        let doc = doc(request);
        let tried = order
            .entry(doc["conversationId"].as_str().unwrap().to_owned())
            .or_default();
        let event = doc["event"].as_str().unwrap().to_owned();
        if tried.last() != Some(&event) {
            tried.push(event);
        }
    }
    for conv in &calls {
        assert_eq!(
            order[conv],
            [
                "call.incoming",
                "call.accepted",
                "call.ended",
                "call.notes_submitted"
            ],
            "arrival order kept for {conv}"
        );
    }
    let info = app.consumer_info().await;
    assert_eq!(info.num_redelivered, 0, "the outage spent no delivery");
    lane_paused(false).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refused_event_held_on_a_paused_connection_is_dead_lettered_once_when_it_resumes() {
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&webhook_crm(&crm.url()))
        .spawn()
        .await;
    let bad = conversation();
    let good: Vec<String> = (0..4).map(|_| conversation()).collect();
    app.publish(EventKind::CallEnded, &call_body(&good[0], ""), None)
        .await;
    app.publish(EventKind::CallEnded, &call_body(&bad, ""), None)
        .await;
    for conv in &good[1..] {
        app.publish(EventKind::CallEnded, &call_body(conv, ""), None)
            .await;
    }
    lane_paused(true).await;

    // Back, but it refuses the bad call's record.
    crm.refuse(
        &bad,
        ResponseTemplate::new(422).set_body_string("no such account"),
    );
    crm.answer(ResponseTemplate::new(200));
    let mut letters = app.dead_letters().await;
    let letter = letters.next().await;
    assert_eq!(
        header(&letter, dlq_header::REASON),
        "CRM answered 422 Unprocessable Entity"
    );
    assert_eq!(header(&letter, dlq_header::DETAIL), "no such account");
    assert_eq!(header(&letter, dlq_header::SUBJECT), "softphone.call.ended");
    assert_eq!(
        header(&letter, dlq_header::DELIVERIES),
        "1",
        "the outage spent nothing"
    );
    assert!(String::from_utf8_lossy(&letter.payload).contains(&bad));
    app.settled().await;
    assert_eq!(dead_letter_count(&app).await, 1, "dead-lettered once");
    let mut handled = BTreeSet::new();
    for request in crm.drain().await {
        if let Some(conv) = doc(&request)["conversationId"].as_str() {
            handled.insert(conv.to_owned());
        }
    }
    for conv in &good {
        assert!(handled.contains(conv), "the good calls were delivered");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_endpoint_refusing_grants_for_a_while_dead_letters_nothing() {
    let sf = FakeSalesforce::start().await;
    sf.org().refuse_grants = true;
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&sf.crm_toml("client_credentials", "[crm.lookup]\nenabled = false"))
        .spawn()
        .await;
    let calls: Vec<String> = (0..20).map(|_| conversation()).collect();
    for conv in &calls {
        app.publish(
            EventKind::CallNotesSubmitted,
            &call_body(conv, r#""notes":"n""#),
            None,
        )
        .await;
    }
    lane_paused(true).await;
    eventually("several refused token requests", || async {
        (sf.org().token_requests.len() >= 5).then_some(())
    })
    .await;
    assert_eq!(dead_letter_count(&app).await, 0);

    sf.org().refuse_grants = false;
    app.settled().await;
    assert_eq!(
        dead_letter_count(&app).await,
        0,
        "20 of 20 logged, none dead-lettered"
    );
    for conv in &calls {
        assert_eq!(sf.task(conv)["Description"], "n");
    }
    assert_eq!(app.consumer_info().await.num_redelivered, 0);
    app.stop().await;
}

#[tokio::test]
async fn replicas_with_old_and_new_routing_deliver_each_event_exactly_once() {
    // A rolling restart moves the partner from connection `a` to `b`: for a
    // while one replica runs the old configuration and one the new.
    let a = FakeCrm::start().await;
    let b = FakeCrm::start().await;
    let nats = start_nats().await;
    let connections = format!(
        "[crms.a]\n{}\n[crms.b]\n{}\n",
        webhook_crm(&a.url()),
        webhook_crm(&b.url())
    );
    let old = settings_with(&nats.url, "kind = \"log\"", Some("a"), &connections);
    let new = settings_with(&nats.url, "kind = \"log\"", Some("b"), &connections);
    let app = App::builder(nats).with(old).spawn().await;
    let stop_new = tokio_util::sync::CancellationToken::new();
    let new_replica = tokio::spawn(
        softphone_bridge::Application::build(new.clone())
            .await
            .unwrap()
            .run_until(stop_new.clone()),
    );
    let members = app
        .js
        .get_key_value(&app.settings.lanes.members_bucket)
        .await
        .unwrap();
    eventually("both replicas to be members of the pool", || async {
        (live_members(&members, &app.settings).await.len() == 2).then_some(())
    })
    .await;

    const EVENTS: usize = 400;
    for i in 0..EVENTS {
        let body = call_body(&conversation(), r#""reason":"active""#);
        app.publish(EventKind::CallRejected, &body, Some(&format!("move-{i}")))
            .await;
    }
    app.settled().await;
    settled(&app.js, &new).await;
    let mut seen = BTreeMap::<String, usize>::new();
    let (mut to_a, mut to_b) = (0, 0);
    for request in a.drain().await {
        to_a += 1;
        *seen.entry(idempotency_key(&request)).or_default() += 1;
    }
    for request in b.drain().await {
        to_b += 1;
        *seen.entry(idempotency_key(&request)).or_default() += 1;
    }
    assert_eq!(seen.len(), EVENTS, "no event reached neither CRM");
    assert!(seen.values().all(|n| *n == 1), "no event reached both");
    assert_eq!(to_a + to_b, EVENTS);
    stop_new.cancel();
    new_replica.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test]
async fn one_partners_backlog_does_not_delay_another_connection() {
    // Partner A's CRM takes 200 ms a call and A has 10 000 events waiting in
    // its lane; partner B's event on another connection goes straight through.
    let slow =
        FakeCrm::answering(ResponseTemplate::new(200).set_delay(Duration::from_millis(200))).await;
    let fast = FakeCrm::start().await;
    let nats = start_nats().await;
    let extra = format!(
        "[partners.{PARTNER_B}]\nbusiness_segment_id = \"{SEGMENT}\"\nchannel_origin_id = \"{ORIGIN}\"\ncrm = \"b\"\n{}{}",
        webhook_connections(["a".to_owned()], &slow.url()),
        webhook_connections(["b".to_owned()], &fast.url()),
    );
    let mut settings = settings_with(&nats.url, "kind = \"log\"", Some("a"), &extra);
    settings.worker.max_ack_pending = 20_000;
    let app = App::builder(nats).with(settings).spawn().await;
    // In chunks: the client bounds the publish acks it awaits at once.
    for _ in 0..20 {
        let mut acks = Vec::new();
        for _ in 0..500 {
            let body = partner_call_body(PARTNER, &conversation(), r#""reason":"passive""#);
            acks.push(
                app.js
                    .publish(EventKind::CallRejected.subject(), body.into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    let intake = pipeline_consumer(&app.settings, |r| *r == Role::Intake);
    consumer_settled(&app.js, intake.stream, &intake.name).await;
    let backlog = lane_info(&app.js, &app.settings, "a").await;
    assert!(
        backlog.num_pending > 9_000,
        "A's backlog waits in A's lane: {}",
        backlog.num_pending
    );

    let conv = conversation();
    let sent = tokio::time::Instant::now();
    app.publish(
        EventKind::CallRejected,
        &partner_call_body(PARTNER_B, &conv, r#""reason":"active""#),
        None,
    )
    .await;
    let request = fast.next_request().await;
    let waited = sent.elapsed();
    assert_eq!(doc(&request)["conversationId"], conv.as_str());
    assert!(
        waited < Duration::from_millis(200),
        "B's event waited {waited:?}, more than one of A's CRM calls"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_redirect_is_never_followed_and_holds_the_event() {
    // A POST that reqwest followed through a 302 would become a GET and the
    // event would be acked undelivered.
    let crm = FakeCrm::answering(
        ResponseTemplate::new(302)
            .insert_header("Location", "https://elsewhere.example/hook?token=x"),
    )
    .await;
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&webhook_crm(&crm.url()))
        .spawn()
        .await;
    app.publish(
        EventKind::CallEnded,
        &call_body(&conversation(), ""),
        Some("redirected"),
    )
    .await;
    lane_paused(true).await;
    crm.answer(ResponseTemplate::new(200));
    app.settled().await;
    let requests = crm.drain().await;
    assert!(
        requests.len() >= 3,
        "held and probed: {} requests",
        requests.len()
    );
    assert!(
        requests.iter().all(|r| r.method == wiremock::http::Method::POST
            && idempotency_key(r) == "redirected"),
        "only POSTs of the event, never a followed GET"
    );
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_loading_softphone_never_waits_on_its_crm() {
    // The partner's CRM is down and its lane paused; a softphone that loads
    // still gets its callbacks and its registry entry at once.
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let nats = start_nats().await;
    let mut settings = settings(&nats.url, &webhook_crm(&crm.url()));
    settings.http.listen = Some("127.0.0.1:0".into());
    settings.http.tokens = vec![token_settings("crm-all", TOKEN, None)];
    let app = App::builder(nats).with(settings).spawn().await;
    app.publish_calls(EventKind::CallEnded, PARTNER, "", 5)
        .await;
    lane_paused(true).await;

    let mut commands = app.client.subscribe("softphone.cmd.agent-9").await.unwrap();
    app.publish(
        EventKind::Loaded,
        &format!(r#"{{"softphoneId":"agent-9","partnerId":"{PARTNER}"}}"#),
        None,
    )
    .await;
    let first = tokio::time::timeout(PATIENCE, futures::StreamExt::next(&mut commands))
        .await
        .expect("callbacks while the CRM lane is paused")
        .unwrap();
    let callback: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(callback["type"], "disposition");
    eventually("the command API to know the softphone", || async {
        let response = app
            .http
            .get(app.url("/v1/softphones/agent-9"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (response.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn an_event_the_crm_keeps_failing_does_not_hold_its_lane_for_ever() {
    // The CRM answers 503 for one call only. Alone in its lane it looks like
    // an outage and pauses the lane; the calls that come next are used as
    // probes, go through, and the failing call then spends its own deliveries.
    let crm = FakeCrm::start().await;
    let stuck = conversation();
    crm.refuse(&stuck, ResponseTemplate::new(503));
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&webhook_crm(&crm.url()))
        .spawn()
        .await;
    let mut letters = app.dead_letters().await;
    app.publish(EventKind::CallEnded, &call_body(&stuck, ""), None)
        .await;
    lane_paused(true).await;

    let next = conversation();
    app.publish(EventKind::CallEnded, &call_body(&next, ""), None)
        .await;
    eventually("the next call to get through the paused lane", || async {
        crm.drain()
            .await
            .iter()
            .any(|r| doc(r)["conversationId"] == next.as_str())
            .then_some(())
    })
    .await;
    let others = app.steady_traffic();
    let letter = letters.next().await;
    others.abort();
    assert!(String::from_utf8_lossy(&letter.payload).contains(&stuck));
    assert!(
        header(&letter, dlq_header::REASON).contains("gave up after 3 deliveries"),
        "{}",
        header(&letter, dlq_header::REASON)
    );
    app.settled().await;
    app.stop().await;
}

#[tokio::test]
async fn each_copy_names_the_connection_the_intake_routed_it_to() {
    let nats = start_nats().await;
    let b = FakeCrm::start().await;
    let app = App::builder(nats)
        .toml(&partner_b_on_connection_b(&webhook_crm(&b.url())))
        .spawn()
        .await;
    let loaded = format!(r#"{{"softphoneId":"agent-b","partnerId":"{PARTNER_B}"}}"#);
    app.publish(EventKind::Loaded, &loaded, None).await;
    app.settled().await;
    // Both copies of B's `loaded` (its CRM lane's and the softphone lane's)
    // name connection `b`: the softphone lane asks it for the dispositions
    // instead of routing the event again.
    let lanes = app
        .js
        .get_stream(softphone_bridge::contract::LANES_STREAM)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for seq in 1..=2 {
        let message = lanes.get_raw_message(seq).await.unwrap();
        let headers = message.headers;
        seen.push((
            message.subject.to_string(),
            headers
                .get(softphone_bridge::contract::lane_header::CONNECTION)
                .map(|v| v.as_str().to_owned()),
        ));
    }
    assert!(
        seen.iter()
            .any(|(s, _)| s.starts_with("softphone.lane.crm.b.")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(s, _)| s.starts_with("softphone.lane.softphone.")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(_, c)| c.as_deref() == Some("b")),
        "{seen:?}"
    );
    app.stop().await;
}
