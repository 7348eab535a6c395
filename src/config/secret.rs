//! Secrets given inline or read from files: beside every secret key `<key>`
//! (see [`SECRET_KEYS`]) the settings accept `<key>_file`, the path of a file
//! holding the value (a list of paths where the key takes a list, as
//! `crm.secret` does while rotating). Kubernetes Secrets and Docker secrets
//! mounted as files work as they are.
//!
//! The files are read once, when the settings are loaded, before they are
//! typed: `<key>_file` becomes `<key>` with the file's content (its trailing
//! line break removed), so the typed settings, their checks and their
//! redaction know one form only. Errors name the key and the path, never the
//! content.

use figment::Figment;
use figment::providers::Serialized;
use figment::value::{Dict, Value};

use super::{ConfigError, origin};

/// Every key whose value is a secret, wherever it appears (`nats.token`,
/// `crm.secret`, `crms.<name>.client_secret`, ...): the keys the settings
/// render as `[redacted]`, but for a Salesforce connection's `private_key`,
/// whose `private_key_file` is a setting of its own (read when the connection
/// is built, at start-up). A unit test checks that they agree.
pub(super) const SECRET_KEYS: [&str; 8] = [
    "token",
    "password",
    "secret",
    "client_secret",
    "sha256",
    "issuer_seed",
    "token_secret",
    "xkey_seed",
];

/// The suffix of a key that names the file holding a secret.
const FILE_SUFFIX: &str = "_file";

/// The layers with every `<secret>_file` replaced by the secret it names, or
/// `None` when no secret is given as a file (the layers are used as they are).
pub(super) fn read_files(figment: &Figment) -> Result<Option<Figment>, ConfigError> {
    let Ok(mut settings) = figment.extract::<Dict>() else {
        // A malformed layer: extracting the settings reports it precisely.
        return Ok(None);
    };
    if !resolve(figment, "", &mut settings)? {
        return Ok(None);
    }
    Ok(Some(Figment::from(Serialized::defaults(settings))))
}

/// Replaces the secret files in `dict` (at `path`) and in the tables below it;
/// whether there was any.
fn resolve(figment: &Figment, path: &str, dict: &mut Dict) -> Result<bool, ConfigError> {
    let mut found = false;
    for secret in SECRET_KEYS {
        let file_key = format!("{secret}{FILE_SUFFIX}");
        let Some(files) = dict.remove(&file_key) else {
            continue;
        };
        let key = format!("{path}{secret}");
        let file_key = format!("{path}{file_key}");
        let fail =
            |why: String| ConfigError(format!("{file_key}: {why}{}", origin(figment, &file_key)));
        if dict.contains_key(secret) {
            return Err(fail(format!("set either {key} or {file_key}, not both")));
        }
        let value = match files {
            Value::String(_, file) => Value::from(read(&file).map_err(fail)?),
            Value::Array(_, files) => {
                let mut secrets = Vec::with_capacity(files.len());
                for file in files {
                    let Value::String(_, file) = file else {
                        return Err(fail("expected a file path or a list of paths".into()));
                    };
                    secrets.push(Value::from(read(&file).map_err(fail)?));
                }
                Value::from(secrets)
            }
            _ => return Err(fail("expected a file path or a list of paths".into())),
        };
        dict.insert(secret.to_owned(), value);
        found = true;
    }
    for (name, value) in dict.iter_mut() {
        let here = format!("{path}{name}.");
        match value {
            Value::Dict(_, table) => found |= resolve(figment, &here, table)?,
            Value::Array(_, items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Dict(_, table) = item {
                        let here = format!("{path}{name}[{i}].");
                        found |= resolve(figment, &here, table)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The secret a file holds, without its trailing line break (`echo` and most
/// editors add one; a Kubernetes Secret keeps it).
fn read(file: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{file} is empty"));
    }
    Ok(secret.to_owned())
}
