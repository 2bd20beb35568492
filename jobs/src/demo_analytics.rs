//! The demo's analytics stage: the analytics job in batch mode over the demo's
//! vehicle states on the mock cluster, and a few of the fleet-minutes it wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventbus_schemas::events::FleetMinute;
use eventbus_schemas::{Decoder, FileRegistry};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use serde::Serialize;

use crate::analytics::{AnalyticsArgs, AnalyticsConfig};
use crate::{progress, topic_io};

/// What the analytics stage found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyticsSummary {
    /// Vehicle states the job read.
    pub input_records: u64,
    /// Distinct (fleet, minute) results in the output topic.
    pub fleet_minutes: u64,
    /// Their `events` summed: every input record counted once, unless late.
    pub events: i64,
    /// Input records too late for their minute (counted, not aggregated).
    pub late: u64,
    /// The output topic.
    pub output_topic: String,
    /// The busiest fleet's first three minutes.
    pub sample: Vec<FleetMinute>,
}

/// Runs the analytics job over `input` until caught up, into fresh topics of `cluster`.
///
/// # Errors
/// A topic cannot be created, the job fails, or its output cannot be read.
pub async fn run(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    input: &str,
    quiet: bool,
) -> anyhow::Result<AnalyticsSummary> {
    let config = AnalyticsConfig {
        input: input.to_owned(),
        dead_letters: false,
        ..AnalyticsConfig::default()
    };
    for topic in [&config.output, &config.partials, &config.progress] {
        cluster
            .create_topic(topic, 10, 1)
            .with_context(|| format!("cannot create {topic}"))?;
    }
    let brokers = cluster.bootstrap_servers();
    let mut file = crate::config::JobFile::default();
    file.kafka.set("bootstrap.servers", brokers.clone());
    file.source = Some(eventbus_runtime::SourceConfig::new(
        "eventbus-demo-analytics",
        Vec::<String>::new(),
    ));
    file.analytics = Some(config.clone());
    let spinner = progress::bar(0, "aggregating fleet-minutes", quiet);
    let report = crate::analytics::run(
        &file,
        &AnalyticsArgs {
            until_caught_up: true,
        },
        std::future::pending(),
    )
    .await
    .context("the analytics stage failed")?;
    spinner.finish_and_clear();
    let out = {
        let (b, t) = (brokers.clone(), config.output.clone());
        tokio::task::spawn_blocking(move || topic_io::read_all(&b, &t, Duration::from_secs(60)))
            .await??
    };
    let decoder = Decoder::new(Arc::new(FileRegistry::embedded()?));
    let mut results: BTreeMap<(String, i64), FleetMinute> = BTreeMap::new();
    for m in &out {
        let v: FleetMinute = decoder.decode_typed(m.payload().unwrap_or_default(), None)?;
        results.insert((v.fleet_id.clone(), v.minute), v);
    }
    let mut per_fleet: BTreeMap<&str, i64> = BTreeMap::new();
    for ((fleet, _), v) in &results {
        *per_fleet.entry(fleet).or_default() += v.events;
    }
    let busiest = per_fleet
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(f, _)| (*f).to_owned());
    let sample = results
        .values()
        .filter(|v| Some(&v.fleet_id) == busiest.as_ref())
        .take(3)
        .cloned()
        .collect();
    Ok(AnalyticsSummary {
        input_records: report.partials.consumed,
        fleet_minutes: results.len() as u64,
        events: results.values().map(|v| v.events).sum(),
        late: report.late,
        output_topic: config.output,
        sample,
    })
}

impl AnalyticsSummary {
    /// The human-readable part of the demo's summary.
    pub fn render(&self) -> String {
        let counted = u64::try_from(self.events).unwrap_or(0) + self.late;
        let mut out = format!(
            "\nanalytics: {} fleet-minutes in {} from {} vehicle states ({} counted in a minute, {} late){}\n",
            self.fleet_minutes,
            self.output_topic,
            self.input_records,
            self.events,
            self.late,
            if counted == self.input_records {
                ""
            } else {
                " (MISMATCH)"
            }
        );
        for v in &self.sample {
            let minute = chrono_minute(v.minute);
            let mut statuses: Vec<String> = v
                .status_counts
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect();
            statuses.sort();
            out.push_str(&format!(
                "  {} {minute}  {:>3} vehicles {:>5} events  {:>5.1} km/h driving  battery >= {:>4.1}%  {}\n",
                v.fleet_id,
                v.vehicles_active,
                v.events,
                v.avg_speed_kph,
                v.min_battery_pct,
                statuses.join(", ")
            ));
        }
        out
    }
}

/// `2026-01-01T00:00Z` for a minute in ms since the epoch.
fn chrono_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%MZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn minutes_print_as_utc_dates() {
        assert_eq!(super::chrono_minute(0), "1970-01-01T00:00Z");
        assert_eq!(super::chrono_minute(1_767_225_600_000), "2026-01-01T00:00Z");
        assert_eq!(super::chrono_minute(951_782_460_000), "2000-02-29T00:01Z");
    }
}
