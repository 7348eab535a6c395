//! NATS: connecting with the configured credentials, and what the streams,
//! the pipeline's durable consumers, the registry bucket and the commands'
//! idempotency bucket should be (provisioned by [`provision`]).

pub(crate) mod bucket;
pub mod provision;
pub(crate) mod settings;

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::{StreamExt as _, TryStreamExt as _};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use crate::config::{Settings, redacted_url};
use crate::contract::{
    COMMAND_SUBJECTS, COMMANDS_STREAM, DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM, EventKind,
    LANE_SUBJECTS, LANES_STREAM, REPLAY_SUBJECTS, tenant,
};
use crate::pipeline::{self, Consumer, Role};

pub use self::settings::{NatsSettings, NatsTls, StreamSettings};

/// How the first connection attempt behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstConnect {
    /// Keep trying in the background (a service may start before NATS).
    Retry,
    /// Fail at once with the reason (one-shot commands).
    FailFast,
}

/// Connects to NATS. Once connected, reconnects go on forever with backoff.
pub async fn connect(
    settings: &NatsSettings,
    first: FirstConnect,
) -> anyhow::Result<async_nats::Client> {
    connect_as(settings, first, "shared", settings.name.clone(), None).await
}

/// The intake's connection of its own. A message the client cannot parse
/// makes async-nats drop the connection it arrives on: only the intake reads
/// `SOFTPHONE_EVENTS`, where softphones publish, so such a message disturbs
/// the intake's deliveries and nothing else (lanes, the HTTP API and the
/// command service keep the shared connection).
pub(crate) struct IntakeConnection {
    pub client: async_nats::Client,
    /// How many times the connection has been made; changes on every
    /// (re)connect, the first one included.
    pub connects: watch::Receiver<u64>,
}

/// Opens the intake's connection, named `<nats.name>-intake`.
pub(crate) async fn connect_intake(
    settings: &NatsSettings,
    first: FirstConnect,
) -> anyhow::Result<IntakeConnection> {
    let (connected, connects) = watch::channel(0);
    let name = format!("{}-intake", settings.name);
    let client = connect_as(settings, first, "intake", name, Some(Arc::new(connected))).await?;
    Ok(IntakeConnection { client, connects })
}

async fn connect_as(
    settings: &NatsSettings,
    first: FirstConnect,
    label: &'static str,
    name: String,
    connects: Option<Arc<watch::Sender<u64>>>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout))
        .max_reconnects(None)
        .event_callback(move |event| {
            let connects = connects.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(connection = label, "Connected to NATS.");
                        if let Some(connects) = connects {
                            connects.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(connection = label, "Disconnected from NATS; reconnecting.")
                    }
                    other => {
                        tracing::info!(connection = label, event = %other, "NATS connection event.")
                    }
                }
            }
        });
    if let Some(token) = &settings.token {
        options = options.token(token.expose_secret().to_owned());
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    if let Some(creds) = &settings.creds_file {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("cannot read NATS credentials file {}", creds.display()))?;
    }
    if first == FirstConnect::Retry {
        options = options.retry_on_initial_connect();
    }
    let tls = &settings.tls;
    // Also when nothing asks for TLS here: a server may require it.
    crate::tls::install_provider();
    if tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = settings
        .url
        .split(',')
        .map(|url| url.trim().parse())
        .collect::<Result<_, _>>()
        .context("nats.url")?;
    // With FirstConnect::Retry this returns at once and the client connects in
    // the background; JetStream calls fail (and are retried) until it has.
    options
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", redacted_url(&settings.url)))
}

/// Whether the server said there is no such stream.
pub(crate) fn missing(error: &jetstream::context::GetStreamError) -> bool {
    use jetstream::context::GetStreamErrorKind;
    matches!(error.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A JetStream context whose API calls and publish acks time out as configured.
pub fn jetstream(client: async_nats::Client, settings: &NatsSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(settings.request_timeout)
        .build(client)
}

/// The pipeline's durable pull consumers a replica may work (the intake
/// through `intake`, its connection of its own; the lane partitions through
/// `js`) and the buckets that share them out among replicas.
pub async fn bind(
    js: &jetstream::Context,
    intake: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<pipeline::Bound> {
    // Bound many at once: hundreds of partitions take one round trip's time.
    let consumers = futures::stream::iter(pipeline::consumers(settings))
        .map(|consumer| async move {
            let via = if consumer.role == Role::Intake {
                intake
            } else {
                js
            };
            let pull = via
                .get_consumer_from_stream(&consumer.name, consumer.stream)
                .await
                .with_context(|| {
                    format!(
                        "cannot bind to consumer {} on {} (run `softphone-bridge provision`?)",
                        consumer.name, consumer.stream
                    )
                })?;
            anyhow::Ok((consumer, pull))
        })
        .buffered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let lanes = &settings.lanes;
    let bucket = |name: &String| {
        let bucket = crate::broker::bucket::Bucket::new(js.clone(), name);
        async move { anyhow::Ok(bucket.open().await?.clone()) }
    };
    Ok(pipeline::Bound {
        consumers,
        members: bucket(&lanes.members_bucket).await?,
        owners: bucket(&lanes.owners_bucket).await?,
    })
}

/// The buckets that share the pipeline's consumers among replicas: the
/// members (entries live a lease) and the owners (one value per consumer,
/// kept until released).
pub(crate) fn share_bucket_configs(settings: &Settings) -> [kv::Config; 2] {
    let lanes = &settings.lanes;
    let replicas = settings.streams.replicas;
    [
        crate::broker::bucket::config(
            &lanes.members_bucket,
            "replicas alive: each renews its key every quarter of lanes.lease",
            lanes.lease,
            replicas,
        ),
        // Kept until released: no max age.
        crate::broker::bucket::config(
            &lanes.owners_bucket,
            "which replica works the intake and each lane partition",
            std::time::Duration::ZERO,
            replicas,
        ),
    ]
}

pub(crate) fn stream_configs(settings: &Settings) -> [stream::Config; 4] {
    let s = &settings.streams;
    // With the auth callout, partners' events and commands travel under
    // their partner's prefix too (deploy/tenancy.md).
    let tenancy = settings.callout.is_some();
    // The events softphones publish, and the replays only the bridge may.
    let mut event_subjects = EventKind::subjects();
    event_subjects.push(REPLAY_SUBJECTS.to_owned());
    let mut command_subjects = vec![COMMAND_SUBJECTS.to_owned()];
    if tenancy {
        event_subjects.extend(tenant::partner_event_subjects());
        command_subjects.push(tenant::PARTNER_COMMAND_SUBJECTS.to_owned());
    }
    let base = stream::Config {
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    [
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("Softphone contract events, consumed by softphone-bridge.".into()),
            subjects: event_subjects,
            max_age: s.events_max_age,
            duplicate_window: s.duplicate_window.min(s.events_max_age),
            ..base.clone()
        },
        stream::Config {
            name: LANES_STREAM.into(),
            description: Some(
                "Softphone events routed to their lane: one consumer per CRM connection, and the softphone lane."
                    .into(),
            ),
            subjects: vec![LANE_SUBJECTS.into()],
            max_age: s.events_max_age,
            duplicate_window: s.duplicate_window.min(s.events_max_age),
            ..base.clone()
        },
        stream::Config {
            name: COMMANDS_STREAM.into(),
            description: Some(
                "Callbacks on their way to softphones; short-lived on purpose.".into(),
            ),
            subjects: command_subjects,
            max_age: s.commands_max_age,
            duplicate_window: s.duplicate_window.min(s.commands_max_age),
            // Commands from CRMs carry their own TTL (Nats-TTL; NATS 2.11+).
            allow_message_ttl: true,
            ..base.clone()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some("Events softphone-bridge could not handle, with the reason.".into()),
            subjects: vec![DLQ_SUBJECTS.into()],
            max_age: s.dlq_max_age,
            duplicate_window: s.duplicate_window.min(s.dlq_max_age),
            ..base
        },
    ]
}

pub(crate) fn consumer_config(settings: &Settings, consumer: &Consumer) -> consumer::pull::Config {
    let w = &settings.worker;
    let (description, max_ack_pending, ack_wait) = match &consumer.role {
        Role::Intake => (
            "softphone-bridge intake: validates and routes each event once (one replica at a time)"
                .to_owned(),
            // Routing is quick: room for every replica's window.
            w.max_ack_pending.max(w.intake_window as i64),
            // The intake keeps what it holds alive with progress acks: a
            // short wait only brings back soon what a lost connection took.
            w.intake_ack_wait,
        ),
        Role::Softphones => (
            format!(
                "softphone-bridge softphone lane, partition {} (registry and load callbacks; one replica at a time)",
                consumer.partition.unwrap_or_default()
            ),
            w.max_ack_pending,
            w.ack_wait,
        ),
        Role::Crm(connection) => (
            format!(
                "softphone-bridge lane of CRM connection {connection}, partition {} (one replica at a time)",
                consumer.partition.unwrap_or_default()
            ),
            w.max_ack_pending,
            w.ack_wait,
        ),
    };
    consumer::pull::Config {
        durable_name: Some(consumer.name.clone()),
        description: Some(description),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // The pipeline counts deliveries itself and dead-letters at
        // max_deliveries; a server-side limit would strand messages with no outcome.
        max_deliver: -1,
        max_ack_pending,
        filter_subject: consumer.filter.clone().unwrap_or_default(),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}
