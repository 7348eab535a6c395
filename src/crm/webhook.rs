//! The `webhook` CRM: POSTs each event, signed with HMAC-SHA256, to a URL.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::http::{classify_response, transport_error};
use super::{Crm, CrmError, CrmEvent};
use crate::config::WebhookSettings;

pub struct WebhookCrm {
    client: reqwest::Client,
    timeout: std::time::Duration,
    url: url::Url,
    secret: SecretString,
}

impl WebhookCrm {
    /// A webhook connection on the shared `client` ([`super::http::client`]).
    pub fn new(settings: &WebhookSettings, client: reqwest::Client) -> Self {
        Self {
            client,
            timeout: settings.timeout,
            url: settings.url.as_url().clone(),
            secret: settings.secret.clone(),
        }
    }

    async fn post(&self, event: &CrmEvent) -> Result<(), CrmError> {
        let body = event.to_json();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(self.secret.expose_secret().as_bytes(), timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Softphone-Event", event.kind().name())
            .header("Idempotency-Key", &event.id)
            .header("X-Softphone-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        classify_response(response).await.map(drop)
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Crm for WebhookCrm {
    fn name(&self) -> &str {
        "webhook"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        Box::pin(self.post(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
