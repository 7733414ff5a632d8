//! `etl audit verify` and `etl audit head`: the audit log's hash chain, checked and anchored.

use anyhow::Context;

use clap::Subcommand;

use super::{DatabaseArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::postgres::{audit, recovery};
use crate::adapters::s3::{AnchorLocation, AnchorStore};
use crate::crypto::{parse_head, ChainVerifier, GENESIS};
use crate::domain::Justification;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain of the audit log; when it does not hold (a row was changed,
    /// removed or inserted out of order), the first bad id is named.
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
        /// A head printed earlier by `etl audit head` (`ID:HASH`): also check that this row still
        /// has this hash, which detects rows removed or rewritten after it was taken.
        #[arg(long, value_name = "ID:HASH")]
        anchor: Option<String>,
        /// Also check the chain against every anchor written to this S3 location by `etl audit
        /// anchor` or ingest's `--audit-anchor-to`.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        anchors: Option<String>,
    },
    /// Write the chain head to S3, outside the database, where its owner cannot rewrite it (S3
    /// Object Lock keeps it for the bucket's default retention, where the bucket has one);
    /// `etl audit verify --anchors` checks the chain against every one.
    Anchor {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Where: an S3 bucket and a prefix of its own for this audit log.
        #[arg(long, value_name = "s3://BUCKET/PREFIX")]
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Print the chain head (id and hash of the newest row), to keep outside the database.
    Head {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// List break-glass openings not reviewed yet; with an ID and --reason, review one (for
    /// members of etl_approver other than its requester; the review is an audit row).
    Review {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The break-glass request to review.
        #[arg(value_name = "ID", requires = "reason")]
        request_id: Option<i64>,
        /// What the review found. Required with an ID; recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// Output format of the list.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

pub async fn run(command: AuditCommand) -> anyhow::Result<Outcome> {
    match command {
        AuditCommand::Verify {
            database,
            anchor,
            anchors,
        } => verify(&database, anchor.as_deref(), anchors.as_deref()).await,
        AuditCommand::Anchor {
            database,
            to,
            format,
        } => anchor(&database, &to, format).await,
        AuditCommand::Head { database, format } => head(&database, format).await,
        AuditCommand::Review {
            database,
            request_id,
            reason,
            format,
        } => review(&database, request_id, reason.as_deref(), format).await,
    }
}

/// `etl audit review [ID --reason ...]`.
async fn review(
    database: &DatabaseArgs,
    request_id: Option<i64>,
    reason: Option<&str>,
    format: OutputFormat,
) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(database).await?;
    let refused = super::approver_error(&pool);
    if let Some(id) = request_id {
        let why = Justification::parse(reason.unwrap_or_default(), None, "in the audit log")?;
        recovery::review(&pool, id, why.reason())
            .await
            .map_err(&refused)?;
        outln!("break-glass request {id} reviewed")?;
        return Ok(Outcome::Success);
    }
    let openings = recovery::unreviewed(&pool).await.map_err(&refused)?;
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&openings)?)?,
        OutputFormat::Text if openings.is_empty() => {
            outln!("no break-glass opening waits for review")?
        }
        OutputFormat::Text => {
            outln!(
                "{:>8}  {:<20}  {:<16}  {:>5}  {:<20}  reason / ticket",
                "id",
                "requester",
                "what",
                "count",
                "requested"
            )?;
            for opening in &openings {
                outln!(
                    "{:>8}  {:<20}  {:<16}  {:>5}  {:<20}  {} / {}",
                    opening.id,
                    opening.requester,
                    opening.field.as_deref().unwrap_or("quarantined body"),
                    opening.subjects,
                    opening.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    opening.reason.as_deref().unwrap_or(""),
                    opening.ticket.as_deref().unwrap_or("-"),
                )?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// Exit 0 when the chain holds (and every anchor given), 1 when it does not.
async fn verify(
    database: &DatabaseArgs,
    anchor: Option<&str>,
    stored: Option<&str>,
) -> anyhow::Result<Outcome> {
    let mut anchors = Vec::new();
    if let Some(text) = anchor {
        anchors.push(parse_anchor(text)?);
    }
    if let Some(location) = stored {
        let store = anchor_store(location).await?;
        anchors.extend(
            store
                .list()
                .await
                .with_context(|| format!("reading the anchors in {}", store.location()))?,
        );
    }
    let mut verifier = ChainVerifier::with_anchors(anchors);
    let pool = super::pool(database).await?;
    audit::verify(&pool, &mut verifier)
        .await
        .context("reading recovery.audit_log (the owner and etl_auditor may)")?;
    let (head_id, head_hash) = verifier.head();
    if let Some(broken) = verifier.first_break() {
        outln!("FAIL  audit chain broken at row {}: {broken}", broken.id())?;
        return Ok(Outcome::Negative);
    }
    if let Some(id) = verifier.first_broken_anchor() {
        outln!(
            "FAIL  the anchored head at row {id} is not in the chain with that hash: rows up to \
             it were removed or rewritten"
        )?;
        return Ok(Outcome::Negative);
    }
    let anchored = match verifier.anchors() {
        0 => String::new(),
        1 => ", and its 1 anchor holds".to_owned(),
        n => format!(", and all {n} anchors hold"),
    };
    outln!(
        "OK    audit chain holds: {}, head {head_id}:{}{anchored}",
        crate::human::count(verifier.rows() as i64, "row"),
        hex::encode(head_hash)
    )?;
    Ok(Outcome::Success)
}

/// `ID:HASH`, as `etl audit head` prints it.
fn parse_anchor(text: &str) -> anyhow::Result<(i64, Vec<u8>)> {
    parse_head(text.trim())
        .ok_or_else(|| anyhow::anyhow!("--anchor must be ID:HASH as `etl audit head` prints it"))
}

async fn anchor_store(location: &str) -> anyhow::Result<AnchorStore> {
    let location = AnchorLocation::parse(location)?;
    Ok(AnchorStore::new(
        &aws::load_config(S3_ATTEMPT_TIMEOUT).await,
        location,
    ))
}

/// S3 calls are short; this bounds each attempt.
const S3_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `etl audit anchor --to s3://...`.
async fn anchor(
    database: &DatabaseArgs,
    to: &str,
    format: OutputFormat,
) -> anyhow::Result<Outcome> {
    let store = anchor_store(to).await?;
    let pool = super::pool(database).await?;
    let (id, hash) = audit::head(&pool)
        .await
        .context("reading the audit chain head")?
        .unwrap_or((0, GENESIS.to_vec()));
    let written = store.put(id, &hash).await?;
    let hash = hex::encode(hash);
    match format {
        OutputFormat::Text => outln!(
            "anchored {id}:{hash} at {}{}",
            written.uri,
            if written.locked {
                " (locked by the bucket's Object Lock retention)"
            } else {
                " (the bucket has no Object Lock retention: its writers can delete it)"
            }
        )?,
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({ "id": id, "hash": hash, "uri": written.uri, "locked": written.locked })
        )?,
    }
    Ok(Outcome::Success)
}

async fn head(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<Outcome> {
    let pool = super::pool(database).await?;
    let (id, hash) = audit::head(&pool)
        .await
        .context("reading the audit chain head")?
        .unwrap_or((0, GENESIS.to_vec()));
    let hash = hex::encode(hash);
    match format {
        OutputFormat::Text => outln!("{id}:{hash}")?,
        OutputFormat::Json => outln!("{}", serde_json::json!({ "id": id, "hash": hash }))?,
    }
    Ok(Outcome::Success)
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
