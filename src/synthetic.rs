//! Realistic synthetic login events, shaped like the real queue: uuid user ids, dotted IPv4
//! addresses, SSN-shaped device ids, 2- and 3-part versions, a share of null locales, reused ips
//! and devices, and a share of malformed bodies.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    pub count: usize,
    pub null_locale_share: f64,
    pub duplicate_share: f64,
    pub malformed_share: f64,
    pub seed: Option<u64>,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        Self {
            count: 100,
            null_locale_share: 0.29,
            duplicate_share: 0.2,
            malformed_share: 0.01,
            seed: None,
        }
    }
}

const LOCALES: [&str; 10] = ["RU", "PH", "US", "BR", "ID", "DE", "IN", "FR", "NG", "CN"];
const DEVICE_TYPES: [&str; 2] = ["android", "ios"];
/// How many earlier (ip, device_id) pairs are remembered for reuse.
const HISTORY: usize = 10_000;

/// An endless-enough iterator of message bodies; yields `options.count` of them.
pub struct Generator {
    rng: StdRng,
    options: SyntheticOptions,
    history: Vec<(String, String)>,
    produced: usize,
}

impl Generator {
    pub fn new(options: SyntheticOptions) -> Self {
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng,
            options,
            history: Vec::new(),
            produced: 0,
        }
    }

    fn event(&mut self) -> String {
        let reuse = !self.history.is_empty() && self.rng.random_bool(self.options.duplicate_share);
        let (ip, device_id) = if reuse {
            let index = self.rng.random_range(0..self.history.len());
            self.history[index].clone()
        } else {
            let pair = (self.ip(), self.device_id());
            if self.history.len() < HISTORY {
                self.history.push(pair.clone());
            } else {
                let index = self.rng.random_range(0..HISTORY);
                self.history[index] = pair.clone();
            }
            pair
        };
        let locale = if self.rng.random_bool(self.options.null_locale_share) {
            "null".to_owned()
        } else {
            format!("\"{}\"", LOCALES[self.rng.random_range(0..LOCALES.len())])
        };
        format!(
            r#"{{"user_id": "{}", "app_version": "{}", "device_type": "{}", "ip": "{ip}", "locale": {locale}, "device_id": "{device_id}"}}"#,
            self.user_id(),
            self.app_version(),
            DEVICE_TYPES[self.rng.random_range(0..DEVICE_TYPES.len())],
        )
    }

    fn malformed(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.to_owned(),
            1 => "not json at all".to_owned(),
            2 => self
                .event()
                .replacen(r#""ip": ""#, r#""ip": "not-an-ip"#, 1),
            _ => self
                .event()
                .replacen(r#""app_version": ""#, r#""app_version": 1, "x": ""#, 1),
        }
    }

    fn user_id(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    fn ip(&mut self) -> String {
        let [a, b, c, d]: [u8; 4] = self.rng.random();
        format!("{}.{b}.{c}.{d}", a.max(1))
    }

    fn device_id(&mut self) -> String {
        let n: u32 = self.rng.random_range(0..1_000_000_000);
        format!(
            "{:03}-{:02}-{:04}",
            n / 1_000_000,
            n / 10_000 % 100,
            n % 10_000
        )
    }

    fn app_version(&mut self) -> String {
        let major = self.rng.random_range(0..10);
        let minor = self.rng.random_range(0..100);
        if self.rng.random_bool(0.5) {
            format!("{major}.{minor}")
        } else {
            format!("{major}.{}.{}", minor % 10, self.rng.random_range(0..10))
        }
    }
}

impl Iterator for Generator {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.produced == self.options.count {
            return None;
        }
        self.produced += 1;
        Some(if self.rng.random_bool(self.options.malformed_share) {
            self.malformed()
        } else {
            self.event()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LoginEvent;

    #[test]
    fn produces_the_requested_shape() {
        let options = SyntheticOptions {
            count: 2_000,
            seed: Some(7),
            ..SyntheticOptions::default()
        };
        let bodies: Vec<String> = Generator::new(options).collect();
        assert_eq!(bodies.len(), 2_000);
        let events: Vec<LoginEvent> = bodies
            .iter()
            .filter_map(|b| LoginEvent::parse(b).ok())
            .collect();
        let invalid = bodies.len() - events.len();
        assert!((5..=60).contains(&invalid), "{invalid} malformed");
        let null_locales = events.iter().filter(|e| e.locale.is_none()).count();
        assert!(
            (400..=800).contains(&null_locales),
            "{null_locales} null locales"
        );
        let distinct_ips: std::collections::HashSet<_> = events.iter().map(|e| e.ip).collect();
        assert!(
            distinct_ips.len() < events.len() * 9 / 10,
            "too few repeated ips"
        );
    }

    #[test]
    fn a_seed_makes_it_reproducible() {
        let options = SyntheticOptions {
            count: 10,
            seed: Some(1),
            ..SyntheticOptions::default()
        };
        let a: Vec<String> = Generator::new(options.clone()).collect();
        let b: Vec<String> = Generator::new(options).collect();
        assert_eq!(a, b);
    }
}
