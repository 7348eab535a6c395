//! `softphone-bridge replay`: events SOFTPHONE_EVENTS keeps go through a CRM
//! connection again as the events they were, with the real binary against
//! the app's NATS and two webhook CRMs.

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::{Value, json};
use softphone_bridge::contract::{EVENTS_STREAM, EventKind, LANES_STREAM};
use time::format_description::well_known::Rfc3339;
use wiremock::Request;

use crate::cli::{bridge, config_file, stderr};
use crate::helpers::*;

/// Partner A ([`PARTNER`]) routes to `[crm]`, partner B to `[crms.b]`; each
/// connection is a webhook CRM of its own.
struct Setup {
    a: FakeCrm,
    b: FakeCrm,
    app: App,
    /// The same connections and partners, for the command line.
    config: tempfile::NamedTempFile,
}

impl Setup {
    async fn start() -> Setup {
        let (a, b) = (FakeCrm::start().await, FakeCrm::start().await);
        let extra = partner_b_on_connection_b(&webhook_crm(&b.url()));
        let nats = start_nats().await;
        let settings = settings_with(&nats.url, &webhook_crm(&a.url()), None, &extra);
        // The pool's lanes: replay copies to the partitions the app works.
        let config = config_file(&format!(
            "[lanes]\npartitions = {TEST_PARTITIONS}\n[crm]\n{}\n{extra}",
            webhook_crm(&a.url())
        ));
        let app = App::builder(nats).with(settings).spawn().await;
        Setup { a, b, app, config }
    }

    /// Runs `softphone-bridge replay <args>` with the setup's configuration.
    fn replay(&self, args: &[&str]) -> Output {
        let mut all = vec!["replay", "--config", self.config.path().to_str().unwrap()];
        all.extend(args);
        bridge(
            &all,
            &[("SOFTPHONE_BRIDGE_NATS__URL", self.app.nats.url.as_str())],
        )
    }

    /// Publishes call notes of `partner` with event id `id`; returns when
    /// SOFTPHONE_EVENTS stored them (RFC 3339).
    async fn notes(&self, partner: &str, id: &str) -> String {
        self.publish(EventKind::CallNotesSubmitted, partner, r#""notes":"n""#, id)
            .await
    }

    /// Publishes an event the intake dead-letters (a reason the contract does not know).
    async fn invalid(&self, id: &str) {
        self.publish(EventKind::CallRejected, PARTNER, r#""reason":"bored""#, id)
            .await;
    }

    async fn publish(&self, kind: EventKind, partner: &str, extra: &str, id: &str) -> String {
        let body = partner_call_body(partner, &conversation(), extra);
        let ack = self.app.publish(kind, &body, Some(id)).await;
        let stream = self.app.js.get_stream(EVENTS_STREAM).await.unwrap();
        let stored = stream.get_raw_message(ack.sequence).await.unwrap();
        stored.time.format(&Rfc3339).unwrap()
    }

    async fn lane_messages(&self) -> u64 {
        stream_messages(&self.app.js, LANES_STREAM).await
    }
}

/// What the CRM saw of an event: `(webhook-id, Idempotency-Key, publishedAt, sequence)`.
fn seen(request: &Request) -> (String, String, Value, Value) {
    let doc: Value = serde_json::from_slice(&request.body).expect("a JSON document");
    let webhook_id = request.headers["webhook-id"].to_str().unwrap().to_owned();
    (
        webhook_id,
        idempotency_key(request),
        doc["publishedAt"].clone(),
        doc["sequence"].clone(),
    )
}

/// The next `count` requests of `crm`, by event id.
async fn requests_by_id(crm: &FakeCrm, count: usize) -> BTreeMap<String, Request> {
    let mut by_id = BTreeMap::new();
    for _ in 0..count {
        let request = crm.next_request().await;
        by_id.insert(idempotency_key(&request), request);
    }
    by_id
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Runs a replay that must succeed; returns its JSON lines.
fn replayed(setup: &Setup, args: &[&str]) -> Vec<Value> {
    let out = setup.replay(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    json_lines(&out)
}

fn summary(
    replayed: u64,
    by_connection: Value,
    already: u64,
    invalid: u64,
    filtered: u64,
    dry_run: bool,
) -> Value {
    json!({
        "dry_run": dry_run,
        "replayed": replayed,
        "by_connection": by_connection,
        "already_replayed": already,
        "invalid": invalid,
        "filtered_out": filtered,
        "failed": 0,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_sends_kept_events_through_their_connection_as_they_were() {
    let setup = Setup::start().await;
    setup.notes(PARTNER, "evt-a1").await;
    let b1_time = setup.notes(PARTNER_B, "evt-b1").await;
    setup.notes(PARTNER, "evt-a2").await;
    setup.invalid("evt-bad").await;
    let first_a = requests_by_id(&setup.a, 2).await;
    let first_b = requests_by_id(&setup.b, 1).await;
    setup.app.settled().await;
    assert_eq!(
        first_a.keys().collect::<Vec<_>>(),
        ["evt-a1", "evt-a2"],
        "handled once"
    );

    // Partner A up to B's event: A's first event only; B's is read and left out.
    let lines = replayed(
        &setup,
        &[
            "--since",
            "1h",
            "--until",
            &b1_time,
            "--partner",
            PARTNER,
            "--yes",
            "--json",
        ],
    );
    assert_eq!(lines, [summary(1, json!({"crm": 1}), 0, 0, 1, false)]);
    let again = setup.a.next_request().await;
    assert_eq!(
        seen(&again),
        seen(&first_a["evt-a1"]),
        "the same event id (webhook-id, Idempotency-Key), publish time and sequence"
    );

    // Everything: each event through its own connection; A's first event is
    // not stored twice within the duplicate window; the invalid one is skipped.
    let lines = replayed(&setup, &["--since", "1h", "--yes", "--json"]);
    assert_eq!(
        lines,
        [summary(2, json!({"b": 1, "crm": 1}), 1, 1, 0, false)]
    );
    let again = setup.a.next_request().await;
    assert_eq!(seen(&again), seen(&first_a["evt-a2"]));
    let again = setup.b.next_request().await;
    assert_eq!(seen(&again), seen(&first_b["evt-b1"]));
    setup.app.settled().await;
    assert!(setup.a.drain().await.is_empty(), "nothing else to A");
    assert!(setup.b.drain().await.is_empty(), "nothing else to B");

    // The text summary says the same, here of events read and none replayed.
    let out = setup.replay(&["--since", "2999-01-01T00:00:00Z", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "replayed 0, already replayed 0, skipped invalid 0, filtered out 0, failed 0\n"
    );
    setup.app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_lists_asks_and_sends_a_partner_through_another_connection() {
    let setup = Setup::start().await;
    setup.notes(PARTNER, "evt-a1").await;
    setup.notes(PARTNER_B, "evt-b1").await;
    setup.invalid("evt-bad").await;
    let first_a = requests_by_id(&setup.a, 1).await;
    requests_by_id(&setup.b, 1).await;
    setup.app.settled().await;
    let lanes = setup.lane_messages().await;

    // A dry run lists what would go where and publishes nothing.
    let lines = replayed(&setup, &["--since", "1h", "--dry-run", "--json"]);
    let listed: Vec<_> = lines
        .iter()
        .filter(|l| l.get("seq").is_some())
        .map(|l| {
            (
                l["event_id"].clone(),
                l["connection"].clone(),
                l["partner"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (json!("evt-a1"), json!("crm"), json!(PARTNER)),
            (json!("evt-b1"), json!("b"), json!(PARTNER_B)),
        ]
    );
    assert_eq!(
        lines.last().unwrap(),
        &summary(2, json!({"b": 1, "crm": 1}), 0, 1, 0, true)
    );
    let table = setup.replay(&["--since", "1h", "--dry-run"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with(&format!("{:>8}", "SEQ")), "{text}");
    assert!(text.contains("evt-a1") && text.contains("evt-b1"), "{text}");
    assert!(!text.contains("evt-bad"), "{text}");
    assert!(
        text.ends_with("would replay 2 (b 1, crm 1), already replayed 0, skipped invalid 1, filtered out 0, failed 0\n"),
        "{text}"
    );

    // Without --yes and without a terminal to ask on: refused before anything.
    let unconfirmed = setup.replay(&["--since", "1h"]);
    assert!(!unconfirmed.status.success());
    let why = stderr(&unconfirmed);
    assert!(
        why.contains("not a terminal") && why.contains("--yes"),
        "{why}"
    );
    // A connection that does not exist.
    let unknown = setup.replay(&["--since", "1h", "--connection", "acme", "--yes"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains(r#"unknown connection "acme"; configured: crm, b"#),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(setup.lane_messages().await, lanes, "nothing published");
    setup.app.settled().await;
    assert!(setup.a.drain().await.is_empty() && setup.b.drain().await.is_empty());

    // Partner A through connection b, which routing does not send it to.
    let lines = replayed(
        &setup,
        &[
            "--since",
            "1h",
            "--partner",
            PARTNER,
            "--connection",
            "b",
            "--yes",
            "--json",
        ],
    );
    assert_eq!(lines, [summary(1, json!({"b": 1}), 0, 1, 1, false)]);
    let there = setup.b.next_request().await;
    assert_eq!(seen(&there), seen(&first_a["evt-a1"]));
    setup.app.settled().await;
    assert!(
        setup.a.drain().await.is_empty(),
        "not through A's own connection"
    );
    assert!(setup.b.drain().await.is_empty());
    setup.app.stop().await;
}
