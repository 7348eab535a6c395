//! The `dynamics` CRM: call activity as Dataverse phone calls upserted at an
//! id derived from the conversation, with caller lookup over contacts and
//! accounts, through the Web API of a Dynamics 365 environment. This module
//! is the API client (tokens: auth.rs, `$batch` bodies: batch.rs, errors:
//! error.rs, requests: here) and what each event writes (phonecall.rs); the
//! batch window, the call memory and the agent's last word are the machinery
//! every batched CRM shares (`crm::activity`), which reads and writes
//! through write.rs.

mod auth;
mod batch;
mod check;
mod error;
mod phonecall;
pub(crate) mod settings;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use self::auth::TokenSource;
use self::batch::{Answer, Part};
use super::activity::{Cache, Calls, Facts, Group, Memory, Org, Words, Written};
use super::http::{retry_after, transport_error};
use super::{Crm, CrmError, CrmEvent};

pub use self::phonecall::activity_id as phonecall_id;
pub use self::settings::{DynamicsLookup, DynamicsSettings};

/// Requests one user may make in a five-minute window (Dataverse's service
/// protection limit), for `status`.
const WINDOW_REQUESTS: u64 = 6000;
/// What Dataverse reports of the window's requests left.
const BURST_REMAINING: &str = "x-ms-ratelimit-burst-remaining-xrm-requests";

/// A connection to one Dataverse environment.
pub struct DynamicsCrm {
    name: String,
    settings: DynamicsSettings,
    client: reqwest::Client,
    tokens: TokenSource,
    /// `/api/data/v9.2/`.
    root: String,
    /// Shared by every connection to the same environment.
    lookups: Arc<Cache>,
    /// Phone call writes, batched and decided against the call memory.
    calls: Calls,
    /// The names of a phone call's agent fields.
    words: Words,
    /// Requests left in the service protection window, as last reported
    /// (`u64::MAX`: not reported yet).
    remaining: AtomicU64,
}

impl DynamicsCrm {
    /// `name` is the connection's name in the configuration, for logs.
    /// On the shared `client` ([`crate::crm::http_client`]).
    pub fn new(
        name: &str,
        settings: &DynamicsSettings,
        client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            tokens: TokenSource::new(settings, client.clone())?,
            root: format!("/api/data/v{}/", settings.api_version),
            lookups: super::activity::shared_cache(&org_key(settings), settings.lookup.cache_for),
            calls: Calls::new(&settings.batch),
            words: phonecall::words(settings),
            remaining: AtomicU64::new(u64::MAX),
            settings: settings.clone(),
            client,
        })
    }

    /// Decides the agent's word and `ended`'s fill against the call memory
    /// in the bucket `settings` names, read once for a batch, instead of a
    /// read of the phone calls.
    pub fn with_memory(
        mut self,
        js: async_nats::jetstream::Context,
        settings: &crate::crm::CallMemorySettings,
    ) -> Self {
        let memory = Memory::new(js, settings, &org_key(&self.settings));
        self.calls.remember(memory);
        self
    }

    /// The Web API URL of `path` (under the root).
    fn url(&self, path: &str) -> String {
        let base = self.settings.url.as_url().as_str().trim_end_matches('/');
        format!("{base}{}{path}", self.root)
    }

    /// One Web API request: the token (refreshed once on 401), and the
    /// answer classified. `body` is a `$batch` body with its boundary.
    async fn request(
        &self,
        path: &str,
        batch: Option<(&str, &str)>,
    ) -> Result<(reqwest::header::HeaderMap, String), CrmError> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.get().await?;
            let mut request = match batch {
                Some((boundary, body)) => self
                    .client
                    .post(self.url(path))
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/mixed; boundary={boundary}"),
                    )
                    .header("Prefer", "odata.continue-on-error")
                    .body(body.to_owned()),
                None => self.client.get(self.url(path)),
            };
            request = request
                .timeout(self.settings.timeout)
                .bearer_auth(token.access.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json")
                .header("OData-MaxVersion", "4.0")
                .header("OData-Version", "4.0");
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status();
            let headers = response.headers().clone();
            if let Some(left) = headers
                .get(BURST_REMAINING)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
            {
                self.remaining.store(left, Ordering::Relaxed);
            }
            let retry = retry_after(&headers);
            let body = response.text().await.map_err(transport_error)?;
            if status.is_success() {
                return Ok((headers, body));
            }
            // 401: the token expired or was revoked. One refresh; another
            // 401 means the application user is refused.
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                tracing::info!(crm = %self.name, "Dataverse refused the token; refreshing it.");
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Err(error::classify(status.as_u16(), retry, &body));
        }
    }

    /// One `$batch` of `parts`: each part's answer, in order.
    async fn send(&self, parts: &[Part]) -> Result<Vec<Answer>, CrmError> {
        let (boundary, body) = batch::encode(&self.root, parts);
        let (headers, text) = self.request("$batch", Some((&boundary, &body))).await?;
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let answers = batch::decode(content_type, &text).map_err(|e| CrmError::Unavailable {
            reason: format!("unreadable Dataverse $batch answer: {e}"),
            retry_after: None,
        })?;
        if answers.len() != parts.len() {
            return Err(CrmError::Unavailable {
                reason: format!(
                    "Dataverse answered {} parts of a $batch of {}",
                    answers.len(),
                    parts.len()
                ),
                retry_after: None,
            });
        }
        Ok(answers)
    }

    /// A `GET` of `path` under the Web API root, as JSON.
    async fn get(&self, path: &str) -> Result<Value, CrmError> {
        let (_, body) = self.request(path, None).await?;
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn handle_event(&self, event: &CrmEvent) -> Result<(), CrmError> {
        let Some(write) = phonecall::phonecall_write(
            &event.event,
            (event.published, event.sequence),
            &self.settings,
        ) else {
            // Presence is not written to Dataverse.
            return Ok(());
        };
        self.calls.submit(self, event, write).await
    }
}

/// The environment a connection writes to: its URL and application (one
/// app registration can serve several environments).
fn org_key(settings: &DynamicsSettings) -> String {
    super::activity::org_key(&format!(
        "{} {}",
        settings.url.as_url().as_str().trim_end_matches('/'),
        settings.client_id
    ))
}

impl Org for DynamicsCrm {
    fn connection(&self) -> &str {
        &self.name
    }

    fn words(&self) -> &Words {
        &self.words
    }

    fn read<'a>(
        &'a self,
        groups: &'a mut [Group],
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.read_batch(groups)
    }

    fn write(
        &self,
        groups: Vec<Group>,
    ) -> impl std::future::Future<Output = Vec<Written>> + Send + '_ {
        self.write_batch(groups)
    }

    fn rewrite<'a>(
        &'a self,
        conversation: &'a str,
        word: Map<String, Value>,
        facts: &'a Facts,
    ) -> impl std::future::Future<Output = Result<(), CrmError>> + Send + 'a {
        self.rewrite_word(conversation, word, facts)
    }
}

impl Crm for DynamicsCrm {
    fn name(&self) -> &str {
        // The adapter, like `log` and `webhook`; logs name the connection.
        "dynamics"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        Box::pin(self.handle_event(event))
    }

    fn api_usage(&self) -> Option<(u64, u64)> {
        let left = self.remaining.load(Ordering::Relaxed);
        (left != u64::MAX).then(|| (WINDOW_REQUESTS.saturating_sub(left), WINDOW_REQUESTS))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.check_environment())
    }

    fn concurrency(&self) -> Option<usize> {
        // A batch fills only with as many events in flight, and the next one
        // fills while it is written.
        Some(2 * self.settings.batch.max_records)
    }
}
