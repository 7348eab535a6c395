//! `[callout]`: the NATS auth callout the bridge serves, and the accounts
//! `softphone-bridge nats-config` renders (deploy/tenancy.md).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::redact::{redact, redact_opt};

/// The auth callout: which platform logins are accepted, and the key that
/// signs the NATS users they become.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CalloutSettings {
    /// The account NKey seed (`SA…`) that signs the users the callout issues;
    /// its public key is the server's `authorization.auth_callout.issuer`
    /// (`issuer_seed_file`: a file holding it).
    #[serde(serialize_with = "redact")]
    pub issuer_seed: SecretString,
    /// The shared secret of HS256 login tokens (`token_secret_file`: a file
    /// holding it). At least one of this and `token_public_key_file`.
    #[serde(default, serialize_with = "redact_opt")]
    pub token_secret: Option<SecretString>,
    /// RS256 or ES256 login tokens: a PEM file of one or more public keys, or
    /// a JWKS key set (`{"keys": [...]}`, chosen by the token's `kid`); list the
    /// next key beside the current one to rotate.
    #[serde(default)]
    pub token_public_key_file: Option<PathBuf>,
    /// Login tokens must name this issuer (`iss`), when set.
    #[serde(default)]
    pub token_issuer: Option<String>,
    /// Login tokens must name this audience (`aud`), when set.
    #[serde(default)]
    pub token_audience: Option<String>,
    /// A curve (`SX…`) seed: the server encrypts its requests to its public
    /// key (`auth_callout.xkey`) and the callout its answers to the server's
    /// (`xkey_seed_file`: a file holding it).
    #[serde(default, serialize_with = "redact_opt")]
    pub xkey_seed: Option<SecretString>,
    /// The bridge's account: its streams, its own user, the callout.
    #[serde(default = "default_account")]
    pub account: String,
    /// The account CRM logins are placed in (they reach only their partners'
    /// command subjects).
    #[serde(default = "default_crm_account")]
    pub crm_account: String,
    /// Clock skew allowed on a login token's `exp`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_account() -> String {
    // The account KEDA's nats-jetstream triggers already name (deploy/k8s).
    "SOFTPHONE".into()
}

fn default_crm_account() -> String {
    "CRMS".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// A login token larger than this is refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

impl CalloutSettings {
    /// Checks what serde cannot; `Err((key under callout, why))`.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        match nkeys::KeyPair::from_seed(self.issuer_seed.expose_secret()) {
            Ok(key) if key.public_key().starts_with('A') => {}
            _ => return Err(("issuer_seed", "must be an account NKey seed (SA…)".into())),
        }
        if let Some(seed) = &self.xkey_seed
            && nkeys::XKey::from_seed(seed.expose_secret()).is_err()
        {
            return Err(("xkey_seed", "must be a curve NKey seed (SX…)".into()));
        }
        if self.token_secret.is_none() && self.token_public_key_file.is_none() {
            return Err((
                "token_secret",
                "set token_secret (HS256) or token_public_key_file (RS256/ES256), or both".into(),
            ));
        }
        if self
            .token_secret
            .as_ref()
            .is_some_and(|s| s.expose_secret().len() < 32)
        {
            return Err(("token_secret", "must be at least 32 bytes".into()));
        }
        for (key, name) in [
            ("account", &self.account),
            ("crm_account", &self.crm_account),
        ] {
            if let Err(why) = account_name(name) {
                return Err((key, why));
            }
        }
        if self.account == self.crm_account {
            return Err(("crm_account", "must differ from callout.account".into()));
        }
        Ok(())
    }

    /// The issuer's public key (`A…`), the server's `auth_callout.issuer`.
    pub(crate) fn issuer_public_key(&self) -> String {
        nkeys::KeyPair::from_seed(self.issuer_seed.expose_secret())
            .map(|key| key.public_key())
            .unwrap_or_default()
    }

    /// The curve public key (`X…`) the server encrypts to, if any.
    pub(crate) fn xkey_public_key(&self) -> Option<String> {
        let seed = self.xkey_seed.as_ref()?;
        nkeys::XKey::from_seed(seed.expose_secret())
            .ok()
            .map(|key| key.public_key())
    }
}

/// `Ok` when `name` can name one of the bridge's accounts: letters, digits,
/// `-`, `_`, and no GUID (those name partners).
fn account_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !token || name.starts_with('$') {
        return Err(format!(
            "{name:?} is not an account name (1 to 64 letters, digits, '-', '_')"
        ));
    }
    if crate::contract::Guid::try_from(name.to_owned()).is_ok() {
        return Err(format!("{name:?} is a GUID: GUIDs name partners' accounts"));
    }
    Ok(())
}
