//! `$batch`: requests and change sets run in order, a change set all or
//! nothing, the answer multipart as Dataverse writes it.

use super::*;

impl Org {
    /// One request of the batch, counted as an operation.
    fn operation(&mut self, inner: &Inner) -> Reply {
        self.operations += 1;
        self.route(
            &inner.method,
            &inner.target,
            &inner.headers,
            inner.body.as_bytes(),
        )
    }

    pub(super) fn batch(&mut self, headers: &[(String, String)], body: &[u8]) -> Reply {
        self.batches += 1;
        let Some(boundary) = header(headers, "content-type").and_then(boundary_of) else {
            return bad_request(
                "A $batch request needs a Content-Type of multipart/mixed with a boundary.",
            );
        };
        let response_boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
        let Ok(text) = std::str::from_utf8(body) else {
            return batch_failure(&response_boundary, stream_not_readable(""));
        };
        // Non-CRLF line endings make the body unreadable (Web API client errors).
        let bytes = text.as_bytes();
        if bytes
            .iter()
            .enumerate()
            .any(|(i, b)| *b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        {
            let entity = text
                .find(API_PATH)
                .map(|at| {
                    text[at + API_PATH.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .unwrap_or_default();
            return batch_failure(&response_boundary, stream_not_readable(&entity));
        }
        let items = match parse_items(text, &boundary) {
            Ok(items) => items,
            Err(detail) => return batch_failure(&response_boundary, bad_request(&detail)),
        };
        let total: usize = items
            .iter()
            .map(|item| match item {
                Item::Single(_) => 1,
                Item::ChangeSet(requests) => requests.len(),
            })
            .sum();
        if total > MAX_BATCH_REQUESTS {
            return batch_failure(
                &response_boundary,
                bad_request(&format!(
                    "Number of requests in the batch exceeded the limit of {MAX_BATCH_REQUESTS}."
                )),
            );
        }
        let keep_going = continue_on_error(headers);
        let mut out = String::new();
        let mut status = 200;
        for item in items {
            match item {
                Item::Single(request) => {
                    let reply = match request {
                        Ok(inner) => self.operation(&inner),
                        Err(detail) => bad_request(&detail),
                    };
                    push_part(&mut out, &response_boundary, None, &reply);
                    if reply.status >= 400 && !keep_going {
                        status = reply.status;
                        break;
                    }
                }
                Item::ChangeSet(requests) => {
                    let (failure, replies) = self.change_set(requests);
                    match failure {
                        Some((content_id, reply)) => {
                            push_part(&mut out, &response_boundary, content_id.as_deref(), &reply);
                            if !keep_going {
                                status = reply.status;
                                break;
                            }
                        }
                        None => {
                            let cs = format!("changesetresponse_{}", uuid::Uuid::new_v4());
                            let mut inner = String::new();
                            for (content_id, reply) in &replies {
                                push_part(&mut inner, &cs, content_id.as_deref(), reply);
                            }
                            inner.push_str(&format!("--{cs}--"));
                            out.push_str(&format!(
                                "--{response_boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n{inner}\r\n"
                            ));
                        }
                    }
                }
            }
        }
        out.push_str(&format!("--{response_boundary}--\r\n"));
        Reply::raw(
            status,
            &format!("multipart/mixed; boundary={response_boundary}"),
            out,
        )
    }

    /// Runs a change set atomically: the failing request's answer (after
    /// rolling back) or every answer.
    #[allow(clippy::type_complexity)]
    pub(super) fn change_set(
        &mut self,
        requests: Vec<(Option<String>, Result<Inner, String>)>,
    ) -> (
        Option<(Option<String>, Reply)>,
        Vec<(Option<String>, Reply)>,
    ) {
        self.journal = Some(Vec::new());
        let mut replies = Vec::new();
        let mut created: HashMap<String, String> = HashMap::new();
        for (content_id, request) in requests {
            let reply = match request {
                Err(detail) => bad_request(&detail),
                Ok(inner) if inner.method == "GET" => {
                    bad_request("GET requests are not allowed within change sets.")
                }
                Ok(mut inner) => match resolve_references(&mut inner, &created) {
                    Err(reference) => Reply::raw(
                        400,
                        "text/plain",
                        format!(
                            "Content-ID Reference: '{reference}' does not exist in the batch context."
                        ),
                    ),
                    Ok(()) => self.operation(&inner),
                },
            };
            if reply.status >= 400 {
                self.rollback();
                return (Some((content_id, reply)), Vec::new());
            }
            if let (Some(content_id), Some(entity)) =
                (&content_id, reply.header_value("OData-EntityId"))
                && let Some(at) = entity.find(API_PATH)
            {
                created.insert(content_id.clone(), entity[at + API_PATH.len()..].to_owned());
            }
            replies.push((content_id, reply));
        }
        self.journal = None;
        (None, replies)
    }
}

/// A `$batch` refused as a whole: its status, and a multipart body holding
/// the one error (as Microsoft shows for unreadable bodies).
pub(super) fn batch_failure(boundary: &str, reply: Reply) -> Reply {
    let mut out = String::new();
    push_part(&mut out, boundary, None, &reply);
    out.push_str(&format!("--{boundary}--\r\n"));
    Reply::raw(
        reply.status,
        &format!("multipart/mixed; boundary={boundary}"),
        out,
    )
}

pub(super) fn push_part(out: &mut String, boundary: &str, content_id: Option<&str>, reply: &Reply) {
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    ));
    if let Some(content_id) = content_id {
        out.push_str(&format!("Content-ID: {content_id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.http_message());
    out.push_str("\r\n");
}
