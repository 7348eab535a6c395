//! What the bridge tells its operators: logs (here: a tracing subscriber
//! writing to standard error, human or JSON) and [`metric`]s.

pub mod metric;
pub(crate) mod settings;

use tracing_subscriber::EnvFilter;

pub use settings::{LogFormat, LogSettings};

/// Installs the global subscriber. `RUST_LOG` wins over `level`, which wins
/// over `log.level`.
pub fn init(settings: &LogSettings, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or(&settings.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match settings.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(installed);
}
