//! `eventbus dlq stats` and `dlq inspect`: what is in a DLQ, shown.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use eventbus_dlq::store::{LetterFilter, StoredLetter};
use eventbus_schemas::SchemaRegistry;
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::json::to_json;
use serde_json::json;

use super::{Context2, each};

fn time_text(ms: Option<i64>) -> String {
    ms.map_or("-".to_owned(), |ms| {
        chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        )
    })
}

pub(super) fn stats(
    topic: &str,
    filter: &LetterFilter,
    ctx: &Context2,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut total = 0u64;
    let mut by_category: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let (mut first, mut last) = (None::<i64>, None::<i64>);
    each(topic, filter, ctx, |l| {
        total += 1;
        *by_category.entry(l.category.clone()).or_default() += 1;
        let class = l.context.class.clone().unwrap_or_else(|| "-".to_owned());
        *by_class.entry(class).or_default() += 1;
        *by_partition
            .entry(l.context.partition.unwrap_or(-1))
            .or_default() += 1;
        if let Some(t) = l.context.first_failure_ms {
            first = Some(first.map_or(t, |f| f.min(t)));
            last = Some(last.map_or(t, |x| x.max(t)));
        }
        Ok(())
    })?;
    if as_json {
        let out = json!({
            "topic": topic, "letters": total, "by_category": by_category,
            "by_class": by_class, "by_original_partition": by_partition,
            "first_failure_ms": first, "last_failure_ms": last,
        });
        println!("{out}");
        return Ok(());
    }
    println!("{topic}: {total} letters");
    println!(
        "first failure {}   last failure {}",
        time_text(first),
        time_text(last)
    );
    println!("\n{:<28} {:>10}", "category", "letters");
    for (k, n) in &by_category {
        println!("{k:<28} {n:>10}");
    }
    println!("\n{:<28} {:>10}", "class", "letters");
    for (k, n) in &by_class {
        println!("{k:<28} {n:>10}");
    }
    println!("\n{:<28} {:>10}", "original partition", "letters");
    for (p, n) in &by_partition {
        println!("{p:<28} {n:>10}");
    }
    Ok(())
}

fn decoded_value(
    l: &StoredLetter,
    decoder: &Decoder<Arc<dyn SchemaRegistry>>,
) -> serde_json::Value {
    match decoder.decode(&l.value, None) {
        Ok((id, v)) => decoder
            .registry()
            .schema(id)
            .ok()
            .flatten()
            .and_then(|s| to_json(&v, &s).ok())
            .unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

pub(super) fn inspect(
    topic: &str,
    filter: &LetterFilter,
    ctx: &Context2,
    as_json: bool,
    limit: Option<u64>,
    show_pii: bool,
) -> anyhow::Result<()> {
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    each(topic, filter, ctx, |l| {
        if limit.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        shown += 1;
        let c = &l.context;
        let mut value = decoded_value(l, &ctx.decoder);
        let mut key = l
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let mut message = c.message.clone();
        if let Some(fields) = ctx.pii_of(c.topic.as_deref(), show_pii) {
            let values = eventbus_dlq::pii::redact_json(&mut value, fields);
            key = key.map(|k| eventbus_dlq::pii::mask(&k, &values));
            message = message.map(|m| eventbus_dlq::pii::mask(&m, &values));
        }
        if as_json {
            let line = json!({
                "dlq_partition": l.dlq_partition, "dlq_offset": l.dlq_offset,
                "topic": c.topic, "partition": c.partition, "offset": c.offset,
                "key": key, "category": l.category, "class": c.class, "stage": c.stage,
                "exception": c.exception, "error": message, "attempts": c.attempts,
                "first_failure": time_text(c.first_failure_ms), "job": c.job,
                "replay_count": c.replay_count, "value": value,
                "value_bytes": l.value.len(),
            });
            writeln!(out, "{line}")?;
        } else {
            let shown_value = if value.is_null() {
                format!("<{} bytes, not decodable>", l.value.len())
            } else {
                value.to_string()
            };
            writeln!(
                out,
                "{}[{}]@{}  from {}[{}]@{}  key={}  {} ({}, {}, attempts {}, replays {}) at {}: {}\n    value: {}",
                l.dlq_topic,
                l.dlq_partition,
                l.dlq_offset,
                c.topic.as_deref().unwrap_or("?"),
                c.partition.map_or("?".into(), |p| p.to_string()),
                c.offset.map_or("?".into(), |o| o.to_string()),
                key.as_deref().unwrap_or("-"),
                l.category,
                c.class.as_deref().unwrap_or("-"),
                c.stage.as_deref().unwrap_or("-"),
                c.attempts.unwrap_or(1),
                c.replay_count,
                time_text(c.first_failure_ms),
                message.as_deref().unwrap_or("-"),
                shown_value
            )?;
        }
        Ok(())
    })?;
    if !as_json {
        eprintln!("{shown} letters shown");
    }
    Ok(())
}
