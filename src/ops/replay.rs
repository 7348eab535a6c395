//! `softphone-bridge replay`: sends events `SOFTPHONE_EVENTS` still keeps
//! through a CRM connection's lane again, after a CRM restored a backup or
//! when a connection is added.
//!
//! Each event is copied as the intake copies it ([`lane_copy`]): the body
//! verbatim, with its original event id, sequence and publish time in the
//! lane headers, so the CRM sees the event it already had (same
//! `Idempotency-Key` / `webhook-id`, same `publishedAt`) and de-duplicates and
//! orders it. Only the CRM lane is fed, never the softphone lane: the
//! registry and `load` callbacks are not replayed.
//!
//! Idempotent twice over. The CRM de-duplicates by event id, whatever the
//! number of copies. And the command itself publishes each (event,
//! connection) once per duplicate window: its copies' `Nats-Msg-Id` is
//! `replay:<connection>:<sequence in SOFTPHONE_EVENTS>` (not the intake's
//! id, which the lane stream may still hold), so re-running it after an
//! interruption within `streams.duplicate_window` stores nothing twice (the
//! summary counts those as already replayed) and a CRM that pays per call
//! (Salesforce API allowance) is not sent the same burst again; after the
//! window, running it again replays again, as asked.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, stream::Stream};
use clap::Args;
use indicatif::ProgressBar;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::broker::{self, FirstConnect};
use crate::config::Settings;
use crate::contract::{EVENTS_STREAM, Event, Guid, LaneTarget};
use crate::ops::console::{self, parse_when};
use crate::ops::scan::{Scan, Stored};
use crate::pipeline::{Delivery, lane_copy, vouched};

/// Copies awaiting their publish acks at most.
const IN_FLIGHT: usize = 64;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Events stored in SOFTPHONE_EVENTS at or after: RFC 3339, or a duration
    /// ago (`2h`, `3days`).
    #[arg(long, value_parser = parse_when)]
    since: OffsetDateTime,
    /// Events stored at or before (default: up to the last one stored when
    /// the command starts).
    #[arg(long, value_parser = parse_when)]
    until: Option<OffsetDateTime>,
    /// Only this partner's events (the body's `partnerId`).
    #[arg(long)]
    partner: Option<Guid>,
    /// The CRM connection (`crm` or a `[crms.<name>]`) to replay through.
    /// Alone: the events that route there now. With --partner: that
    /// partner's events go to this connection even if routing sends them
    /// elsewhere (e.g. a connection added for the partner). Default: each
    /// event's connection as routing says now.
    #[arg(long)]
    connection: Option<String>,
    /// List what would be replayed; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// JSON lines instead of text (no progress bar).
    #[arg(long)]
    json: bool,
}

impl ReplayArgs {
    /// Precise errors for a selection that cannot be right.
    fn check(&self, settings: &Settings) -> anyhow::Result<()> {
        if let Some(connection) = &self.connection
            && !settings.connections().any(|(name, _)| name == connection)
        {
            let known: Vec<_> = settings.connections().map(|(name, _)| name).collect();
            bail!(
                "unknown connection {connection:?}; configured: {}",
                known.join(", ")
            );
        }
        console::check_range(Some(self.since), self.until)
    }

    /// The connection `event` is replayed through, `None` when the
    /// selection leaves it out.
    /// `partner` is the event's: the one the server vouched for, else the
    /// one its body names (as the intake routes it).
    fn target<'a>(&'a self, settings: &'a Settings, partner: Option<&Guid>) -> Option<&'a str> {
        let routed = settings.connection_for(partner);
        if let Some(chosen) = &self.partner
            && partner != Some(chosen)
        {
            return None;
        }
        match (&self.partner, &self.connection) {
            (Some(_), Some(chosen)) => Some(chosen),
            (None, Some(chosen)) => (routed == chosen).then_some(chosen.as_str()),
            (_, None) => Some(routed),
        }
    }
}

pub(crate) async fn execute(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    args.check(settings)?;
    // Refuse before connecting: nothing can be confirmed without a terminal.
    let ask = !(args.dry_run || args.yes);
    if ask {
        console::confirmable("replay events")?;
    }
    let client = broker::connect(&settings.nats, FirstConnect::FailFast).await?;
    let js = broker::jetstream(client.clone(), &settings.nats);
    let result = async {
        let stream = js.get_stream(EVENTS_STREAM).await.with_context(|| {
            format!("no {EVENTS_STREAM} stream (run `softphone-bridge provision`?)")
        })?;
        let mut up_to = u64::MAX;
        if ask {
            let (counted, last) = run(&js, &stream, settings, &args, Pass::Count, up_to).await?;
            if !confirm(&counted)? {
                return Ok(());
            }
            up_to = last;
        }
        let pass = if args.dry_run {
            Pass::DryRun
        } else {
            Pass::Publish
        };
        let (tally, _) = run(&js, &stream, settings, &args, pass, up_to).await?;
        tally.print(args.json, args.dry_run)?;
        if tally.failed > 0 {
            bail!("{} event(s) could not be replayed", tally.failed);
        }
        Ok(())
    }
    .await;
    client.drain().await.ok();
    result
}

/// Shows the count per connection and asks.
fn confirm(counted: &Tally) -> anyhow::Result<bool> {
    let total: u64 = counted.replayed.values().sum();
    if total == 0 {
        println!(
            "No event to replay (skipped invalid {}, filtered out {}).",
            counted.invalid, counted.filtered_out
        );
        return Ok(false);
    }
    eprintln!("Events to replay, by connection:");
    for (connection, count) in &counted.replayed {
        eprintln!("  {connection:<24} {count:>8}");
    }
    eprintln!(
        "(skipped invalid {}, filtered out {})",
        counted.invalid, counted.filtered_out
    );
    console::ask(&format!("Replay {total} event(s)?"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Counts what would be replayed, silently (before asking).
    Count,
    /// Lists what would be replayed.
    DryRun,
    Publish,
}

/// What a pass did (or would do) with the events it read.
#[derive(Debug, Default)]
struct Tally {
    /// By connection.
    replayed: BTreeMap<String, u64>,
    /// Dropped by `SOFTPHONE_LANES` as copies of this command's within the
    /// duplicate window.
    already_replayed: u64,
    /// What the intake dead-letters.
    invalid: u64,
    /// Not of the partner or connection asked for.
    filtered_out: u64,
    failed: u64,
}

/// A copy awaiting its publish ack.
struct InFlight {
    seq: u64,
    connection: String,
    ack: PublishAckFuture,
}

/// Reads the range once and does `pass` with each event; returns what it
/// did and the last sequence it could read.
async fn run(
    js: &jetstream::Context,
    stream: &Stream,
    settings: &Settings,
    args: &ReplayArgs,
    pass: Pass,
    up_to: u64,
) -> anyhow::Result<(Tally, u64)> {
    let mut scan = Scan::open(stream, String::new(), Some(args.since), args.until)
        .await?
        .up_to(up_to);
    let bar = match pass {
        Pass::Count => ProgressBar::hidden(),
        Pass::DryRun => console::progress_bar(scan.total(), args.json, "0 listed"),
        Pass::Publish => console::progress_bar(scan.total(), args.json, "0 replayed"),
    };
    let mut tally = Tally::default();
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    let mut out = std::io::stdout();
    if pass == Pass::DryRun && !args.json {
        writeln!(
            out,
            "{:>8}  {:<20}  {:<34}  {:<36}  {:<36}  CONNECTION",
            "SEQ", "TIME", "SUBJECT", "EVENT ID", "PARTNER"
        )?;
    }
    while let Some(Stored { seq, time, message }) = scan.next().await? {
        bar.set_position(scan.read());
        let Ok(delivery) = Delivery::from_events(&message) else {
            bar.suspend(|| eprintln!("failed {seq}: no JetStream metadata"));
            tally.failed += 1;
            continue;
        };
        // What the intake dead-letters (an invalid id or body, a mismatch
        // with what the server vouched for) is not replayed.
        let decoded = delivery
            .kind
            .filter(|_| delivery.invalid_id.is_none())
            .and_then(|kind| Event::decode(kind, &message.payload).ok())
            .and_then(|event| vouched(&delivery, event).ok());
        let Some(event) = decoded else {
            tally.invalid += 1;
            continue;
        };
        let partner = delivery.partner.as_ref().or(event.partner_id());
        let Some(connection) = args.target(settings, partner) else {
            tally.filtered_out += 1;
            continue;
        };
        match pass {
            Pass::Count => *tally.replayed.entry(connection.to_owned()).or_default() += 1,
            Pass::DryRun => {
                let partner = partner.map_or("-", |p| p.as_str());
                bar.suspend(|| {
                    if args.json {
                        let line = serde_json::json!({
                            "seq": seq,
                            "time": time.format(&Rfc3339).unwrap_or_default(),
                            "subject": delivery.subject,
                            "event_id": delivery.id,
                            "partner": partner,
                            "connection": connection,
                        });
                        writeln!(out, "{line}")
                    } else {
                        let time = time.replace_nanosecond(0).unwrap_or(time);
                        writeln!(
                            out,
                            "{seq:>8}  {:<20}  {:<34}  {:<36}  {partner:<36}  {connection}",
                            time.format(&Rfc3339).unwrap_or_default(),
                            delivery.subject,
                            delivery.id,
                        )
                    }
                })?;
                *tally.replayed.entry(connection.to_owned()).or_default() += 1;
                bar.set_message(format!("{} listed", tally.replayed.values().sum::<u64>()));
            }
            Pass::Publish => {
                let lane = LaneTarget::Crm(connection);
                let partition = lane.partition(&event, &delivery.id, settings.lanes.partitions);
                let subject = lane.subject(partition, event.kind());
                let id = format!("replay:{connection}:{seq}");
                let copy = lane_copy(&delivery, message.payload.clone(), &id, connection);
                match js.send_publish(subject, copy).await {
                    Ok(ack) => in_flight.push_back(InFlight {
                        seq,
                        connection: connection.to_owned(),
                        ack,
                    }),
                    Err(e) => {
                        bar.suspend(|| eprintln!("failed {seq}: cannot publish: {e}"));
                        tally.failed += 1;
                    }
                }
                if in_flight.len() >= IN_FLIGHT
                    && let Some(oldest) = in_flight.pop_front()
                {
                    tally.settle(oldest, &bar).await;
                }
            }
        }
    }
    while let Some(copy) = in_flight.pop_front() {
        tally.settle(copy, &bar).await;
    }
    bar.finish_and_clear();
    Ok((tally, scan.last()))
}

impl Tally {
    /// Awaits a copy's publish ack and counts what became of it.
    async fn settle(&mut self, copy: InFlight, bar: &ProgressBar) {
        match copy.ack.await {
            Ok(ack) if ack.duplicate => self.already_replayed += 1,
            Ok(_) => {
                *self.replayed.entry(copy.connection).or_default() += 1;
                let total: u64 = self.replayed.values().sum();
                bar.set_message(format!("{total} replayed"));
            }
            Err(e) => {
                let seq = copy.seq;
                bar.suspend(|| eprintln!("failed {seq}: not stored in the lane: {e}"));
                self.failed += 1;
            }
        }
    }

    fn print(&self, json: bool, dry_run: bool) -> anyhow::Result<()> {
        let total: u64 = self.replayed.values().sum();
        if json {
            let line = serde_json::json!({
                "dry_run": dry_run,
                "replayed": total,
                "by_connection": self.replayed,
                "already_replayed": self.already_replayed,
                "invalid": self.invalid,
                "filtered_out": self.filtered_out,
                "failed": self.failed,
            });
            println!("{line}");
            return Ok(());
        }
        let by_connection: Vec<_> = self
            .replayed
            .iter()
            .map(|(connection, count)| format!("{connection} {count}"))
            .collect();
        let by_connection = if by_connection.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_connection.join(", "))
        };
        let verb = if dry_run { "would replay" } else { "replayed" };
        println!(
            "{verb} {total}{by_connection}, already replayed {}, skipped invalid {}, filtered out {}, failed {}",
            self.already_replayed, self.invalid, self.filtered_out, self.failed
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "215fd887-39be-4935-981f-2670d6afeaa7";
    const B: &str = "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

    fn settings() -> Settings {
        Settings::from_toml(&format!(
            r#"
[crm]
kind = "log"

[crms.b]
kind = "log"

[crms.new]
kind = "log"

[partners.{B}]
business_segment_id = "{A}"
channel_origin_id = "{A}"
crm = "b"
"#
        ))
        .unwrap()
    }

    fn args(partner: Option<&str>, connection: Option<&str>) -> ReplayArgs {
        ReplayArgs {
            since: OffsetDateTime::UNIX_EPOCH,
            until: None,
            partner: partner.map(|p| p.parse().unwrap()),
            connection: connection.map(str::to_owned),
            dry_run: false,
            yes: false,
            json: false,
        }
    }

    fn event(partner: &str) -> Event {
        let body = format!(r#"{{"partnerId":"{partner}","conversationId":"{A}","notes":"n"}}"#);
        Event::decode_subject("softphone.call.notes_submitted", body.as_bytes()).unwrap()
    }

    #[test]
    fn events_go_where_routing_says_unless_a_partner_is_sent_elsewhere() {
        let settings = settings();
        let (a, b) = (event(A), event(B));
        let target = |partner, connection| {
            let args = args(partner, connection);
            [
                args.target(&settings, a.partner_id()).map(str::to_owned),
                args.target(&settings, b.partner_id()).map(str::to_owned),
            ]
        };
        let some = |name: &str| Some(name.to_owned());
        // Everything, each to its own connection.
        assert_eq!(target(None, None), [some("crm"), some("b")]);
        // One partner, through its connection.
        assert_eq!(target(Some(B), None), [None, some("b")]);
        // One connection: the events that route there.
        assert_eq!(target(None, Some("b")), [None, some("b")]);
        assert_eq!(target(None, Some("new")), [None, None]);
        // A partner sent through another connection, even a new one.
        assert_eq!(target(Some(A), Some("new")), [some("new"), None]);
        assert_eq!(target(Some(B), Some("crm")), [None, some("crm")]);
    }

    #[test]
    fn a_selection_that_cannot_be_right_is_refused() {
        let settings = settings();
        let unknown = args(None, Some("acme")).check(&settings).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            r#"unknown connection "acme"; configured: crm, b, new"#
        );
        let mut backwards = args(None, None);
        backwards.until = Some(OffsetDateTime::UNIX_EPOCH - time::Duration::hours(1));
        assert!(backwards.check(&settings).is_err());
        assert!(args(Some(A), Some("new")).check(&settings).is_ok());
    }
}
