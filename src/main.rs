//! The `softphone-bridge` binary: parse arguments, load settings, start logs,
//! run the command, report how it ended.

use std::process::ExitCode;

use clap::Parser;
use softphone_bridge::cli::{Cli, Command};
use softphone_bridge::config::Settings;
use softphone_bridge::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // One-shot commands print their result; their logs would be noise.
    let service = matches!(cli.command, Command::Run);
    telemetry::init(&settings.log, if service { None } else { Some("warn") });
    match cli.execute(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if service => {
            tracing::error!(error = format!("{e:#}"), "Stopped with an error.");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
