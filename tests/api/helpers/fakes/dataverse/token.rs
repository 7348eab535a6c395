//! The Microsoft Entra token endpoint (client credentials, shared secret),
//! answering with Entra's error format.

use super::*;

pub(super) fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Reply {
    let at = time::OffsetDateTime::now_utc();
    let timestamp = stamp(at).replace('T', " ");
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace.to_string(),
            "correlation_id": correlation.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

impl Org {
    /// `POST /login/{tenant}/oauth2/v2.0/token` (client credentials, shared secret).
    pub(super) fn token(&mut self, request: &Request) -> Reply {
        let path = request.url.path();
        let Some(tenant) = path
            .strip_prefix("/login/")
            .and_then(|rest| rest.strip_suffix("/oauth2/v2.0/token"))
        else {
            return Reply::empty(404);
        };
        let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
            .into_owned()
            .collect();
        self.token_requests.push(form.clone());
        if self.token_down {
            return aad_error(
                503,
                "temporarily_unavailable",
                90006,
                "The service is temporarily unavailable.",
            );
        }
        if request.method.as_str() != "POST" {
            return aad_error(
                400,
                "invalid_request",
                900561,
                &format!(
                    "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                    request.method
                ),
            );
        }
        if tenant != TENANT_ID {
            return aad_error(
                400,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                ),
            );
        }
        let form_encoded = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let missing = |name: &str| {
            aad_error(
                400,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{name}'."),
            )
        };
        let Some(grant) = form.get("grant_type").filter(|_| form_encoded) else {
            return missing("grant_type");
        };
        if grant != "client_credentials" {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant}'."),
            );
        }
        let Some(client) = form.get("client_id") else {
            return missing("client_id");
        };
        if client != CLIENT_ID {
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        }
        let Some(secret) = form.get("client_secret") else {
            return aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        };
        if secret != CLIENT_SECRET {
            return aad_error(
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'."
                ),
            );
        }
        let Some(scope) = form.get("scope") else {
            return missing("scope");
        };
        let Some(resource) = scope.strip_suffix("/.default") else {
            return aad_error(
                400,
                "invalid_scope",
                70011,
                &format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        };
        if resource.trim_end_matches('/') != self.base.trim_end_matches('/') {
            return aad_error(
                400,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            );
        }
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-dataverse-{}.{}",
            self.token_requests.len(),
            uuid::Uuid::new_v4().simple()
        );
        self.valid_tokens.insert(token.clone());
        Reply::json(
            200,
            json!({
                "token_type": "Bearer",
                "expires_in": 3599,
                "ext_expires_in": 3599,
                "access_token": token,
            }),
        )
        .header("Cache-Control", "no-store, no-cache")
    }

    // -----------------------------------------------------------------------
    // The Web API
}
