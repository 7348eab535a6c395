//! Secrets (consumer secret, private key, assertions, access tokens) never
//! reach logs, errors or Debug output, whatever the org answers.

use std::io::Write;
use std::sync::{Arc, Mutex};

use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

const ACCESS_TOKEN: &str = "00Dsecret!ACCESS-TOKEN-VALUE";
const CLIENT_SECRET: &str = "CONSUMER-SECRET-VALUE";
const KEY_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/TEST-ONLY-salesforce-key.pem"
);

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn event() -> CrmEvent {
    let body = br#"{"partnerId":"215fd887-39be-4935-981f-2670d6afeaa7","conversationId":"57053e21-0440-4689-a27a-513d7dceebde","notes":"n"}"#;
    CrmEvent {
        id: "e".into(),
        event: Event::decode(crate::contract::EventKind::CallNotesSubmitted, body).unwrap(),
        raw: bytes::Bytes::copy_from_slice(body.as_ref()),
        published: time::OffsetDateTime::UNIX_EPOCH,
        sequence: 1,
        vouched: None,
    }
}

async fn org() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": ACCESS_TOKEN,
            "instance_url": server.uri(),
        })))
        .mount(&server)
        .await;
    // Every API call: the session is refused, then (after the refresh) the
    // first call (the Task's read) is refused.
    Mock::given(path_regex("^/services/data/"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!([
            {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
        ])))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path_regex("^/services/data/"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!([
            {"message": "No such column 'X__c'", "errorCode": "INVALID_FIELD"}
        ])))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn secrets_stay_out_of_logs_errors_and_debug_output() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded: every future below logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = org().await;
    let mut errors = Vec::new();
    let mut debug = Vec::new();
    for auth in [
        format!("auth = \"client_credentials\"\nclient_secret = \"{CLIENT_SECRET}\""),
        format!("auth = \"jwt_bearer\"\nusername = \"u@x\"\nprivate_key_file = \"{KEY_FILE}\""),
    ] {
        let toml = format!(
            "login_url = \"{}\"\nclient_id = \"k\"\n{auth}",
            server.uri()
        );
        let settings: SalesforceSettings = toml::from_str(&toml).unwrap();
        debug.push(format!("{settings:?}"));
        let crm = SalesforceCrm::new("crm", &settings, crate::crm::http_client().unwrap()).unwrap();
        let error = crm.handle(&event()).await.unwrap_err();
        assert!(matches!(error, CrmError::Permanent { .. }), "{error:?}");
        errors.push(format!("{error} {error:?}"));
    }

    let requests = server.received_requests().await.unwrap();
    let assertion = requests
        .iter()
        .filter_map(|r| {
            url::form_urlencoded::parse(&r.body)
                .find(|(k, _)| k == "assertion")
                .map(|(_, v)| v.into_owned())
        })
        .next()
        .expect("the JWT bearer flow sent an assertion");
    let key = std::fs::read_to_string(KEY_FILE).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("refreshing the token"),
        "the flow was logged: {logs}"
    );
    for (what, secret) in [
        ("access token", ACCESS_TOKEN),
        ("consumer secret", CLIENT_SECRET),
        ("assertion", assertion.as_str()),
        ("private key", key_line),
    ] {
        assert!(!logs.contains(secret), "the {what} reached the logs");
        for text in errors.iter().chain(&debug) {
            assert!(!text.contains(secret), "the {what} reached {text}");
        }
    }
}
