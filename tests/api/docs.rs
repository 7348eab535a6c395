//! The documents stay true to the code: subjects.md, the README's commands and
//! the example configuration.

use softphone_bridge::config::Settings;
use softphone_bridge::contract::{self, Callback, EventKind, dlq_header, replay_header};

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn subjects_md_matches_the_code() {
    let doc = read("subjects.md");
    for kind in EventKind::ALL {
        let row = format!("| `{}` | `{}` |", kind.subject(), kind.contract_name());
        assert!(
            doc.contains(&row),
            "subjects.md lacks the row for {kind}: {row}"
        );
    }
    let documented_events = doc
        .lines()
        .filter(|l| l.starts_with("| `softphone.") && l.contains("` | `"))
        .count();
    assert_eq!(
        documented_events,
        EventKind::ALL.len(),
        "no undocumented or stale event rows"
    );
    for name in [
        contract::EVENTS_STREAM,
        contract::LANES_STREAM,
        contract::LANE_SUBJECTS,
        contract::lane_header::PUBLISHED,
        contract::COMMANDS_STREAM,
        contract::DLQ_STREAM,
        contract::COMMAND_SUBJECTS,
        contract::DLQ_SUBJECTS,
        contract::LOAD_REQUEST_SUBJECT,
        contract::LOAD_QUEUE_GROUP,
        contract::API_COMMAND_SUBJECT,
        dlq_header::REASON,
        dlq_header::DETAIL,
        dlq_header::SUBJECT,
        dlq_header::SEQUENCE,
        dlq_header::DELIVERIES,
        dlq_header::EVENT_ID,
        dlq_header::PUBLISHED,
        dlq_header::BODY_OMITTED,
        contract::REPLAY_SUBJECTS,
        replay_header::EVENT_ID,
        replay_header::PUBLISHED,
    ] {
        assert!(
            doc.contains(&format!("`{name}`")),
            "subjects.md does not mention `{name}`"
        );
    }
    let sample = [
        Callback::Disposition(vec![]),
        serde_json::from_str(r#"{"type":"update_presence","payload":{"softphoneId":"d6afeaa7-39be-4935-981f-2670215fd887"}}"#).unwrap(),
    ];
    for callback in sample {
        assert!(doc.contains(&format!("| `{}` |", callback.type_name())));
    }
    for name in ["partner_config", "start_call"] {
        assert!(doc.contains(&format!("| `{name}` |")));
    }
}

#[test]
fn readme_commands_are_the_ones_ci_and_developers_run() {
    let readme = read("README.md");
    let ci = read(".ci/run");
    assert!(readme.contains("bash deploy/test.sh") && ci.contains("bash deploy/test.sh"));
    assert!(readme.contains("bash deploy/run-local.sh"));
    for script in [
        "deploy/test.sh",
        "deploy/run-local.sh",
        "deploy/nats-image.sh",
    ] {
        assert!(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/"))
                .join(script)
                .is_file()
        );
    }
}

#[test]
fn the_example_configuration_is_valid_and_holds_the_defaults() {
    let example =
        Settings::from_toml(&read("deploy/softphone-bridge.example.toml")).expect("example parses");
    let defaults = Settings::from_toml("").unwrap();
    assert_eq!(example.to_redacted_toml(), defaults.to_redacted_toml());
}

#[test]
fn the_readme_configuration_examples_are_valid() {
    for document in ["README.md", "deploy/dynamics.md"] {
        let text = read(document);
        let blocks: Vec<&str> = text
            .split("```toml\n")
            .skip(1)
            .map(|rest| rest.split("```").next().unwrap())
            .collect();
        assert!(!blocks.is_empty(), "{document}");
        for block in blocks {
            // A secret file the example names stands for one mounted there.
            let block = block.replace(
                "client_secret_file = \"/run/secrets/contoso-dynamics\"",
                "client_secret = \"s\"",
            );
            Settings::from_toml(&block).unwrap_or_else(|e| panic!("{document}: {e}\n{block}"));
        }
    }
}
