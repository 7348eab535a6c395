//! What the operators' commands (`dlq`, `replay`) share at the terminal:
//! times given on the command line, asking before changing anything, and a
//! progress bar.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A command-line time: RFC 3339, or a duration ago (`2h`, `3days`), in UTC.
/// Refuses what no stream can hold: a time before the Unix epoch
/// (`1000years`, a date in year 1026, a duration too long to count) or
/// after the year 9999. Never panics, whatever the text. The error says why;
/// clap shows it after the value and the option.
pub(crate) fn parse_when(text: &str) -> Result<OffsetDateTime, String> {
    parse_when_at(text, OffsetDateTime::now_utc())
}

/// [`parse_when`] with durations counted back from `now`.
fn parse_when_at(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    use humantime_serde::re::humantime::{DurationError, parse_duration};
    let at = match OffsetDateTime::parse(text, &Rfc3339) {
        // A local time late on 9999-12-31 west of UTC is in year 10000 in UTC.
        Ok(at) => at
            .checked_to_offset(time::UtcOffset::UTC)
            .ok_or(AFTER_9999)?,
        Err(_) if looks_like_a_later_year(text) => return Err(AFTER_9999.into()),
        Err(_) => {
            let ago = parse_duration(text).map_err(|e| match e {
                DurationError::NumberOverflow => BEFORE_EPOCH,
                _ => NEITHER,
            })?;
            // Too long to count in nanoseconds, or to subtract: long before 1970.
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| now.checked_sub(ago))
                .ok_or(BEFORE_EPOCH)?
        }
    };
    if at < OffsetDateTime::UNIX_EPOCH {
        return Err(BEFORE_EPOCH.into());
    }
    Ok(at)
}

const BEFORE_EPOCH: &str =
    "before the Unix epoch (1970-01-01T00:00:00Z), when nothing can have been stored";
const AFTER_9999: &str = "after the year 9999";
const NEITHER: &str = "neither an RFC 3339 time nor a duration such as 2h";

/// Whether `text` starts like an RFC 3339 time with a year of five digits or more.
fn looks_like_a_later_year(text: &str) -> bool {
    text.split_once('-').is_some_and(|(year, _)| {
        year.len() > 4 && year.bytes().all(|b| b.is_ascii_digit()) && !year.starts_with('0')
    })
}

/// Refuses `--until` before `--since`: a selection that cannot hold anything.
pub(crate) fn check_range(
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
) -> anyhow::Result<()> {
    if let (Some(since), Some(until)) = (since, until)
        && until < since
    {
        bail!("--until is before --since");
    }
    Ok(())
}

/// Fails unless someone can be asked to confirm `what` (e.g. "change dead
/// letters"): checked before connecting, as nothing can be confirmed without
/// a terminal.
pub(crate) fn confirmable(what: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {what} without confirmation: standard input is not a terminal; pass --yes (or --dry-run to see what would change)"
        );
    }
    Ok(())
}

/// Asks `question` on the terminal; `true` for yes. Says so when the answer
/// is no.
pub(crate) fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim().to_lowercase().as_str(), "y" | "yes");
    if !yes {
        println!("Nothing changed.");
    }
    Ok(yes)
}

/// A progress bar of `len` messages read, with `message` (what was done so
/// far) beside it, on standard error; drawn only when both standard output
/// and standard error are a terminal and the output is not meant for a
/// script (`quiet`, e.g. `--json`), hidden otherwise. Print through
/// [`ProgressBar::suspend`] while it is shown.
pub(crate) fn progress_bar(len: u64, quiet: bool, message: &'static str) -> ProgressBar {
    let shown = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    if !shown {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {pos}/{len} read, {msg} [{elapsed_precise}, {eta} left]",
    )
    .expect("a valid progress template");
    ProgressBar::new(len)
        .with_style(style)
        .with_message(message)
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
        // Another offset is the same instant, given in UTC.
        let noon = parse_when("2026-11-20T12:00:00+02:00").unwrap();
        assert_eq!(noon.offset(), time::UtcOffset::UTC);
        assert_eq!(noon, parse_when("2026-11-20T10:00:00Z").unwrap());
    }

    /// Why each refused value is refused.
    #[test]
    fn times_no_stream_can_hold_are_refused_by_name() {
        let now = OffsetDateTime::parse("2026-06-01T00:00:00Z", &Rfc3339).unwrap();
        for (text, why) in [
            ("99999999999days", "before the Unix epoch"),
            ("1000years", "before the Unix epoch"),
            ("57years", "before the Unix epoch"),
            ("1026-01-01T00:00:00Z", "before the Unix epoch"),
            ("1969-12-31T23:59:59Z", "before the Unix epoch"),
            ("1970-01-01T01:00:00+02:00", "before the Unix epoch"),
            ("18446744073709551615s", "before the Unix epoch"),
            ("99999999999999999999999days", "before the Unix epoch"),
            ("10000-01-01T00:00:00Z", "after the year 9999"),
            ("9999-12-31T23:00:00-05:00", "after the year 9999"),
            ("", "neither an RFC 3339 time nor a duration"),
            ("-2h", "neither an RFC 3339 time nor a duration"),
        ] {
            let err = parse_when_at(text, now).unwrap_err();
            assert!(err.starts_with(why), "{text}: {err}");
        }
        for (text, at) in [
            ("1970-01-01T00:00:00Z", OffsetDateTime::UNIX_EPOCH),
            ("56years", now - time::Duration::seconds(56 * 31_557_600)),
            ("0s", now),
        ] {
            assert_eq!(parse_when_at(text, now), Ok(at), "{text}");
        }
        let last = parse_when_at("9999-12-31T23:59:59.999999999Z", now).unwrap();
        assert_eq!(last.year(), 9999);
    }

    #[test]
    fn until_before_since_is_refused() {
        let (early, late) = (OffsetDateTime::UNIX_EPOCH, OffsetDateTime::now_utc());
        assert!(check_range(Some(late), Some(early)).is_err());
        for (since, until) in [
            (Some(early), Some(late)),
            (Some(late), Some(late)),
            (None, Some(early)),
            (Some(late), None),
        ] {
            check_range(since, until).unwrap();
        }
    }

    proptest::proptest! {
        /// Any text: a time between 1970 and 9999 in UTC, or one of the reasons.
        #[test]
        fn any_text_is_a_representable_time_or_a_reason(text in ".{0,40}") {
            check(&text)?;
        }

        /// Durations of any size and unit, up to the parser's own limit.
        #[test]
        fn any_duration_ago_is_representable_or_refused(
            n in proptest::prelude::any::<u64>(),
            unit in proptest::sample::select(vec![
                "ns", "us", "ms", "s", "m", "h", "days", "weeks", "months", "years", "y",
            ]),
        ) {
            check(&format!("{n}{unit}"))?;
        }

        /// RFC 3339 times of every year and offset the syntax allows.
        #[test]
        fn any_rfc3339_time_is_representable_or_refused(
            year in 0u32..=99_999,
            month in 1u8..=12,
            day in 1u8..=31,
            hour in 0u8..=23,
            offset in -23i8..=23,
        ) {
            let sign = if offset < 0 { '-' } else { '+' };
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:59:59{sign}{:02}:00",
                offset.unsigned_abs()
            );
            check(&text)?;
        }
    }

    proptest::proptest! {
        /// The parsers as the command line runs them: any value of a time
        /// filter makes a command or a usage error (exit code 2), never a panic.
        #[test]
        fn any_time_filter_value_is_a_command_or_a_usage_error(
            value in "[0-9]{1,25}(ns|s|h|days|years)|[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})|\\PC{0,20}",
            command in proptest::sample::select(vec![
                &["dlq", "list", "--since"][..],
                &["dlq", "purge", "--until"][..],
                &["dlq", "replay", "--since", "1h", "--until"][..],
                &["replay", "--since"][..],
                &["replay", "--since", "2h", "--until"][..],
            ]),
        ) {
            use clap::Parser as _;
            let args = std::iter::once("softphone-bridge")
                .chain(command.iter().copied())
                .chain([value.as_str()]);
            if let Err(e) = crate::cli::Cli::try_parse_from(args) {
                proptest::prop_assert_eq!(e.exit_code(), 2, "{}", e);
            }
        }
    }

    /// The property every parsed time holds, whatever the input.
    fn check(text: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        let now = OffsetDateTime::now_utc();
        match parse_when_at(text, now) {
            Ok(at) => {
                proptest::prop_assert!(at >= OffsetDateTime::UNIX_EPOCH, "{text:?} -> {at}");
                proptest::prop_assert!(at.year() <= 9999, "{text:?} -> {at}");
                proptest::prop_assert_eq!(at.offset(), time::UtcOffset::UTC);
            }
            Err(why) => proptest::prop_assert!(
                [BEFORE_EPOCH, AFTER_9999, NEITHER].contains(&why.as_str()),
                "{text:?}: {why}"
            ),
        }
        Ok(())
    }

    #[test]
    fn no_bar_for_scripts() {
        assert!(progress_bar(10, true, "0 done").is_hidden());
    }
}
