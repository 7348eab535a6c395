//! `softphone-bridge provision [--dry-run]`: one line per stream, consumer
//! and bucket, with the real binary against a real NATS.

use async_nats::jetstream;
use softphone_bridge::contract::{EVENTS_STREAM, LANES_STREAM};

use crate::cli::{bridge, config_file, stderr};
use crate::helpers::*;

const STREAMS: [&str; 4] = [
    "SOFTPHONE_EVENTS",
    "SOFTPHONE_LANES",
    "SOFTPHONE_COMMANDS",
    "SOFTPHONE_DLQ",
];

fn provision(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut all = vec!["provision"];
    all.extend_from_slice(args);
    let out = bridge(&all, env);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn max_age(js: &jetstream::Context, stream: &str) -> std::time::Duration {
    let mut stream = js.get_stream(stream).await.expect("the stream exists");
    stream.info().await.unwrap().config.max_age
}

#[tokio::test]
async fn provision_prints_what_it_did_and_dry_run_changes_nothing() {
    let nats = start_nats().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", nats.url.as_str())];
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = jetstream::new(client);

    // Nothing yet: a dry run says what it would create, and creates nothing.
    let planned = provision(&["--dry-run"], &env);
    for stream in STREAMS {
        assert!(
            planned.contains(&format!("stream {stream}: would be created")),
            "{planned:#?}"
        );
    }
    assert!(
        planned.contains(&format!(
            "consumer softphone-bridge-intake on {EVENTS_STREAM}: would be created"
        )),
        "{planned:#?}"
    );
    assert!(
        js.get_stream(EVENTS_STREAM).await.is_err(),
        "nothing created"
    );

    // Then for real: the same lines, done: four streams, the intake, four
    // partitions of the softphone lane and of the default connection's, and
    // four buckets (registry, command keys, members, owners).
    let created = provision(&[], &env);
    assert_eq!(created.len(), 17, "{created:#?}");
    assert!(
        created.iter().all(|l| l.ends_with(": created")),
        "{created:#?}"
    );
    for (what, name) in [
        ("stream", "SOFTPHONE_DLQ".to_owned()),
        (
            "consumer",
            format!("softphone-bridge-crm-crm-3 on {LANES_STREAM}"),
        ),
        (
            "consumer",
            format!("softphone-bridge-softphones-0 on {LANES_STREAM}"),
        ),
        ("bucket", "SOFTPHONE_REGISTRY".to_owned()),
        ("bucket", "SOFTPHONE_MEMBERS".to_owned()),
        ("bucket", "SOFTPHONE_PARTITIONS".to_owned()),
    ] {
        assert!(
            created.contains(&format!("{what} {name}: created")),
            "{what} {name}: {created:#?}"
        );
    }

    // Again: the server has everything as the settings say.
    let again = provision(&[], &env);
    assert_eq!(again.len(), 17, "{again:#?}");
    assert!(
        again.iter().all(|l| l.ends_with(": unchanged")),
        "{again:#?}"
    );

    // Settings change: a shorter retention and one more connection. A dry
    // run shows the difference, old → new, and changes nothing.
    let config =
        config_file("[streams]\nevents_max_age = \"3days\"\n\n[crms.extra]\nkind = \"log\"\n");
    let path = config.path().to_str().unwrap();
    let planned = provision(&["--config", path, "--dry-run"], &env);
    for stream in [EVENTS_STREAM, LANES_STREAM] {
        assert!(
            planned.contains(&format!(
                "stream {stream}: would be updated (max_age: 7days → 3days)"
            )),
            "{planned:#?}"
        );
    }
    assert!(
        planned.contains(&format!(
            "consumer softphone-bridge-crm-extra-0 on {LANES_STREAM}: would be created"
        )),
        "{planned:#?}"
    );
    assert!(
        planned.contains(&"stream SOFTPHONE_DLQ: unchanged".to_owned()),
        "{planned:#?}"
    );
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    assert_eq!(
        max_age(&js, EVENTS_STREAM).await,
        week,
        "unchanged by a dry run"
    );
    let lanes = js.get_stream(LANES_STREAM).await.unwrap();
    assert!(
        lanes
            .consumer_info("softphone-bridge-crm-extra-0")
            .await
            .is_err(),
        "no consumer created by a dry run"
    );

    // Applied, it says what it changed.
    let applied = provision(&["--config", path], &env);
    assert!(
        applied.contains(&format!(
            "stream {EVENTS_STREAM}: updated (max_age: 7days → 3days)"
        )),
        "{applied:#?}"
    );
    assert!(
        applied.contains(&format!(
            "consumer softphone-bridge-crm-extra-0 on {LANES_STREAM}: created"
        )),
        "{applied:#?}"
    );
    assert_eq!(max_age(&js, EVENTS_STREAM).await, week * 3 / 7);
    lanes
        .consumer_info("softphone-bridge-crm-extra-0")
        .await
        .expect("the new lane's consumer exists");
}
