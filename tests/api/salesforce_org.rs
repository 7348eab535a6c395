//! The Salesforce CRM end to end: error classes, the API-usage governor,
//! caller lookups and screen pops, picklist dispositions.

use std::time::Duration;

use serde_json::Value;
use softphone_bridge::config::{CrmSettings, Settings};
use softphone_bridge::contract::{EventKind, dlq_header};
use wiremock::{Request, ResponseTemplate};

use crate::helpers::fakes::salesforce::*;
use crate::helpers::*;
use crate::salesforce::{dead_letter_count, deliver, spawn};

#[tokio::test]
async fn salesforce_errors_are_retried_or_dead_lettered_with_the_body() {
    let sf = FakeSalesforce::start().await;
    let app = spawn(&sf, "client_credentials", "limit_retry_after = \"1s\"").await;
    let notes = |conv: &str| call_body(conv, r#""notes":"n""#);
    deliver(&app, EventKind::CallNotesSubmitted, &notes(&conversation())).await;

    // Transient: answered once, then the redelivery succeeds.
    let limit = ResponseTemplate::new(403)
        .set_body_json(serde_json::json!([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]));
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_secs(4));
    for (what, answer) in [
        ("403 REQUEST_LIMIT_EXCEEDED", limit),
        (
            "429",
            ResponseTemplate::new(429).insert_header("Retry-After", "1"),
        ),
        ("503", ResponseTemplate::new(503)),
        ("timeout", slow),
    ] {
        let conv = conversation();
        sf.org().script.push_back(answer);
        deliver(&app, EventKind::CallNotesSubmitted, &notes(&conv)).await;
        assert_eq!(sf.task(&conv)["Description"], "n", "{what} was retried");
    }
    assert_eq!(dead_letter_count(&app).await, 0);

    // Permanent: dead-lettered at once, with Salesforce's error body.
    let invalid = r#"[{"message":"No such column 'X__c' on sobject of type Task","errorCode":"INVALID_FIELD"}]"#;
    let several =
        r#"["/services/data/v67.0/sobjects/Task/00T1","/services/data/v67.0/sobjects/Task/00T2"]"#;
    let missing =
        r#"[{"message":"The requested resource does not exist","errorCode":"NOT_FOUND"}]"#;
    let mut letters = app.dead_letters().await;
    for (status, body, reason) in [
        (400, invalid, "400 Bad Request INVALID_FIELD"),
        (300, several, "several records"),
        (404, missing, "404 Not Found NOT_FOUND"),
    ] {
        sf.org()
            .script
            .push_back(ResponseTemplate::new(status).set_body_raw(body, "application/json"));
        let conv = conversation();
        app.publish(EventKind::CallNotesSubmitted, &notes(&conv), None)
            .await;
        let letter = letters.next().await;
        assert!(
            header(&letter, dlq_header::REASON).contains(reason),
            "{}",
            header(&letter, dlq_header::REASON)
        );
        assert_eq!(header(&letter, dlq_header::DETAIL), body);
        assert_eq!(header(&letter, dlq_header::DELIVERIES), "1", "not retried");
    }
    app.settled().await;
    app.stop().await;
}

#[tokio::test]
async fn api_usage_past_the_share_postpones_calls() {
    let metrics = softphone_bridge::telemetry::metric::handle();
    let sf = FakeSalesforce::start().await;
    sf.org().limit_info = Some("api-usage=95/100".into());
    let app = spawn(
        &sf,
        "client_credentials",
        // One request per notes_submitted (no stamp to read first).
        "max_api_usage = 0.9\nlimit_retry_after = \"2s\"\nnotes_at_field = \"\"",
    )
    .await;
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(&conversation(), r#""notes":"n""#),
    )
    .await;
    sf.drain().await;

    // The org reported 95 of 100 calls used: the next event waits instead of calling.
    sf.org().limit_info = Some("api-usage=10/100".into());
    let started = tokio::time::Instant::now();
    let conv = conversation();
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""notes":"later""#),
    )
    .await;
    let exposed = metrics.render();
    for sample in [
        r#"softphone_bridge_salesforce_api_used{crm="crm"} 10"#,
        r#"softphone_bridge_salesforce_api_limit{crm="crm"} 100"#,
    ] {
        assert!(
            exposed.contains(sample),
            "{sample} missing from:\n{exposed}"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "postponed by limit_retry_after"
    );
    assert_eq!(sf.task(&conv)["Description"], "later");
    let calls = sf.drain().await;
    assert_eq!(
        calls.len(),
        1,
        "the postponed delivery made no call: {:?}",
        calls.iter().map(|r| r.url.path()).collect::<Vec<_>>()
    );
    let info = app.consumer_info().await;
    assert_eq!(
        info.deliveries, info.messages,
        "the postponement held the event: no redelivery spent"
    );
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn caller_lookups_with_no_one_or_several_matches_and_screen_pops() {
    let sf = FakeSalesforce::start().await;
    sf.org().people.extend([
        ("Contact", "003ONE", "Grace Hopper", "+18885550001"),
        ("Contact", "003TWO", "Alan Turing", "+18885550002"),
        ("Lead", "00QTWO", "Alan Turing (lead)", "+18885550002"),
    ]);
    let app = spawn(
        &sf,
        "client_credentials",
        "[crm.lookup]\nscreen_pop_event = \"Softphone_Screen_Pop__e\"\nmatches_field = \"Softphone_Caller_Matches__c\"",
    )
    .await;
    let calls = [
        ("+18885550000", 0),
        ("+18885550001", 1),
        ("+18885550002", 2),
        ("+18885550001", 1),
    ];
    let mut conversations = Vec::new();
    for (number, _) in calls {
        let conv = conversation();
        deliver(
            &app,
            EventKind::CallIncoming,
            &call_body(&conv, &format!(r#""callerANI":"{number}""#)),
        )
        .await;
        conversations.push(conv);
    }
    let requests = sf.drain().await;
    let searches: Vec<&Request> = requests
        .iter()
        .filter(|r| r.url.path().ends_with("/search/"))
        .collect();
    assert_eq!(searches.len(), 3, "the repeated number came from the cache");
    assert_eq!(
        searches[1].url.query().unwrap(),
        "q=FIND+%7B%5C%2B18885550001+OR+8885550001%7D+IN+PHONE+FIELDS+RETURNING+Contact%28Id%2CName%2CPhone%2CMobilePhone%2CHomePhone%2COtherPhone%2CAssistantPhone%29%2C+Lead%28Id%2CName%2CPhone%2CMobilePhone%29"
    );
    assert!(!sf.task(&conversations[0]).contains_key("WhoId"));
    assert_eq!(sf.task(&conversations[1])["WhoId"], "003ONE");
    assert!(
        !sf.task(&conversations[2]).contains_key("WhoId"),
        "several matches: no guess"
    );
    assert_eq!(
        sf.task(&conversations[2])["Softphone_Caller_Matches__c"],
        "Contact:003TWO, Lead:00QTWO",
        "several matches: recorded on the Task"
    );
    assert!(
        !sf.task(&conversations[1])
            .contains_key("Softphone_Caller_Matches__c")
    );
    assert_eq!(sf.task(&conversations[3])["WhoId"], "003ONE");

    {
        let org = sf.org();
        assert_eq!(org.events.len(), 4, "one screen pop per ringing call");
        for ((name, body), ((number, count), conv)) in
            org.events.iter().zip(calls.iter().zip(&conversations))
        {
            assert_eq!(name, "Softphone_Screen_Pop__e");
            assert_eq!(body["Conversation_Id__c"], conv.as_str());
            assert_eq!(body["Caller_Number__c"], *number);
            assert_eq!(body["Match_Count__c"], *count);
        }
        let several: Vec<Value> =
            serde_json::from_str(org.events[2].1["Matches__c"].as_str().unwrap()).unwrap();
        let ids: Vec<&str> = several.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["003TWO", "00QTWO"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn dispositions_are_read_from_the_picklist_and_cached() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("[crm.dispositions]\nfield = \"Call_Result__c\"");
    for _ in 0..2 {
        let values = crm.picklist_dispositions().await.unwrap();
        assert_eq!(
            values,
            Some(vec!["Booked".to_owned(), "Call back".to_owned()]),
            "active values only"
        );
    }
    let describes = sf
        .drain()
        .await
        .iter()
        .filter(|r| r.url.path().ends_with("/sobjects/Task/describe"))
        .count();
    assert_eq!(describes, 1, "cached");
}

/// Asks `softphone.load` (retrying while the responder is not subscribed yet).
async fn load(app: &App, body: String) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match app
            .client
            .request(
                softphone_bridge::contract::LOAD_REQUEST_SUBJECT,
                body.clone().into(),
            )
            .await
        {
            Ok(reply) => return serde_json::from_slice(&reply.payload).unwrap(),
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no load reply: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn softphones_load_the_orgs_picklist_as_their_dispositions() {
    let sf = FakeSalesforce::start().await;
    let nats = start_nats().await;
    let acme = sf.crm_toml(
        "client_credentials",
        "[crms.acme.dispositions]\nfield = \"Call_Result__c\"",
    );
    let app = App::builder(nats)
        .partner_crm("acme")
        .toml(&format!("[crms.acme]\n{acme}"))
        .spawn()
        .await;

    let routed = load(
        &app,
        format!(r#"{{"softphoneId":"agent-1","partnerId":"{PARTNER}"}}"#),
    )
    .await;
    assert_eq!(
        routed["callbacks"][0],
        serde_json::json!({"type": "disposition", "payload": ["Booked", "Call back"]})
    );
    let unrouted = load(&app, r#"{"softphoneId":"agent-2"}"#.to_owned()).await;
    assert_eq!(
        unrouted["callbacks"][0]["payload"],
        serde_json::json!(["Sale", "No sale"]),
        "the configured list"
    );
    app.stop().await;
}

#[tokio::test]
async fn presence_is_published_as_a_platform_event_with_the_mapped_status() {
    let sf = FakeSalesforce::start().await;
    let presence = format!(
        "[crm.presence]\naction = \"platform_event\"\nobject = \"Agent_Presence__e\"\nstatuses = {{ \"{STATUS}\" = \"Available\" }}"
    );
    let app = spawn(&sf, "client_credentials", &presence).await;
    let unmapped = "0b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5e";
    for status in [STATUS, unmapped] {
        let body = format!(r#"{{"softphoneId":"{status}","instanceId":"agent/7?x"}}"#);
        deliver(&app, EventKind::AgentStatusChanged, &body).await;
    }
    {
        let org = sf.org();
        let bodies: Vec<&Value> = org
            .events
            .iter()
            .map(|(name, body)| {
                assert_eq!(name, "Agent_Presence__e");
                body
            })
            .collect();
        assert_eq!(bodies[0]["Status__c"], "Available");
        assert_eq!(bodies[0]["Status_Id__c"], STATUS);
        assert_eq!(bodies[0]["Agent_Id__c"], "agent/7?x");
        assert_eq!(
            bodies[1]["Status__c"], unmapped,
            "an unmapped status is written as its GUID"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn presence_upserts_encode_the_agent_id_as_one_path_segment() {
    let sf = FakeSalesforce::start().await;
    let presence = "[crm.presence]\naction = \"upsert\"\nobject = \"Agent_Presence__c\"\nagent_field = \"Agent_Id__c\"";
    let app = spawn(&sf, "client_credentials", presence).await;
    let body = format!(r#"{{"softphoneId":"{STATUS}","instanceId":"agent/7?x#y"}}"#);
    deliver(&app, EventKind::AgentStatusChanged, &body).await;
    let requests = sf.drain().await;
    let upsert = requests
        .iter()
        .find(|r| r.method.as_str() == "PATCH")
        .expect("an upsert");
    assert_eq!(
        upsert.url.path(),
        "/services/data/v67.0/sobjects/Agent_Presence__c/Agent_Id__c/agent%2F7%3Fx%23y"
    );
    assert_eq!(upsert.url.query(), None);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_screen_pop_does_not_cost_the_task() {
    let sf = FakeSalesforce::start().await;
    sf.org()
        .people
        .push(("Contact", "003ONE", "Grace Hopper", "+18885550001"));
    // The fake org has no such Platform Event: 404 NOT_FOUND.
    let app = spawn(
        &sf,
        "client_credentials",
        "[crm.lookup]\nscreen_pop_event = \"Not_Deployed_Event\"",
    )
    .await;
    let conv = conversation();
    deliver(
        &app,
        EventKind::CallIncoming,
        &call_body(&conv, r#""callerANI":"+18885550001""#),
    )
    .await;
    assert_eq!(sf.task(&conv)["WhoId"], "003ONE");
    assert!(sf.org().events.is_empty());
    assert_eq!(dead_letter_count(&app).await, 0);
    let info = app.consumer_info().await;
    assert_eq!(info.deliveries, info.messages, "no retry");
    app.stop().await;
}

#[test]
fn the_configuration_in_deploy_salesforce_md_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/salesforce.md"))
        .unwrap();
    let start = doc.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let settings = Settings::from_toml(&doc[start..end]).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(settings.crms["acme"], CrmSettings::Salesforce(_)));
    let rendered = settings.to_redacted_toml();
    assert!(rendered.contains("kind = \"salesforce\""));
}

#[tokio::test]
async fn a_hanging_org_delays_loading_softphones_once_then_not_at_all() {
    let sf = FakeSalesforce::start().await;
    sf.org().api_delay = Some(Duration::from_secs(10));
    let nats = start_nats().await;
    let acme = sf.crm_toml(
        "client_credentials",
        "[crms.acme.dispositions]\nfield = \"Call_Result__c\"",
    );
    let app = App::builder(nats)
        .partner_crm("acme")
        .toml(&format!("[crms.acme]\n{acme}"))
        .spawn()
        .await;
    let body = format!(r#"{{"softphoneId":"agent-1","partnerId":"{PARTNER}"}}"#);

    let started = tokio::time::Instant::now();
    let first = load(&app, body.clone()).await;
    assert_eq!(
        first["callbacks"][0]["payload"],
        serde_json::json!(["Booked", "Cancelled", "Callback"])
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded wait: {:?}",
        started.elapsed()
    );
    let started = tokio::time::Instant::now();
    let second = load(&app, body).await;
    assert_eq!(
        second["callbacks"][0]["payload"],
        serde_json::json!(["Booked", "Cancelled", "Callback"])
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the failing org is left alone: {:?}",
        started.elapsed()
    );
    let describes = sf
        .drain()
        .await
        .iter()
        .filter(|r| r.url.path().ends_with("/describe"))
        .count();
    assert_eq!(describes, 1);
    app.stop().await;
}
