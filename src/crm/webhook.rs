//! The `webhook` CRM: POSTs each event to a URL, signed the Standard Webhooks
//! way (<https://www.standardwebhooks.com>) so receivers verify it with a
//! ready-made library.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use super::http::{classify_response, transport_error};
use super::{Crm, CrmError, CrmEvent};
use crate::crm::WebhookSettings;

/// The header that marks `softphone-bridge doctor`'s test event, so
/// receivers can tell it from events and ignore it.
pub(super) const TEST_HEADER: &str = "X-Softphone-Test";

/// The `event` (and `X-Softphone-Event`) of the test event.
pub(super) const TEST_EVENT: &str = "test";

pub struct WebhookCrm {
    client: reqwest::Client,
    timeout: std::time::Duration,
    url: url::Url,
    /// One keyed HMAC per configured secret, cloned for each request.
    keys: Vec<Hmac<Sha256>>,
}

impl WebhookCrm {
    /// A webhook connection on the shared `client` ([`super::http::client`]).
    pub fn new(settings: &WebhookSettings, client: reqwest::Client) -> Self {
        let keys = settings
            .secret
            .keys()
            .iter()
            .map(|key| {
                Hmac::<Sha256>::new_from_slice(key.expose_secret())
                    .expect("HMAC takes keys of any length")
            })
            .collect();
        Self {
            client,
            timeout: settings.timeout,
            url: settings.url.as_url().clone(),
            keys,
        }
    }

    async fn post(&self, event: &CrmEvent) -> Result<(), CrmError> {
        self.send(&event.id, event.kind().name(), event.to_json(), false)
            .await
            .map(drop)
    }

    /// POSTs a signed `body`; `test` marks a test event (`X-Softphone-Test: true`).
    async fn send(
        &self,
        id: &str,
        event: &str,
        body: Vec<u8>,
        test: bool,
    ) -> Result<reqwest::StatusCode, CrmError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(&self.keys, id, timestamp, &body);
        let mut request = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Softphone-Event", event)
            .header("Idempotency-Key", id)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if test {
            request = request.header(TEST_HEADER, "true");
        }
        let response = request.body(body).send().await.map_err(transport_error)?;
        classify_response(response).await.map(|r| r.status())
    }

    /// Sends a signed test event (see [`TEST_HEADER`]) and expects a 2xx.
    async fn check_endpoint(&self) -> Result<String, String> {
        let id = format!("test-{}", uuid::Uuid::new_v4());
        let published_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = serde_json::json!({
            "event": TEST_EVENT,
            "id": id,
            "publishedAt": published_at,
            "sequence": 0,
            "data": {},
        });
        let body = serde_json::to_vec(&body).expect("JSON serializes");
        match self.send(&id, TEST_EVENT, body, true).await {
            Ok(status) => Ok(format!("a signed test event was answered {status}")),
            Err(e) => Err(format!("a signed test event failed: {e}")),
        }
    }
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
/// for each key, separated by spaces.
pub fn sign(keys: &[Hmac<Sha256>], id: &str, timestamp: u64, body: &[u8]) -> String {
    let signatures: Vec<String> = keys
        .iter()
        .map(|key| {
            let mut mac = key.clone();
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let tag = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{tag}")
        })
        .collect();
    signatures.join(" ")
}

impl Crm for WebhookCrm {
    fn name(&self) -> &str {
        "webhook"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        Box::pin(self.post(event))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.check_endpoint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(bytes).unwrap()
    }

    #[test]
    fn signature_matches_the_specs_test_vector() {
        // The Standard Webhooks reference libraries' vector:
        // secret whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD.
        let secret = base64::engine::general_purpose::STANDARD
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap();
        assert_eq!(
            sign(
                &[key(&secret)],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn each_key_adds_one_space_separated_signature() {
        let one = sign(&[key(b"a")], "id", 1, b"{}");
        let two = sign(&[key(b"a"), key(b"b")], "id", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
        assert!(two.starts_with(&format!("{one} v1,")));
    }
}
