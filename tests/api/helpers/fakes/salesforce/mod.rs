//! A fake Salesforce org over real HTTP: a token endpoint that checks the grant
//! (JWT assertions verified with the test public key), and a REST API with
//! Tasks upserted by external id, SOSL search, Platform Events, presence
//! records and describe, that can answer with scripted errors, limits and delays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use wiremock::{MockServer, Request, ResponseTemplate};

use super::{Answer, Requests, delayed};

mod api;
mod records;
mod token;

pub const CLIENT_ID: &str = "3MVG9-test-consumer-key";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const USERNAME: &str = "integration@acme.example";
pub const PRIVATE_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/TEST-ONLY-salesforce-key.pem"
);
pub const EXTERNAL_ID: &str = "Softphone_Conversation_Id__c";

/// What the fake org holds and how it behaves.
#[derive(Default)]
pub struct Org {
    /// Tasks by external id.
    pub tasks: HashMap<String, Map<String, Value>>,
    /// Presence records by agent id.
    pub presence: HashMap<String, Map<String, Value>>,
    /// Platform Events published: (API name, body).
    pub events: Vec<(String, Value)>,
    /// (type, id, name, phone) of Contacts and Leads.
    pub people: Vec<(&'static str, &'static str, &'static str, &'static str)>,
    /// Token requests: the form fields of each.
    pub token_requests: Vec<HashMap<String, String>>,
    /// Claims of each verified JWT assertion.
    pub assertions: Vec<Value>,
    /// Tokens the org accepts.
    pub valid_tokens: HashSet<String>,
    /// `Sforce-Limit-Info` sent with every API answer.
    pub limit_info: Option<String>,
    /// Answers for the next API calls (not token requests), before the org's own.
    pub script: VecDeque<ResponseTemplate>,
    /// Delay of every API answer.
    pub api_delay: Option<Duration>,
    /// While set, the token endpoint answers `invalid_grant` to every request
    /// (a connected app being fixed, a user re-enabled).
    pub refuse_grants: bool,
    /// Delay of token answers.
    pub token_delay: Option<Duration>,
    /// `instance_url` handed out with tokens (the fake's own address).
    pub instance: String,
    /// Error codes (`UNABLE_TO_LOCK_ROW`) for the next Task records written,
    /// one each, before the org's own answer.
    pub item_errors: VecDeque<&'static str>,
    /// The conversation ids of each SOQL read.
    pub queried: Vec<Vec<String>>,
    /// sObject Collections requests (alone or inside a Composite call).
    pub collection_requests: usize,
    /// Lengths of the org's custom Task fields (Salesforce answers
    /// `STRING_TOO_LONG` to a longer value).
    pub field_limits: HashMap<String, usize>,
    /// Every Task record written: when, its conversation, the fields sent.
    pub writes: Vec<(std::time::Instant, String, Vec<String>)>,
    /// A misconfigured org: its external-ID field is not Unique (describe says so).
    pub external_id_not_unique: bool,
}

pub struct FakeSalesforce {
    pub server: MockServer,
    pub org: Arc<Mutex<Org>>,
    requests: Requests,
}

impl Answer for Org {
    fn answer(&mut self, request: &Request) -> ResponseTemplate {
        if request.url.path() == "/services/oauth2/token" {
            let answer = self.token(request);
            return delayed(answer, self.token_delay);
        }
        let mut answer = self.api(request);
        if let Some(limit) = &self.limit_info {
            answer = answer.insert_header("Sforce-Limit-Info", limit.as_str());
        }
        delayed(answer, self.api_delay)
    }
}

/// The agent's word as [`FakeSalesforce::word`] reads it.
pub fn word(notes: &str, disposition: &str, stamp_end: &str) -> (String, String, String) {
    (notes.into(), disposition.into(), stamp_end.into())
}

impl FakeSalesforce {
    pub async fn start() -> FakeSalesforce {
        let server = MockServer::start().await;
        // The instance is the same server under another name, so tests can
        // tell calls to the instance from calls to the login host.
        let instance = server.uri().replace("127.0.0.1", "localhost");
        let org = Arc::new(Mutex::new(Org {
            instance,
            ..Org::default()
        }));
        FakeSalesforce {
            requests: super::serve_org(&server, &org).await,
            server,
            org,
        }
    }

    pub fn org(&self) -> std::sync::MutexGuard<'_, Org> {
        self.org.lock().unwrap()
    }

    /// The `[crm]` body of a connection to this org with the given flow and extra keys.
    pub fn crm_toml(&self, auth: &str, extra: &str) -> String {
        let uri = self.server.uri();
        let credentials = match auth {
            // The assertion's audience defaults to the public login host, as in
            // production, though the token request goes to the fake.
            "jwt_bearer" => {
                format!("username = \"{USERNAME}\"\nprivate_key_file = \"{PRIVATE_KEY}\"")
            }
            _ => format!("client_secret = \"{CLIENT_SECRET}\""),
        };
        format!(
            "kind = \"salesforce\"\nauth = \"{auth}\"\nlogin_url = \"{uri}\"\nclient_id = \"{CLIENT_ID}\"\n{credentials}\ntimeout = \"2s\"\n{extra}"
        )
    }

    /// How many REST API calls (token requests aside) arrived and were not taken yet.
    pub async fn api_calls(&self) -> usize {
        self.requests.count_under("/services/data/").await
    }

    /// Every request received so far and not yet taken.
    pub async fn drain(&self) -> Vec<Request> {
        self.requests.drain().await
    }

    /// The Task of a conversation (panics if there is none).
    pub fn task(&self, conversation: &str) -> Map<String, Value> {
        self.org()
            .tasks
            .get(conversation)
            .cloned()
            .unwrap_or_else(|| panic!("no Task for {conversation}"))
    }

    /// The agent's word the Task of `conversation` holds: notes,
    /// disposition, and the end of its stamp (`":20.000Z"`).
    pub fn word(&self, conversation: &str) -> (String, String, String) {
        let task = self.task(conversation);
        let text = |field: &str| task.get(field).and_then(Value::as_str).unwrap_or_default();
        let stamp = text("Softphone_Notes_At__c");
        (
            text("Description").to_owned(),
            text("CallDisposition").to_owned(),
            stamp[stamp.len().saturating_sub(8)..].to_owned(),
        )
    }

    /// The `salesforce` adapter alone on this org (client credentials), with
    /// the extra `[crm]` keys.
    pub fn adapter(&self, extra: &str) -> softphone_bridge::crm::SalesforceCrm {
        use softphone_bridge::config::{CrmSettings, Settings};
        let toml = format!("[crm]\n{}", self.crm_toml("client_credentials", extra));
        let settings = Settings::from_toml(&toml).unwrap();
        let CrmSettings::Salesforce(salesforce) = &settings.crm else {
            panic!("a salesforce connection")
        };
        softphone_bridge::crm::SalesforceCrm::new(
            "crm",
            salesforce,
            softphone_bridge::crm::http_client().unwrap(),
        )
        .unwrap()
    }

    /// Revokes every token, as a session timeout would.
    pub fn expire_tokens(&self) {
        self.org().valid_tokens.clear();
    }
}
