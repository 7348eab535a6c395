//! What the operators' commands (`dlq`, `replay`) share at the terminal:
//! times given on the command line, asking before changing anything, and a
//! progress bar.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A command-line time: RFC 3339, or a duration ago (`2h`, `3days`).
pub(crate) fn parse_when(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let ago = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration such as 2h"))?;
    Ok(OffsetDateTime::now_utc() - ago)
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
    }

    #[test]
    fn no_bar_for_scripts() {
        assert!(progress_bar(10, true, "0 done").is_hidden());
    }
}
