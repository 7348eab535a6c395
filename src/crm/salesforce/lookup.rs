//! Caller lookup: a SOSL search over phone fields for a number's E.164 and
//! national forms, with the matches cached per number and shared by every
//! connection to the same org.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::contract::PhoneNumber;

/// A record whose phone fields hold the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Match {
    /// `Contact` or `Lead`.
    #[serde(rename = "type")]
    pub object: String,
    pub id: String,
    pub name: String,
}

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

/// The number as people type it in its own country, digits only:
/// `+18883973342` -> `8883973342`, `+442071234567` -> `02071234567`.
pub(crate) fn national_form(number: &PhoneNumber) -> Option<String> {
    let parsed = phonenumber::parse(None, number.as_str()).ok()?;
    let national: String = parsed
        .format()
        .mode(phonenumber::Mode::National)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    (!national.is_empty() && format!("+{national}") != number.as_str()).then_some(national)
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

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
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
        let e164 = digits(number.as_str());
        let national = national_form(number);
        self.phones
            .values()
            .filter_map(|v| v.as_str())
            .map(digits)
            .any(|held| held == e164 || Some(&held) == national.as_ref())
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
    pub fn matches(self, numbers: &[PhoneNumber]) -> HashMap<String, Vec<Match>> {
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

/// Matches per number, for `ttl`.
pub(crate) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Vec<Match>)>>,
}

/// The cache of the org `key` names ([`super::memory::org_key`]), shared by
/// every connection to it while one holds it.
pub(crate) fn shared(key: &str, ttl: Duration) -> Arc<Cache> {
    static CACHES: OnceLock<Mutex<HashMap<String, Weak<Cache>>>> = OnceLock::new();
    let mut caches = CACHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    caches.retain(|_, cache| cache.strong_count() > 0);
    if let Some(cache) = caches.get(key).and_then(Weak::upgrade) {
        return cache;
    }
    let cache = Arc::new(Cache::new(ttl));
    caches.insert(key.to_owned(), Arc::downgrade(&cache));
    cache
}

impl Cache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, number: &PhoneNumber) -> Option<Vec<Match>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(number.as_str()) {
            Some((at, matches)) if at.elapsed() < self.ttl => Some(matches.clone()),
            Some(_) => {
                entries.remove(number.as_str());
                None
            }
            None => None,
        }
    }

    pub fn put(&self, number: &PhoneNumber, matches: Vec<Match>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Expired entries go when the map grows, so it never outgrows a TTL's worth of callers.
        if entries.len() >= 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(number.as_str().to_owned(), (Instant::now(), matches));
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
        // Each number in its own country's national form.
        for (e164, national) in [
            ("+442071234567", "02071234567"),
            ("+33142685300", "0142685300"),
            ("+4930123456", "030123456"),
            ("+18883973342", "8883973342"),
        ] {
            assert_eq!(
                national_form(&number(e164)).as_deref(),
                Some(national),
                "{e164}"
            );
        }
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

    #[test]
    fn connections_to_one_org_share_a_cache() {
        let a = shared(
            "https://acme.my.salesforce.com/ id",
            Duration::from_secs(60),
        );
        let b = shared(
            "https://acme.my.salesforce.com/ id",
            Duration::from_secs(60),
        );
        let other = shared(
            "https://other.my.salesforce.com/ id",
            Duration::from_secs(60),
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[tokio::test(start_paused = true)]
    async fn cache_forgets_after_its_ttl() {
        let cache = Cache::new(Duration::from_secs(60));
        let n = number("+18883973342");
        assert_eq!(cache.get(&n), None);
        cache.put(&n, vec![]);
        assert_eq!(cache.get(&n), Some(vec![]));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.get(&n), None);
    }
}
