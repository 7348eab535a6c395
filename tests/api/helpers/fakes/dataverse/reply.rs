//! How the fake answers: a reply (status, headers, a JSON or raw body) that
//! becomes a wiremock response or an HTTP message inside a `$batch`, and the
//! errors Dataverse answers with, worded as it words them.

use super::*;

pub(super) enum Body {
    None,
    Json(Value),
    Raw(String, String),
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Body,
}

impl Reply {
    pub(super) fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::None,
        }
    }

    pub(super) fn json(status: u16, value: Value) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::Json(value),
        }
    }

    pub(super) fn raw(status: u16, content_type: &str, text: String) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::Raw(content_type.into(), text),
        }
    }

    pub(super) fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(super) fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn content_type(&self) -> Option<String> {
        match &self.body {
            Body::None => None,
            Body::Json(_) if self.status >= 400 => {
                Some("application/json; odata.metadata=minimal".into())
            }
            Body::Json(_) => {
                Some("application/json; odata.metadata=minimal; odata.streaming=true".into())
            }
            Body::Raw(content_type, _) => Some(content_type.clone()),
        }
    }

    pub(super) fn template(self) -> ResponseTemplate {
        let content_type = self.content_type();
        let mut template = ResponseTemplate::new(self.status);
        for (name, value) in &self.headers {
            template = template.insert_header(name.as_str(), value.as_str());
        }
        match (self.body, content_type) {
            (Body::Json(value), Some(ct)) => {
                template.set_body_raw(serde_json::to_vec(&value).unwrap(), &ct)
            }
            (Body::Raw(_, text), Some(ct)) => template.set_body_raw(text.into_bytes(), &ct),
            _ => template,
        }
    }

    /// The answer as the `application/http` content of a `$batch` response part.
    pub(super) fn http_message(&self) -> String {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status >= 400 {
            out.push_str(&format!("REQ_ID: {}\r\n", uuid::Uuid::new_v4()));
        }
        if let Some(ct) = self.content_type() {
            out.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        match &self.body {
            Body::None => {}
            Body::Json(value) => out.push_str(&value.to_string()),
            Body::Raw(_, text) => out.push_str(text),
        }
        out
    }
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// `{"error":{"code":..,"message":..}}` (compose-http-requests-handle-errors).
pub(super) fn odata_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

/// ObjectDoesNotExist (conditional operations: "account With Id = ... Does Not Exist").
pub(super) fn not_exist(entity: &str, id: &str) -> Reply {
    odata_error(
        404,
        "0x80040217",
        &format!("{entity} With Id = {id} Does Not Exist"),
    )
}

/// Web API client errors: "Error identified in Payload provided by the user
/// for Entity" (OData deserialization of the body).
pub(super) fn payload_error(set: &str, inner: &str) -> Reply {
    odata_error(
        400,
        "0x80048d19",
        &format!(
            "Error identified in Payload provided by the user for Entity :'{set}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : {inner}"
        ),
    )
}

pub(super) fn cannot_convert(set: &str, value: &Value, edm: &str) -> Reply {
    let literal = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    payload_error(
        set,
        &format!(
            "Microsoft.OData.ODataException: Cannot convert the literal '{literal}' to the expected type '{edm}'."
        ),
    )
}

/// Web API client errors: an undeclared navigation property bound in a payload.
pub(super) fn undeclared_navigation(set: &str, property: &str) -> Reply {
    payload_error(
        set,
        &format!(
            "Microsoft.OData.ODataException: An undeclared property '{property}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
        ),
    )
}

/// Web API client errors: "Invalid property '{name}' was found in entity".
pub(super) fn invalid_property(entity: &str, property: &str) -> Reply {
    odata_error(
        400,
        "0x0",
        &format!(
            "An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid property '{property}' was found in entity 'Microsoft.Dynamics.CRM.{entity}'. ---> Microsoft.OData.ODataException: Does not support untyped value in non-open type."
        ),
    )
}

/// Web API client errors: "Could not find a property named" ($select, $filter).
pub(super) fn no_property(entity: &str, property: &str) -> Reply {
    odata_error(
        400,
        "0x80060888",
        &format!(
            "Could not find a property named '{property}' on type 'Microsoft.Dynamics.CRM.{entity}'."
        ),
    )
}

pub(super) fn query_syntax(message: &str) -> Reply {
    odata_error(400, "0x80060888", message)
}

/// Batch operations (handling errors): a string longer than its column.
pub(super) fn too_long(entity: &str, attribute: &str, max: usize) -> Reply {
    odata_error(
        400,
        "0x80044331",
        &format!(
            "A validation error occurred.  The length of the '{attribute}' attribute of the '{entity}' entity exceeded the maximum allowed length of '{max}'."
        ),
    )
}

pub(super) fn out_of_range(attribute: &str, value: i64, min: i64, max: i64) -> Reply {
    odata_error(
        400,
        "0x80044331",
        &format!(
            "A validation error occurred.  The value {value} of '{attribute}' on record of type 'phonecall' is outside the valid range. Accepted range: {min} to {max}"
        ),
    )
}

pub(super) const STATES: [&str; 3] = ["Open", "Completed", "Canceled"];

/// InvalidStateCodeStatusCode, worded as Dataverse words it for a record.
pub(super) fn bad_status(status: i64, state: i64, id: &str) -> Reply {
    let name = STATES.get(state as usize).copied().unwrap_or("Open");
    odata_error(
        400,
        "0x80048408",
        &format!(
            "{status} is not a valid status code for state code PhoneCallState.{name} on phonecall with Id {id}."
        ),
    )
}

pub(super) fn bad_state() -> Reply {
    odata_error(
        400,
        "0x80048408",
        "State code is invalid or state code is valid but status code is invalid for a specified state code.",
    )
}

/// Web service error codes: CannotUpdateObjectBecauseItIsInactive.
pub(super) fn inactive() -> Reply {
    odata_error(
        400,
        "0x80040230",
        "The object cannot be updated because it is inactive.",
    )
}

pub(super) fn set_to_null(attribute: &str) -> Reply {
    odata_error(
        400,
        "0x80040203",
        &format!("Attribute: {attribute} cannot be set to NULL"),
    )
}

pub(super) fn bad_request(detail: &str) -> Reply {
    Reply::json(
        400,
        json!({"error": {
            "code": "0x8005F100",
            "message": "The request could not be understood by the server.",
            "innererror": {"message": detail}
        }}),
    )
}

pub(super) fn resource_not_found(segment: &str) -> Reply {
    odata_error(
        404,
        "0x8006088a",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

pub(super) fn method_not_allowed(method: &str) -> Reply {
    odata_error(
        405,
        "",
        &format!("The requested resource does not support http method '{method}'."),
    )
}

/// Web API client errors: a `$batch` body with other line endings than CRLF.
pub(super) fn stream_not_readable(entity: &str) -> Reply {
    payload_error(
        entity,
        "System.ArgumentException: Stream was not readable.\r\nat System.IO.StreamReader..ctor(Stream stream, Encoding encoding, Boolean detectEncodingFromByteOrderMarks, Int32 bufferSize, Boolean leaveOpen)",
    )
}
