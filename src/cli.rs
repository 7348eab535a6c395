//! The `softphone-bridge` command line: run, provision, check-config, emit, hash-token, dlq,
//! replay, status, doctor, health.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::Application;
use crate::broker::{self, FirstConnect};
use crate::config::{CONFIG_ENV, Settings};
use crate::contract::{Event, EventKind};

#[derive(Debug, Parser)]
#[command(
    name = "softphone-bridge",
    version,
    about = "Bridges softphone events on NATS JetStream to CRMs, and CRM commands back to softphones."
)]
pub struct Cli {
    /// TOML configuration file (settings from SOFTPHONE_BRIDGE_* variables win over it).
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume events and answer load requests until SIGTERM or Ctrl-C.
    Run,
    /// Create or update the streams, consumers and KV buckets; print one line each.
    Provision {
        /// Print what would change (a setting's old → new value); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the effective configuration, secrets redacted, and exit.
    CheckConfig,
    /// Validate a contract event and publish it, as a softphone would.
    Emit {
        /// The event: `call.accepted`, `softphone.call.accepted` or `callAccepted`.
        event: String,
        /// The JSON payload, `@file`, or `-` for standard input.
        payload: String,
        /// Nats-Msg-Id for de-duplication (default: a hash of event and payload,
        /// so re-running the same command publishes once).
        #[arg(long)]
        id: Option<String>,
    },
    /// Print the SHA-256 of an HTTP bearer token, for `[[http.tokens]] sha256`.
    /// Reads the token from standard input (keeps it out of shell history).
    HashToken {
        /// Make up a random token and print it above its hash.
        #[arg(long)]
        generate: bool,
    },
    /// Exit 0 when a replica answers ready, else 1: a container health check.
    Health {
        /// What to GET (default: `/readyz` on this configuration's ops listener, over loopback).
        #[arg(long)]
        url: Option<url::Url>,
    },
    /// Dead letters in SOFTPHONE_DLQ: list, show, replay, purge.
    Dlq {
        #[command(subcommand)]
        command: crate::ops::dlq::DlqCommand,
    },
    /// Send events SOFTPHONE_EVENTS still keeps through a CRM connection again,
    /// with their original event id and publish time (the CRM de-duplicates).
    Replay(crate::ops::replay::ReplayArgs),
    /// Lanes, replicas, dead letters, API usage and the registry, on one screen.
    Status(crate::ops::status::StatusArgs),
    /// Check the configuration end to end: NATS, streams and consumers, each CRM connection.
    Doctor,
    /// Print the nats-server configuration for these settings: the bridge's
    /// account, one account per partner, the auth callout, the listeners.
    NatsConfig(crate::ops::nats_config::Listeners),
}

impl Cli {
    /// Runs the chosen command. `settings` have been loaded from `self.config`.
    pub async fn execute(self, settings: Settings) -> anyhow::Result<()> {
        match self.command {
            Command::CheckConfig => {
                print!("{}", settings.to_redacted_toml());
                Ok(())
            }
            Command::Provision { dry_run } => {
                crate::broker::provision::execute(&settings, dry_run).await
            }
            Command::Run => {
                let shutdown = CancellationToken::new();
                let stop_within = crate::startup::stop_within(&settings);
                tokio::spawn(shutdown_on_signal(shutdown.clone(), stop_within));
                let app = Application::build(settings).await?;
                #[cfg(unix)]
                if let Some(callout) = app.callout() {
                    tokio::spawn(crate::callout::reload_on_hangup(self.config, callout));
                }
                app.run_until(shutdown).await
            }
            Command::Emit { event, payload, id } => emit(&settings, &event, &payload, id).await,
            Command::HashToken { generate } => hash_token(generate).await,
            Command::Dlq { command } => crate::ops::dlq::execute(&settings, command).await,
            Command::Replay(args) => crate::ops::replay::execute(&settings, args).await,
            Command::Status(args) => crate::ops::status::execute(&settings, args).await,
            Command::Doctor => crate::ops::doctor::execute(&settings).await,
            Command::NatsConfig(listeners) => {
                crate::ops::nats_config::execute(&settings, &listeners)
            }
            Command::Health { url } => crate::ops::health::check(&settings.http, url).await,
        }
    }
}

async fn emit(
    settings: &Settings,
    event: &str,
    payload: &str,
    id: Option<String>,
) -> anyhow::Result<()> {
    let Some(kind) = EventKind::parse(event) else {
        let known: Vec<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        bail!("unknown event {event:?}; one of: {}", known.join(", "));
    };
    let body = read_payload(payload).await?;
    Event::decode(kind, &body).with_context(|| format!("invalid {kind} event"))?;
    let id = id.unwrap_or_else(|| {
        let mut hash = Sha256::new();
        hash.update(kind.subject().as_bytes());
        hash.update(b"\n");
        hash.update(&body);
        hex::encode(&hash.finalize()[..16])
    });
    let client = broker::connect(&settings.nats, FirstConnect::FailFast).await?;
    let js = broker::jetstream(client.clone(), &settings.nats);
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(body.into())
        .message_id(&id);
    let ack = js
        .send_publish(kind.subject(), publish)
        .await
        .context("cannot publish")?
        .await
        .with_context(|| {
            format!(
                "no stream acknowledged {} (run `softphone-bridge provision`?)",
                kind.subject()
            )
        })?;
    println!(
        "{}",
        serde_json::json!({"subject": kind.subject(), "id": id, "stream": ack.stream, "seq": ack.sequence, "duplicate": ack.duplicate})
    );
    client.drain().await.ok();
    Ok(())
}

async fn hash_token(generate: bool) -> anyhow::Result<()> {
    let token = if generate {
        // Two v4 UUIDs: 244 random bits.
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        println!("token:  {token}");
        token
    } else {
        let text = String::from_utf8(read_payload("-").await?).context("the token is not UTF-8")?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            bail!("no token on standard input");
        }
        token
    };
    let hash = hex::encode(crate::http::hash_token(&token));
    if generate {
        println!("sha256: {hash}");
    } else {
        println!("{hash}");
    }
    Ok(())
}

async fn read_payload(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut body = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut body)
            .await
            .context("cannot read standard input")?;
        return Ok(body);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read {path}"));
    }
    Ok(arg.as_bytes().to_vec())
}

/// Cancels `shutdown` on SIGTERM or SIGINT; a second signal exits at once.
/// `stop_within`: the longest stopping may take ([`crate::startup::stop_within`]).
pub(crate) async fn shutdown_on_signal(
    shutdown: CancellationToken,
    stop_within: std::time::Duration,
) {
    signal().await;
    tracing::info!(
        stop_within_s = stop_within.as_secs(),
        "Shutdown requested; finishing in-flight events."
    );
    shutdown.cancel();
    signal().await;
    tracing::warn!("Second signal; exiting now.");
    std::process::exit(130);
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
