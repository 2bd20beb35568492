//! `eventbus bench`: records per second of the executor against a bare rdkafka consumer,
//! over the same topic of the same broker (the in-process mock cluster, or `--brokers`),
//! in the same run.
//!
//! Three jobs can stand on the executor's side: `discard` (opaque values into a sink
//! that acknowledges at once: the runtime's own cost), `warehouse` (wire-format
//! VehicleState records decoded into Parquet files on local disk, published exactly
//! once, offsets committed, in batch mode: the whole warehouse job) and `analytics`
//! (the same records into per-fleet minute aggregates in batch mode, both stages,
//! measured against the discard job on the same topic instead of the bare consumer).
//! The warehouse and analytics sides' clocks stop when the job has returned.
//!
//! Both read with a fresh consumer group and the same librdkafka settings; both clocks
//! start at the first record and stop at the last, so the group join is not counted.
//! The executor runs a whole job (offset tracking, per-partition tasks, flow control and
//! commits) into a sink that acknowledges at once; the bare consumer only polls and
//! touches each payload. Rounds alternate and the best of each side is kept. CPU is the
//! whole process's (the in-process mock broker included, for both sides alike), per
//! million records.

use anyhow::{Context, bail};
use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use serde::Serialize;

use crate::bench_sides::{
    analytics, bare_consumer, executor, handoff_floor, warehouse, warehouse_root,
};
use crate::{progress, topic_io};

const TOPIC: &str = "bench.records.v1";

/// The job measured against the bare consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BenchJob {
    /// Opaque values into a sink that acknowledges at once.
    #[default]
    Discard,
    /// VehicleState records into Parquet tables (`eventbus run warehouse
    /// --until-caught-up`).
    Warehouse,
    /// VehicleState records into per-fleet minute aggregates (`eventbus run analytics
    /// --until-caught-up`), measured against the discard job (not the bare consumer)
    /// on the same topic.
    Analytics,
    /// Latency of the alerting job, produce to alert delivered, at a fixed rate,
    /// against a bare consume → produce pipe (see `bench_alerting`).
    Alerting,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The job on the executor's side.
    pub job: BenchJob,
    /// A real broker to use instead of the in-process mock cluster.
    pub brokers: Option<String>,
    /// Records in the topic.
    pub messages: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Bytes per value.
    pub value_size: usize,
    /// Rounds per side.
    pub rounds: u32,
    /// Hide progress bars.
    pub quiet: bool,
    /// discard: measure the Prometheus exporter's cost instead: the discard job with the
    /// exporter recording (and scraped every second) against the same job with it off.
    pub exporter: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            job: BenchJob::Discard,
            brokers: None,
            messages: 800_000,
            partitions: 48,
            value_size: 256,
            rounds: 3,
            quiet: false,
            exporter: false,
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The job on the executor's side.
    pub job: BenchJob,
    /// Records read by each side per round.
    pub messages: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Best records/s of the bare consumer.
    pub bare_records_per_sec: f64,
    /// Best records/s of the executor.
    pub executor_records_per_sec: f64,
    /// Executor over bare: 1.0 means no overhead. The goal is at least 0.9.
    pub ratio: f64,
    /// Process CPU seconds (user + system) per million records, bare consumer, best round.
    pub bare_cpu_s_per_million: f64,
    /// Process CPU seconds (user + system) per million records, executor, best round.
    pub executor_cpu_s_per_million: f64,
    /// Executor CPU per record over the bare consumer's. The discard job's goal is at
    /// most 1.3.
    pub cpu_ratio: f64,
    /// Warehouse only: the same records decoded and written as zstd Parquet in memory on
    /// one thread, one file per partition's share, without Kafka or a store. Process CPU
    /// seconds per million records: the part of the warehouse's cost that is its output.
    pub encode_cpu_s_per_million: Option<f64>,
    /// Warehouse only: `(bare + encode) / bare`, the CPU ratio a warehouse with no
    /// overhead at all beyond reading and encoding would reach on this run.
    pub encode_floor_ratio: Option<f64>,
    /// Warehouse only: the warehouse's CPU per record over that floor's
    /// (`cpu_ratio / encode_floor_ratio`). The goal is at most 1.25.
    pub cpu_over_floor: Option<f64>,
    /// Discard only: process CPU seconds per million records of the hand-off floor (the
    /// bare poll loop, records copied into shared buffers and handed per partition to
    /// tokio tasks, nothing else; see `bench_sides::handoff_floor`), best round.
    pub handoff_cpu_s_per_million: Option<f64>,
    /// Discard only: the hand-off floor's CPU per record over the bare consumer's: what
    /// handing records to partition tasks adds to a loop that polls one message per
    /// call. The executor reads many messages per librdkafka call, so it can cost less.
    pub handoff_floor_ratio: Option<f64>,
}

/// The goals a run is held to, as printed beside its figures.
pub mod goals {
    /// Executor records/s over the bare consumer's, at least.
    pub const WALL_RATIO: f64 = 0.9;
    /// The discard job's CPU per record over the bare consumer's, at most.
    pub const DISCARD_CPU_RATIO: f64 = 1.3;
    /// The warehouse's CPU per record over the printed floor's, at most.
    pub const WAREHOUSE_CPU_OVER_FLOOR: f64 = 1.25;
    /// The discard job's records/s on the mock cluster, at least.
    pub const MOCK_RECORDS_PER_SEC: f64 = 1_000_000.0;
    /// The analytics job's CPU per record over the discard job's, at most.
    pub const ANALYTICS_CPU_RATIO: f64 = 2.0;
    /// The discard job's CPU per record with the Prometheus exporter on, over off.
    pub const EXPORTER_CPU_RATIO: f64 = 1.05;
}

/// CPU seconds this process has used so far, all its threads (finished ones included),
/// from the scheduler's own accounting (`CLOCK_PROCESS_CPUTIME_ID`, nanoseconds).
/// `/proc/self/stat`, read here before, counts in ticks of 10 ms: a tansu side of
/// 300,000 records uses 0.12-0.2 s, so one tick moved a side's figure by 5-8 %.
#[allow(unsafe_code)]
fn cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; the clock id is a constant
    // every Linux has.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

fn per_million(cpu: Option<f64>, n: u64) -> f64 {
    cpu.map_or(f64::NAN, |c| c * 1e6 / n.max(1) as f64)
}

/// Runs the benchmark.
///
/// # Errors
/// The mock cluster or a client cannot start, or a side does not finish.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchResult> {
    if opts.job == BenchJob::Alerting {
        bail!("the alerting bench measures latency, not throughput: see bench_alerting::run");
    }
    // A run of its own: fresh topic on a shared broker, fresh groups every round.
    let run_id = format!(
        "{}x{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let (cluster, brokers, topic) = match &opts.brokers {
        Some(b) => {
            let topic = format!("bench.records.r{run_id}.v1");
            let dlq = format!("{topic}.dlq");
            let mut topics = vec![(topic.as_str(), opts.partitions)];
            if opts.job != BenchJob::Discard {
                // As in production: the warehouse dead-letters what it cannot decode.
                topics.push((dlq.as_str(), 1));
            }
            topic_io::create_topics(&crate::bench_sides::kafka(b)?, &topics).await?;
            (None, b.clone(), topic)
        }
        None => {
            let cluster = MockCluster::new(1).context("cannot start the mock cluster")?;
            let brokers = cluster.bootstrap_servers();
            cluster.create_topic(TOPIC, opts.partitions, 1)?;
            if opts.job != BenchJob::Discard {
                cluster.create_topic(&format!("{TOPIC}.dlq"), 1, 1)?;
            }
            (Some(cluster), brokers, TOPIC.to_owned())
        }
    };
    let bar = progress::bar(opts.messages, "produced", opts.quiet);
    let count = usize::try_from(opts.messages).unwrap_or(usize::MAX);
    let mut encode_input = None;
    let kafka = crate::bench_sides::kafka(&brokers)?;
    match opts.job {
        BenchJob::Discard | BenchJob::Alerting => {
            let value = vec![b'x'; opts.value_size];
            let records = (0..opts.messages).map(|i| (format!("k{}", i % 1000), value.clone()));
            topic_io::produce(&kafka, &topic, records, |n| bar.set_position(n))?;
        }
        BenchJob::Warehouse | BenchJob::Analytics => {
            let registry = eventbus_schemas::FileRegistry::embedded()?;
            let (id, schema) = registry
                .latest_of("vehicle.state.v1-value")
                .context("vehicle.state.v1-value is not registered")?;
            let records = crate::generate::records("vehicle.state.v1", 1, id, &schema)?
                .take(count)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let values: Vec<Bytes> = records
                .iter()
                .map(|(_, v)| Bytes::from(v.clone()))
                .collect();
            if opts.job == BenchJob::Warehouse {
                encode_input = Some((id, serde_json::to_string(&*schema)?, values));
            }
            topic_io::produce(&kafka, &topic, records, |n| bar.set_position(n))?;
        }
    }
    bar.finish_and_clear();
    // The mock cluster keeps a bounded log per partition and drops the oldest records
    // beyond it; both sides read what it kept.
    let available = topic_io::available(&kafka, &topic)?;
    if available < opts.messages {
        eprintln!(
            "the broker kept {available} of {} records; both sides read those",
            opts.messages
        );
    }
    let n = available;

    let (mut bare, mut exec) = (0f64, 0f64);
    let (mut bare_cpu, mut exec_cpu) = (f64::INFINITY, f64::INFINITY);
    let mut handoff_cpu = None::<f64>;
    let mut scratch = Scratch::default();
    for round in 0..opts.rounds {
        let start = cpu_seconds();
        let b = if opts.exporter {
            let group = format!("bench-exporter-off-{run_id}-{round}");
            crate::bench_alerting::with_exporter(false, executor(&brokers, &topic, &group, n))
                .await?
        } else if opts.job == BenchJob::Analytics {
            // The baseline is the discard job on the same topic.
            let group = format!("bench-discard-{run_id}-{round}");
            executor(&brokers, &topic, &group, n).await?
        } else {
            let (brokers, topic, group) = (
                brokers.clone(),
                topic.clone(),
                format!("bench-bare-{run_id}-{round}"),
            );
            let (tx, rx) = tokio::sync::oneshot::channel();
            // A named thread of its own, so profiles tell the two sides apart.
            std::thread::Builder::new()
                .name("bench-bare".to_owned())
                .spawn(move || {
                    let _ = tx.send(bare_consumer(&brokers, &topic, &group, n));
                })?;
            rx.await??
        };
        let mid = cpu_seconds();
        let group = format!("bench-{}-{run_id}-{round}", side_name(opts.job));
        let e = match opts.job {
            _ if opts.exporter => {
                crate::bench_alerting::with_exporter(true, executor(&brokers, &topic, &group, n))
                    .await?
            }
            BenchJob::Discard | BenchJob::Alerting => executor(&brokers, &topic, &group, n).await?,
            BenchJob::Warehouse => warehouse(&brokers, &topic, &group, n).await?,
            BenchJob::Analytics => {
                // Fresh internal and output topics every round, so no round's progress
                // records decide what another emits.
                let names: Vec<String> = ["partials", "progress", "out"]
                    .iter()
                    .map(|t| format!("bench.analytics_{t}.r{run_id}x{round}.v1"))
                    .collect();
                match &cluster {
                    Some(c) => {
                        for name in &names {
                            c.create_topic(name, 10, 1)?;
                        }
                    }
                    None => {
                        let topics: Vec<(&str, i32)> =
                            names.iter().map(|t| (t.as_str(), 10)).collect();
                        topic_io::create_topics(&crate::bench_sides::kafka(&brokers)?, &topics)
                            .await?;
                    }
                }
                analytics(&brokers, &topic, &group, &names, n).await?
            }
        };
        let end = cpu_seconds();
        if opts.job == BenchJob::Discard && !opts.exporter {
            let group = format!("bench-handoff-{run_id}-{round}");
            let h = handoff_floor(&brokers, &topic, &group, n).await?;
            let h_cpu = per_million(cpu_seconds().zip(end).map(|(a, b)| a - b), n);
            eprintln!(
                "round {}: hand-off floor {h:>10.0} records/s {h_cpu:>6.2} cpu-s/M",
                round + 1
            );
            handoff_cpu = Some(handoff_cpu.map_or(h_cpu, |c| c.min(h_cpu)));
        }
        // Removing the scratch tables is the benchmark's own work, not the job's, and
        // waits for the end: ext4 passes over inodes freed in the last minute when it
        // allocates one, reading each one's inode block, so a table removed here made
        // the files and folders of the next round cost the job's CPU (6 % of it in a
        // profile, in the kernel).
        scratch.0.push(warehouse_root(&group));
        let b_cpu = per_million(mid.zip(start).map(|(m, s)| m - s), n);
        let e_cpu = per_million(end.zip(mid).map(|(e, m)| e - m), n);
        eprintln!(
            "round {}: {} {b:>10.0} records/s {b_cpu:>6.2} cpu-s/M   {} {e:>10.0} records/s {e_cpu:>6.2} cpu-s/M",
            round + 1,
            if opts.exporter {
                "off"
            } else {
                baseline_name(opts.job)
            },
            side_label(opts.job, opts.exporter)
        );
        bare = bare.max(b);
        exec = exec.max(e);
        bare_cpu = bare_cpu.min(b_cpu);
        exec_cpu = exec_cpu.min(e_cpu);
    }
    drop(cluster);
    // The floor's decode+Parquet part, measured as many times as the sides, after them
    // (its garbage would otherwise be the next side's heap), and taken at its best.
    let mut encode_cpu = None::<f64>;
    if let Some((id, json, values)) = &encode_input {
        let share = values.len().div_ceil(opts.partitions.max(1) as usize);
        for round in 0..opts.rounds.max(1) {
            let c = tokio::task::block_in_place(|| encode_cost(*id, json, values, share))?;
            eprintln!("round {}: decode+Parquet alone {c:>6.2} cpu-s/M", round + 1);
            encode_cpu = Some(encode_cpu.map_or(c, |best| best.min(c)));
        }
    }
    Ok(BenchResult {
        job: opts.job,
        messages: n,
        partitions: opts.partitions,
        bare_records_per_sec: bare,
        executor_records_per_sec: exec,
        ratio: exec / bare.max(1e-9),
        bare_cpu_s_per_million: bare_cpu,
        executor_cpu_s_per_million: exec_cpu,
        cpu_ratio: exec_cpu / bare_cpu,
        encode_cpu_s_per_million: encode_cpu,
        encode_floor_ratio: encode_cpu.map(|c| (bare_cpu + c) / bare_cpu),
        cpu_over_floor: encode_cpu.map(|c| exec_cpu / (bare_cpu + c)),
        handoff_cpu_s_per_million: handoff_cpu,
        handoff_floor_ratio: handoff_cpu.map(|h| h / bare_cpu),
    })
}

/// The warehouse rounds' scratch tables, removed when the run ends, however it ends.
#[derive(Default)]
struct Scratch(Vec<std::path::PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Process CPU seconds per million records to decode `values` (wire format, schema `id`)
/// and write them as Parquet in memory, in files of `rows_per_file` rows: the warehouse's
/// per-file work (`wire_to_parquet`, as in the criterion bench) with nothing else running.
fn encode_cost(id: u32, json: &str, values: &[Bytes], rows_per_file: usize) -> anyhow::Result<f64> {
    let start = cpu_seconds();
    for chunk in values.chunks(rows_per_file.max(1)) {
        let file = eventbus_operators::sinks::parquet::wire_to_parquet(id, json, chunk, 1)
            .map_err(|e| anyhow::anyhow!("decode+Parquet of the benchmark records: {e}"))?;
        std::hint::black_box(file);
    }
    let end = cpu_seconds();
    Ok(per_million(
        end.zip(start).map(|(e, s)| e - s),
        values.len() as u64,
    ))
}

/// The run's figures as text, each ratio beside its goal.
pub fn render(r: &BenchResult, opts: &BenchOptions) -> String {
    let side = side_label(opts.job, opts.exporter);
    let mark = |ok: bool| if ok { "met" } else { "not met" };
    let wall_ok = r.ratio >= goals::WALL_RATIO;
    let (base_label, short) = if opts.exporter {
        ("discard, exporter off", "off")
    } else if opts.job == BenchJob::Analytics {
        ("eventbus discard job ", "discard")
    } else {
        ("bare rdkafka consumer ", "bare")
    };
    let mut out = format!(
        "{base_label} {:>12.0} records/s  {:>8.2} cpu-s per million\n\
         eventbus {side:<13} {:>12.0} records/s  {:>8.2} cpu-s per million\n\
         ratio {side}/{short} {:>12.3} wall {}  {:>8.3} cpu",
        r.bare_records_per_sec,
        r.bare_cpu_s_per_million,
        r.executor_records_per_sec,
        r.executor_cpu_s_per_million,
        r.ratio,
        if opts.job == BenchJob::Analytics {
            // Two group joins and the wait for the last watermarks are in its clock.
            "(no goal: its clock includes two group joins)".to_owned()
        } else {
            format!("(goal >= {}: {})", goals::WALL_RATIO, mark(wall_ok))
        },
        r.cpu_ratio,
    );
    let cpu_goal = match opts.job {
        _ if opts.exporter => Some(goals::EXPORTER_CPU_RATIO),
        BenchJob::Discard => Some(goals::DISCARD_CPU_RATIO),
        BenchJob::Analytics => Some(goals::ANALYTICS_CPU_RATIO),
        BenchJob::Warehouse | BenchJob::Alerting => None,
    };
    if let Some(goal) = cpu_goal {
        out.push_str(&format!(" (goal <= {goal}: {})", mark(r.cpu_ratio <= goal)));
    }
    out.push('\n');
    if opts.job == BenchJob::Discard && opts.brokers.is_none() {
        let ok = r.executor_records_per_sec >= goals::MOCK_RECORDS_PER_SEC;
        out.push_str(&format!(
            "executor on the mock cluster {:>9.0} records/s (goal >= 1M: {})\n",
            r.executor_records_per_sec,
            mark(ok)
        ));
    }
    out.push_str(&format!(
        "({} records of {}, {} partitions, best of {} rounds each)\n",
        r.messages,
        match opts.job {
            BenchJob::Discard | BenchJob::Alerting => format!("{} bytes", opts.value_size),
            BenchJob::Warehouse | BenchJob::Analytics => "VehicleState".to_owned(),
        },
        r.partitions,
        opts.rounds
    ));
    if let (Some(h), Some(f)) = (r.handoff_cpu_s_per_million, r.handoff_floor_ratio) {
        out.push_str(&format!(
            "hand-off floor {h:>30.2} cpu-s per million (poll, copy, batches to partition tasks; nothing else)\n\
             floor (hand-off)/bare {f:>17.3} cpu: hand-off over a one-message-per-poll loop\n\
             executor over the floor {:>15.3} cpu\n",
            r.executor_cpu_s_per_million / h
        ));
    }
    if let (Some(c), Some(f), Some(over)) = (
        r.encode_cpu_s_per_million,
        r.encode_floor_ratio,
        r.cpu_over_floor,
    ) {
        let ok = over <= goals::WAREHOUSE_CPU_OVER_FLOOR;
        out.push_str(&format!(
            "decode+Parquet alone   {c:>21.2} cpu-s per million (same records, one thread, in memory)\n\
             floor (bare + decode+Parquet)/bare {f:>6.3} cpu: the ratio with no other overhead\n\
             warehouse cpu over the floor {over:>12.3} (goal <= {}: {})\n",
            goals::WAREHOUSE_CPU_OVER_FLOOR,
            mark(ok)
        ));
    }
    out
}

/// What the executor's side is called in reports.
pub fn side_name(job: BenchJob) -> &'static str {
    side_label(job, false)
}

fn side_label(job: BenchJob, exporter: bool) -> &'static str {
    if exporter {
        return "exporter on";
    }
    match job {
        BenchJob::Discard => "executor",
        BenchJob::Warehouse => "warehouse",
        BenchJob::Analytics => "analytics",
        BenchJob::Alerting => "alerting",
    }
}

/// What the job is measured against.
fn baseline_name(job: BenchJob) -> &'static str {
    match job {
        BenchJob::Analytics => "discard",
        BenchJob::Discard | BenchJob::Warehouse | BenchJob::Alerting => "bare",
    }
}

/// `eventbus bench`: runs the measurement and prints it (or JSON).
///
/// # Errors
/// The broker cannot be used, or a side fails to read every record.
pub async fn command(args: crate::cli::BenchArgs) -> anyhow::Result<()> {
    if args.job == BenchJob::Alerting {
        let r = crate::bench_alerting::run(
            args.brokers.as_deref(),
            args.partitions.unwrap_or(5),
            args.rate,
            args.seconds,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", crate::bench_alerting::render(&r));
        }
        return Ok(());
    }
    let opts = BenchOptions {
        job: args.job,
        brokers: args.brokers,
        messages: args.messages,
        partitions: args.partitions.unwrap_or(48),
        value_size: args.value_size,
        rounds: args.rounds.max(1),
        quiet: args.json,
        exporter: args.exporter,
    };
    let r = run(&opts).await?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", render(&r, &opts));
    }
    Ok(())
}
