//! `softphone-bridge nats-config`: the nats-server configuration for the
//! settings (deploy/tenancy.md). The bridge's account holds JetStream and
//! exports the partners' subjects with the partner's id at
//! [`PARTNER_TOKEN_POSITION`], which the server checks against the
//! importing account's name; each configured partner gets an account named
//! by its id that imports the contract's subjects ([`MAPPINGS`]); CRM logins
//! get an account that imports the command service of partners' subjects;
//! the auth callout places every other client. Rendering is pure: the
//! command only prints it.

use std::fmt::Write as _;
use std::path::PathBuf;

use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::contract::tenant::{Flow, MAPPINGS, PARTNER_COMMAND_REQUESTS, PARTNER_TOKEN_POSITION};

/// Where the server listens and keeps its streams.
#[derive(Debug, Clone, clap::Args)]
pub struct Listeners {
    /// The client listener, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    /// The WebSocket listener (browser softphones), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub websocket: String,
    /// JetStream's storage directory.
    #[arg(long, value_name = "DIR")]
    pub store_dir: PathBuf,
    /// PEM certificate for TLS on the client and WebSocket listeners.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The monitoring listener (KEDA reads consumer lag there), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub monitor: Option<String>,
}

/// Why no configuration can be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("nats-config needs a [callout] section (deploy/tenancy.md)")]
    NoCallout,
    #[error(
        "nats-config needs the bridge's own user: set nats.user and nats.password (the server's auth_users)"
    )]
    NoBridgeUser,
    #[error("{0}")]
    Invalid(String),
}

/// Prints the configuration (`softphone-bridge nats-config`).
pub fn execute(settings: &Settings, listeners: &Listeners) -> anyhow::Result<()> {
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..]);
    print!("{}", render(settings, listeners, salt)?);
    Ok(())
}

/// The configuration; `salt` salts the bridge password's bcrypt hash, the
/// only form of it the server needs.
pub fn render(
    settings: &Settings,
    listeners: &Listeners,
    salt: [u8; 16],
) -> Result<String, RenderError> {
    let callout = settings.callout.as_ref().ok_or(RenderError::NoCallout)?;
    let (Some(user), Some(password)) = (&settings.nats.user, &settings.nats.password) else {
        return Err(RenderError::NoBridgeUser);
    };
    // A low cost: the bridge's few connections are its only users of it.
    let hash = bcrypt::hash_with_salt(password.expose_secret(), 10, salt)
        .map_err(|e| RenderError::Invalid(format!("cannot hash nats.password: {e}")))?
        .format_for_version(bcrypt::Version::TwoB);
    let bridge = q(&callout.account);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# nats-server configuration rendered by `softphone-bridge nats-config`.\n\
         # After changing partners: re-render, `nats-server --signal reload` twice\n\
         # (a new account's imports are wired by the second), SIGHUP the bridge.\n\
         # It holds a bcrypt hash of the bridge's password, no other secret.\n"
    );
    let _ = writeln!(w, "listen: {}", q(&listeners.listen));
    // A CONNECT carrying a login token up to twice the callout's limit is
    // read, so the callout refuses an oversized token with its reason.
    let _ = writeln!(
        w,
        "max_control_line: {}",
        2 * crate::callout::MAX_TOKEN_BYTES
    );
    if let Some(monitor) = &listeners.monitor {
        let _ = writeln!(w, "http: {}", q(monitor));
    }
    let tls = match (&listeners.tls_cert, &listeners.tls_key) {
        (Some(cert), Some(key)) => Some(format!(
            "tls {{\n    cert_file: {}\n    key_file: {}\n  }}",
            q(&cert.display().to_string()),
            q(&key.display().to_string())
        )),
        _ => None,
    };
    if let Some(tls) = &tls {
        let _ = writeln!(w, "{}", tls.replace("\n  ", "\n"));
    }
    let _ = writeln!(
        w,
        "jetstream {{\n  store_dir: {}\n}}",
        q(&listeners.store_dir.display().to_string())
    );
    let _ = writeln!(w, "websocket {{\n  listen: {}", q(&listeners.websocket));
    match &tls {
        Some(tls) => {
            let _ = writeln!(w, "  {tls}");
        }
        None => {
            let _ = writeln!(
                w,
                "  # No certificate given: plain WebSocket (ws://).\n  no_tls: true"
            );
        }
    }
    let _ = writeln!(w, "}}\n");

    let _ = writeln!(w, "accounts {{");
    let _ = writeln!(
        w,
        "  # The bridge: its streams, its own user, the auth callout.\n  {bridge} {{\n    jetstream: enabled\n    users: [\n      {{ user: {}, password: {} }}\n    ]\n    exports: [",
        q(user),
        q(&hash)
    );
    for mapping in MAPPINGS {
        let _ = writeln!(
            w,
            "      {{ {}: {}, account_token_position: {PARTNER_TOKEN_POSITION} }}",
            kind(mapping.flow),
            q(&mapping.exported())
        );
    }
    let _ = writeln!(
        w,
        "      {{ service: {}, accounts: [{}] }}\n    ]\n  }}",
        q(PARTNER_COMMAND_REQUESTS),
        q(&callout.crm_account)
    );
    let _ = writeln!(
        w,
        "  # CRM logins: the command service, for the partners their login names.\n  {} {{\n    imports: [\n      {{ service: {{ account: {bridge}, subject: {} }}{} }}\n    ]\n  }}",
        q(&callout.crm_account),
        q(PARTNER_COMMAND_REQUESTS),
        share(true)
    );
    for partner in settings.partners.keys() {
        let _ = writeln!(
            w,
            "  # Partner {partner}: its softphones, on the contract's subjects.\n  {} {{\n    imports: [",
            q(partner.as_str())
        );
        for mapping in MAPPINGS {
            let _ = writeln!(
                w,
                "      {{ {}: {{ account: {bridge}, subject: {} }}, to: {}{} }}",
                kind(mapping.flow),
                q(&mapping.for_partner(partner)),
                q(mapping.local),
                share(mapping.share)
            );
        }
        let _ = writeln!(w, "    ]\n  }}");
    }
    let _ = writeln!(w, "}}\n");

    let _ = writeln!(
        w,
        "# Every client but the bridge's own user is asked about: its NATS token\n\
         # is its platform login (see deploy/tenancy.md).\n\
         authorization {{\n  auth_callout {{\n    issuer: {}\n    account: {bridge}\n    auth_users: [{}]",
        q(&callout.issuer_public_key()),
        q(user)
    );
    if let Some(xkey) = callout.xkey_public_key() {
        let _ = writeln!(w, "    xkey: {}", q(&xkey));
    }
    let _ = writeln!(w, "  }}\n}}");
    Ok(out)
}

/// How a mapping is exported and imported: requests (and JetStream publish
/// acks) answer back through a service; commands flow through a stream.
fn kind(flow: Flow) -> &'static str {
    match flow {
        Flow::ToBridge => "service",
        Flow::ToPartner => "stream",
    }
}

/// `share: true` on a service import: the server writes the requester's
/// account and user (the login's `sub`, the callout's `name`) into
/// `Nats-Request-Info` for the bridge (`tenant::vouched_publisher`).
fn share(share: bool) -> &'static str {
    if share { ", share: true" } else { "" }
}

/// A quoted string of the server's configuration language (JSON's escapes),
/// never read as a variable reference.
fn q(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "57053e21-0440-4689-a27a-513d7dceebde";

    fn settings(partners: &[&str]) -> Settings {
        let mut toml = format!(
            "[nats]\nuser = \"bridge\"\npassword = \"bridge-s3cr3t\"\n[callout]\nissuer_seed = \"{}\"\ntoken_secret = \"{}\"\n",
            nkeys::KeyPair::new_account().seed().unwrap(),
            "t0ken-s3cr3t".repeat(4)
        );
        for partner in partners {
            toml.push_str(&format!(
                "[partners.{partner}]\nbusiness_segment_id = \"{A}\"\nchannel_origin_id = \"{B}\"\n"
            ));
        }
        Settings::from_toml(&toml).unwrap()
    }

    fn listeners(tls: bool) -> Listeners {
        Listeners {
            listen: "127.0.0.1:4222".into(),
            websocket: "0.0.0.0:8443".into(),
            store_dir: "/data/jetstream".into(),
            tls_cert: tls.then(|| "/tls/cert.pem".into()),
            tls_key: tls.then(|| "/tls/key.pem".into()),
            monitor: None,
        }
    }

    #[test]
    fn each_partner_gets_an_account_importing_the_contract_subjects() {
        let settings = settings(&[A, B]);
        let conf = render(&settings, &listeners(false), [7; 16]).unwrap();
        for partner in [A, B] {
            assert!(conf.contains(&format!("  \"{partner}\" {{")), "{conf}");
            for (shared, local) in [
                (format!("softphone.p.{partner}.call.>"), "softphone.call.>"),
                (
                    format!("softphone.p.{partner}.vouch.loaded"),
                    "softphone.loaded",
                ),
                (
                    format!("softphone.p.{partner}.vouch.agent.>"),
                    "softphone.agent.>",
                ),
                (format!("softphone.p.{partner}.load"), "softphone.load"),
                (
                    format!("softphone.p.{partner}.heartbeat.>"),
                    "softphone.heartbeat.>",
                ),
            ] {
                // The bridge reads who sent a `load`, a heartbeat, or an
                // event through the door; a stream would drop the header of
                // an event stored straight.
                let share = if local == "softphone.call.>" {
                    ""
                } else {
                    ", share: true"
                };
                let line = format!(
                    "{{ service: {{ account: \"SOFTPHONE\", subject: \"{shared}\" }}, to: \"{local}\"{share} }}"
                );
                assert!(conf.contains(&line), "{line}\n{conf}");
            }
            let commands = format!(
                "{{ stream: {{ account: \"SOFTPHONE\", subject: \"softphone.p.{partner}.cmd.>\" }}, to: \"softphone.cmd.>\" }}"
            );
            assert!(conf.contains(&commands), "{conf}");
        }
        // No partner's command publishes ever reach the bridge.
        assert!(!conf.contains("service: \"softphone.p.*.cmd"));
        assert!(conf.contains("{ stream: \"softphone.p.*.cmd.>\", account_token_position: 3 }"));
        assert!(conf.contains("{ service: \"softphone.p.*.call.>\", account_token_position: 3 }"));
        assert!(conf.contains(
            "{ service: { account: \"SOFTPHONE\", subject: \"softphone.p.*.api.command\" }, share: true }"
        ));
        assert!(conf.contains("jetstream: enabled"));
        let issuer = settings.callout.as_ref().unwrap().issuer_public_key();
        assert!(conf.contains(&format!("issuer: \"{issuer}\"")));
        assert!(conf.contains("auth_users: [\"bridge\"]"));
        assert!(conf.contains("account: \"SOFTPHONE\""));
    }

    #[test]
    fn only_the_bridge_password_hash_is_written() {
        let settings = settings(&[A]);
        let conf = render(&settings, &listeners(false), [7; 16]).unwrap();
        assert!(!conf.contains("bridge-s3cr3t"), "{conf}");
        assert!(!conf.contains("t0ken-s3cr3t"), "{conf}");
        let seed =
            secrecy::ExposeSecret::expose_secret(&settings.callout.as_ref().unwrap().issuer_seed)
                .to_owned();
        assert!(!conf.contains(&seed));
        let hash = conf
            .lines()
            .find_map(|l| l.split("password: \"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert!(bcrypt::verify("bridge-s3cr3t", hash).unwrap());
        // The same salt renders the same text.
        assert_eq!(conf, render(&settings, &listeners(false), [7; 16]).unwrap());
    }

    #[test]
    fn tls_covers_both_listeners_and_plain_websocket_needs_no_certificate() {
        let plain = render(&settings(&[A]), &listeners(false), [7; 16]).unwrap();
        assert!(plain.contains("no_tls: true"));
        assert!(!plain.contains("cert_file"));
        let tls = render(&settings(&[A]), &listeners(true), [7; 16]).unwrap();
        assert!(!tls.contains("no_tls"));
        assert_eq!(
            tls.matches("cert_file: \"/tls/cert.pem\"").count(),
            2,
            "{tls}"
        );
        assert_eq!(tls.matches("key_file: \"/tls/key.pem\"").count(), 2);
    }

    #[test]
    fn it_needs_the_callout_and_the_bridge_user() {
        let none = Settings::from_toml("").unwrap();
        assert!(matches!(
            render(&none, &listeners(false), [0; 16]),
            Err(RenderError::NoCallout)
        ));
        let mut no_user = settings(&[A]);
        no_user.nats.user = None;
        no_user.nats.password = None;
        assert!(matches!(
            render(&no_user, &listeners(false), [0; 16]),
            Err(RenderError::NoBridgeUser)
        ));
    }
}
