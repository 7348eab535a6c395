//! A fake Salesforce org over real HTTP: a token endpoint that checks the grant
//! (JWT assertions verified with the test public key), and a REST API with
//! Tasks upserted by external id, SOSL search, Platform Events, presence
//! records and describe, that can answer with scripted errors, limits and delays.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const CLIENT_ID: &str = "3MVG9-test-consumer-key";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const USERNAME: &str = "integration@acme.example";
pub const PRIVATE_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/TEST-ONLY-salesforce-key.pem"
);
const PUBLIC_KEY: &str = include_str!("../fixtures/TEST-ONLY-salesforce-key.pub.pem");
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
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
}

struct Responder {
    org: Arc<Mutex<Org>>,
    sent: mpsc::UnboundedSender<Request>,
}

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!([{ "message": message, "errorCode": code }]))
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let _ = self.sent.send(request.clone());
        let mut org = self.org.lock().unwrap();
        if request.url.path() == "/services/oauth2/token" {
            let answer = org.token(request);
            return match org.token_delay {
                Some(delay) => answer.set_delay(delay),
                None => answer,
            };
        }
        let mut answer = org.api(request);
        if let Some(limit) = &org.limit_info {
            answer = answer.insert_header("Sforce-Limit-Info", limit.as_str());
        }
        match org.api_delay {
            Some(delay) => answer.set_delay(delay),
            None => answer,
        }
    }
}

/// The agent's word as [`FakeSalesforce::word`] reads it.
pub fn word(notes: &str, disposition: &str, stamp_end: &str) -> (String, String, String) {
    (notes.into(), disposition.into(), stamp_end.into())
}

impl Org {
    fn token(&mut self, request: &Request) -> ResponseTemplate {
        let content_type = request
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        self.token_requests.push(form.clone());
        let ok = match form.get("grant_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                let assertion = form.get("assertion").expect("an assertion");
                let mut validation = Validation::new(Algorithm::RS256);
                validation.set_audience(&["https://login.salesforce.com"]);
                validation.set_issuer(&[CLIENT_ID]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
                match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
                    Ok(data) => {
                        let ok = data.claims["sub"] == USERNAME;
                        self.assertions.push(data.claims);
                        ok
                    }
                    Err(_) => false,
                }
            }
            Some("client_credentials") => {
                form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
            }
            _ => false,
        };
        if !ok || self.refuse_grants {
            return ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "authentication failure"}),
            );
        }
        let token = format!("00Dtest!token-{}", self.token_requests.len());
        self.valid_tokens.insert(token.clone());
        let instance = self.instance.clone();
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "instance_url": instance,
            "id": format!("{instance}/id/00Dxx/005xx"),
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }))
    }

    fn api(&mut self, request: &Request) -> ResponseTemplate {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !self.valid_tokens.contains(bearer) {
            return error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
        if let Some(scripted) = self.script.pop_front() {
            return scripted;
        }
        let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let body = serde_json::from_slice::<Value>(&request.body).unwrap_or(Value::Null);
        let (status, body) = self.route(request.method.as_str(), request.url.path(), &query, body);
        ResponseTemplate::new(status).set_body_json(body)
    }

    /// One REST request (alone or a Composite subrequest): status and body.
    fn route(
        &mut self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Value,
    ) -> (u16, Value) {
        let not_found = || {
            (
                404,
                json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
            )
        };
        let Some(rest) = path.strip_prefix("/services/data/v67.0/") else {
            return not_found();
        };
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let q = || {
            query
                .iter()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let object = || body.as_object().cloned().unwrap_or_default();
        match (method, parts.as_slice()) {
            ("POST", ["composite"]) => self.composite(body),
            ("GET", ["search"]) => {
                // `FIND {a OR b} IN PHONE FIELDS RETURNING ...`: a person
                // matches a term holding the same digits as their phone.
                let q = q();
                let terms: Vec<String> = q
                    .strip_prefix("FIND {")
                    .and_then(|rest| rest.split_once("} IN PHONE FIELDS RETURNING "))
                    .map(|(terms, _)| terms.split(" OR ").map(digits).collect())
                    .unwrap_or_default();
                let records: Vec<Value> = self
                    .people
                    .iter()
                    .filter(|(_, _, _, phone)| terms.contains(&digits(phone)))
                    .map(|(object, id, name, phone)| json!({"attributes": {"type": object}, "Id": id, "Name": name, "Phone": phone, "MobilePhone": null}))
                    .collect();
                (200, json!({ "searchRecords": records }))
            }
            ("GET", ["query"]) => self.query(&q()),
            ("POST", ["composite", "sobjects"]) => {
                let Some(records) = self.records(&body) else {
                    return collection_limit();
                };
                if let Some(bad) = records.iter().find(|r| {
                    let t = r["attributes"]["type"].as_str().unwrap_or("");
                    t != "Task" && !t.ends_with("__e")
                }) {
                    return (
                        400,
                        json!([{"message": format!("sObject type '{}' is not supported.", bad["attributes"]["type"]), "errorCode": "INVALID_TYPE"}]),
                    );
                }
                self.collection_requests += 1;
                let results: Vec<Value> = records
                    .into_iter()
                    .map(|mut record| {
                        let t = record["attributes"]["type"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        record.as_object_mut().unwrap().remove("attributes");
                        if t == "Task" {
                            self.create_task(record.as_object().unwrap().clone())
                        } else {
                            self.events.push((t, record));
                            json!({"id": "e00x", "success": true, "errors": []})
                        }
                    })
                    .collect();
                (200, Value::Array(results))
            }
            ("PATCH", ["composite", "sobjects", "Task", field]) if *field == EXTERNAL_ID => {
                let Some(records) = self.records(&body) else {
                    return collection_limit();
                };
                self.collection_requests += 1;
                let results: Vec<Value> = records
                    .into_iter()
                    .map(|record| {
                        let mut record = record.as_object().unwrap().clone();
                        assert_eq!(record.remove("attributes").unwrap()["type"], "Task");
                        let key = record
                            .remove(EXTERNAL_ID)
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .expect("each record names its external id");
                        self.upsert_task(&key, record)
                    })
                    .collect();
                (200, Value::Array(results))
            }
            ("POST", ["sobjects", "Task"]) => {
                let result = self.create_task(object());
                if result["success"] == true {
                    (201, result)
                } else {
                    (400, result["errors"].clone())
                }
            }
            ("GET", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                match self.tasks.get(*key) {
                    Some(task) => (200, Value::Object(task.clone())),
                    None => not_found(),
                }
            }
            ("PATCH", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                let body = object();
                assert!(
                    !body.contains_key(EXTERNAL_ID),
                    "the external id is in the path, not the body"
                );
                let result = self.upsert_task(key, body);
                match result["success"] == true {
                    true if result["created"] == true => (201, result),
                    true => (200, result),
                    false => (400, result["errors"].clone()),
                }
            }
            ("POST", ["sobjects", event]) if event.ends_with("__e") => {
                self.events.push(((*event).to_owned(), body));
                (201, json!({"id": "e00x", "success": true, "errors": []}))
            }
            ("PATCH", ["sobjects", _object, _field, agent]) => {
                self.presence
                    .entry((*agent).to_owned())
                    .or_default()
                    .extend(object());
                (
                    201,
                    json!({"id": "a00x", "success": true, "errors": [], "created": true}),
                )
            }
            // Field describes as Salesforce gives them (a subset of each
            // field's attributes): upserts need `externalId` and `unique`.
            ("GET", ["sobjects", "Task", "describe"]) => (
                200,
                json!({
                    "name": "Task",
                    "label": "Task",
                    "custom": false,
                    "fields": [
                        {"name": "Id", "label": "Activity ID", "type": "id", "length": 18,
                         "custom": false, "unique": false, "externalId": false, "idLookup": true,
                         "nillable": false, "caseSensitive": false, "picklistValues": []},
                        {"name": "Subject", "label": "Subject", "type": "combobox", "length": 255,
                         "custom": false, "unique": false, "externalId": false, "idLookup": false,
                         "nillable": true, "caseSensitive": false, "picklistValues": []},
                        {"name": EXTERNAL_ID, "label": "Softphone Conversation Id", "type": "string",
                         "length": 64, "custom": true, "unique": !self.external_id_not_unique,
                         "externalId": true, "idLookup": true, "nillable": true,
                         "caseSensitive": false, "picklistValues": []},
                        {"name": "Call_Result__c", "label": "Call Result", "type": "picklist",
                         "length": 255, "custom": true, "unique": false, "externalId": false,
                         "idLookup": false, "nillable": true, "caseSensitive": false,
                         "picklistValues": [
                            {"value": "Booked", "label": "Booked", "active": true, "defaultValue": false, "validFor": null},
                            {"value": "Retired", "label": "Retired", "active": false, "defaultValue": false, "validFor": null},
                            {"value": "Call back", "label": "Call back", "active": true, "defaultValue": false, "validFor": null}
                        ]}
                    ]
                }),
            ),
            _ => not_found(),
        }
    }

    /// `{"allOrNone": false, "records": [...]}`: at most 200 records.
    fn records(&self, body: &Value) -> Option<Vec<Value>> {
        assert_eq!(body["allOrNone"], false, "each record on its own");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        (records.len() <= 200).then_some(records)
    }

    /// A scripted error for the next record written, else none.
    fn item_error(&mut self) -> Option<Value> {
        self.item_errors
            .pop_front()
            .map(|code| json!({"id": null, "success": false, "errors": [{"statusCode": code, "message": code, "fields": []}]}))
    }

    fn create_task(&mut self, body: Map<String, Value>) -> Value {
        if let Some(error) = self.item_error() {
            return error;
        }
        let key = body[EXTERNAL_ID]
            .as_str()
            .expect("the external id is set on create")
            .to_owned();
        if self.tasks.contains_key(&key) {
            return json!({"success": false, "errors": [{
                "statusCode": "DUPLICATE_VALUE",
                "message": format!("duplicate value found: {EXTERNAL_ID} duplicates value on record with id: 00Tx"),
                "fields": []
            }]});
        }
        if let Some(error) = self.check_lengths(&body) {
            return error;
        }
        self.writes.push((
            std::time::Instant::now(),
            key.clone(),
            body.keys().cloned().collect(),
        ));
        let mut task = Map::new();
        task.insert("Status".into(), "Not Started".into());
        task.extend(body);
        self.tasks.insert(key, task);
        json!({"id": "00Tnew", "success": true, "errors": []})
    }

    fn upsert_task(&mut self, key: &str, body: Map<String, Value>) -> Value {
        if let Some(error) = self.item_error() {
            return error;
        }
        if let Some(error) = self.check_lengths(&body) {
            return error;
        }
        if !(self.tasks.contains_key(key) && body.contains_key("TaskSubtype")) {
            self.writes.push((
                std::time::Instant::now(),
                key.to_owned(),
                body.keys().cloned().collect(),
            ));
        }
        match self.tasks.get_mut(key) {
            Some(task) => {
                if body.contains_key("TaskSubtype") {
                    return json!({"success": false, "errors": [{
                        "statusCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
                        "message": "Unable to create/update fields: TaskSubtype.",
                        "fields": ["TaskSubtype"]
                    }]});
                }
                task.extend(body);
                json!({"id": "00Tx", "success": true, "errors": [], "created": false})
            }
            None => {
                let mut task = Map::new();
                task.insert("Status".into(), "Not Started".into());
                task.extend(body);
                task.insert(EXTERNAL_ID.into(), Value::String(key.to_owned()));
                self.tasks.insert(key.to_owned(), task);
                json!({"id": "00Tx", "success": true, "errors": [], "created": true})
            }
        }
    }

    /// Salesforce's limits on the standard Task fields it would refuse.
    fn check_lengths(&self, body: &Map<String, Value>) -> Option<Value> {
        let standard = [
            ("Description", 32_000),
            ("CallDisposition", 255),
            ("Subject", 255),
        ];
        let custom = self.field_limits.iter().map(|(f, n)| (f.as_str(), *n));
        for (field, max) in standard.into_iter().chain(custom) {
            if body
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|v| v.chars().count() > max)
            {
                return Some(json!({"success": false, "errors": [{
                    "statusCode": "STRING_TOO_LONG",
                    "message": format!("{field}: data value too large"),
                    "fields": [field]
                }]}));
            }
        }
        if body
            .get("CallDurationInSeconds")
            .and_then(Value::as_u64)
            .is_some_and(|d| d > i32::MAX as u64)
        {
            return Some(json!({"success": false, "errors": [{
                "statusCode": "NUMBER_OUTSIDE_VALID_RANGE",
                "message": "CallDurationInSeconds: value outside of valid range",
                "fields": ["CallDurationInSeconds"]
            }]}));
        }
        None
    }

    /// `SELECT a, b FROM Task WHERE <ext> IN ('x', 'y')`.
    fn query(&mut self, soql: &str) -> (u16, Value) {
        let select = soql
            .strip_prefix("SELECT ")
            .and_then(|rest| rest.split_once(" FROM Task WHERE "));
        let Some((fields, condition)) = select else {
            return (
                400,
                json!([{"message": format!("unexpected query {soql}"), "errorCode": "MALFORMED_QUERY"}]),
            );
        };
        let prefix = format!("{EXTERNAL_ID} IN (");
        let ids: Vec<String> = condition
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected condition {condition}"))
            .split(", ")
            .map(|id| id.trim_matches('\'').to_owned())
            .collect();
        self.queried.push(ids.clone());
        let fields: Vec<&str> = fields.split(", ").collect();
        let records: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .map(|task| {
                let mut record = Map::new();
                record.insert("attributes".into(), json!({"type": "Task"}));
                for field in &fields {
                    record.insert(
                        (*field).to_owned(),
                        task.get(*field).cloned().unwrap_or(Value::Null),
                    );
                }
                Value::Object(record)
            })
            .collect();
        (
            200,
            json!({"totalSize": records.len(), "done": true, "records": records}),
        )
    }

    /// Up to 25 subrequests, each answered on its own, in order.
    fn composite(&mut self, body: Value) -> (u16, Value) {
        assert_eq!(body["allOrNone"], false);
        let requests = body["compositeRequest"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if requests.len() > 25 {
            return (
                400,
                json!([{"message": "more than 25 subrequests", "errorCode": "LIMIT_EXCEEDED"}]),
            );
        }
        let url = |sub: &Value| {
            sub["url"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("/services/data/v67.0/")
                .to_owned()
        };
        // Composite takes sObject, query and sObject Collections resources,
        // at most 5 queries or collections.
        if let Some(sub) = requests.iter().find(|sub| url(sub).starts_with("search")) {
            return (
                400,
                json!([{"message": format!("Unsupported resource in a composite subrequest: {}", url(sub)), "errorCode": "INVALID_API_INPUT"}]),
            );
        }
        let heavy = requests
            .iter()
            .filter(|sub| {
                let url = url(sub);
                url.starts_with("query") || url.starts_with("composite/sobjects")
            })
            .count();
        if heavy > 5 {
            return (
                400,
                json!([{"message": "more than 5 query or sObject Collections subrequests", "errorCode": "LIMIT_EXCEEDED"}]),
            );
        }
        let responses: Vec<Value> = requests
            .into_iter()
            .map(|sub| {
                let url = url::Url::parse(&format!("http://x{}", sub["url"].as_str().unwrap())).unwrap();
                let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let (status, body) = self.route(
                    sub["method"].as_str().unwrap(),
                    url.path(),
                    &query,
                    sub["body"].clone(),
                );
                json!({"body": body, "httpHeaders": {}, "httpStatusCode": status, "referenceId": sub["referenceId"]})
            })
            .collect();
        (200, json!({ "compositeResponse": responses }))
    }
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

fn collection_limit() -> (u16, Value) {
    (
        400,
        json!([{"message": "Maximum number of records exceeded: 200", "errorCode": "EXCEEDED_ID_LIMIT"}]),
    )
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
        let (sent, requests) = mpsc::unbounded_channel();
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder {
                org: Arc::clone(&org),
                sent,
            })
            .mount(&server)
            .await;
        FakeSalesforce {
            server,
            org,
            requests: tokio::sync::Mutex::new(requests),
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
        self.drain()
            .await
            .iter()
            .filter(|r| r.url.path().starts_with("/services/data/"))
            .count()
    }

    /// Every request received so far and not yet taken.
    pub async fn drain(&self) -> Vec<Request> {
        let mut rx = self.requests.lock().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
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
