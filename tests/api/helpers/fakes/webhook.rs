//! A fake webhook CRM over real HTTP.

use std::sync::{Arc, Mutex};

use wiremock::{MockServer, Request, Respond, ResponseTemplate};

use super::{PATIENCE, Requests};

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";

/// The `[crm]` section for a webhook at `url`.
pub fn webhook_crm(url: &str) -> String {
    format!("kind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{WEBHOOK_SECRET}\"\ntimeout = \"2s\"")
}

/// A fake CRM over real HTTP: answers from a script, then with a default, and
/// reports every request on a channel.
pub struct FakeCrm {
    pub server: MockServer,
    requests: Requests,
    script: Arc<Mutex<Vec<ResponseTemplate>>>,
    default: Arc<Mutex<ResponseTemplate>>,
    /// Answers for requests whose body names a conversation, before anything else.
    refusals: Arc<Mutex<Vec<(String, ResponseTemplate)>>>,
}

struct Responder {
    script: Arc<Mutex<Vec<ResponseTemplate>>>,
    default: Arc<Mutex<ResponseTemplate>>,
    refusals: Arc<Mutex<Vec<(String, ResponseTemplate)>>>,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body = String::from_utf8_lossy(&request.body);
        let refusals = self.refusals.lock().unwrap();
        if let Some((_, answer)) = refusals
            .iter()
            .find(|(conv, _)| body.contains(conv.as_str()))
        {
            return answer.clone();
        }
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            self.default.lock().unwrap().clone()
        } else {
            script.remove(0)
        }
    }
}

impl FakeCrm {
    /// Answers 200 unless scripted otherwise.
    pub async fn start() -> FakeCrm {
        Self::answering(ResponseTemplate::new(200)).await
    }

    pub async fn answering(default: ResponseTemplate) -> FakeCrm {
        Self::serve(MockServer::start().await, default).await
    }

    /// Answers 200 on `listener` (a CRM that starts listening late).
    pub async fn on(listener: std::net::TcpListener) -> FakeCrm {
        let server = MockServer::builder().listener(listener).start().await;
        Self::serve(server, ResponseTemplate::new(200)).await
    }

    async fn serve(server: MockServer, default: ResponseTemplate) -> FakeCrm {
        let script = Arc::new(Mutex::new(Vec::new()));
        let default = Arc::new(Mutex::new(default));
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let responder = Responder {
            script: Arc::clone(&script),
            default: Arc::clone(&default),
            refusals: Arc::clone(&refusals),
        };
        FakeCrm {
            requests: super::serve(&server, responder).await,
            server,
            script,
            default,
            refusals,
        }
    }

    /// From now on, answers `answer` unless scripted otherwise (a CRM going
    /// down, or coming back).
    pub fn answer(&self, answer: ResponseTemplate) {
        *self.default.lock().unwrap() = answer;
    }

    /// From now on, answers `answer` to every request about `conversation`.
    pub fn refuse(&self, conversation: &str, answer: ResponseTemplate) {
        self.refusals
            .lock()
            .unwrap()
            .push((conversation.to_owned(), answer));
    }

    pub fn url(&self) -> String {
        format!("{}/events", self.server.uri())
    }

    /// The next responses, in order, before the default one.
    pub fn script(&self, responses: impl IntoIterator<Item = ResponseTemplate>) {
        self.script.lock().unwrap().extend(responses);
    }

    /// The next request the CRM receives.
    pub async fn next_request(&self) -> Request {
        tokio::time::timeout(PATIENCE, self.requests.next())
            .await
            .expect("the CRM received a request in time")
            .expect("the recorder is alive")
    }

    /// The next request the CRM receives, `None` if the recorder is gone
    /// (no deadline: the caller bounds the wait).
    pub async fn next_request_quietly(&self) -> Option<Request> {
        self.requests.next().await
    }

    /// Whatever has arrived and not been taken yet.
    pub async fn drain(&self) -> Vec<Request> {
        self.requests.drain().await
    }
}

/// The `Idempotency-Key` a CRM request carries: the event id.
pub fn idempotency_key(request: &Request) -> String {
    request
        .headers
        .get("Idempotency-Key")
        .expect("Idempotency-Key header")
        .to_str()
        .unwrap()
        .to_owned()
}
