//! A mask as a person gives it (to `etl recover`): 64 hexadecimal characters, as stored in
//! `user_logins`.

/// A mask, lowercase, parsed from text given on the command line or in a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mask(String);

impl Mask {
    /// Accepts either case and surrounding whitespace; `None` for anything else (the text is not
    /// echoed by callers: a mistyped ip is personal data).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_validated_and_lowercased() {
        let mask = "AB".repeat(32);
        assert_eq!(
            Mask::parse(&format!(" {mask} ")).map(Mask::into_string),
            Some("ab".repeat(32))
        );
        assert_eq!(Mask::parse("abc"), None);
        assert_eq!(Mask::parse(&"g".repeat(64)), None);
    }
}
