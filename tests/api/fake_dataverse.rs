//! A fake Microsoft Dataverse (the Dynamics 365 Web API, v9.2) over real
//! HTTP, with the Microsoft Entra client-credentials token endpoint in front
//! of it: phone call activities upserted by id (their state model, activity
//! parties and regarding lookups), contacts and accounts queried with
//! `$select`/`$filter`/`$top`, `WhoAmI` and `RetrieveUserPrivileges`, and
//! `$batch` with change sets, answering with the formats and error codes
//! Microsoft documents, and with scripted outages, throttling, delays and
//! plug-in refusals.
//!
//! Sources (learn.microsoft.com, read from MicrosoftDocs/powerapps-docs,
//! MicrosoftDocs/entra-docs, MicrosoftDocs/SupportArticles-docs and
//! oasis-tcs/odata-specs):
//! - Execute batch operations using the Web API; OData 4.0 part 1 §11.7.
//! - Perform conditional operations (upsert with `If-Match`/`If-None-Match`).
//! - Compose HTTP requests and handle errors (error JSON, status codes,
//!   plug-in errors `0x80040265`).
//! - Service protection API limits (429, `Retry-After`, `0x80072322`...).
//! - Troubleshoot Dataverse Web API client errors (`0x0` invalid property,
//!   `0x80048d19` payload errors and non-CRLF `$batch` bodies, `0x80060888`).
//! - PhoneCall and ActivityParty table references (lengths, state model).
//! - Web service error codes (`0x80040230`, `0x80044331`...).
//! - Microsoft identity platform and the OAuth 2.0 client credentials flow;
//!   Microsoft Entra authentication and authorization error codes.
//!
//! What a client must expect, as Dataverse does it:
//! - `statecode` isn't valid for create: an upsert that creates a phone call
//!   creates it Open whatever `statecode` it carries, and refuses a
//!   `statuscode` that isn't an Open one (`0x80048408`). Create, then close
//!   with `{"statecode": 1, "statuscode": 2|4}` (or `2`/`3` to cancel).
//! - A Completed or Canceled phone call refuses any write but a state change
//!   (`0x80040230`), even one that reopens it in the same body: reopen with
//!   `{"statecode": 0, "statuscode": 1}`, write, close again, as three
//!   requests of one change set.
//! - A `statuscode` alone must belong to the record's current state.
//! - A `$batch` that stops at an error (no `Prefer: odata.continue-on-error`)
//!   takes that error's HTTP status, its body still multipart. A failed
//!   change set answers with the one failing response (`application/http`,
//!   its `Content-ID`), not a nested multipart; its writes are rolled back.
//! - `$batch` bodies must use CRLF line endings throughout, request lines a
//!   percent-encoded URL. In query strings `+` reads as a space: encode it.
//! - Dates come back in UTC to the second; strings compare case-insensitively
//!   in `$filter`; lengths count UTF-16 units.
//!
//! This file stands alone (the benchmarks include it by path).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The Entra tenant of the fake organization.
pub const TENANT_ID: &str = "8d2a6c4e-31f7-4b0a-9c5e-6f1d2b3a4c5d";
/// The application (client) id registered for the bridge.
pub const CLIENT_ID: &str = "3f9b1e7c-52a4-4d86-b0e3-9c7a1d2e4f60";
/// The client secret of that application.
pub const CLIENT_SECRET: &str = "TEST-ONLY~dataverse.client-secret";
/// The application user the tokens stand for (`WhoAmI`'s `UserId`).
pub const USER_ID: &str = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f";
/// Its business unit.
pub const BUSINESS_UNIT_ID: &str = "4e6f8a0b-2c4d-4e6f-8a0b-2c4d6e8f0a1b";
/// The organization.
pub const ORGANIZATION_ID: &str = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
/// The Web API's path (the service root under the organization URL).
pub const API_PATH: &str = "/api/data/v9.2/";
/// Requests a `$batch` may hold, change set members included.
pub const MAX_BATCH_REQUESTS: usize = 1000;
/// Privileges the application user holds unless a test removes them.
pub const DEFAULT_PRIVILEGES: [&str; 5] = [
    "prvCreateActivity",
    "prvWriteActivity",
    "prvReadActivity",
    "prvReadContact",
    "prvReadAccount",
];
/// The message of the plug-in that refuses the records in [`Org::refuse`].
pub const REFUSAL: &str = "The phone call was rejected by a synchronous validation plug-in.";

/// The type of a phonecall column, as the table's definition gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Single line of text of at most this many (UTF-16) characters.
    Text(usize),
    /// Multiple lines of text of at most this many characters.
    Memo(usize),
    /// Whole number within the range.
    Integer(i64, i64),
    /// Yes/No.
    Boolean,
    /// Date and time (`Edm.DateTimeOffset`), kept in UTC to the second.
    DateTime,
}

/// Which service protection limit the scripted 429s report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Limit {
    /// Number of requests (`0x80072322`).
    #[default]
    Requests,
    /// Combined execution time (`0x80072321`).
    ExecutionTime,
    /// Concurrent requests (`0x80072326`).
    Concurrency,
}

/// One phonecall write the organization applied (rolled-back ones removed).
#[derive(Clone, Debug)]
pub struct Write {
    pub at: Instant,
    /// The activity id (lowercase).
    pub id: String,
    /// The JSON body as the client sent it.
    pub body: Map<String, Value>,
    /// Whether this write created the record.
    pub created: bool,
}

/// What the fake organization holds and how it behaves.
pub struct Org {
    /// The organization URL (the mock server's address).
    pub base: String,
    /// Phone calls by activity id (lowercase), as stored: columns, `statecode`,
    /// `statuscode`, `_regardingobjectid_value` (with its
    /// `@Microsoft.Dynamics.CRM.lookuplogicalname`) and
    /// `phonecall_activity_parties`.
    pub phonecalls: HashMap<String, Map<String, Value>>,
    /// Per phone call, the JSON bodies applied to it, in order.
    pub history: HashMap<String, Vec<Map<String, Value>>>,
    /// Every phonecall write applied, across records, in order.
    pub writes: Vec<Write>,
    /// Contacts: `contactid`, `fullname`, `telephone1`, `mobilephone`, `telephone2`.
    pub contacts: Vec<Map<String, Value>>,
    /// Accounts: `accountid`, `name`, `telephone1`, `telephone2`.
    pub accounts: Vec<Map<String, Value>>,
    /// The organization's custom phonecall columns.
    pub custom_columns: HashMap<String, Column>,
    /// Privileges of the application user (`RetrieveUserPrivileges`, and
    /// checked on each read and write).
    pub privileges: Vec<String>,
    /// Form fields of each token request.
    pub token_requests: Vec<HashMap<String, String>>,
    /// Access tokens the Web API accepts.
    pub valid_tokens: HashSet<String>,
    /// While set, the token endpoint answers 503.
    pub token_down: bool,
    /// Delay of token answers.
    pub token_delay: Option<Duration>,
    /// While set, the Web API answers 503.
    pub down: bool,
    /// Delay of every Web API answer.
    pub delay: Option<Duration>,
    /// `(count, retry_after_secs)`: the next `count` Web API requests (a
    /// `$batch` is one) are throttled with 429.
    pub throttle: Option<(usize, u64)>,
    /// The limit the 429s name.
    pub throttle_limit: Limit,
    /// Activity ids whose writes a plug-in refuses (400, `0x80040265`).
    pub refuse: HashSet<String>,
    /// Web API HTTP requests received (token requests aside).
    pub requests: usize,
    /// `$batch` requests received.
    pub batches: usize,
    /// Requests executed from `$batch` bodies.
    pub operations: usize,
    /// Change sets rolled back.
    pub rollbacks: usize,
    /// 429s answered.
    pub throttled: usize,
    /// `(entity set, $filter)` of each collection query.
    pub queries: Vec<(String, String)>,
    version: u64,
    journal: Option<Vec<Undo>>,
}

struct Undo {
    id: String,
    prev: Option<Map<String, Value>>,
    history_len: Option<usize>,
    writes_len: usize,
}

pub struct FakeDataverse {
    pub server: MockServer,
    pub org: Arc<Mutex<Org>>,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
}

struct Responder {
    org: Arc<Mutex<Org>>,
    sent: mpsc::UnboundedSender<Request>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let _ = self.sent.send(request.clone());
        let mut org = self.org.lock().unwrap();
        if request.url.path().starts_with("/login/") {
            let answer = org.token(request).template();
            return match org.token_delay {
                Some(delay) => answer.set_delay(delay),
                None => answer,
            };
        }
        let answer = org.api(request).template();
        match org.delay {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }
}

impl FakeDataverse {
    pub async fn start() -> FakeDataverse {
        let server = MockServer::start().await;
        let org = Arc::new(Mutex::new(Org::new(server.uri())));
        let (sent, requests) = mpsc::unbounded_channel();
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder {
                org: Arc::clone(&org),
                sent,
            })
            .mount(&server)
            .await;
        FakeDataverse {
            server,
            org,
            requests: tokio::sync::Mutex::new(requests),
        }
    }

    /// The organization URL.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The Web API's service root: `<uri>/api/data/v9.2/`.
    pub fn api_url(&self) -> String {
        format!("{}{API_PATH}", self.uri())
    }

    /// The token endpoint: `<uri>/login/<tenant>/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!("{}/login/{TENANT_ID}/oauth2/v2.0/token", self.uri())
    }

    pub fn org(&self) -> MutexGuard<'_, Org> {
        self.org.lock().unwrap()
    }

    /// The body of a `[crm]` table connecting to this organization, with the
    /// extra keys.
    pub fn crm_toml(&self, extra: &str) -> String {
        let uri = self.uri();
        format!(
            "kind = \"dynamics\"\nurl = \"{uri}\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nauthority = \"{uri}/login\"\ntimeout = \"2s\"\n{extra}"
        )
    }

    /// A contact with this full name and business phone (`telephone1`), as
    /// typed; returns its id.
    pub fn add_contact(&self, name: &str, phone: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut contact = Map::new();
        contact.insert("contactid".into(), json!(id));
        contact.insert("fullname".into(), json!(name));
        contact.insert("telephone1".into(), json!(phone));
        contact.insert("mobilephone".into(), Value::Null);
        contact.insert("telephone2".into(), Value::Null);
        self.org().contacts.push(contact);
        id
    }

    /// An account with this name and main phone (`telephone1`); returns its id.
    pub fn add_account(&self, name: &str, phone: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut account = Map::new();
        account.insert("accountid".into(), json!(id));
        account.insert("name".into(), json!(name));
        account.insert("telephone1".into(), json!(phone));
        account.insert("telephone2".into(), Value::Null);
        self.org().accounts.push(account);
        id
    }

    /// The stored phone call (panics if there is none).
    pub fn phonecall(&self, id: &str) -> Map<String, Value> {
        self.org()
            .phonecalls
            .get(&id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| panic!("no phonecall {id}"))
    }

    /// How many phone calls the organization holds.
    pub fn phonecalls(&self) -> usize {
        self.org().phonecalls.len()
    }

    /// The JSON bodies applied to a phone call, in order (empty if none).
    pub fn history(&self, id: &str) -> Vec<Map<String, Value>> {
        self.org()
            .history
            .get(&id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Every request received and not yet taken.
    pub async fn drain(&self) -> Vec<Request> {
        let mut rx = self.requests.lock().await;
        let mut out = Vec::new();
        while let Ok(request) = rx.try_recv() {
            out.push(request);
        }
        out
    }

    /// How many Web API requests (token requests aside) arrived and were not
    /// taken yet (takes every request).
    pub async fn api_requests(&self) -> usize {
        self.drain()
            .await
            .iter()
            .filter(|r| r.url.path().starts_with("/api/data/"))
            .count()
    }

    /// Revokes every access token issued (the next Web API call gets 401).
    pub fn expire_tokens(&self) {
        self.org().valid_tokens.clear();
    }
}

// ---------------------------------------------------------------------------
// Answers

enum Body {
    None,
    Json(Value),
    Raw(String, String),
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Reply {
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::None,
        }
    }

    fn json(status: u16, value: Value) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::Json(value),
        }
    }

    fn raw(status: u16, content_type: &str, text: String) -> Reply {
        Reply {
            status,
            headers: vec![("OData-Version".into(), "4.0".into())],
            body: Body::Raw(content_type.into(), text),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> Option<String> {
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

    fn template(self) -> ResponseTemplate {
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
    fn http_message(&self) -> String {
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

fn reason(status: u16) -> &'static str {
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
fn odata_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

/// ObjectDoesNotExist (conditional operations: "account With Id = ... Does Not Exist").
fn not_exist(entity: &str, id: &str) -> Reply {
    odata_error(
        404,
        "0x80040217",
        &format!("{entity} With Id = {id} Does Not Exist"),
    )
}

/// Web API client errors: "Error identified in Payload provided by the user
/// for Entity" (OData deserialization of the body).
fn payload_error(set: &str, inner: &str) -> Reply {
    odata_error(
        400,
        "0x80048d19",
        &format!(
            "Error identified in Payload provided by the user for Entity :'{set}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ---->  InnerException : {inner}"
        ),
    )
}

fn cannot_convert(set: &str, value: &Value, edm: &str) -> Reply {
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
fn undeclared_navigation(set: &str, property: &str) -> Reply {
    payload_error(
        set,
        &format!(
            "Microsoft.OData.ODataException: An undeclared property '{property}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
        ),
    )
}

/// Web API client errors: "Invalid property '{name}' was found in entity".
fn invalid_property(entity: &str, property: &str) -> Reply {
    odata_error(
        400,
        "0x0",
        &format!(
            "An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid property '{property}' was found in entity 'Microsoft.Dynamics.CRM.{entity}'. ---> Microsoft.OData.ODataException: Does not support untyped value in non-open type."
        ),
    )
}

/// Web API client errors: "Could not find a property named" ($select, $filter).
fn no_property(entity: &str, property: &str) -> Reply {
    odata_error(
        400,
        "0x80060888",
        &format!(
            "Could not find a property named '{property}' on type 'Microsoft.Dynamics.CRM.{entity}'."
        ),
    )
}

fn query_syntax(message: &str) -> Reply {
    odata_error(400, "0x80060888", message)
}

/// Batch operations (handling errors): a string longer than its column.
fn too_long(entity: &str, attribute: &str, max: usize) -> Reply {
    odata_error(
        400,
        "0x80044331",
        &format!(
            "A validation error occurred.  The length of the '{attribute}' attribute of the '{entity}' entity exceeded the maximum allowed length of '{max}'."
        ),
    )
}

fn out_of_range(attribute: &str, value: i64, min: i64, max: i64) -> Reply {
    odata_error(
        400,
        "0x80044331",
        &format!(
            "A validation error occurred.  The value {value} of '{attribute}' on record of type 'phonecall' is outside the valid range. Accepted range: {min} to {max}"
        ),
    )
}

const STATES: [&str; 3] = ["Open", "Completed", "Canceled"];

/// InvalidStateCodeStatusCode, worded as Dataverse words it for a record.
fn bad_status(status: i64, state: i64, id: &str) -> Reply {
    let name = STATES.get(state as usize).copied().unwrap_or("Open");
    odata_error(
        400,
        "0x80048408",
        &format!(
            "{status} is not a valid status code for state code PhoneCallState.{name} on phonecall with Id {id}."
        ),
    )
}

fn bad_state() -> Reply {
    odata_error(
        400,
        "0x80048408",
        "State code is invalid or state code is valid but status code is invalid for a specified state code.",
    )
}

/// Web service error codes: CannotUpdateObjectBecauseItIsInactive.
fn inactive() -> Reply {
    odata_error(
        400,
        "0x80040230",
        "The object cannot be updated because it is inactive.",
    )
}

fn set_to_null(attribute: &str) -> Reply {
    odata_error(
        400,
        "0x80040203",
        &format!("Attribute: {attribute} cannot be set to NULL"),
    )
}

fn bad_request(detail: &str) -> Reply {
    Reply::json(
        400,
        json!({"error": {
            "code": "0x8005F100",
            "message": "The request could not be understood by the server.",
            "innererror": {"message": detail}
        }}),
    )
}

fn resource_not_found(segment: &str) -> Reply {
    odata_error(
        404,
        "0x8006088a",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

fn state_of(status: i64) -> Option<i64> {
    match status {
        1 => Some(0),
        2 | 4 => Some(1),
        3 => Some(2),
        _ => None,
    }
}

fn default_status(state: i64) -> Option<i64> {
    match state {
        0 => Some(1),
        1 => Some(2),
        2 => Some(3),
        _ => None,
    }
}

fn standard_column(name: &str) -> Option<Column> {
    Some(match name {
        "subject" => Column::Text(200),
        "description" => Column::Memo(2000),
        "phonenumber" => Column::Text(200),
        "category" | "subcategory" => Column::Text(250),
        "directioncode" | "leftvoicemail" => Column::Boolean,
        "actualstart" | "actualend" | "scheduledstart" | "scheduledend" => Column::DateTime,
        "actualdurationminutes" => Column::Integer(0, i32::MAX as i64),
        _ => return None,
    })
}

fn stamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

fn now() -> String {
    stamp(time::OffsetDateTime::now_utc())
}

fn parse_guid(text: &str) -> Option<String> {
    (text.len() == 36)
        .then(|| uuid::Uuid::try_parse(text).ok())
        .flatten()
        .map(|u| u.to_string())
}

/// A stable id for a privilege name (two FNV-1a hashes).
fn privilege_id(name: &str) -> String {
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hex = format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x8422_2325_cbf2_9ce4)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `If-Match`/`If-None-Match`, where `null` (sent on every request, as the
/// docs advise) means none.
fn condition<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .find(|v| !v.eq_ignore_ascii_case("null"))
}

fn wants_representation(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| {
        p.split(',')
            .any(|v| v.trim().eq_ignore_ascii_case("return=representation"))
    })
}

/// `Prefer: odata.include-annotations=...`: lookups come with their
/// `@Microsoft.Dynamics.CRM.lookuplogicalname`.
fn annotations(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| p.contains("odata.include-annotations"))
}

fn continue_on_error(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| {
        p.split(',').any(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "odata.continue-on-error"
                || v == "odata.continue-on-error=true"
                || v == "continue-on-error"
                || v == "continue-on-error=true"
        })
    })
}

fn boundary_of(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

// ---------------------------------------------------------------------------
// The token endpoint

fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Reply {
    let at = time::OffsetDateTime::now_utc();
    let timestamp = stamp(at).replace('T', " ");
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

impl Org {
    fn new(base: String) -> Org {
        let custom_columns = HashMap::from([
            ("new_disposition".to_owned(), Column::Text(100)),
            (
                "new_durationseconds".to_owned(),
                Column::Integer(i32::MIN as i64, i32::MAX as i64),
            ),
            ("new_notesat".to_owned(), Column::DateTime),
            ("new_callermatches".to_owned(), Column::Memo(2000)),
            ("new_ivrexitpath".to_owned(), Column::Text(200)),
        ]);
        Org {
            base,
            phonecalls: HashMap::new(),
            history: HashMap::new(),
            writes: Vec::new(),
            contacts: Vec::new(),
            accounts: Vec::new(),
            custom_columns,
            privileges: DEFAULT_PRIVILEGES.iter().map(|p| (*p).to_owned()).collect(),
            token_requests: Vec::new(),
            valid_tokens: HashSet::new(),
            token_down: false,
            token_delay: None,
            down: false,
            delay: None,
            throttle: None,
            throttle_limit: Limit::Requests,
            refuse: HashSet::new(),
            requests: 0,
            batches: 0,
            operations: 0,
            rollbacks: 0,
            throttled: 0,
            queries: Vec::new(),
            version: 1_000_000,
            journal: None,
        }
    }

    /// `POST /login/{tenant}/oauth2/v2.0/token` (client credentials, shared secret).
    fn token(&mut self, request: &Request) -> Reply {
        let path = request.url.path();
        let Some(tenant) = path
            .strip_prefix("/login/")
            .and_then(|rest| rest.strip_suffix("/oauth2/v2.0/token"))
        else {
            return Reply::empty(404);
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        self.token_requests.push(form.clone());
        if self.token_down {
            return aad_error(
                503,
                "temporarily_unavailable",
                90006,
                "The service is temporarily unavailable.",
            );
        }
        if request.method.as_str() != "POST" {
            return aad_error(
                400,
                "invalid_request",
                900561,
                &format!(
                    "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                    request.method
                ),
            );
        }
        if tenant != TENANT_ID {
            return aad_error(
                400,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                ),
            );
        }
        let form_encoded = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let missing = |name: &str| {
            aad_error(
                400,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        let Some(grant) = form.get("grant_type").filter(|_| form_encoded) else {
            return missing("grant_type");
        };
        if grant != "client_credentials" {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant}'."),
            );
        }
        let Some(client) = form.get("client_id") else {
            return missing("client_id");
        };
        if client != CLIENT_ID {
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        }
        let Some(secret) = form.get("client_secret") else {
            return aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        };
        if secret != CLIENT_SECRET {
            return aad_error(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
                ),
            );
        }
        let Some(scope) = form.get("scope") else {
            return missing("scope");
        };
        let Some(resource) = scope.strip_suffix("/.default") else {
            return aad_error(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        };
        if resource.trim_end_matches('/') != self.base.trim_end_matches('/') {
            return aad_error(
                400,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            );
        }
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-dataverse-{}.{}",
            self.token_requests.len(),
            uuid::Uuid::new_v4().simple()
        );
        self.valid_tokens.insert(token.clone());
        Reply::json(
            200,
            json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }),
        )
        .header("Cache-Control", "no-store, no-cache")
    }

    // -----------------------------------------------------------------------
    // The Web API

    fn api(&mut self, request: &Request) -> Reply {
        self.requests += 1;
        if self.down {
            return Reply::raw(503, "text/plain", "Service Unavailable".into());
        }
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let challenge = format!(
            "Bearer authorization_uri={}/login/{TENANT_ID}/oauth2/authorize, resource_id={}/",
            self.base, self.base
        );
        let bearer = header(&headers, "authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        match bearer {
            None => {
                return Reply::empty(401).header("WWW-Authenticate", &challenge);
            }
            Some(token) if !self.valid_tokens.contains(token.trim()) => {
                return Reply::empty(401).header(
                    "WWW-Authenticate",
                    &format!(
                        "Bearer error=\"invalid_token\", error_description=\"The access token is expired or is not valid\", {}",
                        challenge.trim_start_matches("Bearer ")
                    ),
                );
            }
            Some(_) => {}
        }
        if let Some((left, secs)) = self.throttle {
            self.throttle = (left > 1).then_some((left - 1, secs));
            if left > 0 {
                self.throttled += 1;
                let (code, message) = match self.throttle_limit {
                    Limit::Requests => (
                        "0x80072322",
                        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                    ),
                    Limit::ExecutionTime => (
                        "0x80072321",
                        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over time window of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
                    ),
                    Limit::Concurrency => (
                        "0x80072326",
                        "Number of concurrent requests exceeded the limit of 52.",
                    ),
                };
                return odata_error(429, code, message).header("Retry-After", &secs.to_string());
            }
        }
        let path = request.url.path();
        let target = match request.url.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let method = request.method.as_str();
        if percent_decode(path) == format!("{API_PATH}$batch") {
            if method != "POST" {
                return method_not_allowed(method);
            }
            return self.batch(&headers, &request.body);
        }
        self.route(method, &target, &headers, &request.body)
    }

    /// One Web API request (alone or out of a `$batch`), by method and
    /// `path?query`.
    fn route(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Reply {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(path);
        let Some(rest) = path.strip_prefix(API_PATH) else {
            let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
            return resource_not_found(segment);
        };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if rest == "WhoAmI" || rest == "WhoAmI()" {
            if method != "GET" {
                return odata_error(
                    404,
                    "",
                    &format!(
                        "No HTTP resource was found that matches the request URI '{}{path}'.",
                        self.base
                    ),
                );
            }
            return Reply::json(
                200,
                json!({
                    "@odata.context": format!("{}{API_PATH}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", self.base),
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "UserId": USER_ID,
                    "OrganizationId": ORGANIZATION_ID,
                }),
            );
        }
        if rest == "$batch" {
            return bad_request("Batch requests can't contain other batch requests.");
        }
        let (set, key, tail) = match rest.split_once('(') {
            Some((set, after)) => match after.split_once(')') {
                Some((key, tail)) => (set, Some(key), tail),
                None => return query_syntax("Bad Request - Error in query syntax."),
            },
            None => (rest, None, ""),
        };
        if !matches!(set, "contacts" | "accounts" | "phonecalls" | "systemusers") {
            return resource_not_found(set);
        }
        let key = match key {
            Some(key) => match parse_guid(key) {
                Some(id) => Some(id),
                None => return query_syntax("Bad Request - Error in query syntax."),
            },
            None => None,
        };
        match (method, set, key, tail) {
            (
                "GET",
                "systemusers",
                Some(user),
                "/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()",
            ) => self.user_privileges(&user),
            ("GET", "systemusers", _, _) => resource_not_found(tail.trim_start_matches('/')),
            ("GET", set, None, "") => self.query(set, &params, annotations(headers)),
            ("GET", set, Some(id), "") => self.retrieve(set, &id, &params, annotations(headers)),
            ("PATCH", "phonecalls", Some(id), "") => {
                self.upsert(&id, &params, headers, body, false)
            }
            ("POST", "phonecalls", None, "") => {
                let id = uuid::Uuid::new_v4().to_string();
                self.upsert(&id, &params, headers, body, true)
            }
            (_, _, _, "") => method_not_allowed(method),
            (_, _, _, tail) => resource_not_found(tail.trim_start_matches('/')),
        }
    }

    fn missing_privilege(&self, privilege: &str, entity: &str, otc: u32) -> Option<Reply> {
        if self.privileges.iter().any(|p| p == privilege) {
            return None;
        }
        Some(odata_error(
            403,
            "0x80040220",
            &format!(
                "Principal user (Id={USER_ID}, type=8, roleCount=1, privilegeCount={}, accessMode=4), is missing {privilege} privilege (Id={}) on OTC={otc} for entity '{entity}'. context.Caller={USER_ID}",
                self.privileges.len(),
                privilege_id(privilege)
            ),
        ))
    }

    fn user_privileges(&self, user: &str) -> Reply {
        if user != USER_ID {
            return not_exist("systemuser", user);
        }
        let privileges: Vec<Value> = self
            .privileges
            .iter()
            .map(|name| {
                json!({
                    "Depth": "Global",
                    "PrivilegeId": privilege_id(name),
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "PrivilegeName": name,
                })
            })
            .collect();
        Reply::json(
            200,
            json!({
                "@odata.context": format!("{}{API_PATH}$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse", self.base),
                "RolePrivileges": privileges,
            }),
        )
    }

    // -----------------------------------------------------------------------
    // Reads

    /// The logical name, primary key, read privilege and type code of a set.
    fn table(set: &str) -> (&'static str, &'static str, &'static str, u32) {
        match set {
            "contacts" => ("contact", "contactid", "prvReadContact", 2),
            "accounts" => ("account", "accountid", "prvReadAccount", 1),
            _ => ("phonecall", "activityid", "prvReadActivity", 4210),
        }
    }

    /// The type of a readable column of a set, if it has that column.
    fn kind(&self, set: &str, column: &str) -> Option<Kind> {
        match set {
            "contacts" => match column {
                "contactid" => Some(Kind::Guid),
                "fullname" | "firstname" | "lastname" | "telephone1" | "telephone2"
                | "mobilephone" => Some(Kind::Str),
                _ => None,
            },
            "accounts" => match column {
                "accountid" => Some(Kind::Guid),
                "name" | "telephone1" | "telephone2" => Some(Kind::Str),
                _ => None,
            },
            _ => match column {
                "activityid" | "_regardingobjectid_value" => Some(Kind::Guid),
                "statecode" | "statuscode" | "versionnumber" => Some(Kind::Int),
                "createdon" | "modifiedon" => Some(Kind::DateTime),
                "activitytypecode" => Some(Kind::Str),
                _ => standard_column(column)
                    .or_else(|| self.custom_columns.get(column).copied())
                    .map(|c| match c {
                        Column::Text(_) | Column::Memo(_) => Kind::Str,
                        Column::Integer(..) => Kind::Int,
                        Column::Boolean => Kind::Bool,
                        Column::DateTime => Kind::DateTime,
                    }),
            },
        }
    }

    fn rows(&self, set: &str) -> Vec<Map<String, Value>> {
        match set {
            "contacts" => self.contacts.clone(),
            "accounts" => self.accounts.clone(),
            _ => self.phonecalls.values().cloned().collect(),
        }
    }

    fn select(&self, set: &str, params: &[(String, String)]) -> Result<Option<Vec<String>>, Reply> {
        let (entity, ..) = Org::table(set);
        let Some((_, select)) = params.iter().find(|(k, _)| k == "$select") else {
            return Ok(None);
        };
        let columns: Vec<String> = select.split(',').map(|c| c.trim().to_owned()).collect();
        for column in &columns {
            if self.kind(set, column).is_none() {
                return Err(no_property(entity, column));
            }
        }
        Ok(Some(columns))
    }

    fn render(
        set: &str,
        row: &Map<String, Value>,
        select: Option<&[String]>,
        expand_parties: bool,
        annotations: bool,
    ) -> Value {
        let (_, key, ..) = Org::table(set);
        let mut out = Map::new();
        let version = row
            .get("versionnumber")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        out.insert("@odata.etag".into(), json!(format!("W/\"{version}\"")));
        match select {
            Some(columns) => {
                for column in columns {
                    out.insert(
                        column.clone(),
                        row.get(column).cloned().unwrap_or(Value::Null),
                    );
                    if annotations {
                        let prefix = format!("{column}@");
                        for (k, v) in row.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
                out.insert(key.into(), row.get(key).cloned().unwrap_or(Value::Null));
            }
            None => {
                for (k, v) in row {
                    if (annotations || !k.contains('@')) && k != "phonecall_activity_parties" {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if expand_parties {
            out.insert(
                "phonecall_activity_parties".into(),
                row.get("phonecall_activity_parties")
                    .cloned()
                    .unwrap_or(json!([])),
            );
        }
        Value::Object(out)
    }

    fn context(&self, set: &str, select: Option<&[String]>, entity: bool) -> String {
        let columns = select
            .map(|c| format!("({})", c.join(",")))
            .unwrap_or_default();
        let suffix = if entity { "/$entity" } else { "" };
        format!("{}{API_PATH}$metadata#{set}{columns}{suffix}", self.base)
    }

    /// `GET <set>?$select=..&$filter=..&$top=..`.
    fn query(&mut self, set: &str, params: &[(String, String)], annotations: bool) -> Reply {
        let (entity, _, privilege, otc) = Org::table(set);
        if let Some(denied) = self.missing_privilege(privilege, entity, otc) {
            return denied;
        }
        let select = match self.select(set, params) {
            Ok(select) => select,
            Err(error) => return error,
        };
        let filter_text = params
            .iter()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.clone());
        let filter = match &filter_text {
            Some(text) => match Filter::parse(text) {
                Ok(expr) => {
                    if let Err(error) = self.check_filter(set, &expr) {
                        return error;
                    }
                    Some(expr)
                }
                Err(error) => return error,
            },
            None => None,
        };
        let top = match params.iter().find(|(k, _)| k == "$top") {
            Some((_, v)) => match v.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return query_syntax(&format!(
                        "Invalid value '{v}' for $top query option found. The $top query option requires a non-negative integer value."
                    ));
                }
            },
            None => None,
        };
        let expand = params
            .iter()
            .find(|(k, _)| k == "$expand")
            .map(|(_, v)| v.clone());
        let expand_parties = match &expand {
            Some(e) if set == "phonecalls" && e.starts_with("phonecall_activity_parties") => true,
            Some(e) => {
                let name = e.split('(').next().unwrap_or("");
                return no_property(entity, name);
            }
            None => false,
        };
        self.queries
            .push((set.to_owned(), filter_text.clone().unwrap_or_default()));
        let mut rows = self.rows(set);
        if let Some(expr) = &filter {
            rows.retain(|row| expr.eval(row));
        }
        let count = rows.len();
        if let Some(top) = top {
            rows.truncate(top);
        }
        let value: Vec<Value> = rows
            .iter()
            .map(|row| Org::render(set, row, select.as_deref(), expand_parties, annotations))
            .collect();
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(self.context(set, select.as_deref(), false)),
        );
        if params.iter().any(|(k, v)| k == "$count" && v == "true") {
            body.insert("@odata.count".into(), json!(count));
        }
        body.insert("value".into(), Value::Array(value));
        Reply::json(200, Value::Object(body))
    }

    /// `GET <set>(<id>)?$select=..`.
    fn retrieve(
        &mut self,
        set: &str,
        id: &str,
        params: &[(String, String)],
        annotations: bool,
    ) -> Reply {
        let (entity, key, privilege, otc) = Org::table(set);
        if let Some(denied) = self.missing_privilege(privilege, entity, otc) {
            return denied;
        }
        let select = match self.select(set, params) {
            Ok(select) => select,
            Err(error) => return error,
        };
        let expand_parties = params.iter().any(|(k, v)| {
            k == "$expand" && set == "phonecalls" && v.starts_with("phonecall_activity_parties")
        });
        let row = self.rows(set).into_iter().find(|row| {
            row.get(key)
                .and_then(Value::as_str)
                .is_some_and(|k| k.eq_ignore_ascii_case(id))
        });
        match row {
            Some(row) => {
                let mut value =
                    Org::render(set, &row, select.as_deref(), expand_parties, annotations);
                value.as_object_mut().unwrap().insert(
                    "@odata.context".into(),
                    json!(self.context(set, select.as_deref(), true)),
                );
                Reply::json(200, value)
            }
            None => not_exist(entity, id),
        }
    }

    fn check_filter(&self, set: &str, expr: &Filter) -> Result<(), Reply> {
        let (entity, ..) = Org::table(set);
        match expr {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.check_filter(set, a)?;
                self.check_filter(set, b)
            }
            Filter::Cmp {
                column,
                ne,
                literal,
            } => {
                let Some(kind) = self.kind(set, column) else {
                    return Err(no_property(entity, column));
                };
                let found = match literal {
                    Literal::Null => return Ok(()),
                    Literal::Str(_) => Kind::Str,
                    Literal::Guid(_) => Kind::Guid,
                    Literal::Int(_) => Kind::Int,
                    Literal::Bool(_) => Kind::Bool,
                };
                if found == kind {
                    return Ok(());
                }
                Err(query_syntax(&format!(
                    "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'.",
                    kind.edm(),
                    found.edm(),
                    if *ne { "NotEqual" } else { "Equal" }
                )))
            }
        }
    }

    // -----------------------------------------------------------------------
    // Writes

    /// `PATCH phonecalls(<id>)` (upsert; `If-Match: *` update only,
    /// `If-None-Match: *` create only) or `POST phonecalls` (`create`).
    fn upsert(
        &mut self,
        id: &str,
        params: &[(String, String)],
        headers: &[(String, String)],
        body: &[u8],
        create: bool,
    ) -> Reply {
        let set = "phonecalls";
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return payload_error(
                set,
                "Microsoft.OData.ODataException: Does not support untyped value in non-open type.",
            );
        };
        let Some(object) = json.as_object() else {
            return payload_error(
                set,
                "Microsoft.OData.ODataException: An entry was expected in the payload.",
            );
        };
        let parsed = match self.parse_phonecall(object, id) {
            Ok(parsed) => parsed,
            Err(error) => return error,
        };
        let existing = self.phonecalls.get(id).cloned();
        let if_match = condition(headers, "if-match");
        let if_none_match = if create {
            Some("*")
        } else {
            condition(headers, "if-none-match")
        };
        match (&existing, if_match) {
            (None, Some(_)) => return not_exist("phonecall", id),
            (Some(record), Some(tag)) if tag != "*" => {
                let version = record
                    .get("versionnumber")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if tag != format!("W/\"{version}\"") {
                    return odata_error(
                        412,
                        "0x80060882",
                        "The version of the existing record doesn't match the RowVersion property provided.",
                    );
                }
            }
            _ => {}
        }
        if existing.is_some() && if_none_match == Some("*") {
            return odata_error(
                412,
                "0x80040237",
                "A record with matching key values already exists.",
            );
        }
        let creating = existing.is_none();
        let privilege = if creating {
            "prvCreateActivity"
        } else {
            "prvWriteActivity"
        };
        if let Some(denied) = self.missing_privilege(privilege, "phonecall", 4210) {
            return denied;
        }
        let (state, status) = existing
            .as_ref()
            .map(|r| {
                (
                    r.get("statecode").and_then(Value::as_i64).unwrap_or(0),
                    r.get("statuscode").and_then(Value::as_i64).unwrap_or(1),
                )
            })
            .unwrap_or((0, 1));
        // A completed or canceled activity is read-only: only its state may change.
        if !creating && state != 0 && parsed.touches_other {
            return inactive();
        }
        for (name, value, column) in &parsed.columns {
            match (column, value) {
                (Column::Text(max) | Column::Memo(max), Value::String(s))
                    if s.encode_utf16().count() > *max =>
                {
                    return too_long("phonecall", name, *max);
                }
                (Column::Integer(min, max), Value::Number(n)) => {
                    let n = n.as_i64().unwrap_or(i64::MAX);
                    if n < *min || n > *max {
                        return out_of_range(name, n, *min, *max);
                    }
                }
                _ => {}
            }
        }
        // statecode isn't valid for create: a new record is Open whatever the
        // body says, and its statuscode must be an Open one.
        let new_state = if creating {
            match parsed.statuscode {
                Some(s) if state_of(s) != Some(0) => return bad_status(s, 0, id),
                Some(s) => (0, s),
                None => (0, 1),
            }
        } else {
            match (parsed.statecode, parsed.statuscode) {
                (Some(st), Some(ss)) => {
                    if default_status(st).is_none() {
                        return bad_state();
                    }
                    if state_of(ss) != Some(st) {
                        return bad_status(ss, st, id);
                    }
                    (st, ss)
                }
                (Some(st), None) => match default_status(st) {
                    Some(ss) => (st, ss),
                    None => return bad_state(),
                },
                (None, Some(ss)) => {
                    if state_of(ss) != Some(state) {
                        return bad_status(ss, state, id);
                    }
                    (state, ss)
                }
                (None, None) => (state, status),
            }
        };
        if let Some(Some((logical, target))) = &parsed.regarding
            && !self.exists(logical, target)
        {
            return not_exist(logical, target);
        }
        for party in parsed.parties.iter().flatten() {
            if let Some((logical, target)) = &party.party
                && !self.exists(logical, target)
            {
                return not_exist(logical, target);
            }
        }
        if self.refuse.iter().any(|r| r.eq_ignore_ascii_case(id)) {
            return odata_error(400, "0x80040265", REFUSAL);
        }
        self.apply(id, object, parsed, new_state, creating);
        let entity_id = format!("{}{API_PATH}phonecalls({id})", self.base);
        if wants_representation(headers) {
            let select = match self.select(set, params) {
                Ok(select) => select,
                Err(error) => return error,
            };
            let mut value = Org::render(
                set,
                &self.phonecalls[id],
                select.as_deref(),
                false,
                annotations(headers),
            );
            value.as_object_mut().unwrap().insert(
                "@odata.context".into(),
                json!(self.context(set, select.as_deref(), true)),
            );
            return Reply::json(if creating { 201 } else { 200 }, value)
                .header("Preference-Applied", "return=representation")
                .header("OData-EntityId", &entity_id);
        }
        let reply = Reply::empty(204);
        if create {
            reply
                .header("Location", &entity_id)
                .header("OData-EntityId", &entity_id)
        } else {
            reply.header("OData-EntityId", &entity_id)
        }
    }

    fn exists(&self, logical: &str, id: &str) -> bool {
        match logical {
            "contact" => self.contacts.iter().any(|c| {
                c.get("contactid")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case(id))
            }),
            "account" => self.accounts.iter().any(|c| {
                c.get("accountid")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case(id))
            }),
            "systemuser" => id == USER_ID,
            _ => false,
        }
    }

    /// A phonecall body as the OData layer reads it: typed columns, the
    /// regarding lookup, activity parties, state; unknown names refused.
    fn parse_phonecall(&self, object: &Map<String, Value>, id: &str) -> Result<Parsed, Reply> {
        let set = "phonecalls";
        let mut parsed = Parsed::default();
        for (key, value) in object {
            if key.starts_with('@') {
                continue;
            }
            if let Some(navigation) = key.strip_suffix("@odata.bind") {
                let (logical, target_set) = match navigation {
                    "regardingobjectid_contact" | "regardingobjectid_contact_phonecall" => {
                        ("contact", "contacts")
                    }
                    "regardingobjectid_account" | "regardingobjectid_account_phonecall" => {
                        ("account", "accounts")
                    }
                    _ => return Err(undeclared_navigation(set, navigation)),
                };
                if parsed.regarding.is_some() {
                    return Err(payload_error(
                        set,
                        "Microsoft.OData.ODataException: Multiple navigation links bind the lookup 'regardingobjectid'.",
                    ));
                }
                parsed.touches_other = true;
                parsed.regarding = Some(match value {
                    Value::Null => None,
                    Value::String(reference) => {
                        Some((logical, self.reference(set, reference, target_set)?))
                    }
                    other => return Err(cannot_convert(set, other, "Edm.String")),
                });
                continue;
            }
            if key.contains('@') {
                continue;
            }
            match key.as_str() {
                "phonecall_activity_parties" => {
                    parsed.touches_other = true;
                    parsed.parties = Some(self.parse_parties(value)?);
                }
                "activityid" => {
                    let same = value
                        .as_str()
                        .and_then(parse_guid)
                        .is_some_and(|given| given == id);
                    if !same {
                        return Err(cannot_convert(set, value, "Edm.Guid"));
                    }
                }
                "statecode" | "statuscode" => {
                    let code = match value {
                        Value::Null => return Err(set_to_null(key)),
                        Value::Number(n) => n
                            .as_i64()
                            .ok_or_else(|| cannot_convert(set, value, "Edm.Int32"))?,
                        other => return Err(cannot_convert(set, other, "Edm.Int32")),
                    };
                    if key == "statecode" {
                        parsed.statecode = Some(code);
                    } else {
                        parsed.statuscode = Some(code);
                    }
                }
                name => {
                    let Some(column) =
                        standard_column(name).or_else(|| self.custom_columns.get(name).copied())
                    else {
                        return Err(invalid_property("phonecall", name));
                    };
                    parsed.touches_other = true;
                    let stored = match (column, value) {
                        (_, Value::Null) => Value::Null,
                        (Column::Text(_) | Column::Memo(_), Value::String(_)) => value.clone(),
                        (Column::Text(_) | Column::Memo(_), other) => {
                            return Err(cannot_convert(set, other, "Edm.String"));
                        }
                        (Column::Integer(..), Value::Number(n)) if n.is_i64() => value.clone(),
                        (Column::Integer(..), other) => {
                            return Err(cannot_convert(set, other, "Edm.Int32"));
                        }
                        (Column::Boolean, Value::Bool(_)) => value.clone(),
                        (Column::Boolean, other) => {
                            return Err(cannot_convert(set, other, "Edm.Boolean"));
                        }
                        (Column::DateTime, Value::String(s)) => {
                            match time::OffsetDateTime::parse(
                                s,
                                &time::format_description::well_known::Rfc3339,
                            ) {
                                Ok(at) => json!(stamp(at)),
                                Err(_) => {
                                    return Err(cannot_convert(set, value, "Edm.DateTimeOffset"));
                                }
                            }
                        }
                        (Column::DateTime, other) => {
                            return Err(cannot_convert(set, other, "Edm.DateTimeOffset"));
                        }
                    };
                    parsed.columns.push((name.to_owned(), stored, column));
                }
            }
        }
        Ok(parsed)
    }

    /// The id in an `@odata.bind` value (`/contacts(<id>)`, `contacts(<id>)`
    /// or the full URL) of the expected entity set.
    fn reference(&self, set: &str, reference: &str, expected: &str) -> Result<String, Reply> {
        let path = match reference.find(API_PATH) {
            Some(at) => &reference[at + API_PATH.len()..],
            None => reference.trim_start_matches('/'),
        };
        let bad = || {
            payload_error(
                set,
                &format!(
                    "Microsoft.OData.ODataException: The URI '{reference}' in the payload is not valid for the navigation property: it does not address an entity of the set '{expected}'."
                ),
            )
        };
        let (target, rest) = path.split_once('(').ok_or_else(bad)?;
        let key = rest.strip_suffix(')').ok_or_else(bad)?;
        if target != expected {
            return Err(bad());
        }
        parse_guid(key).ok_or_else(bad)
    }

    fn parse_parties(&self, value: &Value) -> Result<Vec<Party>, Reply> {
        let set = "phonecalls";
        let Value::Array(items) = value else {
            return Err(cannot_convert(
                set,
                value,
                "Collection(Microsoft.Dynamics.CRM.activityparty)",
            ));
        };
        let mut parties = Vec::new();
        for item in items {
            let Value::Object(fields) = item else {
                return Err(cannot_convert(
                    set,
                    item,
                    "Microsoft.Dynamics.CRM.activityparty",
                ));
            };
            let mut party = Party::default();
            for (key, value) in fields {
                if key.starts_with('@') {
                    continue;
                }
                if let Some(navigation) = key.strip_suffix("@odata.bind") {
                    let (logical, target_set) = match navigation {
                        "partyid_contact" => ("contact", "contacts"),
                        "partyid_account" => ("account", "accounts"),
                        "partyid_systemuser" => ("systemuser", "systemusers"),
                        _ => return Err(undeclared_navigation(set, navigation)),
                    };
                    let Value::String(reference) = value else {
                        return Err(cannot_convert(set, value, "Edm.String"));
                    };
                    party.party = Some((logical, self.reference(set, reference, target_set)?));
                    continue;
                }
                if key.contains('@') {
                    continue;
                }
                match key.as_str() {
                    "participationtypemask" => {
                        party.mask = Some(
                            value
                                .as_i64()
                                .ok_or_else(|| cannot_convert(set, value, "Edm.Int32"))?,
                        );
                    }
                    "addressused" => match value {
                        Value::String(s) => party.address = Some(s.clone()),
                        Value::Null => party.address = None,
                        other => return Err(cannot_convert(set, other, "Edm.String")),
                    },
                    other => return Err(invalid_property("activityparty", other)),
                }
            }
            // Sender (1) and To Recipient (2) are the phone call's party lists.
            match party.mask {
                Some(1 | 2) => {}
                other => {
                    return Err(odata_error(
                        400,
                        "0x80094006",
                        &format!(
                            "The Activity Party type Mask '{}' not found.",
                            other.map(|m| m.to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
            if party.party.is_none() && party.address.is_none() {
                return Err(odata_error(
                    400,
                    "0x80040203",
                    "An activity party needs a partyid (partyid_*@odata.bind) or an addressused.",
                ));
            }
            parties.push(party);
        }
        Ok(parties)
    }

    fn apply(
        &mut self,
        id: &str,
        raw: &Map<String, Value>,
        parsed: Parsed,
        (state, status): (i64, i64),
        created: bool,
    ) {
        let undo = Undo {
            id: id.to_owned(),
            prev: self.phonecalls.get(id).cloned(),
            history_len: self.history.get(id).map(Vec::len),
            writes_len: self.writes.len(),
        };
        if let Some(journal) = self.journal.as_mut() {
            journal.push(undo);
        }
        self.version += 1;
        let now = now();
        let record = self.phonecalls.entry(id.to_owned()).or_insert_with(|| {
            let mut record = Map::new();
            record.insert("activityid".into(), json!(id));
            record.insert("activitytypecode".into(), json!("phonecall"));
            record.insert("directioncode".into(), json!(true));
            record.insert("createdon".into(), json!(now));
            record.insert("_regardingobjectid_value".into(), Value::Null);
            record.insert("phonecall_activity_parties".into(), json!([]));
            record
        });
        for (name, value, _) in parsed.columns {
            record.insert(name, value);
        }
        if let Some(regarding) = parsed.regarding {
            let (logical, target) = match regarding {
                Some((logical, target)) => (json!(logical), json!(target)),
                None => (Value::Null, Value::Null),
            };
            record.insert("_regardingobjectid_value".into(), target);
            record.insert(
                "_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname".into(),
                logical,
            );
        }
        if let Some(parties) = parsed.parties {
            let parties: Vec<Value> = parties
                .into_iter()
                .map(|party| {
                    let (logical, target) = match party.party {
                        Some((logical, target)) => (json!(logical), json!(target)),
                        None => (Value::Null, Value::Null),
                    };
                    json!({
                        "participationtypemask": party.mask,
                        "_partyid_value": target,
                        "_partyid_value@Microsoft.Dynamics.CRM.lookuplogicalname": logical,
                        "addressused": party.address,
                    })
                })
                .collect();
            record.insert("phonecall_activity_parties".into(), Value::Array(parties));
        }
        record.insert("statecode".into(), json!(state));
        record.insert("statuscode".into(), json!(status));
        record.insert("modifiedon".into(), json!(now));
        record.insert("versionnumber".into(), json!(self.version));
        self.history
            .entry(id.to_owned())
            .or_default()
            .push(raw.clone());
        self.writes.push(Write {
            at: Instant::now(),
            id: id.to_owned(),
            body: raw.clone(),
            created,
        });
    }

    fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        self.rollbacks += 1;
        let writes_len = journal.first().map(|undo| undo.writes_len);
        for undo in journal.into_iter().rev() {
            match undo.prev {
                Some(record) => {
                    self.phonecalls.insert(undo.id.clone(), record);
                }
                None => {
                    self.phonecalls.remove(&undo.id);
                }
            }
            match undo.history_len {
                Some(len) => {
                    if let Some(history) = self.history.get_mut(&undo.id) {
                        history.truncate(len);
                    }
                }
                None => {
                    self.history.remove(&undo.id);
                }
            }
        }
        if let Some(len) = writes_len {
            self.writes.truncate(len);
        }
    }

    // -----------------------------------------------------------------------
    // $batch

    fn batch(&mut self, headers: &[(String, String)], body: &[u8]) -> Reply {
        self.batches += 1;
        let Some(boundary) = header(headers, "content-type").and_then(boundary_of) else {
            return bad_request(
                "A $batch request needs a Content-Type of multipart/mixed with a boundary.",
            );
        };
        let response_boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
        let Ok(text) = std::str::from_utf8(body) else {
            return batch_failure(&response_boundary, stream_not_readable(""));
        };
        // Non-CRLF line endings make the body unreadable (Web API client errors).
        let bytes = text.as_bytes();
        if bytes
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        {
            let entity = text
                .find(API_PATH)
                .map(|at| {
                    text[at + API_PATH.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .unwrap_or_default();
            return batch_failure(&response_boundary, stream_not_readable(&entity));
        }
        let items = match parse_items(text, &boundary) {
            Ok(items) => items,
            Err(detail) => return batch_failure(&response_boundary, bad_request(&detail)),
        };
        let total: usize = items
            .iter()
            .map(|item| match item {
                Item::Single(_) => 1,
                Item::ChangeSet(requests) => requests.len(),
            })
            .sum();
        if total > MAX_BATCH_REQUESTS {
            return batch_failure(
                &response_boundary,
                bad_request(&format!(
                    "Number of requests in the batch exceeded the limit of {MAX_BATCH_REQUESTS}."
                )),
            );
        }
        let keep_going = continue_on_error(headers);
        let mut out = String::new();
        let mut status = 200;
        for item in items {
            match item {
                Item::Single(request) => {
                    let reply = match request {
                        Ok(inner) => {
                            self.operations += 1;
                            self.route(
                                &inner.method,
                                &inner.target,
                                &inner.headers,
                                inner.body.as_bytes(),
                            )
                        }
                        Err(detail) => bad_request(&detail),
                    };
                    push_part(&mut out, &response_boundary, None, &reply);
                    if reply.status >= 400 && !keep_going {
                        status = reply.status;
                        break;
                    }
                }
                Item::ChangeSet(requests) => {
                    let (failure, replies) = self.change_set(requests);
                    match failure {
                        Some((content_id, reply)) => {
                            push_part(&mut out, &response_boundary, content_id.as_deref(), &reply);
                            if !keep_going {
                                status = reply.status;
                                break;
                            }
                        }
                        None => {
                            let cs = format!("changesetresponse_{}", uuid::Uuid::new_v4());
                            let mut inner = String::new();
                            for (content_id, reply) in &replies {
                                push_part(&mut inner, &cs, content_id.as_deref(), reply);
                            }
                            inner.push_str(&format!("--{cs}--"));
                            out.push_str(&format!(
                                "--{response_boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n{inner}\r\n"
                            ));
                        }
                    }
                }
            }
        }
        out.push_str(&format!("--{response_boundary}--\r\n"));
        Reply::raw(
            status,
            &format!("multipart/mixed; boundary={response_boundary}"),
            out,
        )
    }

    /// Runs a change set atomically: the failing request's answer (after
    /// rolling back) or every answer.
    #[allow(clippy::type_complexity)]
    fn change_set(
        &mut self,
        requests: Vec<(Option<String>, Result<Inner, String>)>,
    ) -> (
        Option<(Option<String>, Reply)>,
        Vec<(Option<String>, Reply)>,
    ) {
        self.journal = Some(Vec::new());
        let mut replies = Vec::new();
        let mut created: HashMap<String, String> = HashMap::new();
        for (content_id, request) in requests {
            let reply = match request {
                Err(detail) => bad_request(&detail),
                Ok(inner) if inner.method == "GET" => {
                    bad_request("GET requests are not allowed within change sets.")
                }
                Ok(mut inner) => match resolve_references(&mut inner, &created) {
                    Err(reference) => Reply::raw(
                        400,
                        "text/plain",
                        format!(
                            "Content-ID Reference: '{reference}' does not exist in the batch context."
                        ),
                    ),
                    Ok(()) => {
                        self.operations += 1;
                        self.route(
                            &inner.method,
                            &inner.target,
                            &inner.headers,
                            inner.body.as_bytes(),
                        )
                    }
                },
            };
            if reply.status >= 400 {
                self.rollback();
                return (Some((content_id, reply)), Vec::new());
            }
            if let (Some(content_id), Some(entity)) =
                (&content_id, reply.header_value("OData-EntityId"))
                && let Some(at) = entity.find(API_PATH)
            {
                created.insert(content_id.clone(), entity[at + API_PATH.len()..].to_owned());
            }
            replies.push((content_id, reply));
        }
        self.journal = None;
        (None, replies)
    }
}

#[derive(Default)]
struct Parsed {
    columns: Vec<(String, Value, Column)>,
    /// `Some(None)` clears the lookup.
    regarding: Option<Option<(&'static str, String)>>,
    parties: Option<Vec<Party>>,
    statecode: Option<i64>,
    statuscode: Option<i64>,
    /// Whether the body writes anything but `statecode`/`statuscode`.
    touches_other: bool,
}

#[derive(Default)]
struct Party {
    mask: Option<i64>,
    party: Option<(&'static str, String)>,
    address: Option<String>,
}

fn method_not_allowed(method: &str) -> Reply {
    odata_error(
        405,
        "",
        &format!("The requested resource does not support http method '{method}'."),
    )
}

/// Web API client errors: a `$batch` body with other line endings than CRLF.
fn stream_not_readable(entity: &str) -> Reply {
    payload_error(
        entity,
        "System.ArgumentException: Stream was not readable.\r\nat System.IO.StreamReader..ctor(Stream stream, Encoding encoding, Boolean detectEncodingFromByteOrderMarks, Int32 bufferSize, Boolean leaveOpen)",
    )
}

/// A `$batch` refused as a whole: its status, and a multipart body holding
/// the one error (as Microsoft shows for unreadable bodies).
fn batch_failure(boundary: &str, reply: Reply) -> Reply {
    let mut out = String::new();
    push_part(&mut out, boundary, None, &reply);
    out.push_str(&format!("--{boundary}--\r\n"));
    Reply::raw(
        reply.status,
        &format!("multipart/mixed; boundary={boundary}"),
        out,
    )
}

fn push_part(out: &mut String, boundary: &str, content_id: Option<&str>, reply: &Reply) {
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    ));
    if let Some(content_id) = content_id {
        out.push_str(&format!("Content-ID: {content_id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.http_message());
    out.push_str("\r\n");
}

/// A request out of a `$batch` body.
struct Inner {
    method: String,
    /// `path?query`, resolved against the service root.
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

enum Item {
    Single(Result<Inner, String>),
    ChangeSet(Vec<(Option<String>, Result<Inner, String>)>),
}

struct Part {
    headers: Vec<(String, String)>,
    body: String,
}

/// Splits a multipart body at its boundary delimiters (RFC 2046): the
/// preamble and epilogue are ignored; each part is headers, a blank line, a
/// body.
fn parse_parts(body: &str, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("\r\n--{boundary}");
    let text = format!("\r\n{body}");
    let mut pieces = text.split(delimiter.as_str());
    pieces.next();
    let mut parts = Vec::new();
    for piece in pieces {
        if piece.starts_with("--") {
            return Ok(parts);
        }
        let piece = piece.trim_start_matches([' ', '\t']);
        let Some(content) = piece.strip_prefix("\r\n") else {
            return Err(format!(
                "A boundary delimiter of '{boundary}' isn't followed by CRLF."
            ));
        };
        let (head, body) = split_head(content);
        parts.push(Part {
            headers: parse_headers(head)?,
            body: body.to_owned(),
        });
    }
    Err(format!(
        "The multipart body has no close delimiter '--{boundary}--'."
    ))
}

fn split_head(content: &str) -> (&str, &str) {
    if let Some(body) = content.strip_prefix("\r\n") {
        return ("", body);
    }
    match content.split_once("\r\n\r\n") {
        Some(split) => split,
        None => (content.strip_suffix("\r\n").unwrap_or(content), ""),
    }
}

fn parse_headers(head: &str) -> Result<Vec<(String, String)>, String> {
    head.split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("Invalid header line '{line}'."))
        })
        .collect()
}

fn is_http(part: &Part) -> bool {
    header(&part.headers, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/http"))
    })
}

/// The top-level items of a `$batch` body: single requests and change sets.
fn parse_items(text: &str, boundary: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for part in parse_parts(text, boundary)? {
        if is_http(&part) {
            items.push(Item::Single(parse_inner(&part.body)));
            continue;
        }
        let Some(change_set) = header(&part.headers, "content-type").and_then(boundary_of) else {
            return Err(format!(
                "A batch part has the Content-Type '{}': expected application/http or multipart/mixed.",
                header(&part.headers, "content-type").unwrap_or("")
            ));
        };
        let mut requests = Vec::new();
        for member in parse_parts(&part.body, &change_set)? {
            if !is_http(&member) {
                return Err("A change set holds only application/http parts.".into());
            }
            let content_id = header(&member.headers, "content-id").map(str::to_owned);
            requests.push((content_id, parse_inner(&member.body)));
        }
        items.push(Item::ChangeSet(requests));
    }
    Ok(items)
}

/// The HTTP request in an `application/http` part: `METHOD URL HTTP/1.1`,
/// headers, blank line, body; the URL absolute, an absolute path, or relative
/// to the service root.
fn parse_inner(message: &str) -> Result<Inner, String> {
    let (head, body) = split_head(message);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let tokens: Vec<&str> = line.split(' ').filter(|t| !t.is_empty()).collect();
    if tokens.len() != 3 || !tokens[2].starts_with("HTTP/") {
        return Err(format!(
            "Invalid request line '{line}': expected 'METHOD URL HTTP/1.1' with a percent-encoded URL."
        ));
    }
    let url = tokens[1];
    let target = if url.starts_with("http://") || url.starts_with("https://") {
        let after_scheme = &url[url.find("//").unwrap() + 2..];
        match after_scheme.find('/') {
            Some(at) => after_scheme[at..].to_owned(),
            None => "/".to_owned(),
        }
    } else if url.starts_with('/') {
        url.to_owned()
    } else {
        format!("{API_PATH}{url}")
    };
    let headers = parse_headers(&lines.collect::<Vec<_>>().join("\r\n"))?;
    Ok(Inner {
        method: tokens[0].to_ascii_uppercase(),
        target,
        headers,
        body: body.to_owned(),
    })
}

/// Replaces `$<Content-ID>` in a change set member's URL and `@odata.bind`
/// values with the entity that request wrote; the unknown reference if any.
fn resolve_references(inner: &mut Inner, created: &HashMap<String, String>) -> Result<(), String> {
    let service = inner
        .target
        .strip_prefix(API_PATH)
        .unwrap_or(&inner.target)
        .to_owned();
    if let Some(reference) = service.strip_prefix('$') {
        let id: String = reference.chars().take_while(char::is_ascii_digit).collect();
        if !id.is_empty() {
            let entity = created.get(&id).ok_or_else(|| format!("${id}"))?;
            inner.target = format!("{API_PATH}{entity}{}", &reference[id.len()..]);
        }
    }
    if inner.body.contains("\"$")
        && let Ok(mut json) = serde_json::from_str::<Value>(&inner.body)
    {
        resolve_binds(&mut json, created)?;
        inner.body = json.to_string();
    }
    Ok(())
}

fn resolve_binds(value: &mut Value, created: &HashMap<String, String>) -> Result<(), String> {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                if key.ends_with("@odata.bind")
                    && let Value::String(reference) = value
                    && let Some(id) = reference.strip_prefix('$')
                {
                    let entity = created.get(id).ok_or_else(|| format!("${id}"))?;
                    *reference = format!("/{entity}");
                } else {
                    resolve_binds(value, created)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| resolve_binds(v, created)),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// $filter: `<column> eq|ne <literal>` terms joined by `and`/`or`, grouped in
// parentheses; literals 'strings' (with '' escapes), GUIDs, integers,
// true/false, null. String comparison is case-insensitive, as Dataverse's
// collation makes it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Guid,
    Int,
    Bool,
    DateTime,
}

impl Kind {
    fn edm(self) -> &'static str {
        match self {
            Kind::Str => "Edm.String",
            Kind::Guid => "Edm.Guid",
            Kind::Int => "Edm.Int32",
            Kind::Bool => "Edm.Boolean",
            Kind::DateTime => "Edm.DateTimeOffset",
        }
    }
}

enum Literal {
    Str(String),
    Guid(String),
    Int(i64),
    Bool(bool),
    Null,
}

enum Filter {
    Cmp {
        column: String,
        ne: bool,
        literal: Literal,
    },
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

impl Filter {
    fn parse(text: &str) -> Result<Filter, Reply> {
        let mut parser = FilterParser {
            chars: text.chars().collect(),
            pos: 0,
            text,
        };
        let expr = parser.or()?;
        parser.skip_ws();
        if parser.pos < parser.chars.len() {
            return Err(parser.error());
        }
        Ok(expr)
    }

    fn eval(&self, row: &Map<String, Value>) -> bool {
        match self {
            Filter::And(a, b) => a.eval(row) && b.eval(row),
            Filter::Or(a, b) => a.eval(row) || b.eval(row),
            Filter::Cmp {
                column,
                ne,
                literal,
            } => {
                let value = row.get(column).unwrap_or(&Value::Null);
                let equal = match literal {
                    Literal::Str(s) | Literal::Guid(s) => value
                        .as_str()
                        .is_some_and(|v| v.to_lowercase() == s.to_lowercase()),
                    Literal::Int(i) => value.as_i64() == Some(*i),
                    Literal::Bool(b) => value.as_bool() == Some(*b),
                    Literal::Null => value.is_null(),
                };
                equal != *ne
            }
        }
    }
}

struct FilterParser<'a> {
    chars: Vec<char>,
    pos: usize,
    text: &'a str,
}

impl FilterParser<'_> {
    fn error(&self) -> Reply {
        query_syntax(&format!(
            "Syntax error at position {} in '{}'.",
            self.pos, self.text
        ))
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    /// Consumes the keyword if it comes next, as a whole word.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_ws();
        let end = self.pos + word.len();
        if end > self.chars.len() {
            return false;
        }
        let found: String = self.chars[self.pos..end].iter().collect();
        let boundary = self
            .chars
            .get(end)
            .is_none_or(|c| c.is_whitespace() || *c == '(');
        if found == word && boundary {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Filter, Reply> {
        let mut left = self.and()?;
        while self.keyword("or") {
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, Reply> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            let right = self.primary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn primary(&mut self) -> Result<Filter, Reply> {
        self.skip_ws();
        if self.chars.get(self.pos) == Some(&'(') {
            self.pos += 1;
            let inner = self.or()?;
            self.skip_ws();
            if self.chars.get(self.pos) != Some(&')') {
                return Err(self.error());
            }
            self.pos += 1;
            return Ok(inner);
        }
        let column = self.word();
        if column.is_empty() {
            return Err(self.error());
        }
        self.skip_ws();
        let operator = self.word();
        let ne = match operator.as_str() {
            "eq" => false,
            "ne" => true,
            _ => return Err(self.error()),
        };
        self.skip_ws();
        let literal = self.literal()?;
        Ok(Filter::Cmp {
            column,
            ne,
            literal,
        })
    }

    fn literal(&mut self) -> Result<Literal, Reply> {
        if self.chars.get(self.pos) == Some(&'\'') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                match self.chars.get(self.pos) {
                    None => return Err(self.error()),
                    Some('\'') if self.chars.get(self.pos + 1) == Some(&'\'') => {
                        out.push('\'');
                        self.pos += 2;
                    }
                    Some('\'') => {
                        self.pos += 1;
                        return Ok(Literal::Str(out));
                    }
                    Some(c) => {
                        out.push(*c);
                        self.pos += 1;
                    }
                }
            }
        }
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| !c.is_whitespace() && *c != ')')
        {
            self.pos += 1;
        }
        let token: String = self.chars[start..self.pos].iter().collect();
        match token.as_str() {
            "null" => Ok(Literal::Null),
            "true" => Ok(Literal::Bool(true)),
            "false" => Ok(Literal::Bool(false)),
            _ => {
                if let Some(guid) = parse_guid(&token) {
                    Ok(Literal::Guid(guid))
                } else if let Ok(n) = token.parse::<i64>() {
                    Ok(Literal::Int(n))
                } else {
                    self.pos = start;
                    Err(self.error())
                }
            }
        }
    }
}
