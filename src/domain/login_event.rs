//! Parsing and validating one SQS message body into a [`LoginEvent`].
//!
//! The body is read with a hand-written serde visitor instead of `serde_json::Value` so that
//! (a) each field's JSON type is known without allocating a tree, (b) a repeated key is detected
//! instead of silently keeping the last value, and (c) a missing field, a `null` and a value of the
//! wrong type are told apart. Unknown extra fields are ignored: producers may add fields without
//! breaking ingestion, and an ignored field is never stored anywhere.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::domain::{AppVersion, RejectReason};

/// Column limits of `user_logins` (characters, as PostgreSQL `varchar(n)` counts them).
use super::USER_ID_MAX_CHARS as USER_ID_MAX;
const DEVICE_TYPE_MAX: usize = 32;
const LOCALE_MAX: usize = 32;
/// device_id is stored only masked and sealed; this bound keeps vault rows small.
const DEVICE_ID_MAX: usize = 256;
/// The longest textual IPv6 form (IPv4-mapped, fully written) is 45 characters.
const IP_TEXT_MAX: usize = 64;

/// A validated login event. The personal fields are wrapped so that `Debug` never prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginEvent {
    pub user_id: String,
    pub device_type: String,
    pub ip: Ip,
    pub device_id: DeviceId,
    /// `None` when the producer sent `null` (an unknown locale) or a blank string.
    pub locale: Option<String>,
    pub app_version: AppVersion,
    /// The app_version exactly as received.
    pub app_version_text: String,
}

/// An IP address in canonical form: IPv4-mapped IPv6 addresses are folded to IPv4 so that one host
/// always has one mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ip(IpAddr);

impl Ip {
    pub fn parse(text: &str) -> Result<Self, RejectReason> {
        let trimmed = text.trim();
        if trimmed.len() > IP_TEXT_MAX {
            return Err(RejectReason::InvalidIp);
        }
        trimmed
            .parse::<IpAddr>()
            .map(|addr| Self(addr.to_canonical()))
            .map_err(|_| RejectReason::InvalidIp)
    }

    /// The canonical address (an IPv4-mapped IPv6 one as IPv4).
    pub fn addr(&self) -> IpAddr {
        self.0
    }

    /// The canonical text (RFC 5952 for IPv6) that is masked and sealed.
    pub fn canonical(&self) -> String {
        self.0.to_string()
    }
}

impl fmt::Debug for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ip([redacted])")
    }
}

/// A device identifier, trimmed of surrounding whitespace.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(text: &str) -> Result<Self, RejectReason> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(RejectReason::BlankField { field: "device_id" });
        }
        if trimmed.chars().count() > DEVICE_ID_MAX {
            return Err(RejectReason::TooLong {
                field: "device_id",
                max_chars: DEVICE_ID_MAX,
            });
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn canonical(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceId([redacted])")
    }
}

impl LoginEvent {
    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Self, RejectReason> {
        let raw = RawEvent::parse(body)?;
        if let Some(field) = raw.duplicate {
            return Err(RejectReason::DuplicateField { field });
        }
        let user_id = required_text(raw.user_id, "user_id", USER_ID_MAX)?;
        let app_version_text = required_text(raw.app_version, "app_version", usize::MAX)?;
        let device_type = required_text(raw.device_type, "device_type", DEVICE_TYPE_MAX)?;
        let ip = Ip::parse(&required_text(raw.ip, "ip", usize::MAX)?)?;
        let locale = optional_text(raw.locale, "locale", LOCALE_MAX)?;
        let device_id = DeviceId::parse(&required_text(raw.device_id, "device_id", usize::MAX)?)?;
        let app_version = AppVersion::parse(&app_version_text)?;
        Ok(Self {
            user_id,
            device_type,
            ip,
            device_id,
            locale,
            app_version,
            app_version_text,
        })
    }
}

/// The `user_id` of a body that may fail validation otherwise: a quarantined message still
/// belongs to its user, and is erased with them. `None` when the body yields no text user id.
pub fn user_id_of(body: &str) -> Option<String> {
    let raw = RawEvent::parse(body).ok()?;
    match raw.user_id {
        JsonField::Text(text) if !text.trim().is_empty() => Some(text.into_owned()),
        _ => None,
    }
}

fn required_text(
    value: JsonField<'_>,
    field: &'static str,
    max_chars: usize,
) -> Result<String, RejectReason> {
    match value {
        JsonField::Missing => Err(RejectReason::MissingField { field }),
        JsonField::Null => Err(RejectReason::NullField { field }),
        JsonField::Other(found) => Err(RejectReason::WrongType { field, found }),
        JsonField::Text(text) => {
            check_text(&text, field, max_chars)?;
            if text.trim().is_empty() {
                return Err(RejectReason::BlankField { field });
            }
            Ok(text.into_owned())
        }
    }
}

fn optional_text(
    value: JsonField<'_>,
    field: &'static str,
    max_chars: usize,
) -> Result<Option<String>, RejectReason> {
    match value {
        JsonField::Null => Ok(None),
        JsonField::Missing => Err(RejectReason::MissingField { field }),
        JsonField::Other(found) => Err(RejectReason::WrongType { field, found }),
        JsonField::Text(text) => {
            check_text(&text, field, max_chars)?;
            Ok((!text.trim().is_empty()).then(|| text.into_owned()))
        }
    }
}

fn check_text(text: &str, field: &'static str, max_chars: usize) -> Result<(), RejectReason> {
    if text.contains('\0') {
        return Err(RejectReason::ContainsNul { field });
    }
    if max_chars != usize::MAX && text.chars().count() > max_chars {
        return Err(RejectReason::TooLong { field, max_chars });
    }
    Ok(())
}

/// One field of the body as found, before validation.
#[derive(Debug, Default)]
enum JsonField<'de> {
    #[default]
    Missing,
    Null,
    Text(Cow<'de, str>),
    /// Any other JSON type, by name.
    Other(&'static str),
}

/// The six known fields of a body, plus the first key seen twice.
#[derive(Default)]
struct RawEvent<'de> {
    user_id: JsonField<'de>,
    app_version: JsonField<'de>,
    device_type: JsonField<'de>,
    ip: JsonField<'de>,
    locale: JsonField<'de>,
    device_id: JsonField<'de>,
    duplicate: Option<&'static str>,
}

impl<'de> RawEvent<'de> {
    fn parse(body: &'de str) -> Result<Self, RejectReason> {
        let mut de = serde_json::Deserializer::from_str(body);
        let raw = de.deserialize_any(RawEventVisitor).map_err(|err| {
            if err.classify() == serde_json::error::Category::Data {
                // Only our visitor produces data errors, and only for a top level that is valid
                // JSON but not an object; its message names the JSON type found.
                RejectReason::NotObject {
                    found: json_kind_of(body),
                }
            } else {
                // Syntax and end-of-input messages of serde_json name the problem and position,
                // never the input text.
                RejectReason::NotJson(err.to_string())
            }
        })?;
        de.end()
            .map_err(|err| RejectReason::NotJson(err.to_string()))?;
        Ok(raw)
    }
}

/// Names the JSON type of a document whose top level is not an object.
fn json_kind_of(body: &str) -> &'static str {
    match body.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

struct RawEventVisitor;

impl<'de> Visitor<'de> for RawEventVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::UserId => (&mut raw.user_id, "user_id"),
                Key::AppVersion => (&mut raw.app_version, "app_version"),
                Key::DeviceType => (&mut raw.device_type, "device_type"),
                Key::Ip => (&mut raw.ip, "ip"),
                Key::Locale => (&mut raw.locale, "locale"),
                Key::DeviceId => (&mut raw.device_id, "device_id"),
                Key::Unknown => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value_seed(FieldSeed)?;
            if matches!(slot, JsonField::Missing) {
                *slot = value;
            } else {
                raw.duplicate.get_or_insert(name);
            }
        }
        Ok(raw)
    }
}

/// A key of the body, matched without allocating.
enum Key {
    UserId,
    AppVersion,
    DeviceType,
    Ip,
    Locale,
    DeviceId,
    Unknown,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match name {
                    "user_id" => Key::UserId,
                    "app_version" => Key::AppVersion,
                    "device_type" => Key::DeviceType,
                    "ip" => Key::Ip,
                    "locale" => Key::Locale,
                    "device_id" => Key::DeviceId,
                    _ => Key::Unknown,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = JsonField<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = JsonField<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(JsonField::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(JsonField::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(JsonField::Text(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(JsonField::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(JsonField::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(JsonField::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(JsonField::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(JsonField::Other("a number"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonField::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(JsonField::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

    fn reject(body: &str) -> RejectReason {
        match LoginEvent::parse(body) {
            Ok(_) => panic!("accepted {body}"),
            Err(reason) => reason,
        }
    }

    fn with(field: &str, json_value: &str) -> String {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).unwrap();
        map.insert(field.into(), serde_json::from_str(json_value).unwrap());
        serde_json::to_string(&map).unwrap()
    }

    /// Adds a field with raw JSON text as its value (which may be too deep for `serde_json::Value`).
    fn with_raw(field: &str, raw: &str) -> String {
        let rest = without(field);
        format!(r#"{{"{field}": {raw}, {}"#, &rest[1..])
    }

    fn without(field: &str) -> String {
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).unwrap();
        map.remove(field);
        serde_json::to_string(&map).unwrap()
    }

    #[test]
    fn parses_a_valid_event() {
        let event = LoginEvent::parse(VALID).unwrap();
        assert_eq!(event.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(
            user_id_of(&with("ip", "\"not an ip\"")).as_deref(),
            Some("424cdd21-063a-43a7-b91b-7ca1a833afae")
        );
        assert_eq!(user_id_of(&with("user_id", "7")), None);
        assert_eq!(user_id_of("not json"), None);
        assert_eq!(event.device_type, "android");
        assert_eq!(event.ip.canonical(), "199.172.111.135");
        assert_eq!(event.device_id.canonical(), "593-47-5928");
        assert_eq!(event.locale.as_deref(), Some("RU"));
        assert_eq!(event.app_version.code(), 2_003_000);
        assert_eq!(event.app_version_text, "2.3.0");
    }

    #[test]
    fn null_locale_is_valid_and_unknown() {
        assert_eq!(
            LoginEvent::parse(&with("locale", "null")).unwrap().locale,
            None
        );
        assert_eq!(
            LoginEvent::parse(&with("locale", "\"  \"")).unwrap().locale,
            None
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = with("extra", r#"{"nested": [1, 2, {"deep": null}]}"#);
        assert!(LoginEvent::parse(&body).is_ok());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = with("device_type", r#""andr\u006fid""#);
        assert_eq!(LoginEvent::parse(&body).unwrap().device_type, "android");
    }

    #[test]
    fn the_malformed_sample_names_the_first_missing_field() {
        let reason = reject(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#);
        assert_eq!(reason, RejectReason::MissingField { field: "user_id" });
    }

    #[test]
    fn rejects_non_json_and_non_objects() {
        assert!(matches!(reject("not json"), RejectReason::NotJson(_)));
        assert!(matches!(reject(""), RejectReason::NotJson(_)));
        assert!(matches!(
            reject(&format!("{VALID} trailing")),
            RejectReason::NotJson(_)
        ));
        assert!(matches!(
            reject(r#"{"ip": "\ud800"}"#),
            RejectReason::NotJson(_)
        ));
        assert_eq!(
            reject("[1, 2]"),
            RejectReason::NotObject { found: "an array" }
        );
        assert_eq!(
            reject("\"text\""),
            RejectReason::NotObject { found: "a string" }
        );
        assert_eq!(reject("42"), RejectReason::NotObject { found: "a number" });
        assert_eq!(reject("null"), RejectReason::NotObject { found: "null" });
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(reject(&deep), RejectReason::NotObject { found: "an array" });
        // As deep as a 256 KiB SQS body allows, in a known and in an ignored field.
        let nested = format!("{}{}", "[".repeat(131_000), "]".repeat(131_000));
        assert_eq!(
            reject(&with_raw("ip", &nested)),
            RejectReason::WrongType {
                field: "ip",
                found: "an array"
            }
        );
        assert!(LoginEvent::parse(&with_raw("extra", &nested)).is_ok());
    }

    #[test]
    fn rejects_each_field_problem_specifically() {
        assert_eq!(
            reject(&without("ip")),
            RejectReason::MissingField { field: "ip" }
        );
        assert_eq!(
            reject(&without("locale")),
            RejectReason::MissingField { field: "locale" }
        );
        assert_eq!(
            reject(&with("user_id", "null")),
            RejectReason::NullField { field: "user_id" }
        );
        assert_eq!(
            reject(&with("device_type", "\" \"")),
            RejectReason::BlankField {
                field: "device_type"
            }
        );
        assert_eq!(
            reject(&with("app_version", "2")),
            RejectReason::WrongType {
                field: "app_version",
                found: "a number"
            }
        );
        assert_eq!(
            reject(&with("ip", "{}")),
            RejectReason::WrongType {
                field: "ip",
                found: "an object"
            }
        );
        assert_eq!(
            reject(&with("user_id", &format!("\"{}\"", "u".repeat(129)))),
            RejectReason::TooLong {
                field: "user_id",
                max_chars: 128
            }
        );
        assert_eq!(
            reject(&with("locale", r#""R\u0000U""#)),
            RejectReason::ContainsNul { field: "locale" }
        );
        assert_eq!(reject(&with("ip", "\"1.2.3\"")), RejectReason::InvalidIp);
        assert_eq!(
            reject(&with("ip", "\"010.1.1.1\"")),
            RejectReason::InvalidIp
        );
        assert_eq!(
            reject(&with("app_version", "\"2.x\"")),
            RejectReason::InvalidAppVersion
        );
        assert_eq!(
            reject(&with("device_id", "\"  \"")),
            RejectReason::BlankField { field: "device_id" }
        );
    }

    #[test]
    fn varchar_limits_count_characters_not_bytes() {
        let body = with("device_type", &format!("\"{}\"", "é".repeat(32)));
        assert!(LoginEvent::parse(&body).is_ok());
    }

    #[test]
    fn repeated_keys_are_rejected() {
        let body = VALID.replacen('{', r#"{"ip": "10.0.0.1", "#, 1);
        assert_eq!(reject(&body), RejectReason::DuplicateField { field: "ip" });
    }

    #[test]
    fn ips_are_canonicalised() {
        let ip = |text: &str| Ip::parse(text).unwrap().canonical();
        assert_eq!(ip(" 10.0.0.1 "), "10.0.0.1");
        assert_eq!(ip("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(ip("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(ip("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn debug_output_hides_personal_fields() {
        let shown = format!("{:?}", LoginEvent::parse(VALID).unwrap());
        assert!(!shown.contains("199.172.111.135"), "{shown}");
        assert!(!shown.contains("593-47-5928"), "{shown}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(body in "\\PC{0,400}") {
            let _ = LoginEvent::parse(&body);
        }

        #[test]
        fn arbitrary_bytes_as_lossy_text_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = LoginEvent::parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn any_unicode_in_free_text_fields_is_accepted(user in "[^\\x00]{1,64}", device in "[^\\x00]{1,32}") {
            proptest::prop_assume!(!user.trim().is_empty() && !device.trim().is_empty());
            let body = with("user_id", &serde_json::Value::String(user.clone()).to_string());
            let body = body.replace("\"android\"", &serde_json::Value::String(device.clone()).to_string());
            let event = LoginEvent::parse(&body).unwrap();
            proptest::prop_assert_eq!(event.user_id, user);
            proptest::prop_assert_eq!(event.device_type, device);
        }
    }

    #[test]
    fn reasons_never_echo_the_body() {
        for body in [
            "{\"ip\": 199.172.111.135}",
            "[\"593-47-5928\"",
            "{\"593-47-5928\": }",
            &with("ip", "\"199.172.111.x\""),
        ] {
            let text = reject(body).to_string();
            assert!(
                !text.contains("593-47-5928") && !text.contains("199.172"),
                "{text}"
            );
        }
    }
}
