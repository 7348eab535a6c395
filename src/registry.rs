//! The softphone registry: a JetStream key-value bucket of softphone id ->
//! partner, load time, presence status and last sign of life, written by the
//! worker (and heartbeats) and read by the command API.
//!
//! A softphone's partner is bound by the first `loaded` that names one and
//! stays bound while the entry lives. Every later fact obeys the binding: a
//! `loaded` or a `status_changed` naming another partner changes nothing and
//! is refused ([`RegistryError::is_partner_conflict`]), so one partner's
//! events can neither move a live softphone into its reach nor touch another
//! partner's softphone. Heartbeats name no partner: they never bind, never
//! create an entry, and only refresh the last sign of life of a softphone the
//! registry knows. (Until softphones log in with credentials of their own,
//! the partner an event names is the publisher's word; with logins, the
//! binding and the heartbeat's partner will come from the login.)

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bucket::Bucket;
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

/// What the registry knows of one softphone instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub softphone_id: SoftphoneId,
    /// The partner bound by the first `load` that named one.
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
    /// Whether the softphone's last sign of life is older than `offline_after`.
    pub fn offline(&self, now: OffsetDateTime, offline_after: std::time::Duration) -> bool {
        now - self.last_seen > offline_after
    }
}

/// One fact learnt from an event, with the event's publication time so that
/// replicas handling events out of order still converge on the latest facts.
#[derive(Debug, Clone)]
pub enum Sighting {
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
pub struct PartnerConflict {
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
    pub fn kind(&self) -> &'static str {
        match self {
            Sighting::Loaded { .. } => EventKind::Loaded.name(),
            Sighting::Status { .. } => EventKind::AgentStatusChanged.name(),
            Sighting::Alive { .. } => "heartbeat",
        }
    }

    /// `entry` with this sighting merged in; newer facts win, whatever the
    /// order, except the partner: the first one named stays bound.
    pub fn merge(&self, softphone: &SoftphoneId, entry: Option<Entry>) -> Entry {
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
    pub fn try_merge(
        &self,
        softphone: &SoftphoneId,
        entry: Option<Entry>,
    ) -> Result<Entry, PartnerConflict> {
        if let Some(conflict) = self.conflict(entry.as_ref()) {
            return Err(conflict);
        }
        let mut entry = entry.unwrap_or_else(|| Entry {
            softphone_id: softphone.clone(),
            partner_id: None,
            loaded_at: None,
            presence_status: None,
            presence_changed_at: None,
            last_seen: self.at(),
        });
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
    pub fn partner_conflict(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            conflict: true,
        }
    }

    /// The event named another partner than the one the softphone is bound
    /// to: the event's own fault, not NATS trouble.
    pub fn is_partner_conflict(&self) -> bool {
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

    /// The registry's entry for `softphone`, if it has a live one.
    pub async fn get(&self, softphone: &SoftphoneId) -> Result<Option<Entry>, RegistryError> {
        Ok(self.entry(softphone).await?.map(|(entry, _)| entry))
    }

    async fn entry(&self, softphone: &SoftphoneId) -> Result<Option<(Entry, u64)>, RegistryError> {
        let store = self.store().await?;
        let found = store
            .entry(key(softphone))
            .await
            .map_err(|e| RegistryError::new(format!("cannot read {softphone}: {e}")))?;
        let Some(found) = found else { return Ok(None) };
        if found.operation != kv::Operation::Put {
            return Ok(None);
        }
        let entry = serde_json::from_slice(&found.value).map_err(|e| {
            RegistryError::new(format!("entry of {softphone} is not readable: {e}"))
        })?;
        Ok(Some((entry, found.revision)))
    }

    /// Records a `load`. A `load` naming another partner than the bound one
    /// changes nothing, is counted, and fails with a partner conflict; the
    /// first one naming a partner binds it.
    pub async fn loaded(&self, event: &Loaded, at: OffsetDateTime) -> Result<Entry, RegistryError> {
        let sighting = Sighting::Loaded {
            partner: event.partner_id.clone(),
            at,
        };
        self.record(&event.softphone_id, &sighting, true, None)
            .await
            .map(|entry| entry.expect("created when missing"))
    }

    /// Records a heartbeat: refreshes the last sign of life of a softphone the
    /// registry knows (`None` for one it does not: a heartbeat binds nothing).
    pub async fn alive(
        &self,
        softphone: &SoftphoneId,
        at: OffsetDateTime,
    ) -> Result<Option<Entry>, RegistryError> {
        self.record(softphone, &Sighting::Alive { at }, false, None)
            .await
    }

    /// Records a heartbeat from a partner's account: like [`Registry::alive`],
    /// for a softphone bound to `partner` only (`None` for any other, bound
    /// to another partner or to none), checked on the value it writes over.
    pub async fn alive_in(
        &self,
        partner: &Guid,
        softphone: &SoftphoneId,
        at: OffsetDateTime,
    ) -> Result<Option<Entry>, RegistryError> {
        self.record(softphone, &Sighting::Alive { at }, false, Some(partner))
            .await
    }

    /// Records a presence change; `None` when the event names no softphone
    /// instance. Like a `load`, one naming another partner than the bound one
    /// changes nothing (neither presence nor last sign of life), is counted,
    /// and fails with a partner conflict; it never binds a partner.
    pub async fn status_changed(
        &self,
        event: &AgentStatusChanged,
        at: OffsetDateTime,
    ) -> Result<Option<Entry>, RegistryError> {
        let Some(softphone) = &event.instance_id else {
            return Ok(None);
        };
        let sighting = Sighting::Status {
            status: event.softphone_id.clone(),
            partner: event.partner_id.clone(),
            at,
        };
        self.record(softphone, &sighting, true, None).await
    }

    /// Read, merge, write with the revision read: a replica that wrote in
    /// between makes the write fail, and the merge is redone on its value.
    /// Without `create`, a missing entry stays missing (`None`); with
    /// `bound_to`, so does one not bound to that partner.
    async fn record(
        &self,
        softphone: &SoftphoneId,
        sighting: &Sighting,
        create: bool,
        bound_to: Option<&Guid>,
    ) -> Result<Option<Entry>, RegistryError> {
        let store = self.store().await?;
        let key = key(softphone);
        for attempt in 0..MAX_CONFLICTS {
            let current = store
                .entry(key.clone())
                .await
                .map_err(|e| RegistryError::new(format!("cannot read {softphone}: {e}")))?;
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
            if let Some(partner) = bound_to
                && previous.as_ref().and_then(|e| e.partner_id.as_ref()) != Some(partner)
            {
                return Ok(None);
            }
            let entry = sighting
                .try_merge(softphone, previous.clone())
                .map_err(|conflict| {
                    let kind = sighting.kind();
                    metrics::counter!(crate::metric::PARTNER_CONFLICTS, "type" => kind)
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
            if previous.as_ref() == Some(&entry) {
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
                    tracing::debug!(softphone = %softphone, attempt, "Registry entry changed meanwhile; merging again.");
                    // Random pause so writers that collided do not collide again in lockstep.
                    tokio::time::sleep(jitter(attempt)).await;
                }
                Err((false, e)) => {
                    return Err(RegistryError::new(format!("cannot write {softphone}: {e}")));
                }
            }
        }
        Err(RegistryError::new(format!(
            "{softphone} kept changing; gave up after {MAX_CONFLICTS} attempts"
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
    crate::bucket::config(
        &settings.bucket,
        "softphone id -> partner, load time, presence, last seen",
        settings.idle_ttl,
        replicas,
    )
}

/// The KV key of a softphone. Keys allow fewer characters than subject tokens,
/// so any other byte (and the escape `=` itself) is written `=XX`: injective,
/// so two softphones never share an entry.
pub fn key(softphone: &SoftphoneId) -> String {
    let mut key = String::with_capacity(softphone.as_str().len());
    for b in softphone.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
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
        assert_eq!(key(&id("agent-7_x")), "agent-7_x");
        assert_eq!(key(&id("a:b")), "a=3Ab");
        assert_ne!(key(&id("a=3Ab")), key(&id("a:b")));
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
