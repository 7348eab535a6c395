//! The NATS auth callout (deploy/tenancy.md): the server asks the bridge,
//! on `$SYS.REQ.USER.AUTH` in the bridge's account, whether a connecting
//! client may come in. Its login token (the NATS token it connected with)
//! is verified ([`login`]); a good one becomes a user JWT signed by
//! `callout.issuer_seed`, placed in its partner's account (`aud`), with its
//! role's permissions ([`permission`]) and the login's expiry. A refusal
//! carries its reason, which the server logs. Every replica serves it in one
//! queue group ([`serve`]). [`keys`] reads the platform's public keys,
//! [`nats_jwt`] writes and reads NATS JWTs on the `nkeys` crate, [`settings`]
//! is `[callout]`.

mod keys;
mod login;
mod nats_jwt;
mod permission;
mod serve;
pub(crate) mod settings;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

pub use login::{Login, Refusal, Role, Verifier};
pub use nats_jwt::{Claims as JwtClaims, JwtError, decode as decode_jwt, encode as encode_jwt};
pub use permission::{Permissions, for_login as permissions, inbox_prefix};
#[cfg(unix)]
pub use serve::reload_on_hangup;
pub use serve::{serve, serve_requests, subscribe};
pub use settings::{CalloutSettings, MAX_TOKEN_BYTES};

use crate::config::Settings;

/// The subject the server sends its authorization requests on.
pub const SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// The queue group every replica serves the callout in.
pub(crate) const QUEUE_GROUP: &str = "softphone-bridge-callout";
/// The header carrying the server's curve key when it encrypts its request.
const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";
/// The audience of the server's authorization requests.
const REQUEST_AUDIENCE: &str = "nats-authorization-request";

/// The callout's keys and rules, built once at start-up.
pub struct Callout {
    verifier: Verifier,
    issuer: nkeys::KeyPair,
    xkey: Option<nkeys::XKey>,
    crm_account: String,
    /// Clock skew allowed between the server, the platform and this replica.
    leeway: i64,
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A user JWT for this login.
    Accepted(Login),
    /// Refused, with the reason the server logs.
    Refused(Refusal),
    /// Not a request from the server: no answer can be addressed.
    BadRequest(&'static str),
}

impl Outcome {
    fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::Accepted(login) => ("accepted", login.role.label()),
            Outcome::Refused(refusal) => ("refused", refusal.label()),
            Outcome::BadRequest(_) => ("refused", "bad_request"),
        }
    }
}

/// The request's fields the answer needs.
struct Request {
    user_nkey: String,
    server_id: String,
    server_xkey: Option<String>,
    token: String,
    client_host: String,
}

impl Callout {
    /// Reads the keys; fails with the reason when one cannot be used.
    pub fn new(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(callout) = &settings.callout else {
            return Ok(None);
        };
        let issuer = nkeys::KeyPair::from_seed(callout.issuer_seed.expose_secret())
            .map_err(|_| anyhow::anyhow!("callout.issuer_seed is not an NKey seed"))?;
        let xkey = callout
            .xkey_seed
            .as_ref()
            .map(|seed| nkeys::XKey::from_seed(seed.expose_secret()))
            .transpose()
            .map_err(|_| anyhow::anyhow!("callout.xkey_seed is not a curve NKey seed"))?;
        Ok(Some(Self {
            verifier: Verifier::new(callout, settings.partners.keys().cloned())?,
            issuer,
            xkey,
            crm_account: callout.crm_account.clone(),
            leeway: callout.leeway.as_secs() as i64,
        }))
    }

    /// Takes the partners and the login keys of settings read again: logins
    /// of a partner added since start-up come in, those of a removed one no
    /// longer do; a key added to the key file verifies, one removed no
    /// longer does (keys that cannot be read leave the current ones).
    pub fn reload(&self, settings: &Settings) {
        self.verifier
            .set_partners(settings.partners.keys().cloned());
        let Some(callout) = &settings.callout else {
            return;
        };
        match self.verifier.set_keys(callout) {
            Ok(keys) => tracing::info!(keys, "Login keys read again."),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "Login keys cannot be read again; the current ones stay.")
            }
        }
    }

    /// The answer to one authorization request (`payload`, with the server's
    /// curve key from its header when it encrypted it) at `now` (Unix
    /// seconds), and what it came to. `None`: no answer can be addressed.
    pub fn answer(
        &self,
        payload: &[u8],
        server_xkey: Option<&str>,
        now: i64,
    ) -> (Option<Vec<u8>>, Outcome) {
        let request = match self.request(payload, server_xkey, now) {
            Ok(request) => request,
            Err(why) => return (None, Outcome::BadRequest(why)),
        };
        let mut nats = json!({"type": "authorization_response", "version": 2});
        let outcome = match self.verifier.verify(&request.token, now) {
            Ok(login) => {
                nats["jwt"] = json!(self.user_jwt(&request, &login, now));
                Outcome::Accepted(login)
            }
            Err(refusal) => {
                nats["error"] = json!(refusal.text());
                Outcome::Refused(refusal)
            }
        };
        let claims = JwtClaims {
            audience: request.server_id.clone(),
            subject: request.user_nkey.clone(),
            ..JwtClaims::default()
        };
        let response = encode_jwt(claims, &nats, &self.issuer, now).into_bytes();
        let sealed = match (&self.xkey, &request.server_xkey) {
            (Some(own), Some(server)) => nkeys::XKey::from_public_key(server)
                .and_then(|server| own.seal(&response, &server))
                .ok(),
            _ => Some(response),
        };
        match sealed {
            Some(answer) => {
                tracing::debug!(client = request.client_host, "Answered a login.");
                (Some(answer), outcome)
            }
            None => (
                None,
                Outcome::BadRequest("cannot encrypt to the server's xkey"),
            ),
        }
    }

    /// Decrypts (when asked to) and verifies the server's request.
    fn request(
        &self,
        payload: &[u8],
        server_xkey: Option<&str>,
        now: i64,
    ) -> Result<Request, &'static str> {
        let opened;
        let payload = match (&self.xkey, server_xkey) {
            (Some(own), Some(server)) => {
                let server = nkeys::XKey::from_public_key(server).map_err(|_| "bad server xkey")?;
                opened = own
                    .open(payload, &server)
                    .map_err(|_| "cannot decrypt the request")?;
                &opened[..]
            }
            (Some(_), None) => return Err("the request is not encrypted"),
            (None, _) => payload,
        };
        let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8")?;
        // The server's clock may run behind this replica's.
        let (claims, nats) = decode_jwt(text, 'N', now - self.leeway).map_err(|e| match e {
            JwtError::Expired => "expired request",
            JwtError::Signature => "request signature does not verify",
            _ => "not a server-signed NATS JWT",
        })?;
        if claims.audience != REQUEST_AUDIENCE
            || nats["type"].as_str() != Some("authorization_request")
        {
            return Err("not an authorization request");
        }
        let field = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let request = Request {
            user_nkey: field(&nats["user_nkey"]),
            server_id: field(&nats["server_id"]["id"]),
            server_xkey: server_xkey.map(str::to_owned),
            token: field(&nats["connect_opts"]["auth_token"]),
            client_host: field(&nats["client_info"]["host"]),
        };
        if !request.user_nkey.starts_with('U') || !request.server_id.starts_with('N') {
            return Err("request without user or server key");
        }
        // The server signs with its own key: its id.
        if claims.issuer != request.server_id {
            return Err("request not signed by its server");
        }
        Ok(request)
    }

    /// The user JWT for `login`: in its account, with its role's
    /// permissions, expiring with the login.
    fn user_jwt(&self, request: &Request, login: &Login, now: i64) -> String {
        let account = match login.role {
            Role::Softphone => login.partners[0].to_string(),
            Role::Crm => self.crm_account.clone(),
        };
        let permissions = permissions(login);
        let nats = json!({
            "pub": {"allow": permissions.publish},
            "sub": {"allow": permissions.subscribe},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        });
        let claims = JwtClaims {
            audience: account,
            // Expiring with the login; one accepted within the leeway after
            // its `exp` gets a second, not a user the server refuses as expired.
            expires: login.expires.max(now + 1),
            name: login.subject.to_string(),
            subject: request.user_nkey.clone(),
            ..JwtClaims::default()
        };
        encode_jwt(claims, &nats, &self.issuer, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const SECRET: &str = "a-platform-login-secret-32-bytes!";
    const NOW: i64 = 1_900_000_000;

    fn settings(xkey: Option<&nkeys::XKey>) -> Settings {
        let xkey = xkey
            .map(|k| format!("xkey_seed = \"{}\"\n", k.seed().unwrap()))
            .unwrap_or_default();
        Settings::from_toml(&format!(
            "[callout]\nissuer_seed = \"{}\"\ntoken_secret = \"{SECRET}\"\n{xkey}\
             [partners.{A}]\nbusiness_segment_id = \"{A}\"\nchannel_origin_id = \"{A}\"\n",
            nkeys::KeyPair::new_account().seed().unwrap()
        ))
        .unwrap()
    }

    /// What a server sends: an authorization request signed with its key.
    fn request(server: &nkeys::KeyPair, user: &str, token: &str) -> Vec<u8> {
        let nats = json!({
            "server_id": {"name": "n1", "host": "127.0.0.1", "id": server.public_key()},
            "user_nkey": user,
            "client_info": {"host": "127.0.0.1", "id": 5},
            "connect_opts": {"auth_token": token, "protocol": 1},
            "type": "authorization_request",
            "version": 2
        });
        let claims = JwtClaims {
            audience: REQUEST_AUDIENCE.into(),
            expires: NOW + 2,
            subject: "A-ISSUER".into(),
            ..JwtClaims::default()
        };
        encode_jwt(claims, &nats, server, NOW).into_bytes()
    }

    fn token(exp: i64) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "agent-7", "role": "softphone", "partnerId": A, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_good_login_becomes_a_user_of_its_partner_account_signed_by_the_issuer() {
        let settings = settings(None);
        let callout = Callout::new(&settings).unwrap().unwrap();
        let (server, user) = (nkeys::KeyPair::new_server(), nkeys::KeyPair::new_user());
        let payload = request(&server, &user.public_key(), &token(NOW + 600));
        let (answer, outcome) = callout.answer(&payload, None, NOW);
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let answer = String::from_utf8(answer.unwrap()).unwrap();
        let (response, nats) = decode_jwt(&answer, 'A', NOW).unwrap();
        let issuer = settings.callout.as_ref().unwrap().issuer_public_key();
        assert_eq!(response.issuer, issuer);
        assert_eq!(response.audience, server.public_key());
        assert_eq!(response.subject, user.public_key());
        assert_eq!(nats["type"], "authorization_response");
        let (claims, user_nats) = decode_jwt(nats["jwt"].as_str().unwrap(), 'A', NOW).unwrap();
        assert_eq!(claims.issuer, issuer);
        assert_eq!(claims.subject, user.public_key());
        assert_eq!(claims.audience, A, "placed in its partner's account");
        assert_eq!(claims.name, "agent-7");
        assert_eq!(claims.expires, NOW + 600, "expiring with the login");
        assert_eq!(user_nats["type"], "user");
        assert_eq!(
            user_nats["sub"]["allow"],
            json!(["softphone.cmd.agent-7", "_INBOX_agent-7.>"])
        );
    }

    #[test]
    fn a_refusal_carries_its_reason_and_a_forged_request_gets_no_answer() {
        let callout = Callout::new(&settings(None)).unwrap().unwrap();
        let (server, user) = (nkeys::KeyPair::new_server(), nkeys::KeyPair::new_user());
        let payload = request(&server, &user.public_key(), &token(NOW - 60));
        let (answer, outcome) = callout.answer(&payload, None, NOW);
        assert_eq!(outcome, Outcome::Refused(Refusal::Expired));
        let (_, nats) =
            decode_jwt(std::str::from_utf8(&answer.unwrap()).unwrap(), 'A', NOW).unwrap();
        assert_eq!(nats["error"], Refusal::Expired.text());
        assert!(nats.get("jwt").is_none());
        // Signed by an account, not a server: not the server's request.
        let forged = request(
            &nkeys::KeyPair::new_account(),
            &user.public_key(),
            &token(NOW + 60),
        );
        let (answer, outcome) = callout.answer(&forged, None, NOW);
        assert!(answer.is_none());
        assert!(matches!(outcome, Outcome::BadRequest(_)), "{outcome:?}");
        assert_eq!(callout.answer(b"garbage", None, NOW).0, None);
    }

    #[test]
    fn with_an_xkey_requests_and_answers_are_encrypted() {
        let own = nkeys::XKey::new();
        let callout = Callout::new(&settings(Some(&own))).unwrap().unwrap();
        let server_xkey = nkeys::XKey::new();
        let (server, user) = (nkeys::KeyPair::new_server(), nkeys::KeyPair::new_user());
        let plain = request(&server, &user.public_key(), &token(NOW + 60));
        let own_public = nkeys::XKey::from_public_key(&own.public_key()).unwrap();
        let sealed = server_xkey.seal(&plain, &own_public).unwrap();
        let (answer, outcome) = callout.answer(&sealed, Some(&server_xkey.public_key()), NOW);
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        let answer = answer.unwrap();
        assert!(!answer.starts_with(b"eyJ"), "the answer is sealed");
        let opened = server_xkey.open(&answer, &own_public).unwrap();
        decode_jwt(std::str::from_utf8(&opened).unwrap(), 'A', NOW).unwrap();
        // A plain request when encryption is configured is not the server's.
        assert!(matches!(
            callout.answer(&plain, None, NOW).1,
            Outcome::BadRequest(_)
        ));
    }
}
