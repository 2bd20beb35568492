//! # eventbus-jobs
//!
//! The `eventbus` command and the jobs it runs. [`mirror`] is the simplest job (topics
//! in, one topic out, through the Kafka sink) and the model for job authors; [`demo`]
//! runs it end to end on librdkafka's in-process mock cluster; [`bench`] measures the
//! executor against a bare consumer. [`config`] loads the TOML job file.
#![deny(unsafe_code)]

pub mod alerting;
mod alter_configs;
pub mod analytics;
pub mod bench;
pub mod bench_alerting;
mod bench_sides;
pub mod cli;
pub mod config;
pub mod demo;
pub mod demo_analytics;
pub mod demo_dlq;
pub mod dlq_cmd;
pub mod dlq_processor;
pub mod generate;
pub mod mirror;
mod progress;
pub mod schemas_cmd;
pub mod serve;
pub mod table_cmd;
pub mod topic_io;
pub mod topics_cmd;
pub mod warehouse;

use std::path::{Path, PathBuf};

/// The catalog file commands read when none is given: the working copy's.
pub const DEFAULT_CATALOG: &str = "schemas/topics.toml";

/// The catalog file a command reads: the one given, else [`DEFAULT_CATALOG`] under the
/// current folder when there is one (inside a checkout), else the catalog of the source
/// tree this `eventbus` was built from, so the command works from any folder.
pub fn catalog_file(given: Option<&Path>) -> PathBuf {
    match given {
        Some(path) => path.to_owned(),
        None if Path::new(DEFAULT_CATALOG).is_file() => PathBuf::from(DEFAULT_CATALOG),
        None => eventbus_schemas::bundled_dir().join("topics.toml"),
    }
}

/// Loads [`catalog_file`]`(given)`.
///
/// # Errors
/// The file cannot be read or is not a valid catalog; the message names the file.
pub fn load_catalog(given: Option<&Path>) -> anyhow::Result<eventbus_schemas::Catalog> {
    use anyhow::Context;
    let path = catalog_file(given);
    eventbus_schemas::Catalog::load(&path)
        .with_context(|| format!("loading the catalog {}", path.display()))
}
