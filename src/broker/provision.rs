//! Provisioning as a plan: what the streams, the pipeline's consumers and the
//! KV buckets should be ([`broker`]'s configurations), compared with what the
//! server has, setting by setting; then applied. `provision` applies and
//! prints it, `provision --dry-run` and `doctor` only print it, and a replica
//! that provisions on start logs it.
//!
//! Only the settings the bridge sets are compared (and changed): what an
//! operator tuned beyond them (a stream's `max_bytes`, say) is left alone.

use std::fmt;

use anyhow::Context as _;
use async_nats::jetstream::{
    self, consumer, consumer::IntoConsumerConfig as _, context::ConsumerInfoErrorKind, kv, stream,
};
use futures::TryStreamExt as _;

use crate::broker;
use crate::config::Settings;
use crate::contract::LANES_STREAM;
use crate::pipeline;

/// What a step provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Consumer,
    Bucket,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Stream => "stream",
            Kind::Consumer => "consumer",
            Kind::Bucket => "bucket",
        })
    }
}

/// One setting the server has otherwise: its value there, and ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub setting: &'static str,
    pub old: String,
    pub new: String,
}

/// What a step does (or did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Update(Vec<Difference>),
    Unchanged,
    /// A lane consumer of this pool that no configured connection uses (a
    /// connection removed or renamed): kept, since events an older replica
    /// routed there wait in it.
    Leftover {
        pending: u64,
        unacknowledged: usize,
    },
}

/// The configuration a step applies (boxed: they are large and unalike).
#[derive(Debug, Clone)]
enum Desired {
    Stream(Box<stream::Config>),
    Consumer(Box<consumer::pull::Config>),
    Bucket(Box<kv::Config>),
    Nothing,
}

/// One stream, consumer or bucket, and what provisioning does with it.
#[derive(Debug, Clone)]
pub struct Step {
    pub kind: Kind,
    pub name: String,
    /// The stream of a consumer.
    pub stream: Option<String>,
    pub action: Action,
    desired: Desired,
}

/// Every step, in the order they apply; `applied` once they have been.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    applied: bool,
}

impl Plan {
    /// Compares the configurations `settings` call for with the server's.
    pub(crate) async fn compute(
        js: &jetstream::Context,
        settings: &Settings,
    ) -> anyhow::Result<Plan> {
        let mut steps = Vec::new();
        for config in broker::stream_configs(settings) {
            let current = stream_config(js, &config.name).await?;
            steps.push(Step {
                kind: Kind::Stream,
                name: config.name.clone(),
                stream: None,
                action: compare(
                    current.as_ref().map(stream_settings),
                    stream_settings(&config),
                ),
                desired: Desired::Stream(Box::new(config)),
            });
        }
        let consumers = pipeline::consumers(settings);
        for consumer in &consumers {
            let config = broker::consumer_config(settings, consumer);
            let created = steps
                .iter()
                .any(|s| s.name == consumer.stream && s.action == Action::Create);
            let current = if created {
                None
            } else {
                consumer_config(js, consumer.stream, &consumer.name).await?
            };
            steps.push(Step {
                kind: Kind::Consumer,
                name: consumer.name.clone(),
                stream: Some(consumer.stream.to_owned()),
                action: compare(
                    current.as_ref().map(consumer_settings),
                    consumer_settings(&config.clone().into_consumer_config()),
                ),
                desired: Desired::Consumer(Box::new(config)),
            });
        }
        steps.extend(leftover_lanes(js, settings, &consumers).await?);
        let mut buckets = vec![
            crate::softphones::registry::bucket_config(
                &settings.registry,
                settings.streams.replicas,
            ),
            crate::dispatch::bucket_config(&settings.commands, settings.streams.replicas),
        ];
        buckets.extend(broker::share_bucket_configs(settings));
        // The call memory serves Salesforce connections only.
        if settings.uses_call_memory() {
            buckets.push(crate::crm::bucket_config(
                &settings.call_memory,
                settings.streams.replicas,
            ));
        }
        for config in buckets {
            let current = stream_config(js, &format!("KV_{}", config.bucket)).await?;
            steps.push(Step {
                kind: Kind::Bucket,
                name: config.bucket.clone(),
                stream: None,
                action: compare(
                    current.as_ref().map(bucket_settings_of_stream),
                    bucket_settings(&config),
                ),
                desired: Desired::Bucket(Box::new(config)),
            });
        }
        Ok(Plan {
            steps,
            applied: false,
        })
    }

    /// Creates and updates what the plan says, in order; the plan, applied.
    pub async fn apply(mut self, js: &jetstream::Context) -> anyhow::Result<Plan> {
        for step in &self.steps {
            if !matches!(step.action, Action::Create | Action::Update(_)) {
                continue;
            }
            let name = &step.name;
            match &step.desired {
                Desired::Stream(config) => {
                    js.create_or_update_stream(*config.clone())
                        .await
                        .with_context(|| format!("cannot create or update stream {name}"))?;
                }
                Desired::Consumer(config) => {
                    let stream = step.stream.as_deref().unwrap_or_default();
                    js.get_stream_no_info(stream)
                        .await
                        .with_context(|| format!("cannot look up stream {stream}"))?
                        .create_consumer(*config.clone())
                        .await
                        .with_context(|| format!("cannot create or update consumer {name}"))?;
                }
                Desired::Bucket(config) => {
                    js.create_or_update_key_value(*config.clone())
                        .await
                        .with_context(|| {
                            format!("cannot create or update key-value bucket {name}")
                        })?;
                }
                Desired::Nothing => {}
            }
        }
        self.applied = true;
        Ok(self)
    }

    /// Whether the server has everything as the settings say (a connection's
    /// leftover lane aside).
    pub(crate) fn up_to_date(&self) -> bool {
        self.changes().next().is_none()
    }

    /// The steps that create or update something.
    pub fn changes(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .filter(|s| matches!(s.action, Action::Create | Action::Update(_)))
    }

    /// One log line per step: what a replica provisioning on start did.
    pub fn log(&self) {
        for step in &self.steps {
            let line = step.line(self.applied);
            match step.action {
                Action::Leftover {
                    pending,
                    unacknowledged,
                } => tracing::warn!(
                    consumer = %step.name,
                    pending,
                    unacknowledged,
                    "Provisioning: {line}"
                ),
                _ => tracing::info!(kind = %step.kind, name = %step.name, "Provisioning: {line}"),
            }
        }
    }
}

/// One line a step: `stream SOFTPHONE_EVENTS: updated (max_age: 7days → 3days)`.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{}", step.line(self.applied))?;
        }
        Ok(())
    }
}

impl Step {
    /// What was done (`applied`), or what would be.
    pub fn line(&self, applied: bool) -> String {
        let what = match &self.stream {
            Some(stream) => format!("{} {} on {stream}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        };
        let done = match (&self.action, applied) {
            (Action::Create, true) => "created".to_owned(),
            (Action::Create, false) => "would be created".to_owned(),
            (Action::Update(changes), applied) => {
                let changes: Vec<String> = changes
                    .iter()
                    .map(|d| format!("{}: {} → {}", d.setting, d.old, d.new))
                    .collect();
                let verb = if applied {
                    "updated"
                } else {
                    "would be updated"
                };
                format!("{verb} ({})", changes.join("; "))
            }
            (Action::Unchanged, _) => "unchanged".to_owned(),
            (
                Action::Leftover {
                    pending,
                    unacknowledged,
                },
                _,
            ) => format!(
                "kept, no configured lane partition uses it ({pending} pending, {unacknowledged} unacknowledged); its events wait there until it is configured again, or `nats consumer rm {} {}` deletes it",
                self.stream.as_deref().unwrap_or_default(),
                self.name
            ),
        };
        format!("{what}: {done}")
    }
}

/// A stream's configuration on the server, `None` when there is no such stream.
async fn stream_config(
    js: &jetstream::Context,
    name: &str,
) -> anyhow::Result<Option<stream::Config>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(e) if broker::missing(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up stream {name}")),
    }
}

/// A consumer's configuration on the server, `None` when there is no such consumer.
async fn consumer_config(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> anyhow::Result<Option<consumer::Config>> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .with_context(|| format!("cannot look up stream {stream}"))?;
    match handle.consumer_info(name).await {
        Ok(info) => Ok(Some(info.config)),
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot look up consumer {name} on {stream}")),
    }
}

/// Lane consumers of this pool that the settings do not call for: a
/// connection no longer configured, a partition beyond `lanes.partitions`,
/// or a lane of a version before partitions (`<pool>-crm-<name>`,
/// `<pool>-softphones`), whose events wait there.
async fn leftover_lanes(
    js: &jetstream::Context,
    settings: &Settings,
    expected: &[pipeline::Consumer],
) -> anyhow::Result<Vec<Step>> {
    let crm = format!("{}-crm-", settings.worker.consumer);
    let softphones = format!("{}-softphones", settings.worker.consumer);
    let lanes = match js.get_stream(LANES_STREAM).await {
        Ok(lanes) => lanes,
        Err(e) if broker::missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot look up stream {LANES_STREAM}")),
    };
    let infos: Vec<consumer::Info> = lanes
        .consumers()
        .try_collect()
        .await
        .with_context(|| format!("cannot list the consumers of {LANES_STREAM}"))?;
    Ok(infos
        .into_iter()
        .filter(|info| {
            (info.name.starts_with(&crm) || info.name.starts_with(&softphones))
                && !expected.iter().any(|c| c.name == info.name)
        })
        .map(|info| Step {
            kind: Kind::Consumer,
            name: info.name,
            stream: Some(LANES_STREAM.to_owned()),
            action: Action::Leftover {
                pending: info.num_pending,
                unacknowledged: info.num_ack_pending,
            },
            desired: Desired::Nothing,
        })
        .collect())
}

/// Settings by name, in a fixed order, as text.
type Fields = Vec<(&'static str, String)>;

/// `Create` without a current configuration, else the settings that differ.
fn compare(current: Option<Fields>, desired: Fields) -> Action {
    let Some(current) = current else {
        return Action::Create;
    };
    let differences: Vec<Difference> = desired
        .into_iter()
        .zip(current)
        .filter(|((_, new), (_, old))| new != old)
        .map(|((setting, new), (_, old))| Difference { setting, old, new })
        .collect();
    if differences.is_empty() {
        Action::Unchanged
    } else {
        Action::Update(differences)
    }
}

fn duration(d: std::time::Duration) -> String {
    if d.is_zero() {
        "unlimited".to_owned()
    } else {
        humantime_serde::re::humantime::format_duration(d).to_string()
    }
}

fn text(value: &Option<String>) -> String {
    value.clone().unwrap_or_default()
}

fn lower(value: impl fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

/// The stream settings the bridge sets, in a fixed order.
fn stream_settings(c: &stream::Config) -> Fields {
    vec![
        ("description", text(&c.description)),
        ("subjects", c.subjects.join(", ")),
        ("storage", lower(c.storage)),
        ("retention", lower(c.retention)),
        ("discard", lower(c.discard)),
        ("replicas", c.num_replicas.to_string()),
        ("max_age", duration(c.max_age)),
        ("duplicate_window", duration(c.duplicate_window)),
        ("allow_msg_ttl", c.allow_message_ttl.to_string()),
    ]
}

/// The consumer settings the bridge sets, in a fixed order.
fn consumer_settings(c: &consumer::Config) -> Fields {
    vec![
        ("description", text(&c.description)),
        ("ack_policy", lower(c.ack_policy)),
        ("ack_wait", duration(c.ack_wait)),
        ("max_deliver", c.max_deliver.to_string()),
        ("max_ack_pending", c.max_ack_pending.to_string()),
        ("filter_subject", c.filter_subject.clone()),
        ("deliver_policy", lower(c.deliver_policy)),
    ]
}

/// The bucket settings the bridge sets, in a fixed order.
fn bucket_settings(c: &kv::Config) -> Fields {
    vec![
        ("description", c.description.clone()),
        ("history", c.history.to_string()),
        ("max_age", duration(c.max_age)),
        ("replicas", c.num_replicas.max(1).to_string()),
    ]
}

/// [`bucket_settings`] as the bucket's stream holds them.
fn bucket_settings_of_stream(c: &stream::Config) -> Fields {
    vec![
        ("description", text(&c.description)),
        ("history", c.max_messages_per_subject.to_string()),
        ("max_age", duration(c.max_age)),
        ("replicas", c.num_replicas.max(1).to_string()),
    ]
}

/// Creates or updates the streams, the pipeline's consumers and the KV
/// buckets as the settings say; returns what it did. Lane consumers no
/// configured connection uses any more are reported, not deleted: events an
/// older replica routed there wait in them.
pub async fn apply(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<Plan> {
    Plan::compute(js, settings).await?.apply(js).await
}

/// `softphone-bridge provision [--dry-run]`: prints one line per stream,
/// consumer and bucket.
pub async fn execute(settings: &Settings, dry_run: bool) -> anyhow::Result<()> {
    let client = broker::connect(&settings.nats, broker::FirstConnect::FailFast).await?;
    let js = broker::jetstream(client.clone(), &settings.nats);
    let plan = Plan::compute(&js, settings).await?;
    let plan = if dry_run {
        plan
    } else {
        plan.apply(&js).await?
    };
    print!("{plan}");
    if dry_run && plan.up_to_date() {
        println!("Nothing to change.");
    }
    client.drain().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_settings_are_listed_old_then_new() {
        let desired = vec![("a", "1".to_owned()), ("b", "2".to_owned())];
        assert_eq!(compare(None, desired.clone()), Action::Create);
        assert_eq!(
            compare(Some(desired.clone()), desired.clone()),
            Action::Unchanged
        );
        let current = vec![("a", "1".to_owned()), ("b", "3".to_owned())];
        assert_eq!(
            compare(Some(current), desired),
            Action::Update(vec![Difference {
                setting: "b",
                old: "3".into(),
                new: "2".into()
            }])
        );
    }

    #[test]
    fn steps_read_as_done_or_to_do() {
        let step = Step {
            kind: Kind::Stream,
            name: "S".into(),
            stream: None,
            action: Action::Update(vec![Difference {
                setting: "max_age",
                old: "7days".into(),
                new: "3days".into(),
            }]),
            desired: Desired::Nothing,
        };
        assert_eq!(
            step.line(true),
            "stream S: updated (max_age: 7days → 3days)"
        );
        assert_eq!(
            step.line(false),
            "stream S: would be updated (max_age: 7days → 3days)"
        );
    }
}
