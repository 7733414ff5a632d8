//! `etl audit verify` and `etl audit head`: the audit log's hash chain, checked and anchored.

use anyhow::Context;

use super::Outcome;
use crate::adapters::postgres::audit;
use crate::cli::{DatabaseArgs, OutputFormat};
use crate::crypto::{ChainVerifier, GENESIS};

/// Exit 0 when the chain holds (and the anchor, if given), 1 when it does not.
pub async fn verify(database: &DatabaseArgs, anchor: Option<&str>) -> anyhow::Result<Outcome> {
    let mut verifier = match anchor {
        Some(text) => {
            let (id, hash) = parse_anchor(text)?;
            ChainVerifier::with_anchor(id, hash)
        }
        None => ChainVerifier::default(),
    };
    let pool = super::pool(database).await?;
    audit::verify(&pool, &mut verifier)
        .await
        .context("reading recovery.audit_log (the owner and etl_auditor may)")?;
    let (head_id, head_hash) = verifier.head();
    if let Some(broken) = verifier.first_break() {
        println!("FAIL  audit chain broken at row {}: {broken}", broken.id());
        return Ok(Outcome::Negative);
    }
    if !verifier.anchor_holds() {
        println!(
            "FAIL  the anchored head {} is not in the chain with that hash: rows up to it were \
             removed or rewritten",
            anchor.unwrap_or_default()
        );
        return Ok(Outcome::Negative);
    }
    println!(
        "OK    audit chain holds: {} rows, head {head_id}:{}",
        verifier.rows(),
        hex::encode(head_hash)
    );
    Ok(Outcome::Success)
}

/// `ID:HASH`, as `etl audit head` prints it.
fn parse_anchor(text: &str) -> anyhow::Result<(i64, Vec<u8>)> {
    let invalid = || anyhow::anyhow!("--anchor must be ID:HASH as `etl audit head` prints it");
    let (id, hash) = text.trim().split_once(':').ok_or_else(invalid)?;
    let id = id.parse::<i64>().map_err(|_| invalid())?;
    let hash = hex::decode(hash).map_err(|_| invalid())?;
    anyhow::ensure!(hash.len() == GENESIS.len(), invalid());
    Ok((id, hash))
}

pub async fn head(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<()> {
    let pool = super::pool(database).await?;
    let (id, hash) = audit::head(&pool)
        .await
        .context("reading the audit chain head")?
        .unwrap_or((0, GENESIS.to_vec()));
    let hash = hex::encode(hash);
    match format {
        OutputFormat::Text => println!("{id}:{hash}"),
        OutputFormat::Json => println!("{}", serde_json::json!({ "id": id, "hash": hash })),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_parsed_strictly() {
        let hash = "ab".repeat(32);
        assert_eq!(
            parse_anchor(&format!("12:{hash}")).unwrap(),
            (12, vec![0xab; 32])
        );
        assert!(parse_anchor("12").is_err());
        assert!(parse_anchor("x:ab").is_err());
        assert!(parse_anchor("12:abcd").is_err());
    }
}
