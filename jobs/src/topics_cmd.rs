//! `eventbus topics plan|apply|list`: the catalog against a cluster.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventbus_runtime::KafkaProperties;
use eventbus_runtime::kafka::Diagnosing;
use eventbus_schemas::Catalog;
use eventbus_schemas::catalog::{CleanupPolicy, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::BaseConsumer;

use crate::topic_io::Cluster;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One difference between the catalog and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The topic is missing: create it with these settings.
    Create {
        /// Topic.
        topic: String,
        /// Partitions.
        partitions: i32,
        /// Replication factor.
        replication: i32,
        /// Topic configs to set.
        configs: Vec<(String, String)>,
    },
    /// A topic config differs.
    AlterConfig {
        /// Topic.
        topic: String,
        /// Config key.
        key: String,
        /// Value on the cluster.
        from: Option<String>,
        /// Value in the catalog.
        to: String,
    },
    /// The catalog wants more partitions.
    AddPartitions {
        /// Topic.
        topic: String,
        /// On the cluster.
        from: i32,
        /// In the catalog.
        to: i32,
    },
    /// The topic is missing, but its replication factor is above the cluster's broker
    /// count: refused (a broker may accept the create and leave a topic no producer can
    /// use, as tansu does).
    TooFewBrokers {
        /// Topic.
        topic: String,
        /// Replication factor asked for.
        replication: i32,
        /// Brokers in the cluster.
        brokers: usize,
    },
    /// The catalog wants fewer partitions: Kafka cannot do that, so it is refused.
    RemovePartitions {
        /// Topic.
        topic: String,
        /// On the cluster.
        from: i32,
        /// In the catalog.
        to: i32,
    },
}

impl Change {
    /// Whether [`apply`] refuses this change (and with it the whole plan). Such changes
    /// print with a leading `!`.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            Change::TooFewBrokers { .. } | Change::RemovePartitions { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create {
                topic,
                partitions,
                replication,
                configs,
            } => {
                let cfg: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(
                    f,
                    "+ create {topic} partitions={partitions} replication={replication} {}",
                    cfg.join(" ")
                )
            }
            Change::AlterConfig {
                topic,
                key,
                from,
                to,
            } => {
                write!(
                    f,
                    "~ {topic} {key}: {} -> {to}",
                    from.as_deref().unwrap_or("(unset)")
                )
            }
            Change::AddPartitions { topic, from, to } => {
                write!(f, "~ {topic} partitions: {from} -> {to}")
            }
            Change::TooFewBrokers {
                topic,
                replication,
                brokers,
            } => {
                write!(
                    f,
                    "! create {topic}: replication factor {replication}, but the cluster has \
                     {brokers} broker(s) (pass --replication-factor {brokers} for a \
                     development cluster)"
                )
            }
            Change::RemovePartitions { topic, from, to } => {
                write!(
                    f,
                    "! {topic} partitions: {from} -> {to} (a partition count cannot decrease)"
                )
            }
        }
    }
}

fn admin(cluster: &(impl Cluster + ?Sized)) -> anyhow::Result<AdminClient<Diagnosing>> {
    cluster
        .properties()
        .client_config()
        .create_with_context(Diagnosing::default())
        .context("cannot create an admin client")
}

/// What the cluster has: partitions per topic, and how many brokers it has.
fn cluster(
    look: &BaseConsumer<Diagnosing>,
    brokers: &str,
) -> anyhow::Result<(HashMap<String, i32>, usize)> {
    let md = eventbus_runtime::kafka::fetch_metadata(look, None, TIMEOUT)
        .map_err(|e| anyhow::anyhow!("could not reach the brokers {brokers}: {e}"))?;
    let topics = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect();
    Ok((topics, md.brokers().len()))
}

/// Waits until every created topic shows its partitions in the cluster's metadata.
///
/// A broker may answer CreateTopics without an error and still not create the topic
/// (tansu does so for a replication factor above its broker count); without this check
/// `apply` would report success and producers would fail later with "unknown topic".
fn await_created(
    look: &BaseConsumer<Diagnosing>,
    brokers: &str,
    created: &[(&str, i32)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (have, _) = cluster(look, brokers)?;
        let missing: Vec<String> = created
            .iter()
            .filter(|(topic, partitions)| have.get(*topic) != Some(partitions))
            .map(|(topic, partitions)| match have.get(*topic) {
                Some(n) => format!("{topic} ({n} of {partitions} partitions)"),
                None => format!("{topic} (missing)"),
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the broker accepted CreateTopics, but after {} s these topics are not in its metadata: {}",
                TIMEOUT.as_secs(),
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Dead letters are kept at least this long (30 days), however short the source's
/// retention: an operator needs time to look at them.
pub const DLQ_MIN_RETENTION_MS: i64 = 30 * 24 * 3_600_000;

/// The catalog's topics, each followed by its dead-letter topic and that topic's parked
/// topic (`<dlq>.parked`): same partitions and replication as the source, retention at
/// least [`DLQ_MIN_RETENTION_MS`] (forever stays forever), never compacted (letters
/// share keys with their originals).
pub fn with_dead_letter_topics(catalog: &Catalog) -> Vec<TopicSpec> {
    let mut all = Vec::with_capacity(catalog.topics.len() * 3);
    for t in &catalog.topics {
        let retention = if t.retention_ms == -1 {
            -1
        } else {
            t.retention_ms.max(DLQ_MIN_RETENTION_MS)
        };
        let dlq = t.dlq_topic();
        let letters = |name: String| TopicSpec {
            name,
            retention_ms: retention,
            cleanup_policy: CleanupPolicy::Delete,
            pii: Vec::new(),
            dlq: None,
            ..t.clone()
        };
        let parked = format!("{dlq}.parked");
        all.extend([t.clone(), letters(dlq), letters(parked)]);
    }
    all
}

/// Compares the catalog with the cluster. `replication` overrides the catalog's
/// replication factor (for single-broker development clusters).
///
/// # Errors
/// The brokers cannot be reached or configs cannot be described.
pub async fn plan(
    kafka: &(impl Cluster + ?Sized),
    catalog: &Catalog,
    replication: Option<i32>,
) -> anyhow::Result<Vec<Change>> {
    let admin = admin(kafka)?;
    let brokers = &kafka.brokers();
    let (existing, broker_count) = cluster(&crate::topic_io::inspector(kafka)?, brokers)?;
    let mut changes = Vec::new();
    for t in &with_dead_letter_topics(catalog) {
        let wanted = [
            ("retention.ms".to_owned(), t.retention_ms.to_string()),
            (
                "cleanup.policy".to_owned(),
                t.cleanup_policy.as_kafka().to_owned(),
            ),
        ];
        let Some(&have) = existing.get(&t.name) else {
            let replication = replication.unwrap_or(t.replication_factor);
            changes.push(
                if usize::try_from(replication).is_ok_and(|r| r > broker_count) {
                    Change::TooFewBrokers {
                        topic: t.name.clone(),
                        replication,
                        brokers: broker_count,
                    }
                } else {
                    Change::Create {
                        topic: t.name.clone(),
                        partitions: t.partitions,
                        replication,
                        configs: wanted.to_vec(),
                    }
                },
            );
            continue;
        };
        if have < t.partitions {
            changes.push(Change::AddPartitions {
                topic: t.name.clone(),
                from: have,
                to: t.partitions,
            });
        } else if have > t.partitions {
            changes.push(Change::RemovePartitions {
                topic: t.name.clone(),
                from: have,
                to: t.partitions,
            });
        }
        let spec = ResourceSpecifier::Topic(&t.name);
        let described = admin
            .describe_configs([&spec], &AdminOptions::new().request_timeout(Some(TIMEOUT)))
            .await
            .with_context(|| format!("describing the configs of {}", t.name))?;
        let resource = described
            .into_iter()
            .next()
            .context("empty describe-configs answer")?
            .map_err(|code| anyhow::anyhow!("describing the configs of {}: {code}", t.name))?;
        for (key, value) in wanted {
            let current = resource.get(&key).and_then(|e| e.value.clone());
            if current.as_deref() != Some(value.as_str()) {
                changes.push(Change::AlterConfig {
                    topic: t.name.clone(),
                    key,
                    from: current,
                    to: value,
                });
            }
        }
    }
    Ok(changes)
}

/// Applies a plan. Refuses, before changing anything, what cannot be done (see
/// [`Change::is_refused`]); then creates missing topics and waits until they are in the metadata,
/// sets changed configs with IncrementalAlterConfigs (other configs of the topic are
/// left alone) and adds partitions.
///
/// # Errors
/// A refused change (all are named), or a broker error naming the topic.
pub async fn apply(kafka: &(impl Cluster + ?Sized), changes: &[Change]) -> anyhow::Result<()> {
    let brokers = &kafka.brokers();
    let refused: Vec<String> = changes
        .iter()
        .filter(|c| c.is_refused())
        .map(ToString::to_string)
        .collect();
    if !refused.is_empty() {
        bail!(
            "refusing to apply; nothing was changed:\n  {}",
            refused.join("\n  ")
        );
    }
    let admin = admin(brokers)?;
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let creates: Vec<NewTopic<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Create {
                topic,
                partitions,
                replication,
                configs,
            } => Some(configs.iter().fold(
                NewTopic::new(topic, *partitions, TopicReplication::Fixed(*replication)),
                |n, (k, v)| n.set(k, v),
            )),
            _ => None,
        })
        .collect();
    if !creates.is_empty() {
        for r in admin
            .create_topics(creates.iter(), &opts)
            .await
            .context("create topics")?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => bail!("cannot create topic {name}: {code}"),
            }
        }
        let created: Vec<(&str, i32)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Create {
                    topic, partitions, ..
                } => Some((topic.as_str(), *partitions)),
                _ => None,
            })
            .collect();
        await_created(&crate::topic_io::inspector(kafka)?, brokers, &created)?;
    }
    let mut alters: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for c in changes {
        if let Change::AlterConfig { topic, key, to, .. } = c {
            match alters.iter_mut().find(|(t, _)| t == topic) {
                Some((_, kvs)) => kvs.push((key.clone(), to.clone())),
                None => alters.push((topic.clone(), vec![(key.clone(), to.clone())])),
            }
        }
    }
    let answers = crate::alter_configs::set_topic_configs(admin.inner(), &alters, TIMEOUT)
        .context("alter topic configs")?;
    let failed: Vec<String> = answers
        .into_iter()
        .filter_map(|(topic, r)| r.err().map(|e| format!("{topic}: {e}")))
        .collect();
    if !failed.is_empty() {
        bail!(
            "the broker refused config changes:\n  {}",
            failed.join("\n  ")
        );
    }
    let grow: Vec<rdkafka::admin::NewPartitions<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AddPartitions { topic, to, .. } => Some(rdkafka::admin::NewPartitions::new(
                topic,
                usize::try_from(*to).unwrap_or(0),
            )),
            _ => None,
        })
        .collect();
    if !grow.is_empty() {
        for r in admin
            .create_partitions(grow.iter(), &opts)
            .await
            .with_context(|| {
                let what: Vec<String> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::AddPartitions { topic, from, to } => {
                            Some(format!("{topic} partitions {from} -> {to}"))
                        }
                        _ => None,
                    })
                    .collect();
                format!(
                    "the broker refused CreatePartitions for {}",
                    what.join(", ")
                )
            })?
        {
            if let Err((name, code)) = r {
                bail!(
                    "cannot add partitions to {name}: {code} (the broker refused CreatePartitions)"
                );
            }
        }
    }
    Ok(())
}

/// Prints the catalog beside the cluster.
///
/// # Errors
/// The brokers cannot be reached.
pub fn list(kafka: &KafkaProperties, catalog: &Catalog) -> anyhow::Result<()> {
    let existing = match kafka.brokers() {
        Some(b) => Some(cluster(&crate::topic_io::inspector(kafka)?, b)?.0),
        None => None,
    };
    println!(
        "{:<32} {:>10} {:>14} {:>10} {:>9}  on cluster",
        "topic", "partitions", "retention ms", "compat", "pii"
    );
    for t in &catalog.topics {
        let cluster = match &existing {
            None => "-".to_owned(),
            Some(m) => m
                .get(&t.name)
                .map_or("missing".to_owned(), |p| format!("{p} partitions")),
        };
        println!(
            "{:<32} {:>10} {:>14} {:>10} {:>9}  {cluster}",
            t.name,
            t.partitions,
            t.retention_ms,
            format!("{:?}", t.compatibility).to_uppercase(),
            t.pii.len()
        );
    }
    Ok(())
}

/// `eventbus topics list|plan|apply`.
///
/// # Errors
/// The catalog cannot be read, the brokers do not answer, or apply is refused.
pub async fn command(command: crate::cli::TopicsCommand) -> anyhow::Result<()> {
    use crate::cli::TopicsCommand;
    match command {
        TopicsCommand::List { cluster, catalog } => {
            list(&cluster.kafka_or_none()?, &catalog.load()?)
        }
        TopicsCommand::Plan(a) => {
            let kafka = a.cluster.kafka()?;
            let changes = plan(&kafka, &a.catalog.load()?, a.replication_factor).await?;
            print_plan(&changes);
            Ok(())
        }
        TopicsCommand::Apply(a) => {
            let kafka = a.cluster.kafka()?;
            let changes = plan(&kafka, &a.catalog.load()?, a.replication_factor).await?;
            print_plan(&changes);
            apply(&kafka, &changes).await?;
            if !changes.is_empty() {
                println!("applied {} change(s)", changes.len());
            }
            Ok(())
        }
    }
}

fn print_plan(changes: &[Change]) {
    if changes.is_empty() {
        println!("no changes: the cluster matches the catalog");
    }
    for c in changes {
        println!("{c}");
    }
    if changes.iter().any(|c| c.is_refused()) {
        println!("apply would refuse the changes marked !, and change nothing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_gets_a_dlq_and_a_parked_topic_kept_at_least_30_days() {
        let catalog = Catalog::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../schemas/topics.toml"
        )))
        .unwrap();
        let all = with_dead_letter_topics(&catalog);
        assert_eq!(all.len(), catalog.topics.len() * 3);
        for t in &catalog.topics {
            let dlq = all
                .iter()
                .find(|d| d.name == format!("{}.dlq", t.name))
                .unwrap();
            let parked = all
                .iter()
                .find(|d| d.name == format!("{}.dlq.parked", t.name))
                .unwrap();
            for d in [dlq, parked] {
                assert_eq!(d.partitions, t.partitions);
                assert_eq!(d.cleanup_policy, CleanupPolicy::Delete);
                assert!(d.retention_ms == -1 || d.retention_ms >= DLQ_MIN_RETENTION_MS);
                assert!(t.retention_ms != -1 || d.retention_ms == -1);
            }
        }
    }
}
