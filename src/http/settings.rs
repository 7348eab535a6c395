//! Settings of the HTTP command API and of the softphone registry.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::contract::Guid;
use crate::dispatch::settings::UnknownSoftphones;

/// The HTTP server: command API for CRMs, health, metrics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address (host:port) the command API listens on; unset means no API.
    pub listen: Option<String>,
    /// Separate address for `/healthz`, `/readyz` and `/metrics`; unset serves
    /// them on `listen`. Set alone, a replica without the API still has its
    /// probes and metrics.
    pub ops_listen: Option<String>,
    /// Bearer tokens allowed to send commands; none means the command routes are off.
    pub tokens: Vec<TokenSettings>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long one request may take before it is answered 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Command API requests handled at once; more are refused with 503 at once
    /// (health and metrics are not counted).
    pub max_in_flight: usize,
    /// How long a client may take to send a request's head (request line and
    /// headers): for the first request, from the connection's opening (its TLS
    /// handshake included); for a later one, from its first byte. Past it the
    /// connection is closed without an answer.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request, and a
    /// response for its client to read any of it; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once on each listener. A new one beyond it closes
    /// the oldest connection that has made no authenticated request and is not
    /// being answered; when there is none, the new one is closed at once.
    pub max_connections: usize,
    /// Commands for softphones the registry does not know: `reject` (404) or `allow`.
    pub unknown_softphones: UnknownSoftphones,
    /// TLS for both listeners (PEM files); unset serves plain HTTP.
    pub tls: Option<HttpTls>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: None,
            ops_listen: None,
            tokens: Vec::new(),
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            max_in_flight: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            unknown_softphones: UnknownSoftphones::Reject,
            tls: None,
        }
    }
}

/// One bearer token, stored as the SHA-256 of its text (`softphone-bridge hash-token`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Who holds the token; shown in logs instead of the token.
    pub name: String,
    /// Lowercase or uppercase hex SHA-256 of the token.
    #[serde(serialize_with = "redact_str")]
    pub sha256: String,
    /// Partners whose softphones the token may command; unset means all.
    #[serde(default)]
    pub partners: Option<Vec<Guid>>,
}

impl std::fmt::Debug for TokenSettings {
    // The hash is not a secret, but it has no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("name", &self.name)
            .field("partners", &self.partners)
            .finish_non_exhaustive()
    }
}

/// TLS of the HTTP listeners.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
}

fn redact_str<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

/// Checks the `[http]` keys: `Err` names the key at fault, and why.
pub(crate) fn check(http: &HttpSettings) -> Result<(), (String, String)> {
    let fail = |key: &str, why: String| Err((key.to_owned(), why));
    if http.body_limit == 0 {
        return fail("http.body_limit", "must be at least 1 byte".into());
    }
    if http.max_in_flight == 0 {
        return fail("http.max_in_flight", "must be at least 1".into());
    }
    for (key, timeout) in [
        ("http.request_timeout", http.request_timeout),
        ("http.header_read_timeout", http.header_read_timeout),
        ("http.idle_timeout", http.idle_timeout),
    ] {
        if timeout.is_zero() {
            return fail(key, "must be more than 0s".into());
        }
    }
    if http.max_connections == 0 {
        return fail("http.max_connections", "must be at least 1".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, token) in http.tokens.iter().enumerate() {
        let key = format!("http.tokens[{i}]");
        if token.name.trim().is_empty() {
            return fail(&format!("{key}.name"), "must not be empty".into());
        }
        if !names.insert(token.name.as_str()) {
            return fail(
                &format!("{key}.name"),
                format!("{:?} is used by another token", token.name),
            );
        }
        if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(
                &format!("{key}.sha256"),
                "must be 64 hex digits (print one with `softphone-bridge hash-token`)".into(),
            );
        }
        if token.partners.as_ref().is_some_and(Vec::is_empty) {
            return fail(
                &format!("{key}.partners"),
                "an empty list allows nothing; remove it to allow all".into(),
            );
        }
    }
    Ok(())
}
