//! Heartbeats: `softphone.heartbeat.<softphoneId>` (core NATS, a queue group
//! shared by every replica) refreshes a softphone's last sign of life in the
//! registry. A replica writes one softphone's heartbeat at most once per
//! `commands.offline_after / 4`, so a softphone may beat as often as it likes.
//! With `[callout]`, a partner's softphones beat on
//! `softphone.p.<partnerId>.heartbeat.<softphoneId>` (the server writes the
//! partner): such a beat refreshes only that partner's entry of the softphone,
//! sent by that softphone's own login, and never creates one.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::contract::tenant::{self, PARTNER_HEARTBEATS};
use crate::contract::{
    Guid, HEARTBEAT_SUBJECTS, LOAD_QUEUE_GROUP, SoftphoneId, heartbeat_softphone,
};
use crate::dispatch::CommandSettings;
use crate::softphones::registry::{Phone, Registry};

/// Softphones whose last write a replica remembers before forgetting the stale ones.
const REMEMBERED: usize = 100_000;

/// Refreshes the registry on heartbeats until `shutdown`; with `tenancy`,
/// partners' heartbeats too.
pub(crate) async fn serve(
    client: async_nats::Client,
    registry: Registry,
    settings: CommandSettings,
    tenancy: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut subjects = vec![HEARTBEAT_SUBJECTS];
    if tenancy {
        subjects.push(PARTNER_HEARTBEATS);
    }
    let mut subscriptions = Vec::new();
    for subject in &subjects {
        let subscription = client
            .queue_subscribe(*subject, LOAD_QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))?;
        subscriptions.push(subscription);
    }
    let mut heartbeats = futures::stream::select_all(subscriptions);
    let every = settings.heartbeat_write_every();
    let mut written: HashMap<String, Instant> = HashMap::new();
    tracing::info!(subjects = ?subjects, "Listening to heartbeats.");
    loop {
        let beat = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = heartbeats.next() => match next {
                Some(beat) => beat,
                None => break,
            },
        };
        let Some((partner, softphone)) = beating(&beat) else {
            continue;
        };
        // One softphone id may be in several partners' accounts.
        let key = beat.subject.to_string();
        let now = Instant::now();
        if written
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < every)
        {
            continue;
        }
        if written.len() >= REMEMBERED {
            written.retain(|_, at| now.duration_since(*at) < every);
        }
        written.insert(key.clone(), now);
        let at = time::OffsetDateTime::now_utc();
        let phone = Phone {
            partner: partner.as_ref(),
            softphone: &softphone,
        };
        let recorded = registry.alive(phone, at).await;
        match recorded {
            Ok(Some(_)) => tracing::debug!(softphone = %softphone, "Heartbeat recorded."),
            // A heartbeat binds nothing: the softphone must load first.
            Ok(None) => tracing::debug!(
                softphone = %softphone,
                partner = partner.as_ref().map(Guid::as_str),
                "Heartbeat of a softphone the registry does not know (for this partner)."
            ),
            Err(e) => {
                // Forget the write so the next heartbeat tries again.
                written.remove(&key);
                tracing::warn!(softphone = %softphone, error = %e, "Cannot record a heartbeat.");
            }
        }
    }
    for subscription in heartbeats.iter_mut() {
        subscription.unsubscribe().await.ok();
    }
    Ok(())
}

/// The softphone a heartbeat is for, with its partner on a partner's
/// subject: there only when the server vouches that softphone's own login
/// sent it (its permissions allow nothing else; this holds if they ever did).
fn beating(beat: &async_nats::Message) -> Option<(Option<Guid>, SoftphoneId)> {
    if let Some(softphone) = heartbeat_softphone(beat.subject.as_str()) {
        return Some((None, softphone));
    }
    let (partner, softphone) = tenant::partner_heartbeat(beat.subject.as_str())?;
    let vouched = tenant::vouched_publisher(beat.headers.as_ref());
    if !vouched
        .is_some_and(|v| v.partner().as_ref() == Some(&partner) && v.user == softphone.as_str())
    {
        tracing::warn!(subject = %beat.subject, "Ignored a heartbeat the server does not vouch its softphone sent.");
        return None;
    }
    Some((Some(partner), softphone))
}
