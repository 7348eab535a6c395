//! The command line: configuration errors, check-config, provision and emit.

use std::process::Output;

use async_nats::jetstream;
use serde_json::Value;
use softphone_bridge::contract::{EVENTS_STREAM, LANES_STREAM};

use crate::helpers::*;

pub(crate) fn bridge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"));
    cmd.args(args)
        .env_remove("SOFTPHONE_BRIDGE_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub(crate) fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn check_config_prints_the_layers_merged_with_secrets_redacted() {
    let file = config_file(
        "[crm]\nkind = \"webhook\"\nurl = \"https://crm.example/hook\"\nsecret = \"from-the-file\"\n",
    );
    let out = bridge(
        &["check-config", "--config", file.path().to_str().unwrap()],
        &[
            ("SOFTPHONE_BRIDGE_CRM__SECRET", "hunter2-from-env"),
            ("SOFTPHONE_BRIDGE_WORKER__CONCURRENCY", "5"),
            (
                "SOFTPHONE_BRIDGE_NATS__URL",
                "nats://bob:pa55@nats.internal:4222",
            ),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let rendered: toml::Table = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(
        rendered["worker"]["concurrency"].as_integer(),
        Some(5),
        "env wins over defaults"
    );
    assert_eq!(
        rendered["crm"]["url"].as_str(),
        Some("https://crm.example/hook")
    );
    assert_eq!(rendered["crm"]["secret"].as_str(), Some("[redacted]"));
    assert_eq!(
        rendered["nats"]["url"].as_str(),
        Some("nats://[redacted]@nats.internal:4222")
    );
    for secret in ["hunter2-from-env", "from-the-file", "pa55"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

#[test]
fn check_config_reads_secret_files_and_never_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let password = write("nats-password", "pa55-from-a-file\n");
    let secret = write("webhook-secret", "webhook-s3cret-from-a-file\n");
    let file = config_file(&format!(
        "[nats]\nuser = \"bridge\"\npassword_file = \"{password}\"\n\
         [crm]\nkind = \"webhook\"\nurl = \"https://crm.example/hook\"\n"
    ));
    let config = file.path().to_str().unwrap();
    let out = bridge(
        &["check-config", "--config", config],
        &[("SOFTPHONE_BRIDGE_CRM__SECRET_FILE", &secret)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let rendered: toml::Table = toml::from_str(&text).expect("check-config prints TOML");
    assert_eq!(rendered["nats"]["password"].as_str(), Some("[redacted]"));
    assert_eq!(rendered["crm"]["secret"].as_str(), Some("[redacted]"));
    for leaked in ["pa55-from-a-file", "webhook-s3cret-from-a-file"] {
        assert!(!text.contains(leaked), "{leaked} leaked: {text}");
    }

    // Errors: one line naming the key and the file, never the content.
    for (env, expected) in [
        (
            vec![
                ("SOFTPHONE_BRIDGE_CRM__SECRET_FILE", secret.as_str()),
                ("SOFTPHONE_BRIDGE_CRM__SECRET", "inline"),
            ],
            vec!["crm.secret_file", "crm.secret", "not both"],
        ),
        (
            vec![("SOFTPHONE_BRIDGE_CRM__SECRET_FILE", "/nonexistent/secret")],
            vec![
                "crm.secret_file",
                "/nonexistent/secret",
                "SOFTPHONE_BRIDGE_CRM__SECRET_FILE",
            ],
        ),
        (
            vec![
                ("SOFTPHONE_BRIDGE_CRM__SECRET_FILE", secret.as_str()),
                ("SOFTPHONE_BRIDGE_NATS__TOKEN_FILE", password.as_str()),
            ],
            vec!["set only one of token, user/password and creds_file"],
        ),
    ] {
        let out = bridge(&["check-config", "--config", config], &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for needle in expected {
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        for leaked in ["pa55-from-a-file", "webhook-s3cret-from-a-file"] {
            assert!(!err.contains(leaked), "{leaked} leaked: {err}");
        }
    }
}

#[test]
fn configuration_errors_are_one_line_naming_the_key_and_its_source() {
    let unknown = config_file("[worker]\nconcurency = 4\n");
    let path = unknown.path().to_str().unwrap().to_owned();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            vec!["check-config", "--config", &path],
            vec![],
            vec!["`worker.concurency`: unknown field".into(), path.clone()],
        ),
        (
            vec!["check-config"],
            vec![
                ("SOFTPHONE_BRIDGE_CRM__KIND", "webhook"),
                ("SOFTPHONE_BRIDGE_CRM__URL", "http://x/"),
            ],
            vec![
                "`crm.secret`: missing field `secret`".into(),
                "SOFTPHONE_BRIDGE_CRM__*".into(),
            ],
        ),
        (
            vec!["check-config"],
            vec![
                ("SOFTPHONE_BRIDGE_CRM__KIND", "webhook"),
                ("SOFTPHONE_BRIDGE_CRM__URL", "not a url"),
                ("SOFTPHONE_BRIDGE_CRM__SECRET", "s3"),
            ],
            vec![
                "url \"not a url\" is not a URL".into(),
                "SOFTPHONE_BRIDGE_CRM__*".into(),
            ],
        ),
        (
            vec!["check-config"],
            vec![
                ("SOFTPHONE_BRIDGE_CRM__KIND", "webhook"),
                ("SOFTPHONE_BRIDGE_CRM__URL", "ftp://u:secretpw@x/"),
                ("SOFTPHONE_BRIDGE_CRM__SECRET", "s3"),
            ],
            vec!["url \"ftp://[redacted]@x/\" is not an http(s) URL".into()],
        ),
        (
            vec!["check-config"],
            vec![("SOFTPHONE_BRIDGE_CRM__KIND", "salesforce-ish")],
            vec!["`crm.kind`".into(), "salesforce-ish".into()],
        ),
        (
            vec!["check-config"],
            vec![("SOFTPHONE_BRIDGE_WORKER__ACK_WAIT", "soon")],
            vec![
                "`worker.ack_wait`".into(),
                "SOFTPHONE_BRIDGE_WORKER__ACK_WAIT".into(),
            ],
        ),
        (
            vec!["check-config"],
            vec![(
                "SOFTPHONE_BRIDGE_NATS__URL",
                "nats://u:secretpw@host:notaport",
            )],
            vec!["nats.url".into()],
        ),
        (
            vec!["check-config"],
            vec![(
                "SOFTPHONE_BRIDGE_PARTNERS__NOT-A-GUID__BUSINESS_SEGMENT_ID",
                "x",
            )],
            vec!["`partners.not-a-guid`".into(), "is not a GUID".into()],
        ),
        (
            vec!["check-config", "--config", "/nonexistent/bridge.toml"],
            vec![],
            vec!["/nonexistent/bridge.toml".into()],
        ),
    ];
    for (args, env, expected) in cases {
        let out = bridge(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for needle in expected {
            assert!(err.contains(&needle), "{err:?} should mention {needle:?}");
        }
        assert!(!err.contains("secretpw"), "no secret in errors: {err}");
    }
}

/// Secrets a test puts in URLs, none of which may be shown anywhere.
const URL_SECRETS: [&str; 5] = [
    "hook-s3cret",
    "q-s3cret",
    "sf-s3cret",
    "sf-q-s3cret",
    "nats-s3cret",
];

/// A webhook URL with credentials in its userinfo and its query, at `authority`.
fn webhook_url_with_secrets(authority: &str) -> String {
    format!("http://hook-user:hook-s3cret@{authority}/hook?tenant=7&token=q-s3cret")
}

fn assert_no_url_secret(text: &str) {
    for secret in URL_SECRETS {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[test]
fn check_config_and_errors_redact_the_credentials_of_every_url() {
    let file = config_file(&format!(
        "[crm]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"s\"\n\
         [crms.sf]\nkind = \"salesforce\"\nauth = \"client_credentials\"\n\
         login_url = \"https://sf-user:sf-s3cret@acme.my.salesforce.com/?sig=sf-q-s3cret\"\n\
         client_id = \"k\"\nclient_secret = \"c\"\n",
        webhook_url_with_secrets("crm.example")
    ));
    let config = file.path().to_str().unwrap();
    let env = [(
        "SOFTPHONE_BRIDGE_NATS__URL",
        "nats://bridge:nats-s3cret@127.0.0.1:1",
    )];
    let out = bridge(&["check-config", "--config", config], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_no_url_secret(&text);
    let rendered: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        rendered["crm"]["url"].as_str(),
        Some("http://[redacted]@crm.example/hook?tenant=7&token=[redacted]")
    );
    assert_eq!(
        rendered["crms"]["sf"]["login_url"].as_str(),
        Some("https://[redacted]@acme.my.salesforce.com/?sig=[redacted]")
    );

    // A URL that is not one is named in the error, redacted.
    let bad = [(
        "SOFTPHONE_BRIDGE_CRM__URL",
        "ftp://u:hook-s3cret@x/?token=q-s3cret",
    )];
    let out = bridge(&["check-config", "--config", config], &bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains(r#"url "ftp://[redacted]@x/?token=[redacted]" is not an http(s) URL"#),
        "{}",
        stderr(&out)
    );
    assert_no_url_secret(&stderr(&out));
}

/// The running bridge and `doctor` with a webhook that refuses connections:
/// the failures are logged, counted and reported without the URL's secrets.
#[tokio::test]
async fn url_credentials_never_reach_logs_errors_or_metrics() {
    let nats = start_nats().await;
    let dead = webhook_url_with_secrets(&format!("127.0.0.1:{}", free_port()));
    let ops = format!("127.0.0.1:{}", free_port());
    let config = bridge_config(
        &dead,
        &format!("[lanes]\npause_after = 1\n[http]\nops_listen = \"{ops}\"\n"),
    );
    let replica = Bridge::start(&nats.url, &config);
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    eventually("the bridge to provision the streams", || async {
        js.get_stream(EVENTS_STREAM).await.ok().map(drop)
    })
    .await;
    publish(
        &js,
        softphone_bridge::contract::EventKind::CallAccepted,
        &call_body(&conversation(), ""),
        None,
    )
    .await;
    replica
        .logged_line(&["lane paused", "CRM connection failed"])
        .await;
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("softphone_bridge_lane_paused"),
        "{metrics}"
    );
    assert_no_url_secret(&metrics);

    let file = config_file(&config);
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", nats.url.as_str())];
    let doctor = bridge(&["doctor", "--config", file.path().to_str().unwrap()], &env);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("✗ crm crm (webhook)"), "{report}");
    assert_no_url_secret(&report);
    assert_no_url_secret(&stderr(&doctor));

    // The health probe names the URL it was given, redacted.
    let health = bridge(&["health", "--url", &dead], &[]);
    assert_eq!(health.status.code(), Some(1));
    assert!(
        stderr(&health).contains("no answer from http://[redacted]@127.0.0.1:"),
        "{}",
        stderr(&health)
    );
    assert_no_url_secret(&stderr(&health));

    replica.terminate();
    let (_, logs) = replica.wait().await;
    assert!(logs.contains("CRM connection failed"), "{logs}");
    assert_no_url_secret(&logs);
}

#[test]
fn time_filters_refuse_what_no_stream_can_hold_naming_the_value() {
    // Parsed before NATS is reached: the URL leads nowhere.
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", "nats://127.0.0.1:1")];
    for (args, value, why) in [
        (
            vec!["dlq", "list", "--since"],
            "99999999999days",
            "before the Unix epoch",
        ),
        (
            vec!["dlq", "list", "--since"],
            "1000years",
            "before the Unix epoch",
        ),
        (
            vec!["dlq", "purge", "--yes", "--until"],
            "1026-01-01T00:00:00Z",
            "before the Unix epoch",
        ),
        (
            vec!["replay", "--yes", "--since"],
            "1026-01-01T00:00:00Z",
            "before the Unix epoch",
        ),
        (
            vec!["replay", "--since", "1h", "--until"],
            "10000-01-01T00:00:00Z",
            "after the year 9999",
        ),
        (
            vec!["dlq", "replay", "--dry-run", "--since"],
            "soonish",
            "neither an RFC 3339 time nor a duration",
        ),
    ] {
        let mut args = args;
        args.push(value);
        let out = bridge(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let flag = args[args.len() - 2];
        assert!(
            err.starts_with(&format!("error: invalid value '{value}' for '{flag} ")),
            "{args:?} should name {value:?}: {err}"
        );
        assert!(err.contains(why), "{args:?} should say {why:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A range that cannot hold anything is refused before connecting.
    for args in [
        vec!["dlq", "list", "--since", "1h", "--until", "2h"],
        vec!["replay", "--dry-run", "--since", "1h", "--until", "2h"],
    ] {
        let out = bridge(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("--until is before --since"), "{err}");
    }
}

#[tokio::test]
async fn provision_then_emit_validates_and_publishes_once() {
    let nats = start_nats().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", nats.url.as_str())];
    let provision = bridge(&["provision"], &env);
    assert!(provision.status.success(), "{}", stderr(&provision));

    let body = call_body(&conversation(), r#""reason":"active""#);
    let first = bridge(&["emit", "call.rejected", &body], &env);
    assert!(first.status.success(), "{}", stderr(&first));
    let ack: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(ack["stream"], EVENTS_STREAM);
    assert_eq!(ack["subject"], "softphone.call.rejected");
    assert_eq!(ack["duplicate"], false);

    // The same command again is a duplicate, not a second event.
    let again = bridge(&["emit", "callRejected", &body], &env);
    let ack2: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(ack2["duplicate"], true);
    assert_eq!(ack2["id"], ack["id"]);

    // From a file, with an explicit id.
    let file = config_file(&call_body(&conversation(), r#""dialledTo":"+18449401117""#));
    let at = format!("@{}", file.path().display());
    let from_file = bridge(
        &[
            "emit",
            "softphone.call.outbound_initiated",
            &at,
            "--id",
            "out-7",
        ],
        &env,
    );
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(
        serde_json::from_slice::<Value>(&from_file.stdout).unwrap()["id"],
        "out-7"
    );

    // Invalid events are refused before anything is published.
    for (event, payload, says) in [
        (
            "call.rejected",
            call_body(&conversation(), r#""reason":"bored""#),
            "unknown variant `bored`",
        ),
        ("call.ended", "{".to_owned(), "malformed JSON"),
        (
            "call.exploded",
            "{}".to_owned(),
            "unknown event \"call.exploded\"",
        ),
    ] {
        let out = bridge(&["emit", event, &payload], &env);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    let client = async_nats::connect(&nats.url).await.unwrap();
    assert_eq!(
        stream_messages(&jetstream::new(client), EVENTS_STREAM).await,
        2,
        "one rejected call and one outbound call"
    );
}

#[test]
fn commands_against_an_unreachable_nats_fail_with_the_reason() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("nats://user:topsecret@{closed}");
    let out = bridge(&["provision"], &[("SOFTPHONE_BRIDGE_NATS__URL", &url)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(!err.contains("topsecret"), "{err}");
}

#[tokio::test]
async fn provision_reports_the_lane_of_a_connection_no_longer_configured() {
    let nats = start_nats().await;
    let env = [("SOFTPHONE_BRIDGE_NATS__URL", nats.url.as_str())];
    let before = config_file("[crms.gone]\nkind = \"log\"\n");
    let first = bridge(
        &["--config", before.path().to_str().unwrap(), "provision"],
        &env,
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let printed = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        !printed.contains("no configured lane partition"),
        "{printed}"
    );

    // An older replica routed an event there before the connection went.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("softphone.lane.crm.gone.0.call.ended", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let after = config_file("");
    let second = bridge(
        &["--config", after.path().to_str().unwrap(), "provision"],
        &env,
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let printed = String::from_utf8_lossy(&second.stdout).into_owned();
    let line = printed
        .lines()
        .find(|line| line.contains("softphone-bridge-crm-gone-0"))
        .unwrap_or_else(|| panic!("the leftover lane is reported: {printed}"));
    assert!(
        line.contains("kept, no configured lane partition uses it (1 pending"),
        "{line}"
    );
    // Kept, not deleted: its event waits there.
    let lanes = js.get_stream(LANES_STREAM).await.unwrap();
    assert_eq!(
        lanes
            .consumer_info("softphone-bridge-crm-gone-0")
            .await
            .expect("kept")
            .num_pending,
        1
    );
}
