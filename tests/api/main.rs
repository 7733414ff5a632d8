//! Integration tests against the real local stack: a PostgreSQL server and LocalStack's SQS and
//! KMS, reached over HTTP by the AWS SDK. Start it with `eval "$(scripts/stack up)"` (the test
//! command `scripts/test` does). Each test gets its own database, queue and KMS key.

mod audit;
mod batching;
mod docs;
mod domains;
mod faults;
mod file_source;
mod helpers;
mod hostile;
mod ingest;
mod key_lifecycle;
mod keys_and_schema;
mod lambda;
mod lifecycle;
mod misconfiguration;
mod privacy;
mod privileges;
mod quarantine;
mod query_protocol;
mod real_data;
mod recovery;
mod recovery_service;
mod risk;
mod tls;
