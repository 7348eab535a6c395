//! Salesforce's answers as CRM errors: what is the org's trouble (401 after a
//! refresh, REQUEST_LIMIT_EXCEEDED, 408, 429, 5xx) and what is the record's
//! (a locked row is retried, anything else about the record is refused).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::crm::CrmError;
use crate::crm::http::truncate;

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
        return CrmError::Unavailable {
            reason,
            retry_after: retry.or(Some(limit_retry)),
        };
    }
    // 401 even with a fresh token: the connected app or the user is refused,
    // so the lane holds its events until someone fixes the org.
    let org = matches!(status.as_u16(), 401 | 408 | 429) || status.is_server_error();
    if org {
        return CrmError::Unavailable {
            reason,
            retry_after: retry,
        };
    }
    if code.as_deref() == Some("UNABLE_TO_LOCK_ROW") {
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
    CrmError::Permanent { reason, detail }
}

/// One record's errors in a collections answer
/// (`[{"statusCode": .., "message": .., "fields": [..]}]`): the record's
/// fate, as [`classify`] decides a single write's.
pub(super) fn classify_item(errors: &Value) -> CrmError {
    let code = errors[0]["statusCode"].as_str().unwrap_or("UNKNOWN");
    let reason = format!("Salesforce refused the record: {code}");
    match code {
        "UNABLE_TO_LOCK_ROW" => CrmError::Transient {
            reason,
            retry_after: None,
        },
        "REQUEST_LIMIT_EXCEEDED" | "SERVER_UNAVAILABLE" | "API_DISABLED_FOR_ORG" => {
            CrmError::Unavailable {
                reason,
                retry_after: None,
            }
        }
        _ => CrmError::Permanent {
            reason,
            detail: Some(truncate(&errors.to_string())),
        },
    }
}

/// The `statusCode` of a record's first error, if any.
pub(super) fn item_code(errors: &Value) -> Option<&str> {
    errors[0]["statusCode"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_errors_are_classified() {
        let item = |code: &str| {
            classify_item(&serde_json::json!([{"statusCode": code, "message": "m", "fields": []}]))
        };
        assert!(matches!(
            item("UNABLE_TO_LOCK_ROW"),
            CrmError::Transient { .. }
        ));
        assert!(matches!(
            item("REQUEST_LIMIT_EXCEEDED"),
            CrmError::Unavailable { .. }
        ));
        match item("FIELD_CUSTOM_VALIDATION_EXCEPTION") {
            CrmError::Permanent { detail, .. } => {
                assert!(
                    detail
                        .unwrap()
                        .contains("FIELD_CUSTOM_VALIDATION_EXCEPTION")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn salesforce_answers_are_classified() {
        let limit = Duration::from_secs(60);
        let class = |s: u16, body: &str| match classify(
            StatusCode::from_u16(s).unwrap(),
            None,
            body,
            limit,
        ) {
            CrmError::Unavailable { .. } => "org",
            CrmError::Transient { .. } => "retry",
            CrmError::Permanent { .. } => "refused",
        };
        assert_eq!(
            class(
                403,
                r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#
            ),
            "org"
        );
        assert_eq!(
            class(
                403,
                r#"[{"message":"no","errorCode":"INSUFFICIENT_ACCESS"}]"#
            ),
            "refused"
        );
        assert_eq!(
            class(
                401,
                r#"[{"message":"Session expired","errorCode":"INVALID_SESSION_ID"}]"#
            ),
            "org"
        );
        assert_eq!(class(429, ""), "org");
        assert_eq!(class(503, ""), "org");
        assert_eq!(
            class(
                400,
                r#"[{"message":"unable to obtain exclusive access","errorCode":"UNABLE_TO_LOCK_ROW"}]"#
            ),
            "retry"
        );
        assert_eq!(
            class(
                300,
                r#"["/services/data/v67.0/sobjects/Task/00T1","/services/data/v67.0/sobjects/Task/00T2"]"#
            ),
            "refused"
        );
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
