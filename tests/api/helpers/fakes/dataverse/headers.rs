//! Reading a request's headers and URL: `Prefer`, conditions, the
//! multipart boundary, percent-encoding.

pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `If-Match`/`If-None-Match`, where `null` (sent on every request, as the
/// docs advise) means none.
pub(super) fn condition<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .find(|v| !v.eq_ignore_ascii_case("null"))
}

pub(super) fn wants_representation(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| {
        p.split(',')
            .any(|v| v.trim().eq_ignore_ascii_case("return=representation"))
    })
}

/// `Prefer: odata.include-annotations=...`: lookups come with their
/// `@Microsoft.Dynamics.CRM.lookuplogicalname`.
pub(super) fn annotations(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| p.contains("odata.include-annotations"))
}

pub(super) fn continue_on_error(headers: &[(String, String)]) -> bool {
    header(headers, "prefer").is_some_and(|p| {
        p.split(',').any(|v| {
            let v = v.trim().to_ascii_lowercase();
            v == "odata.continue-on-error"
                || v == "odata.continue-on-error=true"
                || v == "continue-on-error"
                || v == "continue-on-error=true"
        })
    })
}

pub(super) fn boundary_of(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let media = parts.next()?.trim();
    if !media.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}
