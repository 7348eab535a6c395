//! The fake org's token endpoint: the client-credentials and JWT-bearer
//! grants, assertions verified with the test public key.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

use super::*;

const PUBLIC_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/TEST-ONLY-salesforce-key.pub.pem"
));

impl Org {
    pub(super) fn token(&mut self, request: &Request) -> ResponseTemplate {
        let content_type = request
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        self.token_requests.push(form.clone());
        let ok = match form.get("grant_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                let assertion = form.get("assertion").expect("an assertion");
                let mut validation = Validation::new(Algorithm::RS256);
                validation.set_audience(&["https://login.salesforce.com"]);
                validation.set_issuer(&[CLIENT_ID]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
                match jsonwebtoken::decode::<Value>(assertion, &key, &validation) {
                    Ok(data) => {
                        let ok = data.claims["sub"] == USERNAME;
                        self.assertions.push(data.claims);
                        ok
                    }
                    Err(_) => false,
                }
            }
            Some("client_credentials") => {
                form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
            }
            _ => false,
        };
        if !ok || self.refuse_grants {
            return ResponseTemplate::new(400).set_body_json(
                json!({"error": "invalid_grant", "error_description": "authentication failure"}),
            );
        }
        let token = format!("00Dtest!token-{}", self.token_requests.len());
        self.valid_tokens.insert(token.clone());
        let instance = self.instance.clone();
        ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token,
            "instance_url": instance,
            "id": format!("{instance}/id/00Dxx/005xx"),
            "token_type": "Bearer",
            "issued_at": "1700000000000",
        }))
    }
}
