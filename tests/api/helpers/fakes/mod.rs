//! The fake CRMs, over real HTTP: a webhook endpoint ([`webhook`]), a
//! Salesforce org ([`salesforce`]) and a Dataverse environment
//! ([`dataverse`]), each recording what it received the same way
//! ([`Requests`]).
//!
//! This folder stands alone: the benchmarks include it by path, so nothing
//! here uses the rest of the test helpers.

pub mod dataverse;
pub mod salesforce;
pub mod webhook;

use std::time::Duration;

use tokio::sync::mpsc;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Every request a fake received, in order, until a test takes it.
pub struct Requests {
    received: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
}

/// Has `server` answer every request with `responder`, recording each
/// request first.
pub async fn serve(server: &MockServer, responder: impl Respond + 'static) -> Requests {
    let (sent, received) = mpsc::unbounded_channel();
    Mock::given(wiremock::matchers::any())
        .respond_with(Recording { sent, responder })
        .mount(server)
        .await;
    Requests {
        received: tokio::sync::Mutex::new(received),
    }
}

struct Recording<R> {
    sent: mpsc::UnboundedSender<Request>,
    responder: R,
}

impl<R: Respond> Respond for Recording<R> {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let _ = self.sent.send(request.clone());
        self.responder.respond(request)
    }
}

impl Requests {
    /// Every request received and not taken yet.
    pub async fn drain(&self) -> Vec<Request> {
        let mut received = self.received.lock().await;
        let mut out = Vec::new();
        while let Ok(request) = received.try_recv() {
            out.push(request);
        }
        out
    }

    /// How many of the requests not taken yet had a path starting with
    /// `prefix` (takes every request).
    pub async fn count_under(&self, prefix: &str) -> usize {
        self.drain()
            .await
            .iter()
            .filter(|request| request.url.path().starts_with(prefix))
            .count()
    }

    /// The next request, `None` if the fake is gone (no deadline).
    pub async fn next(&self) -> Option<Request> {
        self.received.lock().await.recv().await
    }
}

/// A fake's state, which answers each request (behind a lock, as requests
/// come concurrently).
pub trait Answer: Send + 'static {
    fn answer(&mut self, request: &Request) -> ResponseTemplate;
}

/// Has `server` answer every request from `org`, recording each first.
pub async fn serve_org<O: Answer>(
    server: &MockServer,
    org: &std::sync::Arc<std::sync::Mutex<O>>,
) -> Requests {
    serve(server, Shared(std::sync::Arc::clone(org))).await
}

struct Shared<O>(std::sync::Arc<std::sync::Mutex<O>>);

impl<O: Answer> Respond for Shared<O> {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.lock().unwrap().answer(request)
    }
}

/// `answer`, after `delay` when there is one.
pub fn delayed(answer: ResponseTemplate, delay: Option<Duration>) -> ResponseTemplate {
    match delay {
        Some(delay) => answer.set_delay(delay),
        None => answer,
    }
}
