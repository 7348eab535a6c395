//! The `dynamics` adapter against the fake Dataverse over real HTTP: the
//! adapter alone where the order of attempts matters, the whole bridge (real
//! NATS, the call memory) where fates do.

use serde_json::{Map, Value};
use softphone_bridge::config::{CrmSettings, Settings};
use softphone_bridge::contract::{DLQ_STREAM, EventKind, dlq_header};
use softphone_bridge::crm::phonecall_id;
use softphone_bridge::crm::{Crm, CrmError, CrmEvent, DynamicsCrm};

use crate::helpers::fakes::dataverse::*;
use crate::helpers::*;

const ANI: &str = "+18883973342";
const COLUMNS: &str = "disposition_column = \"new_disposition\"\nnotes_at_column = \"new_notesat\"\nduration_seconds_column = \"new_durationseconds\"";

/// The `dynamics` adapter alone on the fake, with the extra `[crm]` keys.
fn adapter(dv: &FakeDataverse, extra: &str) -> DynamicsCrm {
    let toml = format!("[crm]\n{}", dv.crm_toml(extra));
    let settings = Settings::from_toml(&toml).unwrap();
    let CrmSettings::Dynamics(dynamics) = &settings.crm else {
        panic!("a dynamics connection")
    };
    DynamicsCrm::new(
        "crm",
        dynamics,
        softphone_bridge::crm::http_client().unwrap(),
    )
    .unwrap()
}

/// The four events of an answered inbound call, in publish order.
fn lifecycle(conv: &str) -> Vec<CrmEvent> {
    vec![
        crm_event(
            EventKind::CallIncoming,
            &call_body(conv, &format!(r#""callerANI":"{ANI}""#)),
            0,
            1,
        ),
        crm_event(
            EventKind::CallAccepted,
            &call_body(
                conv,
                &format!(r#""callerANI":"{ANI}","ivrExitPath":"billing""#),
            ),
            1,
            2,
        ),
        crm_event(
            EventKind::CallEnded,
            &call_body(
                conv,
                r#""duration":61.6,"disposition":"Sale","notes":"first","callType":"inbound""#,
            ),
            62,
            3,
        ),
        crm_event(
            EventKind::CallNotesSubmitted,
            &call_body(conv, r#""disposition":"Callback","notes":"final""#),
            90,
            4,
        ),
    ]
}

fn text<'a>(call: &'a Map<String, Value>, column: &str) -> &'a str {
    call.get(column).and_then(Value::as_str).unwrap_or_default()
}

/// What an answered inbound call leaves, whatever order its events came in.
fn assert_logged(dv: &FakeDataverse, conv: &str, contact: &str) {
    let call = dv.phonecall(&phonecall_id(&dv.uri(), conv).to_string());
    assert_eq!(call["subject"], "Inbound call");
    assert_eq!(call["directioncode"], false);
    assert_eq!(call["phonenumber"], ANI);
    assert_eq!(call["statecode"], 1, "completed: {call:?}");
    assert_eq!(call["statuscode"], 4, "received");
    assert_eq!(text(&call, "description"), "final", "the agent's last word");
    assert_eq!(text(&call, "new_disposition"), "Callback");
    assert_eq!(call["actualdurationminutes"], 2);
    assert_eq!(call["new_durationseconds"], 62);
    assert_eq!(
        call["_regardingobjectid_value"]
            .as_str()
            .map(str::to_lowercase),
        Some(contact.to_lowercase()),
        "{call:?}"
    );
}

#[tokio::test]
async fn a_call_is_one_phone_call_in_any_order_and_however_often_it_comes() {
    let dv = FakeDataverse::start().await;
    let contact = dv.add_contact("Ada Lovelace", "8883973342");
    let crm = adapter(&dv, COLUMNS);

    // In publish order, one event at a time, as a lane sends them.
    let conv = conversation();
    for e in lifecycle(&conv) {
        crm.handle(&e).await.unwrap();
    }
    assert_logged(&dv, &conv, &contact);
    let call = dv.phonecall(&phonecall_id(&dv.uri(), &conv).to_string());
    assert!(
        text(&call, "actualstart").starts_with("2027-01-15T08:00:00"),
        "{call:?}"
    );
    assert!(
        text(&call, "actualend").starts_with("2027-01-15T08:01:02"),
        "{call:?}"
    );
    let parties =
        dv.phonecall(&phonecall_id(&dv.uri(), &conv).to_string())["phonecall_activity_parties"]
            .clone();
    assert_eq!(
        parties[0]["participationtypemask"], 1,
        "the caller is the sender: {parties}"
    );

    // In reverse order (a replay), each twice: the same record, still closed.
    let reversed = conversation();
    let mut events = lifecycle(&reversed);
    events.reverse();
    for e in events.iter().chain(events.iter()) {
        crm.handle(e).await.unwrap();
    }
    assert_logged(&dv, &reversed, &contact);
    assert_eq!(dv.phonecalls(), 2);

    // Concurrently and duplicated (one batch): still one record each.
    let together = conversation();
    let events = lifecycle(&together);
    let all: Vec<&CrmEvent> = events.iter().chain(events.iter()).collect();
    let results = futures::future::join_all(all.into_iter().map(|e| crm.handle(e))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_logged(&dv, &together, &contact);
    assert_eq!(dv.phonecalls(), 3);
}

#[tokio::test]
async fn a_late_accepted_never_reopens_a_completed_call_and_an_older_word_never_wins() {
    let dv = FakeDataverse::start().await;
    let crm = adapter(&dv, COLUMNS);
    let conv = conversation();
    let id = phonecall_id(&dv.uri(), &conv).to_string();
    let [incoming, accepted, ended, notes]: [CrmEvent; 4] =
        lifecycle(&conv).try_into().ok().unwrap();
    for e in [&incoming, &ended, &notes] {
        crm.handle(e).await.unwrap();
    }
    // accepted comes last (an operator's replay): written, and closed again.
    crm.handle(&accepted).await.unwrap();
    let call = dv.phonecall(&id);
    assert_eq!(call["statecode"], 1, "{call:?}");
    assert_eq!(text(&call, "description"), "final");
    // An older word retried after the latest writes the latest again.
    let older = crm_event(
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""disposition":"Draft","notes":"draft""#),
        80,
        5,
    );
    crm.handle(&older).await.unwrap();
    let call = dv.phonecall(&id);
    assert_eq!(text(&call, "description"), "final");
    assert_eq!(text(&call, "new_disposition"), "Callback");
    assert_eq!(call["statecode"], 1);
    // Every write to the closed call reopened it and closed it again in one
    // change set: nothing was refused or rolled back.
    assert_eq!(dv.org().rollbacks, 0);
}

#[tokio::test]
async fn an_outbound_call_is_made_and_several_matches_are_kept_for_the_screen_pop() {
    let dv = FakeDataverse::start().await;
    let contact = dv.add_contact("Grace Hopper", "+18449401117");
    let account = dv.add_account("Hopper & Co", "8449401117");
    let crm = adapter(
        &dv,
        &format!("{COLUMNS}\n[crm.lookup]\nmatches_column = \"new_callermatches\""),
    );
    let conv = conversation();
    crm.handle(&crm_event(
        EventKind::CallOutboundInitiated,
        &call_body(&conv, r#""dialledTo":"+18449401117""#),
        0,
        1,
    ))
    .await
    .unwrap();
    crm.handle(&crm_event(
        EventKind::CallEnded,
        &call_body(&conv, r#""duration":30,"callType":"outbound""#),
        30,
        2,
    ))
    .await
    .unwrap();
    let call = dv.phonecall(&phonecall_id(&dv.uri(), &conv).to_string());
    assert_eq!(call["directioncode"], true);
    assert_eq!(call["subject"], "Outbound call");
    assert_eq!(call["statuscode"], 2, "made");
    let matches = text(&call, "new_callermatches");
    assert!(
        matches.contains(&format!("contact:{contact}"))
            && matches.contains(&format!("account:{account}")),
        "{matches}"
    );
    assert!(
        call.get("_regardingobjectid_value")
            .is_none_or(Value::is_null),
        "left for the agent"
    );
}

#[tokio::test]
async fn one_refused_call_in_a_batch_costs_only_its_own_events() {
    let dv = FakeDataverse::start().await;
    let crm = adapter(&dv, COLUMNS);
    let calls: Vec<String> = (0..40).map(|_| conversation()).collect();
    let refused = calls[7].clone();
    dv.org()
        .refuse
        .insert(phonecall_id(&dv.uri(), &refused).to_string());
    let events: Vec<CrmEvent> = calls
        .iter()
        .enumerate()
        .map(|(i, conv)| {
            let body = call_body(conv, &format!(r#""callerANI":"+1888555{i:04}""#));
            crm_event(EventKind::CallIncoming, &body, i as i64, i as u64)
        })
        .collect();
    let results = futures::future::join_all(events.iter().map(|e| crm.handle(e))).await;
    for (conv, result) in calls.iter().zip(&results) {
        if *conv == refused {
            assert!(
                matches!(result, Err(CrmError::Permanent { reason, .. }) if reason.contains("0x80040265")),
                "{result:?}"
            );
        } else {
            assert!(result.is_ok(), "{result:?}");
        }
    }
    assert_eq!(dv.phonecalls(), 39);
    let requests = dv.api_requests().await;
    assert!(requests <= 6, "40 new calls: {requests} Web API requests");
}

#[tokio::test]
async fn tokens_are_refreshed_once_on_401_and_doctor_checks_the_privileges() {
    let dv = FakeDataverse::start().await;
    let crm = adapter(&dv, COLUMNS);
    let ok = crm.check().await.unwrap();
    assert!(ok.contains(USER_ID), "{ok}");
    let form = dv.org().token_requests[0].clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], format!("{}/.default", dv.uri()));

    dv.expire_tokens();
    let conv = conversation();
    crm.handle(&lifecycle(&conv)[0]).await.unwrap();
    assert_eq!(dv.org().token_requests.len(), 2, "one refresh");

    dv.org().privileges.retain(|p| p != "prvWriteActivity");
    let missing = crm.check().await.unwrap_err();
    assert!(missing.contains("prvWriteActivity"), "{missing}");
    // A wrong secret is named without the secret.
    let crm_bad = {
        let toml = format!(
            "[crm]\n{}",
            dv.crm_toml("").replace(CLIENT_SECRET, "wrong-secret-value")
        );
        let settings = Settings::from_toml(&toml).unwrap();
        let CrmSettings::Dynamics(d) = &settings.crm else {
            unreachable!()
        };
        DynamicsCrm::new("crm", d, softphone_bridge::crm::http_client().unwrap()).unwrap()
    };
    let refused = crm_bad.check().await.unwrap_err();
    assert!(
        refused.contains("invalid_client") && !refused.contains("wrong-secret-value"),
        "{refused}"
    );
}

/// The whole bridge on one environment.
async fn spawn(dv: &FakeDataverse, extra: &str) -> App {
    App::builder(start_nats().await)
        .crm(&dv.crm_toml(extra))
        // A paused lane probes its environment often: the outages below are short.
        .settings(|s| s.lanes.probe_every = std::time::Duration::from_millis(300))
        .spawn()
        .await
}

async fn dead_letter_count(app: &App) -> u64 {
    let mut stream = app.js.get_stream(DLQ_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Publishes the lifecycle of `conv` as a softphone would.
async fn publish_call(app: &App, conv: &str) {
    for e in lifecycle(conv) {
        app.publish(e.kind(), std::str::from_utf8(&e.raw).unwrap(), None)
            .await;
    }
}

#[tokio::test]
async fn through_the_bridge_a_token_outage_and_a_429_storm_hold_calls_and_lose_none() {
    let dv = FakeDataverse::start().await;
    let contact = dv.add_contact("Ada Lovelace", ANI);
    let app = spawn(&dv, COLUMNS).await;
    let first = conversation();
    publish_call(&app, &first).await;
    app.settled().await;
    assert_logged_in_order(&dv, &first, &contact);

    // The token endpoint goes down and every token is revoked: the lane
    // holds the calls, spending none of their deliveries.
    dv.org().token_down = true;
    dv.expire_tokens();
    let during: Vec<String> = (0..5).map(|_| conversation()).collect();
    for conv in &during {
        publish_call(&app, conv).await;
    }
    eventually("the token endpoint to be asked again", || async {
        (dv.org().token_requests.len() >= 3).then_some(())
    })
    .await;
    dv.org().token_down = false;
    // Then a storm of 429s with Retry-After: 1.
    dv.org().throttle = Some((6, 1));
    let storm: Vec<String> = (0..5).map(|_| conversation()).collect();
    for conv in &storm {
        publish_call(&app, conv).await;
    }
    eventually("every call to be logged", || async {
        (dv.phonecalls() == 11).then_some(())
    })
    .await;
    app.settled().await;
    for conv in during.iter().chain(&storm) {
        assert_logged_in_order(&dv, conv, &contact);
    }
    assert!(dv.org().throttled >= 1, "the storm was met");
    assert_eq!(dead_letter_count(&app).await, 0, "nothing dead-lettered");
    app.stop().await;
}

/// [`assert_logged`], and the writes reached the record in publish order.
fn assert_logged_in_order(dv: &FakeDataverse, conv: &str, contact: &str) {
    assert_logged(dv, conv, contact);
    let history = dv.history(&phonecall_id(&dv.uri(), conv).to_string());
    let words: Vec<&str> = history
        .iter()
        .filter_map(|body| body.get("description").and_then(Value::as_str))
        .collect();
    assert_eq!(words.last(), Some(&"final"), "{history:?}");
}

#[tokio::test]
async fn through_the_bridge_a_refused_call_is_dead_lettered_with_dataverses_code_and_others_are_written()
 {
    let dv = FakeDataverse::start().await;
    let app = spawn(&dv, COLUMNS).await;
    let refused = conversation();
    dv.org()
        .refuse
        .insert(phonecall_id(&dv.uri(), &refused).to_string());
    let good: Vec<String> = (0..10).map(|_| conversation()).collect();
    let mut letters = app.dead_letters().await;
    app.publish(
        EventKind::CallIncoming,
        &call_body(&refused, &format!(r#""callerANI":"{ANI}""#)),
        None,
    )
    .await;
    for conv in &good {
        app.publish(
            EventKind::CallIncoming,
            &call_body(conv, &format!(r#""callerANI":"{ANI}""#)),
            None,
        )
        .await;
    }
    let letter = letters.next().await;
    let reason = header(&letter, dlq_header::REASON);
    assert!(reason.contains("0x80040265"), "{reason}");
    assert!(header(&letter, dlq_header::DETAIL).contains(REFUSAL));
    app.settled().await;
    assert_eq!(dv.phonecalls(), 10);
    assert_eq!(dead_letter_count(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn each_partner_writes_only_to_its_own_environment() {
    let a = FakeDataverse::start().await;
    let b = FakeDataverse::start().await;
    let nats = start_nats().await;
    let app = App::builder(nats)
        .crm(&a.crm_toml(COLUMNS))
        .toml(&partner_b_on_connection_b(&b.crm_toml(COLUMNS)))
        .spawn()
        .await;
    let mine = conversation();
    let theirs = conversation();
    app.publish(
        EventKind::CallIncoming,
        &call_body(&mine, &format!(r#""callerANI":"{ANI}""#)),
        None,
    )
    .await;
    app.publish(
        EventKind::CallIncoming,
        &partner_call_body(PARTNER_B, &theirs, &format!(r#""callerANI":"{ANI}""#)),
        None,
    )
    .await;
    app.settled().await;
    assert_eq!((a.phonecalls(), b.phonecalls()), (1, 1));
    a.phonecall(&phonecall_id(&a.uri(), &mine).to_string());
    b.phonecall(&phonecall_id(&b.uri(), &theirs).to_string());
    assert!(
        !a.org()
            .phonecalls
            .contains_key(&phonecall_id(&a.uri(), &theirs).to_string())
    );
    assert!(
        !b.org()
            .phonecalls
            .contains_key(&phonecall_id(&b.uri(), &mine).to_string())
    );
    app.stop().await;
}

#[tokio::test]
async fn through_the_bridge_a_call_published_in_reverse_is_one_closed_call_decided_by_the_call_memory()
 {
    let dv = FakeDataverse::start().await;
    let contact = dv.add_contact("Ada Lovelace", ANI);
    let app = spawn(&dv, COLUMNS).await;
    let conv = conversation();
    let mut events = lifecycle(&conv);
    events.reverse();
    for e in events.iter().chain(events.iter()) {
        // Each twice, under new ids: a replay of the whole call.
        app.publish(e.kind(), std::str::from_utf8(&e.raw).unwrap(), None)
            .await;
    }
    app.settled().await;
    assert_logged(&dv, &conv, &contact);
    assert_eq!(dv.phonecalls(), 1);
    assert_eq!(
        dv.org().rollbacks,
        0,
        "no write met a closed call unprepared"
    );
    // The call memory knew the call after its first write: one read at most.
    let reads = dv
        .org()
        .queries
        .iter()
        .filter(|(set, _)| set == "phonecalls")
        .count();
    assert!(reads <= 1, "{reads} reads of the phone call");
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}
