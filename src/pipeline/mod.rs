//! The ingest pipeline, whatever the source: batches of messages → transform (validate, mask,
//! seal) → commit, by a pool of writers. Sources (`crate::sources`) feed it and settle what it
//! committed (the SQS source deletes, the file source moves on).

pub mod batcher;
mod commit;
mod live_keys;
mod stats;
mod transform;
pub mod vault_state;
pub mod writers;

pub use commit::{backoff, CommitError, Committer};
pub use live_keys::LiveKeys;
pub use stats::{Stats, Summary};
pub use transform::Transformer;
pub use writers::WriteJob;
