use anyhow::Context;

use crate::adapters::postgres::quarantine;
use crate::cli::{DatabaseArgs, OutputFormat};

pub async fn list(database: &DatabaseArgs, format: OutputFormat, limit: i64) -> anyhow::Result<()> {
    anyhow::ensure!(limit > 0, "--limit must be at least 1");
    let pool = super::pool(database)?;
    let entries = quarantine::list(&pool, limit)
        .await
        .context("reading etl.quarantine")?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        OutputFormat::Text => {
            if entries.is_empty() {
                println!("quarantine is empty");
            }
            for entry in &entries {
                println!(
                    "{}  {}  {:<24}  {}",
                    entry.received_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    entry.message_id,
                    entry.reason,
                    entry.detail
                );
            }
        }
    }
    Ok(())
}
