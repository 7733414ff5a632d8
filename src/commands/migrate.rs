use anyhow::Context;

use crate::adapters::postgres::MIGRATOR;
use crate::cli::DatabaseArgs;

pub async fn run(database: &DatabaseArgs) -> anyhow::Result<()> {
    let pool = super::pool(database)?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    println!(
        "schema is up to date ({} migrations)",
        MIGRATOR.iter().count()
    );
    Ok(())
}
