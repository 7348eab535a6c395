//! `softphone-bridge status`: the real binary against the app's NATS, with
//! the app's replica answering through its NATS service.

use serde_json::Value;
use softphone_bridge::contract::EventKind;
use wiremock::ResponseTemplate;

use crate::cli::{bridge, stderr};
use crate::helpers::fakes::salesforce::FakeSalesforce;
use crate::helpers::*;

/// The tests' lanes, as `status` must be told them.
const PARTITIONS: (&str, &str) = ("SOFTPHONE_BRIDGE_LANES__PARTITIONS", "2");

/// `status --json`, parsed.
fn status_json(nats_url: &str) -> Value {
    status_json_with(nats_url, PARTITIONS.1)
}

/// `status --json` with `partitions` partitions a lane, parsed.
fn status_json_with(nats_url: &str, partitions: &str) -> Value {
    let out = bridge(
        &["status", "--json", "--wait", "1s"],
        &[
            ("SOFTPHONE_BRIDGE_NATS__URL", nats_url),
            (PARTITIONS.0, partitions),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("status --json prints one JSON document")
}

fn lane<'a>(status: &'a Value, role: &str) -> &'a Value {
    status["lanes"]
        .as_array()
        .expect("lanes")
        .iter()
        .find(|lane| lane["role"] == role)
        .unwrap_or_else(|| panic!("a {role} lane in {status}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_paused_lane_its_reason_and_held_events() {
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    let app = App::builder(start_nats().await)
        .pausing()
        .crm(&webhook_crm(&crm.url()))
        .spawn()
        .await;
    app.publish_calls(EventKind::CallAccepted, PARTNER, "", 3)
        .await;
    lane_paused(true).await;

    let status = eventually(
        "status to show the lane paused with held events",
        || async {
            let status = status_json(&app.nats.url);
            let crm = lane(&status, "crm");
            (crm["paused_in"] == 1 && crm["held"].as_u64() >= Some(1)).then_some(status)
        },
    )
    .await;
    assert_eq!(status["replicas"], 1, "{status}");
    let crm_lane = lane(&status, "crm");
    assert_eq!(crm_lane["connection"], "crm");
    assert_eq!(crm_lane["consumer"], "softphone-bridge-crm-crm");
    // Which replica holds which share: the only member holds every partition.
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{status}");
    let partitions = crm_lane["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2, "{crm_lane}");
    for (p, partition) in partitions.iter().enumerate() {
        assert_eq!(partition["partition"], p);
        assert_eq!(
            partition["consumer"],
            format!("softphone-bridge-crm-crm-{p}")
        );
        assert_eq!(partition["owner"], members[0], "{partition}");
    }
    assert_eq!(crm_lane["stream"], "SOFTPHONE_LANES");
    assert_eq!(crm_lane["replicas"], 1);
    assert!(
        ["open", "half-open"].contains(&crm_lane["circuit"].as_str().unwrap()),
        "{crm_lane}"
    );
    assert!(
        crm_lane["reason"].as_str().unwrap().contains("503"),
        "{crm_lane}"
    );
    assert!(crm_lane["paused_since"].is_string(), "{crm_lane}");
    let numbers = &crm_lane["consumer_info"];
    assert!(
        numbers["ack_pending"].as_u64().unwrap() >= 1,
        "held events are in progress: {numbers}"
    );
    for key in ["pending", "redelivered", "waiting"] {
        assert!(numbers[key].is_u64(), "{key} in {numbers}");
    }
    // Lanes without a gate have consumer numbers and no circuit.
    for role in ["intake", "softphones"] {
        let other = lane(&status, role);
        assert!(other["consumer_info"]["pending"].is_u64(), "{other}");
        assert!(other["circuit"].is_null(), "{other}");
    }
    assert_eq!(status["dead_letters"]["total"], 0);
    assert_eq!(status["registry"]["bucket"], app.settings.registry.bucket);
    assert!(status["registry"]["entries"].is_u64(), "{status}");
    assert!(
        status.get("call_memory").is_none(),
        "no Salesforce: {status}"
    );

    // The same on a screen.
    let out = bridge(
        &["status", "--wait", "1s"],
        &[("SOFTPHONE_BRIDGE_NATS__URL", &app.nats.url), PARTITIONS],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("Replicas answering: 1"), "{screen}");
    let member = members[0].as_str().unwrap();
    assert!(
        screen.contains(&format!("0,1 → {member}")),
        "the shares on screen: {screen}"
    );
    let row = screen
        .lines()
        .find(|line| line.starts_with("crm:crm"))
        .unwrap_or_else(|| panic!("a row for the crm lane: {screen}"));
    assert!(row.contains("1/1"), "paused in 1 of 1 replicas: {row}");
    assert!(row.contains("503"), "{row}");
    assert!(screen.contains("Dead letters: 0"), "{screen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_dead_letters_by_reason_and_shows_api_usage() {
    let sf = FakeSalesforce::start().await;
    sf.org().limit_info = Some("api-usage=18/5000".into());
    let app =
        crate::salesforce::spawn(&sf, "client_credentials", "[crm.lookup]\nenabled = false").await;
    crate::salesforce::deliver(
        &app,
        EventKind::CallAccepted,
        &call_body(&conversation(), ""),
    )
    .await;
    // Two events the contract refuses, for one reason each.
    for reason in ["bored", "sleepy"] {
        let body = call_body(&conversation(), &format!(r#""reason":"{reason}""#));
        app.publish(EventKind::CallRejected, &body, None).await;
    }
    app.publish(EventKind::CallEnded, "{", None).await;
    let mut letters = app.dead_letters().await;
    for _ in 0..3 {
        letters.next().await;
    }

    let status = status_json(&app.nats.url);
    assert_eq!(status["replicas"], 1, "{status}");
    assert_eq!(
        status["api_usage"]["crm"],
        serde_json::json!({"used": 18, "limit": 5000}),
        "{status}"
    );
    let dead = &status["dead_letters"];
    assert_eq!(dead["total"], 3, "{dead}");
    assert_eq!(dead["other"], 0, "{dead}");
    let by_reason = dead["by_reason"].as_object().expect("counts by reason");
    assert_eq!(
        by_reason.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        3,
        "{dead}"
    );
    assert!(
        by_reason
            .keys()
            .all(|reason| reason.starts_with("invalid payload")),
        "{dead}"
    );
    let crm_lane = lane(&status, "crm");
    assert_eq!(crm_lane["circuit"], "closed", "{crm_lane}");
    assert_eq!(crm_lane["paused_in"], 0);
    // The Salesforce connection's call memory remembers the one call.
    assert_eq!(
        status["call_memory"]["bucket"], "SOFTPHONE_CALLS",
        "{status}"
    );
    assert_eq!(status["call_memory"]["entries"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_gathers_every_replicas_answer() {
    let nats = start_nats().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", nats.url.as_str())];
    let provision = bridge(&["provision"], &env);
    assert!(provision.status.success(), "{}", stderr(&provision));
    let crm = FakeCrm::answering(ResponseTemplate::new(503)).await;
    // Sixteen partitions: each replica works some of the lane (both but
    // with a chance of 2 in 65 536).
    let config = bridge_config(
        &crm.url(),
        "\n[lanes]\npause_after = 1\nprobe_every = \"300ms\"\n",
    )
    .replace("partitions = 2", "partitions = 16");
    let _replicas = [
        Bridge::start(&nats.url, &config),
        Bridge::start(&nats.url, &config),
    ];
    // More events than one replica has room for (worker.concurrency = 4):
    // both get some, and both pause.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for _ in 0..20 {
        publish(
            &js,
            EventKind::CallAccepted,
            &call_body(&conversation(), ""),
            None,
        )
        .await;
    }
    let status = eventually("both replicas to report the lane paused", || async {
        let status = status_json_with(&nats.url, "16");
        (status["replicas"] == 2 && lane(&status, "crm")["paused_in"] == 2).then_some(status)
    })
    .await;
    let crm_lane = lane(&status, "crm");
    assert_eq!(crm_lane["replicas"], 2, "{crm_lane}");
    let held = crm_lane["held"].as_u64().unwrap();
    assert!(
        (2..=20).contains(&held),
        "each holds what it pulled, nothing twice: {crm_lane}"
    );
}
