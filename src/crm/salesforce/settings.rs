//! Settings of the `salesforce` CRM connection.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::contract::Guid;
pub use crate::crm::activity::fields::MAPPABLE_FIELDS;
use crate::crm::activity::settings::BatchSettings;
use crate::redact::{HttpUrl, redact_opt};

/// A Salesforce org reached through its REST API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSettings {
    /// OAuth 2.0 flow: `jwt_bearer` or `client_credentials`.
    pub auth: SalesforceAuth,
    /// Where tokens are requested: `https://login.salesforce.com`,
    /// `https://test.salesforce.com`, or the My Domain host (client credentials).
    pub login_url: HttpUrl,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The connected app's consumer secret (client credentials only).
    #[serde(default, serialize_with = "redact_opt")]
    pub client_secret: Option<SecretString>,
    /// The integration user the JWT bearer assertion is issued for.
    #[serde(default)]
    pub username: Option<String>,
    /// PEM file of the private key whose certificate the connected app holds (JWT bearer).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The PEM private key itself, e.g. from an environment variable (instead of the file).
    #[serde(default, serialize_with = "redact_opt")]
    pub private_key: Option<SecretString>,
    /// `aud` of the JWT bearer assertion; defaults to `https://test.salesforce.com`
    /// for sandbox login URLs, else `https://login.salesforce.com`.
    #[serde(default)]
    pub audience: Option<String>,
    /// REST API version, `67.0` (Summer '26).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// External-ID field on Task that holds the conversation id.
    #[serde(default = "default_external_id_field")]
    pub external_id_field: String,
    /// Task `Status` written when a call is over (ended or rejected).
    #[serde(default = "default_completed_status")]
    pub completed_status: String,
    /// `CallDisposition` of a call the agent declined (`reason = "active"`).
    #[serde(default = "default_rejected")]
    pub rejected_disposition: String,
    /// `CallDisposition` of a call that rang out (`reason = "passive"`).
    #[serde(default = "default_missed")]
    pub missed_disposition: String,
    /// Contract field (`language`, `ivrExitPath`, `channelName`,
    /// `reservationStartDate`, `specialEvent`, `escalationType`,
    /// `recordingStatus`, `partnerId`, `callerANI`, `dialledTo`) -> Task field
    /// API name. Unmapped fields are not written. Empty by default: every
    /// mapped field must exist on Task in the org.
    #[serde(default)]
    pub task_fields: BTreeMap<String, String>,
    /// Task field API name -> the most characters the org accepts in it, for
    /// mapped custom fields (`Softphone_Language__c = 10`). Longer values are
    /// cut with a marker and logged rather than refused. Standard fields
    /// (`Description` 32,000, `CallDisposition`, `Subject`, `CallObject` 255)
    /// need no entry; unlisted mapped fields are cut at 255.
    #[serde(default)]
    pub field_lengths: BTreeMap<String, usize>,
    /// DateTime field on Task stamped with the `publishedAt` of the event
    /// whose disposition and notes the Task holds: read for a call the call
    /// memory does not know, so that an older event (a retried
    /// `notes_submitted`, a late `ended`) never overwrites the agent's later
    /// word. Empty: no stamp (then such a call orders only one batch).
    #[serde(default = "default_notes_at_field")]
    pub notes_at_field: String,
    /// Read the Task before `ended`/`rejected` fill its disposition and
    /// notes even when the call memory knows the call, so that a value
    /// someone typed into the Task in Salesforce during the call is kept
    /// (one request more per batch holding an `ended`). Off: the memory
    /// decides alone, and such a value is replaced by `ended`'s.
    #[serde(default)]
    pub read_before_fill: bool,
    /// How Task writes of concurrent events are gathered into one request
    /// (sObject Collections: at most 200 records).
    #[serde(default)]
    pub batch: BatchSettings,
    /// Whole-request timeout of one API call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a token is used before a new one is requested, should the
    /// org's session timeout be shorter than this the first 401 refreshes it.
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Share of the org's daily API limit (0 to 1) past which calls are
    /// postponed (nak'd with `limit_retry_after`) instead of made.
    #[serde(default = "default_limit_share")]
    pub max_api_usage: f64,
    /// Redelivery delay of events postponed by the API-usage governor.
    #[serde(default = "default_limit_retry_after", with = "humantime_serde")]
    pub limit_retry_after: Duration,
    /// Caller lookup (screen pop and `WhoId`).
    #[serde(default)]
    pub lookup: LookupSettings,
    /// What `statusChanged` does.
    #[serde(default)]
    pub presence: PresenceSettings,
    /// Read the disposition list from a picklist (`describe`), if set.
    #[serde(default)]
    pub dispositions: Option<DispositionSource>,
}

/// OAuth 2.0 flow used to get tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuth {
    /// RS256 assertion signed with the connected app's key.
    JwtBearer,
    /// Consumer key and secret, against the My Domain host.
    ClientCredentials,
}

/// SOSL lookup of the caller over phone fields.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupSettings {
    /// Look callers up at all.
    pub enabled: bool,
    /// Deprecated and ignored: the national form searched is the number's
    /// own country's (`+442071234567` -> `02071234567`).
    pub country_code: String,
    /// Deprecated and ignored, as `country_code`.
    pub trunk_prefix: String,
    /// How long a number's matches are remembered.
    #[serde(with = "humantime_serde")]
    pub cache_for: Duration,
    /// Platform Event API name published with the matches when a call rings
    /// (`Softphone_Screen_Pop__e`), if any.
    pub screen_pop_event: Option<String>,
    /// Task field (long text) that records the matches when several records
    /// match (`Contact:003…, Lead:00Q…`), if any; they are logged either way.
    pub matches_field: Option<String>,
}

impl Default for LookupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            country_code: "1".into(),
            trunk_prefix: String::new(),
            cache_for: Duration::from_secs(300),
            screen_pop_event: None,
            matches_field: None,
        }
    }
}

/// What the bridge writes when an agent's presence changes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// `none`, `platform_event` or `upsert`.
    pub action: PresenceAction,
    /// Platform Event API name (`platform_event`) or object API name (`upsert`).
    pub object: Option<String>,
    /// External-ID field of `object` holding the agent (softphone instance) id (`upsert`).
    pub agent_field: Option<String>,
    /// Field receiving the CRM status name.
    pub status_field: Option<String>,
    /// Softphone status GUID -> CRM status name; unmapped GUIDs are written as they are.
    pub statuses: BTreeMap<Guid, String>,
}

/// See [`PresenceSettings::action`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// Presence changes are not written.
    #[default]
    None,
    /// Publish the Platform Event `object`.
    PlatformEvent,
    /// Upsert the record of `object` whose `agent_field` is the agent's id.
    Upsert,
}

/// The picklist the disposition list is read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionSource {
    /// Object API name (`Task`).
    #[serde(default = "default_disposition_object")]
    pub object: String,
    /// Picklist field API name.
    pub field: String,
    /// How long the list is cached.
    #[serde(default = "default_disposition_cache", with = "humantime_serde")]
    pub cache_for: Duration,
}

fn default_api_version() -> String {
    "67.0".into()
}
fn default_external_id_field() -> String {
    "Softphone_Conversation_Id__c".into()
}
fn default_completed_status() -> String {
    "Completed".into()
}
fn default_rejected() -> String {
    "Rejected".into()
}
fn default_missed() -> String {
    "Missed".into()
}
fn default_notes_at_field() -> String {
    "Softphone_Notes_At__c".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_limit_share() -> f64 {
    0.9
}
fn default_limit_retry_after() -> Duration {
    Duration::from_secs(300)
}
fn default_disposition_object() -> String {
    "Task".into()
}
fn default_disposition_cache() -> Duration {
    Duration::from_secs(3600)
}

fn is_api_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SalesforceSettings {
    /// Cross-key checks: `Err((field, why))`.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        use secrecy::ExposeSecret;
        if self.client_id.is_empty() {
            return Err(("client_id", "must not be empty".into()));
        }
        match self.auth {
            SalesforceAuth::JwtBearer => {
                if self.username.as_deref().unwrap_or("").is_empty() {
                    return Err(("username", "jwt_bearer needs the integration user".into()));
                }
                if self.private_key_file.is_some() == self.private_key.is_some() {
                    return Err((
                        "private_key_file",
                        "jwt_bearer needs exactly one of private_key_file and private_key".into(),
                    ));
                }
            }
            SalesforceAuth::ClientCredentials => {
                let host = self.login_url.as_url().host_str().unwrap_or_default();
                if matches!(host, "login.salesforce.com" | "test.salesforce.com") {
                    return Err((
                        "login_url",
                        "client_credentials requests tokens from the org's My Domain host, not the public login host"
                            .into(),
                    ));
                }
                if self
                    .client_secret
                    .as_ref()
                    .is_none_or(|s| s.expose_secret().is_empty())
                {
                    return Err((
                        "client_secret",
                        "client_credentials needs the consumer secret".into(),
                    ));
                }
            }
        }
        let version_ok = self
            .api_version
            .split_once('.')
            .is_some_and(|(major, minor)| major.parse::<u32>().is_ok() && minor == "0");
        if !version_ok {
            return Err((
                "api_version",
                format!("{:?} is not like \"67.0\"", self.api_version),
            ));
        }
        if !is_api_name(&self.external_id_field) {
            return Err((
                "external_id_field",
                format!("{:?} is not an API name", self.external_id_field),
            ));
        }
        for (from, to) in &self.task_fields {
            if !MAPPABLE_FIELDS.contains(&from.as_str()) {
                return Err((
                    "task_fields",
                    format!("{from:?} is not one of {MAPPABLE_FIELDS:?}"),
                ));
            }
            if !is_api_name(to) {
                return Err(("task_fields", format!("{to:?} is not an API name")));
            }
        }
        if !(self.notes_at_field.is_empty() || is_api_name(&self.notes_at_field)) {
            return Err((
                "notes_at_field",
                format!("{:?} is not an API name", self.notes_at_field),
            ));
        }
        if !(1..=200).contains(&self.batch.max_records) {
            return Err(("batch.max_records", "must be between 1 and 200".into()));
        }
        if let Some((field, _)) = self
            .field_lengths
            .iter()
            .find(|(f, n)| !is_api_name(f) || **n == 0)
        {
            return Err((
                "field_lengths",
                format!("{field:?}: an API name and a length above 0"),
            ));
        }
        if !(self.max_api_usage > 0.0 && self.max_api_usage <= 1.0) {
            return Err(("max_api_usage", "must be in (0, 1]".into()));
        }
        let p = &self.presence;
        if p.action != PresenceAction::None {
            if !p.object.as_deref().is_some_and(is_api_name) {
                return Err((
                    "presence.object",
                    "the presence action needs an object API name".into(),
                ));
            }
            if p.action == PresenceAction::Upsert
                && !p.agent_field.as_deref().is_some_and(is_api_name)
            {
                return Err((
                    "presence.agent_field",
                    "upsert needs the agent's external-ID field".into(),
                ));
            }
        }
        if let Some(field) = &self.lookup.matches_field
            && !is_api_name(field)
        {
            return Err((
                "lookup.matches_field",
                format!("{field:?} is not an API name"),
            ));
        }
        if let Some(event) = &self.lookup.screen_pop_event
            && !is_api_name(event)
        {
            return Err((
                "lookup.screen_pop_event",
                format!("{event:?} is not an API name"),
            ));
        }
        Ok(())
    }
}
