//! One module per subcommand: each builds its settings, runs, and prints its result on stdout.

mod ingest;
mod keys;
mod migrate;
mod quarantine;
mod seed;

use sqlx::PgPool;

use crate::adapters::postgres;
use crate::cli::{Command, DevCommand, KeysCommand, QuarantineCommand};
use crate::configuration::DatabaseSettings;

/// Runs a parsed command.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(database) => migrate::run(&database).await,
        Command::Keys(KeysCommand::Init {
            database,
            kms_key_id,
        }) => keys::init(&database, &kms_key_id).await,
        Command::Ingest(args) => ingest::run(&args).await,
        Command::Quarantine(QuarantineCommand::List {
            database,
            format,
            limit,
        }) => quarantine::list(&database, format, limit).await,
        Command::Dev(DevCommand::Seed(args)) => seed::run(&args).await,
    }
}

/// A small pool for one-shot commands.
fn pool(database: &crate::cli::DatabaseArgs) -> anyhow::Result<PgPool> {
    let settings = DatabaseSettings::try_from(database)?;
    Ok(postgres::pool(settings.options, 2))
}
