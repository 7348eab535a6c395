//! Heartbeats: `softphone.heartbeat.<softphoneId>` (core NATS, a queue group
//! shared by every replica) refreshes a softphone's last sign of life in the
//! registry. A replica writes one softphone's heartbeat at most once per
//! `commands.offline_after / 4`, so a softphone may beat as often as it likes.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::contract::{HEARTBEAT_SUBJECTS, LOAD_QUEUE_GROUP, heartbeat_softphone};
use crate::dispatch::CommandSettings;
use crate::registry::Registry;

/// Softphones whose last write a replica remembers before forgetting the stale ones.
const REMEMBERED: usize = 100_000;

/// Refreshes the registry on heartbeats until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    registry: Registry,
    settings: CommandSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut heartbeats = client
        .queue_subscribe(HEARTBEAT_SUBJECTS, LOAD_QUEUE_GROUP.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {HEARTBEAT_SUBJECTS}: {e}"))?;
    let every = settings.heartbeat_write_every();
    let mut written: HashMap<String, Instant> = HashMap::new();
    tracing::info!(subject = HEARTBEAT_SUBJECTS, "Listening to heartbeats.");
    loop {
        let beat = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = heartbeats.next() => match next {
                Some(beat) => beat,
                None => break,
            },
        };
        let Some(softphone) = heartbeat_softphone(beat.subject.as_str()) else {
            continue;
        };
        let now = Instant::now();
        if written
            .get(softphone.as_str())
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            continue;
        }
        if written.len() >= REMEMBERED {
            written.retain(|_, at| now.duration_since(*at) < every);
        }
        written.insert(softphone.as_str().to_owned(), now);
        match registry
            .alive(&softphone, time::OffsetDateTime::now_utc())
            .await
        {
            Ok(Some(_)) => tracing::debug!(softphone = %softphone, "Heartbeat recorded."),
            // A heartbeat binds nothing: the softphone must load first.
            Ok(None) => {
                tracing::debug!(softphone = %softphone, "Heartbeat of a softphone the registry does not know.")
            }
            Err(e) => {
                // Forget the write so the next heartbeat tries again.
                written.remove(softphone.as_str());
                tracing::warn!(softphone = %softphone, error = %e, "Cannot record a heartbeat.");
            }
        }
    }
    heartbeats.unsubscribe().await.ok();
    Ok(())
}
