//! `app_version` as the analysts' `integer` column.
//!
//! A version of one to three dot-separated numeric parts is encoded as
//! `major * 1_000_000 + minor * 1_000 + patch`, which is injective over versions and keeps their
//! order (2.10.0 > 2.9.0). Missing parts count as zero, so `"2.3"` and `"2.3.0"` (or `"2.00"` and
//! `"2.0"`) are the same version and get the same code; the exact received text is kept beside it
//! in `user_logins.app_version_text`.

use crate::domain::RejectReason;

/// Largest minor or patch part that fits the encoding.
pub const MAX_MINOR_PATCH: u32 = 999;
/// Largest major part for which the code still fits a PostgreSQL `integer`.
pub const MAX_MAJOR: u32 = (i32::MAX as u32 - 999_999) / 1_000_000;
/// Longest accepted text (`app_version_text` is `varchar(32)`).
pub const MAX_TEXT_CHARS: usize = 32;

/// A validated application version: its ordered numeric parts and its integer code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl AppVersion {
    /// Parses `"2"`, `"2.3"` or `"2.3.0"`: ASCII digits only, no sign, no blank part.
    pub fn parse(text: &str) -> Result<Self, RejectReason> {
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(RejectReason::TooLong {
                field: "app_version",
                max_chars: MAX_TEXT_CHARS,
            });
        }
        let mut parts = [0u32; 3];
        for (index, part) in text.split('.').enumerate() {
            let slot = parts
                .get_mut(index)
                .ok_or(RejectReason::InvalidAppVersion)?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RejectReason::InvalidAppVersion);
            }
            // Leading zeros are allowed ("2.00"); a part too long for u32 is out of range anyway.
            *slot = part
                .parse::<u32>()
                .map_err(|_| RejectReason::AppVersionOutOfRange)?;
        }
        let [major, minor, patch] = parts;
        if major > MAX_MAJOR || minor > MAX_MINOR_PATCH || patch > MAX_MINOR_PATCH {
            return Err(RejectReason::AppVersionOutOfRange);
        }
        Ok(Self {
            major,
            minor,
            patch,
        })
    }

    /// The value stored in `user_logins.app_version`.
    pub fn code(self) -> i32 {
        // In range by construction: MAX_MAJOR * 10^6 + 999_999 <= i32::MAX.
        (self.major * 1_000_000 + self.minor * 1_000 + self.patch) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_parts_in_order() {
        assert_eq!(
            AppVersion::parse("2.3.0").map(AppVersion::code),
            Ok(2_003_000)
        );
        assert_eq!(AppVersion::parse("0.96").map(AppVersion::code), Ok(96_000));
        assert_eq!(AppVersion::parse("7").map(AppVersion::code), Ok(7_000_000));
        let v2_10 = AppVersion::parse("2.10.0").map(AppVersion::code);
        let v2_9 = AppVersion::parse("2.9.0").map(AppVersion::code);
        assert!(v2_10.unwrap() > v2_9.unwrap());
    }

    #[test]
    fn equal_versions_share_a_code() {
        assert_eq!(AppVersion::parse("2.00"), AppVersion::parse("2.0"));
        assert_eq!(AppVersion::parse("2.3"), AppVersion::parse("2.3.0"));
    }

    #[test]
    fn rejects_malformed_text() {
        for text in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "v1", "1.-2", "+1", " 1", "1.2a", "١.٢",
        ] {
            assert_eq!(
                AppVersion::parse(text),
                Err(RejectReason::InvalidAppVersion),
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_out_of_range_parts() {
        assert_eq!(
            AppVersion::parse("1.1000"),
            Err(RejectReason::AppVersionOutOfRange)
        );
        assert_eq!(
            AppVersion::parse("1.0.1000"),
            Err(RejectReason::AppVersionOutOfRange)
        );
        assert_eq!(
            AppVersion::parse("2147.0"),
            Err(RejectReason::AppVersionOutOfRange)
        );
        assert_eq!(
            AppVersion::parse("99999999999"),
            Err(RejectReason::AppVersionOutOfRange)
        );
        let top = AppVersion::parse("2146.999.999").map(AppVersion::code);
        assert_eq!(top, Ok(2_146_999_999));
    }
}
