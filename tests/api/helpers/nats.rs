//! A NATS server with JetStream in a container, and reading what the
//! bridge's streams and consumers hold.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, publish::PublishAck};
use futures::StreamExt;
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{DLQ_STREAM, EventKind, LANES_STREAM};
use softphone_bridge::pipeline;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::{PATIENCE, eventually, init_logs};

/// The NATS image; deploy/nats-image.sh makes it available offline.
fn nats_image() -> (String, String) {
    let image = std::env::var("SOFTPHONE_NATS_IMAGE")
        .unwrap_or_else(|_| "softphone-bridge/nats:2.12.8".to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A NATS server with JetStream in a container of its own.
pub struct Nats {
    pub container: ContainerAsync<GenericImage>,
    pub url: String,
}

pub async fn start_nats() -> Nats {
    start_nats_with(None, &[], &[]).await
}

/// NATS on a fixed host port, so that the URL survives a stop and start.
pub async fn start_nats_pinned() -> Nats {
    start_nats_with(Some(super::free_port()), &[], &[]).await
}

/// NATS with extra server arguments (e.g. `--auth <token>`) and files copied
/// into the container (`(path, contents)`), on `port` if given.
pub async fn start_nats_with(port: Option<u16>, args: &[&str], files: &[(&str, &[u8])]) -> Nats {
    init_logs();
    let (name, tag) = nats_image();
    let mut cmd = vec!["--jetstream", "--store_dir", "/data"];
    cmd.extend_from_slice(args);
    let image = GenericImage::new(name.clone(), tag.clone())
        .with_exposed_port(ContainerPort::Tcp(4222))
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"));
    let mut request = match port {
        Some(port) => image
            .with_cmd(cmd)
            .with_mapped_port(port, ContainerPort::Tcp(4222)),
        None => image.with_cmd(cmd),
    };
    for (path, contents) in files {
        request = request.with_copy_to(path.to_string(), contents.to_vec());
    }
    let container = request.start().await.unwrap_or_else(|e| {
        panic!("cannot start NATS from image {name}:{tag} (run deploy/nats-image.sh first): {e}")
    });
    let port = container
        .get_host_port_ipv4(4222)
        .await
        .expect("NATS port is mapped");
    Nats {
        container,
        url: format!("nats://127.0.0.1:{port}"),
    }
}

pub async fn publish(
    js: &jetstream::Context,
    kind: EventKind,
    body: &str,
    msg_id: Option<&str>,
) -> PublishAck {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    js.publish_with_headers(kind.subject(), headers, body.to_owned().into())
        .await
        .expect("publish is sent")
        .await
        .expect("the events stream acknowledges")
}

/// How many messages a stream holds now.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("stream exists");
    stream.info().await.expect("stream info").state.messages
}

pub async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let stream = js.get_stream(stream).await.expect("stream exists");
    stream.consumer_info(name).await.expect("consumer exists")
}

/// The pipeline consumer of the settings that `pick` chooses.
pub fn pipeline_consumer(
    settings: &Settings,
    pick: impl Fn(&pipeline::Role) -> bool,
) -> pipeline::Consumer {
    pipeline::consumers(settings)
        .into_iter()
        .find(|c| pick(&c.role))
        .expect("the pipeline has that consumer")
}

/// A lane's partition consumers taken together.
#[derive(Debug, Default)]
pub struct LaneInfo {
    pub num_pending: u64,
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    pub num_waiting: usize,
    /// Deliveries made, every partition's together.
    pub deliveries: u64,
    /// Messages the lane stream holds for the lane: deliveries beyond them
    /// were redeliveries (once every one was delivered).
    pub messages: u64,
    /// The highest stream sequence any partition has acknowledged up to.
    pub ack_floor: u64,
    /// Each partition's consumer.
    pub partitions: Vec<consumer::Info>,
}

/// The lane of CRM connection `connection`: its partitions' consumers.
pub async fn lane_info(js: &jetstream::Context, settings: &Settings, connection: &str) -> LaneInfo {
    let mut lane = LaneInfo::default();
    for partition in pipeline::consumers(settings)
        .into_iter()
        .filter(|c| c.role == pipeline::Role::Crm(connection.into()))
    {
        let info = consumer_info(js, LANES_STREAM, &partition.name).await;
        lane.num_pending += info.num_pending;
        lane.num_ack_pending += info.num_ack_pending;
        lane.num_redelivered += info.num_redelivered;
        lane.num_waiting += info.num_waiting;
        lane.deliveries += info.delivered.consumer_sequence;
        lane.ack_floor = lane.ack_floor.max(info.ack_floor.stream_sequence);
        lane.messages +=
            subject_messages(js, LANES_STREAM, partition.filter.as_deref().unwrap()).await;
        lane.partitions.push(info);
    }
    lane
}

/// How many messages `stream` holds on subjects matching `filter`.
pub async fn subject_messages(js: &jetstream::Context, stream: &str, filter: &str) -> u64 {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let mut subjects = stream
        .info_with_subjects(filter)
        .await
        .expect("stream info");
    let mut total = 0;
    while let Some(Ok((_, count))) = subjects.next().await {
        total += count as u64;
    }
    total
}

/// Polls one consumer until nothing is pending or in flight (with a deadline).
pub async fn consumer_settled(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    eventually(
        "the consumer to have nothing pending or unacknowledged",
        || async {
            let info = consumer_info(js, stream, name).await;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
        },
    )
    .await
}

/// Waits until the intake, then every lane partition, has acknowledged every
/// message its stream holds for it; returns the default CRM lane's consumers.
pub async fn settled(js: &jetstream::Context, settings: &Settings) -> LaneInfo {
    // The intake acks an event once its copies are stored: caught up first, it
    // leaves nothing more for the lanes.
    for consumer in pipeline::consumers(settings) {
        eventually(
            &format!("{} to acknowledge all its messages", consumer.name),
            || caught_up(js, &consumer),
        )
        .await;
    }
    lane_info(js, settings, "crm").await
}

/// Whether the consumer's ack floor has reached the last message of its
/// stream that it reads: exact, where pending counts may lag a fresh message.
async fn caught_up(js: &jetstream::Context, consumer: &pipeline::Consumer) -> Option<()> {
    let info = consumer_info(js, consumer.stream, &consumer.name).await;
    if info.num_pending > 0 || info.num_ack_pending > 0 {
        return None;
    }
    let mut stream = js.get_stream(consumer.stream).await.expect("stream exists");
    let last = match &consumer.filter {
        Some(filter) => stream
            .get_last_raw_message_by_subject(filter)
            .await
            .map_or(0, |message| message.sequence),
        None => {
            stream
                .info()
                .await
                .expect("stream info")
                .state
                .last_sequence
        }
    };
    (info.ack_floor.stream_sequence >= last).then_some(())
}

/// Reads the dead-letter stream from its start.
pub struct DeadLetters {
    messages: jetstream::consumer::pull::Stream,
}

impl DeadLetters {
    pub async fn open(js: &jetstream::Context) -> Self {
        let stream = js.get_stream(DLQ_STREAM).await.expect("DLQ stream exists");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("ephemeral DLQ reader");
        Self {
            messages: consumer.messages().await.expect("DLQ reader pulls"),
        }
    }

    pub async fn next(&mut self) -> jetstream::Message {
        tokio::time::timeout(PATIENCE, self.messages.next())
            .await
            .expect("a dead letter arrived in time")
            .expect("DLQ stream open")
            .expect("DLQ message")
    }
}

pub fn header<'a>(message: &'a jetstream::Message, name: &str) -> &'a str {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .unwrap_or_else(|| panic!("header {name} present"))
}

/// How many messages `SOFTPHONE_COMMANDS` holds for one softphone.
pub async fn commands_for(js: &jetstream::Context, softphone: &str) -> u64 {
    let subject = format!("softphone.cmd.{softphone}");
    let stream = js
        .get_stream(softphone_bridge::contract::COMMANDS_STREAM)
        .await
        .expect("commands stream exists");
    let info = stream
        .info_with_subjects(subject.clone())
        .await
        .expect("stream info");
    let mut total = 0;
    let mut subjects = info;
    while let Some(Ok((name, count))) = subjects.next().await {
        if name == subject {
            total += count as u64;
        }
    }
    total
}

/// A JetStream consumer of one softphone's commands, as the README's softphone
/// example makes it: explicit acks, every message the stream still holds.
pub async fn command_consumer(
    js: &jetstream::Context,
    softphone: &str,
) -> jetstream::consumer::PullConsumer {
    js.get_stream(softphone_bridge::contract::COMMANDS_STREAM)
        .await
        .expect("commands stream exists")
        .create_consumer(consumer::pull::Config {
            filter_subject: format!("softphone.cmd.{softphone}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("a command consumer")
}

/// Every message `consumer` has received or would receive now.
pub async fn consumer_total(consumer: &mut jetstream::consumer::PullConsumer) -> u64 {
    let info = consumer.info().await.expect("consumer info");
    info.num_pending + info.delivered.consumer_sequence
}

/// The messages a core subscription has received so far: after a round trip
/// on `client`, everything the server sent it before is in the subscription.
pub async fn core_received(
    client: &async_nats::Client,
    subscription: &mut async_nats::Subscriber,
) -> Vec<async_nats::Message> {
    use futures::FutureExt;
    client.flush().await.expect("a round trip");
    let mut received = Vec::new();
    while let Some(Some(message)) = subscription.next().now_or_never() {
        received.push(message);
    }
    received
}

/// The next command a softphone's subscription receives: the message, its
/// body without `expiresAt`, and that `expiresAt` (every command carries one).
pub async fn next_command_body(
    subscription: &mut async_nats::Subscriber,
) -> (async_nats::Message, serde_json::Value, serde_json::Value) {
    let message = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a command in time")
        .expect("the subscription is open");
    let mut body: serde_json::Value =
        serde_json::from_slice(&message.payload).expect("a JSON command");
    let expires = body
        .as_object_mut()
        .expect("a JSON object")
        .remove("expiresAt")
        .expect("the command says when it expires");
    (message, body, expires)
}

/// A NATS service reply: the error code, and the JSON answer (the problem
/// document of an error reply, which travels in its `Softphone-Problem` header).
pub fn service_reply(reply: &async_nats::Message) -> (Option<u16>, serde_json::Value) {
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    match header("Nats-Service-Error-Code") {
        Some(code) => {
            let problem = header("Softphone-Problem").expect("an error reply carries its problem");
            assert!(reply.payload.is_empty(), "a service error has no body");
            (
                Some(code.parse().expect("a numeric code")),
                serde_json::from_str(&problem).expect("a problem document"),
            )
        }
        None => (
            None,
            serde_json::from_slice(&reply.payload).expect("a JSON reply"),
        ),
    }
}
