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
//! This folder stands alone, with the fakes' shared recording (the
//! benchmarks include the fakes by path).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use wiremock::{MockServer, Request, ResponseTemplate};

use super::{Answer, Requests, delayed};

mod api;
mod batch;
mod filter;
mod headers;
mod multipart;
mod query;
mod reply;
mod state;
mod token;
mod validate;
mod write;

use filter::*;
use headers::*;
use multipart::*;
use reply::*;
use state::*;
use validate::*;

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
    requests: Requests,
}

impl Answer for Org {
    fn answer(&mut self, request: &Request) -> ResponseTemplate {
        if request.url.path().starts_with("/login/") {
            let answer = self.token(request).template();
            return delayed(answer, self.token_delay);
        }
        let answer = self.api(request).template();
        delayed(answer, self.delay)
    }
}

impl FakeDataverse {
    pub async fn start() -> FakeDataverse {
        let server = MockServer::start().await;
        let org = Arc::new(Mutex::new(Org::new(server.uri())));
        FakeDataverse {
            requests: super::serve_org(&server, &org).await,
            server,
            org,
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
        self.requests.drain().await
    }

    /// How many Web API requests (token requests aside) arrived and were not
    /// taken yet (takes every request).
    pub async fn api_requests(&self) -> usize {
        self.requests.count_under("/api/data/").await
    }

    /// Revokes every access token issued (the next Web API call gets 401).
    pub fn expire_tokens(&self) {
        self.org().valid_tokens.clear();
    }
}
