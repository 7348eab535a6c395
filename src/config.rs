//! Typed settings, read in layers: built-in defaults, then a TOML file, then
//! `SOFTPHONE_BRIDGE_*` environment variables (`__` separates nested keys).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::contract::Guid;

mod secret;

// Each component's settings, from the file beside it that holds them (and
// nothing a component does: this file is imported by components, never the
// other way round through them).
pub use crate::broker::settings::{NatsSettings, NatsTls, StreamSettings};
pub use crate::callout::settings::CalloutSettings;
pub use crate::crm::activity::fields::MAPPABLE_FIELDS;
pub use crate::crm::activity::settings::{BatchSettings, CallMemorySettings};
pub use crate::crm::dynamics::settings::{DynamicsLookup, DynamicsSettings};
pub use crate::crm::salesforce::settings::{
    DispositionSource, LookupSettings, PresenceAction, PresenceSettings, SalesforceAuth,
    SalesforceSettings,
};
pub use crate::crm::settings::{CrmSettings, DEFAULT_CONNECTION, HttpUrl, WebhookSettings};
pub use crate::dispatch::settings::{CommandSettings, UnknownSoftphones};
pub use crate::http::settings::{HttpSettings, HttpTls, TokenSettings};
pub use crate::pipeline::settings::{LaneSettings, WorkerSettings};
pub use crate::redact::redacted_url;
pub use crate::softphones::registry::RegistrySettings;
pub use crate::telemetry::settings::{LogFormat, LogSettings};

/// Prefix of the environment variables read as settings.
pub(crate) const ENV_PREFIX: &str = "SOFTPHONE_BRIDGE_";
/// Environment variable naming the TOML file (`--config` wins over it).
pub const CONFIG_ENV: &str = "SOFTPHONE_BRIDGE_CONFIG";

/// Everything softphone-bridge can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsSettings,
    /// The JetStream streams the bridge provisions.
    #[serde(default)]
    pub streams: StreamSettings,
    /// The event pipeline's consumers: intake, lanes, retries, shutdown.
    #[serde(default)]
    pub worker: WorkerSettings,
    /// How a lane holds back while its CRM connection is in trouble.
    #[serde(default)]
    pub lanes: LaneSettings,
    /// The CRM that receives events (partners without a CRM of their own).
    #[serde(default)]
    pub crm: CrmSettings,
    /// Named CRM connections that partners are routed to (`partners.<id>.crm`).
    #[serde(default)]
    pub crms: BTreeMap<String, CrmSettings>,
    /// Disposition codes sent on `load` to softphones whose partner has no list.
    #[serde(default = "default_dispositions")]
    pub dispositions: Vec<String>,
    /// Per-partner settings, keyed by the partner's GUID.
    #[serde(default)]
    pub partners: BTreeMap<Guid, PartnerSettings>,
    /// Logs.
    #[serde(default)]
    pub log: LogSettings,
    /// The HTTP command API, health and metrics.
    #[serde(default)]
    pub http: HttpSettings,
    /// The softphone registry (a JetStream key-value bucket).
    #[serde(default)]
    pub registry: RegistrySettings,
    /// Commands from CRMs: idempotency, expiry, offline softphones.
    #[serde(default)]
    pub commands: CommandSettings,
    /// What the bridge has written to each call's Salesforce Task.
    #[serde(default)]
    pub call_memory: CallMemorySettings,
    /// The NATS auth callout: platform logins as NATS users, each partner in
    /// an account of its own (deploy/tenancy.md). Off when absent.
    #[serde(default)]
    pub callout: Option<CalloutSettings>,
}

/// What the bridge knows of one partner.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSettings {
    /// `businessSegmentId` of the `partner_config` callback.
    pub business_segment_id: Guid,
    /// `channelOriginId` of the `partner_config` callback.
    pub channel_origin_id: Guid,
    /// Disposition codes for this partner's softphones (else the global list).
    #[serde(default)]
    pub dispositions: Option<Vec<String>>,
    /// Name of the `[crms.<name>]` connection for this partner's events
    /// (else `[crm]`).
    #[serde(default)]
    pub crm: Option<String>,
}

fn default_dispositions() -> Vec<String> {
    ["Resolved", "Follow-up required", "Escalated", "No answer"]
        .map(String::from)
        .to_vec()
}

/// `Ok` when `name` can name a key-value bucket, else why not.
fn bucket_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a bucket name (letters, digits, '-', '_')"
        ))
    }
}

/// A configuration error: one line naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Reads the layers: defaults, the TOML file (if any), the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::extract(&Self::figment(file)?)
    }

    /// Reads settings from TOML text alone (no file, no environment): for tests
    /// and tools that build a configuration in code.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        Self::extract(&Figment::from(Toml::string(text)))
    }

    /// Types the layers, secrets given as files read first, and checks them.
    fn extract(figment: &Figment) -> Result<Settings, ConfigError> {
        let resolved = secret::read_files(figment)?;
        let settings: Settings = resolved
            .as_ref()
            .unwrap_or(figment)
            .extract()
            .map_err(|e| describe(e, figment, resolved.is_none()))?;
        settings.check(figment)?;
        Ok(settings)
    }

    fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(figment.merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__")))
    }

    /// Checks what serde cannot: relations between keys.
    fn check(&self, figment: &Figment) -> Result<(), ConfigError> {
        let fail = |key: &str, why: String| {
            Err(ConfigError(format!("{key}: {why}{}", origin(figment, key))))
        };
        for url in self.nats.url.split(',') {
            if let Err(e) = url.trim().parse::<async_nats::ServerAddr>() {
                let url = redacted_url(url);
                return fail(
                    "nats.url",
                    format!("{url:?} is not a NATS server address ({e})"),
                );
            }
        }
        let auth_methods = [
            self.nats.token.is_some(),
            self.nats.user.is_some() || self.nats.password.is_some(),
            self.nats.creds_file.is_some(),
        ];
        if auth_methods.iter().filter(|set| **set).count() > 1 {
            return fail(
                "nats",
                "set only one of token, user/password and creds_file".into(),
            );
        }
        if self.nats.user.is_some() != self.nats.password.is_some() {
            return fail("nats.user", "user and password go together".into());
        }
        if self.nats.tls.cert_file.is_some() != self.nats.tls.key_file.is_some() {
            return fail(
                "nats.tls.cert_file",
                "cert_file and key_file go together".into(),
            );
        }
        if self.worker.concurrency == 0 {
            return fail("worker.concurrency", "must be at least 1".into());
        }
        if self.worker.intake_window == 0 {
            return fail("worker.intake_window", "must be at least 1".into());
        }
        if let Err((key, why)) = self.lanes.check() {
            return fail(key, why);
        }
        if self.worker.max_deliveries == 0 {
            return fail("worker.max_deliveries", "must be at least 1".into());
        }
        if self.worker.backoff.is_empty() {
            return fail("worker.backoff", "needs at least one delay".into());
        }
        if self.worker.ack_wait < Duration::from_secs(1) {
            return fail("worker.ack_wait", "must be at least 1s".into());
        }
        if self.worker.intake_ack_wait < Duration::from_secs(1) {
            return fail("worker.intake_ack_wait", "must be at least 1s".into());
        }
        if self.worker.intake_renew_after < Duration::from_secs(1) {
            return fail("worker.intake_renew_after", "must be at least 1s".into());
        }
        if self.streams.replicas == 0 || self.streams.replicas > 5 {
            return fail("streams.replicas", "must be between 1 and 5".into());
        }
        if let Err((key, why)) = crate::http::settings::check(&self.http) {
            return fail(&key, why);
        }
        let buckets = [
            ("registry.bucket", &self.registry.bucket),
            ("commands.bucket", &self.commands.bucket),
            ("call_memory.bucket", &self.call_memory.bucket),
            ("lanes.members_bucket", &self.lanes.members_bucket),
            ("lanes.owners_bucket", &self.lanes.owners_bucket),
        ];
        for (i, (key, bucket)) in buckets.iter().enumerate() {
            if let Err(why) = bucket_name(bucket) {
                return fail(key, why);
            }
            if let Some((other, _)) = buckets[..i].iter().find(|(_, b)| b == bucket) {
                return fail(key, format!("must differ from {other}"));
            }
        }
        if self.registry.idle_ttl < Duration::from_secs(1) {
            return fail("registry.idle_ttl", "must be at least 1s".into());
        }
        if self.call_memory.remember_for < Duration::from_secs(60) {
            return fail("call_memory.remember_for", "must be at least 1m".into());
        }
        if let Err((key, why)) =
            crate::dispatch::settings::check(&self.commands, self.streams.commands_max_age)
        {
            return fail(key, why);
        }
        let crms = std::iter::once(("crm".to_owned(), &self.crm)).chain(
            self.crms
                .iter()
                .map(|(name, crm)| (format!("crms.{name}"), crm)),
        );
        for (key, crm) in crms {
            if let Err((field, why)) = crm.check() {
                return fail(&format!("{key}.{field}"), why);
            }
        }
        for name in self.crms.keys() {
            // The name becomes part of a consumer name.
            let token = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !token || name == DEFAULT_CONNECTION {
                return fail(
                    &format!("crms.{name}"),
                    format!(
                        "a connection name is 1 to 64 letters, digits, '-' or '_', and not {DEFAULT_CONNECTION:?}"
                    ),
                );
            }
        }
        if let Some(callout) = &self.callout
            && let Err((key, why)) = callout.check()
        {
            return fail(&format!("callout.{key}"), why);
        }
        for (id, partner) in &self.partners {
            if let Some(name) = &partner.crm
                && !self.crms.contains_key(name)
            {
                let known: Vec<&str> = self.crms.keys().map(String::as_str).collect();
                return fail(
                    &format!("partners.{id}.crm"),
                    format!("no [crms.{name}] connection is defined (defined: {known:?})"),
                );
            }
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }

    /// The partner's settings, if it is configured.
    pub fn partner(&self, partner_id: &Guid) -> Option<&PartnerSettings> {
        self.partners.get(partner_id)
    }
}

/// " (set in <where>)", for the key's value, if figment knows its source.
fn origin(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|md| format!(" (set in {})", source_name(md, key)))
        .unwrap_or_default()
}

fn source_name(md: &figment::Metadata, key: &str) -> String {
    match &md.source {
        // figment shows files relative to the working directory; show them as given.
        Some(figment::Source::File(path)) => format!("{} {}", md.name, path.display()),
        Some(source) => format!("{} {source}", md.name),
        None if md.name.contains("environment") => {
            let var = format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            );
            if std::env::var_os(&var).is_some() {
                format!("environment variable {var}")
            } else {
                format!("environment variables {var}__*")
            }
        }
        None => md.name.to_string(),
    }
}

/// One line per error. Where a value came from is looked up in `layers`,
/// else in the error's metadata when it came from `layers` themselves
/// (`own_metadata`; not from the copy with secret files read).
fn describe(error: figment::Error, layers: &Figment, own_metadata: bool) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            // Name the missing key itself, not only the section it belongs in.
            if let figment::error::Kind::MissingField(field) = &e.kind {
                path.push(field.to_string());
            }
            let key = path.join(".");
            let section = e.path.join(".");
            let metadata = match own_metadata {
                true => e.metadata.as_ref(),
                false => layers.find_metadata(&section),
            };
            let place = metadata
                .map(|md| format!(" (set in {})", source_name(md, &section)))
                .unwrap_or_default();
            let key = if key.is_empty() {
                "<top level>".into()
            } else {
                format!("`{key}`")
            };
            format!("{key}: {}{place}", e.kind)
        })
        .collect();
    ConfigError(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_repeats_its_last_step() {
        let w = WorkerSettings {
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            ..Default::default()
        };
        assert_eq!(w.backoff_after(1), Duration::from_secs(1));
        assert_eq!(w.backoff_after(2), Duration::from_secs(5));
        assert_eq!(w.backoff_after(9), Duration::from_secs(5));
    }

    #[test]
    fn secrets_are_redacted_in_the_rendered_config() {
        let settings = Settings {
            crm: CrmSettings::Webhook(WebhookSettings {
                url: HttpUrl::try_from("https://crm.example/hook".to_owned()).unwrap(),
                secret: secrecy::SecretString::from("s3cr3t-value").into(),
                timeout: Duration::from_secs(3),
            }),
            ..figment::Figment::new().extract::<Settings>().unwrap()
        };
        let rendered = settings.to_redacted_toml();
        assert!(!rendered.contains("s3cr3t-value"));
        assert!(rendered.contains("[redacted]"));
        assert!(!format!("{settings:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn webhook_secrets_are_one_or_several_and_whsec_ones_are_base64() {
        let webhook = |secret: &str| {
            Settings::from_toml(&format!(
                "[crm]\nkind = \"webhook\"\nurl = \"https://crm.example/hook\"\nsecret = {secret}\n"
            ))
        };
        let keys = |settings: Settings| match settings.crm {
            CrmSettings::Webhook(webhook) => webhook
                .secret
                .keys()
                .iter()
                .map(|key| secrecy::ExposeSecret::expose_secret(key).to_vec())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(keys(webhook(r#""plain""#).unwrap()), [b"plain".to_vec()]);
        let rotating = webhook(r#"["whsec_AAEC", "old-one"]"#).unwrap();
        let rendered = rotating.to_redacted_toml();
        assert!(!rendered.contains("whsec_AAEC") && !rendered.contains("old-one"));
        assert_eq!(keys(rotating), [vec![0, 1, 2], b"old-one".to_vec()]);
        for (bad, why) in [
            (r#""whsec_not base64!""#, "not base64"),
            ("[]", "at least one"),
            (r#"["ok", ""]"#, "must not be empty"),
        ] {
            let err = webhook(bad).unwrap_err().to_string();
            assert!(err.contains("crm.secret") && err.contains(why), "{err}");
        }
    }

    #[test]
    fn url_credentials_are_redacted_in_the_rendered_config_and_in_errors() {
        let settings = Settings::from_toml(&format!(
            "[nats]\nurl = \"nats://bob:nats-pw@n1:4222,tok-s3cr3t@n2:4222\"\n\
             [crm]\nkind = \"webhook\"\nurl = \"http://user:hook-pw@crm.example/hook?tenant=7&token=tok-q\"\nsecret = \"s\"\n\
             [crms.acme]\n{}",
            SALESFORCE.replace(
                "https://acme.my.salesforce.com",
                "https://sf-user:sf-pw@acme.my.salesforce.com?session=sf-q"
            )
        ))
        .unwrap();
        let rendered = settings.to_redacted_toml();
        let rendered_toml: toml::Table = toml::from_str(&rendered).unwrap();
        assert_eq!(
            rendered_toml["crm"]["url"].as_str(),
            Some("http://[redacted]@crm.example/hook?tenant=7&token=[redacted]")
        );
        assert_eq!(
            rendered_toml["crms"]["acme"]["login_url"].as_str(),
            Some("https://[redacted]@acme.my.salesforce.com/?session=[redacted]")
        );
        let debug = format!("{settings:?}");
        for secret in [
            "nats-pw",
            "tok-s3cr3t",
            "hook-pw",
            "tok-q",
            "sf-user",
            "sf-pw",
            "sf-q",
        ] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // Values that are not URLs are shown redacted in the error.
        for (key, bad) in [
            (
                "crm",
                "[crm]\nkind = \"webhook\"\nsecret = \"s\"\nurl = \"ftp://u:hook-pw@x/\"\n",
            ),
            (
                "crm",
                "[crm]\nkind = \"webhook\"\nsecret = \"s\"\nurl = \"http://u:hook-pw@[x/?token=tok-q\"\n",
            ),
            (
                "crms.acme",
                &format!(
                    "[crms.acme]\n{}",
                    SALESFORCE.replace("https://acme.my.salesforce.com", "https://u:sf-pw@:99999/")
                ),
            ),
        ] {
            let err = Settings::from_toml(bad).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("[redacted]"), "{err}");
            for secret in ["hook-pw", "tok-q", "sf-pw"] {
                assert!(!err.contains(secret), "{secret} in {err}");
            }
        }
    }

    const SALESFORCE: &str = r#"
kind = "salesforce"
auth = "client_credentials"
login_url = "https://acme.my.salesforce.com"
client_id = "3MVG9-consumer-key"
client_secret = "sf-client-s3cr3t"
"#;

    #[test]
    fn partners_route_to_named_connections_that_exist() {
        let base = format!(
            "[crms.acme]\n{SALESFORCE}\n[partners.215fd887-39be-4935-981f-2670d6afeaa7]\nbusiness_segment_id = \"d6afeaa7-39be-4935-981f-2670215fd887\"\nchannel_origin_id = \"57053e21-0440-4689-a27a-513d7dceebde\"\n"
        );
        let ok = Settings::from_toml(&format!("{base}crm = \"acme\"\n")).unwrap();
        assert!(matches!(ok.crms["acme"], CrmSettings::Salesforce(_)));
        let err = Settings::from_toml(&format!("{base}crm = \"other\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partners.215fd887-39be-4935-981f-2670d6afeaa7.crm")
                && err.contains("[crms.other]"),
            "{err}"
        );
    }

    #[test]
    fn salesforce_settings_are_checked_and_redacted() {
        let jwt_without_key = "[crm]\nkind = \"salesforce\"\nauth = \"jwt_bearer\"\nlogin_url = \"https://login.salesforce.com\"\nclient_id = \"k\"\nusername = \"u@x\"\n";
        let err = Settings::from_toml(jwt_without_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("crm.private_key_file"), "{err}");
        let err = Settings::from_toml(&format!(
            "[crms.x]\n{SALESFORCE}task_fields = {{ colour = \"Colour__c\" }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("crms.x.task_fields"), "{err}");
        let settings = Settings::from_toml(&format!(
            "[crm]\n{SALESFORCE}private_key = \"-----BEGIN PRIVATE KEY-----\"\n"
        ))
        .unwrap();
        let rendered = settings.to_redacted_toml();
        assert!(
            !rendered.contains("sf-client-s3cr3t") && !rendered.contains("BEGIN PRIVATE"),
            "{rendered}"
        );
        assert!(!format!("{settings:?}").contains("sf-client-s3cr3t"));
    }

    /// A file in `dir` holding `text`; its path.
    fn secret_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn secrets_are_read_from_files_once_without_their_line_break() {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let password = secret_file(&dir, "password", "nats-pa55\n");
        let new = secret_file(&dir, "new", "whsec_AAEC\r\n");
        let old = secret_file(&dir, "old", "old-one");
        let client = secret_file(&dir, "client", "sf-client-s3cr3t\n\n");
        let settings = Settings::from_toml(&format!(
            "[nats]\nuser = \"bridge\"\npassword_file = \"{password}\"\n\
             [crm]\nkind = \"webhook\"\nurl = \"https://crm.example/hook\"\nsecret_file = [\"{new}\", \"{old}\"]\n\
             [crms.acme]\n{}client_secret_file = \"{client}\"\n",
            SALESFORCE.replace("client_secret = \"sf-client-s3cr3t\"\n", "")
        ))
        .unwrap();
        assert_eq!(
            settings.nats.password.as_ref().unwrap().expose_secret(),
            "nats-pa55"
        );
        let CrmSettings::Webhook(webhook) = &settings.crm else {
            panic!("{:?}", settings.crm)
        };
        let keys: Vec<Vec<u8>> = webhook
            .secret
            .keys()
            .iter()
            .map(|key| key.expose_secret().to_vec())
            .collect();
        assert_eq!(keys, [vec![0, 1, 2], b"old-one".to_vec()]);
        let CrmSettings::Salesforce(acme) = &settings.crms["acme"] else {
            panic!("{:?}", settings.crms)
        };
        assert_eq!(
            acme.client_secret.as_ref().unwrap().expose_secret(),
            "sf-client-s3cr3t"
        );
        // Read once: the settings hold the secrets, not the paths.
        drop(dir);
        let rendered = settings.to_redacted_toml();
        for secret in ["nats-pa55", "whsec_AAEC", "old-one", "sf-client-s3cr3t"] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
            assert!(!format!("{settings:?}").contains(secret));
        }
    }

    #[test]
    fn a_secret_file_error_names_the_key_and_the_path_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let bad = secret_file(&dir, "bad", "whsec_not base64 s3cr3t!\n");
        let empty = secret_file(&dir, "empty", "\n");
        let webhook = |secret: &str| {
            Settings::from_toml(&format!(
                "[crm]\nkind = \"webhook\"\nurl = \"https://crm.example/hook\"\n{secret}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        for (keys, expected) in [
            (
                format!("secret = \"inline\"\nsecret_file = \"{bad}\""),
                vec!["crm.secret_file", "crm.secret", "not both"],
            ),
            (
                "secret_file = \"/nonexistent/webhook\"".to_owned(),
                vec!["crm.secret_file", "/nonexistent/webhook", "cannot read"],
            ),
            (
                format!("secret_file = \"{empty}\""),
                vec!["crm.secret_file", &empty, "is empty"],
            ),
            (
                "secret_file = 3".to_owned(),
                vec!["crm.secret_file", "path"],
            ),
            (
                format!("secret_file = \"{bad}\""),
                vec!["crm.secret", "not base64"],
            ),
        ] {
            let err = webhook(&keys);
            for needle in expected {
                assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            }
            assert!(!err.contains("s3cr3t"), "the secret leaked: {err}");
        }
        let err = Settings::from_toml(&format!(
            "[nats]\nuser = \"u\"\npassword = \"p\"\n[[http.tokens]]\nname = \"a\"\nsha256_file = \"{empty}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("http.tokens[0].sha256_file"), "{err}");
    }

    /// Every key rendered `[redacted]` in `toml`, by its leaf name.
    fn redacted_keys(toml: &str, found: &mut std::collections::BTreeSet<String>) {
        fn walk(value: &toml::Value, key: &str, found: &mut std::collections::BTreeSet<String>) {
            match value {
                toml::Value::String(s) if s == "[redacted]" => {
                    found.insert(key.to_owned());
                }
                toml::Value::Array(items) => items.iter().for_each(|v| walk(v, key, found)),
                toml::Value::Table(table) => table.iter().for_each(|(k, v)| walk(v, k, found)),
                _ => {}
            }
        }
        walk(&toml::from_str(toml).unwrap(), "", found);
    }

    #[test]
    fn every_redacted_key_can_be_given_as_a_file() {
        let hash = "0".repeat(64);
        let mut redacted = std::collections::BTreeSet::new();
        for toml in [
            format!(
                "[nats]\nuser = \"u\"\npassword = \"p\"\n[crm]\nkind = \"webhook\"\nurl = \"https://x/\"\nsecret = \"s\"\n\
                 [crms.acme]\n{SALESFORCE}private_key = \"k\"\n[[http.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\n"
            ),
            "[nats]\ntoken = \"t\"\n".to_owned(),
            format!(
                "[callout]\nissuer_seed = \"{}\"\ntoken_secret = \"{}\"\nxkey_seed = \"{}\"\n",
                nkeys::KeyPair::new_account().seed().unwrap(),
                "s".repeat(32),
                nkeys::XKey::new().seed().unwrap()
            ),
        ] {
            redacted_keys(
                &Settings::from_toml(&toml).unwrap().to_redacted_toml(),
                &mut redacted,
            );
        }
        // A Salesforce connection's private_key has its own private_key_file.
        let accepted: std::collections::BTreeSet<String> = secret::SECRET_KEYS
            .iter()
            .chain(&["private_key"])
            .map(|k| k.to_string())
            .collect();
        assert_eq!(redacted, accepted);
    }
}
