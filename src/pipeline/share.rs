//! Who works what. Every replica is a **member** of its pool: a key
//! `<pool>.<replica>` in the members bucket (`lanes.members_bucket`), whose
//! entries live `lanes.lease`, renewed every quarter of it. Every unit (the
//! intake, and each partition of each lane) is **owned** by one member at a
//! time: a key, the unit's consumer name, in the owners bucket
//! (`lanes.owners_bucket`), whose value is the owner.
//!
//! Each replica computes the owner each unit should have by rendezvous
//! hashing over the live members (balanced, and a member coming or going
//! moves only its own share), and:
//! - claims a unit it should own with a compare-and-set only: created when
//!   nobody holds it, updated with the revision it read when its recorded
//!   owner is no member any more (its own key read again to confirm it: a
//!   listing of the bucket can miss a key renewed while it is made, which
//!   would hand a live replica's unit to a second one). Exclusive by
//!   construction: two replicas cannot both win.
//! - releases a unit it should no longer own only after it stopped pulling
//!   it and every event it had pulled is settled or given back (confirmed by
//!   the server), then deletes the key with the revision it holds; when
//!   that could not be confirmed (or its last pull request may still
//!   deliver), only after the ack wait.
//! - takes a unit over from a dead owner (its key still there, its owner no
//!   member) as soon as the owner's membership lapsed.
//! - whoever had the unit before, starts it by reading the consumer's
//!   deliveries still out, between its ack floor and its last delivered
//!   sequence (a dead owner is delivered nothing after its lease: see
//!   [`super::pull`]), and pulls at once: each of their conversations waits
//!   for its event to come back or be known settled, while the others go on
//!   (see [`super::unit`]). Never "the previous owner released it, so
//!   nothing is out": NATS gives back what was given back (naks) before
//!   what outlived its ack wait, so after a release that waited out the ack
//!   wait a newer event can come before an older one (docs/cluster.md, run 18).
//! - stops pulling everything when it could not renew its membership for
//!   half a lease (before anyone may declare it dead), lets no pull request
//!   outlive that, and sends no progress ack, nak or dead letter meanwhile
//!   ([`Fence`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, kv};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::contract::fnv1a64;

/// How a unit ended.
pub(super) struct Ended {
    /// Whether every message it pulled was settled, and the server confirmed
    /// every one it gave back: the next owner may pull at once.
    pub clean: bool,
}

/// Whether this replica may act as an owner: until half a lease after the
/// last membership renewal the server acknowledged, counted from when it
/// was sent (so before the entry can expire on the server).
#[derive(Clone)]
pub(crate) struct Fence(Arc<Mutex<Option<Instant>>>);

impl Fence {
    fn new() -> Self {
        Fence(Arc::default())
    }

    pub(super) fn valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// How long this replica may still act as an owner, if it may.
    pub(super) fn remaining(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    fn extend(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }
}

/// The units this replica works now (consumer name → its stream), for what
/// it reports of them: readiness and the consumers' gauges read only these.
#[derive(Clone, Default)]
pub struct Owned(Arc<Mutex<BTreeMap<String, &'static str>>>);

impl Owned {
    /// `(stream, consumer)` of every unit this replica works now.
    pub fn units(&self) -> Vec<(&'static str, String)> {
        self.lock()
            .iter()
            .map(|(name, stream)| (*stream, name.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, &'static str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts a unit and works its consumer until the token is cancelled.
pub(super) type Start =
    Box<dyn Fn(PullConsumer, CancellationToken) -> BoxFuture<'static, Ended> + Send + Sync>;

/// A unit this replica can work.
pub(super) struct Slot {
    /// Its key in the owners bucket: its consumer's name.
    pub key: String,
    /// Its consumer's stream.
    pub stream: &'static str,
    pub consumer: PullConsumer,
    /// How long the server waits for its acks.
    pub ack_wait: Duration,
    pub start: Start,
}

enum State {
    Idle,
    Running {
        stop: CancellationToken,
        revision: u64,
        releasing: bool,
    },
    /// Stopped without knowing whether it is still ours (membership lost):
    /// forgotten once it ended.
    Abandoned,
}

pub(super) struct Share {
    /// This replica's id.
    pub me: String,
    pool: String,
    members: kv::Store,
    owners: kv::Store,
    lease: Duration,
    pub fence: Fence,
    owned: Owned,
}

impl Share {
    pub(super) fn new(
        pool: &str,
        members: kv::Store,
        owners: kv::Store,
        lease: Duration,
        owned: Owned,
    ) -> Self {
        Self {
            me: replica_id(),
            pool: key_token(pool),
            members,
            owners,
            lease,
            fence: Fence::new(),
            owned,
        }
    }

    fn member_key(&self) -> String {
        format!("{}.{}", self.pool, self.me)
    }

    fn tick(&self) -> Duration {
        (self.lease / 4).max(Duration::from_millis(50))
    }

    /// Renews this replica's membership; on success the fence reaches half
    /// a lease past the moment the renewal was sent.
    async fn renew(&self) {
        renew(
            &self.members,
            &self.member_key(),
            &self.me,
            self.lease,
            &self.fence,
        )
        .await;
    }

    /// Renews the membership every quarter of a lease, on its own (claims
    /// or a long shutdown never delay it), until `stop`.
    fn keep_renewing(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (members, key, me, lease, fence) = (
            self.members.clone(),
            self.member_key(),
            self.me.clone(),
            self.lease,
            self.fence.clone(),
        );
        let every = self.tick();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => renew(&members, &key, &me, lease, &fence).await,
                }
            }
        })
    }

    /// The replicas of this pool whose membership lives. A listing of the
    /// bucket can miss a key renewed while it is made (seen on a loaded R3
    /// cluster): a replica of `before` that it misses is asked for by its
    /// own key.
    async fn live(&self, before: &BTreeSet<String>) -> Result<BTreeSet<String>, async_nats::Error> {
        let prefix = format!("{}.", self.pool);
        let mut keys = self.members.keys().await?;
        let mut live = BTreeSet::new();
        while let Some(key) = keys.next().await {
            if let Some(replica) = key?.strip_prefix(&prefix) {
                live.insert(replica.to_owned());
            }
        }
        let missed: Vec<String> = before.difference(&live).cloned().collect();
        for replica in missed {
            if self.member(&replica).await {
                live.insert(replica);
            }
        }
        Ok(live)
    }

    /// Whether `replica`'s membership lives, read from its own key (the last
    /// value of one subject, which no concurrent renewal can hide). Unknown
    /// (NATS did not answer) counts as alive: nothing is taken from it.
    async fn member(&self, replica: &str) -> bool {
        match self.members.entry(format!("{}.{replica}", self.pool)).await {
            Ok(entry) => entry.is_some_and(|e| e.operation == kv::Operation::Put),
            Err(e) => {
                tracing::warn!(%replica, error = %e, "Cannot read a replica's membership; taking nothing from it.");
                true
            }
        }
    }

    /// Works the units it should own until `shutdown`; then stops them,
    /// releases what it held and leaves the pool.
    pub(super) async fn run(self, slots: Vec<Slot>, shutdown: CancellationToken) {
        let mut states: BTreeMap<String, State> =
            slots.iter().map(|s| (s.key.clone(), State::Idle)).collect();
        let slots: BTreeMap<String, Slot> = slots.into_iter().map(|s| (s.key.clone(), s)).collect();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, Ended)>();
        tracing::info!(replica = %self.me, units = slots.len(), "Joining the pool.");
        self.renew().await;
        let renewing = CancellationToken::new();
        let renewal = self.keep_renewing(renewing.clone());
        // The first round at once: replicas starting together claim what
        // they see free, and hand over what they should not keep a tick later.
        let mut ticks = tokio::time::interval(self.tick());
        let mut live = BTreeSet::new();
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((key, ended)) = ended_rx.recv() => {
                    let ack_wait = slots[&key].ack_wait;
                    self.ended(&mut states, &key, ended, ack_wait).await;
                    continue;
                }
                _ = ticks.tick() => {}
            }
            if !self.fence.valid() {
                for (key, state) in states.iter_mut() {
                    if let State::Running { stop, .. } = state {
                        tracing::warn!(unit = %key, "Membership not renewed for half a lease; stopping.");
                        stop.cancel();
                        *state = State::Abandoned;
                        self.owned.lock().remove(key);
                    }
                }
                continue;
            }
            live = match self.live(&live).await {
                Ok(live) => live,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot list the pool's members.");
                    continue;
                }
            };
            let mut claims = Vec::new();
            for (key, slot) in &slots {
                let mine = target(&live, key).is_some_and(|t| t == self.me);
                match states.get_mut(key).expect("a state per slot") {
                    State::Running {
                        stop, releasing, ..
                    } if !mine && !*releasing => {
                        tracing::info!(unit = %key, "Unit moves to another replica; releasing it.");
                        *releasing = true;
                        stop.cancel();
                    }
                    State::Idle if mine => claims.push(self.claim(slot, &live, &ended_tx)),
                    _ => {}
                }
            }
            // Claimed all at once: a replica starting with hundreds of
            // partitions to take waits for one round trip, not hundreds.
            for (key, running) in futures::future::join_all(claims)
                .await
                .into_iter()
                .flatten()
            {
                states.insert(key, running);
            }
        }
        // Shutdown: stop everything, wait for each unit, release.
        for state in states.values_mut() {
            if let State::Running { stop, .. } = state {
                stop.cancel();
            }
        }
        drop(ended_tx);
        // Each unit ends within the shutdown deadline; then every release at
        // once (hundreds of them take one round trip's time).
        let mut ends = Vec::new();
        while let Some(end) = ended_rx.recv().await {
            ends.push(end);
        }
        let share = &self;
        let releases = ends.into_iter().map(|(key, ended)| {
            let ack_wait = slots[&key].ack_wait;
            let mut state =
                BTreeMap::from([(key.clone(), states.remove(&key).unwrap_or(State::Idle))]);
            async move { share.ended(&mut state, &key, ended, ack_wait).await }
        });
        futures::future::join_all(releases).await;
        renewing.cancel();
        let _ = renewal.await;
        if let Err(e) = self.members.delete(self.member_key()).await {
            tracing::warn!(error = %e, "Cannot leave the pool; the membership expires after the lease.");
        }
        tracing::info!(replica = %self.me, "Left the pool.");
    }

    /// Claims `slot` if nobody holds it or its owner is no member; starts it.
    async fn claim(
        &self,
        slot: &Slot,
        live: &BTreeSet<String>,
        ended: &mpsc::UnboundedSender<(String, Ended)>,
    ) -> Option<(String, State)> {
        let entry = match self.owners.entry(slot.key.clone()).await {
            Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
            Err(e) => {
                tracing::warn!(unit = %slot.key, error = %e, "Cannot read the unit's owner.");
                return None;
            }
        };
        let (claimed, from) = match &entry {
            None => (
                self.owners
                    .create(&slot.key, self.me.clone().into())
                    .await
                    .map_err(|e| e.to_string()),
                None,
            ),
            Some(entry) => {
                let owner = String::from_utf8_lossy(&entry.value).into_owned();
                // Its own key confirms a member the listing missed.
                if owner != self.me && (live.contains(&owner) || self.member(&owner).await) {
                    // Its owner lives: it releases the unit once settled.
                    return None;
                }
                let updated = self
                    .owners
                    .update(&slot.key, self.me.clone().into(), entry.revision)
                    .await
                    .map_err(|e| e.to_string());
                (updated, Some(owner))
            }
        };
        let revision = match claimed {
            Ok(revision) => revision,
            Err(e) => {
                tracing::debug!(unit = %slot.key, error = %e, "Another replica claimed the unit first.");
                return None;
            }
        };
        // Whoever had the unit before, the deliveries still out are waited
        // for (see `unit`).
        match &from {
            Some(owner) => {
                tracing::info!(unit = %slot.key, previous = %owner, "Took over the unit from a replica that left without releasing it.");
            }
            None => tracing::info!(unit = %slot.key, "Claimed the unit."),
        }
        self.owned.lock().insert(slot.key.clone(), slot.stream);
        let stop = CancellationToken::new();
        let run = (slot.start)(slot.consumer.clone(), stop.clone());
        let key = slot.key.clone();
        let ended = ended.clone();
        tokio::spawn(async move {
            let result = run.await;
            let _ = ended.send((key, result));
        });
        Some((
            slot.key.clone(),
            State::Running {
                stop,
                revision,
                releasing: false,
            },
        ))
    }

    /// A unit stopped: release it (delete its key with the revision held)
    /// when it ended clean, else leave its key until the ack wait passed.
    async fn ended(
        &self,
        states: &mut BTreeMap<String, State>,
        key: &str,
        ended: Ended,
        ack_wait: Duration,
    ) {
        let Some(state) = states.get_mut(key) else {
            return;
        };
        let revision = match std::mem::replace(state, State::Idle) {
            State::Running { revision, .. } => revision,
            _ => return,
        };
        self.owned.lock().remove(key);
        if !self.fence.valid() {
            // Perhaps declared dead: whoever takes the unit over waits for
            // what it may still hold.
            return;
        }
        if !ended.clean {
            // Something may still reach the old pull request, or come back
            // only after the ack wait (a give-back not confirmed, places
            // kept): released after the ack wait, and the next owner reads
            // what is out before it pulls in any case.
            tracing::warn!(unit = %key, "Events of the unit were not all confirmed given back; releasing it after the ack wait.");
            let owners = self.owners.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(ack_wait).await;
                let _ = owners.delete_expect_revision(&key, Some(revision)).await;
            });
            return;
        }
        // Bounded: with NATS unreachable, the next owner takes the unit
        // over after the lease instead.
        let delete = self.owners.delete_expect_revision(key, Some(revision));
        match tokio::time::timeout(self.tick(), delete).await {
            Ok(Ok(())) => tracing::info!(unit = %key, "Released the unit."),
            Ok(Err(e)) => {
                tracing::warn!(unit = %key, error = %e, "Cannot release the unit; its next owner takes it over after the lease.")
            }
            Err(_) => {
                tracing::warn!(unit = %key, "Releasing the unit timed out; its next owner takes it over after the lease.")
            }
        }
    }
}

/// Puts this replica's membership; on success the fence reaches half a
/// lease past the moment the renewal was sent.
async fn renew(members: &kv::Store, key: &str, me: &str, lease: Duration, fence: &Fence) {
    let sent = Instant::now();
    let put = members.put(key, me.to_owned().into());
    match tokio::time::timeout((lease / 4).max(Duration::from_millis(50)), put).await {
        Ok(Ok(_)) => fence.extend(sent + lease / 2),
        Ok(Err(e)) => tracing::warn!(error = %e, "Cannot renew this replica's membership."),
        Err(_) => tracing::warn!("Renewing this replica's membership timed out."),
    }
}

/// The member that should own `key`: the highest rendezvous score.
pub fn target<'a>(members: &'a BTreeSet<String>, key: &str) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|member| score(member, key))
        .map(String::as_str)
}

fn score(member: &str, key: &str) -> u64 {
    let mut x = fnv1a64(member.as_bytes()) ^ fnv1a64(key.as_bytes()).rotate_left(29);
    // splitmix64's finaliser: FNV's low bits alone mix poorly.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `text` with every character a key-value key cannot hold replaced by `_`.
pub fn key_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This process's id in the pool: its host name (a Kubernetes pod's name)
/// and a random suffix, so a restarted process is a new member.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", key_token(&host), &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn rendezvous_spreads_units_and_moves_only_a_leavers_share() {
        let keys: Vec<String> = (0..400)
            .map(|i| format!("pool-crm-c{}-{}", i / 4, i % 4))
            .collect();
        let three = members(3);
        let mut counts = BTreeMap::<&str, usize>::new();
        for key in &keys {
            *counts.entry(target(&three, key).unwrap()).or_default() += 1;
        }
        assert!(
            counts.values().all(|c| (100..170).contains(c)),
            "{counts:?}"
        );
        let mut two = three.clone();
        two.remove("replica-2");
        for key in &keys {
            let before = target(&three, key).unwrap();
            if before != "replica-2" {
                assert_eq!(target(&two, key), Some(before), "{key} moved");
            }
        }
        assert_eq!(target(&BTreeSet::new(), "x"), None);
    }

    #[test]
    fn replica_ids_are_key_tokens() {
        let id = replica_id();
        assert_eq!(key_token(&id), id);
        assert_ne!(replica_id(), id, "a new process is a new member");
    }
}
