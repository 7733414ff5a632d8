//! Where messages come from: an SQS queue ([`sqs`]) or a file of bodies ([`file`]). Each turns
//! its input into `domain::Message` batches for the pipeline's writers, and settles what they
//! committed.

pub mod file;
pub mod sqs;
