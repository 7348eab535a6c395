//! Caller lookup in Salesforce: one SOSL search over phone fields for the
//! numbers' E.164 and national forms (the cache and the forms are every
//! CRM's: `crm::activity::lookup`).

use std::collections::HashMap;

use serde::Deserialize;

use crate::contract::PhoneNumber;
use crate::crm::activity::{Match, holds, national_form};

/// Characters SOSL reserves inside `FIND {...}`, escaped with a backslash.
const RESERVED: &str = r#"?&|!{}[]()^~*:\"'+-"#;

fn escape(term: &str) -> String {
    let mut out = String::with_capacity(term.len() * 2);
    for c in term.chars() {
        if RESERVED.contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The phone fields a search returns, to tell which number a record holds.
const CONTACT_PHONES: &str = "Phone,MobilePhone,HomePhone,OtherPhone,AssistantPhone";
const LEAD_PHONES: &str = "Phone,MobilePhone";

/// Most numbers in one search, which keeps its text far below SOSL's
/// 10,000 characters.
pub(crate) const NUMBERS_PER_SEARCH: usize = 50;

/// One search for every number, each in its E.164 and national forms:
/// `FIND {\+18883973342 OR 8883973342} IN PHONE FIELDS RETURNING
/// Contact(Id,Name,Phone,...), Lead(Id,Name,Phone,MobilePhone)`.
pub(crate) fn sosl(numbers: &[PhoneNumber]) -> String {
    let mut terms = Vec::new();
    for number in numbers {
        terms.push(escape(number.as_str()));
        if let Some(national) = national_form(number) {
            terms.push(escape(&national));
        }
    }
    format!(
        "FIND {{{}}} IN PHONE FIELDS RETURNING Contact(Id,Name,{CONTACT_PHONES}), Lead(Id,Name,{LEAD_PHONES})",
        terms.join(" OR ")
    )
}

/// The search resource's answer: `{"searchRecords": [{"attributes": {"type": ..}, "Id", "Name", phones}]}`.
#[derive(Deserialize)]
pub(crate) struct SearchResponse {
    #[serde(rename = "searchRecords", default)]
    records: Vec<SearchRecord>,
}

#[derive(Deserialize)]
struct SearchRecord {
    attributes: Attributes,
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    /// The phone fields returned.
    #[serde(flatten)]
    phones: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Attributes {
    #[serde(rename = "type")]
    object: String,
}

impl SearchRecord {
    /// Whether one of its phone fields holds `number`, however it is
    /// written there: `(888) 397-3342`, `+1 888 397 3342`, `020 7123 4567`.
    fn holds(&self, number: &PhoneNumber) -> bool {
        holds(self.phones.values().filter_map(|v| v.as_str()), number)
    }

    fn to_match(&self) -> Match {
        Match {
            object: self.attributes.object.clone(),
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

impl SearchResponse {
    /// Each number's matches. A search for one number trusts Salesforce's
    /// phone matching for every record found; with several, a record goes
    /// to the numbers its phone fields hold.
    pub(super) fn matches(self, numbers: &[PhoneNumber]) -> HashMap<String, Vec<Match>> {
        numbers
            .iter()
            .map(|number| {
                let matches = self
                    .records
                    .iter()
                    .filter(|r| numbers.len() == 1 || r.holds(number))
                    .map(SearchRecord::to_match)
                    .collect();
                (number.as_str().to_owned(), matches)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(s: &str) -> PhoneNumber {
        s.parse().unwrap()
    }

    #[test]
    fn sosl_searches_both_forms_escaped() {
        assert_eq!(
            sosl(&[number("+18883973342")]),
            r"FIND {\+18883973342 OR 8883973342} IN PHONE FIELDS RETURNING Contact(Id,Name,Phone,MobilePhone,HomePhone,OtherPhone,AssistantPhone), Lead(Id,Name,Phone,MobilePhone)"
        );
        assert!(
            sosl(&[number("+18883973342"), number("+33142685300")])
                .starts_with(r"FIND {\+18883973342 OR 8883973342 OR \+33142685300 OR 0142685300} ")
        );
        assert_eq!(escape(r#"a-b{c}"d'\"#), r#"a\-b\{c\}\"d\'\\"#);
    }

    #[test]
    fn one_search_for_several_numbers_gives_each_its_own_records() {
        let answer: SearchResponse = serde_json::from_value(serde_json::json!({"searchRecords": [
            {"attributes": {"type": "Contact"}, "Id": "003A", "Name": "Ann", "Phone": "(888) 397-3342", "MobilePhone": null},
            {"attributes": {"type": "Lead"}, "Id": "00QB", "Name": "Bob", "Phone": null, "MobilePhone": "+33 1 42 68 53 00"},
            {"attributes": {"type": "Contact"}, "Id": "003C", "Name": "Cy", "Phone": "01 42 68 53 00", "HomePhone": "+1 888 397 3342"},
        ]}))
        .unwrap();
        let us = number("+18883973342");
        let fr = number("+33142685300");
        let none = number("+442071234567");
        let matches = answer.matches(&[us.clone(), fr.clone(), none.clone()]);
        let ids = |n: &PhoneNumber| -> Vec<String> {
            matches[n.as_str()].iter().map(|m| m.id.clone()).collect()
        };
        assert_eq!(ids(&us), ["003A", "003C"]);
        assert_eq!(ids(&fr), ["00QB", "003C"]);
        assert!(ids(&none).is_empty());
    }
}
