//! Why a command was refused: one variant per answer, with its status, its
//! problem type and a text for the caller.

use crate::contract::SoftphoneId;

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
    /// Unknown, or not within the caller's partners: the same answer, so a
    /// scoped caller learns nothing of other partners' softphones.
    #[error("softphone {0} is not in the registry (it has not loaded recently)")]
    UnknownSoftphone(SoftphoneId),
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "softphone {softphone} has shown no sign of life for {silent_s} s (commands.offline_after = {limit_s} s); the command was not sent"
    )]
    Offline {
        softphone: SoftphoneId,
        silent_s: i64,
        limit_s: u64,
    },
    /// With `[callout]`, a softphone bound to no partner: no account to publish to.
    #[error("{0}")]
    NoPartner(crate::softphones::command::NoPartner),
    /// With `[callout]`, an unscoped caller named no partner: softphone ids
    /// are per partner.
    #[error(
        "with [callout] a softphone id is its partner's: name the partner of softphone {0} (`partnerId`)"
    )]
    PartnerRequired(SoftphoneId),
    /// With `[callout]`, the id is loaded in several of the caller's partners.
    #[error(
        "softphone {softphone} is loaded for several of this caller's partners ({partners}): name one (`partnerId`)"
    )]
    Ambiguous {
        softphone: SoftphoneId,
        partners: String,
    },
    #[error("this Idempotency-Key was used for a different command to this softphone")]
    KeyReused,
    #[error("a request with this Idempotency-Key is still being published; retry shortly")]
    InProgress,
    /// NATS or JetStream trouble; the detail is logged, not returned.
    #[error("NATS is unavailable")]
    Unavailable(String),
}

impl DispatchError {
    pub fn status(&self) -> u16 {
        match self {
            DispatchError::InvalidSoftphone(_)
            | DispatchError::InvalidIdempotencyKey(_)
            | DispatchError::MalformedJson(_)
            | DispatchError::PartnerRequired(_) => 400,
            DispatchError::Forbidden(_) => 403,
            DispatchError::UnknownSoftphone(_) => 404,
            DispatchError::Offline { .. }
            | DispatchError::NoPartner(_)
            | DispatchError::Ambiguous { .. }
            | DispatchError::KeyReused
            | DispatchError::InProgress => 409,
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
            DispatchError::Offline { .. } => "softphone-offline",
            DispatchError::NoPartner(_) => "softphone-without-partner",
            DispatchError::PartnerRequired(_) => "partner-required",
            DispatchError::Ambiguous { .. } => "ambiguous-softphone",
            DispatchError::KeyReused => "idempotency-key-reused",
            DispatchError::InProgress => "in-progress",
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
            DispatchError::Offline { .. } => "Softphone offline",
            DispatchError::NoPartner(_) => "Softphone without a partner",
            DispatchError::PartnerRequired(_) => "Partner required",
            DispatchError::Ambiguous { .. } => "Ambiguous softphone",
            DispatchError::KeyReused => "Idempotency-Key reused",
            DispatchError::InProgress => "In progress",
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
