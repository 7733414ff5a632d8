use std::process::ExitCode;

use etl::cli::Command;
use etl::commands::{self, Outcome};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 done, 1 nothing found or nothing to do, 2 error or refused (clap also uses 2 for
/// usage errors); `commands::EXIT_CODES`.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = match etl::cli::parse(etl::cli::arguments()) {
        Ok(cli) => cli,
        Err(err) => match etl::cli::usage_message(&err) {
            Some(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
            None => err.exit(),
        },
    };
    let log_format = cli.log_format.into();
    etl::telemetry::init(log_format, &cli.log_level);
    #[cfg(target_os = "linux")]
    if let Err(err) = etl::startup::disable_core_dumps() {
        tracing::warn!(error = %err, "cannot turn core dumps off; a core dump could hold unwrapped keys");
    }
    match run(cli.command).await {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(err) if etl::error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::debug!(chain = %etl::error::chain(&err), "the error's whole chain");
            etl::telemetry::fatal(log_format, &etl::error::one_line(&err));
            ExitCode::from(2)
        }
    }
}

/// Runs a parsed command: each command module validates its own arguments.
async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Migrate(database) => commands::migrate::run(&database).await,
        Command::Keys(command) => commands::keys::run(command).await,
        Command::Ingest(args) => commands::ingest::run(args).await,
        Command::Lambda(args) => commands::lambda::run(args).await,
        Command::Recover(args) => commands::recover::run(args).await,
        Command::RecoveryService(args) => commands::recovery_service::run(args).await,
        Command::Audit(command) => commands::audit::run(command).await,
        Command::Doctor(args) => commands::doctor::run(args).await,
        Command::Quarantine(command) => commands::quarantine::run(command).await,
        Command::Forget(args) => commands::forget::run(args).await,
        Command::Export(args) => commands::export::run(args).await,
        Command::Retention(command) => commands::retention::run(command).await,
        Command::Privacy(command) => commands::privacy::run(command).await,
        Command::Domains(command) => commands::domains::run(command).await,
        Command::Dev(command) => commands::dev::run(command).await,
    }
}
