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
    /// New (ip, device_id) pairs made so far, and the seeded offsets of the permutations that
    /// turn this counter into values.
    fresh: u64,
    offsets: (u64, u64),
}

/// A prime: multiplying by it permutes the residues modulo the sizes below (it divides neither),
/// so new values never repeat until 10^9 of them were made.
const PERMUTATION: u64 = 2_654_435_761;
/// IPv4 addresses with a first octet of at least 1.
const IP_SPACE: u64 = (1 << 32) - (1 << 24);
const DEVICE_SPACE: u64 = 1_000_000_000;

impl Generator {
    pub fn new(options: SyntheticOptions) -> Self {
        let mut rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let offsets = (
            rng.random_range(0..IP_SPACE),
            rng.random_range(0..DEVICE_SPACE),
        );
        Self {
            rng,
            options,
            history: Vec::new(),
            produced: 0,
            fresh: 0,
            offsets,
        }
    }

    fn event(&mut self) -> String {
        let reuse = !self.history.is_empty() && self.rng.random_bool(self.options.duplicate_share);
        let (ip, device_id) = if reuse {
            let index = self.rng.random_range(0..self.history.len());
            self.history[index].clone()
        } else {
            let pair = self.new_pair();
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

    /// An ip and a device_id neither of which was made before.
    fn new_pair(&mut self) -> (String, String) {
        let n = self.fresh;
        self.fresh += 1;
        let ip = (n * PERMUTATION + self.offsets.0) % IP_SPACE + (1 << 24);
        let [a, b, c, d] = u32::try_from(ip).unwrap_or(u32::MAX).to_be_bytes();
        let device = (n * PERMUTATION + self.offsets.1) % DEVICE_SPACE;
        (
            format!("{a}.{b}.{c}.{d}"),
            format!(
                "{:03}-{:02}-{:04}",
                device / 1_000_000,
                device / 10_000 % 100,
                device % 10_000
            ),
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
    fn without_duplicates_every_value_is_distinct() {
        let options = SyntheticOptions {
            count: 20_000,
            seed: Some(3),
            duplicate_share: 0.0,
            malformed_share: 0.0,
            ..SyntheticOptions::default()
        };
        let events: Vec<LoginEvent> = Generator::new(options)
            .map(|b| LoginEvent::parse(&b).unwrap())
            .collect();
        let ips: std::collections::HashSet<_> = events.iter().map(|e| e.ip).collect();
        let devices: std::collections::HashSet<_> =
            events.iter().map(|e| e.device_id.clone()).collect();
        assert_eq!(ips.len(), 20_000);
        assert_eq!(devices.len(), 20_000);
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
