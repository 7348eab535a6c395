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
pub const PARTNER_TOKEN_POSITION: usize = 3;

/// One mapping between a partner's account and the bridge's: `local` is
/// the contract's subject as the partner's clients use it, `shared` what the
/// bridge's account sees, with `*` where the partner's id goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The contract's subject in the partner's account (may end in `>`).
    pub local: &'static str,
    /// The same after the partner token: `softphone.p.*.` then this.
    pub rest: &'static str,
    /// Which way messages flow.
    pub flow: Flow,
}

/// Which way a [`Mapping`] carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From the partner's clients to the bridge (a service import: requests
    /// and JetStream publish acks answer back through it).
    ToBridge,
    /// From the bridge to the partner's clients (a stream import).
    ToPartner,
}

/// What a partner's account imports from the bridge's: the contract's
/// subjects and nothing else. Commands flow only towards the partner: no
/// partner's `softphone.cmd.>` publish ever reaches the bridge.
pub const MAPPINGS: [Mapping; 6] = [
    Mapping {
        local: "softphone.call.>",
        rest: "call.>",
        flow: Flow::ToBridge,
    },
    Mapping {
        local: "softphone.loaded",
        rest: "loaded",
        flow: Flow::ToBridge,
    },
    Mapping {
        local: "softphone.agent.>",
        rest: "agent.>",
        flow: Flow::ToBridge,
    },
    Mapping {
        local: "softphone.load",
        rest: "load",
        flow: Flow::ToBridge,
    },
    Mapping {
        local: "softphone.heartbeat.>",
        rest: "heartbeat.>",
        flow: Flow::ToBridge,
    },
    Mapping {
        local: "softphone.cmd.>",
        rest: "cmd.>",
        flow: Flow::ToPartner,
    },
];

impl Mapping {
    /// The bridge's subject for one partner: `softphone.p.<partnerId>.<rest>`.
    pub fn for_partner(&self, partner: &Guid) -> String {
        format!("{}.{}", partner_prefix(partner), self.rest)
    }

    /// The bridge's subject for every partner: `softphone.p.*.<rest>`, what it exports.
    pub fn exported(&self) -> String {
        format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.*.{}", self.rest)
    }
}

/// `softphone.p.<partnerId>`.
pub fn partner_prefix(partner: &Guid) -> String {
    format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.{partner}")
}

/// What a CRM login publishes for a command to one of its partners'
/// softphones: the command service's request subject under the partner's
/// prefix, `softphone.p.<partnerId>.api.command`.
pub fn partner_command_request(partner: &Guid) -> String {
    format!("{}.api.command", partner_prefix(partner))
}

/// Every partner's command-service request subject, `softphone.p.*.api.command`.
pub const PARTNER_COMMAND_REQUESTS: &str = "softphone.p.*.api.command";

/// What `SOFTPHONE_EVENTS` captures of partners' events: each event subject
/// under every partner's prefix (`softphone.p.*.call.accepted`, …).
pub fn partner_event_subjects() -> Vec<String> {
    EventKind::ALL
        .iter()
        .map(|kind| format!("{SUBJECT_ROOT}.{PARTNER_TOKEN}.*.{}", kind.name()))
        .collect()
}

/// What `SOFTPHONE_COMMANDS` captures of commands to partners' softphones.
pub const PARTNER_COMMAND_SUBJECTS: &str = "softphone.p.*.cmd.>";

/// The bridge's subject of a command to a softphone of `partner`; the partner's
/// account receives it as `softphone.cmd.<softphoneId>`.
pub fn partner_command_subject(partner: &Guid, softphone: &SoftphoneId) -> String {
    format!("{}.cmd.{softphone}", partner_prefix(partner))
}

/// The partner a subject of the bridge's account names, and the rest of the
/// subject after its partner token (`call.accepted`, `heartbeat.agent-7`).
pub fn split_partner(subject: &str) -> Option<(Guid, &str)> {
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
pub fn partner_heartbeat(subject: &str) -> Option<(Guid, SoftphoneId)> {
    let (partner, rest) = split_partner(subject)?;
    let id = rest.strip_prefix("heartbeat.")?;
    Some((partner, SoftphoneId::try_from(id.to_owned()).ok()?))
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
            // The contract's subject and the bridge's end alike.
            let local_rest = mapping.local.strip_prefix("softphone.").unwrap();
            assert_eq!(local_rest, mapping.rest);
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
}
