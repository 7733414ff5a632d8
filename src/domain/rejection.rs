//! Why a message body is not a valid login event.
//!
//! Every reason names the problem and the field but never carries a value from the body, so it can
//! be logged, counted and stored in quarantine without exposing personal data.

/// A specific, personal-data-free reason for rejecting a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object (found {found})")]
    NotObject { found: &'static str },
    #[error("field `{field}` appears more than once")]
    DuplicateField { field: &'static str },
    #[error("required field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("required field `{field}` is null")]
    NullField { field: &'static str },
    #[error("required field `{field}` is blank")]
    BlankField { field: &'static str },
    #[error("field `{field}` must be a string, found {found}")]
    WrongType {
        field: &'static str,
        found: &'static str,
    },
    #[error("field `{field}` is longer than {max_chars} characters")]
    TooLong {
        field: &'static str,
        max_chars: usize,
    },
    #[error("field `{field}` contains a NUL character, which PostgreSQL text cannot store")]
    ContainsNul { field: &'static str },
    #[error("field `ip` is not an IPv4 or IPv6 address")]
    InvalidIp,
    #[error("field `app_version` is not 1 to 3 dot-separated numeric parts")]
    InvalidAppVersion,
    #[error("field `app_version` has a part out of range (major <= 2146, minor and patch <= 999)")]
    AppVersionOutOfRange,
}

/// Stable, machine-readable names of why a message was quarantined, used in quarantine rows,
/// summaries and metrics labels: a [`RejectReason`] kind, or one of the two operational reasons
/// (the database refused the row; the message kept failing past the receive limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReasonCode {
    NotJson,
    NotObject,
    DuplicateField,
    MissingField,
    NullField,
    BlankField,
    WrongType,
    TooLong,
    ContainsNul,
    InvalidIp,
    InvalidAppVersion,
    AppVersionOutOfRange,
    /// PostgreSQL refused the message's row (a constraint or rule of the database's own).
    DatabaseRejected,
    /// Not written after as many receives as `--max-receives` allows.
    MaxReceivesExceeded,
}

impl ReasonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::DuplicateField => "duplicate_field",
            Self::MissingField => "missing_field",
            Self::NullField => "null_field",
            Self::BlankField => "blank_field",
            Self::WrongType => "wrong_type",
            Self::TooLong => "too_long",
            Self::ContainsNul => "contains_nul",
            Self::InvalidIp => "invalid_ip",
            Self::InvalidAppVersion => "invalid_app_version",
            Self::AppVersionOutOfRange => "app_version_out_of_range",
            Self::DatabaseRejected => "database_rejected",
            Self::MaxReceivesExceeded => "max_receives_exceeded",
        }
    }
}

impl RejectReason {
    pub fn code(&self) -> ReasonCode {
        match self {
            Self::NotJson(_) => ReasonCode::NotJson,
            Self::NotObject { .. } => ReasonCode::NotObject,
            Self::DuplicateField { .. } => ReasonCode::DuplicateField,
            Self::MissingField { .. } => ReasonCode::MissingField,
            Self::NullField { .. } => ReasonCode::NullField,
            Self::BlankField { .. } => ReasonCode::BlankField,
            Self::WrongType { .. } => ReasonCode::WrongType,
            Self::TooLong { .. } => ReasonCode::TooLong,
            Self::ContainsNul { .. } => ReasonCode::ContainsNul,
            Self::InvalidIp => ReasonCode::InvalidIp,
            Self::InvalidAppVersion => ReasonCode::InvalidAppVersion,
            Self::AppVersionOutOfRange => ReasonCode::AppVersionOutOfRange,
        }
    }
}
