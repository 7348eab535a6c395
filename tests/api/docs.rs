//! The documents stay true to the code: subjects.md, the README's commands,
//! its layout and its links, and the example configuration.

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
    for document in ["README.md", "docs/crm-adapters.md", "deploy/dynamics.md"] {
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

#[test]
fn the_readme_layout_names_every_module() {
    let readme = read("README.md");
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|rest| rest.split("```").nth(1))
        .expect("the README has a layout");
    fn names(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.push(format!("{name}/"));
                names(&path, out);
            } else {
                out.push(name);
            }
        }
    }
    let mut all = Vec::new();
    names(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut all,
    );
    let missing: Vec<_> = all
        .iter()
        .filter(|n| !layout.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "the README's layout omits {missing:?}");
}

#[test]
fn the_documents_links_resolve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md"), root.join("subjects.md")];
    for dir in ["docs", "deploy"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                documents.push(path);
            }
        }
    }
    for document in documents {
        let text = std::fs::read_to_string(&document).unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            assert!(
                document.parent().unwrap().join(file).exists(),
                "{}: link to {target} resolves to nothing",
                document.display()
            );
        }
    }
}
