//! Salesforce writes batched per org (sObject Collections) and the fixes
//! that came with them: the adapter alone against the fake org where the
//! order of attempts matters, the whole bridge where fates do.

use serde_json::Value;
use softphone_bridge::contract::EventKind;
use softphone_bridge::crm::{Crm, CrmError, CrmEvent};
use wiremock::ResponseTemplate;

use crate::helpers::fakes::salesforce::*;
use crate::helpers::*;
use crate::salesforce::{dead_letter_count, deliver, spawn};

#[tokio::test]
async fn concurrent_writes_go_as_a_few_requests_each_event_with_its_own_result() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("");
    let calls: Vec<(String, String)> = (0..60)
        .map(|i| (conversation(), format!("+1888555{i:04}")))
        .collect();
    // A refused record among them: its event alone is refused.
    let incoming: Vec<CrmEvent> = calls
        .iter()
        .enumerate()
        .map(|(i, (conv, ani))| {
            let body = call_body(conv, &format!(r#""callerANI":"{ani}""#));
            crm_event(EventKind::CallIncoming, &body, i as i64, i as u64)
        })
        .collect();
    // Warm the token, then let the org be busy for a while.
    crm.handle(&incoming[0]).await.unwrap();
    sf.drain().await;
    sf.org()
        .item_errors
        .push_back("FIELD_CUSTOM_VALIDATION_EXCEPTION");
    let results = futures::future::join_all(incoming[1..].iter().map(|e| crm.handle(e))).await;
    let refused: Vec<&CrmError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(matches!(refused[0], CrmError::Permanent { .. }));
    let requests = sf.api_calls().await;
    assert!(
        requests <= 6,
        "59 incoming calls (59 lookups, 59 creates): {requests} API requests"
    );
    assert_eq!(sf.org().tasks.len(), 59);
    for task in sf.org().tasks.values() {
        assert_eq!(task["TaskSubtype"], "Call");
    }

    // Their ended events: one read for all, fills decided per Task.
    let ended: Vec<CrmEvent> = calls
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, (conv, _))| {
            let body = call_body(conv, r#""duration":30,"disposition":"Booked","notes":"n""#);
            crm_event(EventKind::CallEnded, &body, 100 + i as i64, 100 + i as u64)
        })
        .collect();
    let results = futures::future::join_all(ended.iter().map(|e| crm.handle(e))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 59);
    let requests = sf.api_calls().await;
    assert!(requests <= 4, "59 ended calls: {requests} API requests");
    let widest = sf.org().queried.iter().map(Vec::len).max().unwrap();
    assert!(widest > 1, "reads batched in one SOQL IN query");
    let completed = sf
        .org()
        .tasks
        .values()
        .filter(|t| t["Status"] == "Completed" && t["Description"] == "n")
        .count();
    assert_eq!(completed, 59, "the refused one's Task created by its ended");
}

#[tokio::test]
async fn a_retried_older_notes_never_overwrites_newer_notes() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("");
    let conv = conversation();
    let older = crm_event(
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""disposition":"Callback","notes":"older""#),
        10,
        10,
    );
    let newer = crm_event(
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""disposition":"Booked","notes":"newer""#),
        20,
        20,
    );
    crm.handle(&crm_event(
        EventKind::CallIncoming,
        &call_body(&conv, ""),
        0,
        1,
    ))
    .await
    .unwrap();
    // The older one meets the org's trouble; meanwhile (another replica)
    // the newer one is written; then the older one is retried.
    sf.org().script.push_back(ResponseTemplate::new(503));
    let first = crm.handle(&older).await;
    assert!(
        matches!(first, Err(CrmError::Unavailable { .. })),
        "{first:?}"
    );
    crm.handle(&newer).await.unwrap();
    crm.handle(&older).await.unwrap();
    assert_eq!(sf.word(&conv), word("newer", "Booked", ":20.000Z"));
    // A late ended fills nothing the agent wrote.
    let ended = call_body(&conv, r#""disposition":"No answer","notes":"ended""#);
    crm.handle(&crm_event(EventKind::CallEnded, &ended, 5, 5))
        .await
        .unwrap();
    assert_eq!(sf.task(&conv)["Description"], "newer");
}

#[tokio::test]
async fn writes_of_one_call_in_one_batch_are_merged_in_event_order() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("");
    let conv = conversation();
    crm.handle(&crm_event(
        EventKind::CallIncoming,
        &call_body(&conv, ""),
        0,
        1,
    ))
    .await
    .unwrap();
    sf.drain().await;
    // Handed over newest first, in one batch.
    let events = [
        crm_event(
            EventKind::CallNotesSubmitted,
            &call_body(&conv, r#""notes":"last""#),
            30,
            4,
        ),
        crm_event(
            EventKind::CallNotesSubmitted,
            &call_body(&conv, r#""notes":"first""#),
            20,
            3,
        ),
        crm_event(
            EventKind::CallEnded,
            &call_body(&conv, r#""duration":5,"notes":"ended""#),
            10,
            2,
        ),
    ];
    let results = futures::future::join_all(events.iter().map(|e| crm.handle(e))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let task = sf.task(&conv);
    assert_eq!(task["Description"], "last");
    assert_eq!(task["Status"], "Completed");
    let requests = sf.drain().await;
    let writes = requests
        .iter()
        .filter(|r| r.method.as_str() == "PATCH")
        .count();
    assert_eq!(writes, 1, "one record for the three events");
}

#[tokio::test]
async fn an_upsert_racing_a_create_is_written_again_as_an_update() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("");
    let conv = conversation();
    crm.handle(&crm_event(
        EventKind::CallIncoming,
        &call_body(&conv, ""),
        0,
        1,
    ))
    .await
    .unwrap();
    sf.org().item_errors.push_back("DUPLICATE_VALUE");
    let accepted = call_body(&conv, r#""ivrExitPath":"billing""#);
    crm.handle(&crm_event(EventKind::CallAccepted, &accepted, 1, 2))
        .await
        .unwrap();
    assert_eq!(sf.org().tasks.len(), 1);
    // A record locked by another write is that event's trouble, for now.
    sf.org().item_errors.push_back("UNABLE_TO_LOCK_ROW");
    let result = crm
        .handle(&crm_event(EventKind::CallAccepted, &accepted, 1, 2))
        .await;
    assert!(
        matches!(result, Err(CrmError::Transient { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn token_endpoint_failures_are_the_connections_trouble_in_a_batch() {
    let sf = FakeSalesforce::start().await;
    let crm = sf.adapter("");
    sf.org().refuse_grants = true;
    let events: Vec<CrmEvent> = (0..5)
        .map(|i| {
            let body = call_body(&conversation(), r#""notes":"n""#);
            crm_event(EventKind::CallNotesSubmitted, &body, i, i as u64)
        })
        .collect();
    let results = futures::future::join_all(events.iter().map(|e| crm.handle(e))).await;
    for result in results {
        assert!(
            matches!(&result, Err(CrmError::Unavailable { reason, .. }) if reason.contains("invalid_grant")),
            "{result:?}"
        );
    }
    // A session refused even after a refresh, too.
    sf.org().refuse_grants = false;
    sf.org()
        .script
        .extend([401, 401].map(ResponseTemplate::new));
    let result = crm.handle(&events[0]).await;
    assert!(
        matches!(result, Err(CrmError::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_value_too_long_for_a_custom_field_costs_only_that_value() {
    let sf = FakeSalesforce::start().await;
    sf.org()
        .field_limits
        .insert("Softphone_Language__c".into(), 5);
    let crm = sf.adapter(
        "[crm.task_fields]\nlanguage = \"Softphone_Language__c\"\nivrExitPath = \"Ivr__c\"",
    );
    let conv = conversation();
    let body = call_body(&conv, r#""language":"fr_FR_x","ivrExitPath":"billing""#);
    crm.handle(&crm_event(EventKind::CallAccepted, &body, 0, 1))
        .await
        .unwrap();
    let task = sf.task(&conv);
    assert!(!task.contains_key("Softphone_Language__c"));
    assert_eq!(task["Ivr__c"], "billing");
    assert_eq!(task["TaskSubtype"], "Call");
}

#[tokio::test]
async fn callers_are_found_in_their_own_countrys_national_form() {
    let sf = FakeSalesforce::start().await;
    sf.org().people.extend([
        ("Contact", "003UK", "Ada Lovelace", "02071234567"),
        ("Contact", "003FR1", "Marie Curie", "0142685300"),
        ("Lead", "00QFR2", "Pierre Curie", "0142685300"),
    ]);
    let crm = sf.adapter(
        "[crm.lookup]\nscreen_pop_event = \"Softphone_Screen_Pop__e\"\nmatches_field = \"Softphone_Caller_Matches__c\"",
    );
    let (uk, fr) = (conversation(), conversation());
    let events = [
        crm_event(
            EventKind::CallIncoming,
            &call_body(&uk, r#""callerANI":"+442071234567""#),
            0,
            1,
        ),
        crm_event(
            EventKind::CallIncoming,
            &call_body(&fr, r#""callerANI":"+33142685300""#),
            0,
            2,
        ),
    ];
    // An org just written to gathers the next writes into one batch.
    let warm_up = crm_event(
        EventKind::CallNotesSubmitted,
        &call_body(&conversation(), r#""notes":"warm-up""#),
        0,
        0,
    );
    crm.handle(&warm_up).await.unwrap();
    let results = futures::future::join_all(events.iter().map(|e| crm.handle(e))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Both numbers in one search, never inside a Composite call (Salesforce
    // refuses the search resource there, as the fake does).
    let requests = sf.drain().await;
    let searches: Vec<String> = requests
        .iter()
        .filter(|r| r.url.path().ends_with("/search/"))
        .map(|r| {
            r.url
                .query_pairs()
                .find(|(k, _)| k == "q")
                .unwrap()
                .1
                .into_owned()
        })
        .collect();
    assert_eq!(searches.len(), 1, "one search for the batch: {searches:?}");
    assert!(
        searches[0].contains(r"\+442071234567 OR 02071234567")
            && searches[0].contains(r"\+33142685300 OR 0142685300"),
        "{}",
        searches[0]
    );
    assert_eq!(sf.task(&uk)["WhoId"], "003UK");
    let french = sf.task(&fr);
    assert!(!french.contains_key("WhoId"), "several matches: no guess");
    assert_eq!(
        french["Softphone_Caller_Matches__c"],
        "Contact:003FR1, Lead:00QFR2"
    );
    let org = sf.org();
    let pop = org
        .events
        .iter()
        .find(|(_, body)| body["Conversation_Id__c"] == fr.as_str())
        .expect("a screen pop for the ringing call");
    assert_eq!(pop.1["Match_Count__c"], 2);
    let matches: Vec<Value> = serde_json::from_str(pop.1["Matches__c"].as_str().unwrap()).unwrap();
    assert_eq!(matches.len(), 2, "both offered to the agent");
}

#[tokio::test]
async fn a_task_first_written_by_accepted_is_a_call_and_refused_values_are_cut() {
    let sf = FakeSalesforce::start().await;
    let app = spawn(&sf, "client_credentials", "").await;
    let conv = conversation();
    deliver(
        &app,
        EventKind::CallAccepted,
        &call_body(&conv, r#""callerANI":"+18883973342""#),
    )
    .await;
    assert_eq!(sf.task(&conv)["TaskSubtype"], "Call");
    // Values the org would refuse: cut, and the call is logged.
    let notes = "n".repeat(40_000);
    let disposition = "d".repeat(300);
    let ended = format!(r#""duration":1e12,"notes":"{notes}","disposition":"{disposition}""#);
    deliver(&app, EventKind::CallEnded, &call_body(&conv, &ended)).await;
    let task = sf.task(&conv);
    assert_eq!(task["Status"], "Completed");
    let description = task["Description"].as_str().unwrap();
    assert_eq!(description.chars().count(), 32_000);
    assert!(description.ends_with("…[truncated]"));
    assert_eq!(
        task["CallDisposition"].as_str().unwrap().chars().count(),
        255
    );
    assert_eq!(task["CallDurationInSeconds"], i32::MAX as u64);
    // A late incoming: the Task exists, one Task, no error.
    deliver(&app, EventKind::CallIncoming, &call_body(&conv, "")).await;
    assert_eq!(sf.org().tasks.len(), 1);
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_locked_record_is_retried_in_process_spending_an_attempt_not_a_delivery() {
    let sf = FakeSalesforce::start().await;
    let app = spawn(&sf, "client_credentials", "").await;
    let conv = conversation();
    sf.org().item_errors.push_back("UNABLE_TO_LOCK_ROW");
    deliver(
        &app,
        EventKind::CallNotesSubmitted,
        &call_body(&conv, r#""notes":"n""#),
    )
    .await;
    assert_eq!(sf.task(&conv)["Description"], "n");
    // Tried again where it was held, its conversation waiting: no redelivery,
    // and the retry counted.
    let info = app.consumer_info().await;
    assert_eq!(info.deliveries, info.messages, "no redelivery");
    let retried = softphone_bridge::telemetry::metric::handle()
        .render()
        .lines()
        .any(|line| {
            line.starts_with("softphone_bridge_events_total{")
                && line.contains(r#"outcome="retry""#)
        });
    assert!(retried, "the retry is counted");
    assert_eq!(dead_letter_count(&app).await, 0);
    app.stop().await;
}
