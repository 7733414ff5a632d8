use std::process::ExitCode;

use clap::Parser;

use etl::cli::Cli;
use etl::commands::Outcome;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 success, 1 not found, 2 error or denied (clap also uses 2 for usage errors).
#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_from(etl::cli::arguments());
    etl::telemetry::init(cli.log_format, &cli.log_level);
    #[cfg(target_os = "linux")]
    if let Err(err) = etl::startup::disable_core_dumps() {
        tracing::warn!(error = %err, "cannot turn core dumps off; a core dump could hold unwrapped keys");
    }
    match etl::commands::run(cli.command).await {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
