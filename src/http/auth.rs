//! Bearer tokens: configured as SHA-256 hashes, compared in constant time,
//! optionally scoped to partners.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::contract::Guid;
use crate::dispatch::Scope;
use crate::http::TokenSettings;

/// One configured token.
pub struct Token {
    pub name: String,
    hash: [u8; 32],
    partners: Option<Vec<Guid>>,
}

impl Token {
    pub fn scope(&self) -> Scope<'_> {
        match &self.partners {
            Some(partners) => Scope::Partners(partners),
            None => Scope::All,
        }
    }
}

/// The configured tokens.
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// From settings already checked (64 hex digits each).
    pub fn new(settings: &[TokenSettings]) -> Self {
        let tokens = settings
            .iter()
            .filter_map(|t| {
                let hash: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                Some(Token {
                    name: t.name.clone(),
                    hash,
                    partners: t.partners.clone(),
                })
            })
            .collect();
        Self(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token an `Authorization: Bearer ...` header carries, if it is one of ours.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&Token> {
        self.position(headers).map(|i| &self.0[i])
    }

    /// The configured token at `index` (from [`Tokens::position`]).
    pub fn get(&self, index: usize) -> Option<&Token> {
        self.0.get(index)
    }

    /// Where the header's token is in the configuration, if it is one of ours.
    pub fn position(&self, headers: &HeaderMap) -> Option<usize> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, presented) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let presented = hash_token(presented.trim());
        // Every token is compared, so timing tells nothing of which matched.
        let mut found = None;
        for (i, token) in self.0.iter().enumerate() {
            if bool::from(token.hash.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        found
    }
}

/// SHA-256 of a token, as configured in `http.tokens[].sha256` (hex).
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&[TokenSettings {
            name: "crm".into(),
            sha256: hex::encode(hash_token("s3cret")),
            partners: None,
        }])
    }

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_configured_token_passes() {
        let tokens = tokens();
        assert_eq!(
            tokens.authenticate(&with("Bearer s3cret")).unwrap().name,
            "crm"
        );
        assert!(tokens.authenticate(&with("bearer s3cret")).is_some());
        for bad in [
            "Bearer s3cre",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "Bearer  ",
        ] {
            assert!(tokens.authenticate(&with(bad)).is_none(), "{bad}");
        }
        assert!(tokens.authenticate(&HeaderMap::new()).is_none());
    }
}
