//! The one command path shared by the HTTP route and the NATS service:
//! validate against the contract, authorise against the registry, publish to
//! `softphone.cmd.<softphoneId>` and wait for the stream's ack.

use async_nats::connection::State;
use serde::Serialize;

use crate::command::CommandPublisher;
use crate::config::UnknownSoftphones;
use crate::contract::{Callback, ContractError, Guid, SoftphoneId};
use crate::metric;
use crate::registry::{Entry, Registry};

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// Whose softphones a caller may command.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Any softphone (an unscoped token; a NATS client the server let in).
    All,
    /// Only softphones registered for one of these partners.
    Partners(&'a [Guid]),
}

/// Where a command came in, for metrics and logs.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    Http,
    Nats,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Nats => "nats",
        }
    }
}

/// A published command: the stream's ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub stream: String,
    pub seq: u64,
    /// True when the stream had the message id already: nothing new was published.
    pub duplicate: bool,
    pub message_id: String,
}

/// Why a command was refused. The texts are for the caller: they name what
/// was wrong and never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("{0}")]
    InvalidSoftphone(String),
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error("{0}")]
    MalformedJson(String),
    #[error("`{field}`: {reason}")]
    Contract { field: String, reason: String },
    #[error("softphone {0} is not in the registry (it has not loaded recently)")]
    UnknownSoftphone(SoftphoneId),
    #[error("{0}")]
    Forbidden(String),
    /// NATS or JetStream trouble; the detail is logged, not returned.
    #[error("NATS is unavailable")]
    Unavailable(String),
}

impl DispatchError {
    pub fn status(&self) -> u16 {
        match self {
            DispatchError::InvalidSoftphone(_)
            | DispatchError::InvalidIdempotencyKey(_)
            | DispatchError::MalformedJson(_) => 400,
            DispatchError::Forbidden(_) => 403,
            DispatchError::UnknownSoftphone(_) => 404,
            DispatchError::Contract { .. } => 422,
            DispatchError::Unavailable(_) => 503,
        }
    }

    /// A short, stable name (the problem type's last segment).
    pub fn slug(&self) -> &'static str {
        match self {
            DispatchError::InvalidSoftphone(_) => "invalid-softphone-id",
            DispatchError::InvalidIdempotencyKey(_) => "invalid-idempotency-key",
            DispatchError::MalformedJson(_) => "malformed-json",
            DispatchError::Contract { .. } => "contract-violation",
            DispatchError::UnknownSoftphone(_) => "unknown-softphone",
            DispatchError::Forbidden(_) => "forbidden",
            DispatchError::Unavailable(_) => "nats-unavailable",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            DispatchError::InvalidSoftphone(_) => "Invalid softphone id",
            DispatchError::InvalidIdempotencyKey(_) => "Invalid Idempotency-Key",
            DispatchError::MalformedJson(_) => "Malformed JSON",
            DispatchError::Contract { .. } => "Contract violation",
            DispatchError::UnknownSoftphone(_) => "Unknown softphone",
            DispatchError::Forbidden(_) => "Forbidden",
            DispatchError::Unavailable(_) => "NATS unavailable",
        }
    }

    /// The offending field of a contract violation.
    pub fn field(&self) -> Option<&str> {
        match self {
            DispatchError::Contract { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Validates, authorises and publishes commands.
#[derive(Clone)]
pub struct Dispatcher {
    client: async_nats::Client,
    publisher: CommandPublisher,
    registry: Registry,
    unknown: UnknownSoftphones,
}

impl Dispatcher {
    pub fn new(
        client: async_nats::Client,
        publisher: CommandPublisher,
        registry: Registry,
        unknown: UnknownSoftphones,
    ) -> Self {
        Self {
            client,
            publisher,
            registry,
            unknown,
        }
    }

    /// Parses a softphone id taken from a path or a request: exactly one NATS token.
    pub fn softphone(raw: &str) -> Result<SoftphoneId, DispatchError> {
        SoftphoneId::try_from(raw.to_owned()).map_err(|e| DispatchError::InvalidSoftphone(e.0))
    }

    /// Validates `body` (`{"type": ..., "payload": ...}`) and publishes it to
    /// `softphone` if `scope` allows. The same `idempotency_key` for the same
    /// softphone within the duplicate window publishes once.
    pub async fn dispatch(
        &self,
        scope: Scope<'_>,
        softphone: &str,
        body: &[u8],
        idempotency_key: Option<&str>,
        via: Via,
    ) -> Result<Accepted, DispatchError> {
        let softphone = Self::softphone(softphone)?;
        let message_id = message_id(&softphone, idempotency_key)?;
        let callback = Callback::decode(body).map_err(|e| match e {
            ContractError::Invalid { field, reason } => DispatchError::Contract { field, reason },
            other => DispatchError::MalformedJson(other.to_string()),
        })?;
        let entry = self.lookup(&softphone).await?;
        if entry.is_none() && self.unknown == UnknownSoftphones::Reject {
            return Err(DispatchError::UnknownSoftphone(softphone));
        }
        authorise(scope, &softphone, entry.as_ref(), callback.partner_id())?;
        let ack = self
            .publisher
            .publish(&softphone, &callback, &message_id)
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        metrics::counter!(metric::COMMANDS, "type" => callback.type_name(), "via" => via.label(), "duplicate" => ack.duplicate.to_string())
            .increment(1);
        tracing::info!(
            softphone = %softphone,
            command = callback.type_name(),
            via = via.label(),
            seq = ack.sequence,
            duplicate = ack.duplicate,
            "Command published."
        );
        Ok(Accepted {
            stream: ack.stream,
            seq: ack.sequence,
            duplicate: ack.duplicate,
            message_id,
        })
    }

    /// What the registry knows of `softphone`, if `scope` may see it.
    pub async fn describe(
        &self,
        scope: Scope<'_>,
        softphone: &str,
    ) -> Result<Entry, DispatchError> {
        let softphone = Self::softphone(softphone)?;
        let entry = self.lookup(&softphone).await?;
        let Some(entry) = entry else {
            return Err(DispatchError::UnknownSoftphone(softphone));
        };
        authorise(scope, &softphone, Some(&entry), None)?;
        Ok(entry)
    }

    async fn lookup(&self, softphone: &SoftphoneId) -> Result<Option<Entry>, DispatchError> {
        // Fail fast: a disconnected client would wait out the request timeout.
        if self.client.connection_state() != State::Connected {
            return Err(DispatchError::Unavailable("not connected to NATS".into()));
        }
        self.registry
            .get(softphone)
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))
    }
}

/// A scoped caller needs the softphone's registered partner, and any partner
/// the command names, to be in its scope.
fn authorise(
    scope: Scope<'_>,
    softphone: &SoftphoneId,
    entry: Option<&Entry>,
    named: Option<&Guid>,
) -> Result<(), DispatchError> {
    let Scope::Partners(allowed) = scope else {
        return Ok(());
    };
    let Some(partner) = entry.and_then(|e| e.partner_id.as_ref()) else {
        return Err(DispatchError::Forbidden(format!(
            "softphone {softphone} has no registered partner; this token may only command its partners' softphones"
        )));
    };
    if !in_scope(allowed, partner) {
        return Err(DispatchError::Forbidden(format!(
            "this token may not command softphones of partner {partner}"
        )));
    }
    if let Some(named) = named.filter(|p| !in_scope(allowed, p)) {
        return Err(DispatchError::Forbidden(format!(
            "this token may not send commands for partner {named}"
        )));
    }
    Ok(())
}

/// GUIDs compare without regard to case (config and softphones may differ).
fn in_scope(allowed: &[Guid], partner: &Guid) -> bool {
    allowed
        .iter()
        .any(|p| p.as_str().eq_ignore_ascii_case(partner.as_str()))
}

/// `Nats-Msg-Id` of a command: the caller's key, scoped to the softphone so two
/// CRMs using the same key for different softphones do not collide; else unique.
fn message_id(softphone: &SoftphoneId, key: Option<&str>) -> Result<String, DispatchError> {
    let Some(key) = key else {
        return Ok(format!("cmd:{softphone}:{}", uuid::Uuid::new_v4()));
    };
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(DispatchError::InvalidIdempotencyKey(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(format!("cmd:{softphone}:key:{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Sighting;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "d6afeaa7-39be-4935-981f-2670215fd887";

    fn entry(partner: Option<&str>) -> Entry {
        let sighting = Sighting::Loaded {
            partner: partner.map(|p| p.parse().unwrap()),
            at: time::OffsetDateTime::UNIX_EPOCH,
        };
        sighting.merge(&"agent-1".parse().unwrap(), None)
    }

    #[test]
    fn scoped_tokens_command_only_their_partners() {
        let phone: SoftphoneId = "agent-1".parse().unwrap();
        let a: Guid = A.parse().unwrap();
        let b: Guid = B.parse().unwrap();
        let only_a = [a.clone()];
        let scope = Scope::Partners(&only_a);
        assert!(authorise(scope, &phone, Some(&entry(Some(A))), None).is_ok());
        assert!(authorise(scope, &phone, Some(&entry(Some(B))), None).is_err());
        assert!(authorise(scope, &phone, Some(&entry(None)), None).is_err());
        assert!(authorise(scope, &phone, None, None).is_err());
        assert!(authorise(scope, &phone, Some(&entry(Some(A))), Some(&b)).is_err());
        assert!(authorise(Scope::All, &phone, None, Some(&b)).is_ok());
        let upper = [A.to_uppercase().parse().unwrap()];
        assert!(
            authorise(
                Scope::Partners(&upper),
                &phone,
                Some(&entry(Some(A))),
                Some(&a)
            )
            .is_ok()
        );
    }

    #[test]
    fn idempotency_keys_are_scoped_and_checked() {
        let phone: SoftphoneId = "agent-1".parse().unwrap();
        assert_eq!(
            message_id(&phone, Some("k1")).unwrap(),
            "cmd:agent-1:key:k1"
        );
        assert_ne!(
            message_id(&phone, None).unwrap(),
            message_id(&phone, None).unwrap()
        );
        for bad in ["", "a b", &"x".repeat(129), "é"] {
            assert!(message_id(&phone, Some(bad)).is_err(), "{bad:?}");
        }
    }
}
