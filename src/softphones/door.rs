//! The door of a partner's `loaded` and `agent.status_changed` (with
//! `[callout]`, deploy/tenancy.md): the two events that say which softphone
//! they are about, so the server must vouch for who sent them.
//!
//! A stream removes `Nats-Request-Info` before it stores a message, so the
//! server's word on the publisher's login cannot reach the intake on the
//! event itself. A partner's account therefore imports `softphone.loaded`
//! and `softphone.agent.>` from `softphone.p.<partnerId>.vouch.…` (with
//! `share: true`), which no stream captures; the NATS service's
//! `partner-event` endpoint (every replica, one queue group) takes each,
//! reads the login the server vouches for, and stores the event on the
//! partner's event subject (`softphone.p.<partnerId>.loaded`) with that
//! login in [`LOGIN_HEADER`]. The stream's answer (its publish ack, or its
//! error) goes back to the softphone unchanged: to the softphone this is an
//! ordinary JetStream publish, with `Nats-Msg-Id` and its other headers
//! kept. The intake then compares the body's softphone id with the login
//! and dead-letters a mismatch (`softphone mismatch`).

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::contract::tenant::{self, LOGIN_HEADER, REQUEST_INFO_HEADER};
use crate::contract::{EventKind, Guid};

/// The rest of a partner's door subject before the event's own:
/// `softphone.p.<partnerId>.vouch.<event>`.
pub(crate) const DOOR_TOKEN: &str = "vouch";

/// Every partner's door, `softphone.p.*.vouch.>`.
pub(crate) const PARTNER_DOORS: &str = "softphone.p.*.vouch.>";

/// The answer to a message through `partner`'s door: the stream's own (its
/// publish ack or its error), or why the door refused it or could not store it.
pub(crate) async fn pass(
    client: &async_nats::Client,
    partner: &Guid,
    message: &async_nats::Message,
) -> Bytes {
    let (to, headers) = match through(partner, &message.subject, message.headers.as_ref()) {
        Ok(through) => through,
        Err(refused) => {
            tracing::warn!(partner = %partner, subject = %message.subject, "Refused an event at a partner's door.");
            return refused;
        }
    };
    match client
        .request_with_headers(to, headers, message.payload.clone())
        .await
    {
        Ok(stored) => stored.payload,
        Err(e) => {
            tracing::warn!(partner = %partner, error = %e, "Cannot store an event through a partner's door.");
            use async_nats::client::RequestErrorKind as Kind;
            match e.kind() {
                Kind::MaxPayloadExceeded => refusal(400, "the event is larger than NATS allows"),
                Kind::NoResponders => refusal(503, "no stream stores softphone events"),
                Kind::TimedOut => refusal(503, "the stream did not answer in time"),
                _ => refusal(503, "NATS is unavailable"),
            }
        }
    }
}

/// Where a message through a partner's door is stored, with what headers;
/// `Err` with the JetStream-style error answer for the publisher.
pub(crate) fn through(
    partner: &Guid,
    subject: &str,
    headers: Option<&HeaderMap>,
) -> Result<(String, HeaderMap), Bytes> {
    let event = tenant::split_partner(subject)
        .filter(|(p, _)| p == partner)
        .and_then(|(_, rest)| rest.strip_prefix(DOOR_TOKEN)?.strip_prefix('.'))
        .map(|event| format!("{}.{event}", tenant::partner_prefix(partner)))
        .filter(|to| {
            tenant::partner_event(to).is_some_and(|(_, kind)| {
                matches!(kind, EventKind::Loaded | EventKind::AgentStatusChanged)
            })
        })
        .ok_or_else(|| refusal(404, &format!("{subject} is not an event this door takes")))?;
    let login = tenant::vouched_publisher(headers)
        .filter(|v| v.partner().as_ref() == Some(partner))
        .and_then(|v| v.softphone())
        .ok_or_else(|| {
            refusal(
                403,
                "the server does not vouch for a softphone login of this partner",
            )
        })?;
    let mut kept = HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        // The server's word, and any header posing as the door's: dropped,
        // whatever the spelling.
        if name.eq_ignore_ascii_case(REQUEST_INFO_HEADER) || name.eq_ignore_ascii_case(LOGIN_HEADER)
        {
            continue;
        }
        for value in values {
            kept.append(name, value.as_str());
        }
    }
    kept.insert(LOGIN_HEADER, login.as_str());
    Ok((event, kept))
}

/// A JetStream-style error answer, `{"error": {"code", "description"}}`,
/// which a client's JetStream publish reports as the publish's failure.
pub(crate) fn refusal(code: u16, description: &str) -> Bytes {
    serde_json::json!({ "error": { "code": code, "description": description } })
        .to_string()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "d6afeaa7-39be-4935-981f-2670215fd887";

    fn vouched(account: &str, user: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_INFO_HEADER,
            format!(r#"{{"acc":"{account}","user":"{user}"}}"#).as_str(),
        );
        headers
    }

    fn refused(result: Result<(String, HeaderMap), Bytes>) -> String {
        String::from_utf8(result.unwrap_err().to_vec()).unwrap()
    }

    #[test]
    fn stores_the_event_with_the_login_the_server_vouches_for() {
        let a: Guid = A.parse().unwrap();
        let mut headers = vouched(A, "agent-7");
        headers.insert("Nats-Msg-Id", "e-1");
        // A login header the client sent, in any spelling, never survives.
        headers.insert(LOGIN_HEADER, "agent-8");
        headers.insert("softphone-login", "agent-9");
        let (to, kept) =
            through(&a, &format!("softphone.p.{A}.vouch.loaded"), Some(&headers)).unwrap();
        assert_eq!(to, format!("softphone.p.{A}.loaded"));
        assert_eq!(kept.get(LOGIN_HEADER).unwrap().as_str(), "agent-7");
        assert_eq!(kept.get_all(LOGIN_HEADER).count(), 1);
        assert!(kept.get("softphone-login").is_none());
        assert!(kept.get(REQUEST_INFO_HEADER).is_none());
        assert_eq!(kept.get("Nats-Msg-Id").unwrap().as_str(), "e-1");

        let (to, _) = through(
            &a,
            &format!("softphone.p.{A}.vouch.agent.status_changed"),
            Some(&vouched(A, "agent-7")),
        )
        .unwrap();
        assert_eq!(to, format!("softphone.p.{A}.agent.status_changed"));
    }

    #[test]
    fn refuses_what_the_server_does_not_vouch_for_and_other_subjects() {
        let a: Guid = A.parse().unwrap();
        let loaded = format!("softphone.p.{A}.vouch.loaded");
        for headers in [None, Some(vouched(B, "agent-7")), Some(vouched(A, "a.b"))] {
            let why = refused(through(&a, &loaded, headers.as_ref()));
            assert!(why.contains(r#""code":403"#), "{why}");
        }
        for subject in [
            format!("softphone.p.{A}.vouch.call.ended"),
            format!("softphone.p.{A}.vouch.agent.other"),
            format!("softphone.p.{B}.vouch.loaded"),
            format!("softphone.p.{A}.loaded"),
        ] {
            let why = refused(through(&a, &subject, Some(&vouched(A, "agent-7"))));
            assert!(why.contains(r#""code":404"#), "{subject}: {why}");
        }
    }
}
