//! The bridge's side of tenancy (deploy/tenancy.md): who the server vouches
//! for, commands published to a partner's account only, the NATS service and
//! heartbeats on partners' subjects; on the real nats-server started with
//! the rendered configuration, the bridge's real callout, real clients over
//! TCP and WebSocket.

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use softphone_bridge::Application;
use softphone_bridge::contract::tenant::{LOGIN_HEADER, REQUEST_INFO_HEADER, vouched_publisher};
use softphone_bridge::contract::{EVENTS_STREAM, Guid, Loaded, SoftphoneId};
use softphone_bridge::softphones::registry::{Entry, Phone, Registry};

use crate::helpers::*;

const A: &str = PARTNER;
const B: &str = PARTNER_B;

/// The next message of `messages`, in time.
async fn next(messages: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(PATIENCE, messages.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
}

#[tokio::test]
async fn the_server_vouches_for_the_publishers_login_and_a_client_cannot_forge_it() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let mut beats = tenancy
        .bridge
        .subscribe("softphone.p.*.heartbeat.*")
        .await
        .unwrap();
    tenancy.bridge_round_trip().await;
    // A's `agent-7`, over WebSocket, names its connection after another
    // softphone and sends the header itself, spelt as the server spells it
    // and otherwise.
    let a7 = async_nats::ConnectOptions::with_token(Tenancy::softphone_token("agent-7", A))
        .name("agent-8")
        .custom_inbox_prefix("_INBOX_agent-7")
        .connect(tenancy.ws_url.as_str())
        .await
        .expect("A's softphone logs in over WebSocket");
    let forged = format!(r#"{{"acc":"{B}","user":"agent-8"}}"#);
    for name in [
        REQUEST_INFO_HEADER,
        "nats-request-info",
        "NATS-REQUEST-INFO",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(name, forged.as_str());
        headers.append(name, forged.as_str());
        a7.publish_with_headers("softphone.heartbeat.agent-7", headers, "".into())
            .await
            .unwrap();
    }
    a7.publish("softphone.heartbeat.agent-7", "".into())
        .await
        .unwrap();
    a7.flush().await.unwrap();
    for _ in 0..4 {
        let beat = next(&mut beats).await;
        assert_eq!(
            beat.subject.as_str(),
            format!("softphone.p.{A}.heartbeat.agent-7")
        );
        let headers = beat.headers.as_ref().expect("the server's header");
        let vouched = vouched_publisher(Some(headers)).unwrap_or_else(|| {
            panic!("the server vouches for the publisher: {headers:?}");
        });
        assert_eq!(vouched.user, "agent-7", "{headers:?}");
        assert_eq!(vouched.partner().as_ref().map(|p| p.as_str()), Some(A));
        // Nothing secret crosses: neither the login token nor a JWT.
        let info = headers.get(REQUEST_INFO_HEADER).unwrap().as_str();
        assert!(!info.contains("eyJ"), "{info}");
    }
    // A `load` request carries it too, over TCP.
    let mut loads = tenancy
        .bridge
        .subscribe("softphone.p.*.load")
        .await
        .unwrap();
    tenancy.bridge_round_trip().await;
    let b5 = Login::softphone(&tenancy.url, "agent-5", B).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(REQUEST_INFO_HEADER, forged.as_str());
    let request = tokio::spawn({
        let client = b5.client.clone();
        async move {
            client
                .request_with_headers("softphone.load", headers, "{}".into())
                .await
        }
    });
    let asked = next(&mut loads).await;
    let vouched = vouched_publisher(asked.headers.as_ref()).expect("vouched");
    assert_eq!(
        (vouched.account.as_str(), vouched.user.as_str()),
        (B, "agent-5")
    );
    tenancy
        .bridge
        .publish(asked.reply.unwrap(), "ok".into())
        .await
        .unwrap();
    request.await.unwrap().unwrap();
    // An event's header never reaches the stream: the intake cannot read it.
    a7.publish(
        "softphone.call.accepted",
        call_body(&conversation(), "").into(),
    )
    .await
    .unwrap();
    let stream = jetstream::new(tenancy.bridge.clone())
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap();
    let stored = eventually("the event to be stored", || async {
        stream
            .get_last_raw_message_by_subject(&format!("softphone.p.{A}.call.accepted"))
            .await
            .ok()
    })
    .await;
    assert!(
        stored.headers.get(REQUEST_INFO_HEADER).is_none(),
        "{:?}",
        stored.headers
    );
}

/// The bridge, in this process, on a tenancy deployment: its service,
/// heartbeat listener and callout; stopped when dropped.
struct App {
    registry: Registry,
    /// Its HTTP command API: [`TOKEN`] (every partner), [`PARTNER_TOKEN`]
    /// (A) and [`AB_TOKEN`] (A and B).
    http: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
}

/// An HTTP token of partners A and B.
const AB_TOKEN: &str = "test-token-partners-a-and-b";

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    /// Starts the bridge with the deployment's settings; returns once its
    /// command service answers on partner A's subject (`crm` may publish there).
    async fn start(tenancy: &Tenancy, crm: &Login) -> App {
        let mut settings = tenancy.settings.clone();
        settings.nats.url = tenancy.url.clone();
        serve_http(&mut settings);
        settings
            .http
            .tokens
            .push(token_settings("crm-ab", AB_TOKEN, Some(vec![A, B])));
        let registry = Registry::new(jetstream::new(tenancy.bridge.clone()), &settings.registry);
        let app = Application::build(settings)
            .await
            .expect("the bridge builds");
        let http = app.http_addr().expect("an HTTP listener");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.run_until(stop.clone()));
        eventually("the bridge's service to answer", || async {
            crm.client
                .request(format!("softphone.p.{A}.api.command"), "{}".into())
                .await
                .ok()
        })
        .await;
        App {
            registry,
            http,
            stop,
        }
    }

    /// Records `partner`'s `softphone` as a `loaded` from its account at
    /// `at` does (the softphone lane's part: deploy/tenancy.md).
    async fn loaded(&self, softphone: &str, partner: &str, at: time::OffsetDateTime) {
        let loaded = Loaded {
            softphone_id: softphone.parse().unwrap(),
            partner_id: None,
        };
        let partner: Guid = partner.parse().unwrap();
        self.registry
            .loaded(&loaded, Some(&partner), at)
            .await
            .unwrap();
    }

    /// `partner`'s entry of `softphone`.
    async fn entry(&self, softphone: &str, partner: &str) -> Option<Entry> {
        let id: SoftphoneId = softphone.parse().unwrap();
        let partner: Guid = partner.parse().unwrap();
        self.registry.get(Phone::of(&partner, &id)).await.unwrap()
    }
}

/// `GET /v1/softphones/{softphone}` (`?partnerId=`) with `token`: the status
/// and the entry or problem.
async fn describe(app: &App, token: &str, softphone: &str, partner: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .get(format!("http://{}/v1/softphones/{softphone}", app.http))
        .bearer_auth(token);
    if let Some(partner) = partner {
        request = request.query(&[("partnerId", partner)]);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// A CRM login of `partners`, over TCP.
async fn crm(tenancy: &Tenancy, name: &str, partners: &[&str]) -> Login {
    let token = Tenancy::token(json!({
        "sub": name, "role": "crm", "partners": partners, "exp": in_an_hour()
    }));
    Login::connect(&tenancy.url, name, &token).await.unwrap()
}

/// A request and its reply: the error code (if any) and the body or problem.
async fn ask(client: &async_nats::Client, subject: String, body: Value) -> (Option<u16>, Value) {
    let reply = tokio::time::timeout(PATIENCE, client.request(subject, body.to_string().into()))
        .await
        .expect("an answer in time")
        .expect("an answer");
    service_reply(&reply)
}

fn presence(softphone: &str) -> Value {
    json!({"softphoneId": softphone, "type": "update_presence", "payload": {"softphoneId": SEGMENT}})
}

/// The same command as the HTTP route takes it (the softphone in the path).
fn presence_command() -> Value {
    json!({"type": "update_presence", "payload": {"softphoneId": SEGMENT}})
}

/// Nothing more has reached `commands` once its client has had a round trip.
async fn nothing_more(softphone: &Login, commands: &mut async_nats::Subscriber) {
    softphone.round_trip().await;
    assert!(
        futures::FutureExt::now_or_never(commands.next()).is_none(),
        "{} received a command that was not its own",
        softphone.name
    );
}

#[tokio::test]
async fn a_crm_command_reaches_its_partners_softphone_over_websocket_and_tcp_and_never_another() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let crm_a = crm(&tenancy, "crm-a", &[A]).await;
    let app = App::start(&tenancy, &crm_a).await;
    let now = time::OffsetDateTime::now_utc();
    app.loaded("agent-7", A, now).await;
    app.loaded("agent-9", A, now).await;
    app.loaded("agent-8", B, now).await;
    app.loaded("agent-7", B, now).await;
    // A's agent-7 over WebSocket, A's agent-9 over TCP; B has an agent-7 too.
    let a7 = Login::softphone(&tenancy.ws_url, "agent-7", A)
        .await
        .unwrap();
    let a9 = Login::softphone(&tenancy.url, "agent-9", A).await.unwrap();
    let b7 = Login::softphone(&tenancy.url, "agent-7", B).await.unwrap();
    let b8 = Login::softphone(&tenancy.ws_url, "agent-8", B)
        .await
        .unwrap();
    let mut inbox = Vec::new();
    for softphone in [&a7, &a9, &b7, &b8] {
        let commands = softphone
            .client
            .subscribe(format!("softphone.cmd.{}", softphone.name))
            .await
            .unwrap();
        softphone.round_trip().await;
        inbox.push(commands);
    }
    let [a7_commands, a9_commands, b7_commands, b8_commands] = &mut inbox[..] else {
        unreachable!()
    };
    let a_service = format!("softphone.p.{A}.api.command");
    for (softphone, commands) in [(&a7, &mut *a7_commands), (&a9, &mut *a9_commands)] {
        let (code, accepted) =
            ask(&crm_a.client, a_service.clone(), presence(&softphone.name)).await;
        assert_eq!(code, None, "{accepted}");
        assert_eq!(accepted["stream"], "SOFTPHONE_COMMANDS");
        let (message, body, _) = next_command_body(commands).await;
        assert_eq!(
            message.subject.as_str(),
            format!("softphone.cmd.{}", softphone.name)
        );
        assert_eq!(body["type"], "update_presence");
    }
    // B's softphones: out of A's CRM's reach, and nothing crossed to them.
    let (code, problem) = ask(&crm_a.client, a_service.clone(), presence("agent-8")).await;
    assert_eq!(code, Some(404), "{problem}");
    tenancy.bridge_round_trip().await;
    nothing_more(&b7, b7_commands).await;
    nothing_more(&b8, b8_commands).await;
    nothing_more(&a7, a7_commands).await;
    // A command naming another partner in its body is refused.
    let mut foreign = start_call();
    foreign["payload"]["partnerId"] = json!(B);
    foreign["softphoneId"] = json!("agent-7");
    let (code, problem) = ask(&crm_a.client, a_service.clone(), foreign).await;
    assert_eq!(code, Some(403), "{problem}");
    // B's service subject is not A's CRM's to publish on.
    crm_a
        .client
        .publish(
            format!("softphone.p.{B}.api.command"),
            presence("agent-8").to_string().into(),
        )
        .await
        .unwrap();
    crm_a.client.flush().await.unwrap();
    crm_a
        .refused("publish", &format!("softphone.p.{B}.api.command"))
        .await;
    nothing_more(&b8, b8_commands).await;
    // Two partners' agent-7 are two softphones: a caller of every partner
    // (the bridge's own subject) must say whose, and reaches only that one.
    let own = softphone_bridge::contract::API_COMMAND_SUBJECT.to_owned();
    let (code, problem) = ask(&tenancy.bridge, own.clone(), presence("agent-7")).await;
    assert_eq!(code, Some(400), "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("partner-required"),
        "{problem}"
    );
    let mut to_b = presence("agent-7");
    to_b["partnerId"] = json!(B);
    let (code, accepted) = ask(&tenancy.bridge, own, to_b).await;
    assert_eq!(code, None, "{accepted}");
    let (message, body, _) = next_command_body(b7_commands).await;
    assert_eq!(message.subject.as_str(), "softphone.cmd.agent-7");
    assert_eq!(body["type"], "update_presence");
    tenancy.bridge_round_trip().await;
    nothing_more(&a7, a7_commands).await;
    for softphone in [&a7, &a9, &b7, &b8] {
        softphone.refused_nothing();
    }
}

#[tokio::test]
async fn load_over_websocket_answers_for_the_logins_partner_and_softphone_only() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let crm_a = crm(&tenancy, "crm-a", &[A]).await;
    let _app = App::start(&tenancy, &crm_a).await;
    let a7 = Login::softphone(&tenancy.ws_url, "agent-7", A)
        .await
        .unwrap();
    let load = |body: Value| ask(&a7.client, "softphone.load".to_owned(), body);
    for body in [
        json!({"softphoneId": "agent-7"}),
        json!({"softphoneId": "agent-7", "partnerId": A}),
    ] {
        let (code, reply) = load(body).await;
        assert_eq!(code, None, "{reply}");
        assert_eq!(reply["softphoneId"], "agent-7");
        let callbacks = reply["callbacks"].as_array().unwrap();
        assert_eq!(callbacks[0]["type"], "disposition", "{reply}");
        assert_eq!(callbacks[1]["type"], "partner_config", "{reply}");
        assert_eq!(callbacks[1]["payload"]["partnerId"], A, "{reply}");
    }
    // Another partner's callbacks, or another softphone's: refused.
    for body in [
        json!({"softphoneId": "agent-7", "partnerId": B}),
        json!({"softphoneId": "agent-8"}),
    ] {
        let (code, problem) = load(body.clone()).await;
        assert_eq!(code, Some(403), "{body}: {problem}");
    }
    let (code, _) = load(json!({"partnerId": A})).await;
    assert_eq!(code, Some(400));
    a7.refused_nothing();
}

#[tokio::test]
async fn heartbeats_on_partners_subjects_refresh_only_that_partners_own_softphone() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let crm_a = crm(&tenancy, "crm-a", &[A]).await;
    let app = App::start(&tenancy, &crm_a).await;
    let earlier = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    for softphone in ["agent-7", "agent-8", "agent-9"] {
        app.loaded(softphone, A, earlier).await;
    }
    let a7 = Login::softphone(&tenancy.ws_url, "agent-7", A)
        .await
        .unwrap();
    let a9 = Login::softphone(&tenancy.url, "agent-9", A).await.unwrap();
    // B's own agent-8 (A has one too) and agent-5 (nobody has loaded it).
    let b8 = Login::softphone(&tenancy.url, "agent-8", B).await.unwrap();
    let b5 = Login::softphone(&tenancy.ws_url, "agent-5", B)
        .await
        .unwrap();
    let beat = |login: &Login| {
        let client = login.client.clone();
        let subject = format!("softphone.heartbeat.{}", login.name);
        async move { client.publish(subject, "".into()).await.unwrap() }
    };
    // The listener is there once a beat of A's agent-9 is recorded.
    eventually("agent-9's heartbeat to be recorded", || async {
        beat(&a9).await;
        let entry = app.entry("agent-9", A).await?;
        (entry.last_seen > earlier).then_some(())
    })
    .await;
    // B's beats, then A's agent-7's: once that one is recorded, B's were read.
    beat(&b8).await;
    beat(&b5).await;
    b8.round_trip().await;
    b5.round_trip().await;
    beat(&a7).await;
    let a7_entry = eventually("agent-7's heartbeat to be recorded", || async {
        app.entry("agent-7", A)
            .await
            .filter(|e| e.last_seen > earlier)
    })
    .await;
    assert_eq!(a7_entry.partner_id.unwrap().as_str(), A);
    let a8 = app.entry("agent-8", A).await.unwrap();
    assert_eq!(
        Some(a8.last_seen),
        a8.loaded_at,
        "B's heartbeat touched A's agent-8"
    );
    assert_eq!(a8.partner_id.unwrap().as_str(), A);
    for (softphone, partner) in [("agent-5", B), ("agent-8", B)] {
        assert!(
            app.entry(softphone, partner).await.is_none(),
            "a heartbeat made {softphone} B's"
        );
    }
    for login in [&a7, &a9, &b8, &b5] {
        login.refused_nothing();
    }
}

/// The dead letter `SOFTPHONE_DLQ` holds for `subject` after `after` (a
/// stream sequence), once it holds one.
async fn dead_letter(
    bridge: &async_nats::Client,
    subject: String,
    after: u64,
) -> jetstream::message::StreamMessage {
    let dlq = jetstream::new(bridge.clone())
        .get_stream(softphone_bridge::contract::DLQ_STREAM)
        .await
        .unwrap();
    eventually(&format!("a dead letter on {subject}"), || async {
        dlq.get_last_raw_message_by_subject(&subject)
            .await
            .ok()
            .filter(|m| m.sequence > after)
    })
    .await
}

#[tokio::test]
async fn a_partners_loaded_and_status_changes_carry_the_login_the_server_vouches_for() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let crm_a = crm(&tenancy, "crm-a", &[A]).await;
    let app = App::start(&tenancy, &crm_a).await;
    // A's agent-7 over WebSocket; B has an agent-7 too.
    let a7 = Login::softphone(&tenancy.ws_url, "agent-7", A)
        .await
        .unwrap();
    let b7 = Login::softphone(&tenancy.url, "agent-7", B).await.unwrap();
    let mut a7_commands = a7.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    let mut b7_commands = b7.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    a7.round_trip().await;
    b7.round_trip().await;

    // Its own `loaded`, naming no partner: an ordinary JetStream publish to
    // the softphone, stored through the door with its login, recorded as
    // A's agent-7 and answered in A's account only.
    let ack = a7
        .store(
            "softphone.loaded",
            json!({"softphoneId": "agent-7"}).to_string(),
        )
        .await
        .expect("the door passes the stream's ack back");
    assert_eq!(ack.stream, EVENTS_STREAM);
    let js = jetstream::new(tenancy.bridge.clone());
    let stored = js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .get_raw_message(ack.sequence)
        .await
        .unwrap();
    assert_eq!(stored.subject.as_str(), format!("softphone.p.{A}.loaded"));
    assert_eq!(
        stored.headers.get(LOGIN_HEADER).unwrap().as_str(),
        "agent-7"
    );
    let mut callback = async || -> Value {
        serde_json::from_slice(&next(&mut a7_commands).await.payload).unwrap()
    };
    assert_eq!(callback().await["type"], "disposition");
    let config = callback().await;
    assert_eq!(config["type"], "partner_config");
    assert_eq!(config["payload"]["partnerId"], A);
    let entry = eventually("A's agent-7 in the registry", || async {
        app.entry("agent-7", A).await
    })
    .await;
    assert_eq!(entry.partner_id.unwrap().as_str(), A);
    assert!(
        app.entry("agent-7", B).await.is_none(),
        "B's agent-7 was claimed"
    );

    // A `loaded` or a status change about another softphone, even with a
    // login header of the client's own making: stored, then dead-lettered
    // `softphone mismatch` with the login that sent it, and counted.
    let mut forged = HeaderMap::new();
    forged.insert(LOGIN_HEADER, "agent-9");
    let claims = [
        ("loaded", json!({"softphoneId": "agent-9"})),
        (
            "agent.status_changed",
            json!({"softphoneId": "9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d", "instanceId": "agent-9"}),
        ),
    ];
    let before = js
        .get_stream(softphone_bridge::contract::DLQ_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    for (event, body) in claims {
        jetstream::new(a7.client.clone())
            .publish_with_headers(
                format!("softphone.{event}"),
                forged.clone(),
                body.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .expect("the claim is stored");
        let dead = dead_letter(
            &tenancy.bridge,
            format!("softphone.dlq.p.{A}.{event}"),
            before,
        )
        .await;
        let header = |name: &str| dead.headers.get(name).unwrap().as_str().to_owned();
        assert_eq!(header("Softphone-Dlq-Reason"), "softphone mismatch");
        let detail = header("Softphone-Dlq-Detail");
        assert!(
            detail.contains("agent-9") && detail.contains("agent-7"),
            "{detail}"
        );
        assert_eq!(header(LOGIN_HEADER), "agent-7");
    }
    assert!(
        app.entry("agent-9", A).await.is_none(),
        "agent-9 was claimed"
    );
    let metrics = softphone_bridge::telemetry::metric::handle().render();
    assert!(
        metrics.contains(r#"softphone_bridge_softphone_mismatches_total{type="loaded"}"#),
        "{metrics}"
    );
    tenancy.bridge_round_trip().await;
    nothing_more(&b7, &mut b7_commands).await;
    nothing_more(&a7, &mut a7_commands).await;
    a7.refused_nothing();
    b7.refused_nothing();
}

#[tokio::test]
async fn over_http_a_softphone_id_is_its_partners_and_a_caller_of_several_chooses() {
    let tenancy = Tenancy::start(&[A, B], 1).await;
    let crm_a = crm(&tenancy, "crm-a", &[A]).await;
    let app = App::start(&tenancy, &crm_a).await;
    let now = time::OffsetDateTime::now_utc();
    app.loaded("agent-7", A, now).await;
    app.loaded("agent-7", B, now).await;
    app.loaded("agent-8", B, now).await;
    let partner = |(status, entry): (u16, Value)| {
        assert_eq!(status, 200, "{entry}");
        entry["partnerId"].as_str().unwrap().to_owned()
    };
    let refused = |(status, problem): (u16, Value), code: u16, slug: &str| {
        assert_eq!(status, code, "{problem}");
        assert!(
            problem["type"].as_str().unwrap().ends_with(slug),
            "{problem}"
        );
    };
    // A token of one partner sees its own agent-7; of every partner, it
    // must choose; of A and B, it must choose where both have one.
    assert_eq!(
        partner(describe(&app, PARTNER_TOKEN, "agent-7", None).await),
        A
    );
    refused(
        describe(&app, TOKEN, "agent-7", None).await,
        400,
        "partner-required",
    );
    assert_eq!(partner(describe(&app, TOKEN, "agent-7", Some(B)).await), B);
    refused(
        describe(&app, AB_TOKEN, "agent-7", None).await,
        409,
        "ambiguous-softphone",
    );
    assert_eq!(
        partner(describe(&app, AB_TOKEN, "agent-7", Some(A)).await),
        A
    );
    assert_eq!(partner(describe(&app, AB_TOKEN, "agent-8", None).await), B);
    // Choosing another partner than the token's is refused before any look.
    refused(
        describe(&app, PARTNER_TOKEN, "agent-7", Some(B)).await,
        403,
        "forbidden",
    );
    refused(
        describe(&app, PARTNER_TOKEN, "agent-8", None).await,
        404,
        "unknown-softphone",
    );
    refused(
        describe(&app, TOKEN, "agent-7", Some("not-a-guid")).await,
        422,
        "contract-violation",
    );

    // A command chooses the same way, and reaches only the chosen softphone.
    let a7 = Login::softphone(&tenancy.url, "agent-7", A).await.unwrap();
    let b7 = Login::softphone(&tenancy.ws_url, "agent-7", B)
        .await
        .unwrap();
    let mut a7_commands = a7.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    let mut b7_commands = b7.client.subscribe("softphone.cmd.agent-7").await.unwrap();
    a7.round_trip().await;
    b7.round_trip().await;
    let http = reqwest::Client::new();
    let ambiguous = post_command(
        &http,
        app.http,
        "agent-7",
        &presence_command(),
        AB_TOKEN,
        None,
    )
    .await;
    problem(ambiguous, 409).await;
    let accepted = http
        .post(format!(
            "http://{}/v1/softphones/agent-7/commands?partnerId={B}",
            app.http
        ))
        .bearer_auth(AB_TOKEN)
        .json(&presence_command())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let (message, body, _) = next_command_body(&mut b7_commands).await;
    assert_eq!(message.subject.as_str(), "softphone.cmd.agent-7");
    assert_eq!(body["type"], "update_presence");
    tenancy.bridge_round_trip().await;
    nothing_more(&a7, &mut a7_commands).await;
}
