//! Settings of the event pipeline: the durable consumers every replica
//! shares (intake and lanes), how each replica works them, and how lanes are
//! split into partitions and shared out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The durable consumers all replicas share, and how each replica works them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Prefix of the durable consumers' names: `<consumer>-intake` on
    /// `SOFTPHONE_EVENTS`, `<consumer>-softphones-<p>` and
    /// `<consumer>-crm-<connection>-<p>` on `SOFTPHONE_LANES`. Replicas with
    /// the same prefix are one pool and share the work.
    pub consumer: String,
    /// Events one replica handles at once in each lane partition it works.
    pub concurrency: usize,
    /// Events each lane partition may hold unacknowledged.
    pub max_ack_pending: i64,
    /// Events one replica's intake routes ahead of their publish acks.
    pub intake_window: usize,
    /// How long the server waits for a lane's ack before redelivering. A lane
    /// signals progress while a CRM call runs or an event is held, so this
    /// only bounds crashes: a dead replica's events in flight come back after
    /// it, and their conversations wait for them.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How long the server waits for the intake's ack before redelivering an
    /// event from `SOFTPHONE_EVENTS`. The intake keeps every event it holds
    /// alive with progress acks, so this only bounds how soon events come
    /// back that a replica lost with its connection: a crash, or a message
    /// the client cannot read, which drops the intake's connection and the
    /// events delivered in the same batch with it.
    #[serde(with = "humantime_serde")]
    pub intake_ack_wait: Duration,
    /// How long the intake waits for NATS to store an event's copies before
    /// it renews its connection (a reconnect): the client's replies can stop
    /// coming on a connection that still looks healthy, after a cluster
    /// node's restart, and a new connection gets them again.
    #[serde(with = "humantime_serde")]
    pub intake_renew_after: Duration,
    /// Attempts (the delivery count, plus the retries made in process) after
    /// which an event still failing for its own reasons is dead-lettered.
    /// Its connection's trouble spends none of them.
    pub max_deliveries: u32,
    /// Delays before retrying an event's own failure, after the 1st, 2nd, ...
    /// attempt; the last repeats. The event is kept in progress meanwhile and
    /// its conversation's later events wait for it.
    #[serde(with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Upper bound on a CRM's `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// On SIGTERM, how long in-flight events may take before they are nak'd.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            consumer: "softphone-bridge".into(),
            concurrency: 32,
            max_ack_pending: 1000,
            intake_window: 256,
            ack_wait: Duration::from_secs(30),
            intake_ack_wait: Duration::from_secs(5),
            intake_renew_after: Duration::from_secs(30),
            max_deliveries: 8,
            backoff: [1, 5, 30, 120, 600].map(Duration::from_secs).to_vec(),
            max_retry_after: Duration::from_secs(900),
            shutdown_deadline: Duration::from_secs(20),
        }
    }
}

impl WorkerSettings {
    /// The delay before the next delivery, after `deliveries` failed ones.
    pub(crate) fn backoff_after(&self, deliveries: u32) -> Duration {
        let index = (deliveries.max(1) - 1) as usize;
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// `["1s", "5s", "2m"]` as a list of durations.
mod duration_list {
    use std::time::Duration;

    use humantime_serde::Serde;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(Serde::from))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<Serde<Duration>>::deserialize(d)?;
        Ok(list.into_iter().map(Serde::into_inner).collect())
    }
}

/// How lanes are split and shared among replicas, and how a lane holds back
/// while its CRM connection is in trouble.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneSettings {
    /// Connection failures in a row (unreachable, timeouts, 5xx, 429,
    /// refused credentials, API allowance) that pause the lane in a replica.
    pub pause_after: u32,
    /// While a lane is paused, how often one event probes the connection (a
    /// CRM's longer `Retry-After` wins, up to `worker.max_retry_after`).
    #[serde(with = "humantime_serde")]
    pub probe_every: Duration,
    /// Partitions of every lane (1 to 64): a conversation's events go to
    /// one partition (a hash of its id), each partition is a durable consumer
    /// worked by one replica at a time, in order. More partitions spread a
    /// busy lane over more replicas and cost NATS a consumer each. Changing
    /// it re-partitions the lanes: drain them first (docs/partitions.md,
    /// "Changing `lanes.partitions`").
    pub partitions: u16,
    /// How long a replica that stops renewing its membership stays a member:
    /// its partitions move to others after this (keep it well under
    /// `worker.ack_wait`), which pull at once; a conversation it held an event
    /// of waits for that event to come back, after the ack wait. A replica
    /// renews every quarter of it, and stops pulling (no pull request of its
    /// outlives it) when it could not for half of it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The key-value bucket of the live replicas (entries live `lease`).
    pub members_bucket: String,
    /// The key-value bucket of who works each partition (and the intake).
    pub owners_bucket: String,
}

impl Default for LaneSettings {
    fn default() -> Self {
        Self {
            pause_after: 3,
            probe_every: Duration::from_secs(5),
            partitions: 4,
            lease: Duration::from_secs(10),
            members_bucket: "SOFTPHONE_MEMBERS".into(),
            owners_bucket: "SOFTPHONE_PARTITIONS".into(),
        }
    }
}

impl LaneSettings {
    /// What serde cannot check: `(key, why)` of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.pause_after == 0 {
            return Err(("lanes.pause_after", "must be at least 1".into()));
        }
        if self.probe_every < Duration::from_millis(100) {
            return Err(("lanes.probe_every", "must be at least 100ms".into()));
        }
        if !(1..=64).contains(&self.partitions) {
            return Err(("lanes.partitions", "must be between 1 and 64".into()));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(("lanes.lease", "must be at least 1s".into()));
        }
        Ok(())
    }
}
