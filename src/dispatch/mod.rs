//! The one command path shared by the HTTP route and the NATS service:
//! validate against the contract, authorise against the registry, refuse
//! offline softphones, decide once per idempotency key, publish to
//! `softphone.cmd.<softphoneId>` (with `[callout]`, to the softphone's bound
//! partner's `softphone.p.<partnerId>.cmd.<softphoneId>`) with an expiry and
//! wait for the stream's ack.

mod error;
mod idempotency;
pub(crate) mod settings;

use async_nats::connection::State;
use serde::Serialize;
use time::OffsetDateTime;

pub use error::DispatchError;
pub use idempotency::{IN_PROGRESS_WAIT, bucket_config, bucket_key, command_hash};
pub use settings::{CommandSettings, UnknownSoftphones};

use crate::contract::{Callback, ContractError, Guid, SoftphoneId};
use crate::softphones::command::{CommandPublisher, Recipient, Serialized};
use crate::softphones::registry::{Entry, Phone, Registry};
use crate::telemetry::metric;
use idempotency::{Claim, Decision, Keys};

/// Longest `Idempotency-Key` accepted, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

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

/// A published command: where the stream stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub stream: String,
    pub seq: u64,
    /// True when an earlier request with this key published the command:
    /// nothing new was published, and `stream`/`seq` are the original's.
    pub duplicate: bool,
    pub message_id: String,
    /// The caller's `Idempotency-Key`, or the one generated for it.
    pub idempotency_key: String,
    /// After this the softphone never receives the command.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A command as it came, read once: the HTTP route's body
/// (`{"type", "payload"}`), or the type and payload of a NATS service
/// request whose envelope the service read.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    Body(&'a [u8]),
    Parts { kind: &'a str, payload: &'a [u8] },
}

impl Command<'_> {
    fn decode(self) -> Result<Callback, ContractError> {
        match self {
            Command::Body(body) => Callback::decode(body),
            Command::Parts { kind, payload } => Callback::from_parts(kind, payload),
        }
    }
}

/// Validates, authorises and publishes commands.
#[derive(Clone)]
pub struct Dispatcher {
    client: async_nats::Client,
    publisher: CommandPublisher,
    registry: Registry,
    keys: Keys,
    unknown: UnknownSoftphones,
    settings: CommandSettings,
    /// With `[callout]`: commands go to the bound partner's account only.
    tenancy: bool,
}

impl Dispatcher {
    pub fn new(
        client: async_nats::Client,
        js: async_nats::jetstream::Context,
        registry: Registry,
        unknown: UnknownSoftphones,
        settings: &CommandSettings,
        tenancy: bool,
    ) -> Self {
        Self {
            tenancy,
            client,
            publisher: CommandPublisher::new(js.clone()),
            registry,
            keys: Keys::new(js, settings),
            unknown,
            settings: settings.clone(),
        }
    }

    /// Parses a softphone id taken from a path or a request: exactly one NATS token.
    pub fn softphone(raw: &str) -> Result<SoftphoneId, DispatchError> {
        SoftphoneId::try_from(raw.to_owned()).map_err(|e| DispatchError::InvalidSoftphone(e.0))
    }

    /// Validates `body` (`{"type": ..., "payload": ...}`) and publishes it to
    /// `softphone` if `scope` allows and the softphone is online. One
    /// `idempotency_key` per softphone publishes once within
    /// `commands.idempotency_ttl`, on every replica; without a key one is generated.
    pub async fn dispatch(
        &self,
        scope: Scope<'_>,
        softphone: &str,
        partner: Option<&str>,
        command: Command<'_>,
        idempotency_key: Option<&str>,
        via: Via,
    ) -> Result<Accepted, DispatchError> {
        let softphone = Self::softphone(softphone)?;
        let key = match idempotency_key {
            Some(key) => check_key(key)?.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let callback = command.decode().map_err(|e| match e {
            ContractError::Invalid { field, reason } => DispatchError::Contract { field, reason },
            other => DispatchError::MalformedJson(other.to_string()),
        })?;
        let chosen = chosen(partner, callback.partner_id())?;
        let (entry, candidate) = self.lookup(scope, &softphone, chosen.as_ref()).await?;
        if entry.is_none() && self.unknown == UnknownSoftphones::Reject {
            return Err(DispatchError::UnknownSoftphone(softphone));
        }
        authorise(scope, &softphone, entry.as_ref(), callback.partner_id())?;
        // A softphone the registry does not know (`allow`) gets the command
        // in the one partner's account it can be in, if there is one.
        let recipient = Recipient::bound(
            self.tenancy,
            &softphone,
            entry
                .as_ref()
                .and_then(|e| e.partner_id.as_ref())
                .or(candidate.as_ref()),
        );
        recipient.subject().map_err(DispatchError::NoPartner)?;
        let now = OffsetDateTime::now_utc();
        let bucket_key = idempotency::bucket_key(&softphone, &key);
        let ttl = match callback {
            Callback::StartCall(_) => self.settings.start_call_ttl,
            _ => self.settings.ttl,
        };
        let serialized = Serialized::new(&callback);
        let decision = Decision {
            body_hash: idempotency::hash(&serialized),
            message_id: format!("cmd:{softphone}:key:{key}"),
            expires_at: now + ttl,
            stream: None,
            seq: None,
        };
        if let Some(entry) = entry
            .as_ref()
            .filter(|e| e.offline(now, self.settings.offline_after))
        {
            // A retry of a command published while the softphone was online
            // still gets the original answer.
            if let Ok(Claim::Published(earlier)) = self.keys.peek(&bucket_key, &decision).await {
                return Ok(self.answer(&softphone, &callback, key, earlier, true, via));
            }
            return Err(DispatchError::Offline {
                softphone,
                silent_s: (now - entry.last_seen).whole_seconds(),
                limit_s: self.settings.offline_after.as_secs(),
            });
        }
        let revision = match self
            .keys
            .claim(&bucket_key, &decision)
            .await
            .map_err(DispatchError::Unavailable)?
        {
            Claim::Won { revision } => revision,
            Claim::Published(earlier) => {
                return Ok(self.answer(&softphone, &callback, key, earlier, true, via));
            }
            Claim::Conflict => return Err(DispatchError::KeyReused),
            Claim::InProgress => return Err(DispatchError::InProgress),
        };
        let ack = match self
            .publisher
            .publish_expiring(
                recipient,
                &serialized,
                &decision.message_id,
                decision.expires_at,
                ttl,
            )
            .await
        {
            Ok(ack) => ack,
            Err(e) => {
                self.keys.abandon(&bucket_key, revision).await;
                return Err(DispatchError::Unavailable(e.to_string()));
            }
        };
        let published = Decision {
            stream: Some(ack.stream),
            seq: Some(ack.sequence),
            ..decision
        };
        if let Err(e) = self.keys.complete(&bucket_key, revision, &published).await {
            // Published all the same: retries wait, then get 409 in-progress
            // until the command expires.
            tracing::warn!(softphone = %softphone, error = %e, "Command published, but its idempotency decision was not recorded.");
        }
        // A stream that already had the message id stored nothing new either.
        Ok(self.answer(&softphone, &callback, key, published, ack.duplicate, via))
    }

    fn answer(
        &self,
        softphone: &SoftphoneId,
        callback: &Callback,
        key: String,
        decision: Decision,
        duplicate: bool,
        via: Via,
    ) -> Accepted {
        let seq = decision.seq.unwrap_or_default();
        metrics::counter!(metric::COMMANDS, "type" => callback.type_name(), "via" => via.label(), "duplicate" => duplicate.to_string())
            .increment(1);
        let said = if duplicate {
            "Command repeated; answered as first published, nothing sent."
        } else {
            "Command published."
        };
        tracing::info!(
            softphone = %softphone,
            command = callback.type_name(),
            via = via.label(),
            seq,
            "{said}"
        );
        Accepted {
            stream: decision.stream.unwrap_or_default(),
            seq,
            duplicate,
            message_id: decision.message_id,
            idempotency_key: key,
            expires_at: decision.expires_at,
        }
    }

    /// What the registry knows of `softphone`, if `scope` may see it.
    pub async fn describe(
        &self,
        scope: Scope<'_>,
        softphone: &str,
        partner: Option<&str>,
    ) -> Result<Entry, DispatchError> {
        let softphone = Self::softphone(softphone)?;
        let chosen = chosen(partner, None)?;
        let (entry, _) = self.lookup(scope, &softphone, chosen.as_ref()).await?;
        let Some(entry) = entry else {
            return Err(DispatchError::UnknownSoftphone(softphone));
        };
        authorise(scope, &softphone, Some(&entry), None)?;
        Ok(entry)
    }

    /// What the registry knows of `softphone`. In the single account its one
    /// entry. With `[callout]` a softphone id is its partner's: the entry in
    /// the `chosen` partner, else in the one of the caller's partners that
    /// has it (several: [`DispatchError::Ambiguous`]); an unscoped caller
    /// must choose. Also the partner it can only be in, when there is one
    /// (chosen, or the scope's only one), for a softphone the registry does
    /// not know.
    async fn lookup(
        &self,
        scope: Scope<'_>,
        softphone: &SoftphoneId,
        chosen: Option<&Guid>,
    ) -> Result<(Option<Entry>, Option<Guid>), DispatchError> {
        // Fail fast: a disconnected client would wait out the request timeout.
        if self.client.connection_state() != State::Connected {
            return Err(DispatchError::Unavailable("not connected to NATS".into()));
        }
        if !self.tenancy {
            return Ok((self.entry(Phone::shared(softphone)).await?, None));
        }
        let partners: &[Guid] = match (chosen, scope) {
            // Never a look at another partner's softphones.
            (Some(chosen), Scope::Partners(allowed)) if !in_scope(allowed, chosen) => {
                return Err(DispatchError::Forbidden(format!(
                    "this token may not send commands for partner {chosen}"
                )));
            }
            (Some(chosen), _) => std::slice::from_ref(chosen),
            (None, Scope::Partners(partners)) => partners,
            (None, Scope::All) => return Err(DispatchError::PartnerRequired(softphone.clone())),
        };
        let mut found = Vec::new();
        for some in partners.chunks(LOOKUPS_AT_ONCE) {
            let entries = futures::future::try_join_all(
                some.iter()
                    .map(|partner| self.entry(Phone::of(partner, softphone))),
            )
            .await?;
            found.extend(entries.into_iter().flatten());
        }
        let only = match partners {
            [only] => Some(only.clone()),
            _ => None,
        };
        match found.len() {
            0 | 1 => Ok((found.pop(), only)),
            _ => Err(DispatchError::Ambiguous {
                softphone: softphone.clone(),
                partners: found
                    .iter()
                    .filter_map(|e| e.partner_id.as_ref().map(Guid::as_str))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

impl Dispatcher {
    async fn entry(&self, phone: Phone<'_>) -> Result<Option<Entry>, DispatchError> {
        self.registry
            .get(phone)
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))
    }
}

/// Registry reads one lookup makes at once, over a caller's partners.
const LOOKUPS_AT_ONCE: usize = 32;

/// The partner a caller chose for a softphone: the one it gave (`partnerId`
/// beside the softphone id), else the one its command names; both must agree.
fn chosen(given: Option<&str>, named: Option<&Guid>) -> Result<Option<Guid>, DispatchError> {
    let given = given
        .map(|raw| {
            Guid::try_from(raw.to_owned()).map_err(|e| DispatchError::Contract {
                field: "partnerId".into(),
                reason: e.0,
            })
        })
        .transpose()?;
    match (given, named) {
        (Some(given), Some(named)) if !given.as_str().eq_ignore_ascii_case(named.as_str()) => {
            Err(DispatchError::Contract {
                field: "partnerId".into(),
                reason: format!("the command names partner {named}, not {given}"),
            })
        }
        (Some(given), _) => Ok(Some(given)),
        (None, named) => Ok(named.cloned()),
    }
}

/// A scoped caller needs the softphone's bound partner, and any partner the
/// command names, to be in its scope.
fn authorise(
    scope: Scope<'_>,
    softphone: &SoftphoneId,
    entry: Option<&Entry>,
    named: Option<&Guid>,
) -> Result<(), DispatchError> {
    let Scope::Partners(allowed) = scope else {
        return Ok(());
    };
    // Another partner's softphone, one without a partner and an unknown one
    // look the same to a scoped caller.
    let partner = entry.and_then(|e| e.partner_id.as_ref());
    if !partner.is_some_and(|partner| in_scope(allowed, partner)) {
        return Err(DispatchError::UnknownSoftphone(softphone.clone()));
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

/// An `Idempotency-Key` as given: 1 to 128 printable ASCII characters.
fn check_key(key: &str) -> Result<&str, DispatchError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(DispatchError::InvalidIdempotencyKey(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softphones::registry::Sighting;

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
        // Out of reach and unknown are one answer: 404.
        for hidden in [Some(entry(Some(B))), Some(entry(None)), None] {
            let err = authorise(scope, &phone, hidden.as_ref(), None).unwrap_err();
            assert_eq!(err.status(), 404, "{err}");
        }
        let err = authorise(scope, &phone, Some(&entry(Some(A))), Some(&b)).unwrap_err();
        assert_eq!(err.status(), 403, "{err}");
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
    fn idempotency_keys_are_checked() {
        assert_eq!(check_key("k1").unwrap(), "k1");
        for bad in ["", "a b", &"x".repeat(129), "é"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
