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
        let path = request.url.path().to_owned();
        let Some(rest) = path.strip_prefix("/services/data/v67.0/") else {
            return error(404, "NOT_FOUND", "The requested resource does not exist");
        };
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let body =
            || serde_json::from_slice::<Map<String, Value>>(&request.body).unwrap_or_default();
        match (request.method.as_str(), parts.as_slice()) {
            ("GET", ["search"]) => {
                let q = request
                    .url
                    .query_pairs()
                    .find(|(k, _)| k == "q")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let records: Vec<Value> = self
                    .people
                    .iter()
                    .filter(|(_, _, _, phone)| q.contains(&phone.replace('+', r"\+")))
                    .map(|(object, id, name, _)| json!({"attributes": {"type": object}, "Id": id, "Name": name}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({ "searchRecords": records }))
            }
            ("POST", ["sobjects", "Task"]) => {
                let body = body();
                let key = body[EXTERNAL_ID]
                    .as_str()
                    .expect("the external id is set on create")
                    .to_owned();
                if self.tasks.contains_key(&key) {
                    return error(
                        400,
                        "DUPLICATE_VALUE",
                        "duplicate value found: Softphone_Conversation_Id__c",
                    );
                }
                let mut task = Map::new();
                task.insert("Status".into(), "Not Started".into());
                task.extend(body);
                self.tasks.insert(key, task);
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": "00Tnew", "success": true, "errors": []}))
            }
            ("GET", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                match self.tasks.get(*key) {
                    Some(task) => ResponseTemplate::new(200).set_body_json(task),
                    None => error(404, "NOT_FOUND", "The requested resource does not exist"),
                }
            }
            ("PATCH", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                let body = body();
                assert!(
                    !body.contains_key(EXTERNAL_ID),
                    "the external id is in the path, not the body"
                );
                match self.tasks.get_mut(*key) {
                    Some(task) => {
                        if body.contains_key("TaskSubtype") {
                            return error(
                                400,
                                "INVALID_FIELD_FOR_INSERT_UPDATE",
                                "Unable to create/update fields: TaskSubtype.",
                            );
                        }
                        task.extend(body);
                        ResponseTemplate::new(200).set_body_json(
                            json!({"id": "00Tx", "success": true, "errors": [], "created": false}),
                        )
                    }
                    None => {
                        let mut task = Map::new();
                        task.insert("Status".into(), "Not Started".into());
                        task.extend(body);
                        task.insert(EXTERNAL_ID.into(), Value::String((*key).to_owned()));
                        self.tasks.insert((*key).to_owned(), task);
                        ResponseTemplate::new(201).set_body_json(
                            json!({"id": "00Tx", "success": true, "errors": [], "created": true}),
                        )
                    }
                }
            }
            ("POST", ["sobjects", event]) if event.ends_with("__e") => {
                self.events
                    .push(((*event).to_owned(), Value::Object(body())));
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": "e00x", "success": true, "errors": []}))
            }
            ("PATCH", ["sobjects", _object, _field, agent]) => {
                self.presence
                    .entry((*agent).to_owned())
                    .or_default()
                    .extend(body());
                ResponseTemplate::new(201).set_body_json(
                    json!({"id": "a00x", "success": true, "errors": [], "created": true}),
                )
            }
            ("GET", ["sobjects", "Task", "describe"]) => {
                ResponseTemplate::new(200).set_body_json(json!({
                    "name": "Task",
                    "fields": [
                        {"name": "Subject", "type": "combobox", "picklistValues": []},
                        {"name": "Call_Result__c", "type": "picklist", "picklistValues": [
                            {"value": "Booked", "label": "Booked", "active": true},
                            {"value": "Retired", "label": "Retired", "active": false},
                            {"value": "Call back", "label": "Call back", "active": true}
                        ]}
                    ]
                }))
            }
            _ => error(404, "NOT_FOUND", "The requested resource does not exist"),
        }
    }
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

    /// Every request received so far and not yet taken.
    /// How many REST API calls (token requests aside) arrived and were not taken yet.
    pub async fn api_calls(&self) -> usize {
        self.drain()
            .await
            .iter()
            .filter(|r| crate::salesforce::is_api(r))
            .count()
    }

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

    /// Revokes every token, as a session timeout would.
    pub fn expire_tokens(&self) {
        self.org().valid_tokens.clear();
    }
}
