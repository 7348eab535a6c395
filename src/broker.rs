//! NATS: connecting with the configured credentials, and provisioning the
//! streams, the durable consumer and the registry bucket (idempotent: create
//! or update).

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use secrecy::ExposeSecret;

use crate::config::{Lane, NatsSettings, Settings, redacted_url};
use crate::contract::{
    COMMAND_SUBJECTS, COMMANDS_STREAM, DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM, EventKind,
};

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
    let mut options = async_nats::ConnectOptions::new()
        .name(&settings.name)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("Connected to NATS."),
                async_nats::Event::Disconnected => {
                    tracing::warn!("Disconnected from NATS; reconnecting.")
                }
                other => tracing::info!(event = %other, "NATS connection event."),
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

/// A JetStream context whose API calls and publish acks time out as configured.
pub fn jetstream(client: async_nats::Client, settings: &NatsSettings) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(settings.request_timeout)
        .build(client)
}

/// Creates or updates the three streams and the shared durable consumer.
pub async fn provision(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    for config in stream_configs(settings) {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("cannot create or update stream {name}"))?;
        tracing::info!(stream = %name, "Stream provisioned.");
    }
    let events = js
        .get_stream(EVENTS_STREAM)
        .await
        .with_context(|| format!("cannot look up stream {EVENTS_STREAM}"))?;
    for lane in settings.lanes() {
        let start = lane_start(&events, settings, &lane).await?;
        events
            .create_consumer(consumer_config(settings, &lane, start))
            .await
            .with_context(|| format!("cannot create or update consumer {}", lane.consumer))?;
        tracing::info!(consumer = %lane.consumer, crm = %lane.connection, "Consumer provisioned.");
    }
    let bucket = crate::registry::bucket_config(&settings.registry, settings.streams.replicas);
    js.create_or_update_key_value(bucket)
        .await
        .with_context(|| {
            format!(
                "cannot create or update key-value bucket {}",
                settings.registry.bucket
            )
        })?;
    tracing::info!(bucket = %settings.registry.bucket, "Registry bucket provisioned.");
    Ok(())
}

/// The durable pull consumers every replica binds to, one per lane.
pub async fn bind_consumers(
    js: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<Vec<(Lane, consumer::PullConsumer)>> {
    let mut bound = Vec::new();
    for lane in settings.lanes() {
        let consumer = js
            .get_consumer_from_stream(&lane.consumer, EVENTS_STREAM)
            .await
            .with_context(|| {
                format!(
                    "cannot bind to consumer {} on {EVENTS_STREAM} (run `softphone-bridge provision`?)",
                    lane.consumer
                )
            })?;
        bound.push((lane, consumer));
    }
    Ok(bound)
}

/// Where a lane's consumer starts. An existing consumer keeps its start (it
/// cannot change). A new lane beside an existing default lane starts at the
/// default lane's ack floor, so the events it now owns that the default lane
/// has not handled yet are not skipped, and a week of history is not replayed.
async fn lane_start(
    events: &jetstream::stream::Stream,
    settings: &Settings,
    lane: &Lane,
) -> anyhow::Result<consumer::DeliverPolicy> {
    if let Ok(existing) = events.consumer_info(&lane.consumer).await {
        return Ok(existing.config.deliver_policy);
    }
    if lane.is_default() {
        return Ok(consumer::DeliverPolicy::All);
    }
    Ok(
        match events.consumer_info(&settings.worker.consumer).await {
            Ok(default) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: default.ack_floor.stream_sequence + 1,
            },
            Err(_) => consumer::DeliverPolicy::All,
        },
    )
}

fn stream_configs(settings: &Settings) -> [stream::Config; 3] {
    let s = &settings.streams;
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
            subjects: EventKind::subjects(),
            max_age: s.events_max_age,
            duplicate_window: s.duplicate_window.min(s.events_max_age),
            ..base.clone()
        },
        stream::Config {
            name: COMMANDS_STREAM.into(),
            description: Some(
                "Callbacks on their way to softphones; short-lived on purpose.".into(),
            ),
            subjects: vec![COMMAND_SUBJECTS.into()],
            max_age: s.commands_max_age,
            duplicate_window: s.duplicate_window.min(s.commands_max_age),
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

fn consumer_config(
    settings: &Settings,
    lane: &Lane,
    deliver_policy: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    let w = &settings.worker;
    consumer::pull::Config {
        durable_name: Some(lane.consumer.clone()),
        description: Some(format!(
            "softphone-bridge workers for CRM connection {} (shared by every replica)",
            lane.connection
        )),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: w.ack_wait,
        // The worker counts deliveries itself and dead-letters at max_deliveries;
        // a server-side limit would strand messages with no outcome.
        max_deliver: -1,
        max_ack_pending: w.max_ack_pending,
        deliver_policy,
        ..Default::default()
    }
}
