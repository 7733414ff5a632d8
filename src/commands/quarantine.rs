//! `etl quarantine list` (metadata only), `show` (one body, on record), `replay` (after a rule
//! change) and `purge`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use zeroize::Zeroizing;

use super::recover::{database_error, RecoverError};
use super::Outcome;
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::lifecycle::{self, Expiring};
use crate::adapters::postgres::{keyring, quarantine, recovery};
use crate::cli::{DatabaseArgs, OutputFormat, QuarantineReplayArgs, QuarantineShowArgs};
use crate::crypto::{KeyPurpose, QuarantineOpener, Sealer};
use crate::domain::{LoginEvent, Message};
use crate::pipeline::{Committer, LiveKeys, Stats};
use crate::startup::{self, KMS_ATTEMPT_TIMEOUT};

pub async fn list(database: &DatabaseArgs, format: OutputFormat, limit: i64) -> anyhow::Result<()> {
    anyhow::ensure!(limit > 0, "--limit must be at least 1");
    let pool = super::pool(database).await?;
    let entries = quarantine::list(&pool, limit)
        .await
        .context("reading etl.quarantine (the owner and etl_recoverer may)")?;
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

/// Opens one quarantined body on record: the request is committed to the audit log (under the
/// recovery policy) before the sealed body and its wrapped key are fetched; KMS unwraps the key;
/// the body goes to stdout and nowhere else.
pub async fn show(args: &QuarantineShowArgs) -> anyhow::Result<Outcome> {
    let reason = args.reason.trim();
    anyhow::ensure!(
        !reason.is_empty(),
        "--reason must say why the body is needed; it is recorded in the audit log"
    );
    let message_id = args.message_id.trim().to_owned();
    anyhow::ensure!(!message_id.is_empty(), "give the quarantined message's id");
    let ticket = crate::configuration::ticket(args.ticket.as_deref());
    let pool = super::audit_pool(&args.database).await?;
    let request_id = recovery::request_quarantine(&pool, &[message_id], reason, ticket.as_deref())
        .await
        .map_err(database_error(&pool))?;
    let rows = recovery::fetch_quarantine(&pool, request_id)
        .await
        .map_err(database_error(&pool))?;
    let [row] = rows.as_slice() else {
        anyhow::bail!("the quarantine request returned {} rows, not 1", rows.len());
    };
    match row.outcome.as_str() {
        "refused" => {
            return Err(RecoverError::Refused(row.detail.clone().unwrap_or_default()).into())
        }
        "not_found" => {
            eprintln!("not found: no quarantined message has this id");
            return Ok(Outcome::Negative);
        }
        _ => {}
    }
    let (Some(sealed), Some(purpose), Some(version), Some(kms_key_id), Some(wrapped)) = (
        &row.body_ciphertext,
        row.key_purpose.as_deref().and_then(KeyPurpose::parse),
        row.key_version,
        &row.kms_key_id,
        &row.wrapped_key,
    ) else {
        anyhow::bail!(
            "quarantined message {} has no key on record",
            row.message_id
        );
    };
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let key = kms
        .unwrap_data_key(kms_key_id, purpose, version, wrapped)
        .await
        .map_err(RecoverError::from)?;
    let body = match purpose {
        KeyPurpose::Quarantine => QuarantineOpener::new(&key).open(&row.message_id, sealed),
        _ => Sealer::new(&key).open_body(&row.message_id, sealed),
    }
    .map_err(|source| {
        anyhow::anyhow!(
            "quarantined body {} does not open: {source}",
            row.message_id
        )
    })?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Text => {
            stdout.write_all(&body)?;
            stdout.write_all(b"\n")?;
        }
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Opened<'a> {
                message_id: &'a str,
                body: &'a str,
            }
            let body = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
            let json = Zeroizing::new(serde_json::to_string(&Opened {
                message_id: &row.message_id,
                body: &body,
            })?);
            writeln!(stdout, "{}", json.as_str())?;
        }
    }
    Ok(Outcome::Success)
}

/// Quarantined messages per replay transaction.
const REPLAY_PAGE: i64 = 500;

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
struct Replayed {
    dry_run: bool,
    /// Quarantined messages that matched the filters.
    examined: u64,
    /// Valid under today's rules and written (with `dry_run`: would be).
    written: u64,
    /// Of forgotten users: dropped.
    forgotten_skipped: u64,
    /// Still invalid: left in quarantine.
    still_quarantined: u64,
}

/// `etl quarantine replay`: opens the bodies (the schema owner reads the quarantine and the
/// keys), validates them again and sends the valid ones through the ingest commit path with the
/// replay claim, which deletes each one's quarantine row in the same transaction as its row: a
/// second replay, or two at once, write nothing twice.
pub async fn replay(args: &QuarantineReplayArgs) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(&args.database).await?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let committer = if args.dry_run {
        None
    } else {
        let transformer = startup::load_transformer(&pool, &kms).await?;
        Some(Committer::new(
            pool.clone(),
            Arc::new(LiveKeys::new(transformer, kms.clone())),
            Arc::new(Stats::default()),
            i32::MAX,
        ))
    };
    let mut openers = Openers::new(&pool, &kms).await?;
    let mut report = Replayed {
        dry_run: args.dry_run,
        ..Replayed::default()
    };
    let mut after: Option<String> = None;
    loop {
        let page = lifecycle::quarantined_page(
            &pool,
            args.reason_code.as_deref(),
            args.id.as_deref(),
            after.as_deref(),
            REPLAY_PAGE,
        )
        .await
        .context("reading etl.quarantine (the schema owner may)")?;
        let Some(last) = page.last() else { break };
        after = Some(last.message_id.clone());
        report.examined += page.len() as u64;
        let mut messages = Vec::with_capacity(page.len());
        for row in &page {
            messages.push(openers.open(row).await?);
        }
        match &committer {
            Some(committer) => committer.replay(&messages).await?,
            None => {
                report.written += messages
                    .iter()
                    .filter(|m| LoginEvent::parse(&m.body).is_ok())
                    .count() as u64;
            }
        }
    }
    if let Some(committer) = &committer {
        let summary = committer.stats.summary(std::time::Duration::ZERO);
        report.written = summary.written;
        report.forgotten_skipped = summary.forgotten_skipped;
    }
    report.still_quarantined = report.examined - report.written - report.forgotten_skipped;
    let figures = format!(
        "examined={} written={} forgotten_skipped={} still_quarantined={}",
        report.examined, report.written, report.forgotten_skipped, report.still_quarantined
    );
    if !args.dry_run && report.examined > 0 {
        lifecycle::record(
            &pool,
            "quarantine_replay",
            args.reason_code.as_deref(),
            "replayed",
            &figures,
        )
        .await
        .context("recording the replay in the audit log")?;
    }
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string(&report)?),
        OutputFormat::Text => {
            let verb = if args.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            println!("{verb}: {figures}");
        }
    }
    Ok(if report.examined > 0 {
        Outcome::Success
    } else {
        eprintln!("not found: no quarantined message matches");
        Outcome::Negative
    })
}

/// The keys that open quarantined bodies, each unwrapped once, when first needed.
pub(super) struct Openers<'a> {
    kms: &'a Kms,
    stored: Vec<keyring::StoredKey>,
    quarantine: HashMap<i32, QuarantineOpener>,
    vault: HashMap<i32, Sealer>,
}

impl<'a> Openers<'a> {
    pub(super) async fn new(pool: &sqlx::PgPool, kms: &'a Kms) -> anyhow::Result<Self> {
        Ok(Self {
            kms,
            stored: keyring::list(pool)
                .await
                .context("reading the keyring (the schema owner may)")?,
            quarantine: HashMap::new(),
            vault: HashMap::new(),
        })
    }

    pub(super) async fn open(&mut self, row: &lifecycle::Quarantined) -> anyhow::Result<Message> {
        let purpose = KeyPurpose::parse(&row.key_purpose)
            .filter(|p| matches!(p, KeyPurpose::Quarantine | KeyPurpose::Vault))
            .with_context(|| format!("quarantined message {} has no key", row.message_id))?;
        let version = row.key_version;
        let missing = || {
            anyhow::anyhow!(
                "quarantined message {}: {} key version {version} is not in the keyring",
                row.message_id,
                purpose.as_str()
            )
        };
        let known = match purpose {
            KeyPurpose::Quarantine => self.quarantine.contains_key(&version),
            _ => self.vault.contains_key(&version),
        };
        if !known {
            let stored = self
                .stored
                .iter()
                .find(|k| k.purpose == purpose.as_str() && k.version == version)
                .ok_or_else(missing)?;
            let key = self
                .kms
                .unwrap_data_key(&stored.kms_key_id, purpose, version, &stored.wrapped_key)
                .await?;
            match purpose {
                KeyPurpose::Quarantine => {
                    self.quarantine.insert(version, QuarantineOpener::new(&key));
                }
                _ => {
                    self.vault.insert(version, Sealer::new(&key));
                }
            }
        }
        let body = match purpose {
            KeyPurpose::Quarantine => self
                .quarantine
                .get(&version)
                .ok_or_else(missing)?
                .open(&row.message_id, &row.body_ciphertext),
            _ => self
                .vault
                .get(&version)
                .ok_or_else(missing)?
                .open_body(&row.message_id, &row.body_ciphertext),
        }
        .map_err(|source| {
            anyhow::anyhow!(
                "quarantined body {} does not open: {source}",
                row.message_id
            )
        })?;
        Ok(Message {
            id: row.message_id.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            sent_timestamp: row.sent_at.map(|t| t.timestamp_millis().to_string()),
            receive_count: row.receive_count,
            line: None,
        })
    }
}

/// `etl quarantine purge --older-than DAYS`.
pub async fn purge(database: &DatabaseArgs, older_than: u32, dry_run: bool) -> anyhow::Result<()> {
    let pool = super::audit_pool(database).await?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(older_than));
    let expired = lifecycle::count_expired(&pool, Expiring::Quarantine, cutoff)
        .await
        .context("counting quarantined messages (the schema owner may)")?;
    if dry_run {
        println!("would purge {expired} quarantined messages older than {older_than} days");
        return Ok(());
    }
    let mut purged = 0u64;
    loop {
        let n = lifecycle::delete_expired_chunk(&pool, Expiring::Quarantine, cutoff, 10_000)
            .await
            .context("deleting quarantined messages")?;
        purged += n;
        if n < 10_000 {
            break;
        }
    }
    lifecycle::record(
        &pool,
        "quarantine_purge",
        None,
        "deleted",
        &format!("quarantine={purged} older_than_days={older_than}"),
    )
    .await
    .context("recording the purge in the audit log")?;
    println!("purged {purged} quarantined messages older than {older_than} days");
    Ok(())
}
