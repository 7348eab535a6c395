//! Transport and resource limits of the HTTP API: TLS from PEM files, the
//! request timeout as a problem, settings that refuse bad tokens.

use std::io::Write as _;

use reqwest::StatusCode;
use softphone_bridge::config::{HttpTls, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

#[tokio::test]
async fn the_api_can_be_served_over_tls() {
    let nats = start_nats().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let mut cert_file = tempfile::NamedTempFile::new().unwrap();
    cert_file.write_all(cert.cert.pem().as_bytes()).unwrap();
    let mut key_file = tempfile::NamedTempFile::new().unwrap();
    key_file
        .write_all(cert.signing_key.serialize_pem().as_bytes())
        .unwrap();
    let mut settings = http_settings(&nats.url);
    settings.http.tls = Some(HttpTls {
        cert_file: cert_file.path().into(),
        key_file: key_file.path().into(),
    });

    let app = App::builder(nats).with(settings).spawn().await;
    let addr = app.addr();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", addr.port());
    let response = client
        .get(&url)
        .send()
        .await
        .expect("a TLS request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    let unauthorised = client
        .post(format!(
            "https://localhost:{}/v1/softphones/agent-1/commands",
            addr.port()
        ))
        .json(&start_call())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), StatusCode::UNAUTHORIZED);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    assert!(!plain.is_ok_and(|r| r.status().is_success()));
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_a_408_problem() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.http.request_timeout = std::time::Duration::from_millis(300))
        .spawn()
        .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let head = format!(
        "POST /v1/softphones/agent-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"type\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(!answer.contains(TOKEN), "{answer}");
    app.stop().await;
}

#[test]
fn token_settings_are_checked_and_never_rendered() {
    let base =
        |tokens: &str| Settings::from_toml(&format!("[http]\nlisten = \"127.0.0.1:0\"\n{tokens}"));
    let hash = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
    let ok = base(&format!(
        "[[http.tokens]]\nname = \"crm\"\nsha256 = \"{hash}\"\npartners = [\"{PARTNER}\"]\n"
    ))
    .unwrap();
    assert!(!ok.to_redacted_toml().contains(hash));
    assert!(!format!("{ok:?}").contains(hash));
    for (tokens, key) in [
        (
            "[[http.tokens]]\nname = \"crm\"\nsha256 = \"abc\"\n",
            "http.tokens[0].sha256",
        ),
        (
            &format!("[[http.tokens]]\nname = \"\"\nsha256 = \"{hash}\"\n"),
            "http.tokens[0].name",
        ),
        (
            &format!(
                "[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\n[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\n"
            ),
            "http.tokens[1].name",
        ),
        (
            &format!("[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\npartners = []\n"),
            "http.tokens[0].partners",
        ),
        (
            &format!("[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\npartners = [\"nope\"]\n"),
            "partners",
        ),
        (
            &format!("[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\ntoken = \"x\"\n"),
            "token",
        ),
    ] {
        let err = base(tokens).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let err = Settings::from_toml("[registry]\nbucket = \"a.b\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("registry.bucket"), "{err}");
}

/// Collects everything the app logs on this thread.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread: the app's tasks log through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let nats = start_nats().await;
    let app = App::builder(nats).http().spawn().await;
    app.load("agent-1", Some(PARTNER)).await;
    assert_eq!(
        app.command("agent-1", &start_call(), TOKEN, None)
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.command("agent-1", &start_call(), "guessed-token", None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("Command published."),
        "the capture works:\n{text}"
    );
    assert!(
        text.contains("crm-all"),
        "logs name the token's holder:\n{text}"
    );
    for secret in [
        TOKEN,
        "guessed-token",
        "Bearer",
        &token_settings("x", TOKEN, None).sha256,
    ] {
        assert!(!text.contains(secret), "{secret} appears in the logs");
    }
}

#[test]
fn hash_token_prints_the_sha256_configured_in_http_tokens() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{TOKEN}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim(), token_settings("x", TOKEN, None).sha256);

    let generated = Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
        .args(["hash-token", "--generate"])
        .output()
        .unwrap();
    let text = String::from_utf8(generated.stdout).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .unwrap()
        .trim();
    assert!(token.len() >= 64, "{token}");
    assert_eq!(hash, token_settings("x", token, None).sha256);
}

#[tokio::test]
async fn requests_beyond_max_in_flight_are_shed_with_503() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.http.max_in_flight = 1)
        .spawn()
        .await;
    app.load("agent-1", Some(PARTNER)).await;

    // One request holds the only slot: its body never finishes arriving.
    let mut slow = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let head = format!(
        "POST /v1/softphones/agent-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let refused = eventually("the slot to be taken", || async {
        let response = app.command("agent-1", &start_call(), TOKEN, None).await;
        (response.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(response)
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    // Health is not counted.
    assert_eq!(
        app.http
            .get(app.ops_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    drop(slow);
    eventually("the slot to be free again", || async {
        let status = app
            .command("agent-1", &start_call(), TOKEN, None)
            .await
            .status();
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_4_mib_body_gets_a_413_the_client_reads() {
    let nats = start_nats().await;
    let app = App::builder(nats).http().spawn().await;
    let body = vec![b' '; 4 * 1024 * 1024];
    let response = app
        .http
        .post(app.url("/v1/softphones/agent-1/commands"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the client reads an answer, not a reset");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(doc["type"], "urn:softphone-bridge:problem:body-too-large");
    app.stop().await;
}

#[tokio::test]
async fn slow_unauthenticated_uploads_do_not_starve_authenticated_requests() {
    let nats = start_nats().await;
    let app = App::builder(nats)
        .http()
        .settings(|s| s.http.max_in_flight = 2)
        .spawn()
        .await;
    app.load("agent-1", Some(PARTNER)).await;

    // More slow uploads than there are slots, none with a valid token, each
    // trickling its body: each is answered 401 before its body is read.
    let mut slow = Vec::new();
    for i in 0..6 {
        let auth = match i % 3 {
            0 => String::new(),
            1 => "Authorization: Bearer guessed\r\n".into(),
            _ => "Authorization: Basic x\r\n".into(),
        };
        let mut stream = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
        let head = format!(
            "POST /v1/softphones/agent-1/commands HTTP/1.1\r\nHost: x\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"type\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let trickle = {
        let (mut readers, writers): (Vec<_>, Vec<_>) =
            slow.into_iter().map(|s| s.into_split()).unzip();
        let trickling = tokio::spawn(async move {
            let mut writers = writers;
            loop {
                for writer in &mut writers {
                    let _ = writer.write_all(b" ").await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        for reader in &mut readers {
            let mut head = [0u8; 12];
            tokio::time::timeout(PATIENCE, reader.read_exact(&mut head))
                .await
                .expect("answered while still uploading")
                .unwrap();
            assert_eq!(&head, b"HTTP/1.1 401");
        }
        trickling
    };
    // Every slot is free for a CRM with a token.
    for _ in 0..3 {
        assert_eq!(
            app.command("agent-1", &start_call(), TOKEN, None)
                .await
                .status(),
            StatusCode::ACCEPTED
        );
    }
    trickle.abort();

    // A made-up method is counted as `other`, never as a label of its own.
    let made_up = reqwest::Method::from_bytes(b"BREW").unwrap();
    app.http
        .request(made_up, app.url("/v1/softphones/agent-1/commands"))
        .send()
        .await
        .unwrap();
    let metrics = app.metrics().await;
    assert!(!metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
    app.stop().await;
}

#[test]
fn command_settings_are_checked() {
    let defaults = Settings::from_toml("").unwrap();
    assert_eq!(defaults.commands.idempotency_ttl.as_secs(), 24 * 3600);
    assert_eq!(defaults.commands.start_call_ttl.as_secs(), 30);
    assert_eq!(defaults.commands.offline_after.as_secs(), 120);
    for (toml, key) in [
        (
            "[commands]\nstart_call_ttl = \"2m\"\n",
            "commands.start_call_ttl",
        ),
        ("[commands]\nttl = \"500ms\"\n", "commands.ttl"),
        ("[commands]\nbucket = \"a.b\"\n", "commands.bucket"),
        (
            "[commands]\nbucket = \"SOFTPHONE_REGISTRY\"\n",
            "commands.bucket",
        ),
        (
            "[call_memory]\nbucket = \"SOFTPHONE_COMMAND_KEYS\"\n",
            "call_memory.bucket: must differ from commands.bucket",
        ),
        ("[call_memory]\nbucket = \"a b\"\n", "call_memory.bucket"),
        (
            "[call_memory]\nremember_for = \"10s\"\n",
            "call_memory.remember_for",
        ),
        (
            "[commands]\nidempotency_ttl = \"0s\"\n",
            "commands.idempotency_ttl",
        ),
        (
            "[commands]\noffline_after = \"0s\"\n",
            "commands.offline_after",
        ),
        ("[commands]\nttl_seconds = 3\n", "ttl_seconds"),
    ] {
        let err = Settings::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    // A longer commands stream admits a longer start_call TTL.
    let longer = "[streams]\ncommands_max_age = \"5m\"\n[commands]\nstart_call_ttl = \"2m\"\n";
    assert!(Settings::from_toml(longer).is_ok());
}
