//! Events the client cannot read. async-nats parses every delivery's header
//! block itself, and one it rejects (NATS takes any bytes from any
//! publisher: `NATS/1.0\r\nBad Name: x\r\n\r\n`) makes it drop the
//! connection the delivery came on, before the intake ever sees the event.
//! Redelivered after every ack wait, such an event would drop the intake's
//! connection for the stream's whole retention, and take the events
//! delivered in the same batch with it each time.
//!
//! So the intake's unit sweeps its consumer once when it starts and after
//! every (re)connect of its connection ([`find`]): it reads each event
//! delivered and not acknowledged yet raw, through the stream's message-get
//! API (which returns headers as data), and sets aside each one the client
//! cannot read, through the one consume loop's fates
//! ([`super::unit`]): dead-lettered with the reason, then deleted from
//! `SOFTPHONE_EVENTS`, which takes it out of the consumer's way. The events
//! lost with the connection come back after `worker.intake_ack_wait`.

use async_nats::jetstream::{self, stream::Stream};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;

use super::delivery::Delivery;
use super::outcome::{self, Outcome};

/// Events one sweep reads at most, from the consumer's ack floor up.
const LOOKUPS: u64 = 1024;
/// Reads in flight at once.
const AT_ONCE: usize = 8;
/// The error code JetStream answers for a message that is not (or no
/// longer) in the stream.
const NO_MESSAGE: u64 = 10037;

/// Why async-nats would refuse this header block, and drop the connection
/// it came on: the rules of its `HMSG` parser, one for one. (A status on the
/// version line never reaches it from a stream: NATS stores only the
/// `NATS/1.0` of a version line that begins with it.)
pub(crate) fn headers_readable(raw: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("the block is not UTF-8 ({e})"))?;
    let mut lines = text.lines().peekable();
    let version = lines
        .next()
        .ok_or_else(|| "the block is empty: no version line".to_owned())?;
    let suffix = version
        .strip_prefix("NATS/1.0")
        .map(str::trim)
        .ok_or_else(|| format!("the version line {version:?} does not begin with NATS/1.0"))?;
    let status = suffix
        .split_once(' ')
        .map_or(suffix, |(status, _)| status.trim());
    if !matches!(
        status.as_bytes(),
        [] | [b'1'..=b'9', b'0'..=b'9', b'0'..=b'9']
    ) {
        return Err(format!(
            "the version line's status {status:?} is not a 3-digit code"
        ));
    }
    let mut number = 1;
    while let Some(line) = lines.next() {
        number += 1;
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return Err(format!("line {number} ({line:?}) has no ':'"));
        };
        if name.contains(|c: char| !c.is_ascii_graphic() || c == ':') {
            return Err(format!(
                "the header name {name:?} on line {number} is not printable ASCII without spaces"
            ));
        }
        // Lines starting with whitespace continue the value; the client
        // takes them as they are.
        while lines
            .next_if(|next| next.starts_with(char::is_whitespace))
            .is_some()
        {
            number += 1;
        }
    }
    Ok(())
}

/// A message the client cannot read, read raw from its stream, with the
/// fate [`outcome`] gives it.
pub(super) struct SetAside {
    pub delivery: Delivery,
    pub body: bytes::Bytes,
    pub fate: Outcome,
}

/// The events `consumer` has delivered, not had acknowledged, and whose
/// headers the client cannot read, each with its fate, and the stream they
/// are in (which carrying out a fate deletes them from).
pub(super) async fn find(
    js: &jetstream::Context,
    stream_name: &str,
    consumer: &str,
) -> Result<(Stream, Vec<SetAside>), async_nats::Error> {
    let stream = js.get_stream(stream_name).await?;
    let first = stream.cached_info().state.first_sequence;
    let info = stream.consumer_info(consumer).await?;
    let mut found = Vec::new();
    if info.num_ack_pending == 0 {
        return Ok((stream, found));
    }
    let from = (info.ack_floor.stream_sequence + 1).max(first);
    let to = info
        .delivered
        .stream_sequence
        .min(from.saturating_add(LOOKUPS - 1));
    tracing::debug!(from, to, "Looking for events the client cannot read.");
    let mut stored = futures::stream::iter(from..=to)
        .map(|sequence| raw_message(js, stream_name, sequence))
        .buffered(AT_ONCE);
    while let Some(message) = stored.next().await {
        let Some(message) = message? else { continue };
        let Some(headers) = &message.headers else {
            continue;
        };
        if let Err(why) = headers_readable(headers) {
            found.push(SetAside {
                fate: outcome::unreadable_headers(&why, headers),
                delivery: Delivery::set_aside(&message.subject, message.sequence),
                body: message.payload.into(),
            });
        }
    }
    Ok((stream, found))
}

/// One stored message, headers and all, as the stream holds it.
pub(super) struct Raw {
    pub subject: String,
    pub sequence: u64,
    pub headers: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The answer of `$JS.API.STREAM.MSG.GET.<stream>`.
#[derive(Deserialize)]
struct MsgGet {
    message: Option<Stored>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Stored {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// The message at `sequence`, `None` when the stream does not hold it (any
/// more). `Stream::get_raw_message` cannot be used: it parses the headers.
async fn raw_message(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
) -> Result<Option<Raw>, async_nats::Error> {
    raw_get(js, stream, sequence, serde_json::json!({ "seq": sequence })).await
}

/// The first message at or after `sequence` on a subject `filter` matches,
/// raw; `None` when there is none.
pub(super) async fn next_raw(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
    filter: &str,
) -> Result<Option<Raw>, async_nats::Error> {
    let request = serde_json::json!({ "seq": sequence, "next_by_subj": filter });
    raw_get(js, stream, sequence, request).await
}

async fn raw_get(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
    request: serde_json::Value,
) -> Result<Option<Raw>, async_nats::Error> {
    let answer: MsgGet = js
        .request(format!("STREAM.MSG.GET.{stream}"), &request)
        .await?;
    match (answer.message, answer.error) {
        (Some(stored), _) => {
            let decode = |text: Option<String>| {
                text.map(|text| base64::engine::general_purpose::STANDARD.decode(text))
                    .transpose()
            };
            Ok(Some(Raw {
                subject: stored.subject,
                sequence: stored.seq,
                headers: decode(stored.hdrs)?,
                payload: decode(stored.data)?.unwrap_or_default(),
            }))
        }
        (None, Some(error)) if error.err_code == NO_MESSAGE => Ok(None),
        (None, Some(error)) => Err(format!(
            "cannot read message {sequence} of {stream}: {} (error {})",
            error.description, error.err_code
        )
        .into()),
        (None, None) => {
            Err(format!("cannot read message {sequence} of {stream}: empty answer").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::headers_readable;

    #[test]
    fn good_blocks_are_readable() {
        for block in [
            &b"NATS/1.0\r\n\r\n"[..],
            b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n",
            b"NATS/1.0\r\nA: 1\r\nB-2_x.y: two words\r\n\r\n",
            b"NATS/1.0\r\nA: long\r\n  continued without colon\r\n\r\n",
            b"NATS/1.0\r\nA:\r\n\r\n",
            b"NATS/1.0 503\r\n\r\n",
            b"NATS/1.0 408 Request Timeout\r\n\r\n",
            b"NATS/1.0\r\nA: caf\xc3\xa9\r\n\r\n",
        ] {
            assert_eq!(headers_readable(block), Ok(()), "{}", block.escape_ascii());
        }
    }

    #[test]
    fn the_clients_refusals_are_named() {
        for (block, why) in [
            (&b"NATS/1.0\r\nBad Name: x\r\n\r\n"[..], "\"Bad Name\""),
            (b"NATS/1.0\r\nno colon here\r\n\r\n", "has no ':'"),
            (b"NATS/1.0\r\nA: 1\r\nB\r\n\r\n", "line 3"),
            (b"NATS/1.0\r\nA: \xff\r\n\r\n", "not UTF-8"),
            (b"HTTP/1.1\r\nA: 1\r\n\r\n", "does not begin with NATS/1.0"),
            (b"", "no version line"),
            (b"NATS/1.0 5x3\r\n\r\n", "not a 3-digit code"),
            (b"NATS/1.0 099\r\n\r\n", "not a 3-digit code"),
            (b"NATS/1.0x\r\n\r\n", "not a 3-digit code"),
            (b"NATS/1.0\r\n X: leading space\r\n\r\n", "\" X\""),
            (b"NATS/1.0\r\nA\x01: x\r\n\r\n", "printable ASCII"),
        ] {
            let refused = headers_readable(block).expect_err(&block.escape_ascii().to_string());
            assert!(refused.contains(why), "{refused}");
        }
    }
}
