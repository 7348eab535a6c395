//! The example NATS permissions (deploy/nats-permissions.conf) on a real
//! server: each user may do what it needs and nothing more (every allow and
//! every deny, with real clients), and the real bridge works end to end as its
//! restricted user.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde_json::{Value, json};
use softphone_bridge::config::Settings;
use softphone_bridge::contract::{API_COMMAND_SUBJECT, COMMANDS_STREAM, LOAD_REQUEST_SUBJECT};

use crate::helpers::*;

const CONF: &str = include_str!("../../deploy/nats-permissions.conf");
const CONF_PATH: &str = "/etc/nats/permissions.conf";

async fn start() -> Nats {
    start_nats_with(None, &["-c", CONF_PATH], &[(CONF_PATH, CONF.as_bytes())]).await
}

/// Each example user's password, as the configuration spells it.
fn password(user: &str) -> String {
    let password = format!("{user}-example-password");
    assert!(
        CONF.contains(&format!("\"{password}\"")),
        "{user} is configured"
    );
    password
}

/// One user's connection, and the errors the server sent it.
struct User {
    name: &'static str,
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl User {
    /// Connects as `name`; softphones and CRMs with their own inbox prefix.
    async fn connect(nats: &Nats, name: &'static str) -> User {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = Arc::clone(&errors);
        let mut options =
            async_nats::ConnectOptions::with_user_and_password(name.into(), password(name))
                .event_callback(move |event| {
                    let seen = Arc::clone(&seen);
                    async move {
                        if let async_nats::Event::ServerError(e) = event {
                            seen.lock().unwrap().push(e.to_string().to_lowercase());
                        }
                    }
                });
        if name != "bridge" {
            options = options.custom_inbox_prefix(format!("_INBOX_{name}"));
        }
        let client = options
            .connect(&nats.url)
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        User {
            name,
            client,
            errors,
        }
    }

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// For JetStream API requests the server refuses: a refused request
    /// gets no answer, so it fails after this shorter timeout.
    fn js_refused(&self) -> jetstream::Context {
        let mut js = self.js();
        js.set_timeout(std::time::Duration::from_secs(2));
        js
    }

    /// Waits for the server to refuse `action` (`publish` or `subscription`) on `subject`.
    async fn refused(&self, action: &str, subject: &str) {
        server_refused(&self.errors, self.name, action, subject).await;
    }

    /// Publishes on `subject`, and waits for the server to refuse it.
    async fn cannot_publish(&self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.refused("publish", subject).await;
    }

    /// Nothing was refused so far.
    fn refused_nothing(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "{} was refused: {errors:?}", self.name);
    }
}

/// A softphone's durable consumer of its own commands: created by the
/// operator (here with the bridge's rights), then read by the softphone.
async fn own_consumer(operator: &User, softphone: &User) -> consumer::PullConsumer {
    operator
        .js()
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(softphone.name.into()),
                filter_subject: format!("softphone.cmd.{}", softphone.name),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
            COMMANDS_STREAM,
        )
        .await
        .unwrap_or_else(|e| panic!("the operator creates {}'s consumer: {e}", softphone.name));
    softphone
        .js()
        .get_consumer_from_stream(softphone.name, COMMANDS_STREAM)
        .await
        .unwrap_or_else(|e| panic!("{} reads its own consumer: {e}", softphone.name))
}

/// The next command the consumer holds (acknowledged): subject and body.
async fn next_command(consumer: &consumer::PullConsumer) -> (String, Value) {
    // One pull request for one message, so none is left to swallow a later one.
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PATIENCE)
        .messages()
        .await
        .expect("the consumer is pulled");
    let message = batch
        .next()
        .await
        .expect("a command in time")
        .expect("a readable command");
    message.ack().await.expect("the softphone acknowledges");
    let body = serde_json::from_slice(&message.payload).expect("JSON");
    (message.subject.to_string(), body)
}

#[tokio::test]
async fn each_user_may_do_what_it_needs_and_nothing_more() {
    let nats = start().await;
    let bridge = User::connect(&nats, "bridge").await;
    let agent7 = User::connect(&nats, "agent-7").await;
    let agent8 = User::connect(&nats, "agent-8").await;
    let crm = User::connect(&nats, "crm-acme").await;

    // The bridge provisions the streams, buckets and consumers.
    let settings = Settings::from_toml("").unwrap();
    softphone_bridge::broker::provision::apply(&bridge.js(), &settings)
        .await
        .expect("the bridge user provisions");

    // A softphone publishes events (stored: its inbox gets the ack) and its heartbeat.
    let body = call_body(&conversation(), "");
    agent7
        .js()
        .publish("softphone.call.accepted", body.into())
        .await
        .unwrap()
        .await
        .expect("the events stream stores a softphone's event");
    let mut heartbeats = bridge
        .client
        .subscribe("softphone.heartbeat.*")
        .await
        .unwrap();
    // A flush only writes the subscription out; the server may take agent-7's
    // heartbeat before it, so agent-7 beats until the bridge hears one.
    let heartbeat = tokio::time::timeout(PATIENCE, async {
        loop {
            agent7
                .client
                .publish("softphone.heartbeat.agent-7", "".into())
                .await
                .unwrap();
            let beat = std::time::Duration::from_millis(200);
            if let Ok(Some(heartbeat)) = tokio::time::timeout(beat, heartbeats.next()).await {
                break heartbeat;
            }
        }
    })
    .await
    .expect("the heartbeat in time");
    assert_eq!(heartbeat.subject.as_str(), "softphone.heartbeat.agent-7");
    // A softphone asks softphone.load, a CRM calls the command endpoint: the
    // requests go out (nobody answers here), they are not refused.
    for (user, subject) in [(&agent7, LOAD_REQUEST_SUBJECT), (&crm, API_COMMAND_SUBJECT)] {
        let unanswered = user
            .client
            .request(subject, "{}".into())
            .await
            .expect_err("nobody answers here");
        assert_eq!(
            unanswered.kind(),
            async_nats::client::RequestErrorKind::NoResponders,
            "{} {subject}",
            user.name
        );
    }

    // Nobody but the bridge publishes commands, lane copies, dead letters or
    // replays (whose original-id headers the intake believes); softphones do
    // not call the command API, CRMs publish no events.
    for subject in [
        "softphone.cmd.agent-8",
        "softphone.cmd.agent-7",
        "softphone.lane.crm.crm.call.ended",
        "softphone.dlq.call.ended",
        "softphone.replay.call.ended",
        "softphone.heartbeat.agent-8",
        API_COMMAND_SUBJECT,
        "$KV.SOFTPHONE_REGISTRY.agent-7",
    ] {
        agent7.cannot_publish(subject).await;
    }
    for subject in [
        "softphone.cmd.agent-7",
        "softphone.loaded",
        "softphone.replay.loaded",
        LOAD_REQUEST_SUBJECT,
        "$JS.API.STREAM.INFO.SOFTPHONE_COMMANDS",
    ] {
        crm.cannot_publish(subject).await;
    }

    // A softphone subscribes to its own commands and inbox only.
    let mut own = agent7
        .client
        .subscribe("softphone.cmd.agent-7")
        .await
        .unwrap();
    let mut others = Vec::new();
    for subject in [
        "softphone.cmd.agent-8",
        "softphone.cmd.*",
        "softphone.>",
        "_INBOX.>",
        "_INBOX_agent-8.>",
        "$JS.ACK.>",
    ] {
        others.push(agent7.client.subscribe(subject).await.unwrap());
        agent7.client.flush().await.unwrap();
        agent7.refused("subscription", subject).await;
    }
    let _crm_peeks = crm.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    crm.client.flush().await.unwrap();
    crm.refused("subscription", "softphone.cmd.agent-7").await;

    // The bridge publishes a command for each; agent-7 gets its own only: the
    // other was published first, on the same connection, so it would have
    // arrived first.
    let bridge_js = bridge.js();
    for softphone in ["agent-8", "agent-7"] {
        bridge_js
            .publish(
                format!("softphone.cmd.{softphone}"),
                json!({"type": "update_presence", "for": softphone})
                    .to_string()
                    .into(),
            )
            .await
            .unwrap()
            .await
            .expect("the commands stream stores the bridge's command");
    }
    let mine = tokio::time::timeout(PATIENCE, own.next())
        .await
        .expect("agent-7's command in time")
        .unwrap();
    assert_eq!(mine.subject.as_str(), "softphone.cmd.agent-7");
    for mut other in others {
        assert!(
            futures::FutureExt::now_or_never(other.next()).is_none(),
            "agent-7 received a message of another subscription"
        );
    }

    // Through JetStream: its own durable consumer, which it can neither create
    // nor change (a push consumer's deliver subject would have the server
    // publish its commands anywhere), only read.
    for (name, filter) in [
        ("agent-7", "softphone.cmd.agent-7"),
        ("agent-7-peek", "softphone.cmd.agent-8"),
    ] {
        let created = agent7
            .js_refused()
            .create_consumer_on_stream(
                consumer::push::Config {
                    durable_name: Some(name.into()),
                    filter_subject: filter.into(),
                    deliver_subject: API_COMMAND_SUBJECT.into(),
                    ..Default::default()
                },
                COMMANDS_STREAM,
            )
            .await;
        assert!(created.is_err(), "agent-7 created {name}");
        agent7
            .refused(
                "publish",
                &format!("$JS.API.CONSUMER.CREATE.SOFTPHONE_COMMANDS.{name}.{filter}"),
            )
            .await;
    }
    let consumer = own_consumer(&bridge, &agent7).await;
    let (subject, body) = next_command(&consumer).await;
    assert_eq!(
        (subject.as_str(), body["for"].as_str()),
        ("softphone.cmd.agent-7", Some("agent-7"))
    );
    let others = agent7
        .js_refused()
        .get_consumer_from_stream::<consumer::pull::Config, _, _>("agent-8", COMMANDS_STREAM)
        .await;
    assert!(others.is_err(), "agent-7 looked at agent-8's consumer");
    agent7
        .refused(
            "publish",
            "$JS.API.CONSUMER.INFO.SOFTPHONE_COMMANDS.agent-8",
        )
        .await;
    for subject in [
        "$JS.API.STREAM.MSG.GET.SOFTPHONE_COMMANDS",
        "$JS.API.DIRECT.GET.SOFTPHONE_COMMANDS",
        "$JS.API.CONSUMER.MSG.NEXT.SOFTPHONE_COMMANDS.agent-8",
        "$JS.API.STREAM.PURGE.SOFTPHONE_COMMANDS",
    ] {
        agent7.cannot_publish(subject).await;
    }
    // agent-8's consumer still sees agent-8's command, untouched.
    let (_, body) = next_command(&own_consumer(&bridge, &agent8).await).await;
    assert_eq!(body["for"], "agent-8");
    bridge.refused_nothing();
    agent8.refused_nothing();
}

#[tokio::test]
async fn the_bridge_works_as_its_restricted_user_end_to_end() {
    let nats = start().await;
    let crm_endpoint = FakeCrm::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("nats-password");
    std::fs::write(&password_file, format!("{}\n", password("bridge"))).unwrap();
    let ops = format!("127.0.0.1:{}", free_port());
    let config = bridge_config(
        &crm_endpoint.url(),
        &format!(
            "[nats]\nuser = \"bridge\"\npassword_file = \"{}\"\n[http]\nops_listen = \"{ops}\"\n",
            password_file.display()
        ),
    );
    let bridge = Bridge::start(&nats.url, &config);
    let http = reqwest::Client::new();
    eventually("the bridge to be ready", || async {
        let response = http.get(format!("http://{ops}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let agent7 = User::connect(&nats, "agent-7").await;
    let agent8 = User::connect(&nats, "agent-8").await;
    let crm = User::connect(&nats, "crm-acme").await;
    // The operator creates agent-7's consumer with the softphone's user.
    let operator = User::connect(&nats, "bridge").await;
    let commands7 = own_consumer(&operator, &agent7).await;
    let mut plain8 = agent8
        .client
        .subscribe("softphone.cmd.agent-8")
        .await
        .unwrap();
    agent8.client.flush().await.unwrap();

    // A softphone's event is handled: the CRM hears of it, the softphone gets its callbacks.
    for softphone in [&agent7, &agent8] {
        softphone
            .js()
            .publish(
                "softphone.loaded",
                json!({"softphoneId": softphone.name, "partnerId": PARTNER})
                    .to_string()
                    .into(),
            )
            .await
            .unwrap()
            .await
            .expect("the event is stored");
    }
    let mut heard = Vec::new();
    for _ in 0..2 {
        let request = crm_endpoint.next_request().await;
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        heard.push(body["data"]["softphoneId"].as_str().unwrap().to_owned());
    }
    heard.sort();
    assert_eq!(heard, ["agent-7", "agent-8"]);
    let (_, callback) = next_command(&commands7).await;
    assert_eq!(callback["type"], "disposition");
    // agent-8's commands, as its plain subscription gets them, up to one of `kind`.
    let mut seen8 = Vec::new();
    let mut until8 = async |kind: &str| {
        while seen8.last() != Some(&json!(kind)) {
            let message = tokio::time::timeout(PATIENCE, plain8.next())
                .await
                .expect("agent-8's commands in time")
                .unwrap();
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            seen8.push(body["type"].clone());
        }
    };
    // Loaded (registered) too.
    until8("disposition").await;
    let reply = agent7
        .client
        .request(
            LOAD_REQUEST_SUBJECT,
            json!({"softphoneId": "agent-7", "partnerId": PARTNER})
                .to_string()
                .into(),
        )
        .await
        .expect("the bridge answers softphone.load");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["softphoneId"], "agent-7", "{reply}");
    assert_eq!(reply["callbacks"][0]["type"], "disposition", "{reply}");
    agent7
        .client
        .publish("softphone.heartbeat.agent-7", "".into())
        .await
        .unwrap();

    // A CRM's command reaches the right softphone only.
    let command_body = |softphone: &str, mut command: Value| {
        command["softphoneId"] = json!(softphone);
        command
    };
    let command = |softphone: &str, command: Value| {
        let command = command_body(softphone, command);
        let client = crm.client.clone();
        async move {
            let reply = client
                .request(API_COMMAND_SUBJECT, command.to_string().into())
                .await
                .expect("the bridge answers softphone.api.command");
            let reply: Value = serde_json::from_slice(&reply.payload)
                .unwrap_or_else(|_| panic!("refused: {:?}", reply.headers));
            reply
        }
    };
    let sent = command("agent-7", start_call()).await;
    assert_eq!(sent["duplicate"], false, "{sent}");
    let (subject, received) = next_command(&commands7).await;
    assert_eq!(subject, "softphone.cmd.agent-7");
    assert_eq!(received["type"], "start_call");
    let presence = json!({"type": "update_presence", "payload": {"softphoneId": STATUS}});

    // Nobody can make the bridge answer outside an inbox: not a CRM asking
    // for its answer on agent-8's command subject...
    let mut spoofed = command_body("agent-8", presence.clone());
    spoofed["idempotencyKey"] = json!("spoofed-reply");
    crm.client
        .publish_with_reply(
            API_COMMAND_SUBJECT,
            "softphone.cmd.agent-8",
            spoofed.to_string().into(),
        )
        .await
        .unwrap();
    bridge
        .logged_line(&["Dropped a request", "softphone.cmd.agent-8"])
        .await;
    // ... nor a softphone steering a pull of its commands onto the command endpoint.
    command("agent-7", presence.clone()).await;
    agent7
        .client
        .publish_with_reply(
            "$JS.API.CONSUMER.MSG.NEXT.SOFTPHONE_COMMANDS.agent-7",
            API_COMMAND_SUBJECT,
            json!({"batch": 1}).to_string().into(),
        )
        .await
        .unwrap();
    bridge
        .logged_line(&["Dropped a request", "softphone.cmd.agent-7"])
        .await;

    command("agent-8", presence).await;
    until8("update_presence").await;
    assert_eq!(
        seen8,
        [json!("disposition"), json!("update_presence")],
        "agent-8 received only its own commands"
    );

    for user in [&agent7, &agent8, &crm] {
        user.refused_nothing();
    }
    bridge.terminate();
    let (status, stderr) = bridge.wait().await;
    assert!(status.success(), "{stderr}");
    assert!(
        !stderr.to_lowercase().contains("permissions violation"),
        "{stderr}"
    );
}
