//! Where messages come from: an SQS queue ([`sqs`]), a file of bodies ([`file`]), or the SQS
//! events AWS Lambda invokes a function with ([`lambda`]). Each turns its input into
//! `domain::Message` batches for the pipeline's commit path, and settles what it committed.

pub mod file;
pub mod lambda;
pub mod sqs;
