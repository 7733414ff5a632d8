use anyhow::Context;

use crate::adapters::postgres::{self, MIGRATOR};
use crate::cli::DatabaseArgs;

pub async fn run(database: &DatabaseArgs) -> anyhow::Result<()> {
    let pool = super::pool(database)?;
    // Connect first, so a refused or unverified connection is reported as such in one line, not
    // as a failed migration.
    pool.acquire().await.map(drop).map_err(|err| {
        anyhow::anyhow!(postgres::describe_connect_error(
            &err,
            &pool.connect_options()
        ))
    })?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    println!(
        "schema is up to date ({} migrations)",
        MIGRATOR.iter().count()
    );
    Ok(())
}
