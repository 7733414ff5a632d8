//! `create_date`: the UTC date on which SQS received the message.

use chrono::{DateTime, NaiveDate, Utc};

/// Epoch values below this are seconds, at or above it milliseconds. 10^11 seconds is the year
/// 5138 and 10^11 milliseconds is March 1973, so no plausible timestamp is ambiguous. Real SQS
/// sends milliseconds; the reference LocalStack image sends seconds.
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// The instant of a `SentTimestamp` attribute, if it holds a plausible epoch value.
pub fn sent_at(sent_timestamp: Option<&str>) -> Option<DateTime<Utc>> {
    let value = sent_timestamp?
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)?;
    if value < MILLIS_THRESHOLD {
        DateTime::from_timestamp(value, 0)
    } else {
        DateTime::from_timestamp_millis(value)
    }
}

/// The UTC date of the `SentTimestamp` attribute, or of `now` when the attribute is missing or
/// unreadable.
pub fn create_date(sent_timestamp: Option<&str>, now: DateTime<Utc>) -> NaiveDate {
    sent_at(sent_timestamp).unwrap_or(now).date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    }

    #[test]
    fn reads_milliseconds_and_seconds() {
        let day = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        assert_eq!(create_date(Some("1709251200000"), now()), day);
        assert_eq!(create_date(Some("1709251200"), now()), day);
        assert_eq!(create_date(Some("1709337599999"), now()), day);
    }

    #[test]
    fn falls_back_to_processing_date() {
        let today = now().date_naive();
        assert_eq!(create_date(None, now()), today);
        assert_eq!(create_date(Some("soon"), now()), today);
        assert_eq!(create_date(Some("-5"), now()), today);
        assert_eq!(create_date(Some("99999999999999999"), now()), today);
    }
}
