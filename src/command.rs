//! Publishing callbacks to `softphone.cmd.<softphoneId>`, with a JetStream
//! publish ack and a message id so a retried publish is never delivered twice.

use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use bytes::Bytes;

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
        let fail = |source: async_nats::Error| CommandError {
            kind: callback.type_name(),
            softphone: softphone.clone(),
            source,
        };
        let body = Bytes::from(serde_json::to_vec(callback).map_err(|e| fail(e.into()))?);
        let publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(message_id);
        let ack: PublishAckFuture = self
            .js
            .send_publish(command_subject(softphone), publish)
            .await
            .map_err(|e| fail(e.into()))?;
        ack.await.map_err(|e| fail(e.into()))
    }
}
