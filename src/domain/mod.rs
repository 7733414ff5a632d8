//! The login event, its validation and the rules that turn it into a `user_logins` row.

mod app_version;
pub mod file_line;
mod login_event;
mod message;
mod rejection;
mod sent_timestamp;

pub use app_version::AppVersion;
pub use login_event::{user_id_of, DeviceId, Ip, LoginEvent};
pub use message::Message;
pub use rejection::{ReasonCode, RejectReason};
pub use sent_timestamp::{create_date, sent_at};

/// The two personal fields. Each has its own mask domain and vault namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiField {
    Ip,
    DeviceId,
}

impl PiiField {
    /// The name stored in the vault's `field` column and bound into masks and ciphertexts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::DeviceId => "device_id",
        }
    }
}
