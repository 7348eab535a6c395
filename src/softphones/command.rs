//! Publishing callbacks to `softphone.cmd.<softphoneId>` (with `[callout]`:
//! `softphone.p.<partnerId>.cmd.<softphoneId>`, which only that partner's
//! account imports), with a JetStream publish ack and a message id so a
//! retried publish is never stored twice; commands from CRMs also carry
//! their expiry (`expiresAt`, `Nats-TTL`).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use bytes::Bytes;
use time::OffsetDateTime;

use crate::contract::{Callback, Guid, SoftphoneId, command_subject, tenant};

#[derive(Debug, thiserror::Error)]
#[error("cannot publish {kind} to softphone {softphone}: {source}")]
pub struct CommandError {
    kind: &'static str,
    softphone: SoftphoneId,
    #[source]
    source: async_nats::Error,
}

/// A softphone that cannot be commanded: with `[callout]` its commands go to
/// its partner's account, and it is bound to none.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "softphone {0} is bound to no partner; with [callout] a command reaches only its partner's account (it must load first)"
)]
pub struct NoPartner(pub SoftphoneId);

/// Whom a command is for, and so on which subject it is published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipient<'a> {
    softphone: &'a SoftphoneId,
    /// `Some` with `[callout]`: the softphone's partner, if it has one.
    partner: Option<Option<&'a Guid>>,
}

impl<'a> Recipient<'a> {
    /// A softphone of the single account: `softphone.cmd.<softphoneId>`.
    pub(crate) fn softphone(softphone: &'a SoftphoneId) -> Self {
        Self {
            softphone,
            partner: None,
        }
    }

    /// A softphone of `partner` (its registry binding): with `[callout]`
    /// (`tenancy`) `softphone.p.<partnerId>.cmd.<softphoneId>`, and none
    /// without a partner; else the single account's subject.
    pub(crate) fn bound(
        tenancy: bool,
        softphone: &'a SoftphoneId,
        partner: Option<&'a Guid>,
    ) -> Self {
        Self {
            softphone,
            partner: tenancy.then_some(partner),
        }
    }

    /// The subject, or why there is none.
    pub(crate) fn subject(&self) -> Result<String, NoPartner> {
        match self.partner {
            None => Ok(command_subject(self.softphone)),
            Some(Some(partner)) => Ok(tenant::partner_command_subject(partner, self.softphone)),
            Some(None) => Err(NoPartner(self.softphone.clone())),
        }
    }
}

impl<'a> From<&'a SoftphoneId> for Recipient<'a> {
    fn from(softphone: &'a SoftphoneId) -> Self {
        Self::softphone(softphone)
    }
}

/// Publishes callbacks into `SOFTPHONE_COMMANDS`.
#[derive(Clone)]
pub(crate) struct CommandPublisher {
    js: jetstream::Context,
}

impl CommandPublisher {
    pub(crate) fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes one callback to `to` and waits for the stream's ack.
    /// `message_id` becomes `Nats-Msg-Id`: the stream drops a repeat within
    /// its window. `to` is a [`Recipient`], or a `&SoftphoneId` of the
    /// single account.
    pub(crate) async fn publish<'a>(
        &self,
        to: impl Into<Recipient<'a>>,
        callback: &Callback,
        message_id: &str,
    ) -> Result<PublishAck, CommandError> {
        let callback = Serialized::new(callback);
        self.send(to.into(), &callback, message_id, None).await
    }

    /// Like [`CommandPublisher::publish`], for a command that must never
    /// arrive late: the body says `expiresAt` (now + `ttl`) and the stream
    /// removes the message after `ttl` (`Nats-TTL`, whole seconds rounded up),
    /// so a consumer that connects later never receives it.
    pub(crate) async fn publish_expiring(
        &self,
        to: Recipient<'_>,
        callback: &Serialized,
        message_id: &str,
        expires_at: OffsetDateTime,
        ttl: Duration,
    ) -> Result<PublishAck, CommandError> {
        self.send(to, callback, message_id, Some((expires_at, ttl)))
            .await
    }

    async fn send(
        &self,
        to: Recipient<'_>,
        callback: &Serialized,
        message_id: &str,
        expiry: Option<(OffsetDateTime, Duration)>,
    ) -> Result<PublishAck, CommandError> {
        let fail = |source: async_nats::Error| CommandError {
            kind: callback.kind,
            softphone: to.softphone.clone(),
            source,
        };
        let subject = to.subject().map_err(|e| fail(e.into()))?;
        let body = Bytes::from(match expiry {
            None => callback.json.clone(),
            Some((expires_at, _)) => callback.expiring(expires_at),
        });
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(body)
            .message_id(message_id);
        if let Some((_, ttl)) = expiry {
            publish = publish.ttl(whole_seconds(ttl));
        }
        let ack: PublishAckFuture = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| fail(e.into()))?;
        ack.await.map_err(|e| fail(e.into()))
    }
}

/// A callback serialised once: what a command's idempotency decision hashes
/// and what is published, `{"type": ..., "payload": ...}`.
pub(crate) struct Serialized {
    kind: &'static str,
    json: Vec<u8>,
}

impl Serialized {
    pub(crate) fn new(callback: &Callback) -> Self {
        Self {
            kind: callback.type_name(),
            json: serde_json::to_vec(callback).expect("callbacks serialize"),
        }
    }

    /// `{"type": ..., "payload": ...}`, as published without an expiry.
    pub(crate) fn json(&self) -> &[u8] {
        &self.json
    }

    /// `{"type": ..., "payload": ..., "expiresAt": "<RFC 3339>"}`: the
    /// serialised object with one member more.
    fn expiring(&self, expires_at: OffsetDateTime) -> Vec<u8> {
        let at = expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .expect("a time within RFC 3339's years");
        let object = self
            .json
            .strip_suffix(b"}")
            .expect("a callback serialises to an object");
        let mut body = Vec::with_capacity(self.json.len() + at.len() + 16);
        body.extend_from_slice(object);
        body.extend_from_slice(b",\"expiresAt\":\"");
        body.extend_from_slice(at.as_bytes());
        body.extend_from_slice(b"\"}");
        body
    }
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
    fn with_callout_a_command_goes_to_its_partners_account_only() {
        let phone: SoftphoneId = "agent-7".parse().unwrap();
        let a: Guid = "215fd887-39be-4935-981f-2670d6afeaa7".parse().unwrap();
        assert_eq!(
            Recipient::from(&phone).subject().unwrap(),
            "softphone.cmd.agent-7"
        );
        assert_eq!(
            Recipient::bound(false, &phone, Some(&a)).subject().unwrap(),
            "softphone.cmd.agent-7"
        );
        assert_eq!(
            Recipient::bound(true, &phone, Some(&a)).subject().unwrap(),
            format!("softphone.p.{a}.cmd.agent-7")
        );
        let err = Recipient::bound(true, &phone, None).subject().unwrap_err();
        assert!(err.to_string().contains("bound to no partner"), "{err}");
    }

    #[test]
    fn expiring_commands_say_when_they_expire() {
        let callback = Serialized::new(&Callback::Disposition(vec!["a".into()]));
        let body: serde_json::Value =
            serde_json::from_slice(&callback.expiring(OffsetDateTime::UNIX_EPOCH)).unwrap();
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
