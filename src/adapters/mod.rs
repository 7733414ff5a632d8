//! Where the product meets the world: SQS, KMS, PostgreSQL; S3 for audit anchors and Secrets
//! Manager for `etl lambda`'s database URL.

pub mod aws;
pub mod kms;
pub mod postgres;
pub mod s3;
pub mod secrets;
pub mod sqs;
