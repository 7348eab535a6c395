//! A tenancy deployment (deploy/tenancy.md) on this machine: the real
//! nats-server on the configuration `softphone-bridge nats-config` renders,
//! the bridge's auth callout replicas, platform login tokens, and clients
//! logging in over TCP or WebSocket.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use softphone_bridge::callout::Callout;
use softphone_bridge::config::Settings;
use softphone_bridge::nats_config::{Listeners, render};
use tokio_util::sync::CancellationToken;

use super::{NatsProcess, ORIGIN, SEGMENT, eventually, free_port};

/// The bridge's own user.
const BRIDGE_USER: &str = "bridge";
const BRIDGE_PASSWORD: &str = "bridge-tenancy-password";
/// The platform's HS256 login secret.
pub const LOGIN_SECRET: &str = "platform-login-secret-of-32-bytes-at-least";

/// One replica's callout: stop it with its token.
struct Replica {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
}

/// A running tenancy deployment.
pub struct Tenancy {
    pub nats: NatsProcess,
    /// `nats://` URL of the client listener.
    pub url: String,
    /// `ws://` URL of the WebSocket listener.
    pub ws_url: String,
    pub settings: Settings,
    /// The issuer and curve seeds of the callout.
    seeds: (String, String),
    listeners: Listeners,
    /// The bridge's own connection (JetStream in its account).
    pub bridge: async_nats::Client,
    replicas: Vec<Replica>,
    /// The callout every in-process replica shares (reloaded with the settings).
    callout: Arc<Callout>,
    /// The CA (the server's own certificate) clients trust, with TLS.
    pub ca: Option<std::path::PathBuf>,
    /// The server's configuration as last rendered.
    conf: String,
    /// JetStream's storage, the same across reloads.
    _store: tempfile::TempDir,
}

impl Tenancy {
    /// The settings TOML for `partners`, with the callout; the server
    /// encrypts its requests to the callout's curve key (`xkey_seed`).
    pub fn settings_toml(seeds: &(String, String), partners: &[&str]) -> String {
        let (issuer_seed, xkey_seed) = seeds;
        let mut toml = format!(
            "[nats]\nuser = \"{BRIDGE_USER}\"\npassword = \"{BRIDGE_PASSWORD}\"\n\
             [callout]\nissuer_seed = \"{issuer_seed}\"\nxkey_seed = \"{xkey_seed}\"\n\
             token_secret = \"{LOGIN_SECRET}\"\nleeway = \"0s\"\n"
        );
        for partner in partners {
            toml.push_str(&format!(
                "[partners.{partner}]\nbusiness_segment_id = \"{SEGMENT}\"\nchannel_origin_id = \"{ORIGIN}\"\n"
            ));
        }
        toml
    }

    /// Renders the server's configuration with the real binary's
    /// `nats-config`, starts the server on it, provisions the streams as the
    /// bridge, and starts `replicas` callout replicas.
    pub async fn start(partners: &[&str], replicas: usize) -> Tenancy {
        Self::start_with(partners, replicas, false).await
    }

    /// Like [`Tenancy::start`]; with `tls`, a certificate of its own (a CA
    /// the clients trust) on the client and WebSocket listeners.
    pub async fn start_with(partners: &[&str], replicas: usize, tls: bool) -> Tenancy {
        let seeds = (
            nkeys::KeyPair::new_account().seed().unwrap(),
            nkeys::XKey::new().seed().unwrap(),
        );
        let toml = Self::settings_toml(&seeds, partners);
        let settings = Settings::from_toml(&toml).unwrap();
        let store = tempfile::tempdir().unwrap();
        let (tls_cert, tls_key) = if tls {
            let cert = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])
            .unwrap();
            let (cert_file, key_file) =
                (store.path().join("cert.pem"), store.path().join("key.pem"));
            std::fs::write(&cert_file, cert.cert.pem()).unwrap();
            std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
            (Some(cert_file), Some(key_file))
        } else {
            (None, None)
        };
        let listeners = Listeners {
            listen: format!("127.0.0.1:{}", free_port()),
            websocket: format!("127.0.0.1:{}", free_port()),
            store_dir: store.path().join("jetstream"),
            tls_cert,
            tls_key,
            monitor: None,
        };
        let file = store.path().join("bridge.toml");
        std::fs::write(&file, &toml).unwrap();
        let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_softphone-bridge"))
            .arg("--config")
            .arg(&file)
            .args(["nats-config", "--listen", &listeners.listen, "--websocket"])
            .arg(&listeners.websocket)
            .arg("--store-dir")
            .arg(&listeners.store_dir)
            .args(
                listeners
                    .tls_cert
                    .iter()
                    .flat_map(|cert| [std::ffi::OsStr::new("--tls-cert"), cert.as_os_str()]),
            )
            .args(
                listeners
                    .tls_key
                    .iter()
                    .flat_map(|key| [std::ffi::OsStr::new("--tls-key"), key.as_os_str()]),
            )
            .output()
            .expect("softphone-bridge runs");
        assert!(
            rendered.status.success(),
            "{}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let conf = String::from_utf8(rendered.stdout).unwrap();
        let nats = NatsProcess::start(&conf).await;
        let (scheme, ws_scheme) = if tls { ("tls", "wss") } else { ("nats", "ws") };
        let url = format!("{scheme}://{}", listeners.listen);
        let ws_url = format!("{ws_scheme}://{}", listeners.websocket);
        let ca = listeners.tls_cert.clone();
        // The callout counts logins in the process's recorder.
        softphone_bridge::telemetry::metric::handle();
        let bridge = bridge_client(&url, ca.as_deref()).await;
        softphone_bridge::broker::provision::apply(
            &async_nats::jetstream::new(bridge.clone()),
            &settings,
        )
        .await
        .expect("the bridge provisions its account");
        let callout = Arc::new(Callout::new(&settings).unwrap().expect("[callout] is set"));
        let mut tenancy = Tenancy {
            nats,
            url,
            ws_url,
            settings,
            seeds,
            listeners,
            ca,
            bridge,
            replicas: Vec::new(),
            callout,
            conf,
            _store: store,
        };
        for _ in 0..replicas {
            tenancy.start_replica().await;
        }
        tenancy
    }

    /// Starts one more callout replica, on a connection of its own; returns
    /// once the server has its subscription.
    pub async fn start_replica(&mut self) {
        let client = bridge_client(&self.url, self.ca.as_deref()).await;
        let requests = softphone_bridge::callout::subscribe(&client).await.unwrap();
        round_trip(&client, "softphone.tenancy.round-trip").await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(softphone_bridge::callout::serve_requests(
            client.clone(),
            requests,
            Arc::clone(&self.callout),
            stop.clone(),
        ));
        self.replicas.push(Replica { stop, task, client });
    }

    /// Stops replica `index` as a crash would: its connection closes with its
    /// subscription and no goodbye.
    pub async fn kill_replica(&mut self, index: usize) {
        let replica = self.replicas.remove(index);
        replica.task.abort();
        let _ = replica.task.await;
        replica.stop.cancel();
        drop(replica.client);
    }

    /// Sets the settings' partners to `partners`, re-renders the server's
    /// configuration, has the server reload it once and the callout take the
    /// new settings. A partner account that a reload introduces needs a
    /// second reload for its imports ([`Tenancy::reload_again`]).
    pub async fn set_partners(&mut self, partners: &[&str]) {
        let toml = Self::settings_toml(&self.seeds, partners);
        self.settings = Settings::from_toml(&toml).unwrap();
        self.conf = render(&self.settings, &self.listeners, [1; 16]).unwrap();
        self.nats.reload(&self.conf).await;
        self.callout.reload(&self.settings);
    }

    /// The settings TOML of this deployment for `partners` (its keys).
    pub fn toml_for(&self, partners: &[&str]) -> String {
        Self::settings_toml(&self.seeds, partners)
    }

    /// A round trip on the bridge's own connection ([`round_trip`]).
    pub async fn bridge_round_trip(&self) {
        round_trip(&self.bridge, "softphone.tenancy.round-trip").await;
    }

    /// Has the server reload the same configuration again.
    pub async fn reload_again(&self) {
        self.nats.reload(&self.conf).await;
    }

    /// An HS256 login token with `claims` (the secret the callout trusts).
    pub fn token(claims: Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(LOGIN_SECRET.as_bytes()),
        )
        .unwrap()
    }

    /// A softphone's login of `partner`, valid for an hour.
    pub fn softphone_token(softphone: &str, partner: &str) -> String {
        Self::token(json!({
            "sub": softphone, "role": "softphone", "partnerId": partner, "exp": in_an_hour()
        }))
    }
}

/// Waits for a round trip with the server on `client`: a request on
/// `subject` (which the client may publish) answered, or refused for want of
/// a responder. The server handles a connection's messages in order, so what
/// the client sent before (a subscription) is in force once this returns;
/// `flush` only writes them out.
pub async fn round_trip(client: &async_nats::Client, subject: &str) {
    let answered = tokio::time::timeout(
        super::PATIENCE,
        client.request(subject.to_owned(), "".into()),
    )
    .await
    .expect("a round trip in time");
    if let Err(e) = answered {
        assert_eq!(
            e.kind(),
            async_nats::client::RequestErrorKind::NoResponders,
            "round trip on {subject}: {e}"
        );
    }
}

/// Unix seconds an hour from now.
pub fn in_an_hour() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + 3600
}

async fn bridge_client(url: &str, ca: Option<&std::path::Path>) -> async_nats::Client {
    trusting(
        async_nats::ConnectOptions::with_user_and_password(
            BRIDGE_USER.into(),
            BRIDGE_PASSWORD.into(),
        ),
        ca,
    )
    .connect(url)
    .await
    .expect("the bridge's own user connects without the callout")
}

/// Waits until `errors` (what the server sent `who`, lower case) holds its
/// refusal of `action` (`publish`, `subscription`) on `subject`.
pub async fn server_refused(errors: &Mutex<Vec<String>>, who: &str, action: &str, subject: &str) {
    let needle = format!(
        "permissions violation for {action} to \"{}\"",
        subject.to_lowercase()
    );
    eventually(&format!("{who} refused {action} to {subject}"), || async {
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains(&needle))
            .then_some(())
    })
    .await;
}

/// `options` trusting `ca`, when there is one.
pub fn trusting(
    options: async_nats::ConnectOptions,
    ca: Option<&std::path::Path>,
) -> async_nats::ConnectOptions {
    match ca {
        Some(ca) => {
            softphone_bridge::tls::install_provider();
            options
                .add_root_certificates(ca.to_owned())
                .require_tls(true)
        }
        None => options,
    }
}
