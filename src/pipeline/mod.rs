//! The ingest pipeline: poll → transform → write → ack.

mod ingest;
pub mod progress;
mod stats;
mod transform;

pub use ingest::{run, IngestOptions};
pub use stats::{Stats, Summary};
pub use transform::Transformer;
