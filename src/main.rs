use std::process::ExitCode;

use clap::Parser;

use etl::cli::Cli;

/// Exit codes: 0 success, 2 error (clap also uses 2 for usage errors).
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    etl::telemetry::init(cli.log_format, &cli.log_level);
    match etl::commands::run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
