//! The organization as it starts (its user, privileges, columns), the
//! phone call's state model and the values Dataverse stores.

use super::*;

impl Org {
    pub(super) fn new(base: String) -> Org {
        let custom_columns = HashMap::from([
            ("new_disposition".to_owned(), Column::Text(100)),
            (
                "new_durationseconds".to_owned(),
                Column::Integer(i32::MIN as i64, i32::MAX as i64),
            ),
            ("new_notesat".to_owned(), Column::DateTime),
            ("new_callermatches".to_owned(), Column::Memo(2000)),
            ("new_ivrexitpath".to_owned(), Column::Text(200)),
        ]);
        Org {
            base,
            phonecalls: HashMap::new(),
            history: HashMap::new(),
            writes: Vec::new(),
            contacts: Vec::new(),
            accounts: Vec::new(),
            custom_columns,
            privileges: DEFAULT_PRIVILEGES.iter().map(|p| (*p).to_owned()).collect(),
            token_requests: Vec::new(),
            valid_tokens: HashSet::new(),
            token_down: false,
            token_delay: None,
            down: false,
            delay: None,
            throttle: None,
            throttle_limit: Limit::Requests,
            refuse: HashSet::new(),
            requests: 0,
            batches: 0,
            operations: 0,
            rollbacks: 0,
            throttled: 0,
            queries: Vec::new(),
            version: 1_000_000,
            journal: None,
        }
    }
}

pub(super) fn state_of(status: i64) -> Option<i64> {
    match status {
        1 => Some(0),
        2 | 4 => Some(1),
        3 => Some(2),
        _ => None,
    }
}

pub(super) fn default_status(state: i64) -> Option<i64> {
    match state {
        0 => Some(1),
        1 => Some(2),
        2 => Some(3),
        _ => None,
    }
}

pub(super) fn standard_column(name: &str) -> Option<Column> {
    Some(match name {
        "subject" => Column::Text(200),
        "description" => Column::Memo(2000),
        "phonenumber" => Column::Text(200),
        "category" | "subcategory" => Column::Text(250),
        "directioncode" | "leftvoicemail" => Column::Boolean,
        "actualstart" | "actualend" | "scheduledstart" | "scheduledend" => Column::DateTime,
        "actualdurationminutes" => Column::Integer(0, i32::MAX as i64),
        _ => return None,
    })
}

pub(super) fn stamp(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

pub(super) fn now() -> String {
    stamp(time::OffsetDateTime::now_utc())
}

pub(super) fn parse_guid(text: &str) -> Option<String> {
    (text.len() == 36)
        .then(|| uuid::Uuid::try_parse(text).ok())
        .flatten()
        .map(|u| u.to_string())
}

/// A stable id for a privilege name (two FNV-1a hashes).
pub(super) fn privilege_id(name: &str) -> String {
    let hash = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hex = format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x8422_2325_cbf2_9ce4)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
