//! `--ip-prefix V4BITS,V6BITS`: how much of an ip an analyst may see, as the network it is in.

use std::net::IpAddr;

use super::Ip;

/// Prefix lengths for IPv4 and IPv6 addresses, validated: 1-31 and 1-127 bits. The full length
/// (32 or 128) would be the ip itself, personal data in a column analysts read: refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    v4: u8,
    v6: u8,
}

impl IpPrefix {
    pub fn new(v4: u8, v6: u8) -> Result<Self, &'static str> {
        if !(1..32).contains(&v4) || !(1..128).contains(&v6) {
            return Err(
                "the IPv4 prefix must be 1 to 31 bits and the IPv6 one 1 to 127 (24,48 is \
                        usual): a full-length prefix would be the ip itself",
            );
        }
        Ok(Self { v4, v6 })
    }

    pub fn v4(self) -> u8 {
        self.v4
    }

    pub fn v6(self) -> u8 {
        self.v6
    }

    /// The network `ip` is in: its first `bits` bits, the rest zero.
    pub fn network(self, ip: &Ip) -> Network {
        match ip.addr() {
            IpAddr::V4(addr) => {
                let kept = u32::MAX << (32 - u32::from(self.v4));
                Network {
                    addr: IpAddr::V4((u32::from(addr) & kept).into()),
                    bits: self.v4,
                }
            }
            IpAddr::V6(addr) => {
                let kept = u128::MAX << (128 - u32::from(self.v6));
                Network {
                    addr: IpAddr::V6((u128::from(addr) & kept).into()),
                    bits: self.v6,
                }
            }
        }
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "expected V4BITS,V6BITS, for example 24,48";
        let (v4, v6) = text.split_once(',').ok_or(FORM)?;
        let bits = |part: &str| part.trim().parse::<u8>().map_err(|_| FORM);
        Self::new(bits(v4)?, bits(v6)?)
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.v4, self.v6)
    }
}

/// A network: an address whose bits past the prefix are zero, and the prefix length (a
/// PostgreSQL `cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub bits: u8,
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(prefix: &str, ip: &str) -> String {
        let prefix: IpPrefix = prefix.parse().unwrap();
        prefix.network(&Ip::parse(ip).unwrap()).to_string()
    }

    #[test]
    fn networks_keep_the_prefix_bits_only() {
        assert_eq!(network("24,48", "203.0.113.77"), "203.0.113.0/24");
        assert_eq!(network("16,48", "203.0.113.77"), "203.0.0.0/16");
        assert_eq!(
            network("24,48", "2001:db8:abcd:12::1"),
            "2001:db8:abcd::/48"
        );
        assert_eq!(
            network("24,56", "2001:db8:abcd:12ff::1"),
            "2001:db8:abcd:1200::/56"
        );
        // An IPv4-mapped IPv6 address is canonicalised to IPv4 first.
        assert_eq!(network("24,48", "::ffff:198.51.100.9"), "198.51.100.0/24");
        assert_eq!(network("1,1", "255.1.1.1"), "128.0.0.0/1");
    }

    #[test]
    fn full_lengths_and_bad_forms_are_refused() {
        for text in [
            "32,48", "24,128", "0,48", "24", "24,", "a,48", "24;48", "300,48",
        ] {
            assert!(text.parse::<IpPrefix>().is_err(), "{text}");
        }
        assert_eq!(" 24 , 48 ".parse::<IpPrefix>(), IpPrefix::new(24, 48));
    }
}
