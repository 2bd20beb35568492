//! # eventbus-jobs
//!
//! The `eventbus` command and the jobs it runs. [`mirror`] is the simplest job (topics
//! in, one topic out, through the Kafka sink) and the model for job authors; [`demo`]
//! runs it end to end on librdkafka's in-process mock cluster; [`bench`] measures the
//! executor against a bare consumer. [`config`] loads the TOML job file.
#![deny(unsafe_code)]

mod alter_configs;
pub mod bench;
pub mod config;
pub mod demo;
pub mod demo_dlq;
pub mod dlq_cmd;
pub mod dlq_processor;
pub mod generate;
pub mod mirror;
mod progress;
pub mod schemas_cmd;
pub mod topic_io;
pub mod topics_cmd;
pub mod warehouse;
