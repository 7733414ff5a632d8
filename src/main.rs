use std::process::ExitCode;

use clap::Parser;

use etl::cli::Cli;
use etl::commands::Outcome;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 success, 1 not found, 2 error or denied (clap also uses 2 for usage errors).
#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(etl::cli::arguments()) {
        Ok(cli) => cli,
        Err(err) => match etl::cli::usage_message(&err) {
            Some(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
            None => err.exit(),
        },
    };
    etl::telemetry::init(cli.log_format.into(), &cli.log_level);
    #[cfg(target_os = "linux")]
    if let Err(err) = etl::startup::disable_core_dumps() {
        tracing::warn!(error = %err, "cannot turn core dumps off; a core dump could hold unwrapped keys");
    }
    match etl::commands::run(cli.command).await {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(err) => {
            tracing::debug!(chain = %etl::error::chain(&err), "the error's whole chain");
            eprintln!("error: {}", etl::error::one_line(&err));
            ExitCode::from(2)
        }
    }
}
