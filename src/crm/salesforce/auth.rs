//! OAuth 2.0 tokens for Salesforce (JWT bearer or client credentials): cached,
//! and refreshed by exactly one request however many callers find them stale.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{SalesforceAuth, SalesforceSettings};
use crate::crm::CrmError;
use crate::crm::http::transport_error;
use crate::crm::tokens::{self, Issued, Tokens};

/// The JWT bearer grant type (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Salesforce accepts assertions that expire within 3 minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(180);

/// An access token and the instance it is valid on.
pub(crate) struct Token {
    pub access: SecretString,
    /// Every API call goes here, never to `login_url`.
    pub instance_url: Url,
}

enum Grant {
    JwtBearer {
        key: EncodingKey,
        client_id: String,
        username: String,
        audience: String,
    },
    ClientCredentials {
        client_id: String,
        secret: SecretString,
    },
}

/// Claims of the JWT bearer assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    instance_url: Url,
}

pub(crate) struct TokenSource {
    client: reqwest::Client,
    /// Of each token request (none only in tests on a paused clock).
    timeout: Option<Duration>,
    token_url: Url,
    grant: Grant,
    ttl: Duration,
    current: Tokens<Token>,
}

impl TokenSource {
    pub(super) fn new(
        settings: &SalesforceSettings,
        client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let grant = match settings.auth {
            SalesforceAuth::JwtBearer => {
                let pem = match (&settings.private_key, &settings.private_key_file) {
                    (Some(key), _) => key.expose_secret().as_bytes().to_vec(),
                    (None, Some(path)) => std::fs::read(path).with_context(|| {
                        format!("cannot read the Salesforce private key {}", path.display())
                    })?,
                    (None, None) => {
                        anyhow::bail!("jwt_bearer needs private_key_file or private_key")
                    }
                };
                // The key error never includes the key itself.
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("the Salesforce private key is not an RSA PEM key: {e}")
                })?;
                let audience = settings
                    .audience
                    .clone()
                    .unwrap_or_else(|| default_audience(settings.login_url.as_url()));
                Grant::JwtBearer {
                    key,
                    client_id: settings.client_id.clone(),
                    username: settings.username.clone().unwrap_or_default(),
                    audience,
                }
            }
            SalesforceAuth::ClientCredentials => Grant::ClientCredentials {
                client_id: settings.client_id.clone(),
                secret: settings
                    .client_secret
                    .clone()
                    .unwrap_or_else(|| SecretString::from("")),
            },
        };
        Ok(Self {
            client,
            timeout: Some(settings.timeout),
            token_url: settings.login_url.as_url().join("/services/oauth2/token")?,
            grant,
            ttl: settings.token_ttl,
            current: Tokens::default(),
        })
    }

    /// The cached token, or a new one if there is none or it is older than the TTL.
    pub(super) async fn get(&self) -> Result<Arc<Issued<Token>>, CrmError> {
        self.current
            .get(|| async { Ok((self.request().await?, self.ttl)) })
            .await
    }

    /// Forgets `stale` (refused with 401), unless another caller already replaced it.
    pub(super) async fn invalidate(&self, stale: &Issued<Token>) {
        self.current.invalidate(stale).await;
    }

    async fn request(&self) -> Result<Token, CrmError> {
        let assertion;
        let form: Vec<(&str, &str)> = match &self.grant {
            Grant::JwtBearer {
                key,
                client_id,
                username,
                audience,
            } => {
                assertion = sign_assertion(key, client_id, username, audience)?;
                vec![
                    ("grant_type", JWT_BEARER_GRANT),
                    ("assertion", assertion.expose_secret()),
                ]
            }
            Grant::ClientCredentials { client_id, secret } => vec![
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret.expose_secret()),
            ],
        };
        let mut request = self.client.post(self.token_url.clone()).form(&form);
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(tokens::refused(
                "Salesforce",
                response,
                " (check the connected app and user)",
            )
            .await);
        }
        let body: TokenResponse = response.json().await.map_err(|e| CrmError::Unavailable {
            reason: format!("unreadable Salesforce token response: {}", e.without_url()),
            retry_after: None,
        })?;
        tracing::info!(instance_url = %body.instance_url, "Salesforce token obtained.");
        Ok(Token {
            access: body.access_token,
            instance_url: body.instance_url,
        })
    }
}

fn sign_assertion(
    key: &EncodingKey,
    iss: &str,
    sub: &str,
    aud: &str,
) -> Result<SecretString, CrmError> {
    let exp = (SystemTime::now() + ASSERTION_LIFETIME)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &Claims { iss, sub, aud, exp },
        key,
    )
    .map(SecretString::from)
    .map_err(|e| CrmError::Unavailable {
        reason: format!("cannot sign the Salesforce JWT assertion: {e}"),
        retry_after: None,
    })
}

/// Salesforce only accepts the public login hosts as `aud`, even when the
/// token is requested from a My Domain host: test.salesforce.com for sandboxes.
fn default_audience(login_url: &Url) -> String {
    let host = login_url.host_str().unwrap_or_default();
    if host == "test.salesforce.com" || host.ends_with(".sandbox.my.salesforce.com") {
        "https://test.salesforce.com".into()
    } else {
        "https://login.salesforce.com".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_is_a_public_login_host() {
        let aud = |url: &str| default_audience(&url.parse().unwrap());
        assert_eq!(
            aud("https://login.salesforce.com/"),
            "https://login.salesforce.com"
        );
        assert_eq!(
            aud("https://acme.my.salesforce.com"),
            "https://login.salesforce.com"
        );
        assert_eq!(
            aud("https://test.salesforce.com"),
            "https://test.salesforce.com"
        );
        assert_eq!(
            aud("https://acme--uat.sandbox.my.salesforce.com"),
            "https://test.salesforce.com"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_cached_for_their_ttl_and_invalidated_once() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/services/oauth2/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": "00D!t",
                "instance_url": "https://acme.my.salesforce.com",
            })))
            .expect(3)
            .mount(&server)
            .await;
        let toml = format!(
            "auth = \"client_credentials\"\nlogin_url = \"{}\"\nclient_id = \"id\"\nclient_secret = \"s\"\ntoken_ttl = \"1h\"",
            server.uri()
        );
        let settings: SalesforceSettings = toml::from_str(&toml).unwrap();
        // No request timeout: the paused clock would fire it while the
        // (real) socket is awaited.
        let mut tokens = TokenSource::new(&settings, reqwest::Client::new()).unwrap();
        tokens.timeout = None;

        let first = tokens.get().await.unwrap();
        assert_eq!(
            first.instance_url.as_str(),
            "https://acme.my.salesforce.com/"
        );
        assert_eq!(
            tokens.get().await.unwrap().generation,
            first.generation,
            "cached"
        );
        tokio::time::advance(Duration::from_secs(3601)).await;
        let second = tokens.get().await.unwrap();
        assert_ne!(second.generation, first.generation, "renewed after the TTL");
        // A 401 seen with the old token does not throw the new one away.
        tokens.invalidate(&first).await;
        assert_eq!(tokens.get().await.unwrap().generation, second.generation);
        tokens.invalidate(&second).await;
        assert_ne!(tokens.get().await.unwrap().generation, second.generation);
    }
}
