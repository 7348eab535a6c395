//! The contract's `load(callback)`: what a softphone gets when it loads, as
//! callbacks on `softphone.cmd.<id>` or as the reply to a `softphone.load`
//! request (an endpoint of the NATS service, [`crate::service`]).

use serde::Serialize;

use crate::config::Settings;
use crate::contract::{Callback, Event, EventKind, Loaded, PartnerConfig, SoftphoneId};
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
            Ok(Event::Loaded(loaded)) => Self::for_loaded(settings, connections, loaded).await,
            _ => Self::for_request(settings, body),
        }
    }

    /// The reply to a request already decoded (and, on a partner's subject,
    /// checked against the partner: [`crate::service`]).
    pub async fn for_loaded(
        settings: &Settings,
        connections: &Connections,
        loaded: Loaded,
    ) -> Self {
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
