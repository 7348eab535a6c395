//! Several REST requests for the price of one: a lone request goes as it is,
//! more go as Composite API subrequests (up to 25 per call, each answered on
//! its own), since the org counts one Composite call as one API request.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::SalesforceCrm;
use super::error::classify;
use crate::crm::CrmError;

/// Salesforce's limit of subrequests in one Composite call.
const MAX_SUBREQUESTS: usize = 25;

/// One REST request (a path under `/services/data/vNN.0/`).
pub(crate) struct Sub {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

/// Its successful answer's body.
pub(crate) type SubResult = Result<Value, CrmError>;

impl SalesforceCrm {
    /// Sends `subs` in as few API requests as can be; one result each, in order.
    /// A failure of the whole request is every subrequest's.
    pub(crate) async fn send(&self, subs: Vec<Sub>) -> Vec<SubResult> {
        if let [sub] = subs.as_slice() {
            let path = self.data_path(&sub.path);
            let query: Vec<(&str, &str)> =
                sub.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = self
                .call(sub.method.clone(), &path, &query, sub.body.as_ref(), &[])
                .await;
            return vec![answer.map(|a| a.json())];
        }
        let mut results = Vec::with_capacity(subs.len());
        for chunk in subs.chunks(MAX_SUBREQUESTS) {
            results.extend(self.composite(chunk).await);
        }
        results
    }

    async fn composite(&self, subs: &[Sub]) -> Vec<SubResult> {
        let requests: Vec<Value> = subs
            .iter()
            .enumerate()
            .map(|(i, sub)| {
                let mut url = self.data_path(&sub.path);
                if !sub.query.is_empty() {
                    url.push('?');
                    url.push_str(
                        &url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(sub.query.iter().map(|(k, v)| (*k, v.as_str())))
                            .finish(),
                    );
                }
                let mut request =
                    json!({"method": sub.method.as_str(), "url": url, "referenceId": format!("r{i}")});
                if let Some(body) = &sub.body {
                    request["body"] = body.clone();
                }
                request
            })
            .collect();
        let body = json!({"allOrNone": false, "compositeRequest": requests});
        let path = self.data_path("composite");
        let answer = match self.call(Method::POST, &path, &[], Some(&body), &[]).await {
            Ok(answer) => answer.json(),
            Err(e) => return vec![Err(e); subs.len()],
        };
        let responses = answer["compositeResponse"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (0..subs.len())
            .map(|i| {
                let Some(response) = responses.get(i) else {
                    return Err(CrmError::Unavailable {
                        reason: "Salesforce answered a Composite request without every subrequest"
                            .into(),
                        retry_after: None,
                    });
                };
                let status = response["httpStatusCode"]
                    .as_u64()
                    .and_then(|s| StatusCode::from_u16(s as u16).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = response["body"].clone();
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(classify(
                        status,
                        None,
                        &body.to_string(),
                        self.settings.limit_retry_after,
                    ))
                }
            })
            .collect()
    }
}
