//! The contract's `load(callback)`: what a softphone gets when it loads, as
//! callbacks on `softphone.cmd.<id>` or as the reply to a `softphone.load` request.

use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::contract::{
    Callback, Event, EventKind, LOAD_QUEUE_GROUP, LOAD_REQUEST_SUBJECT, Loaded, PartnerConfig,
    SoftphoneId,
};
use crate::crm::Connections;

/// The callbacks a loading softphone receives: `disposition` (the partner's
/// list, else the default one), then `partner_config` when the partner is known.
pub fn callbacks(settings: &Settings, loaded: &Loaded) -> Vec<Callback> {
    callbacks_from(settings, loaded, None)
}

/// Like [`callbacks`], with the list the partner's CRM allows (a picklist
/// read from the org) taking precedence over the configured ones.
pub fn callbacks_from(
    settings: &Settings,
    loaded: &Loaded,
    from_crm: Option<Vec<String>>,
) -> Vec<Callback> {
    let partner = loaded
        .partner_id
        .as_ref()
        .and_then(|id| settings.partner(id).map(|p| (id, p)));
    let dispositions = from_crm
        .or_else(|| partner.and_then(|(_, p)| p.dispositions.clone()))
        .unwrap_or_else(|| settings.dispositions.clone());
    let mut callbacks = vec![Callback::Disposition(dispositions)];
    if let Some((id, p)) = partner {
        callbacks.push(Callback::PartnerConfig(PartnerConfig {
            partner_id: id.clone(),
            business_segment_id: p.business_segment_id.clone(),
            channel_origin_id: p.channel_origin_id.clone(),
        }));
    } else if let Some(id) = &loaded.partner_id {
        tracing::warn!(partner_id = %id, "Partner is not configured; no partner_config sent.");
    }
    callbacks
}

/// The reply to a `softphone.load` request.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum LoadReply {
    /// `{"softphoneId": "...", "callbacks": [{"type": ..., "payload": ...}, ...]}`
    Callbacks {
        #[serde(rename = "softphoneId")]
        softphone_id: SoftphoneId,
        callbacks: Vec<Callback>,
    },
    /// `{"error": "..."}`
    Error { error: String },
}

impl LoadReply {
    /// The reply, with the dispositions the partner's CRM allows.
    pub async fn for_request_with_crm(
        settings: &Settings,
        connections: &Connections,
        body: &[u8],
    ) -> Self {
        match Event::decode(EventKind::Loaded, body) {
            Ok(Event::Loaded(loaded)) => {
                let partner = loaded.partner_id.as_ref();
                let from_crm = match connections.for_partner(settings, partner) {
                    Some(crm) => crm.dispositions(partner).await,
                    None => None,
                };
                LoadReply::Callbacks {
                    callbacks: callbacks_from(settings, &loaded, from_crm),
                    softphone_id: loaded.softphone_id,
                }
            }
            _ => Self::for_request(settings, body),
        }
    }

    pub fn for_request(settings: &Settings, body: &[u8]) -> Self {
        match Event::decode(EventKind::Loaded, body) {
            Ok(Event::Loaded(loaded)) => LoadReply::Callbacks {
                callbacks: callbacks(settings, &loaded),
                softphone_id: loaded.softphone_id,
            },
            Ok(_) => unreachable!("decode(Loaded) yields Event::Loaded"),
            Err(e) => LoadReply::Error {
                error: e.to_string(),
            },
        }
    }
}

/// Answers `softphone.load` requests (in a queue group shared by every replica)
/// until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    settings: std::sync::Arc<Settings>,
    connections: Connections,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut requests = client
        .queue_subscribe(LOAD_REQUEST_SUBJECT, LOAD_QUEUE_GROUP.to_owned())
        .await?;
    tracing::info!(subject = LOAD_REQUEST_SUBJECT, "Answering load requests.");
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = requests.next() => match next {
                Some(request) => request,
                None => break,
            },
        };
        let Some(reply_to) = request.reply else {
            tracing::warn!(
                "Load request without a reply subject; publish on softphone.loaded instead."
            );
            continue;
        };
        let reply =
            LoadReply::for_request_with_crm(&settings, &connections, &request.payload).await;
        if let LoadReply::Error { error } = &reply {
            tracing::warn!(reason = %error, "Refused a load request.");
        }
        let body = serde_json::to_vec(&reply).expect("load replies always serialize");
        if let Err(e) = client.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "Cannot answer a load request.");
        }
    }
    requests.unsubscribe().await.ok();
    Ok(())
}
