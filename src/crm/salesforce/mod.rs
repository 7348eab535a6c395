//! The `salesforce` CRM: call activity as Tasks upserted on an external id,
//! caller lookup for screen pop, presence, over the org's REST API.

mod auth;
mod error;
mod limits;
mod lookup;
mod org;
#[cfg(test)]
mod secrets_tests;
mod task;

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use self::auth::TokenSource;
use self::error::{classify, error_code};
use self::limits::Governor;
use self::lookup::Match;
use self::task::TaskWrite;
use super::http::{retry_after, transport_error, truncate};
use super::{Crm, CrmError, CrmEvent};
use crate::config::SalesforceSettings;
use crate::contract::{Event, Guid, PhoneNumber};

pub use self::auth::JWT_BEARER_GRANT;
pub use self::limits::HEADER as LIMIT_INFO_HEADER;

/// A connection to one Salesforce org.
pub struct SalesforceCrm {
    name: String,
    settings: SalesforceSettings,
    client: reqwest::Client,
    tokens: TokenSource,
    governor: Governor,
    lookups: lookup::Cache,
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
    status: StatusCode,
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
            lookups: lookup::Cache::new(settings.lookup.cache_for),
            settings: settings.clone(),
            client,
            dispositions: tokio::sync::Mutex::new(None),
            describe_failed: std::sync::Mutex::new(None),
        })
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
                return Ok(Answer { status, body });
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
        let Some(write) = task::task_write(&event.event, event.published, &self.settings) else {
            return Ok(());
        };
        self.write_task(&event.event, write).await
    }

    async fn write_task(&self, event: &Event, mut w: TaskWrite) -> Result<(), CrmError> {
        let conversation = event
            .conversation_id()
            .expect("task writes are for call events")
            .as_str();
        if let Some(number) = w.lookup.take().filter(|_| self.settings.lookup.enabled) {
            // WhoId is an enrichment: a search the org refuses must not cost
            // the Task; a transient failure is worth the event's retry.
            let matches = match self.lookup(&number).await {
                Ok(matches) => matches,
                Err(CrmError::Permanent { reason, .. }) => {
                    tracing::warn!(crm = %self.name, conversation, %reason, "Caller lookup refused; Task written without WhoId.");
                    Vec::new()
                }
                Err(transient) => return Err(transient),
            };
            match matches.as_slice() {
                [one] => {
                    w.fields
                        .insert("WhoId".into(), Value::String(one.id.clone()));
                }
                [] => {
                    tracing::debug!(crm = %self.name, conversation, "No record matches the caller.")
                }
                many => {
                    let listed: Vec<String> = many
                        .iter()
                        .map(|m| format!("{}:{}", m.object, m.id))
                        .collect();
                    tracing::info!(
                        crm = %self.name,
                        conversation,
                        matches = %listed.join(", "),
                        "Several records match the caller; WhoId left for the agent."
                    );
                    if let Some(field) = &self.settings.lookup.matches_field {
                        w.fields
                            .insert(field.clone(), Value::String(listed.join(", ")));
                    }
                }
            }
            if let (Event::CallIncoming(_), Some(api_name)) =
                (event, &self.settings.lookup.screen_pop_event)
            {
                // A screen pop is only useful while the call rings: a failed
                // one is logged, never retried with the event.
                if let Err(e) = self
                    .screen_pop(api_name, conversation, &number, &matches)
                    .await
                {
                    tracing::warn!(crm = %self.name, conversation, error = %e, "Screen pop not published.");
                }
            }
        }
        let external_id = &self.settings.external_id_field;
        let task_path = self.data_path(&format!("sobjects/Task/{external_id}/{conversation}"));
        if !w.fill.is_empty() {
            let fields: Vec<&str> = w.fill.keys().map(String::as_str).collect();
            let read = self
                .call(
                    Method::GET,
                    &task_path,
                    &[("fields", &fields.join(","))],
                    None,
                    &[StatusCode::NOT_FOUND],
                )
                .await?;
            let current = match read.json() {
                Value::Object(record) if read.status.is_success() => record,
                _ => Map::new(),
            };
            w.resolve_fill(&current);
        }
        if !w.create_only.is_empty() {
            let mut body = w.fields.clone();
            body.extend(std::mem::take(&mut w.create_only));
            body.insert(external_id.clone(), Value::String(conversation.to_owned()));
            let create_path = self.data_path("sobjects/Task");
            let created = self
                .call(
                    Method::POST,
                    &create_path,
                    &[],
                    Some(&Value::Object(body)),
                    &[StatusCode::BAD_REQUEST],
                )
                .await?;
            if created.status.is_success() {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&created.body);
            if error_code(&text).as_deref() != Some("DUPLICATE_VALUE") {
                return Err(classify(
                    created.status,
                    None,
                    &text,
                    self.settings.limit_retry_after,
                ));
            }
            // The Task exists already (a later event came first): enrich it.
        }
        self.call(
            Method::PATCH,
            &task_path,
            &[],
            Some(&Value::Object(w.fields)),
            &[],
        )
        .await
        .map(drop)
    }

    /// Records matching the number (cached).
    async fn lookup(&self, number: &PhoneNumber) -> Result<Vec<Match>, CrmError> {
        if let Some(matches) = self.lookups.get(number) {
            return Ok(matches);
        }
        let sosl = lookup::sosl(number, &self.settings.lookup);
        let answer = self
            .call(
                Method::GET,
                &self.data_path("search/"),
                &[("q", &sosl)],
                None,
                &[],
            )
            .await?;
        let matches = serde_json::from_slice::<lookup::SearchResponse>(&answer.body)
            .map(lookup::SearchResponse::matches)
            .map_err(|e| CrmError::Permanent {
                reason: format!("unreadable Salesforce search answer: {e}"),
                detail: Some(truncate(&String::from_utf8_lossy(&answer.body))),
            })?;
        self.lookups.put(number, matches.clone());
        Ok(matches)
    }

    /// Publishes the matches as a Platform Event, for a Lightning component to pop.
    async fn screen_pop(
        &self,
        api_name: &str,
        conversation: &str,
        number: &PhoneNumber,
        matches: &[Match],
    ) -> Result<(), CrmError> {
        let body = json!({
            "Conversation_Id__c": conversation,
            "Caller_Number__c": number.as_str(),
            "Match_Count__c": matches.len(),
            "Matches__c": serde_json::to_string(matches).unwrap_or_default(),
        });
        let path = self.data_path(&format!("sobjects/{api_name}/"));
        self.call(Method::POST, &path, &[], Some(&body), &[])
            .await
            .map(drop)
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
