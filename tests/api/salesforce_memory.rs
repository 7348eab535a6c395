//! The call memory (a JetStream key-value bucket on a real NATS) in front of
//! the fake org: the agent's word and `ended`'s fill decided without reading
//! Tasks, across replicas, and a call the memory does not know read once.

use async_nats::jetstream::{self, kv};
use serde_json::Value;
use softphone_bridge::config::{CallMemorySettings, Settings};
use softphone_bridge::contract::{Event, EventKind};
use softphone_bridge::crm::{Crm, CrmError, CrmEvent, SalesforceCrm};
use wiremock::ResponseTemplate;

use crate::helpers::fakes::salesforce::*;
use crate::helpers::*;

/// A NATS with the call memory's bucket, as `provision` makes it.
async fn memory_nats() -> (Nats, jetstream::Context, kv::Store) {
    let nats = start_nats().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    // As the bridge's own: `nats.request_timeout`, here short.
    let js = jetstream::ContextBuilder::new()
        .timeout(std::time::Duration::from_secs(2))
        .build(client);
    let store = js
        .create_key_value(softphone_bridge::crm::bucket_config(
            &CallMemorySettings::default(),
            1,
        ))
        .await
        .unwrap();
    (nats, js, store)
}

/// One replica's adapter on the fake org; with `js`, it remembers.
fn replica(sf: &FakeSalesforce, js: Option<&jetstream::Context>) -> SalesforceCrm {
    let crm = sf.adapter("");
    match js {
        Some(js) => crm.with_memory(js.clone(), &CallMemorySettings::default()),
        None => crm,
    }
}

/// A call event as the lane hands it over, published `at` seconds in.
fn event(kind: EventKind, conversation: &str, extra: &str, at: i64) -> CrmEvent {
    let body = call_body(conversation, extra);
    CrmEvent {
        id: format!("e{at}-{kind}"),
        event: Event::decode(kind, body.as_bytes()).unwrap(),
        raw: bytes::Bytes::copy_from_slice(body.as_bytes()),
        published: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + at),
        sequence: at as u64,
        vouched: None,
    }
}

/// The one entry the bucket holds for `conversation`, whatever the org key.
async fn facts(store: &kv::Store, conversation: &str) -> Value {
    use futures::TryStreamExt;
    let keys: Vec<String> = store.keys().await.unwrap().try_collect().await.unwrap();
    let key = keys
        .iter()
        .find(|k| k.ends_with(conversation))
        .unwrap_or_else(|| panic!("no entry for {conversation} in {keys:?}"));
    let value = store.get(key).await.unwrap().expect("a value");
    serde_json::from_slice(&value).unwrap()
}

#[tokio::test]
async fn a_call_logged_with_the_memory_never_reads_its_task() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, store) = memory_nats().await;
    let crm = replica(&sf, Some(&js));
    let conv = conversation();
    crm.handle(&event(
        EventKind::CallIncoming,
        &conv,
        r#""callerANI":"+18883973342""#,
        0,
    ))
    .await
    .unwrap();
    crm.handle(&event(EventKind::CallAccepted, &conv, "", 1))
        .await
        .unwrap();
    let ended = event(
        EventKind::CallEnded,
        &conv,
        r#""duration":42,"disposition":"Sale","notes":"at the end""#,
        2,
    );
    crm.handle(&ended).await.unwrap();
    assert_eq!(sf.task(&conv)["Description"], "at the end", "ended fills");
    sf.drain().await;
    let notes = event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""disposition":"Callback","notes":"final""#,
        3,
    );
    crm.handle(&notes).await.unwrap();
    assert_eq!(sf.api_calls().await, 1, "notes: the write alone");
    // Redelivered, out of order: ended fills nothing the agent wrote.
    crm.handle(&ended).await.unwrap();
    let task = sf.task(&conv);
    assert_eq!(task["Description"], "final");
    assert_eq!(task["CallDisposition"], "Callback");
    assert_eq!(task["Status"], "Completed");
    assert_eq!(task["TaskSubtype"], "Call");
    assert!(sf.org().queried.is_empty(), "{:?}", sf.org().queried);

    let remembered = facts(&store, &conv).await;
    assert_eq!(remembered["task"], true);
    assert_eq!(remembered["complete"], true, "created by the bridge");
    assert_eq!(remembered["agent"]["wordAt"], 1_800_000_003_000_i64);
}

#[tokio::test]
async fn replicas_share_what_they_wrote_a_retried_older_word_loses_to_a_newer_one() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, _store) = memory_nats().await;
    let (a, b) = (replica(&sf, Some(&js)), replica(&sf, Some(&js)));
    let conv = conversation();
    a.handle(&event(EventKind::CallIncoming, &conv, "", 0))
        .await
        .unwrap();
    sf.drain().await;
    // B never saw the Task, yet knows it exists: no create attempt first.
    b.handle(&event(EventKind::CallAccepted, &conv, "", 1))
        .await
        .unwrap();
    assert_eq!(sf.api_calls().await, 1, "one upsert, no refused create");

    let older = event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""disposition":"Callback","notes":"older""#,
        10,
    );
    let newer = event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""disposition":"Booked","notes":"newer""#,
        20,
    );
    // A's older word meets the org's trouble after A claimed it; B writes
    // the newer one; A's retry leaves it.
    sf.org().script.push_back(ResponseTemplate::new(503));
    let first = a.handle(&older).await;
    assert!(
        matches!(first, Err(CrmError::Unavailable { .. })),
        "{first:?}"
    );
    b.handle(&newer).await.unwrap();
    a.handle(&older).await.unwrap();
    // And a late ended on either fills nothing.
    let ended = event(
        EventKind::CallEnded,
        &conv,
        r#""disposition":"No answer","notes":"ended""#,
        5,
    );
    a.handle(&ended).await.unwrap();
    b.handle(&ended).await.unwrap();
    assert_eq!(sf.word(&conv), word("newer", "Booked", ":20.000Z"));
    assert!(sf.org().queried.is_empty(), "{:?}", sf.org().queried);
}

#[tokio::test]
async fn a_call_the_memory_does_not_know_is_read_once() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, store) = memory_nats().await;
    // Logged before the bucket existed: the agent's word is on the Task only.
    let before = replica(&sf, None);
    let conv = conversation();
    before
        .handle(&event(EventKind::CallIncoming, &conv, "", 0))
        .await
        .unwrap();
    before
        .handle(&event(
            EventKind::CallNotesSubmitted,
            &conv,
            r#""notes":"during the call""#,
            1,
        ))
        .await
        .unwrap();
    sf.org().queried.clear();

    let crm = replica(&sf, Some(&js));
    let ended = event(EventKind::CallEnded, &conv, r#""notes":"at the end""#, 2);
    crm.handle(&ended).await.unwrap();
    assert_eq!(sf.task(&conv)["Description"], "during the call");
    assert_eq!(sf.org().queried.len(), 1, "read once");
    assert_eq!(
        facts(&store, &conv).await["complete"],
        true,
        "known once read"
    );
    // Known now: an older word retried is refused without a read.
    crm.handle(&event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""notes":"stale""#,
        0,
    ))
    .await
    .unwrap();
    assert_eq!(sf.task(&conv)["Description"], "during the call");
    assert_eq!(sf.org().queried.len(), 1);

    // Forgotten (expired, purged): read again, never guessed.
    let key = {
        use futures::TryStreamExt;
        let keys: Vec<String> = store.keys().await.unwrap().try_collect().await.unwrap();
        keys.into_iter().find(|k| k.ends_with(&conv)).unwrap()
    };
    store.purge(&key).await.unwrap();
    crm.handle(&ended).await.unwrap();
    assert_eq!(sf.task(&conv)["Description"], "during the call");
    assert_eq!(sf.org().queried.len(), 2);
}

#[tokio::test]
async fn without_the_bucket_tasks_are_read_and_nothing_is_lost() {
    let sf = FakeSalesforce::start().await;
    let nats = start_nats().await;
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let crm = replica(&sf, Some(&js));
    let conv = conversation();
    crm.handle(&event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""notes":"the word""#,
        3,
    ))
    .await
    .unwrap();
    crm.handle(&event(EventKind::CallEnded, &conv, r#""notes":"ended""#, 2))
        .await
        .unwrap();
    assert_eq!(sf.task(&conv)["Description"], "the word");
    assert_eq!(sf.org().queried.len(), 2, "each decided on a read");
}

#[tokio::test]
async fn words_racing_across_replicas_leave_the_latest_on_the_task() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, store) = memory_nats().await;
    let replicas: Vec<SalesforceCrm> = (0..4).map(|_| replica(&sf, Some(&js))).collect();
    let conv = conversation();
    replicas[0]
        .handle(&event(EventKind::CallIncoming, &conv, "", 0))
        .await
        .unwrap();
    // Sixteen words for one call at once, spread over four replicas.
    let words: Vec<CrmEvent> = (1..=16)
        .map(|i| {
            event(
                EventKind::CallNotesSubmitted,
                &conv,
                &format!(r#""notes":"word {i}""#),
                i,
            )
        })
        .collect();
    let results = futures::future::join_all(
        words
            .iter()
            .enumerate()
            .map(|(i, w)| replicas[i % replicas.len()].handle(w)),
    )
    .await;
    // A write that later words kept overtaking fails as transient, and its
    // lane retries it, as here, on the replica that held it: every word is
    // then handled, and no failure is of another kind.
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(()) => {}
            Err(softphone_bridge::crm::CrmError::Transient { reason, .. })
                if reason.contains("later words kept coming") =>
            {
                replicas[i % replicas.len()]
                    .handle(&words[i])
                    .await
                    .expect("the retry of a word overtaken by later ones");
            }
            Err(other) => panic!("word {}: {other:?}", i + 1),
        }
    }
    let remembered = facts(&store, &conv).await;
    assert_eq!(remembered["agent"]["wordAt"], 1_800_000_016_000_i64);
    assert_eq!(remembered["agent"]["word"]["Description"], "word 16");
    // Whichever write landed last, the latest word is on the Task.
    assert_eq!(sf.task(&conv)["Description"], "word 16");
    // An older word retried on any replica writes the latest one again.
    for crm in &replicas {
        crm.handle(&words[3]).await.unwrap();
        assert_eq!(sf.task(&conv)["Description"], "word 16");
    }
    assert!(sf.org().queried.is_empty());
}

#[tokio::test]
async fn an_older_word_landing_after_a_newer_one_is_overwritten_by_it() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, store) = memory_nats().await;
    let (a, b) = (replica(&sf, Some(&js)), replica(&sf, Some(&js)));
    let conv = conversation();
    b.handle(&event(EventKind::CallIncoming, &conv, "", 0))
        .await
        .unwrap();
    let older = event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""notes":"older""#,
        10,
    );
    let newer = event(
        EventKind::CallNotesSubmitted,
        &conv,
        r#""notes":"newer""#,
        20,
    );
    // A claims the older word, then waits for its first token; B, whose
    // token is warm, claims and writes the newer word meanwhile; A's write
    // reaches the org last.
    sf.org().token_delay = Some(std::time::Duration::from_millis(1500));
    let mut claims = store.watch_all().await.unwrap();
    let a_writes = tokio::spawn(async move { a.handle(&older).await });
    loop {
        use futures::StreamExt;
        let entry = claims.next().await.unwrap().unwrap();
        let facts: Value = serde_json::from_slice(&entry.value).unwrap_or_default();
        if facts["agent"]["wordAt"] == 1_800_000_010_000_i64 {
            break;
        }
    }
    b.handle(&newer).await.unwrap();
    assert_eq!(sf.task(&conv)["Description"], "newer");
    a_writes.await.unwrap().unwrap();
    let written: Vec<String> = sf
        .org()
        .writes
        .iter()
        .filter(|(_, _, fields)| fields.iter().any(|f| f == "Description"))
        .map(|(_, _, fields)| fields.join(","))
        .collect();
    assert_eq!(written.len(), 3, "newer, older, newer again: {written:?}");
    assert_eq!(sf.task(&conv)["Description"], "newer");
}

#[tokio::test]
async fn a_call_memory_out_of_reach_holds_the_event_and_writes_nothing() {
    let sf = FakeSalesforce::start().await;
    let (nats, js, _store) = memory_nats().await;
    let crm = replica(&sf, Some(&js));
    let conv = conversation();
    crm.handle(&event(EventKind::CallIncoming, &conv, "", 0))
        .await
        .unwrap();
    sf.drain().await;
    nats.container
        .stop_with_timeout(Some(2))
        .await
        .expect("NATS stops");
    let notes = event(EventKind::CallNotesSubmitted, &conv, r#""notes":"n""#, 3);
    let held = crm.handle(&notes).await;
    // The connection's trouble (the lane holds it, spending no delivery),
    // decided before anything reaches the org.
    assert!(
        matches!(&held, Err(CrmError::Unavailable { reason, .. }) if reason.contains("SOFTPHONE_CALLS")),
        "{held:?}"
    );
    assert_eq!(sf.api_calls().await, 0);
}

#[tokio::test]
async fn three_replicas_leave_every_call_with_the_agents_latest_word() {
    let sf = FakeSalesforce::start().await;
    let nats = start_nats().await;
    let config = format!(
        r#"
[worker]
concurrency = 8
ack_wait = "5s"
max_deliveries = 8
backoff = ["100ms"]
shutdown_deadline = "10s"

[crm]
{}
"#,
        sf.crm_toml(
            "client_credentials",
            "[crm.batch]\nmax_wait = \"50ms\"\n[crm.lookup]\nenabled = false"
        )
    );
    let settings = Settings::from_toml(&config).unwrap();
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    let replicas: Vec<Bridge> = (0..3).map(|_| Bridge::start(&nats.url, &config)).collect();
    replicas_pulling(&js, &settings, 3).await;
    // Records the org finds locked now and then: their events are retried,
    // some after the call's later notes were written.
    sf.org().item_errors.extend(["UNABLE_TO_LOCK_ROW"; 12]);

    let calls: Vec<String> = (0..30).map(|_| conversation()).collect();
    for conv in &calls {
        for (kind, extra) in [
            (EventKind::CallIncoming, ""),
            (EventKind::CallAccepted, ""),
            (
                EventKind::CallEnded,
                r#""duration":30,"disposition":"End","notes":"at the end""#,
            ),
            (
                EventKind::CallNotesSubmitted,
                r#""disposition":"First","notes":"first""#,
            ),
            (
                EventKind::CallNotesSubmitted,
                r#""disposition":"Second","notes":"second""#,
            ),
        ] {
            publish(&js, kind, &call_body(conv, extra), None).await;
        }
    }
    settled(&js, &settings).await;
    assert!(
        sf.org().item_errors.is_empty(),
        "every lock was met and retried"
    );
    for conv in &calls {
        let task = sf.task(conv);
        assert_eq!(
            (&task["Description"], &task["CallDisposition"]),
            (&"second".into(), &"Second".into()),
            "{conv}"
        );
        assert_eq!(task["TaskSubtype"], "Call");
        assert_eq!(task["Status"], "Completed");
    }
    let mut dlq = js
        .get_stream(softphone_bridge::contract::DLQ_STREAM)
        .await
        .unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
    for replica in &replicas {
        replica.terminate();
    }
    for replica in replicas {
        let (status, stderr) = replica.wait().await;
        assert!(status.success(), "{stderr}");
    }
}

#[tokio::test]
async fn read_before_fill_keeps_what_someone_typed_into_the_task_during_the_call() {
    let sf = FakeSalesforce::start().await;
    let (_nats, js, _store) = memory_nats().await;
    let memory = CallMemorySettings::default();
    let reading = sf
        .adapter("read_before_fill = true")
        .with_memory(js.clone(), &memory);
    let trusting = replica(&sf, Some(&js));
    let (kept, replaced) = (conversation(), conversation());
    for conv in [&kept, &replaced] {
        trusting
            .handle(&event(EventKind::CallIncoming, conv, "", 0))
            .await
            .unwrap();
        // Someone types into the Task in Salesforce while the call goes on.
        let mut org = sf.org();
        let task = org.tasks.get_mut(conv.as_str()).unwrap();
        task.insert("Description".into(), "typed in Salesforce".into());
    }
    let ended = |conv: &str| event(EventKind::CallEnded, conv, r#""notes":"at the end""#, 2);
    reading.handle(&ended(&kept)).await.unwrap();
    assert_eq!(sf.task(&kept)["Description"], "typed in Salesforce");
    assert_eq!(sf.org().queried.len(), 1, "one read for the fill");
    // Without it, the memory decides alone: ended's notes replace it.
    trusting.handle(&ended(&replaced)).await.unwrap();
    assert_eq!(sf.task(&replaced)["Description"], "at the end");
    assert_eq!(sf.org().queried.len(), 1);
}
