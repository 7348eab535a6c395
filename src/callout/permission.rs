//! What a login may do, by role, as the user JWT's permissions: a softphone
//! publishes the contract's events, `softphone.load` and its own heartbeat,
//! and reads its own commands and inbox; a CRM calls the command service for
//! its own partners only. Everything else is refused by the server.

use super::login::{Login, Role};
use crate::contract::{EventKind, LOAD_REQUEST_SUBJECT, SUBJECT_ROOT, tenant};

/// Allowed subjects, by direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The inbox prefix a login's client must use (`custom_inbox_prefix` in
/// async-nats, `inboxPrefix` in nats.js): its own, so no other client of
/// the same account reads its replies (publish acks, `load` callbacks).
pub fn inbox_prefix(login: &Login) -> String {
    format!("_INBOX_{}", login.subject)
}

/// The login's permissions.
pub fn for_login(login: &Login) -> Permissions {
    let inbox = format!("{}.>", inbox_prefix(login));
    match login.role {
        Role::Softphone => {
            let mut publish = EventKind::subjects();
            publish.push(format!("{SUBJECT_ROOT}.heartbeat.{}", login.subject));
            publish.push(LOAD_REQUEST_SUBJECT.to_owned());
            Permissions {
                publish,
                subscribe: vec![format!("{SUBJECT_ROOT}.cmd.{}", login.subject), inbox],
            }
        }
        Role::Crm => Permissions {
            publish: login
                .partners
                .iter()
                .map(tenant::partner_command_request)
                .collect(),
            subscribe: vec![inbox],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Guid, SoftphoneId};

    fn login(role: Role, partners: &[&str]) -> Login {
        Login {
            subject: SoftphoneId::try_from("agent-7".to_owned()).unwrap(),
            role,
            partners: partners
                .iter()
                .map(|p| Guid::try_from(p.to_string()).unwrap())
                .collect(),
            expires: 0,
        }
    }

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "57053e21-0440-4689-a27a-513d7dceebde";

    #[test]
    fn a_softphone_publishes_events_and_reads_its_own_commands() {
        let p = for_login(&login(Role::Softphone, &[A]));
        for subject in [
            "softphone.loaded",
            "softphone.call.accepted",
            "softphone.agent.status_changed",
            "softphone.heartbeat.agent-7",
            "softphone.load",
        ] {
            assert!(p.publish.iter().any(|s| s == subject), "{subject}");
        }
        assert_eq!(p.publish.len(), EventKind::ALL.len() + 2);
        assert!(!p.publish.iter().any(|s| s.contains('*') || s.contains('>')));
        assert!(!p.publish.iter().any(|s| s.starts_with("softphone.cmd")));
        assert_eq!(p.subscribe, ["softphone.cmd.agent-7", "_INBOX_agent-7.>"]);
    }

    #[test]
    fn a_crm_calls_the_command_service_of_its_partners_only() {
        let p = for_login(&login(Role::Crm, &[A, B]));
        assert_eq!(
            p.publish,
            [
                format!("softphone.p.{A}.api.command"),
                format!("softphone.p.{B}.api.command")
            ]
        );
        assert_eq!(p.subscribe, ["_INBOX_agent-7.>"]);
    }
}
