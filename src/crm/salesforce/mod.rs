//! The `salesforce` CRM: call activity as Tasks upserted on an external id,
//! caller lookup for screen pop, presence, over the org's REST API. This
//! module is the API client (tokens: auth.rs, the usage governor: limits.rs,
//! requests: here and composite.rs, errors: error.rs) and what each event
//! writes (task.rs); the batch window, the call memory and the agent's last
//! word are the machinery every batched CRM shares (`crm::activity`), which
//! reads and writes through read.rs and write.rs.

mod auth;
mod check;
mod composite;
mod error;
mod limits;
mod lookup;
mod org;
mod read;
#[cfg(test)]
mod secrets_tests;
pub(crate) mod settings;
mod task;
mod write;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;

use self::auth::TokenSource;
use self::error::{classify, error_code};
use self::limits::Governor;
use super::activity::{Cache, Calls, Memory, Words};
use super::http::{retry_after, transport_error};
use super::{Crm, CrmError, CrmEvent};
use crate::contract::{Event, Guid};

pub use self::auth::JWT_BEARER_GRANT;
pub use self::limits::HEADER as LIMIT_INFO_HEADER;
pub use self::settings::{
    DispositionSource, LookupSettings, MAPPABLE_FIELDS, PresenceAction, PresenceSettings,
    SalesforceAuth, SalesforceSettings,
};

/// A connection to one Salesforce org.
pub struct SalesforceCrm {
    name: String,
    settings: SalesforceSettings,
    client: reqwest::Client,
    tokens: TokenSource,
    governor: Governor,
    /// Shared by every connection to the same org.
    lookups: Arc<Cache>,
    /// Task writes, batched and decided against the call memory.
    calls: Calls,
    /// The names of a Task's agent fields.
    words: Words,
    dispositions: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    /// When reading the picklist last failed.
    describe_failed: std::sync::Mutex<Option<Instant>>,
}

/// How long a loading softphone waits for the picklist.
const DESCRIBE_WAIT: Duration = Duration::from_secs(2);
/// How long a failing picklist read is not retried.
const DESCRIBE_BACKOFF: Duration = Duration::from_secs(60);

/// An answer the caller wants to see, successful or listed in `accept`.
struct Answer {
    body: bytes::Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl SalesforceCrm {
    /// `name` is the connection's name in the configuration, for logs.
    /// On the shared `client` ([`crate::crm::http_client`]).
    pub fn new(
        name: &str,
        settings: &SalesforceSettings,
        client: reqwest::Client,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            tokens: TokenSource::new(settings, client.clone())?,
            governor: Governor::new(name, settings.max_api_usage, settings.limit_retry_after),
            lookups: super::activity::shared_cache(&org_key(settings), settings.lookup.cache_for),
            calls: Calls::new(&settings.batch),
            words: task::words(settings),
            settings: settings.clone(),
            client,
            dispositions: tokio::sync::Mutex::new(None),
            describe_failed: std::sync::Mutex::new(None),
        })
    }

    /// Decides the agent's word and `ended`'s fill against the call memory
    /// in the bucket `settings` names, read once for a batch, instead of a
    /// read of the Tasks.
    pub fn with_memory(
        mut self,
        js: async_nats::jetstream::Context,
        settings: &crate::crm::CallMemorySettings,
    ) -> Self {
        let memory = Memory::new(js, settings, &org_key(&self.settings));
        self.calls.remember(memory);
        self
    }

    /// The org's API usage `(used, daily limit)` as last reported.
    pub fn api_usage(&self) -> (u64, u64) {
        self.governor.usage()
    }

    fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}/{rest}", self.settings.api_version)
    }

    /// One API call: the usage governor, the token (refreshed once on 401),
    /// and the answer classified.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        accept: &[StatusCode],
    ) -> Result<Answer, CrmError> {
        self.governor.admit()?;
        let mut refreshed = false;
        loop {
            let token = self.tokens.get().await?;
            let url = token
                .instance_url
                .join(path)
                .map_err(|e| CrmError::Permanent {
                    reason: format!("bad Salesforce path {path:?}: {e}"),
                    detail: None,
                })?;
            let mut request = self
                .client
                .request(method.clone(), url)
                .timeout(self.settings.timeout)
                .bearer_auth(token.access.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json");
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(transport_error)?;
            self.governor.observe(response.headers());
            let status = response.status();
            let retry = retry_after(response.headers());
            let body = response.bytes().await.map_err(transport_error)?;
            if status.is_success() || accept.contains(&status) {
                return Ok(Answer { body });
            }
            let text = String::from_utf8_lossy(&body);
            // 401 INVALID_SESSION_ID: the session expired or was revoked. One
            // refresh; another 401 means something else is wrong.
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                tracing::info!(crm = %self.name, code = error_code(&text).unwrap_or_default(), "Salesforce refused the session; refreshing the token.");
                self.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Err(classify(
                status,
                retry,
                &text,
                self.settings.limit_retry_after,
            ));
        }
    }

    async fn handle_event(&self, event: &CrmEvent) -> Result<(), CrmError> {
        if let Event::AgentStatusChanged(status) = &event.event {
            return self.presence(status).await;
        }
        let Some(write) = task::task_write(
            &event.event,
            (event.published, event.sequence),
            &self.settings,
        ) else {
            return Ok(());
        };
        self.calls.submit(self, event, write).await
    }
}

/// The org a connection writes to: its login URL, connected app and user (a
/// packaged app can be used by several orgs; a username belongs to one).
fn org_key(settings: &SalesforceSettings) -> String {
    super::activity::org_key(&format!(
        "{} {} {}",
        settings.login_url.as_url().as_str().trim_end_matches('/'),
        settings.client_id,
        settings.username.as_deref().unwrap_or_default()
    ))
}

impl super::activity::Org for SalesforceCrm {
    fn connection(&self) -> &str {
        &self.name
    }

    fn words(&self) -> &Words {
        &self.words
    }

    fn read<'a>(
        &'a self,
        groups: &'a mut [super::activity::Group],
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        self.read(groups)
    }

    fn write(
        &self,
        groups: Vec<super::activity::Group>,
    ) -> impl std::future::Future<Output = Vec<super::activity::Written>> + Send + '_ {
        self.write_batch(groups)
    }

    fn rewrite<'a>(
        &'a self,
        conversation: &'a str,
        word: serde_json::Map<String, Value>,
        _facts: &'a super::activity::Facts,
    ) -> impl std::future::Future<Output = Result<(), CrmError>> + Send + 'a {
        self.rewrite_word(conversation, word)
    }
}

impl Crm for SalesforceCrm {
    fn name(&self) -> &str {
        // The adapter, like `log` and `webhook`; logs name the connection.
        "salesforce"
    }

    fn handle<'a>(&'a self, event: &'a CrmEvent) -> BoxFuture<'a, Result<(), CrmError>> {
        Box::pin(self.handle_event(event))
    }

    fn api_usage(&self) -> Option<(u64, u64)> {
        let (used, limit) = self.governor.usage();
        (limit > 0).then_some((used, limit))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.check_org())
    }

    fn concurrency(&self) -> Option<usize> {
        // A batch fills only with as many events in flight, and the next one
        // fills while it is written.
        Some(2 * self.settings.batch.max_records)
    }

    fn dispositions<'a>(
        &'a self,
        _partner: Option<&'a Guid>,
    ) -> BoxFuture<'a, Option<Vec<String>>> {
        // Loading softphones (and the load responder, one request at a time)
        // wait for this: a slow or failing org gets a short wait, then is left
        // alone for a while, and the last list read (else the configured
        // one) stands in.
        Box::pin(async move {
            let failed_at = *self
                .describe_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if failed_at.is_none_or(|at| at.elapsed() >= DESCRIBE_BACKOFF) {
                let error =
                    match tokio::time::timeout(DESCRIBE_WAIT, self.picklist_dispositions()).await {
                        Ok(Ok(values)) => return values,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {DESCRIBE_WAIT:?}"),
                    };
                tracing::warn!(crm = %self.name, %error, "Cannot read the disposition picklist; using the last or the configured list.");
                *self
                    .describe_failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            self.dispositions
                .lock()
                .await
                .as_ref()
                .map(|(_, values)| values.clone())
        })
    }
}
