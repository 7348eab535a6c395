//! The ids and bodies tests publish.

pub const PARTNER: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
pub const SEGMENT: &str = "d6afeaa7-39be-4935-981f-2670215fd887";
pub const ORIGIN: &str = "57053e21-0440-4689-a27a-513d7dceebde";
pub const STATUS: &str = "9b2f3c4d-1e2f-4a5b-8c9d-0e1f2a3b4c5d";
/// The second partner of routing tests.
pub const PARTNER_B: &str = "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
/// `[partners.<PARTNER_B>]` on connection `b`, and `[crms.b]` as `crm_b`
/// (the body of a connection's table).
pub fn partner_b_on_connection_b(crm_b: &str) -> String {
    format!(
        "\n[partners.{PARTNER_B}]\nbusiness_segment_id = \"{SEGMENT}\"\nchannel_origin_id = \"{ORIGIN}\"\ncrm = \"b\"\n\n[crms.b]\n{crm_b}\n"
    )
}

/// A partner no token below is scoped to.
pub const OTHER_PARTNER: &str = "0c7d1a52-4f0b-4e8e-9a51-8f3e2b6d7c10";

/// A bearer token allowed to command every softphone.
pub const TOKEN: &str = "test-token-all-partners";
/// A bearer token scoped to [`PARTNER`].
pub const PARTNER_TOKEN: &str = "test-token-partner-a";

/// A call event body with the given extra fields.
pub fn call_body(conversation: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"partnerId":"{PARTNER}","conversationId":"{conversation}"{sep}{extra}}}"#)
}

/// A fresh conversation GUID.
pub fn conversation() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A call event body of another partner.
pub fn partner_call_body(partner: &str, conversation: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"partnerId":"{partner}","conversationId":"{conversation}"{sep}{extra}}}"#)
}

/// A valid `start_call` command for [`PARTNER`].
pub fn start_call() -> serde_json::Value {
    serde_json::json!({
        "type": "start_call",
        "payload": {
            "partnerId": PARTNER,
            "businessSegmentId": SEGMENT,
            "channelOriginId": ORIGIN,
            "dialTo": "+18883973342",
            "dialFrom": "+18449401117",
            "participantType": "Traveler"
        }
    })
}

/// A call event as a lane hands it to a CRM adapter, published `at` seconds
/// after 2027-01-15T08:00:00Z, with stream sequence `sequence`.
pub fn crm_event(
    kind: softphone_bridge::contract::EventKind,
    body: &str,
    at: i64,
    sequence: u64,
) -> softphone_bridge::crm::CrmEvent {
    softphone_bridge::crm::CrmEvent {
        id: format!("e{sequence}"),
        event: softphone_bridge::contract::Event::decode(kind, body.as_bytes()).unwrap(),
        raw: bytes::Bytes::copy_from_slice(body.as_bytes()),
        published: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + at),
        sequence,
        vouched: None,
    }
}
