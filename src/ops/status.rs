//! `softphone-bridge status`: each lane's consumer (JetStream consumer info)
//! and what every replica says of it (its service stats: paused, why, held
//! events, the circuit), dead letters by reason, CRM API usage per
//! connection (Salesforce's daily requests, Dataverse's five-minute window),
//! the sizes of the registry and of the call memory (when there is one or
//! Salesforce or Dynamics connections need it); a table, or one JSON document.
//!
//! Replicas answer `$SRV.STATS.softphone-bridge` (see [`crate::service`]),
//! each on its own: the command gathers answers until none has come for a
//! moment, within `--wait`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Args;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::Value;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::contract::DLQ_STREAM;
use crate::ops::dlq::ReasonCounts;
use crate::pipeline::{self, Circuit, Role};
use crate::service::{ApiUsage, ReplicaView, SERVICE_NAME, VIEW_ENDPOINT};

/// Once replicas have begun answering, how long a silence ends the gathering.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// How long to wait for the replicas' answers, at most.
    #[arg(long, default_value = "2s", value_parser = humantime_serde::re::humantime::parse_duration)]
    wait: Duration,
}

/// Everything `status` shows.
#[derive(Debug, Serialize)]
struct Status {
    /// Replicas of this pool that answered.
    replicas: usize,
    /// Replicas whose membership lives (`lanes.members_bucket`), by id.
    members: Vec<String>,
    lanes: Vec<Lane>,
    dead_letters: ReasonCounts,
    /// The highest usage any replica last saw, by connection.
    api_usage: BTreeMap<String, ApiUsage>,
    registry: Bucket,
    /// The Salesforce connections' call memory, when it exists or is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    call_memory: Option<Bucket>,
}

/// The intake, or a lane with its partitions.
#[derive(Debug, Serialize)]
struct Lane {
    /// `intake`, `softphones` or `crm`.
    role: &'static str,
    /// The CRM connection of a `crm` lane.
    connection: Option<String>,
    /// The consumer (the intake), or the lane's consumers' common prefix
    /// (`<name>-<p>` each partition).
    consumer: String,
    stream: &'static str,
    /// Its consumers' numbers added up; `None` when none exists.
    consumer_info: Option<ConsumerNumbers>,
    /// Each consumer (one for the intake): who works it, and its numbers.
    partitions: Vec<Partition>,
    /// Replicas running this lane with a gate (CRM lanes only).
    replicas: usize,
    /// Of those, how many have it paused.
    paused_in: usize,
    /// The worst circuit state among them.
    circuit: Option<Circuit>,
    /// A paused (else failing) replica's last failure.
    reason: Option<String>,
    /// When the first replica paused it.
    paused_since: Option<String>,
    /// Events held across replicas.
    held: usize,
}

/// One consumer of a lane (or the intake), and the replica working it.
#[derive(Debug, Serialize)]
struct Partition {
    /// `None` for the intake.
    partition: Option<u16>,
    consumer: String,
    /// The replica that holds it (`lanes.owners_bucket`), if one does.
    owner: Option<String>,
    consumer_info: Option<ConsumerNumbers>,
}

#[derive(Debug, Default, Serialize)]
struct ConsumerNumbers {
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
    waiting: usize,
}

/// A key-value bucket's size.
#[derive(Debug, Serialize)]
struct Bucket {
    bucket: String,
    entries: Option<u64>,
    bytes: Option<u64>,
}

pub(crate) async fn execute(settings: &Settings, args: StatusArgs) -> anyhow::Result<()> {
    let client = broker::connect(&settings.nats, FirstConnect::FailFast).await?;
    let js = broker::jetstream(client.clone(), &settings.nats);
    let views = gather(&client, &settings.worker.consumer, args.wait).await?;
    let status = Status {
        replicas: views.len(),
        members: members(&js, settings).await?,
        lanes: lanes(&js, settings, &views).await?,
        dead_letters: dead_letters(&js).await?,
        api_usage: api_usage(&views),
        registry: bucket(&js, &settings.registry.bucket).await?,
        call_memory: call_memory(&js, settings).await?,
    };
    client.drain().await.ok();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        print_tables(&mut out, &status)?;
    }
    Ok(())
}

/// Asks every replica for its stats; keeps the views of this pool's.
async fn gather(
    client: &async_nats::Client,
    pool: &str,
    wait: Duration,
) -> anyhow::Result<Vec<ReplicaView>> {
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .context("cannot subscribe to the replicas' answers")?;
    client
        .publish_with_reply(format!("$SRV.STATS.{SERVICE_NAME}"), inbox, "".into())
        .await
        .context("cannot ask the replicas")?;
    client.flush().await.context("cannot ask the replicas")?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut views = Vec::new();
    let mut answered = false;
    loop {
        let until = if answered {
            deadline.min(tokio::time::Instant::now() + QUIET)
        } else {
            deadline
        };
        let Ok(Some(answer)) = tokio::time::timeout_at(until, answers.next()).await else {
            break;
        };
        if answer.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // No replica runs: the server says so at once.
            break;
        }
        answered = true;
        if let Some(view) = view_of(&answer.payload)
            && view.pool == pool
        {
            views.push(view);
        }
    }
    Ok(views)
}

/// The replica's view in a stats answer, if it carries one.
fn view_of(stats: &[u8]) -> Option<ReplicaView> {
    let stats: Value = serde_json::from_slice(stats).ok()?;
    let data = stats["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == VIEW_ENDPOINT)?
        .get("data")?
        .clone();
    serde_json::from_value(data).ok()
}

/// The live members of the pool, by replica id.
async fn members(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<Vec<String>> {
    let bucket = &settings.lanes.members_bucket;
    let members = match js.get_key_value(bucket).await {
        Ok(members) => members,
        Err(_) => return Ok(Vec::new()),
    };
    let prefix = format!("{}.", pipeline::key_token(&settings.worker.consumer));
    let mut live = Vec::new();
    let mut keys = members
        .keys()
        .await
        .with_context(|| format!("cannot read bucket {bucket}"))?;
    while let Some(key) = keys.next().await {
        if let Some(replica) = key?.strip_prefix(&prefix) {
            live.push(replica.to_owned());
        }
    }
    live.sort();
    Ok(live)
}

async fn consumer_numbers(
    js: &jetstream::Context,
    consumer: &pipeline::Consumer,
) -> anyhow::Result<Option<ConsumerNumbers>> {
    let stream = js
        .get_stream_no_info(consumer.stream)
        .await
        .with_context(|| format!("cannot look up stream {}", consumer.stream))?;
    match stream.consumer_info(&consumer.name).await {
        Ok(info) => Ok(Some(ConsumerNumbers {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
            waiting: info.num_waiting,
        })),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::ConsumerInfoErrorKind::NotFound
                    | jetstream::context::ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read consumer {}", consumer.name)),
    }
}

async fn lanes(
    js: &jetstream::Context,
    settings: &Settings,
    views: &[ReplicaView],
) -> anyhow::Result<Vec<Lane>> {
    let owners = js.get_key_value(&settings.lanes.owners_bucket).await.ok();
    let mut lanes: Vec<Lane> = Vec::new();
    for consumer in pipeline::consumers(settings) {
        let (role, connection) = match &consumer.role {
            Role::Intake => ("intake", None),
            Role::Softphones => ("softphones", None),
            Role::Crm(name) => ("crm", Some(name.clone())),
        };
        let numbers = consumer_numbers(js, &consumer).await?;
        let owner = match &owners {
            Some(owners) => owners
                .get(&consumer.name)
                .await
                .ok()
                .flatten()
                .map(|owner| String::from_utf8_lossy(&owner).into_owned()),
            None => None,
        };
        let same_lane = lanes
            .last()
            .is_some_and(|l| l.role == role && l.connection == connection);
        if !same_lane {
            let name = match consumer.partition {
                Some(p) => consumer
                    .name
                    .strip_suffix(&format!("-{p}"))
                    .unwrap_or(&consumer.name)
                    .to_owned(),
                None => consumer.name.clone(),
            };
            lanes.push(Lane {
                role,
                connection: connection.clone(),
                consumer: name,
                stream: consumer.stream,
                consumer_info: None,
                partitions: Vec::new(),
                replicas: 0,
                paused_in: 0,
                circuit: None,
                reason: None,
                paused_since: None,
                held: 0,
            });
        }
        let lane = lanes.last_mut().expect("a lane was pushed");
        if let Some(n) = &numbers {
            let sum = lane.consumer_info.get_or_insert_with(Default::default);
            sum.pending += n.pending;
            sum.ack_pending += n.ack_pending;
            sum.redelivered += n.redelivered;
            sum.waiting += n.waiting;
        }
        lane.partitions.push(Partition {
            partition: consumer.partition,
            consumer: consumer.name,
            owner,
            consumer_info: numbers,
        });
    }
    for lane in &mut lanes {
        if let Some(name) = &lane.connection {
            for gate in views.iter().filter_map(|v| v.lanes.get(name)) {
                lane.replicas += 1;
                lane.held += gate.held;
                if gate.paused {
                    lane.paused_in += 1;
                    if lane.paused_since.is_none() || gate.paused_since < lane.paused_since {
                        lane.paused_since = gate.paused_since.clone();
                    }
                }
                if lane
                    .circuit
                    .is_none_or(|c| severity(gate.circuit) > severity(c))
                {
                    lane.circuit = Some(gate.circuit);
                    lane.reason = gate.reason.clone();
                }
            }
        }
    }
    Ok(lanes)
}

/// Who works which share of a lane: `0,2 → replica-a; 1,3 → replica-b`
/// (`-` for a share nobody holds).
fn shares(lane: &Lane) -> String {
    let mut by_owner: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for partition in &lane.partitions {
        let owner = partition.owner.as_deref().unwrap_or("-");
        let share = partition
            .partition
            .map_or_else(|| "all".to_owned(), |p| p.to_string());
        by_owner.entry(owner).or_default().push(share);
    }
    by_owner
        .into_iter()
        .map(|(owner, shares)| format!("{} → {owner}", shares.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn severity(circuit: Circuit) -> u8 {
    match circuit {
        Circuit::Closed => 0,
        Circuit::Failing => 1,
        Circuit::HalfOpen => 2,
        Circuit::Open => 3,
    }
}

async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<ReasonCounts> {
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .with_context(|| format!("no {DLQ_STREAM} stream (run `softphone-bridge provision`?)"))?;
    crate::ops::dlq::count_by_reason(&stream).await
}

fn api_usage(views: &[ReplicaView]) -> BTreeMap<String, ApiUsage> {
    let mut usage: BTreeMap<String, ApiUsage> = BTreeMap::new();
    for (connection, seen) in views.iter().flat_map(|v| &v.api_usage) {
        let best = usage.entry(connection.clone()).or_insert(*seen);
        if seen.used > best.used {
            *best = *seen;
        }
    }
    usage
}

async fn bucket(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Bucket> {
    let state = match js.get_stream(format!("KV_{bucket}")).await {
        Ok(stream) => Some(stream.cached_info().state.clone()),
        Err(e) if crate::broker::missing(&e) => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read bucket {bucket}")),
    };
    Ok(Bucket {
        bucket: bucket.to_owned(),
        entries: state.as_ref().map(|s| s.messages),
        bytes: state.map(|s| s.bytes),
    })
}

/// The call memory, when it exists or Salesforce or Dynamics connections need it.
async fn call_memory(
    js: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<Option<Bucket>> {
    let memory = bucket(js, &settings.call_memory.bucket).await?;
    Ok((memory.entries.is_some() || settings.uses_call_memory()).then_some(memory))
}

fn print_tables(out: &mut impl std::io::Write, status: &Status) -> std::io::Result<()> {
    writeln!(out, "Replicas answering: {}", status.replicas)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:>8} {:>8} {:>8} {:>8}  {:<10} {:<10} {:>6}  REASON",
        "LANE", "PENDING", "ACKPEND", "REDELIV", "WAITING", "PAUSED", "CIRCUIT", "HELD"
    )?;
    for lane in &status.lanes {
        let name = match &lane.connection {
            Some(connection) => format!("crm:{connection}"),
            None => lane.role.to_owned(),
        };
        let numbers = match &lane.consumer_info {
            Some(c) => format!(
                "{:>8} {:>8} {:>8} {:>8}",
                c.pending, c.ack_pending, c.redelivered, c.waiting
            ),
            None => format!("{:>35}", "(no consumer: run provision)"),
        };
        let (paused, circuit) = match lane.circuit {
            Some(circuit) => (
                format!("{}/{}", lane.paused_in, lane.replicas),
                circuit_name(circuit).to_owned(),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let reason = match (&lane.reason, &lane.paused_since) {
            (Some(reason), Some(since)) => format!("{reason} (paused since {since})"),
            (Some(reason), None) => reason.clone(),
            _ => String::new(),
        };
        writeln!(
            out,
            "{name:<24} {numbers}  {paused:<10} {circuit:<10} {:>6}  {reason}",
            lane.held
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Shares (partition → replica), members: {}",
        if status.members.is_empty() {
            "none".to_owned()
        } else {
            status.members.join(", ")
        }
    )?;
    for lane in &status.lanes {
        let name = match &lane.connection {
            Some(connection) => format!("crm:{connection}"),
            None => lane.role.to_owned(),
        };
        writeln!(out, "{name:<24} {}", shares(lane))?;
    }
    writeln!(out)?;
    let letters = &status.dead_letters;
    writeln!(out, "Dead letters: {}", letters.total)?;
    let mut reasons: Vec<_> = letters.by_reason.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, count) in reasons {
        writeln!(out, "{count:>8}  {reason}")?;
    }
    if letters.other > 0 {
        writeln!(out, "{:>8}  (other reasons)", letters.other)?;
    }
    if !status.api_usage.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "CRM API usage (Salesforce: today; Dynamics: the 5-minute window):"
        )?;
        for (connection, usage) in &status.api_usage {
            let share = usage.used as f64 * 100.0 / usage.limit.max(1) as f64;
            writeln!(
                out,
                "  {connection}: {}/{} ({share:.1} %)",
                usage.used, usage.limit
            )?;
        }
    }
    writeln!(out)?;
    print_bucket(out, "Registry", &status.registry)?;
    if let Some(memory) = &status.call_memory {
        print_bucket(out, "Call memory", memory)?;
    }
    Ok(())
}

fn print_bucket(out: &mut impl std::io::Write, what: &str, b: &Bucket) -> std::io::Result<()> {
    match (b.entries, b.bytes) {
        (Some(entries), Some(bytes)) => {
            writeln!(out, "{what} {}: {entries} entries, {bytes} bytes", b.bucket)
        }
        _ => writeln!(out, "{what} {}: no such bucket", b.bucket),
    }
}

fn circuit_name(circuit: Circuit) -> &'static str {
    match circuit {
        Circuit::Closed => "closed",
        Circuit::Failing => "failing",
        Circuit::Open => "open",
        Circuit::HalfOpen => "half-open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(used: u64) -> ReplicaView {
        ReplicaView {
            pool: "p".into(),
            lanes: BTreeMap::new(),
            api_usage: [("sf".to_owned(), ApiUsage { used, limit: 100 })].into(),
        }
    }

    #[test]
    fn api_usage_is_the_highest_any_replica_saw() {
        let usage = api_usage(&[view(7), view(42), view(9)]);
        assert_eq!(usage["sf"].used, 42);
    }

    #[test]
    fn only_the_view_endpoints_data_is_a_view() {
        let stats = serde_json::json!({
            "type": "io.nats.micro.v1.stats_response",
            "endpoints": [
                {"name": "load", "data": null},
                {"name": VIEW_ENDPOINT, "data": serde_json::to_value(view(1)).unwrap()}
            ]
        });
        let found = view_of(&serde_json::to_vec(&stats).unwrap()).expect("a view");
        assert_eq!(found.pool, "p");
        let without = serde_json::json!({"endpoints": [{"name": VIEW_ENDPOINT}]});
        assert!(view_of(&serde_json::to_vec(&without).unwrap()).is_none());
    }
}
