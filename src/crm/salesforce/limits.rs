//! The org's daily API usage, read from `Sforce-Limit-Info` on every answer,
//! and the governor that postpones calls once a share of the limit is used.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use reqwest::header::HeaderMap;

use crate::crm::CrmError;
use crate::telemetry::metric;

/// `Sforce-Limit-Info: api-usage=18/5000`.
pub const HEADER: &str = "Sforce-Limit-Info";

/// `(used, limit)` from a `Sforce-Limit-Info` value.
pub(crate) fn parse(value: &str) -> Option<(u64, u64)> {
    value.split(',').find_map(|part| {
        let usage = part.trim().strip_prefix("api-usage=")?;
        let (used, limit) = usage.split_once('/')?;
        Some((used.trim().parse().ok()?, limit.trim().parse().ok()?))
    })
}

/// Last usage seen, shared by every call of one connection.
pub(crate) struct Governor {
    used: AtomicU64,
    limit: AtomicU64,
    max_share: f64,
    retry_after: Duration,
    connection: String,
    /// When usage was last seen; once that is `retry_after` old, one call
    /// goes through to learn whether the day's count has reset.
    seen_at: Mutex<Option<Instant>>,
    postponing: AtomicBool,
}

impl Governor {
    pub(super) fn new(connection: &str, max_share: f64, retry_after: Duration) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            max_share,
            retry_after,
            connection: connection.to_owned(),
            seen_at: Mutex::new(None),
            postponing: AtomicBool::new(false),
        }
    }

    /// Records the usage an answer reports.
    pub(super) fn observe(&self, headers: &HeaderMap) {
        let Some((used, limit)) = headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse)
        else {
            return;
        };
        let before = self.used.swap(used, Ordering::Relaxed);
        metrics::gauge!(metric::SALESFORCE_API_USED, "crm" => self.connection.clone())
            .set(used as f64);
        metrics::gauge!(metric::SALESFORCE_API_LIMIT, "crm" => self.connection.clone())
            .set(limit as f64);
        self.limit.store(limit, Ordering::Relaxed);
        *self.seen_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        // The first reading, then one line per hundred calls: the usage stays
        // visible without noise.
        if before == 0 || used / 100 != before / 100 {
            tracing::info!(crm = %self.connection, api_used = used, api_limit = limit, "Salesforce API usage.");
        }
    }

    /// `(used, limit)` as last seen.
    pub(super) fn usage(&self) -> (u64, u64) {
        (
            self.used.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
        )
    }

    /// Refuses the call (transient, with a retry delay) while usage is past the share.
    pub(super) fn admit(&self) -> Result<(), CrmError> {
        let (used, limit) = self.usage();
        if limit > 0 && used as f64 >= self.max_share * limit as f64 {
            let mut seen_at = self.seen_at.lock().unwrap_or_else(|p| p.into_inner());
            if seen_at.is_some_and(|at| at.elapsed() >= self.retry_after) {
                *seen_at = Some(Instant::now());
                return Ok(());
            }
            // Once per episode; the lane pauses and says so too.
            if !self.postponing.swap(true, Ordering::Relaxed) {
                tracing::warn!(crm = %self.connection, api_used = used, api_limit = limit, "Salesforce API usage past the configured share; postponing calls.");
            }
            return Err(CrmError::Unavailable {
                reason: format!(
                    "Salesforce API usage {used}/{limit} is past max_api_usage = {}",
                    self.max_share
                ),
                retry_after: Some(self.retry_after),
            });
        }
        if self.postponing.swap(false, Ordering::Relaxed) {
            tracing::info!(crm = %self.connection, api_used = used, api_limit = limit, "Salesforce API usage back under the configured share.");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn usage_is_parsed() {
        assert_eq!(parse("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(
            parse("per-app-api-usage=2/250(appName=x), api-usage=7/100"),
            Some((7, 100))
        );
        assert_eq!(parse("api-usage=x/5000"), None);
        assert_eq!(parse(""), None);
    }

    #[tokio::test(start_paused = true)]
    async fn governor_postpones_past_the_share_then_probes() {
        let g = Governor::new("sf", 0.8, Duration::from_secs(60));
        assert!(g.admit().is_ok(), "no usage seen yet");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("api-usage=79/100"));
        g.observe(&headers);
        assert!(g.admit().is_ok());
        headers.insert(HEADER, HeaderValue::from_static("api-usage=80/100"));
        g.observe(&headers);
        match g.admit() {
            Err(CrmError::Unavailable { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(60)))
            }
            other => panic!("expected a postponement, got {other:?}"),
        }
        assert_eq!(g.usage(), (80, 100));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(g.admit().is_ok(), "one probe once the delay has passed");
        assert!(g.admit().is_err(), "only one");
    }
}
