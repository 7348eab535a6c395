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
use crate::config::WebhookSettings;

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
        let body = event.to_json();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(&self.keys, &event.id, timestamp, &body);
        let response = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Softphone-Event", event.kind().name())
            .header("Idempotency-Key", &event.id)
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        classify_response(response).await.map(drop)
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
