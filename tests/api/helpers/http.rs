//! The app with its HTTP command API, and replicas of it.

use softphone_bridge::Application;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;
use tokio_util::sync::CancellationToken;

use super::*;

/// [`settings`] with the HTTP API on a free port and [`TOKEN`], [`PARTNER_TOKEN`].
pub fn http_settings(nats_url: &str) -> Settings {
    let mut settings = settings(nats_url, "kind = \"log\"");
    settings.http.listen = Some("127.0.0.1:0".into());
    settings.http.tokens = vec![
        token_settings("crm-all", TOKEN, None),
        token_settings("crm-partner-a", PARTNER_TOKEN, Some(vec![PARTNER])),
    ];
    settings
}

pub fn token_settings(
    name: &str,
    token: &str,
    partners: Option<Vec<&str>>,
) -> softphone_bridge::config::TokenSettings {
    softphone_bridge::config::TokenSettings {
        name: name.into(),
        sha256: hex::encode(softphone_bridge::http::auth::hash_token(token)),
        partners: partners.map(|list| list.into_iter().map(|p| p.parse().unwrap()).collect()),
    }
}

/// The app with its HTTP addresses, and an HTTP client for it.
pub struct HttpApp {
    pub app: TestApp,
    pub addr: std::net::SocketAddr,
    pub ops: std::net::SocketAddr,
    pub http: reqwest::Client,
}

impl std::ops::Deref for HttpApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

/// Like [`spawn_app`], keeping the bound HTTP addresses; waits until ready.
pub async fn spawn_http_app(nats: Nats, settings: Settings) -> HttpApp {
    let app = spawn_app(nats, settings).await;
    let (addr, ops) = app.http_addrs.expect("http.listen is set");
    let app = HttpApp {
        app,
        addr,
        ops,
        http: reqwest::Client::new(),
    };
    app.ready().await;
    app
}

/// Starts one more app in this process (a replica); stops when the token is cancelled.
pub async fn start_replica(
    settings: Settings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let app = Application::build(settings).await.expect("app builds");
    let addr = app.http_addr().expect("http.listen is set");
    let ops = app.ops_addr().expect("http.listen is set");
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(app.run_until(shutdown.clone()));
    (shutdown, handle, addr, ops)
}

impl HttpApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// What `/metrics` shows now.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(self.ops_url("/metrics")).send().await;
        response
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    /// The readiness status code.
    pub async fn readyz(&self) -> u16 {
        match self.http.get(self.ops_url("/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(e) => panic!("readyz answers: {e}"),
        }
    }

    /// Stops NATS, then waits until `/readyz` says 503.
    pub async fn stop_nats_until_unready(&self) {
        self.nats
            .container
            .stop_with_timeout(Some(2))
            .await
            .expect("NATS stops");
        eventually("readyz to answer 503", || async {
            (self.readyz().await == 503).then_some(())
        })
        .await;
    }

    /// Waits until `/readyz` says 200.
    pub async fn ready(&self) {
        eventually("readyz to answer 200", || async {
            (self.readyz().await == 200).then_some(())
        })
        .await;
    }

    /// POSTs a command as a CRM would.
    pub async fn command(
        &self,
        softphone: &str,
        body: &serde_json::Value,
        token: &str,
        key: Option<&str>,
    ) -> reqwest::Response {
        post_command(&self.http, self.addr, softphone, body, token, key).await
    }

    /// The registry's entry of `softphone` as the unscoped token sees it.
    pub async fn entry(&self, softphone: &str) -> serde_json::Value {
        let response = self
            .http
            .get(self.url(&format!("/v1/softphones/{softphone}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the API answers");
        assert_eq!(response.status(), 200, "{softphone} is in the registry");
        response.json().await.expect("an entry")
    }

    /// Publishes `softphone.loaded` and waits until the registry has the softphone.
    pub async fn load(&self, softphone: &str, partner: Option<&str>) {
        let body = match partner {
            Some(p) => format!(r#"{{"softphoneId":"{softphone}","partnerId":"{p}"}}"#),
            None => format!(r#"{{"softphoneId":"{softphone}"}}"#),
        };
        self.publish(EventKind::Loaded, &body, None).await;
        self.settled().await;
    }

    pub async fn stop(self) -> Nats {
        self.app.stop().await
    }
}

/// POSTs a command to the API at `addr` (any replica) as a CRM would.
pub async fn post_command(
    http: &reqwest::Client,
    addr: std::net::SocketAddr,
    softphone: &str,
    body: &serde_json::Value,
    token: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = http
        .post(format!("http://{addr}/v1/softphones/{softphone}/commands"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("the API answers")
}

/// The problem document of an error answer, after checking its status and type.
pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let doc: serde_json::Value = response.json().await.expect("problem+json body");
    assert_eq!(doc["status"], status);
    assert!(
        doc["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:softphone-bridge:problem:"),
        "{doc}"
    );
    assert!(!doc["title"].as_str().unwrap().is_empty());
    for secret in [TOKEN, PARTNER_TOKEN] {
        assert!(!doc.to_string().contains(secret), "a token leaked: {doc}");
    }
    doc
}
