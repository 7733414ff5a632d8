//! `etl migrate`: the schema migrations in `migrations/`.

use anyhow::Context;
use sqlx::migrate::MigrateError;

use super::{DatabaseArgs, Outcome};
use crate::adapters::postgres::{DatabaseError, MIGRATOR};
use crate::human;

pub async fn run(database: &DatabaseArgs) -> anyhow::Result<Outcome> {
    // The pool has connected first, so a refused or unverified connection is reported as such in
    // one line, not as a failed migration.
    let pool = super::pool(database).await?;
    let before = applied(&pool).await;
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
    let total = MIGRATOR.iter().count();
    let newly = applied(&pool).await.saturating_sub(before);
    if newly == 0 {
        outln!("nothing to apply: the schema is up to date ({total} of {total} migrations)")?;
    } else {
        outln!(
            "applied {}: the schema is up to date ({total} of {total} migrations)",
            human::count(newly as i64, "migration")
        )?;
    }
    // Nothing to apply is done too: deployments run `migrate` before every start.
    Ok(Outcome::Success)
}

/// How many migrations the database has applied (none before the first run).
async fn applied(pool: &sqlx::PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}
