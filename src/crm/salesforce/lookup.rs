//! Caller lookup: a SOSL search over phone fields for a number's E.164 and
//! national forms, with the matches cached per number and shared by every
//! connection to the same org.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::LookupSettings;
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

/// `FIND {\+18883973342 OR 8883973342} IN PHONE FIELDS RETURNING Contact(Id,Name), Lead(Id,Name)`.
pub(crate) fn sosl(number: &PhoneNumber, _settings: &LookupSettings) -> String {
    let mut terms = vec![escape(number.as_str())];
    if let Some(national) = national_form(number) {
        terms.push(escape(&national));
    }
    format!(
        "FIND {{{}}} IN PHONE FIELDS RETURNING Contact(Id,Name), Lead(Id,Name)",
        terms.join(" OR ")
    )
}

/// The search resource's answer: `{"searchRecords": [{"attributes": {"type": ..}, "Id", "Name"}]}`.
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
}

#[derive(Deserialize)]
struct Attributes {
    #[serde(rename = "type")]
    object: String,
}

impl SearchResponse {
    pub fn matches(self) -> Vec<Match> {
        self.records
            .into_iter()
            .map(|r| Match {
                object: r.attributes.object,
                id: r.id,
                name: r.name.unwrap_or_default(),
            })
            .collect()
    }
}

/// Matches per number, for `ttl`.
pub(crate) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Vec<Match>)>>,
}

/// The cache of the org `key` names (login URL and client id), shared by
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
        let settings = LookupSettings::default();
        assert_eq!(
            sosl(&number("+18883973342"), &settings),
            r"FIND {\+18883973342 OR 8883973342} IN PHONE FIELDS RETURNING Contact(Id,Name), Lead(Id,Name)"
        );
        // Each number in its own country's national form, whatever the settings.
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
        assert!(sosl(&number("+33142685300"), &settings).contains(r"\+33142685300 OR 0142685300"));
        assert_eq!(escape(r#"a-b{c}"d'\"#), r#"a\-b\{c\}\"d\'\\"#);
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
