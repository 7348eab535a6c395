//! `softphone-bridge dlq`: list, show, replay and purge dead letters, with the
//! real binary against the app's NATS.

use serde_json::Value;
use softphone_bridge::contract::{DLQ_STREAM, EventKind};
use wiremock::ResponseTemplate;

use crate::cli::{bridge, stderr};
use crate::helpers::*;

const PARTNER: &str = "6f1c1e7e-9d43-4c38-9a51-3c8f0d7a1b22";

fn lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_show_and_purge_with_filters() {
    let crm = FakeCrm::start().await;
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", app.nats.url.as_str())];

    // One event the CRM refuses, one the contract refuses.
    let refused = conversation();
    crm.refuse(&refused, ResponseTemplate::new(422));
    app.publish(
        EventKind::CallAccepted,
        &partner_call_body(PARTNER, &refused, ""),
        Some("evt-refused"),
    )
    .await;
    let mut letters = app.dead_letters().await;
    letters.next().await;
    let invalid = conversation();
    app.publish(
        EventKind::CallRejected,
        &call_body(&invalid, r#""reason":"bored""#),
        Some("evt-invalid"),
    )
    .await;
    letters.next().await;

    let all = bridge(&["dlq", "list", "--json"], &env);
    assert!(all.status.success(), "{}", stderr(&all));
    let all = lines(&all);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["event_id"], "evt-refused");
    assert_eq!(all[0]["subject"], "softphone.call.accepted");
    assert_eq!(all[0]["partner"], PARTNER);
    assert_eq!(all[0]["conversation"], refused.as_str());
    assert!(
        all[0]["reason"].as_str().unwrap().contains("422"),
        "{all:?}"
    );
    assert!(all[0]["deliveries"].as_u64().unwrap() >= 1);
    assert_eq!(all[1]["event_id"], "evt-invalid");
    assert!(
        all[1]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid payload"),
        "{all:?}"
    );

    for (filter, expected) in [
        (vec!["--reason", "422"], vec!["evt-refused"]),
        (vec!["--reason", "INVALID PAYLOAD"], vec!["evt-invalid"]),
        (vec!["--subject", "callRejected"], vec!["evt-invalid"]),
        (
            vec!["--subject", "softphone.call.accepted"],
            vec!["evt-refused"],
        ),
        (vec!["--partner", PARTNER], vec!["evt-refused"]),
        (
            vec!["--conversation", invalid.as_str()],
            vec!["evt-invalid"],
        ),
        (vec!["--since", "1h"], vec!["evt-refused", "evt-invalid"]),
        (vec!["--until", "2020-01-01T00:00:00Z"], vec![]),
        (vec!["--since", "2999-01-01T00:00:00Z"], vec![]),
    ] {
        let mut args = vec!["dlq", "list", "--json"];
        args.extend(&filter);
        let out = bridge(&args, &env);
        assert!(out.status.success(), "{filter:?}: {}", stderr(&out));
        let ids: Vec<_> = lines(&out)
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, expected, "{filter:?}");
    }

    // The table.
    let table = bridge(&["dlq", "list"], &env);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with(&format!("{:>8}", "SEQ")), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains(&refused) && text.contains("evt-invalid"),
        "{text}"
    );

    // One letter in full.
    let seq = all[0]["seq"].as_u64().unwrap().to_string();
    let show = bridge(&["dlq", "show", &seq], &env);
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    for needle in [
        "Softphone-Dlq-Reason: ",
        "Softphone-Original-Subject: softphone.call.accepted",
        "Softphone-Event-Id: evt-refused",
        "Softphone-Stream-Sequence: ",
        "Softphone-Delivery-Count: ",
        "Softphone-Published-At: ",
        refused.as_str(),
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    let missing = bridge(&["dlq", "show", "999"], &env);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no dead letter 999"),
        "{}",
        stderr(&missing)
    );

    // Purge: a dry run and an unconfirmed one change nothing.
    let dry = bridge(&["dlq", "purge", "--reason", "invalid", "--dry-run"], &env);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would delete 1, failed 0"),
        "{}",
        stdout(&dry)
    );
    let unconfirmed = bridge(&["dlq", "purge", "--reason", "invalid"], &env);
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("--yes"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_eq!(stream_messages(&app.js, DLQ_STREAM).await, 2);

    let purge = bridge(&["dlq", "purge", "--reason", "invalid", "--yes"], &env);
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert!(
        stdout(&purge).contains("deleted 1, failed 0"),
        "{}",
        stdout(&purge)
    );
    assert_eq!(stream_messages(&app.js, DLQ_STREAM).await, 1);
    let left = lines(&bridge(&["dlq", "list", "--json"], &env));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["event_id"], "evt-refused");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_sends_the_event_again_with_its_original_id() {
    let crm = FakeCrm::start().await;
    crm.script([ResponseTemplate::new(422)]);
    let app = App::builder(start_nats().await).webhook(&crm).spawn().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", app.nats.url.as_str())];
    let call = conversation();
    let body = partner_call_body(PARTNER, &call, "");
    app.publish(EventKind::CallAccepted, &body, Some("evt-original"))
        .await;
    app.dead_letters().await.next().await;
    assert_eq!(idempotency_key(&crm.next_request().await), "evt-original");
    app.settled().await;

    // A dry run and an unconfirmed replay change nothing.
    let dry = bridge(&["dlq", "replay", "--dry-run"], &env);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("would replay 1, skipped 0, failed 0"),
        "{}",
        stdout(&dry)
    );
    let unconfirmed = bridge(&["dlq", "replay"], &env);
    assert!(!unconfirmed.status.success());
    assert!(
        stderr(&unconfirmed).contains("not a terminal"),
        "{}",
        stderr(&unconfirmed)
    );
    assert_eq!(stream_messages(&app.js, DLQ_STREAM).await, 1);
    app.settled().await;
    assert!(crm.drain().await.is_empty(), "nothing was sent again");

    let replay = bridge(
        &["dlq", "replay", "--subject", "call.accepted", "--yes"],
        &env,
    );
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(
        stdout(&replay).contains("replayed 1, skipped 0, failed 0"),
        "{}",
        stdout(&replay)
    );
    let again = crm.next_request().await;
    assert_eq!(
        idempotency_key(&again),
        "evt-original",
        "the same event to the CRM"
    );
    assert!(String::from_utf8_lossy(&again.body).contains(&call));
    assert_eq!(stream_messages(&app.js, DLQ_STREAM).await, 0);
    app.settled().await;
    assert_eq!(
        stream_messages(&app.js, DLQ_STREAM).await,
        0,
        "handled this time"
    );
    app.stop().await;
}
