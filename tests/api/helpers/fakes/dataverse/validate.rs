//! A phone call's body checked as Dataverse checks it: each column's type
//! and length, lookups, activity parties, state; unknown names refused.

use super::*;

impl Org {
    /// A phonecall body as the OData layer reads it: typed columns, the
    /// regarding lookup, activity parties, state; unknown names refused.
    pub(super) fn parse_phonecall(
        &self,
        object: &Map<String, Value>,
        id: &str,
    ) -> Result<Parsed, Reply> {
        let set = "phonecalls";
        let mut parsed = Parsed::default();
        for (key, value) in object {
            if key.starts_with('@') {
                continue;
            }
            if let Some(navigation) = key.strip_suffix("@odata.bind") {
                let (logical, target_set) = match navigation {
                    "regardingobjectid_contact" | "regardingobjectid_contact_phonecall" => {
                        ("contact", "contacts")
                    }
                    "regardingobjectid_account" | "regardingobjectid_account_phonecall" => {
                        ("account", "accounts")
                    }
                    _ => return Err(undeclared_navigation(set, navigation)),
                };
                if parsed.regarding.is_some() {
                    return Err(payload_error(
                        set,
                        "Microsoft.OData.ODataException: Multiple navigation links bind the lookup 'regardingobjectid'.",
                    ));
                }
                parsed.touches_other = true;
                parsed.regarding = Some(match value {
                    Value::Null => None,
                    Value::String(reference) => {
                        Some((logical, self.reference(set, reference, target_set)?))
                    }
                    other => return Err(cannot_convert(set, other, "Edm.String")),
                });
                continue;
            }
            if key.contains('@') {
                continue;
            }
            match key.as_str() {
                "phonecall_activity_parties" => {
                    parsed.touches_other = true;
                    parsed.parties = Some(self.parse_parties(value)?);
                }
                "activityid" => {
                    let same = value
                        .as_str()
                        .and_then(parse_guid)
                        .is_some_and(|given| given == id);
                    if !same {
                        return Err(cannot_convert(set, value, "Edm.Guid"));
                    }
                }
                "statecode" | "statuscode" => {
                    let code = match value {
                        Value::Null => return Err(set_to_null(key)),
                        Value::Number(n) => n
                            .as_i64()
                            .ok_or_else(|| cannot_convert(set, value, "Edm.Int32"))?,
                        other => return Err(cannot_convert(set, other, "Edm.Int32")),
                    };
                    if key == "statecode" {
                        parsed.statecode = Some(code);
                    } else {
                        parsed.statuscode = Some(code);
                    }
                }
                name => {
                    let Some(column) =
                        standard_column(name).or_else(|| self.custom_columns.get(name).copied())
                    else {
                        return Err(invalid_property("phonecall", name));
                    };
                    parsed.touches_other = true;
                    let stored = match (column, value) {
                        (_, Value::Null) => Value::Null,
                        (Column::Text(_) | Column::Memo(_), Value::String(_)) => value.clone(),
                        (Column::Text(_) | Column::Memo(_), other) => {
                            return Err(cannot_convert(set, other, "Edm.String"));
                        }
                        (Column::Integer(..), Value::Number(n)) if n.is_i64() => value.clone(),
                        (Column::Integer(..), other) => {
                            return Err(cannot_convert(set, other, "Edm.Int32"));
                        }
                        (Column::Boolean, Value::Bool(_)) => value.clone(),
                        (Column::Boolean, other) => {
                            return Err(cannot_convert(set, other, "Edm.Boolean"));
                        }
                        (Column::DateTime, Value::String(s)) => {
                            match time::OffsetDateTime::parse(
                                s,
                                &time::format_description::well_known::Rfc3339,
                            ) {
                                Ok(at) => json!(stamp(at)),
                                Err(_) => {
                                    return Err(cannot_convert(set, value, "Edm.DateTimeOffset"));
                                }
                            }
                        }
                        (Column::DateTime, other) => {
                            return Err(cannot_convert(set, other, "Edm.DateTimeOffset"));
                        }
                    };
                    parsed.columns.push((name.to_owned(), stored, column));
                }
            }
        }
        Ok(parsed)
    }

    /// The id in an `@odata.bind` value (`/contacts(<id>)`, `contacts(<id>)`
    /// or the full URL) of the expected entity set.
    pub(super) fn reference(
        &self,
        set: &str,
        reference: &str,
        expected: &str,
    ) -> Result<String, Reply> {
        let path = match reference.find(API_PATH) {
            Some(at) => &reference[at + API_PATH.len()..],
            None => reference.trim_start_matches('/'),
        };
        let bad = || {
            payload_error(
                set,
                &format!(
                    "Microsoft.OData.ODataException: The URI '{reference}' in the payload is not valid for the navigation property: it does not address an entity of the set '{expected}'."
                ),
            )
        };
        let (target, rest) = path.split_once('(').ok_or_else(bad)?;
        let key = rest.strip_suffix(')').ok_or_else(bad)?;
        if target != expected {
            return Err(bad());
        }
        parse_guid(key).ok_or_else(bad)
    }

    pub(super) fn parse_parties(&self, value: &Value) -> Result<Vec<Party>, Reply> {
        let set = "phonecalls";
        let Value::Array(items) = value else {
            return Err(cannot_convert(
                set,
                value,
                "Collection(Microsoft.Dynamics.CRM.activityparty)",
            ));
        };
        let mut parties = Vec::new();
        for item in items {
            let Value::Object(fields) = item else {
                return Err(cannot_convert(
                    set,
                    item,
                    "Microsoft.Dynamics.CRM.activityparty",
                ));
            };
            let mut party = Party::default();
            for (key, value) in fields {
                if key.starts_with('@') {
                    continue;
                }
                if let Some(navigation) = key.strip_suffix("@odata.bind") {
                    let (logical, target_set) = match navigation {
                        "partyid_contact" => ("contact", "contacts"),
                        "partyid_account" => ("account", "accounts"),
                        "partyid_systemuser" => ("systemuser", "systemusers"),
                        _ => return Err(undeclared_navigation(set, navigation)),
                    };
                    let Value::String(reference) = value else {
                        return Err(cannot_convert(set, value, "Edm.String"));
                    };
                    party.party = Some((logical, self.reference(set, reference, target_set)?));
                    continue;
                }
                if key.contains('@') {
                    continue;
                }
                match key.as_str() {
                    "participationtypemask" => {
                        party.mask = Some(
                            value
                                .as_i64()
                                .ok_or_else(|| cannot_convert(set, value, "Edm.Int32"))?,
                        );
                    }
                    "addressused" => match value {
                        Value::String(s) => party.address = Some(s.clone()),
                        Value::Null => party.address = None,
                        other => return Err(cannot_convert(set, other, "Edm.String")),
                    },
                    other => return Err(invalid_property("activityparty", other)),
                }
            }
            // Sender (1) and To Recipient (2) are the phone call's party lists.
            match party.mask {
                Some(1 | 2) => {}
                other => {
                    return Err(odata_error(
                        400,
                        "0x80094006",
                        &format!(
                            "The Activity Party type Mask '{}' not found.",
                            other.map(|m| m.to_string()).unwrap_or_default()
                        ),
                    ));
                }
            }
            if party.party.is_none() && party.address.is_none() {
                return Err(odata_error(
                    400,
                    "0x80040203",
                    "An activity party needs a partyid (partyid_*@odata.bind) or an addressused.",
                ));
            }
            parties.push(party);
        }
        Ok(parties)
    }
}

#[derive(Default)]
pub(super) struct Parsed {
    pub(super) columns: Vec<(String, Value, Column)>,
    /// `Some(None)` clears the lookup.
    pub(super) regarding: Option<Option<(&'static str, String)>>,
    pub(super) parties: Option<Vec<Party>>,
    pub(super) statecode: Option<i64>,
    pub(super) statuscode: Option<i64>,
    /// Whether the body writes anything but `statecode`/`statuscode`.
    pub(super) touches_other: bool,
}

#[derive(Default)]
pub(super) struct Party {
    pub(super) mask: Option<i64>,
    pub(super) party: Option<(&'static str, String)>,
    pub(super) address: Option<String>,
}
