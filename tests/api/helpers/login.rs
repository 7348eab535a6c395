//! A client of a tenancy deployment logged in with a platform token, and
//! what the server refused it.

use std::sync::{Arc, Mutex};

use async_nats::jetstream;

use super::{Tenancy, round_trip, server_refused, trusting};

/// A client logged in with a platform token, and what the server refused it.
pub struct Login {
    pub name: String,
    pub client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Login {
    /// Connects to `url` (nats:// or ws://) with `token`, using the inbox
    /// prefix of its own that its permissions allow.
    pub async fn connect(
        url: &str,
        name: &str,
        token: &str,
    ) -> Result<Login, async_nats::ConnectError> {
        Self::connect_trusting(url, name, token, None).await
    }

    /// A softphone of `partner` named `name`, logging in with a good token.
    pub async fn softphone(
        url: &str,
        name: &str,
        partner: &str,
    ) -> Result<Login, async_nats::ConnectError> {
        Self::connect(url, name, &Tenancy::softphone_token(name, partner)).await
    }

    /// Like [`Login::connect`], trusting `ca` for TLS.
    pub async fn connect_trusting(
        url: &str,
        name: &str,
        token: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<Login, async_nats::ConnectError> {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&errors);
        let client = trusting(async_nats::ConnectOptions::with_token(token.to_owned()), ca)
            .custom_inbox_prefix(format!("_INBOX_{name}"))
            .max_reconnects(Some(1))
            .event_callback(move |event| {
                let seen = Arc::clone(&seen);
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        seen.lock().unwrap().push(e.to_string().to_lowercase());
                    }
                }
            })
            .connect(url)
            .await?;
        Ok(Login {
            name: name.to_owned(),
            client,
            errors,
        })
    }

    /// Waits for the server to refuse `action` (`publish`, `subscription`) on `subject`.
    pub async fn refused(&self, action: &str, subject: &str) {
        server_refused(&self.errors, &self.name, action, subject).await;
    }

    /// Publishes an event with JetStream and waits for its publish ack:
    /// `Err` when no stream stored it.
    pub async fn store(
        &self,
        subject: &str,
        body: String,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        jetstream::new(self.client.clone())
            .publish(subject.to_owned(), body.into())
            .await?
            .await
    }

    /// A round trip on a softphone's connection: `softphone.load`, which
    /// nobody serves in these tests ([`round_trip`]).
    pub async fn round_trip(&self) {
        round_trip(&self.client, "softphone.load").await;
    }

    /// Whether the server sent an error containing `text` (lower case).
    pub fn server_said(&self, text: &str) -> bool {
        self.errors.lock().unwrap().iter().any(|e| e.contains(text))
    }

    /// Nothing was refused so far.
    pub fn refused_nothing(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "{} was refused: {errors:?}", self.name);
    }
}
