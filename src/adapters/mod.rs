//! Where the product meets the world: SQS, KMS, PostgreSQL, and S3 for audit anchors.

pub mod aws;
pub mod kms;
pub mod postgres;
pub mod s3;
pub mod sqs;
