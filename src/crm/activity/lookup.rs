//! Caller lookup, as every CRM needs it: the forms a number is searched in,
//! which records hold it, and the matches cached per number and shared by
//! every connection to the same org.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::contract::PhoneNumber;

/// A record whose phone fields hold the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Match {
    /// The record's type (`Contact`, `Lead`, `contact`, `account`).
    #[serde(rename = "type")]
    pub object: String,
    pub id: String,
    pub name: String,
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

pub(crate) fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// Whether one of a record's phone values holds `number`, however it is
/// written there: `(888) 397-3342`, `+1 888 397 3342`, `020 7123 4567`.
pub(crate) fn holds<'a>(phones: impl IntoIterator<Item = &'a str>, number: &PhoneNumber) -> bool {
    let e164 = digits(number.as_str());
    let national = national_form(number);
    phones
        .into_iter()
        .map(digits)
        .any(|held| !held.is_empty() && (held == e164 || Some(&held) == national.as_ref()))
}

/// Matches per number, for `ttl`.
pub(crate) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Vec<Match>)>>,
}

/// The cache of the org `key` names ([`super::org_key`]), shared by
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
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, number: &PhoneNumber) -> Option<Vec<Match>> {
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

    pub(crate) fn put(&self, number: &PhoneNumber, matches: Vec<Match>) {
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
    fn national_forms_are_each_numbers_own_countrys() {
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
        assert!(holds(["(888) 397-3342"], &number("+18883973342")));
        assert!(holds(["+1 888 397 3342"], &number("+18883973342")));
        assert!(holds(["01 42 68 53 00"], &number("+33142685300")));
        assert!(!holds(["01 42 68 53 01"], &number("+33142685300")));
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
