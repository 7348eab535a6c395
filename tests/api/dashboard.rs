//! The Grafana dashboard and the Prometheus alert rules in deploy/ only use
//! series the bridge exposes, and the rules pass `promtool` where it is installed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use softphone_bridge::contract::EventKind;

use crate::helpers::fakes::salesforce::FakeSalesforce;
use crate::helpers::*;

const DASHBOARD: &str = "deploy/grafana/softphone-bridge.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

/// Every `softphone_bridge_…` name in `text`.
fn series_named_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("softphone_bridge_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The queries of the dashboard's panels and template variables.
fn dashboard_queries() -> String {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut queries = String::new();
    let panels = doc["panels"].as_array().expect("panels");
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        queries.push_str(target["expr"].as_str().expect("expr"));
        queries.push('\n');
    }
    for variable in doc["templating"]["list"].as_array().unwrap() {
        queries.push_str(variable["definition"].as_str().unwrap_or_default());
        queries.push('\n');
    }
    queries
}

/// The expressions of the alert rules.
fn alert_expressions() -> String {
    let doc: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(ALERTS).unwrap()).unwrap();
    let mut exprs = String::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            assert!(rule["alert"].as_str().is_some(), "an alert: {rule:?}");
            exprs.push_str(rule["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    exprs
}

#[tokio::test]
async fn every_series_the_dashboard_and_alerts_use_exists_on_metrics() {
    let dashboard = series_named_in(&dashboard_queries());
    let alerts = series_named_in(&alert_expressions());
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    assert!(alerts.len() >= 5, "{alerts:?}");

    // Traffic through a Salesforce connection (its API usage series appear
    // only there), a redelivery, the softphone lane, the dead-letter queue
    // and the command API.
    let sf = FakeSalesforce::start().await;
    sf.org().limit_info = Some("api-usage=18/5000".into());
    let nats = start_nats().await;
    let mut settings = http_settings(&nats.url);
    settings.crm = softphone_bridge::config::Settings::from_toml(&format!(
        "[crm]\n{}",
        sf.crm_toml("client_credentials", "")
    ))
    .unwrap()
    .crm;
    settings.http.ops_listen = Some("127.0.0.1:0".into());
    let app = App::builder(nats).with(settings).spawn().await;
    app.load("agent-1", Some(PARTNER)).await;
    let mut letters = app.dead_letters().await;
    // A locked record is the event's own trouble: retried, so redelivered.
    sf.org().item_errors.push_back("UNABLE_TO_LOCK_ROW");
    app.publish(
        EventKind::CallEnded,
        &call_body(&conversation(), r#""disposition":"Sale""#),
        None,
    )
    .await;
    app.publish(EventKind::CallEnded, r#"{"partnerId":"nope"}"#, None)
        .await;
    letters.next().await;
    app.settled().await;
    assert_eq!(
        app.command("agent-1", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );

    let exposed = app.metrics().await;
    for name in dashboard.union(&alerts) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| exposed.contains(&format!("# TYPE {base} histogram")))
            .unwrap_or(name);
        assert!(
            exposed.contains(&format!("\n{name}{{")) || exposed.contains(&format!("\n{name} ")),
            "{name} (used in deploy/) has no sample on /metrics:\n{exposed}"
        );
        assert!(
            exposed.contains(&format!("# HELP {base} ")),
            "{base} is not described in src/telemetry/metric.rs"
        );
    }
    app.stop().await;
}

#[test]
fn alert_rules_pass_promtool_where_it_is_installed() {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("promtool").is_file()));
    if !found {
        eprintln!("promtool is not on the PATH; not checking {ALERTS} with it");
        return;
    }
    assert!(Path::new(ALERTS).is_file());
    let output = Command::new("promtool")
        .args(["check", "rules", ALERTS])
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check rules {ALERTS}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
