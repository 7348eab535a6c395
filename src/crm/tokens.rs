//! The OAuth 2.0 access token of one CRM connection, as every adapter that
//! needs one keeps it: cached for its lifetime, fetched by exactly one
//! request however many callers find it missing, and forgotten on a 401
//! only if it is still the token the 401 was seen with.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::CrmError;

/// A token as issued, with the generation that tells it from the others.
pub(crate) struct Issued<T> {
    pub token: T,
    pub generation: u64,
}

impl<T> std::ops::Deref for Issued<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.token
    }
}

/// A token, when it was had, and how long it may be used.
type Held<T> = (Arc<Issued<T>>, Instant, Duration);

/// The cached token of a connection.
pub(crate) struct Tokens<T> {
    /// Held across the token request: whoever finds the token missing
    /// fetches it, and everyone else waits for that one answer.
    current: tokio::sync::Mutex<Option<Held<T>>>,
    generations: AtomicU64,
}

impl<T> Default for Tokens<T> {
    fn default() -> Self {
        Self {
            current: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
        }
    }
}

impl<T> Tokens<T> {
    /// The cached token, or the one `fetch` gets (with how long it may be
    /// used) when there is none or it is older than that.
    pub(super) async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<Issued<T>>, CrmError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(T, Duration), CrmError>>,
    {
        let mut current = self.current.lock().await;
        if let Some((token, at, ttl)) = current.as_ref()
            && at.elapsed() < *ttl
        {
            return Ok(Arc::clone(token));
        }
        let (token, ttl) = fetch().await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let token = Arc::new(Issued { token, generation });
        *current = Some((Arc::clone(&token), Instant::now(), ttl));
        Ok(token)
    }

    /// Forgets `stale` (refused with 401), unless another caller already
    /// replaced it.
    pub(super) async fn invalidate(&self, stale: &Issued<T>) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|(t, _, _)| t.generation == stale.generation)
        {
            *current = None;
        }
    }
}

/// A token endpoint's refusal as the connection's trouble (whatever it says,
/// no event is at fault: the lane holds its events until a token is had
/// again). OAuth error bodies (`{"error":"invalid_client",...}`) hold no
/// secrets; only the error code is kept.
pub(crate) async fn refused(crm: &str, response: reqwest::Response, hint: &str) -> CrmError {
    let status = response.status();
    let retry = super::http::retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let error = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    let hint = if status.is_client_error() { hint } else { "" };
    CrmError::Unavailable {
        reason: match error {
            Some(error) => format!("{crm} token request answered {status} {error}{hint}"),
            None => format!("{crm} token request answered {status}{hint}"),
        },
        retry_after: retry,
    }
}
