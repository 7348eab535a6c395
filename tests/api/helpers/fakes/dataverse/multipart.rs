//! Parsing a `$batch` body: parts, change sets, the HTTP requests inside,
//! `Content-ID` references resolved.

use super::*;

/// A request out of a `$batch` body.
pub(super) struct Inner {
    pub(super) method: String,
    /// `path?query`, resolved against the service root.
    pub(super) target: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

pub(super) enum Item {
    Single(Result<Inner, String>),
    ChangeSet(Vec<(Option<String>, Result<Inner, String>)>),
}

pub(super) struct Part {
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: String,
}

/// Splits a multipart body at its boundary delimiters (RFC 2046): the
/// preamble and epilogue are ignored; each part is headers, a blank line, a
/// body.
pub(super) fn parse_parts(body: &str, boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("\r\n--{boundary}");
    let text = format!("\r\n{body}");
    let mut pieces = text.split(delimiter.as_str());
    pieces.next();
    let mut parts = Vec::new();
    for piece in pieces {
        if piece.starts_with("--") {
            return Ok(parts);
        }
        let piece = piece.trim_start_matches([' ', '\t']);
        let Some(content) = piece.strip_prefix("\r\n") else {
            return Err(format!(
                "A boundary delimiter of '{boundary}' isn't followed by CRLF."
            ));
        };
        let (head, body) = split_head(content);
        parts.push(Part {
            headers: parse_headers(head)?,
            body: body.to_owned(),
        });
    }
    Err(format!(
        "The multipart body has no close delimiter '--{boundary}--'."
    ))
}

pub(super) fn split_head(content: &str) -> (&str, &str) {
    if let Some(body) = content.strip_prefix("\r\n") {
        return ("", body);
    }
    match content.split_once("\r\n\r\n") {
        Some(split) => split,
        None => (content.strip_suffix("\r\n").unwrap_or(content), ""),
    }
}

pub(super) fn parse_headers(head: &str) -> Result<Vec<(String, String)>, String> {
    head.split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("Invalid header line '{line}'."))
        })
        .collect()
}

pub(super) fn is_http(part: &Part) -> bool {
    header(&part.headers, "content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/http"))
    })
}

/// The top-level items of a `$batch` body: single requests and change sets.
pub(super) fn parse_items(text: &str, boundary: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for part in parse_parts(text, boundary)? {
        if is_http(&part) {
            items.push(Item::Single(parse_inner(&part.body)));
            continue;
        }
        let Some(change_set) = header(&part.headers, "content-type").and_then(boundary_of) else {
            return Err(format!(
                "A batch part has the Content-Type '{}': expected application/http or multipart/mixed.",
                header(&part.headers, "content-type").unwrap_or("")
            ));
        };
        let mut requests = Vec::new();
        for member in parse_parts(&part.body, &change_set)? {
            if !is_http(&member) {
                return Err("A change set holds only application/http parts.".into());
            }
            let content_id = header(&member.headers, "content-id").map(str::to_owned);
            requests.push((content_id, parse_inner(&member.body)));
        }
        items.push(Item::ChangeSet(requests));
    }
    Ok(items)
}

/// The HTTP request in an `application/http` part: `METHOD URL HTTP/1.1`,
/// headers, blank line, body; the URL absolute, an absolute path, or relative
/// to the service root.
pub(super) fn parse_inner(message: &str) -> Result<Inner, String> {
    let (head, body) = split_head(message);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let tokens: Vec<&str> = line.split(' ').filter(|t| !t.is_empty()).collect();
    if tokens.len() != 3 || !tokens[2].starts_with("HTTP/") {
        return Err(format!(
            "Invalid request line '{line}': expected 'METHOD URL HTTP/1.1' with a percent-encoded URL."
        ));
    }
    let url = tokens[1];
    let target = if url.starts_with("http://") || url.starts_with("https://") {
        let after_scheme = &url[url.find("//").unwrap() + 2..];
        match after_scheme.find('/') {
            Some(at) => after_scheme[at..].to_owned(),
            None => "/".to_owned(),
        }
    } else if url.starts_with('/') {
        url.to_owned()
    } else {
        format!("{API_PATH}{url}")
    };
    let headers = parse_headers(&lines.collect::<Vec<_>>().join("\r\n"))?;
    Ok(Inner {
        method: tokens[0].to_ascii_uppercase(),
        target,
        headers,
        body: body.to_owned(),
    })
}

/// Replaces `$<Content-ID>` in a change set member's URL and `@odata.bind`
/// values with the entity that request wrote; the unknown reference if any.
pub(super) fn resolve_references(
    inner: &mut Inner,
    created: &HashMap<String, String>,
) -> Result<(), String> {
    let service = inner
        .target
        .strip_prefix(API_PATH)
        .unwrap_or(&inner.target)
        .to_owned();
    if let Some(reference) = service.strip_prefix('$') {
        let id: String = reference.chars().take_while(char::is_ascii_digit).collect();
        if !id.is_empty() {
            let entity = created.get(&id).ok_or_else(|| format!("${id}"))?;
            inner.target = format!("{API_PATH}{entity}{}", &reference[id.len()..]);
        }
    }
    if inner.body.contains("\"$")
        && let Ok(mut json) = serde_json::from_str::<Value>(&inner.body)
    {
        resolve_binds(&mut json, created)?;
        inner.body = json.to_string();
    }
    Ok(())
}

pub(super) fn resolve_binds(
    value: &mut Value,
    created: &HashMap<String, String>,
) -> Result<(), String> {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                if key.ends_with("@odata.bind")
                    && let Value::String(reference) = value
                    && let Some(id) = reference.strip_prefix('$')
                {
                    let entity = created.get(id).ok_or_else(|| format!("${id}"))?;
                    *reference = format!("/{entity}");
                } else {
                    resolve_binds(value, created)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| resolve_binds(v, created)),
        _ => Ok(()),
    }
}
