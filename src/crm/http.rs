//! What HTTP-based adapters share: mapping answers and transport errors to
//! the connection's trouble or the event's own failure.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};

use super::CrmError;

/// The HTTP client every CRM connection shares: one connection pool and one
/// root store for the process, however many connections are configured
/// (each connection sets its own timeout on each request). Redirects are
/// never followed: a followed POST turns into a GET, and a bearer token must
/// not travel to wherever a 3xx points.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("softphone-bridge/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// Longest CRM error text kept for logs and DLQ headers.
const MAX_DETAIL: usize = 1024;

/// 2xx is success. Statuses that say the endpoint itself is not taking
/// events (redirects, which are never followed for an event POST; 401, 403,
/// 404, 405, 407 about the endpoint or the credentials; 408, 425, 429 and 5xx)
/// are the connection's trouble, honouring `Retry-After`. Any other status
/// refuses this event, with the CRM's body as detail.
pub async fn classify_response(response: Response) -> Result<Response, CrmError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers());
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| crate::redact::redacted_url(v.split('?').next().unwrap_or_default()))
            .unwrap_or_default();
        return Err(CrmError::Unavailable {
            reason: format!(
                "CRM answered {status} to {location:?}: redirects are not followed for events; point the connection's url there"
            ),
            retry_after,
        });
    }
    let body = response.text().await.unwrap_or_default();
    Err(classify_status(status, retry_after, &body))
}

fn classify_status(status: StatusCode, retry_after: Option<Duration>, body: &str) -> CrmError {
    let connection = matches!(
        status.as_u16(),
        401 | 403 | 404 | 405 | 407 | 408 | 425 | 429
    ) || status.is_server_error();
    if connection {
        CrmError::Unavailable {
            reason: format!("CRM answered {status}"),
            retry_after,
        }
    } else {
        CrmError::Permanent {
            reason: format!("CRM answered {status}"),
            detail: (!body.is_empty()).then(|| truncate(body)),
        }
    }
}

/// Transport failures (connect, timeout, reset) are the connection's trouble;
/// a request that cannot even be built (a header value it refuses) is the
/// event's own, and no retry can mend it.
pub(super) fn transport_error(error: reqwest::Error) -> CrmError {
    if error.is_builder() {
        return CrmError::Permanent {
            reason: format!("cannot build the CRM request: {}", error.without_url()),
            detail: None,
        };
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's text can hold the URL, whose userinfo or query may carry
    // credentials: leave it out.
    CrmError::Unavailable {
        reason: format!("CRM {what}: {}", error.without_url()),
        retry_after: None,
    }
}

pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The CRM's error text, cut to a size fit for logs and DLQ headers.
pub(crate) fn truncate(text: &str) -> String {
    crate::text::truncate(text, MAX_DETAIL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_request_that_cannot_be_built_is_the_events_own_failure() {
        let refused = reqwest::Client::new()
            .post("http://127.0.0.1:9/events")
            .header("Idempotency-Key", "evt\u{1}1")
            .build()
            .expect_err("a control character in a header is refused");
        assert!(matches!(
            transport_error(refused),
            CrmError::Permanent { reason, .. } if reason.starts_with("cannot build the CRM request")
        ));
    }

    #[test]
    fn statuses_split_into_the_connections_trouble_and_the_events() {
        for status in [401, 403, 404, 405, 407, 408, 425, 429, 500, 502, 503, 504] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify_status(s, None, ""), CrmError::Unavailable { .. }),
                "{status}"
            );
        }
        for status in [400, 409, 410, 413, 422] {
            let s = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify_status(s, None, "x"), CrmError::Permanent { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let got = retry_after(&headers).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn long_bodies_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(2000);
        let cut = truncate(&body);
        assert!(cut.len() <= MAX_DETAIL + "…".len());
    }
}
