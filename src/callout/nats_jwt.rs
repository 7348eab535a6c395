//! The NATS JWT format (nats-io/jwt v2) on top of the `nkeys` crate, which
//! signs and verifies (ed25519): a header `{"typ":"JWT","alg":"ed25519-nkey"}`,
//! the claims with a `nats` object of the claim type's own fields, and a
//! signature over `header.claims`, each part base64url without padding. The
//! `jti` is the base32 (no padding) of SHA-512/256 over the standard claims
//! as Go serialises them with an empty `jti`, as the Go library computes it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha512_256};

/// The algorithm NATS JWTs v2 name in their header.
const ALGORITHM: &str = "ed25519-nkey";

/// The standard claims of every NATS JWT, in the Go library's field order
/// (the `jti` hash depends on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "aud", default, skip_serializing_if = "String::is_empty")]
    pub audience: String,
    #[serde(rename = "exp", default, skip_serializing_if = "is_zero")]
    pub expires: i64,
    #[serde(rename = "jti", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "iat", default, skip_serializing_if = "is_zero")]
    pub issued_at: i64,
    #[serde(rename = "iss", default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "nbf", default, skip_serializing_if = "is_zero")]
    pub not_before: i64,
    #[serde(rename = "sub", default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Why a NATS JWT was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(&'static str),
    #[error("not a NATS JWT v2 header")]
    Header,
    #[error("the issuer is not a public NKey of the expected kind")]
    Issuer,
    #[error("the signature does not verify")]
    Signature,
    #[error("the claims are expired")]
    Expired,
}

/// Signs `claims` with `nats` (the claim type's own object, which carries its
/// `type` and `version`) as `key`: sets the issuer, the issue time (`now`, Unix
/// seconds) and the `jti`.
pub fn encode(mut claims: Claims, nats: &Value, key: &KeyPair, now: i64) -> String {
    claims.issuer = key.public_key();
    claims.issued_at = now;
    claims.id = String::new();
    let hash = Sha512_256::digest(serde_json::to_vec(&claims).expect("claims serialize"));
    claims.id = data_encoding::BASE32_NOPAD.encode(&hash);
    let mut body = serde_json::to_value(&claims).expect("claims serialize");
    body["nats"] = nats.clone();
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"JWT","alg":"{ALGORITHM}"}}"#));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&body).expect("JSON serializes"));
    let signed = format!("{header}.{payload}");
    let signature = key.sign(signed.as_bytes()).expect("a seed key signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Verifies a NATS JWT signed by its own issuer, whose public key must start
/// with `issuer_prefix` (`N` for a server, `A` for an account), and unexpired
/// at `now`; returns its standard claims and its `nats` object.
pub fn decode(token: &str, issuer_prefix: char, now: i64) -> Result<(Claims, Value), JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(JwtError::Malformed("header"))?;
    let typ = header["typ"].as_str().unwrap_or_default();
    let alg = header["alg"].as_str().unwrap_or_default();
    if !typ.eq_ignore_ascii_case("JWT") || !alg.eq_ignore_ascii_case(ALGORITHM) {
        return Err(JwtError::Header);
    }
    let body: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(JwtError::Malformed("claims"))?;
    let claims: Claims =
        serde_json::from_value(body.clone()).map_err(|_| JwtError::Malformed("claims"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed("signature"))?;
    if !claims.issuer.starts_with(issuer_prefix) {
        return Err(JwtError::Issuer);
    }
    let issuer = KeyPair::from_public_key(&claims.issuer).map_err(|_| JwtError::Issuer)?;
    let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    issuer
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::Signature)?;
    if claims.expires > 0 && now > claims.expires {
        return Err(JwtError::Expired);
    }
    let nats = body.get("nats").cloned().unwrap_or(Value::Null);
    Ok((claims, nats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_encoded_decodes_and_a_changed_byte_does_not() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let claims = Claims {
            audience: "SOFTPHONE".into(),
            expires: 2_000,
            subject: user.public_key(),
            name: "agent-7".into(),
            ..Claims::default()
        };
        let nats = serde_json::json!({"type": "user", "version": 2});
        let token = encode(claims.clone(), &nats, &account, 1_000);
        let (decoded, payload) = decode(&token, 'A', 1_500).unwrap();
        assert_eq!(decoded.issuer, account.public_key());
        assert_eq!(decoded.subject, claims.subject);
        assert_eq!(decoded.issued_at, 1_000);
        assert_eq!(decoded.id.len(), 52, "base32 of 32 bytes, unpadded");
        assert_eq!(payload, nats);
        assert_eq!(decode(&token, 'N', 1_500), Err(JwtError::Issuer));
        assert_eq!(decode(&token, 'A', 2_001), Err(JwtError::Expired));
        // Another key's signature under this issuer's name.
        let forged = encode(claims, &nats, &KeyPair::new_account(), 1_000);
        let (head, _) = token.rsplit_once('.').unwrap();
        let (_, signature) = forged.rsplit_once('.').unwrap();
        assert_eq!(
            decode(&format!("{head}.{signature}"), 'A', 1_500),
            Err(JwtError::Signature)
        );
        assert!(matches!(decode("a.b", 'A', 0), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn the_jti_is_the_go_library_hash_of_the_standard_claims() {
        // Claims in Go's order, `jti` empty: what nats-io/jwt hashes.
        let claims = Claims {
            audience: "x".into(),
            issued_at: 1,
            issuer: "AB".into(),
            subject: "UC".into(),
            ..Claims::default()
        };
        assert_eq!(
            serde_json::to_string(&claims).unwrap(),
            r#"{"aud":"x","iat":1,"iss":"AB","sub":"UC"}"#
        );
    }
}
