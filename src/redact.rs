//! Redaction of what the settings hold that is secret: whole values (tokens,
//! passwords) and the secret parts of URLs, for `check-config`, logs and
//! errors.

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// What stands in for a secret.
const REDACTED: &str = "[redacted]";

/// Query and fragment parameters whose value is a secret: any whose name
/// contains one of these (case-insensitive), e.g. `token`, `access_token`,
/// `api_key`, `X-Amz-Signature`, `sig`, `client_secret`, `password`.
const SECRET_PARAMETERS: [&str; 9] = [
    "token",
    "key",
    "secret",
    "sig",
    "pass",
    "pwd",
    "auth",
    "credential",
    "session",
];

/// A URL, or a comma-separated list of them (`nats.url`), with its secrets
/// replaced by `[redacted]`: the whole userinfo (`user:password@`, or a NATS
/// token as `token@`) and the value of every query or fragment parameter
/// named like a secret ([`SECRET_PARAMETERS`]). Works on text that is not a
/// valid URL too (errors show it), and on a NATS address without a scheme.
pub fn redacted_url(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (rest, fragment) = split(url, '#');
    let (rest, query) = split(rest, '?');
    let start = rest.find("://").map_or(0, |scheme| scheme + 3);
    let after = &rest[start..];
    // In a URL with a host, the userinfo ends before the path; in text that
    // is none (a password holding a `/` that is not percent-encoded, a NATS
    // address without a scheme), at the last `@` before the query.
    let authority = match url::Url::parse(url) {
        Ok(parsed) if parsed.has_host() => after.find(['/', '\\']).unwrap_or(after.len()),
        _ => after.len(),
    };
    let mut shown = rest[..start].to_owned();
    match after[..authority].rfind('@') {
        Some(at) => {
            shown.push_str(REDACTED);
            shown.push_str(&after[at..]);
        }
        None => shown.push_str(after),
    }
    for (separator, parameters) in [('?', query), ('#', fragment)] {
        if let Some(parameters) = parameters {
            shown.push(separator);
            shown.push_str(&redact_parameters(parameters));
        }
    }
    shown
}

/// `text` split at the first `separator`: before it, and after it if it occurs.
fn split(text: &str, separator: char) -> (&str, Option<&str>) {
    match text.split_once(separator) {
        Some((before, after)) => (before, Some(after)),
        None => (text, None),
    }
}

/// `a=1&token=x` as `a=1&token=[redacted]`.
fn redact_parameters(parameters: &str) -> String {
    parameters
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}={REDACTED}"),
            _ => parameter.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

/// Serializes a URL (list) redacted.
pub(crate) fn redact_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

pub(crate) fn redact<S: Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

pub(crate) fn redact_opt<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(secret) => redact(secret, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        for (url, shown) in [
            (
                "nats://bob:pw@a:4222, tls://tok@b:4222,c:4222",
                "nats://[redacted]@a:4222, tls://[redacted]@b:4222,c:4222",
            ),
            ("bob:pw@a:4222", "[redacted]@a:4222"),
            (
                "http://user:secret@crm.example:8080/hook",
                "http://[redacted]@crm.example:8080/hook",
            ),
            (
                "https://u:p/a@ss@crm.example/hook",
                "https://[redacted]@crm.example/hook",
            ),
            (
                "https://crm.example/hook?tenant=7&token=abc&API_KEY=k&sig=s#access_token=t&x=1",
                "https://crm.example/hook?tenant=7&token=[redacted]&API_KEY=[redacted]&sig=[redacted]#access_token=[redacted]&x=1",
            ),
            (
                "https://bucket.example/o?X-Amz-Credential=c&X-Amz-Signature=s&X-Amz-Date=d",
                "https://bucket.example/o?X-Amz-Credential=[redacted]&X-Amz-Signature=[redacted]&X-Amz-Date=d",
            ),
            (
                "https://a:b@host/p?password=x&q",
                "https://[redacted]@host/p?password=[redacted]&q",
            ),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_secrets_are_shown_as_they_are() {
        for url in [
            "https://crm.example/hook",
            "https://crm.example/users/@me?page=2&sort=name#top",
            "nats://127.0.0.1:4222",
            "not a url",
            "",
        ] {
            assert_eq!(redacted_url(url), url);
        }
    }
}

/// An absolute http(s) URL. Shown (`check-config`, `Debug`, `Display`, errors)
/// only with its secrets redacted ([`redacted_url`]); requests use it whole.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(Url);

impl HttpUrl {
    pub(crate) fn as_url(&self) -> &Url {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let shown = redacted_url(&text);
        let url = Url::parse(&text).map_err(|e| format!("url {shown:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {shown:?} is not an http(s) URL"));
        }
        Ok(HttpUrl(url))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redacted_url(self.0.as_str()))
    }
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HttpUrl").field(&self.to_string()).finish()
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
