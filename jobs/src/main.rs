//! The `eventbus` command.

use std::process::ExitCode;

use clap::Parser;
use eventbus_jobs::cli::{Cli, Command};
use eventbus_runtime::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.check {
        return match eventbus_jobs::cli::check(&cli.command) {
            Ok(what) => {
                println!("{what}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                ExitCode::FAILURE
            }
        };
    }
    // The demo and the benchmark print their own report; job logs would bury it.
    let level = match cli.command {
        // The demo's dead-letter stage fails records on purpose: one warning per retry
        // and per letter (hundreds) would scroll its report away. Its summary counts
        // them; RUST_LOG=warn shows each.
        Command::Demo(_) => "warn,eventbus_operators::retry=error,eventbus_dlq::writer=error",
        Command::Bench(_)
        | Command::Schemas { .. }
        | Command::Topics { .. }
        | Command::Generate(_)
        | Command::Table { .. }
        | Command::Dlq { .. } => "warn",
        Command::Run(_) => "info",
    };
    telemetry::init_logging(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(eventbus_jobs::cli::dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&e);
            tracing::error!("{text}");
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `: `-separated, leaving out a cause whose words
/// the line already ends with (many errors print their source in their own message too).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let words = cause.to_string();
        if text.ends_with(&words) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&words);
    }
    text
}
