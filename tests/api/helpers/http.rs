//! The app's HTTP command API and health endpoints, as a CRM and a probe use them.

use softphone_bridge::config::Settings;
use softphone_bridge::contract::EventKind;

use super::*;

/// [`settings`] with the HTTP API on a free port ([`serve_http`]).
pub fn http_settings(nats_url: &str) -> Settings {
    let mut settings = settings(nats_url, "kind = \"log\"");
    serve_http(&mut settings);
    settings
}

/// The HTTP API on a free port, with [`TOKEN`] and [`PARTNER_TOKEN`].
pub fn serve_http(settings: &mut Settings) {
    settings.http.listen = Some("127.0.0.1:0".into());
    settings.http.tokens = vec![
        token_settings("crm-all", TOKEN, None),
        token_settings("crm-partner-a", PARTNER_TOKEN, Some(vec![PARTNER])),
    ];
}

pub fn token_settings(
    name: &str,
    token: &str,
    partners: Option<Vec<&str>>,
) -> softphone_bridge::config::TokenSettings {
    softphone_bridge::config::TokenSettings {
        name: name.into(),
        sha256: hex::encode(softphone_bridge::http::hash_token(token)),
        partners: partners.map(|list| list.into_iter().map(|p| p.parse().unwrap()).collect()),
    }
}

impl App {
    /// `path` on the API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `path` on the health and metrics address.
    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops())
    }

    /// `GET path` on the health and metrics address.
    async fn get_ops(&self, path: &str) -> reqwest::Response {
        match self.http.get(self.ops_url(path)).send().await {
            Ok(response) => response,
            Err(e) => panic!("{path} answers: {e}"),
        }
    }

    /// What `/metrics` shows now.
    pub async fn metrics(&self) -> String {
        let response = self.get_ops("/metrics").await;
        response.text().await.expect("metrics text")
    }

    /// What `/readyz` reports: readiness and each check.
    pub async fn readyz_report(&self) -> serde_json::Value {
        let response = self.get_ops("/readyz").await;
        response.json().await.expect("a readiness report")
    }

    /// The readiness status code.
    pub async fn readyz(&self) -> u16 {
        self.get_ops("/readyz").await.status().as_u16()
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
        post_command(&self.http, self.addr(), softphone, body, token, key).await
    }

    /// `GET /v1/softphones/{softphone}` with `token`.
    pub async fn softphone(&self, softphone: &str, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/softphones/{softphone}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("the API answers")
    }

    /// The registry's entry of `softphone` as the unscoped token sees it.
    pub async fn entry(&self, softphone: &str) -> serde_json::Value {
        let response = self.softphone(softphone, TOKEN).await;
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
