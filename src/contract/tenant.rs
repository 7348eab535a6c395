//! The subjects of a partner's own account (deploy/tenancy.md): what a
//! softphone publishes on the contract's subjects in its partner's account
//! reaches the bridge's account as `softphone.p.<partnerId>.<the rest>`, the
//! partner token written by the server (a service import checked with
//! `account_token_position`), never by the client; commands go the other way,
//! from `softphone.p.<partnerId>.cmd.<softphoneId>` to the partner's
//! `softphone.cmd.<softphoneId>` (a stream import).

use super::{EventKind, Guid, SUBJECT_ROOT, SoftphoneId};

/// The token after the root that marks a partner's subject: `softphone.p.<partnerId>.…`.
pub const PARTNER_TOKEN: &str = "p";

/// Where the partner's id stands in a partner's subject (1-based, as the
/// server's `account_token_position` counts): `softphone.p.<partnerId>`.
pub(crate) const PARTNER_TOKEN_POSITION: usize = 3;

/// One mapping between a partner's account and the bridge's: `local` is
/// the contract's subject as the partner's clients use it, `shared` what the
/// bridge's account sees, with `*` where the partner's id goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// The contract's subject in the partner's account (may end in `>`).
    pub local: &'static str,
    /// The same after the partner token: `softphone.p.*.` then this.
    pub rest: &'static str,
    /// Which way messages flow.
    pub flow: Flow,
    /// Whether the import shares its requester (`share: true`): the server
    /// then writes the publisher's user into [`REQUEST_INFO_HEADER`]. Only
    /// where the bridge reads it on a core subscription (the door, `load`,
    /// heartbeats): a stream removes the header before it stores a message,
    /// so events stored straight gain nothing by it.
    pub share: bool,
}

/// Which way a [`Mapping`] carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// From the partner's clients to the bridge (a service import: requests
    /// and JetStream publish acks answer back through it).
    ToBridge,
    /// From the bridge to the partner's clients (a stream import).
    ToPartner,
}

/// What a partner's account imports from the bridge's: the contract's
/// subjects and nothing else. Commands flow only towards the partner: no
/// partner's `softphone.cmd.>` publish ever reaches the bridge.
pub(crate) const MAPPINGS: [Mapping; 6] = [
    Mapping {
        local: "softphone.call.>",
        rest: "call.>",
        flow: Flow::ToBridge,
        share: false,
    },
    // The two events that say which softphone they are about go through the
    // door (src/softphones/door.rs), which stores them with the login the server vouches for.
    Mapping {
        local: "softphone.loaded",
        rest: "vouch.loaded",
        flow: Flow::ToBridge,
        share: true,
    },
    Mapping {
        local: "softphone.agent.>",
        rest: "vouch.agent.>",
        flow: Flow::ToBridge,
        share: true,
    },
    Mapping {
        local: "softphone.load",
        rest: "load",
        flow: Flow::ToBridge,
        share: true,
    },
    Mapping {
        local: "softphone.heartbeat.>",
        rest: "heartbeat.>",
        flow: Flow::ToBridge,
        share: true,
    },
    Mapping {
        local: "softphone.cmd.>",
        rest: "cmd.>",
        flow: Flow::ToPartner,
        share: false,
    },
];

impl Mapping {
    /// The bridge's subject for one partner: `softphone.p.<partnerId>.<rest>`.
    pub(crate) fn for_partner(&self, partner: &Guid) -> String {
        format!("{}.{}", partner_prefix(partner), self.rest)
    }

    /// The bridge's subject for every partner: `softphone.p.*.<rest>`, what it exports.
    pub(crate) fn exported(&self) -> String {
        format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.*.{}", self.rest)
    }
}

/// `softphone.p.<partnerId>`.
pub(crate) fn partner_prefix(partner: &Guid) -> String {
    format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.{partner}")
}

/// What a CRM login publishes for a command to one of its partners'
/// softphones: the command service's request subject under the partner's
/// prefix, `softphone.p.<partnerId>.api.command`.
pub(crate) fn partner_command_request(partner: &Guid) -> String {
    format!("{}.api.command", partner_prefix(partner))
}

/// Every partner's command-service request subject, `softphone.p.*.api.command`.
pub(crate) const PARTNER_COMMAND_REQUESTS: &str = "softphone.p.*.api.command";

/// What `SOFTPHONE_EVENTS` captures of partners' events: each event subject
/// under every partner's prefix (`softphone.p.*.call.accepted`, …).
pub(crate) fn partner_event_subjects() -> Vec<String> {
    EventKind::ALL
        .iter()
        .map(|kind| format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.*.{}", kind.name()))
        .collect()
}

/// What `SOFTPHONE_COMMANDS` captures of commands to partners' softphones.
pub(crate) const PARTNER_COMMAND_SUBJECTS: &str = "softphone.p.*.cmd.>";

/// The bridge's subject of a command to a softphone of `partner`; the partner's
/// account receives it as `softphone.cmd.<softphoneId>`.
pub(crate) fn partner_command_subject(partner: &Guid, softphone: &SoftphoneId) -> String {
    format!("{}.cmd.{softphone}", partner_prefix(partner))
}

/// The partner a subject of the bridge's account names, and the rest of the
/// subject after its partner token (`call.accepted`, `heartbeat.agent-7`).
pub(crate) fn split_partner(subject: &str) -> Option<(Guid, &str)> {
    let rest = subject
        .strip_prefix(SUBJECT_ROOT)?
        .strip_prefix('.')?
        .strip_prefix(PARTNER_TOKEN)?
        .strip_prefix('.')?;
    let (partner, rest) = rest.split_once('.')?;
    // Guid normalises to lower case; the server compares the token exactly.
    let guid = Guid::try_from(partner.to_owned()).ok()?;
    (guid.as_str() == partner && !rest.is_empty()).then_some((guid, rest))
}

/// A partner's event as the bridge's stream stores it: its partner and kind.
pub fn partner_event(subject: &str) -> Option<(Guid, EventKind)> {
    let (partner, rest) = split_partner(subject)?;
    let kind = EventKind::ALL.into_iter().find(|k| k.name() == rest)?;
    Some((partner, kind))
}

/// A partner's heartbeat as the bridge receives it: its partner and softphone.
pub(crate) fn partner_heartbeat(subject: &str) -> Option<(Guid, SoftphoneId)> {
    let (partner, rest) = split_partner(subject)?;
    let id = rest.strip_prefix("heartbeat.")?;
    Some((partner, SoftphoneId::try_from(id.to_owned()).ok()?))
}

/// Every partner's `load` request subject, `softphone.p.*.load`.
pub(crate) const PARTNER_LOAD_REQUESTS: &str = "softphone.p.*.load";

/// Every partner's heartbeats, `softphone.p.*.heartbeat.<softphoneId>`.
pub(crate) const PARTNER_HEARTBEATS: &str = "softphone.p.*.heartbeat.*";

/// A partner's request to the bridge's service (`load`, `api.command`): its
/// partner, when `subject` is `softphone.p.<partnerId>.<rest>`.
pub(crate) fn partner_request(subject: &str, rest: &str) -> Option<Guid> {
    split_partner(subject).and_then(|(partner, r)| (r == rest).then_some(partner))
}

/// Whether `reply` is a reply subject the server made for a request that
/// crossed a service import, and nothing else: `_R_.` then two tokens of six
/// base-62 characters (nats-server `newServiceReply`; the longer form with a
/// server hash and `.T` comes only with latency tracking, which the rendered
/// configuration never turns on). A request from a partner's or a CRM's
/// account reaches the bridge with such a reply, never with the client's own.
pub(crate) fn is_service_import_reply(reply: &str) -> bool {
    let Some(rest) = reply.strip_prefix("_R_.") else {
        return false;
    };
    let mut tokens = rest.split('.');
    let six = |t: Option<&str>| {
        t.is_some_and(|t| t.len() == 6 && t.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    six(tokens.next()) && six(tokens.next()) && tokens.next().is_none()
}

/// The header a service import with `share: true` writes for the bridge:
/// JSON of the requester's connection, `acc` (its account) and `user`
/// among others. nats-server sets it itself, after removing any header of
/// this name the client sent.
pub const REQUEST_INFO_HEADER: &str = "Nats-Request-Info";

/// The header the door (src/softphones/door.rs) stores a partner's `loaded` and
/// `agent.status_changed` with: the login the server vouched sent it, its
/// `sub`. Trusted on partners' subjects only, which only the bridge's
/// account publishes to; the door drops any the client sent.
pub const LOGIN_HEADER: &str = "Softphone-Login";

/// What the server vouches for about a request's publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// The publisher's account: a partner's id, or the CRMs' account.
    pub account: String,
    /// The publisher's user: the `name` the callout gave its login, which is
    /// the login's `sub` (the softphone id, or the CRM's name).
    pub user: String,
}

impl Vouched {
    /// The partner whose account the publisher is in, when it is a partner's.
    pub fn partner(&self) -> Option<Guid> {
        let guid = Guid::try_from(self.account.clone()).ok()?;
        (guid.as_str() == self.account).then_some(guid)
    }

    /// The user as a softphone id (a softphone's login `sub`).
    pub fn softphone(&self) -> Option<SoftphoneId> {
        SoftphoneId::try_from(self.user.clone()).ok()
    }
}

/// The publisher the server vouches for in a message's headers
/// ([`REQUEST_INFO_HEADER`], written by a service import with
/// `share: true`): `None` without exactly one such header, with one that is
/// not the server's JSON, or without an account and a user. The server
/// writes the header only on messages that cross a service import (a core
/// subscription sees it; a stream removes it before storing), and replaces
/// one a client sent under that exact name; a client's header under another
/// spelling (`nats-request-info`) is another header, never this one.
pub fn vouched_publisher(headers: Option<&async_nats::HeaderMap>) -> Option<Vouched> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(default)]
        acc: String,
        #[serde(default)]
        user: String,
    }
    let mut values = headers?.get_all(REQUEST_INFO_HEADER);
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let info: Info = serde_json::from_str(value.as_str()).ok()?;
    // A token login the callout gave no name shows as `[REDACTED]`.
    if info.acc.is_empty() || info.user.is_empty() || info.user == "[REDACTED]" {
        return None;
    }
    Some(Vouched {
        account: info.acc,
        user: info.user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";

    fn a() -> Guid {
        Guid::try_from(A.to_owned()).unwrap()
    }

    #[test]
    fn mappings_put_the_partner_at_its_token_position() {
        for mapping in MAPPINGS {
            let shared = mapping.for_partner(&a());
            assert_eq!(
                shared.split('.').nth(PARTNER_TOKEN_POSITION - 1),
                Some(A),
                "{shared}"
            );
            assert_eq!(
                mapping
                    .exported()
                    .split('.')
                    .nth(PARTNER_TOKEN_POSITION - 1),
                Some("*")
            );
            // The contract's subject and the bridge's end alike (through
            // the door for the two that the door stores, and only those).
            let local_rest = mapping.local.strip_prefix("softphone.").unwrap();
            let rest = mapping.rest.strip_prefix("vouch.");
            assert_eq!(rest.unwrap_or(mapping.rest), local_rest);
            assert_eq!(
                rest.is_some(),
                ["softphone.loaded", "softphone.agent.>"].contains(&mapping.local)
            );
        }
        let to_partner: Vec<_> = MAPPINGS
            .iter()
            .filter(|m| m.flow == Flow::ToPartner)
            .map(|m| m.local)
            .collect();
        assert_eq!(to_partner, ["softphone.cmd.>"]);
    }

    #[test]
    fn every_contract_event_crosses_a_mapping() {
        for kind in EventKind::ALL {
            let covered = MAPPINGS.iter().any(|m| {
                m.flow == Flow::ToBridge
                    && match m.local.strip_suffix('>') {
                        Some(prefix) => kind.subject().starts_with(prefix),
                        None => kind.subject() == m.local,
                    }
            });
            assert!(covered, "{kind}");
        }
    }

    #[test]
    fn partner_subjects_parse_back() {
        let subject = format!("softphone.p.{A}.call.accepted");
        assert_eq!(
            partner_event(&subject),
            Some((a(), EventKind::CallAccepted))
        );
        assert!(partner_event_subjects().contains(&"softphone.p.*.call.accepted".to_owned()));
        let (partner, softphone) =
            partner_heartbeat(&format!("softphone.p.{A}.heartbeat.agent-7")).expect("a heartbeat");
        assert_eq!((partner, softphone.as_str()), (a(), "agent-7"));
        let id = SoftphoneId::try_from("agent-7".to_owned()).unwrap();
        assert_eq!(
            partner_command_subject(&a(), &id),
            format!("softphone.p.{A}.cmd.agent-7")
        );
        assert_eq!(
            partner_command_request(&a()),
            format!("softphone.p.{A}.api.command")
        );
        for bad in [
            "softphone.call.accepted".to_owned(),
            format!("softphone.p.{A}"),
            format!("softphone.p.{A}."),
            format!("softphone.p.{}.loaded", A.to_uppercase()),
            "softphone.p.not-a-guid.loaded".to_owned(),
            format!("softphone.p.{A}.call.unknown"),
            format!("softphone.q.{A}.loaded"),
        ] {
            assert_eq!(partner_event(&bad), None, "{bad}");
        }
        assert_eq!(
            partner_heartbeat(&format!("softphone.p.{A}.heartbeat.a.b")),
            None
        );
    }

    #[test]
    fn only_the_servers_service_import_replies_are_accepted() {
        assert!(is_service_import_reply("_R_.Ab12Cd.xY9z0Q"));
        for bad in [
            "_INBOX.abc",
            "_R_.Ab12Cd",
            "_R_.Ab12Cd.xY9z0Q.T",
            "_R_.Ab12Cd.xY9z0Q.hash.T",
            "_R_.Ab12C.xY9z0Q",
            "_R_.Ab12Cd.xY9z0*",
            "_R_.Ab12Cd.>",
            "softphone.p.x.cmd.agent-7",
            "$JS.API.STREAM.PURGE.SOFTPHONE_EVENTS",
        ] {
            assert!(!is_service_import_reply(bad), "{bad}");
        }
        assert_eq!(
            partner_request(&format!("softphone.p.{A}.load"), "load"),
            Some(a())
        );
        assert_eq!(
            partner_request(&format!("softphone.p.{A}.api.command"), "api.command"),
            Some(a())
        );
        assert_eq!(
            partner_request(&format!("softphone.p.{A}.loaded"), "load"),
            None
        );
        assert_eq!(partner_request("softphone.load", "load"), None);
    }

    #[test]
    fn the_vouched_publisher_is_the_servers_one_header() {
        let info = format!(r#"{{"acc":"{A}","user":"agent-7","name":"I am agent-8","rtt":1000}}"#);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REQUEST_INFO_HEADER, info.as_str());
        let vouched = vouched_publisher(Some(&headers)).expect("vouched");
        assert_eq!(vouched.user, "agent-7");
        assert_eq!(vouched.partner(), Some(a()));
        assert_eq!(vouched.softphone().unwrap().as_str(), "agent-7");
        // Two of them: one is not the server's.
        headers.append(REQUEST_INFO_HEADER, info.as_str());
        assert_eq!(vouched_publisher(Some(&headers)), None);
        // Another spelling is another header.
        let mut other = async_nats::HeaderMap::new();
        other.insert("nats-request-info", info.as_str());
        assert_eq!(vouched_publisher(Some(&other)), None);
        assert_eq!(vouched_publisher(None), None);
        for body in [
            "not json".to_owned(),
            format!(r#"{{"acc":"{A}"}}"#),
            r#"{"user":"agent-7"}"#.to_owned(),
            format!(r#"{{"acc":"{A}","user":"[REDACTED]"}}"#),
        ] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(REQUEST_INFO_HEADER, body.as_str());
            assert_eq!(vouched_publisher(Some(&headers)), None, "{body}");
        }
        let crm = Vouched {
            account: "CRMS".into(),
            user: "crm-acme".into(),
        };
        assert_eq!(crm.partner(), None);
        let upper = Vouched {
            account: A.to_uppercase(),
            user: "agent-7".into(),
        };
        assert_eq!(upper.partner(), None);
    }
}
