//! Publishing callbacks to `softphone.cmd.<softphoneId>`, with a JetStream
//! publish ack and a message id so a retried publish is never stored twice;
//! commands from CRMs also carry their expiry (`expiresAt`, `Nats-TTL`).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use bytes::Bytes;
use serde::Serialize;
use time::OffsetDateTime;

use crate::contract::{Callback, SoftphoneId, command_subject};

#[derive(Debug, thiserror::Error)]
#[error("cannot publish {kind} to softphone {softphone}: {source}")]
pub struct CommandError {
    kind: &'static str,
    softphone: SoftphoneId,
    #[source]
    source: async_nats::Error,
}

/// Publishes callbacks into `SOFTPHONE_COMMANDS`.
#[derive(Clone)]
pub struct CommandPublisher {
    js: jetstream::Context,
}

impl CommandPublisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes one callback and waits for the stream's ack. `message_id`
    /// becomes `Nats-Msg-Id`: the stream drops a repeat within its window.
    pub async fn publish(
        &self,
        softphone: &SoftphoneId,
        callback: &Callback,
        message_id: &str,
    ) -> Result<PublishAck, CommandError> {
        self.send(softphone, callback, message_id, None).await
    }

    /// Like [`CommandPublisher::publish`], for a command that must never
    /// arrive late: the body says `expiresAt` (now + `ttl`) and the stream
    /// removes the message after `ttl` (`Nats-TTL`, whole seconds rounded up),
    /// so a consumer that connects later never receives it.
    pub async fn publish_expiring(
        &self,
        softphone: &SoftphoneId,
        callback: &Callback,
        message_id: &str,
        expires_at: OffsetDateTime,
        ttl: Duration,
    ) -> Result<PublishAck, CommandError> {
        self.send(softphone, callback, message_id, Some((expires_at, ttl)))
            .await
    }

    async fn send(
        &self,
        softphone: &SoftphoneId,
        callback: &Callback,
        message_id: &str,
        expiry: Option<(OffsetDateTime, Duration)>,
    ) -> Result<PublishAck, CommandError> {
        let fail = |source: async_nats::Error| CommandError {
            kind: callback.type_name(),
            softphone: softphone.clone(),
            source,
        };
        let body = match expiry {
            None => serde_json::to_vec(callback),
            Some((expires_at, _)) => serde_json::to_vec(&Expiring {
                callback,
                expires_at,
            }),
        };
        let body = Bytes::from(body.map_err(|e| fail(e.into()))?);
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(message_id);
        if let Some((_, ttl)) = expiry {
            publish = publish.ttl(whole_seconds(ttl));
        }
        let ack: PublishAckFuture = self
            .js
            .send_publish(command_subject(softphone), publish)
            .await
            .map_err(|e| fail(e.into()))?;
        ack.await.map_err(|e| fail(e.into()))
    }
}

/// `{"type": ..., "payload": ..., "expiresAt": "<RFC 3339>"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Expiring<'a> {
    #[serde(flatten)]
    callback: &'a Callback,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// `Nats-TTL` counts whole seconds: round up, so a message never expires early.
fn whole_seconds(ttl: Duration) -> Duration {
    Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_commands_say_when_they_expire() {
        let callback = Callback::Disposition(vec!["a".into()]);
        let body = serde_json::to_value(Expiring {
            callback: &callback,
            expires_at: OffsetDateTime::UNIX_EPOCH,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "disposition", "payload": ["a"], "expiresAt": "1970-01-01T00:00:00Z"})
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
