//! The public keys that verify RS256/ES256 platform login tokens, from
//! `callout.token_public_key_file`: a PEM file of one or more keys, or a
//! JWKS key set (a key per `kid`); read at start-up.

use std::path::Path;

use anyhow::{Context as _, bail};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One key that verifies login tokens.
pub(super) struct Key {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The keys of a PEM file (one or more public keys) or a JWKS key set.
pub(super) fn read_public_keys(file: &Path) -> anyhow::Result<Vec<Key>> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "callout.token_public_key_file: cannot read {}",
            file.display()
        )
    })?;
    let keys = if text.trim_start().starts_with('{') {
        let set: JwkSet = serde_json::from_str(&text).with_context(|| {
            format!(
                "callout.token_public_key_file: {} is not a JWKS key set",
                file.display()
            )
        })?;
        set.keys
            .iter()
            .map(|jwk| {
                let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                    (Some(KeyAlgorithm::RS256), _) => Algorithm::RS256,
                    (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
                    (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                    (None, AlgorithmParameters::EllipticCurve(ec))
                        if ec.curve == EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    _ => bail!(
                        "callout.token_public_key_file: key {:?} is neither RS256 nor ES256",
                        jwk.common.key_id
                    ),
                };
                Ok(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key: DecodingKey::from_jwk(jwk).context("callout.token_public_key_file")?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        pem_blocks(&text)
            .into_iter()
            .map(|block| {
                if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
                    return Ok(Key {
                        kid: None,
                        algorithm: Algorithm::RS256,
                        key,
                    });
                }
                let key = DecodingKey::from_ec_pem(block.as_bytes()).with_context(|| {
                    format!(
                        "callout.token_public_key_file: {} holds a key that is neither RSA nor EC P-256",
                        file.display()
                    )
                })?;
                Ok(Key {
                    kid: None,
                    algorithm: Algorithm::ES256,
                    key,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if keys.is_empty() {
        bail!(
            "callout.token_public_key_file: {} holds no public key",
            file.display()
        );
    }
    Ok(keys)
}

/// Each `-----BEGIN …-----` … `-----END …-----` block of a PEM file.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split("-----BEGIN ")
        .skip(1)
        .map(|block| format!("-----BEGIN {}\n", block.trim_end()))
        .collect()
}
