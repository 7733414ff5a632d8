//! Parsing and validation of a message body must never panic, and what it accepts must be
//! storable: no NUL, within the column limits, a canonical ip that parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    match etl::domain::LoginEvent::parse(body) {
        Ok(event) => {
            assert!(!event.user_id.contains('\0') && event.user_id.chars().count() <= 128);
            assert!(event.device_type.chars().count() <= 32);
            let ip = event.ip.canonical();
            assert_eq!(etl::domain::Ip::parse(&ip).map(|again| again.canonical()), Ok(ip));
            assert!(event.app_version.code() >= 0);
        }
        Err(reason) => {
            let _ = reason.to_string();
            let _ = reason.code().as_str();
        }
    }
});
