//! A user id as a person gives it (to `etl forget` and `etl export`).

/// `user_logins.user_id` is varchar(128).
pub const USER_ID_MAX_CHARS: usize = 128;

/// A user id exactly as given, byte for byte (ingest stores ids as sent, so a trimmed id would
/// miss a user whose id has surrounding spaces), 1 to 128 characters, not blank. `Debug` does
/// not show it: the id names a person, and errors say where it was given instead.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// `None` when blank or longer than the column.
    pub fn parse(text: &str) -> Option<Self> {
        (!text.trim().is_empty() && text.chars().count() <= USER_ID_MAX_CHARS)
            .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserId(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_kept_exactly_and_bounded_and_not_shown_by_debug() {
        let id = UserId::parse(" u-1 ").unwrap();
        assert_eq!(id.as_str(), " u-1 ");
        assert!(!format!("{id:?}").contains("u-1"));
        assert!(UserId::parse("  ").is_none());
        assert!(UserId::parse(&"x".repeat(USER_ID_MAX_CHARS)).is_some());
        assert!(UserId::parse(&"x".repeat(USER_ID_MAX_CHARS + 1)).is_none());
    }
}
