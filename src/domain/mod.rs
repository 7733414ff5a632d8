//! The login event, its validation and the rules that turn it into a `user_logins` row; and the
//! values people pass in (masks, user ids, a justification, a queue URL), each parsed once.

mod app_version;
pub mod file_line;
mod ip_prefix;
mod justification;
mod login_event;
mod mask;
mod message;
mod queue_url;
mod rejection;
mod sent_timestamp;
mod user_id;

pub use app_version::AppVersion;
pub use ip_prefix::{IpPrefix, Network};
pub use justification::{BlankReason, Justification};
pub use login_event::{user_id_of, DeviceId, Ip, LoginEvent};
pub use mask::Mask;
pub use message::Message;
pub use queue_url::{InvalidQueueUrl, QueueUrl};
pub use rejection::{ReasonCode, RejectReason};
pub use sent_timestamp::{create_date, sent_at};
pub use user_id::{UserId, USER_ID_MAX_CHARS};

/// The two personal fields. Each has its own mask domain and vault namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiField {
    Ip,
    DeviceId,
}

impl PiiField {
    pub const ALL: [Self; 2] = [Self::Ip, Self::DeviceId];

    /// The field a stored name (`ip`, `device_id`) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.as_str() == name)
    }

    /// The name stored in the vault's `field` column and bound into masks and ciphertexts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::DeviceId => "device_id",
        }
    }
}
