//! The callout as a service: every replica in one queue group on
//! [`SUBJECT`], answering each request on a task of its own, at most
//! [`MAX_IN_FLIGHT`] at once; the answer's outcome is logged and counted,
//! never the token. SIGHUP reads the settings' partners and login keys again.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Callout, Outcome, QUEUE_GROUP, SERVER_XKEY_HEADER, SUBJECT};
use crate::config::Settings;
use crate::telemetry::metric::LOGINS;

/// Requests answered at once by one replica.
const MAX_IN_FLIGHT: usize = 256;

/// Serves the callout on `client` (the bridge's own user, one of the
/// server's `auth_users`) until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    callout: Arc<Callout>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let requests = subscribe(&client).await?;
    serve_requests(client, requests, callout, shutdown).await;
    Ok(())
}

/// Joins the callout's queue group on `client`.
pub async fn subscribe(client: &async_nats::Client) -> anyhow::Result<async_nats::Subscriber> {
    client
        .queue_subscribe(SUBJECT, QUEUE_GROUP.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {SUBJECT}: {e}"))
}

/// Answers the requests of a [`subscribe`]d queue group until `shutdown`,
/// at most [`MAX_IN_FLIGHT`] at once.
pub async fn serve_requests(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    callout: Arc<Callout>,
    shutdown: CancellationToken,
) {
    tracing::info!(subject = SUBJECT, "Serving the NATS auth callout.");
    let tracker = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = requests.next() => match next {
                Some(message) => message,
                None => break,
            },
        };
        let callout = Arc::clone(&callout);
        let client = client.clone();
        tracker.spawn(async move {
            handle(&client, &callout, message).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Reads the settings again on every SIGHUP and takes their partners and
/// login keys: a partner added (or removed) is logged in (or no longer), and
/// a rotated key file is used, without a restart.
#[cfg(unix)]
pub async fn reload_on_hangup(config: Option<std::path::PathBuf>, callout: Arc<Callout>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("Cannot listen for SIGHUP; partners are read at start-up only.");
        return;
    };
    while hangups.recv().await.is_some() {
        match Settings::load(config.as_deref()) {
            Ok(settings) => {
                callout.reload(&settings);
                tracing::info!(
                    partners = settings.partners.len(),
                    "Settings read again on SIGHUP: the auth callout takes their partners and keys."
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                "Settings read again on SIGHUP are invalid; the auth callout keeps its partners and keys."
            ),
        }
    }
}

async fn handle(client: &async_nats::Client, callout: &Callout, message: async_nats::Message) {
    let server_xkey = message
        .headers
        .as_ref()
        .and_then(|h| h.get(SERVER_XKEY_HEADER))
        .map(|v| v.as_str().to_owned());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (answer, outcome) = callout.answer(&message.payload, server_xkey.as_deref(), now);
    let (result, reason) = outcome.labels();
    metrics::counter!(LOGINS, "outcome" => result, "reason" => reason).increment(1);
    match &outcome {
        Outcome::Accepted(login) => tracing::debug!(
            subject = %login.subject,
            role = login.role.label(),
            "Login accepted."
        ),
        Outcome::Refused(refusal) => tracing::warn!(
            reason = refusal.label(),
            "Login refused: {}.",
            refusal.text()
        ),
        Outcome::BadRequest(why) => {
            tracing::warn!(
                why,
                "Ignored an auth callout request that is not the server's."
            )
        }
    }
    if let (Some(answer), Some(reply)) = (answer, message.reply)
        && let Err(e) = client.publish(reply, answer.into()).await
    {
        tracing::warn!(error = %e, "Cannot answer an auth callout request.");
    }
}
