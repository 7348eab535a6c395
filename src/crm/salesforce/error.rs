//! Salesforce's answers as CRM errors: its special cases (401, 403
//! REQUEST_LIMIT_EXCEEDED, 300) on top of the shared HTTP classification.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::crm::CrmError;
use crate::crm::http::{classify_status, truncate};

/// `errorCode` of Salesforce's `[{"message": .., "errorCode": ..}]` error body.
pub(super) fn error_code(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let first = value.as_array().and_then(|a| a.first()).unwrap_or(&value);
    first["errorCode"].as_str().map(str::to_owned)
}

/// Salesforce's special cases on top of the shared HTTP classification.
pub(super) fn classify(
    status: StatusCode,
    retry: Option<Duration>,
    body: &str,
    limit_retry: Duration,
) -> CrmError {
    let code = error_code(body);
    let reason = match &code {
        Some(code) => format!("Salesforce answered {status} {code}"),
        None => format!("Salesforce answered {status}"),
    };
    let detail = (!body.is_empty()).then(|| truncate(body));
    if status == StatusCode::FORBIDDEN && code.as_deref() == Some("REQUEST_LIMIT_EXCEEDED") {
        return CrmError::Transient {
            reason,
            retry_after: retry.or(Some(limit_retry)),
        };
    }
    if status == StatusCode::UNAUTHORIZED {
        // Refused even with a fresh token: transient, so a fixed connected app
        // or a re-enabled user gets the events, and the breaker opens meanwhile.
        return CrmError::Transient {
            reason,
            retry_after: retry,
        };
    }
    if status == StatusCode::MULTIPLE_CHOICES {
        return CrmError::Permanent {
            reason: format!("{reason}: the external id matches several records"),
            detail,
        };
    }
    match classify_status(status, retry, body) {
        CrmError::Transient { retry_after, .. } => CrmError::Transient {
            reason,
            retry_after,
        },
        CrmError::Permanent { .. } => CrmError::Permanent { reason, detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salesforce_answers_are_classified() {
        let limit = Duration::from_secs(60);
        let transient = |s: u16, body: &str| {
            matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, body, limit),
                CrmError::Transient { .. }
            )
        };
        assert!(transient(
            403,
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#
        ));
        assert!(!transient(
            403,
            r#"[{"message":"no","errorCode":"INSUFFICIENT_ACCESS"}]"#
        ));
        assert!(transient(429, ""));
        assert!(transient(503, ""));
        assert!(!transient(
            300,
            r#"["/services/data/v67.0/sobjects/Task/00T1","/services/data/v67.0/sobjects/Task/00T2"]"#
        ));
        let bad = r#"[{"message":"No such column 'X__c'","errorCode":"INVALID_FIELD"}]"#;
        match classify(StatusCode::BAD_REQUEST, None, bad, limit) {
            CrmError::Permanent { reason, detail } => {
                assert_eq!(reason, "Salesforce answered 400 Bad Request INVALID_FIELD");
                assert_eq!(detail.as_deref(), Some(bad));
            }
            other => panic!("{other:?}"),
        }
    }
}
