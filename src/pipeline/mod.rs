//! The ingest pipeline, whatever the source: batches of messages → transform (validate, mask,
//! seal) → commit, by a pool of writers, through the PostgreSQL sink. Sources (`crate::sources`)
//! feed it with the claim kind of what they send ([`batch`], the contract) and settle what it
//! committed (the SQS source deletes, the file source moves on, the Lambda source answers).

pub mod batch;
pub mod batcher;
pub mod budget;
mod commit;
mod stats;
mod transform;
pub mod vault_state;
pub mod writers;

pub use commit::{backoff, CommitError, Committer};
pub use stats::{Stats, Summary};
pub use transform::{PrepareError, Transformer};
pub use writers::WriteJob;
