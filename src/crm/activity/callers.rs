//! A batch's callers, as every adapter looks them up: the numbers its writes
//! name, the matches the cache holds, what the adapter's lookup found for
//! the others (cached), and each write given its caller's matches.

use std::collections::HashMap;

use super::calls::Group;
use super::lookup::{Cache, Match};
use super::word::Write;
use crate::contract::PhoneNumber;
use crate::crm::CrmError;

/// The callers of one batch.
pub(crate) struct Callers {
    /// Matches by number, cached or just looked up.
    found: HashMap<String, Vec<Match>>,
    /// Numbers whose lookup failed for now: their events' fate.
    failed: HashMap<String, CrmError>,
    /// Numbers the cache does not know: to look up.
    pub unknown: Vec<PhoneNumber>,
}

impl Callers {
    /// The numbers the groups' writes name, known from `cache` or not
    /// (none when the connection does not look callers up).
    pub(crate) fn of(groups: &[Group], cache: &Cache, enabled: bool) -> Self {
        let mut callers = Self {
            found: HashMap::new(),
            failed: HashMap::new(),
            unknown: Vec::new(),
        };
        let numbers = groups
            .iter()
            .flat_map(|g| &g.items)
            .filter_map(|i| i.write.lookup.as_ref())
            .filter(|_| enabled);
        for number in numbers {
            if callers.found.contains_key(number.as_str()) || callers.unknown.contains(number) {
                continue;
            }
            match cache.get(number) {
                Some(matches) => {
                    callers.found.insert(number.as_str().to_owned(), matches);
                }
                None => callers.unknown.push(number.clone()),
            }
        }
        callers
    }

    /// What a lookup of `numbers` answered: each number's matches (cached);
    /// refused (`Permanent`: the calls are written without a caller); or
    /// failed for now (their events wait).
    pub(crate) fn learn(
        &mut self,
        connection: &str,
        cache: &Cache,
        numbers: &[PhoneNumber],
        answer: Result<HashMap<String, Vec<Match>>, CrmError>,
    ) {
        match answer {
            Ok(mut found) => {
                for number in numbers {
                    let matches = found.remove(number.as_str()).unwrap_or_default();
                    cache.put(number, matches.clone());
                    self.found.insert(number.as_str().to_owned(), matches);
                }
            }
            Err(CrmError::Permanent { reason, .. }) => {
                tracing::warn!(crm = %connection, numbers = numbers.len(), %reason, "Caller lookup refused; calls written without their caller.");
                for number in numbers {
                    self.found.insert(number.as_str().to_owned(), Vec::new());
                }
            }
            Err(e) => {
                for number in numbers {
                    self.failed.insert(number.as_str().to_owned(), e.clone());
                }
            }
        }
    }

    /// Gives each write its caller: `apply(conversation, write, ringing,
    /// number, matches)`; a write whose lookup failed fails its group.
    pub(crate) fn apply(
        &self,
        groups: &mut [Group],
        mut apply: impl FnMut(&str, &mut Write, bool, &PhoneNumber, &[Match]),
    ) {
        for group in groups.iter_mut() {
            for item in &mut group.items {
                let Some(number) = item.write.lookup.take() else {
                    continue;
                };
                if let Some(e) = self.failed.get(number.as_str()) {
                    group.failure.get_or_insert_with(|| e.clone());
                    continue;
                }
                // Not looked up (lookups off): nothing to apply.
                let Some(matches) = self.found.get(number.as_str()) else {
                    continue;
                };
                apply(
                    &group.conversation,
                    &mut item.write,
                    item.ringing,
                    &number,
                    matches,
                );
            }
        }
    }
}

/// Several records match a call's caller: logged, and written to `column`
/// (when the connection names one) as `type:id, …` for the screen pop; the
/// call's `link` to a record (Salesforce's `WhoId`, Dataverse's regarding
/// record) is left for the agent.
pub(crate) fn several(
    connection: &str,
    conversation: &str,
    write: &mut Write,
    matches: &[Match],
    column: Option<&String>,
    link: &str,
) {
    let listed: Vec<String> = matches
        .iter()
        .map(|m| format!("{}:{}", m.object, m.id))
        .collect();
    let listed = listed.join(", ");
    tracing::info!(crm = %connection, conversation, matches = %listed, left_for_the_agent = link, "Several records match the caller.");
    if let Some(column) = column {
        write
            .fields
            .insert(column.clone(), serde_json::Value::String(listed));
    }
}
