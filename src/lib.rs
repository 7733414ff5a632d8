//! `etl`: user-login events from Amazon SQS into PostgreSQL, with ip and device_id replaced by
//! keyed masks and their original values sealed in an encrypted vault.
//!
//! Layers: [`domain`] (messages, events, validation, app_version, the values people pass in) ·
//! [`crypto`] (keys, mask, seals, the audit chain) · [`adapters`] (SQS, KMS, PostgreSQL) ·
//! [`sources`] (SQS, file, Lambda) · [`pipeline`] (the batch contract; batch → transform →
//! write) · [`keys`] (loading and caching data keys) · [`recovery`] (opening values on record) ·
//! [`commands`] (the CLI's subcommands, each with its flags and settings).

#![warn(clippy::print_stdout)]

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod configuration;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod human;
pub mod keys;
pub mod pipeline;
pub mod recovery;
pub mod server;
pub mod sources;
pub mod startup;
pub mod synthetic;
pub mod telemetry;
