//! `softphone-bridge doctor`: one line per check, against a real NATS, a
//! webhook CRM and a fake Salesforce org over HTTP.

use wiremock::ResponseTemplate;

use crate::cli::{bridge, config_file, stderr};
use crate::helpers::fakes::salesforce::{CLIENT_SECRET, EXTERNAL_ID, FakeSalesforce};
use crate::helpers::*;

/// A configuration with a webhook `[crm]` and a Salesforce `[crms.sf]`.
fn config(crm: &FakeCrm, sf: &FakeSalesforce) -> tempfile::NamedTempFile {
    let salesforce = sf.crm_toml("client_credentials", "");
    config_file(&format!(
        "[crm]\n{}\n\n[crms.sf]\n{salesforce}\n",
        webhook_crm(&crm.url())
    ))
}

/// Runs doctor; its exit status and its lines.
fn doctor(config: &tempfile::NamedTempFile, nats_url: &str) -> (bool, Vec<String>) {
    let out = bridge(
        &["doctor", "--config", config.path().to_str().unwrap()],
        &[("SOFTPHONE_BRIDGE_NATS__URL", nats_url)],
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for secret in [WEBHOOK_SECRET, CLIENT_SECRET] {
        assert!(!printed.contains(secret), "{printed}");
        assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    }
    (
        out.status.success(),
        printed.lines().map(str::to_owned).collect(),
    )
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("a line starting {prefix:?}: {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_is_all_green_on_a_working_configuration() {
    let nats = start_nats().await;
    let crm = FakeCrm::start().await;
    let sf = FakeSalesforce::start().await;
    let config = config(&crm, &sf);
    let path = config.path().to_str().unwrap();
    let provision = bridge(
        &["provision", "--config", path],
        &[("SOFTPHONE_BRIDGE_NATS__URL", &nats.url)],
    );
    assert!(provision.status.success(), "{}", stderr(&provision));

    let (ok, lines) = doctor(&config, &nats.url);
    assert!(ok, "{lines:#?}");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with('✓')), "{lines:#?}");
    assert!(line(&lines, "✓ NATS at").contains("JetStream enabled"));
    assert!(line(&lines, "✓ streams and consumers").contains("up to date"));
    assert!(line(&lines, "✓ crm crm (webhook)").contains("answered 200"));
    assert!(
        line(&lines, "✓ crm sf (salesforce)")
            .contains(&format!("Task.{EXTERNAL_ID} is an External ID and Unique")),
        "{lines:#?}"
    );

    // The webhook got a signed test event, marked as such.
    let request = crm.next_request().await;
    crate::events::verify_signature(&request);
    assert_eq!(request.headers.get("X-Softphone-Test").unwrap(), "true");
    assert_eq!(request.headers.get("X-Softphone-Event").unwrap(), "test");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["event"], "test");
    assert_eq!(
        body["id"].as_str(),
        request.headers.get("webhook-id").unwrap().to_str().ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_each_failure_and_exits_non_zero() {
    let nats = start_nats().await;
    let crm = FakeCrm::answering(ResponseTemplate::new(404)).await;
    let sf = FakeSalesforce::start().await;
    sf.org().external_id_not_unique = true;
    let config = config(&crm, &sf);

    // Nothing provisioned, a webhook that is not there, a Task field that is
    // not Unique: each check says which.
    let (ok, lines) = doctor(&config, &nats.url);
    assert!(!ok, "{lines:#?}");
    assert!(line(&lines, "✓ NATS at").contains("JetStream enabled"));
    let streams = line(&lines, "✗ streams and consumers");
    assert!(
        streams.contains("stream SOFTPHONE_EVENTS: would be created"),
        "{streams}"
    );
    assert!(streams.contains("softphone-bridge provision"), "{streams}");
    assert!(
        line(&lines, "✗ crm crm (webhook)").contains("404 Not Found"),
        "{lines:#?}"
    );
    assert!(
        line(&lines, "✗ crm sf (salesforce)")
            .contains(&format!("Task.{EXTERNAL_ID} is not Unique")),
        "{lines:#?}"
    );

    // NATS unreachable: said once, with the URL's password redacted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, lines) = doctor(&config, &format!("nats://user:topsecret@{closed}"));
    assert!(!ok);
    let nats_line = line(&lines, "✗ NATS at");
    assert!(nats_line.contains("cannot connect"), "{nats_line}");
    assert!(!lines.join("\n").contains("topsecret"), "{lines:#?}");
    assert!(line(&lines, "✗ streams and consumers").contains("not checked"));
}
