//! PostgreSQL's binary `COPY` format, for the few column types the writer sends.
//!
//! Layout (PostgreSQL docs, "COPY — Binary Format"): an 11-byte signature, a 32-bit flags field
//! and a 32-bit header-extension length; then per row a 16-bit field count and, per field, a
//! 32-bit length (-1 for NULL) followed by the value in the type's binary send format; then a
//! 16-bit -1 trailer. All integers are big-endian. sqlx has no encoder for this format (only
//! `copy_in_raw`), and it is small enough to keep here with its tests.

use std::net::IpAddr;

use chrono::NaiveDate;

use crate::domain::Network;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A buffer of binary COPY data, header written on creation.
pub struct BinaryCopy {
    buffer: Vec<u8>,
}

impl BinaryCopy {
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(bytes + 32);
        buffer.extend_from_slice(SIGNATURE);
        buffer.extend_from_slice(&0i32.to_be_bytes());
        buffer.extend_from_slice(&0i32.to_be_bytes());
        Self { buffer }
    }

    /// Starts a row of `fields` values; exactly that many value calls must follow.
    pub fn row(&mut self, fields: i16) {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
    }

    /// A `text` or `varchar` value: its UTF-8 bytes.
    pub fn text(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    pub fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.buffer.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }

    /// A `bytea`: its bytes.
    pub fn bytea(&mut self, value: &[u8]) {
        self.bytes(value);
    }

    pub fn int4(&mut self, value: i32) {
        self.buffer.extend_from_slice(&4i32.to_be_bytes());
        self.buffer.extend_from_slice(&value.to_be_bytes());
    }

    /// A `cidr`: family (PGSQL_AF_INET 2, PGSQL_AF_INET6 3), prefix bits, 1 for cidr, the
    /// address's length, then its bytes; or NULL.
    pub fn optional_cidr(&mut self, value: Option<Network>) {
        let Some(network) = value else {
            self.buffer.extend_from_slice(&(-1i32).to_be_bytes());
            return;
        };
        let (family, octets) = match network.addr {
            IpAddr::V4(addr) => (2u8, addr.octets().to_vec()),
            IpAddr::V6(addr) => (3u8, addr.octets().to_vec()),
        };
        let len = octets.len() as u8;
        self.buffer
            .extend_from_slice(&(4 + i32::from(len)).to_be_bytes());
        self.buffer
            .extend_from_slice(&[family, network.bits, 1, len]);
        self.buffer.extend_from_slice(&octets);
    }

    /// A `date`: days since 2000-01-01, PostgreSQL's epoch.
    pub fn date(&mut self, value: NaiveDate) {
        let days = (value - postgres_epoch()).num_days();
        // chrono dates span about ±262,000 years, which fits in i32 days.
        self.int4(i32::try_from(days).unwrap_or(i32::MAX));
    }

    fn bytes(&mut self, value: &[u8]) {
        // Values here are bounded far below 2 GiB by validation (column limits).
        let len = i32::try_from(value.len()).unwrap_or(i32::MAX);
        self.buffer.extend_from_slice(&len.to_be_bytes());
        self.buffer.extend_from_slice(value);
    }

    /// The data with its trailer, ready for `PgCopyIn::send`.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1i16).to_be_bytes());
        self.buffer
    }
}

fn postgres_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_header_row_and_trailer() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.row(4);
        copy.text("ab");
        copy.optional_text(None);
        copy.int4(-2);
        copy.date(NaiveDate::from_ymd_opt(2000, 1, 2).unwrap());
        let data = copy.finish();
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        expected.extend_from_slice(&[0, 4]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'a', b'b']);
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(data, expected);
    }

    #[test]
    fn encodes_cidr_networks_and_null() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.optional_cidr(Some(Network {
            addr: "203.0.113.0".parse().unwrap(),
            bits: 24,
        }));
        copy.optional_cidr(None);
        let data = copy.finish();
        assert_eq!(
            &data[19..],
            &[0, 0, 0, 8, 2, 24, 1, 4, 203, 0, 113, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn dates_before_the_epoch_are_negative() {
        let mut copy = BinaryCopy::with_capacity(0);
        copy.date(NaiveDate::from_ymd_opt(1999, 12, 31).unwrap());
        let data = copy.finish();
        assert_eq!(&data[19..27], &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]);
    }
}
