//! `softphone-bridge dlq`: list, show, replay and purge the dead letters in
//! `SOFTPHONE_DLQ` (format in subjects.md).
//!
//! Dead letters are read in order ([`scan`](crate::ops::scan)), one batch at a
//! time, so memory stays bounded however many there are.

use std::io::Write as _;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream::Stream};
use clap::{Args, Subcommand};
use indicatif::ProgressBar;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::contract::tenant::LOGIN_HEADER;
use crate::contract::{
    DLQ_STREAM, EVENTS_STREAM, EventKind, SUBJECT_ROOT, dlq_header, dlq_subject, event_subject,
    replay_header, replay_subject,
};
use crate::ops::console::{self, parse_when};
use crate::ops::scan::Scan;

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
    Replay(Change),
    /// Delete dead letters from SOFTPHONE_DLQ.
    Purge(Change),
}

/// Which dead letters a command that changes them changes, and how surely.
#[derive(Debug, Clone, Args)]
pub struct Change {
    #[command(flatten)]
    filters: Filters,
    /// Print what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
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
    scan: Scan,
    filters: Filters,
}

impl Reader {
    async fn open(stream: &Stream, filters: &Filters) -> anyhow::Result<Self> {
        let scan = Scan::open(stream, filters.dlq_filter()?, filters.since, filters.until).await?;
        Ok(Reader {
            scan,
            filters: filters.clone(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<Option<DeadLetter>> {
        while let Some(stored) = self.scan.next().await? {
            let message = stored.message.message;
            let letter = DeadLetter::new(
                stored.seq,
                stored.time,
                message.headers.unwrap_or_default(),
                message.payload,
            );
            if self.filters.matches(&letter) {
                return Ok(Some(letter));
            }
        }
        Ok(None)
    }

    /// Reads no dead letter stored after sequence `last` (one confirmed).
    fn up_to(mut self, last: u64) -> Self {
        self.scan = self.scan.up_to(last);
        self
    }

    /// A progress bar of the dead letters this reader goes through, `done` beside it.
    fn progress(&self, done: &'static str) -> ProgressBar {
        console::progress_bar(self.scan.total(), false, done)
    }

    fn advance(&self, bar: &ProgressBar) {
        bar.set_position(self.scan.read());
    }
}

pub(crate) async fn execute(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    if let DlqCommand::List { filters, .. }
    | DlqCommand::Replay(Change { filters, .. })
    | DlqCommand::Purge(Change { filters, .. }) = &command
    {
        console::check_range(filters.since, filters.until)?;
    }
    // Refuse before connecting: nothing can be confirmed without a terminal.
    if let DlqCommand::Replay(Change {
        dry_run: false,
        yes: false,
        ..
    })
    | DlqCommand::Purge(Change {
        dry_run: false,
        yes: false,
        ..
    }) = &command
    {
        console::confirmable("change dead letters")?;
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
        DlqCommand::Replay(Change {
            filters,
            dry_run,
            yes,
        }) => match confirmed(&stream, &filters, dry_run || yes, "Replay").await? {
            Some(up_to) => replay(&js, &stream, &filters, up_to, dry_run).await,
            None => Ok(()),
        },
        DlqCommand::Purge(Change {
            filters,
            dry_run,
            yes,
        }) => match confirmed(&stream, &filters, dry_run || yes, "Delete").await? {
            Some(up_to) => purge(&stream, &filters, up_to, dry_run).await,
            None => Ok(()),
        },
    };
    client.drain().await.ok();
    result
}

/// Counts the matching dead letters and asks on the terminal, unless told
/// to go ahead `already`. `Some(last sequence)` to go ahead, up to what was
/// shown.
async fn confirmed(
    stream: &Stream,
    filters: &Filters,
    already: bool,
    verb: &str,
) -> anyhow::Result<Option<u64>> {
    if already {
        return Ok(Some(u64::MAX));
    }
    let mut reader = Reader::open(stream, filters).await?;
    let mut count = 0u64;
    while reader.next().await?.is_some() {
        count += 1;
    }
    if count == 0 {
        println!("No dead letter matches.");
        return Ok(None);
    }
    let yes = console::ask(&format!("{verb} {count} dead letter(s)?"))?;
    Ok(yes.then(|| reader.scan.last()))
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
        let stored_as = event_subject(&message.subject).map(|s| s.original);
        (stored_as.as_deref() == Some(subject)).then_some(message.time)
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
    up_to: u64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(stream, filters).await?.up_to(up_to);
    let bar = reader.progress("0 replayed");
    let (mut replayed, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    while let Some(letter) = reader.next().await? {
        reader.advance(&bar);
        let seq = letter.seq;
        let (Some(subject), Some(event_id)) = (&letter.subject, &letter.event_id) else {
            bar.suspend(|| {
                eprintln!("skipped {seq}: no original subject or event id in its headers")
            });
            skipped += 1;
            continue;
        };
        if let Some(why) = letter.header(dlq_header::BODY_OMITTED) {
            let at = letter.header(dlq_header::SEQUENCE).unwrap_or("?");
            bar.suspend(|| {
                eprintln!("skipped {seq}: its body was not kept ({why}); SOFTPHONE_EVENTS has it at sequence {at}")
            });
            skipped += 1;
            continue;
        }
        let Some(on) = replay_subject(subject) else {
            bar.suspend(|| eprintln!("skipped {seq}: {subject} is not an event subject"));
            skipped += 1;
            continue;
        };
        if dry_run {
            bar.suspend(|| println!("would replay {seq}: {subject} (event {event_id})"));
            replayed += 1;
            continue;
        }
        let published = original_time(js, &letter, subject).await;
        let mut headers = HeaderMap::new();
        headers.insert(replay_header::EVENT_ID, event_id.as_str());
        headers.insert(replay_header::PUBLISHED, published.as_str());
        if let Some(login) = letter.header(LOGIN_HEADER) {
            headers.insert(LOGIN_HEADER, login);
        }
        let publish = PublishMessage::build()
            .payload(letter.body.clone())
            .headers(headers)
            .message_id(format!("replay:{seq}:{event_id}"));
        // Only the bridge may publish on a replay subject, so only there are
        // the original id headers (and a partner's subject and login) believed.
        let acked = async { js.send_publish(on.clone(), publish).await?.await }.await;
        if let Err(e) = acked {
            bar.suspend(|| eprintln!("failed {seq}: cannot publish on {on}: {e}"));
            failed += 1;
            continue;
        }
        // Only now is it safe to forget the dead letter.
        if forget(stream, seq, "replayed, but ", &bar).await {
            replayed += 1;
        } else {
            failed += 1;
        }
        bar.set_message(format!("{replayed} replayed"));
    }
    bar.finish_and_clear();
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!("{verb} {replayed}, skipped {skipped}, failed {failed}");
    if failed > 0 {
        bail!("{failed} dead letter(s) could not be replayed");
    }
    Ok(())
}

async fn purge(
    stream: &Stream,
    filters: &Filters,
    up_to: u64,
    dry_run: bool,
) -> anyhow::Result<()> {
    let mut reader = Reader::open(stream, filters).await?.up_to(up_to);
    let bar = reader.progress("0 deleted");
    let (mut purged, mut failed) = (0u64, 0u64);
    while let Some(letter) = reader.next().await? {
        reader.advance(&bar);
        if dry_run {
            bar.suspend(|| println!("would delete {}: {}", letter.seq, letter.reason));
            purged += 1;
            continue;
        }
        if forget(stream, letter.seq, "", &bar).await {
            purged += 1;
            bar.set_message(format!("{purged} deleted"));
        } else {
            failed += 1;
        }
    }
    bar.finish_and_clear();
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!("{verb} {purged}, failed {failed}");
    if failed > 0 {
        bail!("{failed} dead letter(s) could not be deleted");
    }
    Ok(())
}

/// Deletes dead letter `seq`; says why not on standard error.
async fn forget(stream: &Stream, seq: u64, done_before: &str, bar: &ProgressBar) -> bool {
    match stream.delete_message(seq).await {
        Ok(_) => true,
        Err(e) => {
            bar.suspend(|| {
                eprintln!("failed {seq}: {done_before}cannot delete it from {DLQ_STREAM}: {e}")
            });
            false
        }
    }
}

/// Most distinct reasons [`count_by_reason`] counts apart.
const MAX_REASONS: usize = 20;

/// The dead letters, counted by reason (for `softphone-bridge status`).
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ReasonCounts {
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
