//! OData `$batch` bodies, as Dataverse takes and answers them (OData 4.0
//! §11.7, `multipart/mixed`): single requests (the reads) and change sets
//! (each call's writes, which succeed or fail together), and the answer
//! split back into one response per part, in order.

use serde_json::Value;

/// One part of a `$batch`.
pub(super) enum Part {
    /// A read, outside any change set: the path under the Web API root.
    Get(String),
    /// Writes that go together.
    ChangeSet(Vec<Op>),
}

/// A write in a change set.
pub(super) struct Op {
    /// `PATCH`.
    pub method: &'static str,
    /// The path under the Web API root: `phonecalls(<id>)`.
    pub path: String,
    pub body: Value,
}

/// One response in a `$batch`'s answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Response {
    pub status: u16,
    /// `Retry-After`, when the part carries one.
    pub retry_after: Option<std::time::Duration>,
    pub body: String,
}

impl Response {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The answer to one part: a read's response; a change set's responses (one
/// per write when it succeeded, the one that failed when it did not).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    One(Response),
    Many(Vec<Response>),
}

/// The body of a `$batch` of `parts` under the Web API root `root`
/// (`/api/data/v9.2/`), and its boundary (for the `Content-Type`).
pub(super) fn encode(root: &str, parts: &[Part]) -> (String, String) {
    let id = uuid::Uuid::new_v4();
    let boundary = format!("batch_{id}");
    let mut body = String::new();
    for (index, part) in parts.iter().enumerate() {
        body.push_str(&format!("--{boundary}\r\n"));
        match part {
            Part::Get(path) => {
                body.push_str(
                    "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n",
                );
                body.push_str(&format!(
                    "GET {root}{path} HTTP/1.1\r\nAccept: application/json\r\n\r\n"
                ));
            }
            Part::ChangeSet(ops) => {
                let changeset = format!("changeset_{id}_{index}");
                body.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
                ));
                for (n, op) in ops.iter().enumerate() {
                    body.push_str(&format!(
                        "--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: {}\r\n\r\n",
                        n + 1
                    ));
                    body.push_str(&format!(
                        "{} {root}{} HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\n\r\n{}\r\n",
                        op.method, op.path, op.body
                    ));
                }
                body.push_str(&format!("--{changeset}--\r\n"));
            }
        }
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (boundary, body)
}

/// The answer's parts, in order, from its `Content-Type` and body.
pub(super) fn decode(content_type: &str, body: &str) -> Result<Vec<Answer>, String> {
    let boundary = boundary_of(content_type).ok_or("the answer is not multipart/mixed")?;
    parts(body, &boundary)?
        .into_iter()
        .map(|part| {
            let (headers, content) = split_head(part);
            match header(headers, "content-type").and_then(boundary_of) {
                Some(inner) => parts(content, &inner)?
                    .into_iter()
                    .map(|p| response(split_head(p).1))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Answer::Many),
                None => {
                    let response = response(content)?;
                    Ok(Answer::One(response))
                }
            }
        })
        .collect()
}

/// The `boundary` parameter of a `multipart/mixed` content type.
fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The parts between `--boundary` delimiters, up to `--boundary--`.
fn parts<'a>(body: &'a str, boundary: &str) -> Result<Vec<&'a str>, String> {
    let delimiter = format!("--{boundary}");
    let mut pieces = body.split(delimiter.as_str());
    pieces.next(); // the preamble
    let mut out = Vec::new();
    for piece in pieces {
        if piece.starts_with("--") {
            return Ok(out);
        }
        out.push(
            piece
                .strip_prefix("\r\n")
                .or_else(|| piece.strip_prefix('\n'))
                .unwrap_or(piece),
        );
    }
    Err(format!("the multipart body has no closing --{boundary}--"))
}

/// A MIME part's (or an HTTP message's) headers and what follows them.
fn split_head(part: &str) -> (&str, &str) {
    if let Some(at) = part.find("\r\n\r\n") {
        return (&part[..at], &part[at + 4..]);
    }
    match part.find("\n\n") {
        Some(at) => (&part[..at], &part[at + 2..]),
        None => (part, ""),
    }
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// An `application/http` response: `HTTP/1.1 204 No Content`, headers, body.
fn response(message: &str) -> Result<Response, String> {
    let (head, body) = split_head(message);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    let retry_after = header(head, "retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    Ok(Response {
        status,
        retry_after,
        body: body.trim_end_matches(['\r', '\n']).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_encoded_as_the_documentation_shows() {
        let parts = [
            Part::Get("contacts?$select=fullname".into()),
            Part::ChangeSet(vec![
                Op {
                    method: "PATCH",
                    path: "phonecalls(00000000-0000-0000-0000-000000000001)".into(),
                    body: serde_json::json!({"subject": "Inbound call"}),
                },
                Op {
                    method: "PATCH",
                    path: "phonecalls(00000000-0000-0000-0000-000000000001)".into(),
                    body: serde_json::json!({"statecode": 1, "statuscode": 4}),
                },
            ]),
        ];
        let (boundary, body) = encode("/api/data/v9.2/", &parts);
        assert!(body.starts_with(&format!("--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/contacts?$select=fullname HTTP/1.1\r\n")));
        assert!(body.contains("Content-ID: 2\r\n\r\nPATCH /api/data/v9.2/phonecalls(00000000-0000-0000-0000-000000000001) HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\n\r\n{\"statecode\":1,\"statuscode\":4}\r\n"));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    }

    #[test]
    fn an_answer_splits_into_its_parts() {
        // As Microsoft's "Execute batch operations using the Web API" shows
        // them: a read, a change set that succeeded, one that failed.
        let body = "--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n{\"value\":[]}\r\n--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nOData-EntityId: https://x/api/data/v9.2/phonecalls(1)\r\n\r\n\r\n--changesetresponse_2--\r\n--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Type: application/json; odata.metadata=minimal\r\nOData-Version: 4.0\r\n\r\n{\"error\":{\"code\":\"0x80060888\",\"message\":\"nope\"}}\r\n--batchresponse_1--\r\n";
        let answers = decode("multipart/mixed; boundary=batchresponse_1", body).unwrap();
        assert_eq!(answers.len(), 3);
        assert!(
            matches!(&answers[0], Answer::One(r) if r.status == 200 && r.json()["value"] == serde_json::json!([]))
        );
        assert!(matches!(&answers[1], Answer::Many(r) if r.len() == 1 && r[0].status == 204));
        // A failed change set answers with the one response that failed.
        assert!(
            matches!(&answers[2], Answer::One(r) if r.status == 400 && r.json()["error"]["code"] == "0x80060888")
        );
        assert!(decode("application/json", "{}").is_err());
        assert!(decode("multipart/mixed; boundary=b", "--b\r\nx").is_err());
    }
}
