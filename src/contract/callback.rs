//! Bridge/CRM -> softphone callbacks, the contract's `callback(eventType, payload)`
//! as `{"type": ..., "payload": ...}` on `softphone.cmd.<softphoneId>`.

use serde::{Deserialize, Serialize};

use super::value::{Guid, PhoneNumber};

/// One callback, serialized as `{"type": "<event type>", "payload": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Callback {
    /// Disposition codes shown as a drop-down in the softphone.
    Disposition(Vec<String>),
    /// What the softphone needs to let the agent dial out from the dialpad.
    PartnerConfig(PartnerConfig),
    /// Change the agent's presence.
    UpdatePresence(UpdatePresence),
    /// Start an outbound call (click-to-dial).
    StartCall(StartCall),
}

impl Callback {
    /// Decodes and validates a `{"type": ..., "payload": ...}` body, naming the
    /// offending field on a contract violation.
    pub fn decode(body: &[u8]) -> Result<Callback, super::ContractError> {
        /// The envelope in one pass, in any key order, its payload left as text.
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            payload: &'a serde_json::value::RawValue,
        }
        let Ok(Envelope { kind, payload }) = serde_json::from_slice::<Envelope>(body) else {
            // Not an envelope: the whole body's decoding says why, by field.
            return super::event::decode(body);
        };
        Self::from_parts(&kind, payload.get().as_bytes())
    }

    /// Decodes and validates a callback whose envelope was read elsewhere
    /// (the NATS service's request): its `type` and its `payload` as JSON text.
    pub fn from_parts(kind: &str, payload: &[u8]) -> Result<Callback, super::ContractError> {
        use super::ContractError;
        let in_payload = |e: ContractError| match e {
            ContractError::Invalid { field, reason } => ContractError::Invalid {
                field: match field.as_str() {
                    "." => "payload".to_owned(),
                    _ => format!("payload.{field}"),
                },
                reason,
            },
            other => other,
        };
        use super::event::decode;
        Ok(match kind {
            "disposition" => Callback::Disposition(decode(payload).map_err(in_payload)?),
            "partner_config" => Callback::PartnerConfig(decode(payload).map_err(in_payload)?),
            "update_presence" => Callback::UpdatePresence(decode(payload).map_err(in_payload)?),
            "start_call" => Callback::StartCall(decode(payload).map_err(in_payload)?),
            other => {
                return Err(ContractError::Invalid {
                    field: "type".into(),
                    reason: format!(
                        "unknown variant `{other}`, expected one of `disposition`, `partner_config`, `update_presence`, `start_call`"
                    ),
                });
            }
        })
    }

    /// The partner a callback names, if it names one.
    pub fn partner_id(&self) -> Option<&Guid> {
        match self {
            Callback::PartnerConfig(c) => Some(&c.partner_id),
            Callback::StartCall(c) => Some(&c.partner_id),
            Callback::Disposition(_) | Callback::UpdatePresence(_) => None,
        }
    }

    /// The contract's event type, e.g. `start_call`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Callback::Disposition(_) => "disposition",
            Callback::PartnerConfig(_) => "partner_config",
            Callback::UpdatePresence(_) => "update_presence",
            Callback::StartCall(_) => "start_call",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartnerConfig {
    pub partner_id: Guid,
    pub business_segment_id: Guid,
    pub channel_origin_id: Guid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePresence {
    /// The GUID of the presence status to switch to (the contract calls it
    /// `softphoneId`; the softphone instance is the command subject's last token).
    pub softphone_id: Guid,
}

/// Who is being called, in `start_call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParticipantType {
    Traveler,
    Supplier,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartCall {
    pub partner_id: Guid,
    pub business_segment_id: Guid,
    pub channel_origin_id: Guid,
    pub dial_to: PhoneNumber,
    pub dial_from: PhoneNumber,
    pub participant_type: ParticipantType,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_contract() {
        let cb = Callback::Disposition(vec!["code1".into(), "code2".into()]);
        assert_eq!(
            serde_json::to_string(&cb).unwrap(),
            r#"{"type":"disposition","payload":["code1","code2"]}"#
        );
        let start: Callback = serde_json::from_str(
            r#"{"type":"start_call","payload":{
                "partnerId":"215fd887-39be-4935-981f-2670d6afeaa7",
                "businessSegmentId":"d6afeaa7-39be-4935-981f-2670215fd887",
                "channelOriginId":"57053e21-0440-4689-a27a-513d7dceebde",
                "dialTo":"+18883973342","dialFrom":"+18449401117",
                "participantType":"Traveler"}}"#,
        )
        .unwrap();
        assert_eq!(start.type_name(), "start_call");
    }

    #[test]
    fn decode_names_the_offending_field() {
        let err =
            Callback::decode(br#"{"type":"update_presence","payload":{"softphoneId":"nope"}}"#)
                .unwrap_err();
        assert!(
            matches!(&err, super::super::ContractError::Invalid { field, .. } if field == "payload.softphoneId"),
            "{err:?}"
        );
        let err =
            Callback::decode(br#"{"payload":{"softphoneId":"nope"},"type":"update_presence"}"#)
                .unwrap_err();
        assert!(
            matches!(&err, super::super::ContractError::Invalid { field, .. } if field == "payload.softphoneId"),
            "{err:?}"
        );
        let err = Callback::decode(br#"{"type":"dial","payload":{}}"#).unwrap_err();
        assert!(err.to_string().contains("start_call"), "{err}");
        assert!(matches!(
            Callback::decode(b"{"),
            Err(super::super::ContractError::Json(_))
        ));
    }

    #[test]
    fn participant_type_is_one_of_three() {
        let err = serde_json::from_str::<ParticipantType>(r#""Traveler/Supplier/Agent""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Traveler"), "{err}");
    }
}
