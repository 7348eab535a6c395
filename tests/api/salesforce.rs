//! The Salesforce CRM end to end (real NATS, the bridge, a fake org over
//! HTTP): Task writes, reordering and redelivery, tokens.

use std::time::Duration;

use serde_json::Value;
use softphone_bridge::contract::{DLQ_STREAM, EventKind};
use wiremock::{Request, ResponseTemplate};

use crate::helpers::fakes::salesforce::*;
use crate::helpers::*;

pub const ANI: &str = "+18883973342";

pub async fn spawn(sf: &FakeSalesforce, auth: &str, extra: &str) -> App {
    let nats = start_nats().await;
    App::builder(nats)
        .crm(&sf.crm_toml(auth, extra))
        .spawn()
        .await
}

/// Publishes one event and waits until the bridge is done with it.
pub async fn deliver(app: &App, kind: EventKind, body: &str) {
    app.publish(kind, body, None).await;
    app.settled().await;
}

pub async fn dead_letter_count(app: &App) -> u64 {
    let mut stream = app.js.get_stream(DLQ_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

pub fn body_of(request: &Request) -> serde_json::Map<String, Value> {
    serde_json::from_slice(&request.body).expect("a JSON object body")
}

/// The one record of a collections request.
pub fn record_of(request: &Request) -> serde_json::Map<String, Value> {
    let body = body_of(request);
    assert_eq!(body["allOrNone"], false);
    let records = body["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "one record");
    records[0].as_object().unwrap().clone()
}

pub fn is_api(request: &Request) -> bool {
    request.url.path().starts_with("/services/data/")
}

#[tokio::test]
async fn every_call_event_writes_its_task_and_presence_is_upserted() {
    let sf = FakeSalesforce::start().await;
    sf.org()
        .people
        .push(("Contact", "003ADA", "Ada Lovelace", ANI));
    let extra = format!(
        r#"
[crm.task_fields]
language = "Language__c"
ivrExitPath = "Ivr_Exit_Path__c"
recordingStatus = "Recording_Status__c"
dialledTo = "Dialled_To__c"
partnerId = "Partner_Id__c"

[crm.presence]
action = "upsert"
object = "Agent_Presence__c"
agent_field = "Agent_Id__c"
status_field = "Status__c"
statuses = {{ "{STATUS}" = "Available" }}
"#
    );
    let app = spawn(&sf, "jwt_bearer", &extra).await;
    let conv = conversation();

    // incoming: a token (JWT bearer), a caller lookup, then the Task is created.
    deliver(
        &app,
        EventKind::CallIncoming,
        &call_body(&conv, &format!(r#""callerANI":"{ANI}","language":"fr_FR""#)),
    )
    .await;
    let requests = sf.drain().await;
    let paths: Vec<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /services/oauth2/token",
            "GET /services/data/v67.0/search/",
            "POST /services/data/v67.0/composite/sobjects"
        ]
    );
    {
        let org = sf.org();
        let form = &org.token_requests[0];
        assert_eq!(
            form["grant_type"],
            "urn:ietf:params:oauth:grant-type:jwt-bearer"
        );
        assert_eq!(
            form.len(),
            2,
            "grant_type and assertion only: {:?}",
            form.keys()
        );
        let claims = &org.assertions[0];
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], USERNAME);
        assert_eq!(claims["aud"], "https://login.salesforce.com");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp > now && exp <= now + 300, "short-lived assertion");
    }
    let login_host = sf.server.address().to_string();
    assert_eq!(
        requests[0].headers.get("host").unwrap().to_str().unwrap(),
        login_host
    );
    for request in &requests[1..] {
        assert_eq!(
            request.headers.get("authorization").unwrap(),
            "Bearer 00Dtest!token-1"
        );
        let host = request.headers.get("host").unwrap().to_str().unwrap();
        assert!(
            host.starts_with("localhost:"),
            "API calls go to the token's instance_url, not {host}"
        );
    }
    let created = record_of(&requests[2]);
    assert_eq!(created["attributes"]["type"], "Task");
    assert_eq!(created["TaskSubtype"], "Call");
    assert_eq!(created[EXTERNAL_ID], conv.as_str());
    assert_eq!(created["WhoId"], "003ADA");
    assert_eq!(created["Partner_Id__c"], PARTNER);
    let task = sf.task(&conv);
    for (field, value) in [
        ("Subject", "Inbound call"),
        ("Type", "Call"),
        ("CallType", "Inbound"),
        ("CallObject", conv.as_str()),
        ("Language__c", "fr_FR"),
        ("Status", "Not Started"),
    ] {
        assert_eq!(task[field], value, "{field}");
    }
    assert!(task["ActivityDate"].as_str().unwrap().len() == 10, "a date");

    // accepted: enriches by upsert on the external id, the lookup is cached.
    let accepted = format!(
        r#""callerANI":"{ANI}","ivrExitPath":"billing","recordingStatus":"ON","channelName":"""#
    );
    deliver(&app, EventKind::CallAccepted, &call_body(&conv, &accepted)).await;
    let requests = sf.drain().await;
    assert_eq!(
        requests.len(),
        1,
        "one upsert, no search: {:?}",
        requests.iter().map(|r| r.url.path()).collect::<Vec<_>>()
    );
    assert_eq!(requests[0].method.as_str(), "PATCH");
    assert_eq!(
        requests[0].url.path(),
        format!("/services/data/v67.0/composite/sobjects/Task/{EXTERNAL_ID}")
    );
    let body = record_of(&requests[0]);
    assert_eq!(body[EXTERNAL_ID], conv.as_str());
    assert!(
        !body.contains_key("TaskSubtype"),
        "the Task exists: no create-only field"
    );
    assert!(
        !body.contains_key("Status"),
        "an opening event never writes Status"
    );
    assert!(
        !body.contains_key("Channel_Name__c") && !body.values().any(|v| v == ""),
        "no empty values"
    );
    let task = sf.task(&conv);
    assert_eq!(task["Ivr_Exit_Path__c"], "billing");
    assert_eq!(task["Recording_Status__c"], "ON");

    // ended: completes it.
    let ended = r#""duration":125.4,"disposition":"Booked","notes":"ok","callType":"inbound""#;
    deliver(&app, EventKind::CallEnded, &call_body(&conv, ended)).await;
    let task = sf.task(&conv);
    assert_eq!(task["Status"], "Completed");
    assert_eq!(task["CallDurationInSeconds"], 125);
    assert_eq!(task["CallDisposition"], "Booked");
    assert_eq!(task["Description"], "ok");

    // notes_submitted: the agent's last word.
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(
            &conv,
            r#""disposition":"Callback","notes":"call back at 5""#,
        ),
    )
    .await;
    let task = sf.task(&conv);
    assert_eq!(
        (&task["CallDisposition"], &task["Description"]),
        (&"Callback".into(), &"call back at 5".into())
    );
    assert_eq!(task["Status"], "Completed");
    assert!(
        sf.org().queried.is_empty(),
        "ended and the notes were decided on the call memory, not a Task read"
    );

    // outbound_initiated: another Task, outbound, the dialled number looked up.
    let out = conversation();
    deliver(
        &app,
        EventKind::CallOutboundInitiated,
        &call_body(&out, r#""dialledTo":"+18449401117""#),
    )
    .await;
    let task = sf.task(&out);
    assert_eq!(task["CallType"], "Outbound");
    assert_eq!(task["Dialled_To__c"], "+18449401117");
    assert!(!task.contains_key("WhoId"), "nobody has that number");

    // rejected (passive): a missed call, completed.
    let missed = conversation();
    deliver(
        &app,
        EventKind::CallRejected,
        &call_body(&missed, r#""reason":"passive""#),
    )
    .await;
    let task = sf.task(&missed);
    assert_eq!(
        (&task["Status"], &task["CallDisposition"]),
        (&"Completed".into(), &"Missed".into())
    );
    let declined = conversation();
    deliver(
        &app,
        EventKind::CallRejected,
        &call_body(&declined, r#""reason":"active""#),
    )
    .await;
    assert_eq!(sf.task(&declined)["CallDisposition"], "Rejected");

    // statusChanged: the agent's presence record, status GUID mapped to a name.
    deliver(
        &app,
        EventKind::AgentStatusChanged,
        &format!(r#"{{"softphoneId":"{STATUS}","instanceId":"agent-1"}}"#),
    )
    .await;
    assert_eq!(sf.org().presence["agent-1"]["Status__c"], "Available");

    assert_eq!(sf.org().token_requests.len(), 1, "the token is cached");
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn reordered_and_redelivered_events_keep_one_completed_task() {
    let sf = FakeSalesforce::start().await;
    let app = spawn(&sf, "client_credentials", "").await;
    let conv = conversation();
    let ended = call_body(
        &conv,
        r#""duration":61,"disposition":"Booked","notes":"first","callType":"inbound""#,
    );

    // ended first: the Task is created by the upsert, already completed.
    deliver(&app, EventKind::CallEnded, &ended).await;
    assert_eq!(sf.task(&conv)["Status"], "Completed");
    // notes: the first attempt meets a 503 (the org's trouble): the event is
    // held, not redelivered, and the next attempt writes them.
    sf.org().script.push_back(ResponseTemplate::new(503));
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""disposition":"Callback","notes":"final""#),
    )
    .await;
    // late opening events: they never reopen the Task, and incoming's create
    // meets the existing Task and falls back to the upsert.
    deliver(
        &app,
        EventKind::CallAccepted,
        &call_body(&conv, &format!(r#""callerANI":"{ANI}""#)),
    )
    .await;
    deliver(
        &app,
        EventKind::CallIncoming,
        &call_body(&conv, &format!(r#""callerANI":"{ANI}""#)),
    )
    .await;
    // ended again (a redelivery after a lost ack): fills nothing the agent wrote.
    deliver(&app, EventKind::CallEnded, &ended).await;

    {
        let org = sf.org();
        assert_eq!(org.tasks.len(), 1, "one Task per conversation");
        let task = &org.tasks[&conv];
        assert_eq!(task["Status"], "Completed");
        assert_eq!(task["CallDisposition"], "Callback");
        assert_eq!(task["Description"], "final");
        assert_eq!(task["CallDurationInSeconds"], 61);
        assert_eq!(task["CallType"], "Inbound");
    }
    assert_eq!(dead_letter_count(&app).await, 0);
    let info = app.consumer_info().await;
    assert_eq!(
        info.deliveries, info.messages,
        "the 503 held its event: no redelivery spent"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_refreshed_by_one_token_request() {
    let sf = FakeSalesforce::start().await;
    let app = spawn(&sf, "client_credentials", "").await;
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(&conversation(), r#""notes":"n""#),
    )
    .await;
    {
        let org = sf.org();
        assert_eq!(org.token_requests.len(), 1);
        let form = &org.token_requests[0];
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], CLIENT_ID);
        assert_eq!(form["client_secret"], CLIENT_SECRET);
    }
    // Every session dies; a slow token endpoint makes the callers pile up.
    // Slow answers (the 401s included) keep every call in flight together.
    sf.expire_tokens();
    sf.org().token_delay = Some(Duration::from_millis(500));
    sf.org().api_delay = Some(Duration::from_secs(1));
    let conversations: Vec<String> = (0..8).map(|_| conversation()).collect();
    for conv in &conversations {
        app.publish(
            EventKind::CallNotesSubmitted,
            &call_body(conv, r#""notes":"n""#),
            None,
        )
        .await;
    }
    app.settled().await;
    for conv in &conversations {
        assert_eq!(sf.task(conv)["Description"], "n");
    }
    let requests = sf.drain().await;
    let refused = requests
        .iter()
        .filter(|r| {
            is_api(r) && r.headers.get("authorization").unwrap() == "Bearer 00Dtest!token-1"
        })
        .count();
    assert!(
        refused >= 2,
        "several calls met the expired session at once ({refused})"
    );
    assert_eq!(sf.org().token_requests.len(), 2, "exactly one refresh");
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}
