//! `softphone-bridge dlq`: list, show, replay and purge the dead letters in
//! `SOFTPHONE_DLQ` (format in subjects.md).
//!
//! Dead letters are read in order through an ephemeral pull consumer without
//! acknowledgements, one batch at a time, so memory stays bounded however
//! many there are.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream::Stream};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::contract::{
    DLQ_STREAM, EVENTS_STREAM, EventKind, SUBJECT_ROOT, dlq_header, dlq_subject, replay_header,
};

/// How long to wait for the next dead letter the server said was pending.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: a table, or JSON lines with `--json`.
    List {
        #[command(flatten)]
        filters: Filters,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter: every header, then the body.
    Show {
        /// Its sequence in SOFTPHONE_DLQ.
        seq: u64,
    },
    /// Publish dead letters again on their original subject, with their
    /// original event id and publish time, then remove them from SOFTPHONE_DLQ.
    Replay {
        #[command(flatten)]
        filters: Filters,
        /// Print what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Delete dead letters from SOFTPHONE_DLQ.
    Purge {
        #[command(flatten)]
        filters: Filters,
        /// Print what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command applies to; all of them by default.
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    /// Reason containing this text (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Original event: `call.ended`, `softphone.call.ended` or `callEnded`.
    #[arg(long)]
    subject: Option<String>,
    /// The body's `partnerId`.
    #[arg(long)]
    partner: Option<String>,
    /// The body's `conversationId`.
    #[arg(long)]
    conversation: Option<String>,
    /// Dead-lettered at or after: RFC 3339, or a duration ago (`2h`, `3days`).
    #[arg(long, value_parser = parse_when)]
    since: Option<OffsetDateTime>,
    /// Dead-lettered at or before: RFC 3339, or a duration ago.
    #[arg(long, value_parser = parse_when)]
    until: Option<OffsetDateTime>,
}

fn parse_when(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let ago = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as 2h"))?;
    Ok(OffsetDateTime::now_utc() - ago)
}

impl Filters {
    /// The DLQ subject to read: one event's, or all.
    fn dlq_filter(&self) -> anyhow::Result<String> {
        match &self.subject {
            None => Ok(format!("{SUBJECT_ROOT}.dlq.>")),
            Some(name) => match EventKind::parse(name) {
                Some(kind) => Ok(dlq_subject(kind.subject())),
                None if name.contains('.') => Ok(dlq_subject(name)),
                None => {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    bail!("unknown event {name:?}; one of: {}", known.join(", "))
                }
            },
        }
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(want) => have.as_ref().is_some_and(|h| h.eq_ignore_ascii_case(want)),
        };
        self.reason
            .as_ref()
            .is_none_or(|r| letter.reason.to_lowercase().contains(&r.to_lowercase()))
            && same(&self.partner, &letter.partner)
            && same(&self.conversation, &letter.conversation)
            && self.since.is_none_or(|since| letter.time >= since)
            && self.until.is_none_or(|until| letter.time <= until)
    }
}

/// One dead letter as the commands see it.
struct DeadLetter {
    seq: u64,
    /// When SOFTPHONE_DLQ stored it.
    time: OffsetDateTime,
    subject: Option<String>,
    event_id: Option<String>,
    reason: String,
    deliveries: Option<u32>,
    partner: Option<String>,
    conversation: Option<String>,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl DeadLetter {
    fn new(seq: u64, time: OffsetDateTime, headers: HeaderMap, body: bytes::Bytes) -> Self {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .filter(|v| !v.is_empty())
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        Self {
            seq,
            time,
            subject: get(dlq_header::SUBJECT),
            event_id: get(dlq_header::EVENT_ID),
            reason: get(dlq_header::REASON).unwrap_or_default(),
            deliveries: get(dlq_header::DELIVERIES).and_then(|d| d.parse().ok()),
            partner: field("partnerId"),
            conversation: field("conversationId"),
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn time_text(&self) -> String {
        self.time.format(&Rfc3339).unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "time": self.time_text(),
            "subject": self.subject,
            "event_id": self.event_id,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "partner": self.partner,
            "conversation": self.conversation,
        })
    }
}

/// Reads the matching dead letters in order, a batch at a time.
struct Reader {
    messages: Option<consumer::pull::Stream>,
    filters: Filters,
    /// The last sequence when reading began: what arrives later is not read.
    last: u64,
}

impl Reader {
    async fn open(stream: &Stream, filters: &Filters) -> anyhow::Result<Self> {
        let mut reader = Reader {
            messages: None,
            filters: filters.clone(),
            last: 0,
        };
        let info = stream
            .get_info()
            .await
            .with_context(|| format!("cannot read {DLQ_STREAM}"))?;
        if info.state.messages == 0 {
            return Ok(reader);
        }
        reader.last = info.state.last_sequence;
        let deliver_policy = match filters.since {
            Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
            None => consumer::DeliverPolicy::All,
        };
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy,
                filter_subject: filters.dlq_filter()?,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .context("cannot read the dead letters")?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(reader);
        }
        reader.messages = Some(
            consumer
                .messages()
                .await
                .context("cannot read the dead letters")?,
        );
        Ok(reader)
    }

    async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        while let Some(messages) = &mut self.messages {
            let message = match tokio::time::timeout(PATIENCE, messages.next()).await {
                Err(_) => bail!("timed out reading {DLQ_STREAM}"),
                Ok(None) => bail!("{DLQ_STREAM} reader closed"),
                Ok(Some(message)) => message.context("cannot read a dead letter")?,
            };
            let (seq, time, pending) = {
                let info = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("dead letter without metadata: {e}"))?;
                (info.stream_sequence, info.published, info.pending)
            };
            if pending == 0 || seq >= self.last {
                self.messages = None;
            }
            if seq > self.last {
                break;
            }
            let letter = DeadLetter::new(
                seq,
                time,
                message.headers.clone().unwrap_or_default(),
                message.payload.clone(),
            );
            if self.filters.until.is_some_and(|until| time > until) {
                // In order: nothing later matches either.
                self.messages = None;
                break;
            }
            if self.filters.matches(&letter) {
                return Ok(Some(letter));
            }
        }
        Ok(None)
    }
}

pub async fn execute(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    // Refuse before connecting: nothing can be confirmed without a terminal.
    if let DlqCommand::Replay {
        dry_run: false,
        yes: false,
        ..
    }
    | DlqCommand::Purge {
        dry_run: false,
        yes: false,
        ..
    } = &command
        && !std::io::stdin().is_terminal()
    {
        bail!(
            "refusing to change dead letters without confirmation: standard input is not a terminal; pass --yes (or --dry-run to see what would change)"
        );
    }
    let client = broker::connect(&settings.nats, FirstConnect::FailFast).await?;
    let js = broker::jetstream(client.clone(), &settings.nats);
    let stream = js
        .get_stream(DLQ_STREAM)
        .await
        .with_context(|| format!("no {DLQ_STREAM} stream (run `softphone-bridge provision`?)"))?;
    let result = match command {
        DlqCommand::List { filters, json } => list(&stream, &filters, json).await,
        DlqCommand::Show { seq } => show(&stream, seq).await,
        DlqCommand::Replay {
            filters,
            dry_run,
            yes,
        } => {
            if dry_run || yes || confirm(&stream, &filters, "Replay").await? {
                replay(&js, &stream, &filters, dry_run).await
            } else {
                Ok(())
            }
        }
        DlqCommand::Purge {
            filters,
            dry_run,
            yes,
        } => {
            if dry_run || yes || confirm(&stream, &filters, "Delete").await? {
                purge(&stream, &filters, dry_run).await
            } else {
                Ok(())
            }
        }
    };
    client.drain().await.ok();
    result
}

/// Counts the matching dead letters and asks on the terminal.
async fn confirm(stream: &Stream, filters: &Filters, verb: &str) -> anyhow::Result<bool> {
    let mut reader = Reader::open(stream, filters).await?;
    let mut count = 0u64;
    while reader.next().await?.is_some() {
        count += 1;
    }
    if count == 0 {
        println!("No dead letter matches.");
        return Ok(false);
    }
    eprint!("{verb} {count} dead letter(s)? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim().to_lowercase().as_str(), "y" | "yes");
    if !yes {
        println!("Nothing changed.");
    }
    Ok(yes)
}

async fn list(stream: &Stream, filters: &Filters, json: bool) -> anyhow::Result<()> {
    let mut reader = Reader::open(stream, filters).await?;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:>8}  {:<20}  {:<34}  {:<36}  {:>4}  {:<36}  {:<36}  REASON",
            "SEQ", "TIME", "SUBJECT", "EVENT ID", "DLV", "PARTNER", "CONVERSATION"
        )?;
    }
    while let Some(letter) = reader.next().await? {
        if json {
            writeln!(out, "{}", letter.json())?;
        } else {
            let time = letter
                .time
                .replace_nanosecond(0)
                .unwrap_or(letter.time)
                .format(&Rfc3339)
                .unwrap_or_default();
            let dash = || "-".to_owned();
            writeln!(
                out,
                "{:>8}  {:<20}  {:<34}  {:<36}  {:>4}  {:<36}  {:<36}  {}",
                letter.seq,
                time,
                letter.subject.clone().unwrap_or_else(dash),
                letter.event_id.clone().unwrap_or_else(dash),
                letter.deliveries.map_or_else(dash, |d| d.to_string()),
                letter.partner.clone().unwrap_or_else(dash),
                letter.conversation.clone().unwrap_or_else(dash),
                letter.reason,
            )?;
        }
    }
    Ok(())
}

async fn show(stream: &Stream, seq: u64) -> anyhow::Result<()> {
    let message = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("no dead letter {seq} in {DLQ_STREAM}"))?;
    let letter = DeadLetter::new(seq, message.time, message.headers, message.payload);
    let mut out = std::io::stdout().lock();
    writeln!(out, "Sequence: {seq}")?;
    writeln!(out, "Subject: {}", message.subject)?;
    writeln!(out, "Time: {}", letter.time_text())?;
    for (name, values) in letter.headers.iter() {
        for value in values {
            writeln!(out, "{name}: {}", value.as_str())?;
        }
    }
    writeln!(out)?;
    match serde_json::from_slice::<serde_json::Value>(&letter.body) {
        Ok(json) => writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?,
        Err(_) => writeln!(out, "{}", String::from_utf8_lossy(&letter.body))?,
    }
    Ok(())
}

/// When the event was first stored: the dead letter says so, or
/// `SOFTPHONE_EVENTS` still has it, or (last resort) when it was dead-lettered.
async fn original_time(js: &jetstream::Context, letter: &DeadLetter, subject: &str) -> String {
    if let Some(at) = letter.header(dlq_header::PUBLISHED) {
        return at.to_owned();
    }
    let stored = async {
        let seq: u64 = letter.header(dlq_header::SEQUENCE)?.parse().ok()?;
        let events = js.get_stream(EVENTS_STREAM).await.ok()?;
        let message = events.get_raw_message(seq).await.ok()?;
        (message.subject.as_str() == subject).then_some(message.time)
    }
    .await;
    stored
        .unwrap_or(letter.time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

async fn replay(
    js: &jetstream::Context,
    stream: &Stream,
    filters: &Filters,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(stream, filters).await?;
    let (mut replayed, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    while let Some(letter) = reader.next().await? {
        let seq = letter.seq;
        let (Some(subject), Some(event_id)) = (&letter.subject, &letter.event_id) else {
            eprintln!("skipped {seq}: no original subject or event id in its headers");
            skipped += 1;
            continue;
        };
        if dry_run {
            println!("would replay {seq}: {subject} (event {event_id})");
            replayed += 1;
            continue;
        }
        let published = original_time(js, &letter, subject).await;
        let mut headers = HeaderMap::new();
        headers.insert(replay_header::EVENT_ID, event_id.as_str());
        headers.insert(replay_header::PUBLISHED, published.as_str());
        let publish = PublishMessage::build()
            .payload(letter.body.clone())
            .headers(headers)
            .message_id(format!("replay:{seq}:{event_id}"));
        let acked = async { js.send_publish(subject.clone(), publish).await?.await }.await;
        if let Err(e) = acked {
            eprintln!("failed {seq}: cannot publish on {subject}: {e}");
            failed += 1;
            continue;
        }
        // Only now is it safe to forget the dead letter.
        if forget(stream, seq, "replayed, but ").await {
            replayed += 1;
        } else {
            failed += 1;
        }
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!("{verb} {replayed}, skipped {skipped}, failed {failed}");
    if failed > 0 {
        bail!("{failed} dead letter(s) could not be replayed");
    }
    Ok(())
}

async fn purge(stream: &Stream, filters: &Filters, dry_run: bool) -> anyhow::Result<()> {
    let mut reader = Reader::open(stream, filters).await?;
    let (mut purged, mut failed) = (0u64, 0u64);
    while let Some(letter) = reader.next().await? {
        if dry_run {
            println!("would delete {}: {}", letter.seq, letter.reason);
            purged += 1;
            continue;
        }
        if forget(stream, letter.seq, "").await {
            purged += 1;
        } else {
            failed += 1;
        }
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!("{verb} {purged}, failed {failed}");
    if failed > 0 {
        bail!("{failed} dead letter(s) could not be deleted");
    }
    Ok(())
}

/// Deletes dead letter `seq`; says why not on standard error.
async fn forget(stream: &Stream, seq: u64, done_before: &str) -> bool {
    match stream.delete_message(seq).await {
        Ok(_) => true,
        Err(e) => {
            eprintln!("failed {seq}: {done_before}cannot delete it from {DLQ_STREAM}: {e}");
            false
        }
    }
}

/// Most distinct reasons [`count_by_reason`] counts apart.
const MAX_REASONS: usize = 20;

/// The dead letters, counted by reason (for `softphone-bridge status`).
#[derive(Debug, Default, serde::Serialize)]
pub struct ReasonCounts {
    pub total: u64,
    /// The first [`MAX_REASONS`] distinct reasons met, each with its count.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// Dead letters of any other reason.
    pub other: u64,
}

/// Reads every dead letter once, keeping only counts: memory stays bounded.
pub(crate) async fn count_by_reason(stream: &Stream) -> anyhow::Result<ReasonCounts> {
    let mut reader = Reader::open(stream, &Filters::default()).await?;
    let mut counts = ReasonCounts::default();
    while let Some(letter) = reader.next().await? {
        counts.total += 1;
        let room = counts.by_reason.len() < MAX_REASONS;
        match counts.by_reason.get_mut(&letter.reason) {
            Some(count) => *count += 1,
            None if room => {
                counts.by_reason.insert(letter.reason, 1);
            }
            None => counts.other += 1,
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        assert_eq!(
            parse_when("2026-11-20T08:30:00Z").unwrap(),
            OffsetDateTime::parse("2026-11-20T08:30:00Z", &Rfc3339).unwrap()
        );
        let ago = OffsetDateTime::now_utc() - parse_when("2h").unwrap();
        assert!((ago.whole_seconds() - 7200).abs() < 5, "{ago}");
        assert!(parse_when("soonish").is_err());
    }
}
