//! Order per conversation with any number of replicas: the real binary as
//! three replicas, a webhook CRM that records arrival order, conversations
//! of five events (incoming, accepted, ended, two notes) published
//! interleaved at full speed.

use std::collections::BTreeMap;
use std::time::Duration;

use softphone_bridge::contract::{DLQ_STREAM, EVENTS_STREAM, EventKind, LANES_STREAM, dlq_header};
use wiremock::ResponseTemplate;

use crate::helpers::*;

/// A conversation's events, in publish order.
const LIFECYCLE: [(EventKind, &str); 5] = [
    (EventKind::CallIncoming, r#""callerANI":"+18883973342""#),
    (EventKind::CallAccepted, r#""callerANI":"+18883973342""#),
    (
        EventKind::CallEnded,
        r#""duration":42,"callType":"inbound""#,
    ),
    (EventKind::CallNotesSubmitted, r#""notes":"first""#),
    (EventKind::CallNotesSubmitted, r#""notes":"latest""#),
];

/// How long a whole run may take at most.
const RUN: Duration = Duration::from_secs(180);

/// The replicas' configuration: three replicas' worth of room.
fn config(crm: &FakeCrm) -> String {
    bridge_config(&crm.url(), "").replace("concurrency = 4", "concurrency = 16")
}

/// Publishes each conversation's events, round by round across all of them
/// (every conversation's first event, then every second one ...), without
/// waiting for each ack; event ids `<conversation>-<index>`.
async fn publish_interleaved(js: &async_nats::jetstream::Context, conversations: &[String]) {
    publish_rounds(js, conversations, 0..LIFECYCLE.len()).await;
}

/// Like [`publish_interleaved`], the rounds of `events` (indexes into [`LIFECYCLE`]) only.
async fn publish_rounds(
    js: &async_nats::jetstream::Context,
    conversations: &[String],
    events: std::ops::Range<usize>,
) {
    for (index, (kind, extra)) in LIFECYCLE
        .iter()
        .enumerate()
        .skip(events.start)
        .take(events.len())
    {
        for chunk in conversations.chunks(250) {
            let mut acks = Vec::new();
            for conv in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{conv}-{index}").as_str(),
                );
                acks.push(
                    js.publish_with_headers(kind.subject(), headers, call_body(conv, extra).into())
                        .await
                        .expect("published"),
                );
            }
            for ack in acks {
                ack.await.expect("the events stream acknowledges");
            }
        }
    }
}

/// Every request's (conversation, event index), in arrival order.
struct Arrivals(Vec<(String, usize)>);

impl Arrivals {
    fn record(&mut self, request: &wiremock::Request) {
        let key = idempotency_key(request);
        if let Some((conv, index)) = key.rsplit_once('-')
            && let Ok(index) = index.parse()
        {
            self.0.push((conv.to_owned(), index));
        }
    }

    /// Distinct events arrived.
    fn distinct(&self) -> usize {
        self.0
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    /// Distinct events of `conversations` arrived.
    fn distinct_in(&self, conversations: &[String]) -> usize {
        self.0
            .iter()
            .filter(|(conv, _)| conversations.contains(conv))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    /// Per conversation, its events in the order they first arrived.
    fn first_arrivals(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut order = BTreeMap::<&str, Vec<usize>>::new();
        for (conv, index) in &self.0 {
            let seen = order.entry(conv).or_default();
            if !seen.contains(index) {
                seen.push(*index);
            }
        }
        order
    }

    /// Per conversation, the notes that arrived last.
    fn last_notes(&self) -> BTreeMap<&str, usize> {
        let mut last = BTreeMap::new();
        for (conv, index) in &self.0 {
            if *index >= 3 {
                last.insert(conv.as_str(), *index);
            }
        }
        last
    }

    /// Checks the three results: every conversation's first arrivals in
    /// publish order, nothing lost, the latest notes last.
    fn assert_in_order(&self, conversations: &[String]) {
        let ours: std::collections::BTreeSet<&String> = conversations.iter().collect();
        let this = Arrivals(
            self.0
                .iter()
                .filter(|(conv, _)| ours.contains(conv))
                .cloned()
                .collect(),
        );
        this.assert_ours_in_order(conversations);
    }

    fn assert_ours_in_order(&self, conversations: &[String]) {
        let expected: Vec<usize> = (0..LIFECYCLE.len()).collect();
        let order = self.first_arrivals();
        let out_of_order: Vec<_> = order
            .iter()
            .filter(|(_, seen)| **seen != expected)
            .collect();
        assert_eq!(
            order.len(),
            conversations.len(),
            "every conversation arrived"
        );
        assert!(
            out_of_order.is_empty(),
            "{} of {} conversations out of order, e.g. {:?}",
            out_of_order.len(),
            conversations.len(),
            out_of_order.iter().take(3).collect::<Vec<_>>()
        );
        assert_eq!(
            self.distinct(),
            conversations.len() * LIFECYCLE.len(),
            "none lost"
        );
        let stale: Vec<_> = self
            .last_notes()
            .into_iter()
            .filter(|(_, n)| *n != 4)
            .collect();
        assert!(stale.is_empty(), "older notes arrived last: {stale:?}");
    }
}

/// Takes what the CRM received until `done` says the arrivals are complete
/// or `RUN` has passed.
async fn receive_until(crm: &FakeCrm, arrivals: &mut Arrivals, done: impl Fn(&Arrivals) -> bool) {
    let deadline = tokio::time::Instant::now() + RUN;
    while !done(arrivals) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} distinct events arrived in {RUN:?}",
            arrivals.distinct()
        );
        let next =
            tokio::time::timeout(Duration::from_millis(200), crm.next_request_quietly()).await;
        if let Ok(Some(request)) = next {
            arrivals.record(&request);
        }
    }
    for request in crm.drain().await {
        arrivals.record(&request);
    }
}

/// Takes what the CRM received until every event of `conversations`
/// arrived and the pipeline is settled, then what came last.
async fn receive_all(
    crm: &FakeCrm,
    js: &async_nats::jetstream::Context,
    arrivals: &mut Arrivals,
    conversations: &[String],
) {
    let all = conversations.len() * LIFECYCLE.len();
    receive_until(crm, arrivals, |a| a.distinct_in(conversations) >= all).await;
    settled(js, &defaults()).await;
    for request in crm.drain().await {
        arrivals.record(&request);
    }
}

async fn stop_all(replicas: Vec<Bridge>) {
    for bridge in &replicas {
        bridge.terminate();
    }
    for bridge in replicas {
        let (status, stderr) = bridge.wait().await;
        assert!(status.success(), "clean exit: {stderr}");
    }
}

#[tokio::test]
async fn five_hundred_conversations_reach_the_webhook_in_publish_order_with_three_replicas() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    let replicas: Vec<Bridge> = (0..3)
        .map(|_| Bridge::start(&nats.url, &config(&crm)))
        .collect();
    replicas_pulling(&js, &defaults(), 3).await;

    let conversations: Vec<String> = (0..500).map(|_| conversation()).collect();
    publish_interleaved(&js, &conversations).await;
    let mut arrivals = Arrivals(Vec::new());
    receive_all(&crm, &js, &mut arrivals, &conversations).await;
    arrivals.assert_in_order(&conversations);
    assert_eq!(
        stream_messages(&js, DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    stop_all(replicas).await;
}

#[tokio::test]
async fn conversations_keep_their_order_while_replicas_are_killed_and_restarted() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    // A CRM taking 50 ms and 4 events at a time per partition: the run lasts
    // longer than the kills, which hit replicas with events in flight.
    let crm =
        FakeCrm::answering(ResponseTemplate::new(200).set_delay(Duration::from_millis(50))).await;
    let config = |crm: &FakeCrm| bridge_config(&crm.url(), "");
    let mut replicas: Vec<Bridge> = (0..3)
        .map(|_| Bridge::start(&nats.url, &config(&crm)))
        .collect();
    replicas_pulling(&js, &defaults(), 3).await;

    let conversations: Vec<String> = (0..500).map(|_| conversation()).collect();
    let publisher = {
        let (js, conversations) = (js.clone(), conversations.clone());
        tokio::spawn(async move { publish_interleaved(&js, &conversations).await })
    };
    let mut arrivals = Arrivals(Vec::new());
    let all = conversations.len() * LIFECYCLE.len();
    // A replica killed (SIGKILL) every 3 s and started again, four times.
    for kill in 0..4 {
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            if let Ok(Some(request)) =
                tokio::time::timeout(Duration::from_millis(100), crm.next_request_quietly()).await
            {
                arrivals.record(&request);
            }
        }
        replicas.remove(kill % replicas.len()).kill().await;
        replicas.push(Bridge::start(&nats.url, &config(&crm)));
    }
    publisher.await.unwrap();
    receive_all(&crm, &js, &mut arrivals, &conversations).await;
    arrivals.assert_in_order(&conversations);
    assert_eq!(
        stream_messages(&js, DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    let repeated = arrivals.0.len() - arrivals.distinct();
    eprintln!("{repeated} of {all} events reached the CRM more than once (in flight at a kill)");
    stop_all(replicas).await;
}

#[tokio::test]
async fn a_lane_paused_by_its_crms_outage_keeps_each_conversations_order_when_it_resumes() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let config = bridge_config(
        &crm.url(),
        "[lanes]\npause_after = 2\nprobe_every = \"300ms\"\n",
    );
    let replicas: Vec<Bridge> = (0..3).map(|_| Bridge::start(&nats.url, &config)).collect();
    replicas_pulling(&js, &defaults(), 3).await;

    let conversations: Vec<String> = (0..40).map(|_| conversation()).collect();
    publish_interleaved(&js, &conversations).await;
    let mut arrivals = Arrivals(Vec::new());
    // The outage lasts: probes fail for a while.
    receive_until(&crm, &mut arrivals, |a| a.0.len() >= 20).await;
    assert_eq!(stream_messages(&js, DLQ_STREAM).await, 0);
    crm.answer(ResponseTemplate::new(200));
    receive_all(&crm, &js, &mut arrivals, &conversations).await;
    // Every attempt, failed or not, counts: a later event of a conversation
    // is never tried before an earlier one is settled.
    arrivals.assert_in_order(&conversations);
    assert_eq!(
        stream_messages(&js, DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    let info = lane_info(&js, &defaults(), "crm").await;
    assert_eq!(info.num_redelivered, 0, "the outage spent no delivery");
    stop_all(replicas).await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_once_and_its_conversations_later_events_go_on_in_order() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    // The CRM refuses the first notes of one conversation (422).
    crm.refuse(r#""notes":"first""#, ResponseTemplate::new(422));
    let replicas: Vec<Bridge> = (0..3)
        .map(|_| Bridge::start(&nats.url, &config(&crm)))
        .collect();
    replicas_pulling(&js, &defaults(), 3).await;
    let mut letters = DeadLetters::open(&js).await;

    let poisoned = conversation();
    let mut conversations: Vec<String> = (0..20).map(|_| conversation()).collect();
    conversations.push(poisoned.clone());
    // Only the poisoned conversation's first notes say "first".
    let mut arrivals = Arrivals(Vec::new());
    for (index, (kind, extra)) in LIFECYCLE.iter().enumerate() {
        for conv in &conversations {
            let extra = if index == 3 && *conv != poisoned {
                r#""notes":"one""#
            } else {
                extra
            };
            publish(
                &js,
                *kind,
                &call_body(conv, extra),
                Some(&format!("{conv}-{index}")),
            )
            .await;
        }
    }
    let letter = letters.next().await;
    assert_eq!(
        header(&letter, dlq_header::EVENT_ID),
        format!("{poisoned}-3")
    );
    assert_eq!(
        header(&letter, dlq_header::REASON),
        "CRM answered 422 Unprocessable Entity"
    );
    receive_all(&crm, &js, &mut arrivals, &conversations).await;
    arrivals.assert_in_order(&conversations);
    assert_eq!(
        stream_messages(&js, DLQ_STREAM).await,
        1,
        "dead-lettered once"
    );
    let poisoned_arrivals: Vec<usize> = arrivals
        .0
        .iter()
        .filter(|(conv, _)| *conv == poisoned)
        .map(|(_, index)| *index)
        .collect();
    assert_eq!(
        poisoned_arrivals,
        [0, 1, 2, 3, 4],
        "tried once, then the latest notes"
    );
    stop_all(replicas).await;
}

#[tokio::test]
async fn a_new_replica_takes_its_share_and_a_dead_ones_share_moves() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::start().await;
    // Sixteen partitions a lane, 33 units: the newcomer owns none with a
    // chance of (2/3)^33, about 1.5 in a million (with 8, one in a thousand
    // runs saw it).
    let mut settings = defaults();
    settings.lanes.partitions = 16;
    let config = |crm: &FakeCrm| config(crm).replace("partitions = 2", "partitions = 16");
    let members = js
        .get_key_value(&settings.lanes.members_bucket)
        .await
        .unwrap();
    let mut replicas: Vec<Bridge> = (0..2)
        .map(|_| Bridge::start(&nats.url, &config(&crm)))
        .collect();
    replicas_pulling(&js, &settings, 2).await;
    let before = live_members(&members, &settings).await;

    // A third replica joins: it takes units from the others, which go on
    // running (the same processes throughout).
    replicas.push(Bridge::start(&nats.url, &config(&crm)));
    replicas_pulling(&js, &settings, 3).await;
    let after = owners(&js, &settings).await;
    let live = live_members(&members, &settings).await;
    let newcomer = live
        .difference(&before)
        .next()
        .cloned()
        .expect("a new member");
    assert!(
        after.values().any(|owner| *owner == newcomer),
        "the new replica {newcomer} owns a share: {after:?} (members before {before:?}, now {live:?})"
    );
    let conversations: Vec<String> = (0..50).map(|_| conversation()).collect();
    publish_interleaved(&js, &conversations).await;
    let mut arrivals = Arrivals(Vec::new());
    receive_until(&crm, &mut arrivals, |a| {
        a.distinct_in(&conversations) >= 250
    })
    .await;
    arrivals.assert_in_order(&conversations);

    // The newcomer dies (SIGKILL): its units move to the two others.
    replicas.pop().unwrap().kill().await;
    replicas_pulling(&js, &settings, 2).await;
    let moved = owners(&js, &settings).await;
    assert!(
        moved.values().all(|owner| *owner != newcomer),
        "nothing is left with the dead replica: {moved:?}"
    );
    let later: Vec<String> = (0..50).map(|_| conversation()).collect();
    publish_interleaved(&js, &later).await;
    let mut arrivals = Arrivals(Vec::new());
    receive_until(&crm, &mut arrivals, |a| a.distinct_in(&later) >= 250).await;
    arrivals.assert_in_order(&later);
    settled(&js, &settings).await;
    assert!(
        replicas.iter_mut().all(|r| r.running()),
        "no replica was restarted"
    );
    stop_all(replicas).await;
}

#[tokio::test]
async fn a_killed_replicas_partitions_move_within_the_ack_wait_and_every_conversation_keeps_its_order()
 {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    // A CRM taking 300 ms: the replica killed holds events in flight.
    let crm =
        FakeCrm::answering(ResponseTemplate::new(200).set_delay(Duration::from_millis(300))).await;
    // The default ack wait; the tests' lease (4 s).
    let ack_wait = Duration::from_secs(30);
    let config = bridge_config(&crm.url(), "").replace(r#"ack_wait = "5s""#, r#"ack_wait = "30s""#);
    let mut settings = defaults();
    settings.worker.ack_wait = ack_wait;
    let mut replicas: Vec<Bridge> = (0..3).map(|_| Bridge::start(&nats.url, &config)).collect();
    replicas_pulling(&js, &settings, 3).await;

    let before: Vec<String> = (0..40).map(|_| conversation()).collect();
    publish_interleaved(&js, &before).await;
    let mut arrivals = Arrivals(Vec::new());
    receive_until(&crm, &mut arrivals, |a| a.distinct_in(&before) >= 8).await;

    // The replica working the CRM lane's partition 0 dies, holding events.
    let lane = format!("{}-crm-crm-0", settings.worker.consumer);
    let victim = owners(&js, &settings).await[&lane].clone();
    let index = replicas
        .iter()
        .position(|bridge| bridge.has_logged(&victim))
        .expect("the owner is one of the replicas");
    let held = consumer_info(&js, LANES_STREAM, &lane)
        .await
        .num_ack_pending;
    assert!(held > 0, "events are in flight when the replica dies");
    replicas.remove(index).kill().await;
    let killed = tokio::time::Instant::now();

    // New conversations after the kill: on the dead replica's partitions
    // they go as soon as those moved.
    let after: Vec<String> = (0..20).map(|_| conversation()).collect();
    publish_interleaved(&js, &after).await;
    let members = js
        .get_key_value(&settings.lanes.members_bucket)
        .await
        .unwrap();
    eventually_within(ack_wait, "the dead replica's units to move", || async {
        let live = live_members(&members, &settings).await;
        let owned = owners(&js, &settings).await;
        (!live.contains(&victim) && owned.values().all(|owner| live.contains(owner))).then_some(())
    })
    .await;
    let moved = killed.elapsed();
    receive_until(&crm, &mut arrivals, |a| {
        a.distinct_in(&after) >= after.len() * LIFECYCLE.len()
    })
    .await;
    let flowing = killed.elapsed();
    eprintln!(
        "after SIGKILL ({held} events unacknowledged): units moved in {moved:?}, \
         every new conversation delivered in {flowing:?} (ack wait {ack_wait:?})"
    );
    assert!(
        flowing < ack_wait,
        "the dead replica's partitions went on within the ack wait: {flowing:?}"
    );

    // Every conversation, those the dead replica held an event of too,
    // reaches the CRM whole and in order.
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    receive_all(&crm, &js, &mut arrivals, &all).await;
    arrivals.assert_in_order(&all);
    assert_eq!(
        stream_messages(&js, DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    stop_all(replicas).await;
}

#[tokio::test]
async fn an_intake_stopped_while_waiting_for_a_dead_owners_events_never_lets_later_ones_pass() {
    let nats = start_nats().await;
    let js = provisioned(&nats).await;
    let crm = FakeCrm::answering(ResponseTemplate::new(200)).await;
    // A long intake ack wait: the dead owner's events stay unacknowledged
    // (not yet redelivered) while the next owners come and go.
    let config = config(&crm).replace(
        "shutdown_deadline = \"10s\"",
        "shutdown_deadline = \"10s\"\nintake_ack_wait = \"20s\"",
    );
    let settings = defaults();
    let intake = format!("{}-intake", settings.worker.consumer);
    let conversations: Vec<String> = (0..10).map(|_| conversation()).collect();

    // A routes nothing: without the lanes stream it holds what it pulled
    // (NATS's trouble), unacknowledged, when it dies.
    let a = Bridge::start(&nats.url, &config);
    replicas_pulling(&js, &settings, 1).await;
    js.delete_stream(LANES_STREAM).await.unwrap();
    publish_rounds(&js, &conversations, 0..2).await;
    eventually("the intake to hold the first events", || async {
        let info = consumer_info(&js, EVENTS_STREAM, &intake).await;
        (info.num_pending == 0 && info.num_ack_pending > 0).then_some(())
    })
    .await;
    a.kill().await;

    // B takes the intake over (and provisions the lanes again), keeping the
    // places of A's events, which NATS gives back only after the ack wait;
    // it is stopped meanwhile.
    let b = Bridge::start(&nats.url, &config);
    b.logged_line(&[
        "the previous owner may hold an event of wait for it",
        &intake,
    ])
    .await;
    b.terminate();
    let (status, stderr) = b.wait().await;
    assert!(status.success(), "{stderr}");

    // The rest of each conversation, then C: it must not take the intake
    // as released clean and pull these ahead of A's.
    publish_rounds(&js, &conversations, 2..LIFECYCLE.len()).await;
    let c = Bridge::start(&nats.url, &config);
    let mut arrivals = Arrivals(Vec::new());
    receive_all(&crm, &js, &mut arrivals, &conversations).await;
    arrivals.assert_in_order(&conversations);
    assert!(
        !c.has_logged_line(&["Claimed the unit", &intake]),
        "the intake was released as if it held nothing"
    );
    stop_all(vec![c]).await;
}

#[tokio::test]
async fn a_partition_released_after_the_ack_wait_lets_no_event_given_back_pass_an_older_one() {
    let nats = start_nats().await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    // Many partitions, so that a replica joining takes some of the CRM
    // lane's over; the default ack wait.
    let mut settings = defaults();
    settings.lanes.partitions = 16;
    settings.worker.ack_wait = Duration::from_secs(30);
    softphone_bridge::broker::provision::apply(&js, &settings)
        .await
        .unwrap();
    // The CRM is down at first: A holds every conversation's first event.
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let config = config(&crm)
        .replace("partitions = 2", "partitions = 16")
        .replace(r#"ack_wait = "5s""#, r#"ack_wait = "30s""#);
    let conversations: Vec<String> = (0..32).map(|_| conversation()).collect();
    let a = Bridge::start(&nats.url, &config);
    replicas_pulling(&js, &settings, 1).await;
    publish_rounds(&js, &conversations, 0..1).await;
    let delivered = |count: usize| {
        let (js, settings) = (&js, &settings);
        async move {
            let lane = lane_info(js, settings, "crm").await;
            (lane.num_pending == 0 && lane.num_ack_pending == count).then_some(())
        }
    };
    eventually("A to hold every first event", || {
        delivered(conversations.len())
    })
    .await;
    a.kill().await;
    // What A tried while the CRM was down is not an arrival.
    crm.drain().await;

    // B takes every partition over, keeping the places of A's events (back
    // only after their ack wait), and pulls the rest of each conversation,
    // which waits behind them.
    crm.answer(ResponseTemplate::new(200));
    let b = Bridge::start(&nats.url, &config);
    publish_rounds(&js, &conversations, 1..LIFECYCLE.len()).await;
    let all = conversations.len() * LIFECYCLE.len();
    eventually("B to hold every event", || delivered(all)).await;

    // C joins: B gives back what it pulled of the partitions that move (at
    // once, so NATS queues them before A's events, whose ack wait has not
    // passed) and, holding places it cannot settle, releases them only
    // after the ack wait. C must not take that release for "nothing out".
    let c = Bridge::start(&nats.url, &config);
    b.logged("releasing it after the ack wait").await;
    let mut arrivals = Arrivals(Vec::new());
    receive_until(&crm, &mut arrivals, |a| {
        a.distinct_in(&conversations) >= all
    })
    .await;
    settled(&js, &settings).await;
    for request in crm.drain().await {
        arrivals.record(&request);
    }
    assert!(
        c.has_logged_line(&["Claimed the unit", "-crm-crm-"]),
        "a partition of the CRM lane moved from B to C by a release"
    );
    arrivals.assert_in_order(&conversations);
    stop_all(vec![b, c]).await;
}
