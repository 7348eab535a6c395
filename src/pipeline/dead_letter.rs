//! Copies an event to `softphone.dlq.<event>` with the reason in headers,
//! waiting for the DLQ stream's ack before the original may be terminated.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishError, message::PublishMessage};

use super::outcome;
use crate::contract::tenant::LOGIN_HEADER;
use crate::contract::{dlq_header, dlq_subject};

/// Where a dead-lettered event came from.
pub(super) struct Origin<'a> {
    pub subject: &'a str,
    pub sequence: u64,
    pub delivered: u32,
    pub event_id: &'a str,
    /// When `SOFTPHONE_EVENTS` stored it, when known.
    pub published: Option<time::OffsetDateTime>,
    /// The login the door stored a partner's event with, kept (as
    /// [`LOGIN_HEADER`]) so that `dlq replay` stores it with it again.
    pub login: Option<&'a str>,
}

/// Header values are one line; NATS headers are not the place for a novel.
fn header_value(text: &str, limit: usize) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::text::truncate(&line, limit)
}

/// Copies the event to the dead-letter stream and waits for its ack. A copy
/// NATS refuses for what it is (the body, with these headers, over the
/// server's limit) is stored without its body, with
/// `Softphone-Dlq-Body-Omitted` saying why: the body stays in
/// `SOFTPHONE_EVENTS` at the origin's sequence.
pub(super) async fn publish(
    js: &jetstream::Context,
    origin: &Origin<'_>,
    body: bytes::Bytes,
    reason: &str,
    detail: Option<&str>,
) -> Result<(), PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(dlq_header::REASON, header_value(reason, 1024).as_str());
    if let Some(detail) = detail {
        headers.insert(dlq_header::DETAIL, header_value(detail, 2048).as_str());
    }
    headers.insert(dlq_header::SUBJECT, origin.subject);
    headers.insert(dlq_header::SEQUENCE, origin.sequence.to_string().as_str());
    headers.insert(
        dlq_header::DELIVERIES,
        origin.delivered.to_string().as_str(),
    );
    headers.insert(dlq_header::EVENT_ID, origin.event_id);
    if let Some(login) = origin.login {
        headers.insert(LOGIN_HEADER, login);
    }
    if let Some(at) = origin.published.and_then(|at| {
        at.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }) {
        headers.insert(dlq_header::PUBLISHED, at.as_str());
    }
    let subject = dlq_subject(origin.subject);
    // A retried dead-lettering of the same event is dropped as a duplicate.
    let id = format!("dlq:{}:{}", origin.sequence, origin.event_id);
    let size = body.len();
    match store(js, &subject, &id, body, headers.clone()).await {
        Err(e) if outcome::refused_for_itself(&e) => {
            let why = format!("{size} bytes refused by NATS: {e}");
            headers.insert(dlq_header::BODY_OMITTED, header_value(&why, 1024).as_str());
            store(js, &subject, &id, bytes::Bytes::new(), headers).await
        }
        stored => stored,
    }
}

async fn store(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    body: bytes::Bytes,
    headers: HeaderMap,
) -> Result<(), PublishError> {
    let publish = PublishMessage::build()
        .payload(body)
        .headers(headers)
        .message_id(id);
    js.send_publish(subject.to_owned(), publish).await?.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::header_value;

    #[test]
    fn header_values_are_single_short_lines() {
        assert_eq!(header_value("a\r\nb", 100), "a  b");
        assert_eq!(header_value(&"x".repeat(10), 4), "xxxx…");
    }
}
