//! Settings of the `dynamics` CRM connection (Dataverse Web API).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::crm::activity::settings::BatchSettings;
use crate::redact::{HttpUrl, redact_opt};

/// A Dynamics 365 (Dataverse) environment reached through its Web API with
/// an application user (client credentials).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicsSettings {
    /// The environment: `https://contoso.crm.dynamics.com` (the Web API is
    /// at `{url}/api/data/v{api_version}/`).
    pub url: HttpUrl,
    /// The Microsoft Entra tenant (directory) id of the app registration.
    pub tenant_id: String,
    /// The app registration's application (client) id.
    pub client_id: String,
    /// The app registration's client secret (or `client_secret_file`, the
    /// path of a file holding it, as for every secret).
    #[serde(default, serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    /// Where tokens are requested: `{authority}/{tenant_id}/oauth2/v2.0/token`.
    #[serde(default = "default_authority")]
    pub authority: HttpUrl,
    /// Web API version.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Whole-request timeout of one API call (a `$batch` included).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Column of `phonecall` that receives the disposition code (a custom
    /// text column, `new_disposition`); none: the disposition is not written.
    #[serde(default)]
    pub disposition_column: Option<String>,
    /// Column of `phonecall` stamped with the `publishedAt` of the event
    /// whose disposition and notes the call holds (a custom date-and-time
    /// column, `new_notesat`): read for a call the call memory does not
    /// know, so that an older word never overwrites a later one.
    #[serde(default)]
    pub notes_at_column: Option<String>,
    /// Column of `phonecall` that receives the exact duration in seconds (a
    /// custom whole-number column, `new_durationseconds`);
    /// `actualdurationminutes` is written either way.
    #[serde(default)]
    pub duration_seconds_column: Option<String>,
    /// Contract field (`language`, `ivrExitPath`, `channelName`,
    /// `reservationStartDate`, `specialEvent`, `escalationType`,
    /// `recordingStatus`, `partnerId`, `callerANI`, `dialledTo`) -> column of
    /// `phonecall`. Unmapped fields are not written.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Column -> the most characters it accepts, for mapped custom columns
    /// (longer values are cut with a marker and logged); unlisted mapped
    /// columns are cut at 100.
    #[serde(default)]
    pub column_lengths: BTreeMap<String, usize>,
    /// The disposition of a call the agent declined (`reason = "active"`).
    #[serde(default = "default_rejected")]
    pub rejected_disposition: String,
    /// The disposition of a call that rang out (`reason = "passive"`).
    #[serde(default = "default_missed")]
    pub missed_disposition: String,
    /// How the writes of concurrent events are gathered into one `$batch`
    /// (at most 300 calls: a call takes up to three requests of its 1,000).
    #[serde(default = "default_batch")]
    pub batch: BatchSettings,
    /// Caller lookup (contacts and accounts by phone).
    #[serde(default)]
    pub lookup: DynamicsLookup,
}

/// Caller lookup over contacts' and accounts' phone columns.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicsLookup {
    /// Look callers up at all.
    pub enabled: bool,
    /// How long a number's matches are remembered.
    #[serde(with = "humantime_serde")]
    pub cache_for: Duration,
    /// Column of `phonecall` (text) that records the matches when several
    /// records match (`contact:<id>, account:<id>`), for the screen pop; they
    /// are logged either way.
    pub matches_column: Option<String>,
}

impl Default for DynamicsLookup {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_for: Duration::from_secs(300),
            matches_column: None,
        }
    }
}

fn default_authority() -> HttpUrl {
    HttpUrl::try_from("https://login.microsoftonline.com".to_owned()).expect("a URL")
}
fn default_api_version() -> String {
    "9.2".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_rejected() -> String {
    "Rejected".into()
}
fn default_missed() -> String {
    "Missed".into()
}
fn default_batch() -> BatchSettings {
    BatchSettings {
        max_records: 100,
        ..BatchSettings::default()
    }
}

/// Most calls in one `$batch`: up to three requests each, of its 1,000.
pub(super) const MAX_BATCH_CALLS: usize = 300;

/// A Dataverse logical name: lower-case letters, digits and `_`.
fn is_logical_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl DynamicsSettings {
    /// Cross-key checks: `Err((field, why))`.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        use secrecy::ExposeSecret;
        for (field, value) in [
            ("tenant_id", &self.tenant_id),
            ("client_id", &self.client_id),
        ] {
            if uuid::Uuid::parse_str(value).is_err() {
                return Err((field, format!("{value:?} is not a GUID")));
            }
        }
        if self
            .client_secret
            .as_ref()
            .is_none_or(|s| s.expose_secret().is_empty())
        {
            return Err((
                "client_secret",
                "needs the app registration's client secret (or client_secret_file)".into(),
            ));
        }
        let version_ok = self
            .api_version
            .split_once('.')
            .is_some_and(|(major, minor)| {
                major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok()
            });
        if !version_ok {
            return Err((
                "api_version",
                format!("{:?} is not like \"9.2\"", self.api_version),
            ));
        }
        let named = [
            ("disposition_column", &self.disposition_column),
            ("notes_at_column", &self.notes_at_column),
            ("duration_seconds_column", &self.duration_seconds_column),
            ("lookup.matches_column", &self.lookup.matches_column),
        ];
        for (field, column) in named {
            if let Some(column) = column
                && !is_logical_name(column)
            {
                return Err((field, format!("{column:?} is not a logical name")));
            }
        }
        for (from, to) in &self.columns {
            if !crate::crm::activity::MAPPABLE_FIELDS.contains(&from.as_str()) {
                return Err((
                    "columns",
                    format!(
                        "{from:?} is not one of {:?}",
                        crate::crm::activity::MAPPABLE_FIELDS
                    ),
                ));
            }
            if !is_logical_name(to) {
                return Err(("columns", format!("{to:?} is not a logical name")));
            }
        }
        if let Some((column, _)) = self
            .column_lengths
            .iter()
            .find(|(c, n)| !is_logical_name(c) || **n == 0)
        {
            return Err((
                "column_lengths",
                format!("{column:?}: a logical name and a length above 0"),
            ));
        }
        if !(1..=MAX_BATCH_CALLS).contains(&self.batch.max_records) {
            return Err((
                "batch.max_records",
                format!("must be between 1 and {MAX_BATCH_CALLS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    const GOOD: &str = "[crm]\nkind = \"dynamics\"\nurl = \"https://contoso.crm.dynamics.com\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"51f81489-12ee-4a9e-aaae-a2591f45987d\"\nclient_secret = \"s3cr3t-value\"\n";

    #[test]
    fn a_connection_is_checked_and_its_secret_never_shown() {
        let settings = Settings::from_toml(GOOD).unwrap();
        let shown = settings.to_redacted_toml();
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!format!("{settings:?}").contains("s3cr3t-value"));
        for (change, key) in [
            (
                ("tenant_id = \"72f988bf", "tenant_id = \"contoso"),
                "tenant_id",
            ),
            (
                ("client_secret = \"s3cr3t-value\"", "client_secret = \"\""),
                "client_secret",
            ),
            (
                ("\nurl", "\nnotes_at_column = \"New Notes\"\nurl"),
                "notes_at_column",
            ),
            (
                (
                    "s3cr3t-value\"\n",
                    "s3cr3t-value\"\n[crm.columns]\nfavouriteColour = \"new_colour\"\n",
                ),
                "columns",
            ),
            (
                (
                    "s3cr3t-value\"\n",
                    "s3cr3t-value\"\n[crm.batch]\nmax_records = 301\n",
                ),
                "batch.max_records",
            ),
        ] {
            let toml = GOOD.replacen(change.0, change.1, 1);
            let error = Settings::from_toml(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
            assert!(!error.contains("s3cr3t-value"), "{error}");
        }
    }
}
