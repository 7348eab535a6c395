//! The softphone registry: a JetStream key-value bucket of softphone ->
//! partner, load time, presence status and last sign of life, written by the
//! worker (and heartbeats) and read by the command API.
//!
//! Which entry a fact goes to is a [`Phone`]:
//! - with `[callout]`, a softphone of a partner's account is keyed by the
//!   partner the server vouches for (the account its login is in) and its id,
//!   `<partnerId>.<softphoneId>`: two partners' `agent-7` are two entries,
//!   each bound to its partner from its first fact, and no other partner's
//!   event can reach it (deploy/tenancy.md);
//! - in the single account, a softphone is keyed by its id alone, and its
//!   partner is the publisher's word: bound by the first `loaded` that names
//!   one, it stays bound while the entry lives. Every later fact obeys the
//!   binding: a `loaded` or a `status_changed` naming another partner
//!   changes nothing and is refused ([`RegistryError::is_partner_conflict`]),
//!   so one partner's events can neither move a live softphone into its
//!   reach nor touch another partner's softphone.
//!
//! Heartbeats never create an entry: they only refresh the last sign of life
//! of a softphone the registry knows.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::broker::bucket::Bucket;
use crate::contract::{AgentStatusChanged, EventKind, Guid, Loaded, SoftphoneId};

/// The softphone registry: softphone id -> partner, load time, presence, last seen.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Key-value bucket name (letters, digits, `-`, `_`).
    pub bucket: String,
    /// An entry not written for this long expires (the bucket's max age).
    #[serde(with = "humantime_serde")]
    pub idle_ttl: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            bucket: "SOFTPHONE_REGISTRY".into(),
            idle_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// How often a write retries after another replica updated the same entry first.
const MAX_CONFLICTS: u32 = 32;

/// Whose entry: a softphone id, and with `[callout]` the partner the server
/// vouches for (the account the softphone's login is in).
#[derive(Debug, Clone, Copy)]
pub struct Phone<'a> {
    pub partner: Option<&'a Guid>,
    pub softphone: &'a SoftphoneId,
}

impl<'a> Phone<'a> {
    /// A softphone of the single account.
    pub fn shared(softphone: &'a SoftphoneId) -> Self {
        Self {
            partner: None,
            softphone,
        }
    }

    /// A softphone of `partner`'s account.
    pub fn of(partner: &'a Guid, softphone: &'a SoftphoneId) -> Self {
        Self {
            partner: Some(partner),
            softphone,
        }
    }

    /// Its key in the bucket: `<partnerId>.<softphone>` for a partner's,
    /// `<softphone>` for the single account's, the softphone id escaped
    /// (keys allow fewer characters than subject tokens: any other byte, and
    /// the escape `=` itself, is written `=XX`). Injective: an escaped id
    /// never holds a `.`, a GUID never a `=`.
    pub fn key(&self) -> String {
        let id = self.softphone.as_str();
        let mut key = String::with_capacity(id.len() + 37);
        if let Some(partner) = self.partner {
            key.push_str(partner.as_str());
            key.push('.');
        }
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                key.push(b as char);
            } else {
                key.push_str(&format!("={b:02X}"));
            }
        }
        key
    }
}

impl std::fmt::Display for Phone<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.partner {
            Some(partner) => write!(f, "{} of partner {partner}", self.softphone),
            None => write!(f, "{}", self.softphone),
        }
    }
}

/// What the registry knows of one softphone instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub softphone_id: SoftphoneId,
    /// Its partner: the one its login is in (with `[callout]`), else the
    /// one the first `load` that named one named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<Guid>,
    /// When the latest `load` was published.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub loaded_at: Option<OffsetDateTime>,
    /// The GUID of the latest presence status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_status: Option<Guid>,
    /// When that status change was published.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub presence_changed_at: Option<OffsetDateTime>,
    /// The latest sign of life: an event about this softphone or a heartbeat.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

impl Entry {
    /// An entry that knows nothing yet but that `softphone` was seen `at`.
    fn new(softphone: &SoftphoneId, at: OffsetDateTime) -> Self {
        Self {
            softphone_id: softphone.clone(),
            partner_id: None,
            loaded_at: None,
            presence_status: None,
            presence_changed_at: None,
            last_seen: at,
        }
    }

    /// Whether the softphone's last sign of life is older than `offline_after`.
    pub fn offline(&self, now: OffsetDateTime, offline_after: std::time::Duration) -> bool {
        now - self.last_seen > offline_after
    }
}

/// One fact learnt from an event, with the event's publication time so that
/// replicas handling events out of order still converge on the latest facts.
#[derive(Debug, Clone)]
pub(crate) enum Sighting {
    Loaded {
        partner: Option<Guid>,
        at: OffsetDateTime,
    },
    Status {
        status: Guid,
        /// The partner the event names, checked against the binding (never bound by it).
        partner: Option<Guid>,
        at: OffsetDateTime,
    },
    /// A heartbeat: only the last sign of life; it names no partner.
    Alive { at: OffsetDateTime },
}

/// A fact naming another partner than the one the entry is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartnerConflict {
    pub bound: Guid,
    pub named: Guid,
}

impl Sighting {
    fn at(&self) -> OffsetDateTime {
        match self {
            Sighting::Loaded { at, .. } | Sighting::Status { at, .. } | Sighting::Alive { at } => {
                *at
            }
        }
    }

    /// The partner this sighting names, if any.
    fn partner(&self) -> Option<&Guid> {
        match self {
            Sighting::Loaded { partner, .. } | Sighting::Status { partner, .. } => partner.as_ref(),
            Sighting::Alive { .. } => None,
        }
    }

    /// What the sighting came from, for the partner-conflict metric's `type`:
    /// the event's name (`loaded`, `agent.status_changed`) or `heartbeat`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Sighting::Loaded { .. } => EventKind::Loaded.name(),
            Sighting::Status { .. } => EventKind::AgentStatusChanged.name(),
            Sighting::Alive { .. } => "heartbeat",
        }
    }

    #[cfg(test)]
    /// `entry` with this sighting merged in; newer facts win, whatever the
    /// order, except the partner: the first one named stays bound.
    pub(crate) fn merge(&self, softphone: &SoftphoneId, entry: Option<Entry>) -> Entry {
        match (self.conflict(entry.as_ref()), entry) {
            (Some(_), Some(unchanged)) => unchanged,
            (_, entry) => self.try_merge(softphone, entry).expect("no conflict"),
        }
    }

    /// The partner conflict this sighting would cause in `entry`, if any:
    /// it names a partner, and the entry is bound to another.
    fn conflict(&self, entry: Option<&Entry>) -> Option<PartnerConflict> {
        let (Some(named), Some(bound)) =
            (self.partner(), entry.and_then(|e| e.partner_id.as_ref()))
        else {
            return None;
        };
        (!bound.as_str().eq_ignore_ascii_case(named.as_str())).then(|| PartnerConflict {
            bound: bound.clone(),
            named: named.clone(),
        })
    }

    /// Like [`Sighting::merge`], refusing a sighting that names another
    /// partner than the bound one.
    pub(crate) fn try_merge(
        &self,
        softphone: &SoftphoneId,
        entry: Option<Entry>,
    ) -> Result<Entry, PartnerConflict> {
        if let Some(conflict) = self.conflict(entry.as_ref()) {
            return Err(conflict);
        }
        let mut entry = entry.unwrap_or_else(|| Entry::new(softphone, self.at()));
        entry.last_seen = entry.last_seen.max(self.at());
        match self {
            Sighting::Loaded { partner, at } => {
                if entry.loaded_at.is_none_or(|t| t <= *at) {
                    entry.loaded_at = Some(*at);
                }
                // Bound once, by a `loaded` only; one naming none leaves
                // the binding alone.
                if entry.partner_id.is_none() {
                    entry.partner_id = partner.clone();
                }
            }
            Sighting::Status { status, at, .. }
                if entry.presence_changed_at.is_none_or(|t| t <= *at) =>
            {
                entry.presence_changed_at = Some(*at);
                entry.presence_status = Some(status.clone());
            }
            _ => {}
        }
        Ok(entry)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("softphone registry: {reason}")]
pub struct RegistryError {
    reason: String,
    conflict: bool,
}

impl RegistryError {
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            conflict: false,
        }
    }

    /// An event naming another partner than the bound one.
    pub(crate) fn partner_conflict(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            conflict: true,
        }
    }

    /// The event named another partner than the one the softphone is bound
    /// to: the event's own fault, not NATS trouble.
    pub(crate) fn is_partner_conflict(&self) -> bool {
        self.conflict
    }
}

/// A handle on the registry bucket, opened on first use.
#[derive(Clone)]
pub struct Registry {
    bucket: Bucket,
}

impl Registry {
    pub fn new(js: jetstream::Context, settings: &RegistrySettings) -> Self {
        Self {
            bucket: Bucket::new(js, &settings.bucket),
        }
    }

    async fn store(&self) -> Result<&kv::Store, RegistryError> {
        self.bucket
            .open()
            .await
            .map_err(|e| RegistryError::new(e.to_string()))
    }

    /// The registry's entry for `phone`, if it has a live one.
    pub async fn get(&self, phone: Phone<'_>) -> Result<Option<Entry>, RegistryError> {
        let store = self.store().await?;
        let found = store
            .entry(phone.key())
            .await
            .map_err(|e| RegistryError::new(format!("cannot read {phone}: {e}")))?;
        let Some(found) = found.filter(|found| found.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let entry = serde_json::from_slice(&found.value)
            .map_err(|e| RegistryError::new(format!("entry of {phone} is not readable: {e}")))?;
        Ok(Some(entry))
    }

    /// Records a `load`, published from `vouched`'s account when the server
    /// vouches for one (the entry is then that partner's). In the single
    /// account, a `load` naming another partner than the bound one changes
    /// nothing, is counted, and fails with a partner conflict; the first one
    /// naming a partner binds it.
    pub async fn loaded(
        &self,
        event: &Loaded,
        vouched: Option<&Guid>,
        at: OffsetDateTime,
    ) -> Result<Entry, RegistryError> {
        let sighting = Sighting::Loaded {
            partner: vouched.or(event.partner_id.as_ref()).cloned(),
            at,
        };
        let phone = Phone {
            partner: vouched,
            softphone: &event.softphone_id,
        };
        self.record(phone, &sighting, true)
            .await
            .map(|entry| entry.expect("created when missing"))
    }

    /// Records a heartbeat: refreshes the last sign of life of a softphone the
    /// registry knows (`None` for one it does not: a heartbeat binds nothing).
    pub async fn alive(
        &self,
        phone: Phone<'_>,
        at: OffsetDateTime,
    ) -> Result<Option<Entry>, RegistryError> {
        self.record(phone, &Sighting::Alive { at }, false).await
    }

    /// Records a presence change (published from `vouched`'s account, as for
    /// [`Registry::loaded`]); `None` when the event names no softphone
    /// instance. In the single account, one naming another partner than the
    /// bound one changes nothing (neither presence nor last sign of life), is
    /// counted, and fails with a partner conflict; it never binds a partner.
    pub async fn status_changed(
        &self,
        event: &AgentStatusChanged,
        vouched: Option<&Guid>,
        at: OffsetDateTime,
    ) -> Result<Option<Entry>, RegistryError> {
        let Some(softphone) = &event.instance_id else {
            return Ok(None);
        };
        let sighting = Sighting::Status {
            status: event.softphone_id.clone(),
            partner: vouched.or(event.partner_id.as_ref()).cloned(),
            at,
        };
        let phone = Phone {
            partner: vouched,
            softphone,
        };
        self.record(phone, &sighting, true).await
    }

    /// Read, merge, write with the revision read: a replica that wrote in
    /// between makes the write fail, and the merge is redone on its value.
    /// Without `create`, a missing entry stays missing (`None`). A partner's
    /// entry is bound to that partner from its first fact.
    async fn record(
        &self,
        phone: Phone<'_>,
        sighting: &Sighting,
        create: bool,
    ) -> Result<Option<Entry>, RegistryError> {
        let store = self.store().await?;
        let key = phone.key();
        let softphone = phone.softphone;
        for attempt in 0..MAX_CONFLICTS {
            let current = store
                .entry(key.clone())
                .await
                .map_err(|e| RegistryError::new(format!("cannot read {phone}: {e}")))?;
            let (previous, revision) = match current {
                Some(found) if found.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Entry>(&found.value).ok(),
                    Some(found.revision),
                ),
                // A deleted or purged key is written over its marker's revision.
                Some(found) => (None, Some(found.revision)),
                None => (None, None),
            };
            if previous.is_none() && !create {
                return Ok(None);
            }
            let stored = previous.is_some();
            let previous = previous.or_else(|| {
                phone.partner.map(|partner| Entry {
                    partner_id: Some(partner.clone()),
                    ..Entry::new(softphone, sighting.at())
                })
            });
            let entry = sighting
                .try_merge(softphone, previous.clone())
                .map_err(|conflict| {
                    let kind = sighting.kind();
                    metrics::counter!(crate::telemetry::metric::PARTNER_CONFLICTS, "type" => kind)
                        .increment(1);
                    tracing::warn!(
                        softphone = %softphone,
                        event = kind,
                        bound = %conflict.bound,
                        named = %conflict.named,
                        "An event names another partner than the softphone's; refused."
                    );
                    RegistryError::partner_conflict(format!(
                        "{softphone} is bound to partner {}; the event names {}",
                        conflict.bound, conflict.named
                    ))
                })?;
            if stored && previous.as_ref() == Some(&entry) {
                // An older fact than the entry's: nothing to write.
                return Ok(Some(entry));
            }
            let value = serde_json::to_vec(&entry)
                .expect("entries serialize")
                .into();
            let written = match revision {
                Some(revision) => store.update(&key, value, revision).await.map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => store.create(&key, value).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(_) => return Ok(Some(entry)),
                Err((true, _)) => {
                    tracing::debug!(softphone = %phone, attempt, "Registry entry changed meanwhile; merging again.");
                    // Random pause so writers that collided do not collide again in lockstep.
                    tokio::time::sleep(jitter(attempt)).await;
                }
                Err((false, e)) => {
                    return Err(RegistryError::new(format!("cannot write {phone}: {e}")));
                }
            }
        }
        Err(RegistryError::new(format!(
            "{phone} kept changing; gave up after {MAX_CONFLICTS} attempts"
        )))
    }
}

/// Up to 1 ms per attempt so far, at random.
fn jitter(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    std::time::Duration::from_micros(random % (1000 * u64::from(attempt + 1)))
}

/// The bucket's configuration, for provisioning.
pub fn bucket_config(settings: &RegistrySettings, replicas: usize) -> kv::Config {
    crate::broker::bucket::config(
        &settings.bucket,
        "softphone id -> partner, load time, presence, last seen",
        settings.idle_ttl,
        replicas,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const S1: &str = "9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d";
    const S2: &str = "d6afeaa7-39be-4935-981f-2670215fd887";

    fn id(s: &str) -> SoftphoneId {
        s.parse().unwrap()
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn keys_are_valid_and_distinct() {
        let key = |s| Phone::shared(&id(s)).key();
        assert_eq!(key("agent-7_x"), "agent-7_x");
        assert_eq!(key("a:b"), "a=3Ab");
        assert_ne!(key("a=3Ab"), key("a:b"));
        // Two partners' `agent-7` and the single account's are three entries.
        let (a, b): (Guid, Guid) = (A.parse().unwrap(), S2.parse().unwrap());
        let phone = id("agent-7");
        let keys = [
            Phone::of(&a, &phone).key(),
            Phone::of(&b, &phone).key(),
            Phone::shared(&phone).key(),
        ];
        assert_eq!(keys[0], format!("{A}.agent-7"));
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    }

    #[test]
    fn merges_converge_whatever_the_order() {
        let phone = id("agent-1");
        let facts = [
            Sighting::Loaded {
                partner: Some(A.parse().unwrap()),
                at: at(0),
            },
            Sighting::Status {
                status: S1.parse().unwrap(),
                partner: None,
                at: at(1),
            },
            Sighting::Status {
                status: S2.parse().unwrap(),
                partner: Some(A.parse().unwrap()),
                at: at(2),
            },
        ];
        let forward = facts
            .iter()
            .fold(None, |e, f| Some(f.merge(&phone, e)))
            .unwrap();
        let backward = facts
            .iter()
            .rev()
            .fold(None, |e, f| Some(f.merge(&phone, e)))
            .unwrap();
        assert_eq!(forward, backward);
        assert_eq!(forward.presence_status.unwrap().as_str(), S2);
        assert_eq!(forward.partner_id.unwrap().as_str(), A);
        assert_eq!(forward.last_seen, at(2));
    }

    #[test]
    fn the_first_partner_stays_bound() {
        let phone = id("agent-1");
        let load = |partner: Option<&str>, secs| Sighting::Loaded {
            partner: partner.map(|p| p.parse().unwrap()),
            at: at(secs),
        };
        let bound = load(Some(A), 0).merge(&phone, None);
        let conflict = load(Some(S2), 5)
            .try_merge(&phone, Some(bound.clone()))
            .unwrap_err();
        assert_eq!(conflict.named.as_str(), S2);
        assert_eq!(
            load(Some(S2), 5).merge(&phone, Some(bound.clone())),
            bound,
            "a conflicting load changes nothing"
        );
        // The same partner (in any case) and a load naming none keep the binding.
        let again = load(Some(&A.to_uppercase()), 6)
            .try_merge(&phone, Some(bound.clone()))
            .unwrap();
        let anonymous = load(None, 7).try_merge(&phone, Some(again)).unwrap();
        assert_eq!(anonymous.partner_id.unwrap().as_str(), A);
        assert_eq!(anonymous.loaded_at, Some(at(7)));
        // A heartbeat only refreshes the last sign of life.
        let alive = Sighting::Alive { at: at(9) }.merge(&phone, Some(bound.clone()));
        assert_eq!(alive.last_seen, at(9));
        assert_eq!(alive.loaded_at, bound.loaded_at);
    }

    #[test]
    fn status_changes_and_heartbeats_obey_the_binding() {
        let phone = id("agent-1");
        let status = |partner: Option<&str>, secs| Sighting::Status {
            status: S1.parse().unwrap(),
            partner: partner.map(|p| p.parse().unwrap()),
            at: at(secs),
        };
        let bound = Sighting::Loaded {
            partner: Some(A.parse().unwrap()),
            at: at(0),
        }
        .merge(&phone, None);

        // Another partner's status change touches neither presence nor last sign of life.
        let conflict = status(Some(S2), 5)
            .try_merge(&phone, Some(bound.clone()))
            .unwrap_err();
        assert_eq!((conflict.bound.as_str(), conflict.named.as_str()), (A, S2));
        assert_eq!(
            status(Some(S2), 5).merge(&phone, Some(bound.clone())),
            bound
        );
        assert_eq!(status(Some(S2), 5).kind(), "agent.status_changed");

        // The bound partner's (in any case), or one naming none, applies.
        for partner in [Some(A.to_uppercase()), None] {
            let applied = status(partner.as_deref(), 5)
                .try_merge(&phone, Some(bound.clone()))
                .unwrap();
            assert_eq!(applied.presence_status.unwrap().as_str(), S1);
            assert_eq!(applied.last_seen, at(5));
        }

        // A status change never binds: the first `loaded` naming a partner does.
        let unbound = status(Some(S2), 1).merge(&phone, None);
        assert_eq!(unbound.partner_id, None);
        let loaded = Sighting::Loaded {
            partner: Some(A.parse().unwrap()),
            at: at(2),
        }
        .try_merge(&phone, Some(unbound))
        .unwrap();
        assert_eq!(loaded.partner_id.unwrap().as_str(), A);

        // A heartbeat names no partner: it cannot conflict, bind or move one.
        let beat = Sighting::Alive { at: at(9) };
        assert_eq!(beat.kind(), "heartbeat");
        let alive = beat.try_merge(&phone, Some(bound.clone())).unwrap();
        assert_eq!(alive.partner_id, bound.partner_id);
        assert_eq!(beat.merge(&phone, None).partner_id, None);
    }

    #[test]
    fn entries_render_in_camel_case() {
        let entry = Sighting::Loaded {
            partner: Some(A.parse().unwrap()),
            at: at(0),
        }
        .merge(&id("x"), None);
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["partnerId"], A);
        assert!(json["loadedAt"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("presenceStatus").is_none());
    }
}
