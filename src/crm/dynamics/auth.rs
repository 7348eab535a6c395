//! Microsoft Entra tokens for Dataverse: the OAuth 2.0 client credentials
//! grant of the app registration, for the environment's `/.default` scope.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::DynamicsSettings;
use crate::crm::CrmError;
use crate::crm::http::transport_error;
use crate::crm::tokens::{self, Issued, Tokens};

/// A token is used until this long before it expires.
const MARGIN: Duration = Duration::from_secs(120);

pub(super) struct Token {
    pub access: SecretString,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    /// Seconds.
    expires_in: u64,
}

pub(super) struct TokenSource {
    client: reqwest::Client,
    timeout: Duration,
    token_url: String,
    client_id: String,
    secret: SecretString,
    scope: String,
    current: Tokens<Token>,
}

impl TokenSource {
    pub(super) fn new(
        settings: &DynamicsSettings,
        client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        let Some(secret) = settings.client_secret.clone() else {
            anyhow::bail!("needs client_secret (or client_secret_file)");
        };
        let authority = settings.authority.as_url().as_str().trim_end_matches('/');
        Ok(Self {
            client,
            timeout: settings.timeout,
            token_url: format!("{authority}/{}/oauth2/v2.0/token", settings.tenant_id),
            client_id: settings.client_id.clone(),
            secret,
            scope: format!(
                "{}/.default",
                settings.url.as_url().as_str().trim_end_matches('/')
            ),
            current: Tokens::default(),
        })
    }

    /// The cached token, or a new one if there is none or it is about to expire.
    pub(super) async fn get(&self) -> Result<Arc<Issued<Token>>, CrmError> {
        self.current.get(|| self.request()).await
    }

    /// Forgets `stale` (refused with 401), unless another caller already replaced it.
    pub(super) async fn invalidate(&self, stale: &Issued<Token>) {
        self.current.invalidate(stale).await;
    }

    async fn request(&self) -> Result<(Token, Duration), CrmError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        let response = self
            .client
            .post(&self.token_url)
            .timeout(self.timeout)
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(tokens::refused(
                "Microsoft Entra",
                response,
                " (check tenant_id, client_id and the client secret)",
            )
            .await);
        }
        let body: TokenResponse = response.json().await.map_err(|e| CrmError::Unavailable {
            reason: format!(
                "unreadable Microsoft Entra token response: {}",
                e.without_url()
            ),
            retry_after: None,
        })?;
        tracing::info!(expires_in = body.expires_in, "Dataverse token obtained.");
        let lifetime = Duration::from_secs(body.expires_in).saturating_sub(MARGIN);
        Ok((
            Token {
                access: body.access_token,
            },
            lifetime.max(Duration::from_secs(1)),
        ))
    }
}
