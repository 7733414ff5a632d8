//! Where the product meets the world: SQS, KMS and PostgreSQL.

pub mod aws;
pub mod kms;
pub mod postgres;
pub mod sqs;
