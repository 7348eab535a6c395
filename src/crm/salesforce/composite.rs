//! Several REST requests for the price of one where Salesforce allows it:
//! Composite API subrequests (up to 25 per call, at most 5 of them queries or
//! sObject Collections, each answered on its own) count as one API request.
//! A search (SOSL) cannot be a Composite subrequest, so each goes alone; a
//! lone request goes as it is. The requests of one `send` run concurrently.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::SalesforceCrm;
use super::error::classify;
use crate::crm::CrmError;

/// Salesforce's limit of subrequests in one Composite call.
const MAX_SUBREQUESTS: usize = 25;
/// Of which queries and sObject Collections requests.
const MAX_HEAVY_SUBREQUESTS: usize = 5;

/// One REST request (a path under `/services/data/vNN.0/`).
pub(crate) struct Sub {
    pub method: Method,
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Sub {
    /// The Composite API does not take the search resource.
    fn composable(&self) -> bool {
        !self.path.starts_with("search")
    }

    /// Counts against the Composite API's 5 queries or collections.
    fn heavy(&self) -> bool {
        self.path.starts_with("query") || self.path.starts_with("composite/sobjects")
    }
}

/// Its successful answer's body.
pub(crate) type SubResult = Result<Value, CrmError>;

/// `subs` as the API requests that carry them: indexes into `subs`, a
/// search alone, the others in Composite calls within its limits.
fn plan(subs: &[Sub]) -> Vec<Vec<usize>> {
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut heavy = 0;
    for (i, sub) in subs.iter().enumerate() {
        if !sub.composable() {
            requests.push(vec![i]);
            continue;
        }
        if open.len() == MAX_SUBREQUESTS || (sub.heavy() && heavy == MAX_HEAVY_SUBREQUESTS) {
            requests.push(std::mem::take(&mut open));
            heavy = 0;
        }
        heavy += usize::from(sub.heavy());
        open.push(i);
    }
    if !open.is_empty() {
        requests.push(open);
    }
    requests
}

impl SalesforceCrm {
    /// Sends `subs` in as few API requests as Salesforce allows, at once;
    /// one result each, in order. A failure of a whole request is every
    /// subrequest's in it.
    pub(crate) async fn send(&self, subs: Vec<Sub>) -> Vec<SubResult> {
        let requests = plan(&subs);
        let subs = &subs;
        let answers = join_all(requests.iter().map(|indexes| async move {
            match indexes.as_slice() {
                [i] => vec![self.send_one(&subs[*i]).await],
                many => {
                    let chunk: Vec<&Sub> = many.iter().map(|i| &subs[*i]).collect();
                    self.composite(&chunk).await
                }
            }
        }))
        .await;
        let mut results: Vec<Option<SubResult>> = (0..subs.len()).map(|_| None).collect();
        for (indexes, answer) in requests.iter().zip(answers) {
            for (i, result) in indexes.iter().zip(answer) {
                results[*i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every subrequest is planned once"))
            .collect()
    }

    async fn send_one(&self, sub: &Sub) -> SubResult {
        let path = self.data_path(&sub.path);
        let query: Vec<(&str, &str)> = sub.query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.call(sub.method.clone(), &path, &query, sub.body.as_ref(), &[])
            .await
            .map(|a| a.json())
    }

    async fn composite(&self, subs: &[&Sub]) -> Vec<SubResult> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(path: &str) -> Sub {
        Sub {
            method: Method::GET,
            path: path.into(),
            query: Vec::new(),
            body: None,
        }
    }

    #[test]
    fn searches_go_alone_and_composites_keep_salesforce_limits() {
        let mut subs = vec![sub("search/"), sub("query/")];
        subs.extend((0..6).map(|_| sub("composite/sobjects")));
        subs.push(sub("search/"));
        subs.extend((0..30).map(|_| sub("sobjects/Task/x")));
        let planned = plan(&subs);
        assert_eq!(planned[0], vec![0], "a search alone");
        assert_eq!(
            planned[1],
            vec![1, 2, 3, 4, 5],
            "five queries or collections"
        );
        assert_eq!(planned[2], vec![8], "a search alone");
        let mut flat: Vec<usize> = planned.concat();
        flat.sort_unstable();
        assert_eq!(
            flat,
            (0..subs.len()).collect::<Vec<_>>(),
            "each planned once"
        );
        for request in &planned {
            assert!(request.len() <= MAX_SUBREQUESTS);
            let heavy = request.iter().filter(|i| subs[**i].heavy()).count();
            assert!(heavy <= MAX_HEAVY_SUBREQUESTS);
            assert!(request.len() == 1 || request.iter().all(|i| subs[*i].composable()));
        }
    }
}
