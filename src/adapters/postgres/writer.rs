//! One transaction per batch: vault entries, `user_logins` rows, quarantine rows and processed
//! message ids, each written with one set-based statement over UNNEST-ed arrays.
//!
//! Idempotency: `etl.processed_messages` has the SQS message id as primary key. The batch claims
//! its ids with `INSERT ... ON CONFLICT DO NOTHING RETURNING`, and only claimed messages get a row
//! or a quarantine entry, in the same statement. A redelivered message whose id is committed makes
//! nothing new; one still being written by another consumer blocks on the key until that
//! transaction ends, then is skipped. Inputs are sorted so concurrent batches take row locks in
//! the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

/// Column arrays of one batch, as bound to the statements.
#[derive(Default)]
pub struct WriteBatch {
    pub mask_key_version: i32,
    pub vault_key_version: i32,
    pub vault: VaultColumns,
    pub logins: LoginColumns,
    pub quarantine: QuarantineColumns,
}

#[derive(Default)]
pub struct VaultColumns {
    pub field: Vec<&'static str>,
    pub mask: Vec<String>,
    pub ciphertext: Vec<Vec<u8>>,
}

#[derive(Default)]
pub struct LoginColumns {
    pub message_id: Vec<String>,
    pub user_id: Vec<String>,
    pub device_type: Vec<String>,
    pub masked_ip: Vec<String>,
    pub masked_device_id: Vec<String>,
    pub locale: Vec<Option<String>>,
    pub app_version: Vec<i32>,
    pub app_version_text: Vec<String>,
    pub create_date: Vec<NaiveDate>,
}

#[derive(Default)]
pub struct QuarantineColumns {
    pub message_id: Vec<String>,
    pub reason: Vec<&'static str>,
    pub detail: Vec<String>,
    pub sent_at: Vec<Option<DateTime<Utc>>>,
    pub receive_count: Vec<Option<i32>>,
    pub body_ciphertext: Vec<Vec<u8>>,
}

impl WriteBatch {
    pub fn message_count(&self) -> usize {
        self.logins.message_id.len() + self.quarantine.message_id.len()
    }
}

/// What a committed batch changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub written: u64,
    /// Newly quarantined messages by reason code.
    pub quarantined: BTreeMap<String, u64>,
    /// Messages already processed by an earlier delivery.
    pub duplicates_skipped: u64,
}

const INSERT_VAULT: &str = "\
INSERT INTO vault.entries (field, mask, mask_key_version, vault_key_version, ciphertext)
SELECT v.field, v.mask, $1, $2, v.ciphertext
FROM UNNEST($3::text[], $4::text[], $5::bytea[]) AS v(field, mask, ciphertext)
ORDER BY v.field, v.mask
ON CONFLICT (field, mask) DO NOTHING";

const INSERT_MESSAGES: &str = "\
WITH input AS (
    SELECT m.message_id, m.outcome
    FROM UNNEST($1::text[], $2::text[]) AS m(message_id, outcome)
), claimed AS (
    INSERT INTO etl.processed_messages (message_id, outcome)
    SELECT message_id, outcome FROM input ORDER BY message_id
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), logins AS (
    INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale,
                             app_version, create_date, app_version_text, mask_key_version, message_id)
    SELECT r.user_id, r.device_type, r.masked_ip, r.masked_device_id, r.locale,
           r.app_version, r.create_date, r.app_version_text, $3, r.message_id
    FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                $10::int4[], $11::text[], $12::date[])
         AS r(message_id, user_id, device_type, masked_ip, masked_device_id, locale,
              app_version, app_version_text, create_date)
    JOIN claimed USING (message_id)
    RETURNING 1
), quarantined AS (
    INSERT INTO etl.quarantine (message_id, reason, detail, received_at, sent_at, receive_count,
                                vault_key_version, body_ciphertext)
    SELECT q.message_id, q.reason, q.detail, now(), q.sent_at, q.receive_count, $13, q.body
    FROM UNNEST($14::text[], $15::text[], $16::text[], $17::timestamptz[], $18::int4[], $19::bytea[])
         AS q(message_id, reason, detail, sent_at, receive_count, body)
    JOIN claimed USING (message_id)
    RETURNING reason
)
SELECT 'written' AS kind, count(*) AS n FROM logins
UNION ALL
SELECT reason, count(*) FROM quarantined GROUP BY reason";

/// Writes one batch in one transaction. The caller must not list a message id twice.
pub async fn write_batch(pool: &PgPool, batch: &WriteBatch) -> Result<WriteOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !batch.vault.mask.is_empty() {
        sqlx::query(INSERT_VAULT)
            .bind(batch.mask_key_version)
            .bind(batch.vault_key_version)
            .bind(&batch.vault.field)
            .bind(&batch.vault.mask)
            .bind(&batch.vault.ciphertext)
            .execute(&mut *tx)
            .await?;
    }
    let (ids, outcomes) = claims(batch);
    let (logins, quarantine) = (&batch.logins, &batch.quarantine);
    let counts: Vec<(String, i64)> = sqlx::query_as(INSERT_MESSAGES)
        .bind(&ids)
        .bind(&outcomes)
        .bind(batch.mask_key_version)
        .bind(&logins.message_id)
        .bind(&logins.user_id)
        .bind(&logins.device_type)
        .bind(&logins.masked_ip)
        .bind(&logins.masked_device_id)
        .bind(&logins.locale)
        .bind(&logins.app_version)
        .bind(&logins.app_version_text)
        .bind(&logins.create_date)
        .bind(batch.vault_key_version)
        .bind(&quarantine.message_id)
        .bind(&quarantine.reason)
        .bind(&quarantine.detail)
        .bind(&quarantine.sent_at)
        .bind(&quarantine.receive_count)
        .bind(&quarantine.body_ciphertext)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;

    let mut outcome = WriteOutcome::default();
    for (kind, n) in counts {
        let n = u64::try_from(n).unwrap_or(0);
        if kind == "written" {
            outcome.written = n;
        } else {
            outcome.quarantined.insert(kind, n);
        }
    }
    let claimed = outcome.written + outcome.quarantined.values().sum::<u64>();
    outcome.duplicates_skipped = (batch.message_count() as u64).saturating_sub(claimed);
    Ok(outcome)
}

fn claims(batch: &WriteBatch) -> (Vec<&str>, Vec<&'static str>) {
    let written = batch
        .logins
        .message_id
        .iter()
        .map(|id| (id.as_str(), "written"));
    let quarantined = batch
        .quarantine
        .message_id
        .iter()
        .map(|id| (id.as_str(), "quarantined"));
    written.chain(quarantined).unzip()
}
