//! `etl migrate`: the schema migrations in `migrations/`.

use anyhow::Context;
use sqlx::migrate::MigrateError;

use super::{DatabaseArgs, Outcome};
use crate::adapters::postgres::{DatabaseError, MIGRATOR};

pub async fn run(database: &DatabaseArgs) -> anyhow::Result<Outcome> {
    // The pool has connected first, so a refused or unverified connection is reported as such in
    // one line, not as a failed migration.
    let pool = super::pool(database).await?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|err| match err {
            MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _) => {
                anyhow::Error::new(DatabaseError::on(&pool)(source))
            }
            other => anyhow::Error::new(other),
        })
        .context("applying migrations")?;
    outln!(
        "schema is up to date ({} migrations)",
        MIGRATOR.iter().count()
    )?;
    Ok(Outcome::Success)
}
