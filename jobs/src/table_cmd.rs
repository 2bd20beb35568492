//! `eventbus table`: what the warehouse published, for loaders.

use anyhow::Context;
use clap::Subcommand;
use eventbus_operators::S3Config;
use eventbus_operators::sinks::parquet::{Cursor, PublishedFile, open_store, published_since};

/// The `table` subcommands.
#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// List the Parquet files published since a cursor, and the next cursor.
    ///
    /// For incremental loaders. Every file listed is whole and in place under its final
    /// name, each row of the table is in exactly one file, and a file comes after
    /// exactly one cursor: store the cursor printed last and pass it back with --after
    /// next time. Files are listed per table and partition in offset order.
    ///
    /// Text output: one line per file (its location, then its rows), then a last line
    /// `cursor <CURSOR>`. With --json, one object: {"files": [{"topic", "partition",
    /// "start_offset", "end_offset", "path", "url", "rows", "bytes"}], "cursor"}.
    Files {
        /// Table root: a path, file:///path or s3://bucket/prefix (S3 settings from the
        /// usual AWS_* environment variables, e.g. AWS_ENDPOINT_URL).
        #[arg(long, env = "EVENTBUS_TABLE_ROOT")]
        table_root: String,
        /// Only this table (source topic); repeat for more. Default: every table under
        /// the root.
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// The cursor an earlier run printed. Default: from the beginning.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct Listed<'a> {
    files: Vec<FileOut<'a>>,
    cursor: String,
}

#[derive(serde::Serialize)]
struct FileOut<'a> {
    #[serde(flatten)]
    file: &'a PublishedFile,
    url: String,
}

/// Carries out `eventbus table`.
///
/// # Errors
/// The cursor does not parse, or the store cannot be read.
pub async fn command(command: TableCommand) -> anyhow::Result<()> {
    match command {
        TableCommand::Files {
            table_root,
            topics,
            after,
            json,
        } => {
            let after = match &after {
                Some(text) => Cursor::decode(text).map_err(|e| anyhow::anyhow!("--after: {e}"))?,
                None => Cursor::default(),
            };
            // A local root that is not there is a mistake to name, not an empty table
            // (opening it would create it).
            if !table_root.contains("://") || table_root.starts_with("file://") {
                let dir = table_root.trim_start_matches("file://");
                anyhow::ensure!(
                    std::path::Path::new(dir).is_dir(),
                    "table root {table_root}: no such folder"
                );
            }
            let (store, root) = open_store(&table_root, &S3Config::default())?;
            let (files, next) = published_since(store.as_ref(), &root, &topics, &after)
                .await
                .with_context(|| format!("reading what was published under {table_root}"))?;
            let base = table_root.trim_end_matches('/');
            let out: Vec<FileOut<'_>> = files
                .iter()
                .map(|f| FileOut {
                    file: f,
                    url: format!("{base}/{}", f.path),
                })
                .collect();
            let cursor = next.encode();
            if json {
                println!("{}", serde_json::to_string(&Listed { files: out, cursor })?);
            } else {
                for f in &out {
                    println!("{}\t{}", f.url, f.file.rows);
                }
                println!("cursor {cursor}");
            }
            let rows: u64 = files.iter().map(|f| f.rows).sum();
            eprintln!(
                "{} files, {rows} rows published since the cursor",
                files.len()
            );
            Ok(())
        }
    }
}
