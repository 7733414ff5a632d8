//! The ingest pipeline: poll → transform → write → ack.

mod commit;
pub mod file_source;
mod ingest;
pub mod known_masks;
pub mod progress;
mod stats;
mod transform;

pub use commit::{backoff, Committer};
pub use ingest::{run, IngestOptions};
pub use stats::{Stats, Summary};
pub use transform::Transformer;
