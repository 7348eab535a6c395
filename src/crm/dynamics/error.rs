//! Dataverse's answers as CRM errors: what is the environment's trouble (401
//! after a refresh, 403 missing privileges, 408, 429 service protection,
//! 5xx) and what is the record's (412 is retried, any other 4xx about the
//! record is refused with Dataverse's code and message).

use std::time::Duration;

use serde_json::Value;

use crate::crm::CrmError;
use crate::crm::http::truncate;

/// The `code` and `message` of an OData error body
/// (`{"error": {"code": "0x80060888", "message": ".."}}`).
pub(super) fn odata_error(body: &str) -> (Option<String>, Option<String>) {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let text = |key: &str| value["error"][key].as_str().map(str::to_owned);
    (text("code"), text("message"))
}

/// An answer that is not a success, for the whole request or one record.
pub(super) fn classify(status: u16, retry: Option<Duration>, body: &str) -> CrmError {
    let (code, message) = odata_error(body);
    let reason = match (&code, &message) {
        (Some(code), Some(message)) => format!("Dataverse answered {status} {code}: {message}"),
        (Some(code), None) => format!("Dataverse answered {status} {code}"),
        _ => format!("Dataverse answered {status}"),
    };
    let reason = truncate(&reason);
    // The environment's trouble, whatever the record: the lane holds its
    // events (429 and 503 carry Retry-After: service protection).
    if matches!(status, 401 | 403 | 408 | 429) || status >= 500 {
        return CrmError::Unavailable {
            reason,
            retry_after: retry,
        };
    }
    if status == 412 {
        return CrmError::Transient {
            reason,
            retry_after: retry,
        };
    }
    CrmError::Permanent {
        reason,
        detail: (!body.is_empty()).then(|| truncate(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environments_trouble_holds_and_a_records_refusal_is_its_own() {
        let throttled = r#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}"#;
        assert_eq!(
            classify(429, Some(Duration::from_secs(7)), throttled),
            CrmError::Unavailable {
                reason: "Dataverse answered 429 0x80072322: Number of requests exceeded the limit of 6000 over time window of 300 seconds.".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        for status in [401, 403, 408, 500, 502, 503] {
            assert!(
                matches!(classify(status, None, ""), CrmError::Unavailable { .. }),
                "{status}"
            );
        }
        let refused =
            r#"{"error":{"code":"0x80060888","message":"Could not find a property named 'x'."}}"#;
        assert!(matches!(
            classify(400, None, refused),
            CrmError::Permanent { reason, detail: Some(_) } if reason == "Dataverse answered 400 0x80060888: Could not find a property named 'x'."
        ));
        assert!(matches!(
            classify(412, None, ""),
            CrmError::Transient { .. }
        ));
    }
}
