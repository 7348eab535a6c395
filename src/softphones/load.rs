//! The contract's `load(callback)`: what a softphone gets when it loads, as
//! callbacks on `softphone.cmd.<id>` or as the reply to a `softphone.load`
//! request (an endpoint of the NATS service, [`crate::service`]).

use serde::Serialize;

use crate::config::Settings;
use crate::contract::{
    Callback, Event, EventKind, Guid, Loaded, PartnerConfig, SoftphoneId, tenant,
};
use crate::crm::Connections;

/// The callbacks a loading softphone receives: `disposition` (the partner's
/// list, else the default one), then `partner_config` when the partner is known.
pub(crate) fn callbacks(settings: &Settings, loaded: &Loaded) -> Vec<Callback> {
    callbacks_from(settings, loaded, None)
}

/// Like [`callbacks`], with the list the partner's CRM allows (a picklist
/// read from the org) taking precedence over the configured ones.
pub(crate) fn callbacks_from(
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
pub(crate) enum LoadReply {
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
    pub(crate) async fn for_request_with_crm(
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
    pub(crate) async fn for_loaded(
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

    pub(crate) fn for_request(settings: &Settings, body: &[u8]) -> Self {
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

/// Why a partner's `load` request gets no callbacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PartnerLoadError {
    /// Not a `loaded` body.
    #[error("{0}")]
    Invalid(String),
    /// For another partner, or another softphone than the login's.
    #[error("{0}")]
    Forbidden(String),
}

/// The `loaded` a `load` request from `partner`'s account stands for: for
/// that partner only (a body naming another is refused; one naming none is
/// for this one), and for the softphone the server vouches sent it, its
/// login's `sub` ([`tenant::vouched_publisher`] of its `headers`).
pub(crate) fn partner_loaded(
    partner: &Guid,
    body: &[u8],
    headers: Option<&async_nats::HeaderMap>,
) -> Result<Loaded, PartnerLoadError> {
    let mut loaded = match Event::decode(EventKind::Loaded, body) {
        Ok(Event::Loaded(loaded)) => loaded,
        Ok(_) => unreachable!("decode(Loaded) yields Event::Loaded"),
        Err(e) => return Err(PartnerLoadError::Invalid(e.to_string())),
    };
    if let Some(named) = loaded.partner_id.as_ref().filter(|named| *named != partner) {
        return Err(PartnerLoadError::Forbidden(format!(
            "partnerId {named} is not the partner of this login ({partner})"
        )));
    }
    match tenant::vouched_publisher(headers) {
        Some(v) if v.partner().as_ref() != Some(partner) => {
            return Err(PartnerLoadError::Forbidden(
                "the server vouches for another partner's login".to_owned(),
            ));
        }
        Some(v) if v.user != loaded.softphone_id.as_str() => {
            return Err(PartnerLoadError::Forbidden(format!(
                "softphoneId {} is not this login's ({})",
                loaded.softphone_id, v.user
            )));
        }
        Some(_) => {}
        None => {
            return Err(PartnerLoadError::Forbidden(
                "the server did not say who sent this request".to_owned(),
            ));
        }
    }
    loaded.partner_id = Some(partner.clone());
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "57053e21-0440-4689-a27a-513d7dceebde";

    fn vouching(account: &str, user: &str) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        let info = serde_json::json!({"acc": account, "user": user}).to_string();
        headers.insert(tenant::REQUEST_INFO_HEADER, info.as_str());
        headers
    }

    #[test]
    fn a_partners_load_is_for_that_partner_and_the_logins_softphone() {
        let a: Guid = A.parse().unwrap();
        let agent7 = vouching(A, "agent-7");
        for body in [
            r#"{"softphoneId":"agent-7"}"#.to_owned(),
            format!(r#"{{"softphoneId":"agent-7","partnerId":"{A}"}}"#),
        ] {
            let loaded = partner_loaded(&a, body.as_bytes(), Some(&agent7)).unwrap();
            assert_eq!(loaded.partner_id.as_ref(), Some(&a));
            assert_eq!(loaded.softphone_id.as_str(), "agent-7");
        }
        let refused = |body: &str, headers: Option<&async_nats::HeaderMap>| {
            partner_loaded(&a, body.as_bytes(), headers).unwrap_err()
        };
        let other_partner = format!(r#"{{"softphoneId":"agent-7","partnerId":"{B}"}}"#);
        assert!(matches!(
            refused(&other_partner, Some(&agent7)),
            PartnerLoadError::Forbidden(_)
        ));
        let another = r#"{"softphoneId":"agent-8"}"#;
        assert!(matches!(
            refused(another, Some(&agent7)),
            PartnerLoadError::Forbidden(_)
        ));
        let mine = r#"{"softphoneId":"agent-7"}"#;
        for headers in [None, Some(&vouching(B, "agent-7"))] {
            assert!(matches!(
                refused(mine, headers),
                PartnerLoadError::Forbidden(_)
            ));
        }
        assert!(matches!(
            refused("{}", Some(&agent7)),
            PartnerLoadError::Invalid(_)
        ));
    }
}
