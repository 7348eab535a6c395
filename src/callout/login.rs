//! A platform login token, verified: HS256 with `callout.token_secret`, or
//! RS256/ES256 with a key of `callout.token_public_key_file`; claims `sub`,
//! `role`, `partnerId` (a softphone) or `partners` (a CRM), `exp`. Every
//! refusal has a [`Refusal`] whose label is bounded (metrics) and whose text
//! never quotes the token.

use std::collections::BTreeSet;
use std::sync::RwLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::keys::{Key, read_public_keys};
use super::settings::{CalloutSettings, MAX_TOKEN_BYTES};
use crate::contract::{Guid, SoftphoneId};

/// Who a login is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Softphone,
    Crm,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Softphone => "softphone",
            Role::Crm => "crm",
        }
    }
}

/// A verified login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The softphone id, or the CRM's name: one subject token.
    pub subject: SoftphoneId,
    pub role: Role,
    /// The softphone's partner (one), or the CRM's partners (at least one).
    pub partners: Vec<Guid>,
    /// When the login expires (Unix seconds).
    pub expires: i64,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoToken,
    TooLarge,
    Malformed,
    AlgNone,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    Claims,
    UnknownRole,
    UnknownPartner,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::AlgNone => "alg_none",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::Claims => "claims",
            Refusal::UnknownRole => "unknown_role",
            Refusal::UnknownPartner => "unknown_partner",
        }
    }

    /// One line for the server's log and the bridge's.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::NoToken => {
                "no login token (connect with the platform login as the NATS token)"
            }
            Refusal::TooLarge => "login token larger than 8 KiB",
            Refusal::Malformed => "login token is not a JWT",
            Refusal::AlgNone => "login token is unsigned (alg none)",
            Refusal::Algorithm => "login token algorithm not accepted",
            Refusal::UnknownKey => "login token signed with an unknown key (kid)",
            Refusal::Signature => "login token signature does not verify",
            Refusal::Expired => "login token expired",
            Refusal::Claims => "login token claims invalid (sub, exp, iss, aud)",
            Refusal::UnknownRole => "login token role is neither softphone nor crm",
            Refusal::UnknownPartner => "login token names a partner that is not configured",
        }
    }
}

/// Verifies login tokens against the configured keys and partners.
pub struct Verifier {
    /// Replaced when the settings are read again (SIGHUP): keys rotate
    /// without a restart.
    keys: RwLock<Vec<Key>>,
    validation: Validation,
    /// Clock skew allowed on `exp`, in seconds.
    leeway: i64,
    /// The configured partners; replaced when the settings are read again.
    partners: RwLock<BTreeSet<Guid>>,
}

/// The keys the settings name: the HS256 secret, the key file's keys.
fn keys(settings: &CalloutSettings) -> anyhow::Result<Vec<Key>> {
    let mut keys = Vec::new();
    if let Some(secret) = &settings.token_secret {
        keys.push(Key {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        });
    }
    if let Some(file) = &settings.token_public_key_file {
        keys.extend(read_public_keys(file)?);
    }
    Ok(keys)
}

/// The claims read from a token.
#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: i64,
    role: String,
    #[serde(default, rename = "partnerId")]
    partner_id: Option<String>,
    #[serde(default)]
    partners: Option<Vec<String>>,
}

impl Verifier {
    /// Reads the key files; fails with the reason when a key cannot be used.
    pub fn new(
        settings: &CalloutSettings,
        partners: impl IntoIterator<Item = Guid>,
    ) -> anyhow::Result<Self> {
        let keys = RwLock::new(keys(settings)?);
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked against the caller's clock (see `verify`).
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = settings.token_audience.is_some();
        if let Some(audience) = &settings.token_audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(issuer) = &settings.token_issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self {
            keys,
            validation,
            leeway: settings.leeway.as_secs() as i64,
            partners: RwLock::new(partners.into_iter().collect()),
        })
    }

    /// Replaces the partners logins may name (settings read again).
    pub fn set_partners(&self, partners: impl IntoIterator<Item = Guid>) {
        *self.partners.write().expect("never poisoned") = partners.into_iter().collect();
    }

    /// Reads the keys again (the secret, the key file): a key added to the
    /// file verifies from now on, one removed no longer does. Keys that
    /// cannot be used leave the current ones in place, with the reason.
    pub(crate) fn set_keys(&self, settings: &CalloutSettings) -> anyhow::Result<usize> {
        let keys = keys(settings)?;
        let count = keys.len();
        *self.keys.write().expect("never poisoned") = keys;
        Ok(count)
    }

    /// Verifies `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Login, Refusal> {
        if token.is_empty() {
            return Err(Refusal::NoToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::TooLarge);
        }
        let header_alg = token
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
            .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
            .ok_or(Refusal::Malformed)?;
        if header_alg.eq_ignore_ascii_case("none") {
            return Err(Refusal::AlgNone);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Algorithm)?;
        let keys = self.keys.read().expect("never poisoned");
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            let algorithm_known = keys.iter().any(|k| k.algorithm == header.alg);
            return Err(if algorithm_known {
                Refusal::UnknownKey
            } else {
                Refusal::Algorithm
            });
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        // Without a kid, any key of the set may have signed it (rotation).
        let mut refusal = Refusal::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation) {
                Ok(data) if now >= data.claims.exp + self.leeway => return Err(Refusal::Expired),
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    refusal = match e.kind() {
                        ErrorKind::InvalidSignature => continue,
                        ErrorKind::ExpiredSignature => Refusal::Expired,
                        ErrorKind::InvalidAlgorithm => Refusal::Algorithm,
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                            Refusal::Malformed
                        }
                        _ => Refusal::Claims,
                    };
                    break;
                }
            }
        }
        Err(refusal)
    }

    fn claims(&self, claims: RawClaims) -> Result<Login, Refusal> {
        let subject = SoftphoneId::try_from(claims.sub).map_err(|_| Refusal::Claims)?;
        let role = match claims.role.as_str() {
            "softphone" => Role::Softphone,
            "crm" => Role::Crm,
            _ => return Err(Refusal::UnknownRole),
        };
        let named = match role {
            Role::Softphone => vec![claims.partner_id.ok_or(Refusal::Claims)?],
            Role::Crm => claims.partners.ok_or(Refusal::Claims)?,
        };
        if named.is_empty() {
            return Err(Refusal::Claims);
        }
        let mut partners = Vec::with_capacity(named.len());
        for partner in named {
            let guid = Guid::try_from(partner).map_err(|_| Refusal::UnknownPartner)?;
            if !self
                .partners
                .read()
                .expect("never poisoned")
                .contains(&guid)
            {
                return Err(Refusal::UnknownPartner);
            }
            if !partners.contains(&guid) {
                partners.push(guid);
            }
        }
        Ok(Login {
            subject,
            role,
            partners,
            expires: claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "57053e21-0440-4689-a27a-513d7dceebde";
    const SECRET: &str = "a-platform-login-secret-32-bytes!";

    fn settings(extra: &str) -> CalloutSettings {
        let toml = format!(
            "issuer_seed = \"{}\"\ntoken_secret = \"{SECRET}\"\n{extra}",
            nkeys::KeyPair::new_account().seed().unwrap()
        );
        toml::from_str(&toml).unwrap()
    }

    fn verifier(extra: &str) -> Verifier {
        Verifier::new(&settings(extra), [A.parse().unwrap()]).unwrap()
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn softphone(exp: i64) -> Value {
        json!({"sub": "agent-7", "role": "softphone", "partnerId": A, "exp": exp})
    }

    fn hs256(claims: &Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_good_softphone_login_names_its_partner() {
        let login = verifier("")
            .verify(&hs256(&softphone(now() + 60)), now())
            .unwrap();
        assert_eq!(login.subject.as_str(), "agent-7");
        assert_eq!(login.role, Role::Softphone);
        assert_eq!(login.partners, [A.parse::<Guid>().unwrap()]);
    }

    #[test]
    fn each_bad_login_has_its_reason() {
        let v = verifier("");
        let b64 = |text: &str| URL_SAFE_NO_PAD.encode(text);
        let unsigned = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&softphone(now() + 60).to_string())
        );
        let other_key = encode(
            &Header::default(),
            &softphone(now() + 60),
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-length"),
        )
        .unwrap();
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &softphone(now() + 60),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let mut large = softphone(now() + 60);
        large["pad"] = json!("x".repeat(MAX_TOKEN_BYTES));
        let mut crm_of_b =
            json!({"sub": "crm", "role": "crm", "partners": [A, B], "exp": now() + 60});
        let with = |mut claims: Value, key: &str, value: Value| {
            claims[key] = value;
            hs256(&claims)
        };
        for (token, refusal) in [
            (String::new(), Refusal::NoToken),
            (hs256(&large), Refusal::TooLarge),
            ("not a token".into(), Refusal::Malformed),
            (unsigned, Refusal::AlgNone),
            (other_key, Refusal::Signature),
            (hs384, Refusal::Algorithm),
            (hs256(&softphone(now() - 60)), Refusal::Expired),
            (
                with(softphone(now() + 60), "role", json!("admin")),
                Refusal::UnknownRole,
            ),
            (
                with(softphone(now() + 60), "partnerId", json!(B)),
                Refusal::UnknownPartner,
            ),
            (
                with(softphone(now() + 60), "partnerId", json!("x")),
                Refusal::UnknownPartner,
            ),
            (
                with(softphone(now() + 60), "sub", json!("a.b")),
                Refusal::Claims,
            ),
            (
                with(softphone(now() + 60), "sub", json!("*")),
                Refusal::Claims,
            ),
            (
                hs256(&json!({"sub": "agent-7", "role": "softphone", "exp": now() + 60})),
                Refusal::Claims,
            ),
            (
                hs256(&json!({"sub": "agent-7", "role": "softphone", "partnerId": A})),
                Refusal::Claims,
            ),
            (hs256(&crm_of_b), Refusal::UnknownPartner),
        ] {
            assert_eq!(v.verify(&token, now()), Err(refusal), "{}", refusal.label());
        }
        crm_of_b["partners"] = json!([]);
        assert_eq!(v.verify(&hs256(&crm_of_b), now()), Err(Refusal::Claims));
        crm_of_b["partners"] = json!([A, A]);
        let crm = v.verify(&hs256(&crm_of_b), now()).unwrap();
        assert_eq!((crm.role, crm.partners.len()), (Role::Crm, 1));
    }

    #[test]
    fn the_leeway_issuer_and_audience_are_checked_when_set() {
        let strict = verifier(
            "leeway = \"0s\"\ntoken_issuer = \"https://login.example\"\ntoken_audience = \"softphone-bridge\"\n",
        );
        let mut claims = softphone(now() + 60);
        assert_eq!(strict.verify(&hs256(&claims), now()), Err(Refusal::Claims));
        claims["iss"] = json!("https://login.example");
        claims["aud"] = json!("softphone-bridge");
        assert!(strict.verify(&hs256(&claims), now()).is_ok());
        claims["aud"] = json!("another-service");
        assert_eq!(strict.verify(&hs256(&claims), now()), Err(Refusal::Claims));
        let lenient = verifier("leeway = \"2m\"\n");
        assert!(
            lenient
                .verify(&hs256(&softphone(now() - 60)), now())
                .is_ok()
        );
    }

    #[test]
    fn es256_keys_come_from_pem_files_or_key_sets_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            rcgen::KeyPair::generate().unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        );
        let signer = |key: &rcgen::KeyPair| {
            EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap()
        };
        let es256 = |key: &rcgen::KeyPair, kid: Option<&str>| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = kid.map(str::to_owned);
            encode(&header, &softphone(now() + 60), &signer(key)).unwrap()
        };
        // A PEM file of both keys: either verifies, without a kid.
        let pem = dir.path().join("keys.pem");
        std::fs::write(
            &pem,
            format!("{}{}", old.public_key_pem(), new.public_key_pem()),
        )
        .unwrap();
        let from_pem = Verifier::new(
            &settings(&format!("token_public_key_file = {pem:?}\n")),
            [A.parse().unwrap()],
        )
        .unwrap();
        for key in [&old, &new] {
            assert!(from_pem.verify(&es256(key, None), now()).is_ok());
        }
        let stranger = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            from_pem.verify(&es256(&stranger, None), now()),
            Err(Refusal::Signature)
        );
        // A key set: the kid picks the key.
        let jwk = |key: &rcgen::KeyPair, kid: &str| {
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&signer(key), Algorithm::ES256).unwrap();
            jwk.common.key_id = Some(kid.into());
            jwk
        };
        let set = json!({"keys": [jwk(&old, "2026-01"), jwk(&new, "2026-02")]});
        let jwks = dir.path().join("keys.json");
        std::fs::write(&jwks, set.to_string()).unwrap();
        let from_set = Verifier::new(
            &settings(&format!("token_public_key_file = {jwks:?}\n")),
            [A.parse().unwrap()],
        )
        .unwrap();
        assert!(
            from_set
                .verify(&es256(&new, Some("2026-02")), now())
                .is_ok()
        );
        assert!(
            from_set
                .verify(&es256(&old, Some("2026-01")), now())
                .is_ok()
        );
        assert_eq!(
            from_set.verify(&es256(&old, Some("2026-02")), now()),
            Err(Refusal::Signature)
        );
        assert_eq!(
            from_set.verify(&es256(&old, Some("2025-12")), now()),
            Err(Refusal::UnknownKey)
        );
        // The HS256 secret still works beside them; an HS256 token cannot
        // pass for one signed with a public key.
        assert!(
            from_set
                .verify(&hs256(&softphone(now() + 60)), now())
                .is_ok()
        );
        let no_secret: CalloutSettings = toml::from_str(&format!(
            "issuer_seed = \"{}\"\ntoken_public_key_file = {jwks:?}\n",
            nkeys::KeyPair::new_account().seed().unwrap()
        ))
        .unwrap();
        let only_keys = Verifier::new(&no_secret, [A.parse().unwrap()]).unwrap();
        assert_eq!(
            only_keys.verify(&hs256(&softphone(now() + 60)), now()),
            Err(Refusal::Algorithm)
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        assert!(
            Verifier::new(&settings(&format!("token_public_key_file = {bad:?}\n")), []).is_err()
        );
        // The file rotated (a third key in, the oldest out) and read again
        // without a restart; an unreadable file leaves the keys as they were.
        let newest = rcgen::KeyPair::generate().unwrap();
        let rotated = json!({"keys": [jwk(&new, "2026-02"), jwk(&newest, "2026-03")]});
        std::fs::write(&jwks, rotated.to_string()).unwrap();
        let from_file = settings(&format!("token_public_key_file = {jwks:?}\n"));
        assert_eq!(
            from_set.set_keys(&from_file).unwrap(),
            3,
            "the secret and two keys"
        );
        assert!(
            from_set
                .verify(&es256(&newest, Some("2026-03")), now())
                .is_ok()
        );
        assert_eq!(
            from_set.verify(&es256(&old, Some("2026-01")), now()),
            Err(Refusal::UnknownKey)
        );
        std::fs::write(&jwks, "{").unwrap();
        assert!(from_set.set_keys(&from_file).is_err());
        assert!(
            from_set
                .verify(&es256(&newest, Some("2026-03")), now())
                .is_ok()
        );
    }
}
