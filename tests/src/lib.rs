//! Shared fixtures of the integration tests: unique names, job files, the `eventbus`
//! binary as a child process, a private tansu broker, and a background producer.
//!
//! The real broker comes from `make test`, which starts tansu and exports its address as
//! `EVENTBUS_TEST_BROKERS`, and the binaries as `EVENTBUS_BIN` and `TANSU_BIN`.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::expect_used,
    clippy::unwrap_used
)]

pub mod dlq;
pub mod dlq_scenarios;
pub mod registry;
pub mod tls;
pub mod warehouse_scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use eventbus_jobs::mirror::{HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
use eventbus_jobs::topic_io;
use rdkafka::message::{Headers, Message, OwnedMessage};

/// VehicleState's latest schema in the file registry, with its id.
pub fn vehicle_state_schema() -> (u32, Arc<apache_avro::Schema>) {
    eventbus_schemas::FileRegistry::embedded()
        .expect("registry")
        .latest_of("vehicle.state.v1-value")
        .expect("vehicle.state.v1-value")
}

/// VehicleState's writer schema as JSON text (what a schema registry is given).
pub fn vehicle_state_json() -> String {
    serde_json::to_string(&*vehicle_state_schema().1).expect("schema json")
}

/// `n` VehicleState records from the generator with `seed`, keyed by vehicle, in the wire
/// format under schema id `id` (the file registry's, or one a registry double gave the
/// same schema).
pub fn vehicle_states(seed: u64, id: u32, n: usize) -> Vec<(String, Vec<u8>)> {
    eventbus_jobs::generate::records("vehicle.state.v1", seed, id, &vehicle_state_schema().1)
        .expect("generator")
        .take(n)
        .collect::<anyhow::Result<Vec<_>>>()
        .expect("encode")
}

/// Produces `records` to `topic` and reads the topic back whole (within `within`), off
/// the async runtime: where each record landed.
pub async fn produce_and_read_back(
    brokers: &str,
    topic: &str,
    records: Vec<(String, Vec<u8>)>,
    within: Duration,
) -> Vec<OwnedMessage> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        topic_io::produce(&b, &t, records, |_| {}).expect("produce");
        topic_io::read_all(&b, &t, within).expect("read back")
    })
    .await
    .expect("join")
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{prefix}.t{now}x{}n{}.v1",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The shared real broker started by `make test`.
pub fn shared_brokers() -> String {
    std::env::var("EVENTBUS_TEST_BROKERS").expect(
        "EVENTBUS_TEST_BROKERS is not set: run the real-broker tests through `make test`, \
         which starts tansu and sets it",
    )
}

/// Runs a Python script with the test virtualenv's python (`make test` sets
/// `EVENTBUS_TEST_PYTHON` to one with confluent-kafka, fastavro, pyarrow and duckdb: the
/// clients and readers no one here wrote) and returns its trimmed stdout. Panics with
/// the script's stderr when it fails.
pub fn run_python<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> String {
    let python = std::env::var("EVENTBUS_TEST_PYTHON").expect(
        "EVENTBUS_TEST_PYTHON is not set: `make test` sets it to a python with \
         confluent-kafka, fastavro, pyarrow and duckdb",
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "the python script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The `eventbus` binary: `EVENTBUS_BIN`, else the workspace's debug build.
pub fn eventbus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("EVENTBUS_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/eventbus");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p eventbus-jobs`) or set EVENTBUS_BIN",
        p.display()
    );
    p
}

/// Writes a mirror job file and returns its path.
pub fn mirror_config(
    dir: &Path,
    brokers: &str,
    group: &str,
    input: &str,
    output: &str,
    extra_kafka: &str,
) -> PathBuf {
    let path = dir.join(format!("{group}.toml"));
    let text = format!(
        r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
{extra_kafka}

[source]
group_id = "{group}"
topics = ["{input}"]
commit_interval_ms = 500
startup_timeout_ms = 20000

[runtime]
drain_timeout_ms = 15000

[mirror]
output = "{output}"
partitioning = "source"
# tansu 0.6 serves fetches of records with headers very slowly (quadratic in the
# partition size), so tests on it identify records by their unique values instead.
stamp_source = false
"#
    );
    fs::write(&path, text).expect("write config");
    path
}

/// A running `eventbus` process whose output goes to a log file.
pub struct JobProcess {
    child: Child,
    log: PathBuf,
}

impl JobProcess {
    /// Starts `eventbus run JOB --config CONFIG ARGS...`, its output in `LOG_DIR/NAME.log`.
    pub fn run(job: &str, config: &Path, log_dir: &Path, name: &str, args: &[&str]) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(eventbus_bin())
            .args(["run", job, "--config"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("EVENTBUS_BROKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start eventbus");
        Self { child, log }
    }

    /// Starts `eventbus run mirror --config CONFIG`.
    pub fn mirror(config: &Path, log_dir: &Path, name: &str) -> Self {
        Self::run("mirror", config, log_dir, name, &[])
    }

    /// Starts `eventbus run warehouse --config CONFIG ARGS...`.
    pub fn warehouse(config: &Path, log_dir: &Path, name: &str, args: &[&str]) -> Self {
        Self::run("warehouse", config, log_dir, name, args)
    }

    /// Sends a signal (`"KILL"`, `"TERM"`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The exit status if the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "eventbus did not exit within {timeout:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `eventbus run warehouse --until-caught-up` to the end and expects exit 0.
    ///
    /// tansu 0.6's group coordinator sometimes strands a member that joins a group soon
    /// after another member was killed: it never assigns it, or assigns it and then stops
    /// answering its heartbeats, for minutes, and every later join of that group waits
    /// the same way. So each try starts once the killed member's session (the tests use
    /// 6 s) has expired, and a try that has no partitions within 30 s, or has not
    /// finished within 100 s, is SIGKILLed and started again in a consumer group of its
    /// own, at most three tries. Both keep the tests' assertions at full force: the kill
    /// is one more crash the table's exactly-once protocol must survive, and a new group
    /// reads every partition from the start, so the table (not the committed offsets)
    /// must keep out every record it already holds. Returns the group of the try that
    /// finished, when it is not the config's.
    pub fn finish_warehouse(config: &Path, log_dir: &Path, name: &str) -> Option<String> {
        Self::finish("warehouse", config, log_dir, name)
    }

    /// [`Self::finish_warehouse`] for any job with `--until-caught-up`.
    pub fn finish(job: &str, config: &Path, log_dir: &Path, name: &str) -> Option<String> {
        let tries = 3;
        for n in 1..=tries {
            std::thread::sleep(Duration::from_secs(7));
            let group = unique("final");
            let mut args = vec!["--until-caught-up"];
            if n > 1 {
                args.extend(["--group", group.as_str()]);
            }
            let mut run = Self::run(job, config, log_dir, &format!("{name}-try{n}"), &args);
            let started = Instant::now();
            let mut assigned = false;
            while started.elapsed() < Duration::from_secs(100) {
                if let Some(status) = run.exited() {
                    assert!(status.success(), "final run failed:\n{}", run.log_tail());
                    return (n > 1).then_some(group);
                }
                if !assigned && started.elapsed() > Duration::from_secs(30) {
                    assigned = fs::read_to_string(&run.log)
                        .is_ok_and(|log| log.contains("partitions assigned"));
                    if !assigned {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                n < tries,
                "the final run did not finish in {tries} tries; last log:\n{}",
                run.log_tail()
            );
            eprintln!(
                "final run {n} had no partitions after 30 s or did not finish within 100 s \
                 (a stalled group join on tansu?); killing it and starting again in a group \
                 of its own. Its log:\n{}",
                run.log_tail()
            );
            run.kill();
        }
        unreachable!("the last try either finishes or fails its assertion")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(10));
    }

    /// How many times `needle` occurs in the process log so far.
    pub fn log_count(&self, needle: &str) -> usize {
        fs::read_to_string(&self.log).map_or(0, |log| log.matches(needle).count())
    }

    /// Waits until `needle` occurs `times` times in the log, at most `timeout`; panics
    /// with the log's tail if the process exits or the time runs out.
    pub fn wait_log(&mut self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) < times {
            assert!(
                self.exited().is_none(),
                "eventbus exited before logging `{needle}`:\n{}",
                self.log_tail()
            );
            assert!(
                Instant::now() < deadline,
                "`{needle}` not logged {times} times within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the process log.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for JobProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker of the test's own, for tests that stop and restart it.
pub struct Tansu {
    pub brokers: String,
    /// The port it listens on.
    pub port: u16,
    /// The port it tells clients to connect to (a TLS proxy's), when not its own.
    advertised: u16,
    /// Whether clients must log in with SASL.
    authentication: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Tansu {
    /// Starts tansu on a free port with SQLite storage in a fresh folder.
    pub fn start() -> Self {
        let port = free_port();
        Self::start_advertising(port, port, false)
    }

    /// Starts tansu on `port`, advertising 127.0.0.1:`advertised` to clients (the port
    /// of a TLS proxy in front of it), and requiring SASL logins with `authentication`.
    pub fn start_advertising(port: u16, advertised: u16, authentication: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = Self {
            brokers: format!("127.0.0.1:{advertised}"),
            port,
            advertised,
            authentication,
            dir,
            child: None,
        };
        t.restart();
        t
    }

    /// Creates a SCRAM-SHA-512 user through tansu's own command, against this broker
    /// (which must not yet require authentication: restart it with
    /// [`Tansu::require_authentication`] afterwards).
    pub fn create_scram_user(&self, user: &str, password: &str) {
        let out = Command::new(Self::bin())
            .args(["user", "create", "--mechanism", "scram512", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args([user, password])
            .output()
            .expect("tansu user create");
        assert!(
            out.status.success(),
            "tansu user create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Restarts the broker (same data) requiring SASL logins from now on.
    pub fn require_authentication(&mut self) {
        self.stop();
        self.authentication = true;
        self.restart();
    }

    fn bin() -> PathBuf {
        std::env::var("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let home = std::env::var("HOME").unwrap_or_default();
                PathBuf::from(home).join(".cache/eventbus-tools/bin/tansu")
            })
    }

    /// (Re)starts the broker on the same port and data, and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("log");
        let child = Command::new(Self::bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu (set TANSU_BIN or run `make test`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Produces `count` records keyed `k{i % 97}` with value `v{i}`, in a background thread
/// at about `per_sec` records a second, so jobs can be disturbed mid-stream.
pub struct StreamProducer {
    handle: Option<JoinHandle<anyhow::Result<u64>>>,
    pub sent: Arc<AtomicU64>,
}

impl StreamProducer {
    pub fn start(brokers: &str, topic: &str, count: u64, per_sec: u64) -> Self {
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        let sent = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let records = (0..count).map(move |i| {
                let due = Duration::from_secs_f64(i as f64 / per_sec as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                (format!("k{}", i % 97), format!("v{i}").into_bytes())
            });
            topic_io::produce(&brokers, &topic, records, |n| s.store(n, Ordering::Relaxed))
        });
        Self {
            handle: Some(handle),
            sent,
        }
    }

    /// Waits until every record is acknowledged; returns the count.
    pub fn finish(mut self) -> u64 {
        let h = self.handle.take().expect("running");
        h.join().expect("producer thread").expect("produce")
    }
}

/// Waits until `group` has committed the end offset of every partition of `topic`.
pub fn wait_committed_to_end(
    brokers: &str,
    group: &str,
    topic: &str,
    timeout: Duration,
    diag: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let ends = topic_io::end_offsets(brokers, topic).expect("end offsets");
        let committed = topic_io::committed(brokers, group, topic).unwrap_or_default();
        let behind: Vec<_> = ends
            .iter()
            .filter(|(p, end)| **end > 0 && committed.get(p).copied().unwrap_or(0) < **end)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} did not commit to the end of {topic} within {timeout:?}: \
             ends {ends:?}, committed {committed:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `topic` holds at least `n` records.
pub fn wait_records(brokers: &str, topic: &str, n: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let total: i64 = topic_io::end_offsets(brokers, topic)
            .expect("ends")
            .values()
            .sum();
        if total >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has only {total} of {n} records after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The source coordinates stamped on each mirrored record, per source partition, in
/// output order.
pub fn mirrored_offsets(out: &[OwnedMessage]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in out {
        let h = m.headers().expect("mirror stamps headers");
        let get = |name: &str| -> i64 {
            let v = h
                .iter()
                .find(|x| x.key == name)
                .and_then(|x| x.value)
                .unwrap_or_else(|| panic!("header {name} missing"));
            std::str::from_utf8(v)
                .expect("utf8")
                .parse()
                .expect("number")
        };
        let p = i32::try_from(get(HEADER_SOURCE_PARTITION)).expect("partition");
        assert_eq!(
            p,
            m.partition(),
            "partitioning = source keeps the partition number"
        );
        map.entry(p).or_default().push(get(HEADER_SOURCE_OFFSET));
    }
    map
}

/// The source offset of each output record, found by its value (values are unique in
/// these tests), per source partition, in output order. Asserts that each record kept
/// its partition number (`partitioning = "source"`).
pub fn positions_by_value(
    input: &[OwnedMessage],
    output: &[OwnedMessage],
) -> BTreeMap<i32, Vec<i64>> {
    let index: std::collections::HashMap<&[u8], (i32, i64)> = input
        .iter()
        .map(|m| (m.payload().unwrap_or_default(), (m.partition(), m.offset())))
        .collect();
    assert_eq!(index.len(), input.len(), "input values must be unique");
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in output {
        let &(p, o) = index
            .get(m.payload().unwrap_or_default())
            .unwrap_or_else(|| {
                panic!(
                    "output record at {}@{} matches no input",
                    m.partition(),
                    m.offset()
                )
            });
        assert_eq!(
            p,
            m.partition(),
            "partitioning = source keeps the partition number"
        );
        map.entry(p).or_default().push(o);
    }
    map
}

/// Every (partition, offset) below `ends` that is missing from `seen`.
pub fn missing(ends: &BTreeMap<i32, i64>, seen: &BTreeMap<i32, Vec<i64>>) -> Vec<(i32, i64)> {
    let mut out = Vec::new();
    for (&p, &end) in ends {
        let got: BTreeSet<i64> = seen
            .get(&p)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        out.extend((0..end).filter(|o| !got.contains(o)).map(|o| (p, o)));
    }
    out
}

/// Number of extra copies in `seen`.
pub fn duplicates(seen: &BTreeMap<i32, Vec<i64>>) -> usize {
    seen.values()
        .map(|v| v.len() - v.iter().collect::<BTreeSet<_>>().len())
        .sum()
}

/// The end-to-end mirror check both brokers share: produces `n` records with unique
/// values to `input` (3 partitions), runs the mirror job in-process with
/// `partitioning = "source"` until its commits reach the end, and asserts that every
/// record was delivered, the committed offsets equal the end offsets, and each output
/// partition holds exactly its input partition's records, keys and values, in order.
/// Returns the output records for further checks.
pub async fn mirror_end_to_end(
    brokers: &str,
    input: &str,
    output: &str,
    n: u64,
    stamp: bool,
) -> Vec<OwnedMessage> {
    let read = Duration::from_secs(120);
    let group = unique("group");
    let records = (0..n).map(|i| {
        (
            format!("vehicle-{}", i % 300),
            format!("event-{i}").into_bytes(),
        )
    });
    assert_eq!(
        topic_io::produce(brokers, input, records, |_| {}).expect("produce"),
        n
    );
    let ends = topic_io::end_offsets(brokers, input).expect("ends");

    let mut file = eventbus_jobs::config::JobFile::parse(&format!(
        "[source]\ngroup_id = \"{group}\"\ntopics = [\"{input}\"]\ncommit_interval_ms = 200\n\
         [mirror]\noutput = \"{output}\"\npartitioning = \"source\"\nstamp_source = {stamp}\n"
    ))
    .expect("job file");
    file.kafka.set("bootstrap.servers", brokers);
    let job = eventbus_jobs::mirror::job(&file).expect("job");
    let stats = job.stats();
    let target: i64 = ends.values().sum();
    let report = job
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while stats.committed().values().sum::<i64>() < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("job runs");
    assert_eq!(report.consumed, n);
    assert_eq!(report.delivered, n);
    let committed = topic_io::committed(brokers, &group, input).expect("committed");
    assert_eq!(committed, ends, "committed offsets equal the end offsets");

    let out = topic_io::read_all(brokers, output, read).expect("read output");
    let inp = topic_io::read_all(brokers, input, read).expect("read input");
    assert_eq!(out.len() as u64, n);
    let seen = positions_by_value(&inp, &out);
    for (p, offsets) in &seen {
        assert_eq!(
            offsets,
            &(0..ends[p]).collect::<Vec<_>>(),
            "partition {p} out of order"
        );
    }
    for p in ends.keys() {
        let a: Vec<_> = inp
            .iter()
            .filter(|m| m.partition() == *p)
            .map(|m| (m.key(), m.payload()))
            .collect();
        let b: Vec<_> = out
            .iter()
            .filter(|m| m.partition() == *p)
            .map(|m| (m.key(), m.payload()))
            .collect();
        assert_eq!(a, b, "partition {p} differs from its input");
    }
    out
}

/// The S3 server `make test` starts (`endpoint`, plain HTTP), bucket `eventbus-test`, as
/// the tests read it back: straight from the server, not through the job's settings.
pub fn test_s3_store(endpoint: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name("eventbus-test")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .expect("s3")
}

/// One row of a warehouse table, as the tests check it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableRow {
    /// `_partition`.
    pub partition: i32,
    /// `_offset`.
    pub offset: i64,
    /// `event_id`.
    pub event_id: String,
}

/// Reads every `*.parquet` object under `prefix` of `store` (and nothing else: staged
/// files and the `_eventbus` folder are not data), in path order.
pub async fn read_table(
    store: &dyn object_store::ObjectStore,
    prefix: &object_store::path::Path,
) -> Vec<TableRow> {
    use futures_util::TryStreamExt;
    let mut files: Vec<_> = store
        .list(Some(prefix))
        .try_collect::<Vec<_>>()
        .await
        .expect("list the table");
    files.retain(|o| o.location.as_ref().ends_with(".parquet"));
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut rows = Vec::new();
    for f in files {
        let bytes = store
            .get(&f.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("read");
        rows.extend(parquet_rows(bytes, f.location.as_ref()));
    }
    rows
}

/// The rows of one Parquet file of a table (`name` for messages).
///
/// # Panics
/// The bytes are not a whole Parquet file with `_partition`, `_offset` and `event_id`.
pub fn parquet_rows(bytes: bytes::Bytes, name: &str) -> Vec<TableRow> {
    use arrow::array::{Array, Int32Array, Int64Array, StringArray};
    let mut rows = Vec::new();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap_or_else(|e| panic!("{name} is not a whole Parquet file: {e}"))
        .build()
        .expect("reader");
    for batch in reader {
        let batch = batch.expect("batch");
        let col = |column: &str| {
            batch
                .column_by_name(column)
                .unwrap_or_else(|| panic!("{name} has no column {column}"))
                .clone()
        };
        let parts = col("_partition");
        let parts = parts.as_any().downcast_ref::<Int32Array>().expect("int32");
        let offsets = col("_offset");
        let offsets = offsets
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64");
        // A uuid column is 16 bytes (Arrow's uuid storage); a plain string is text.
        let ids = col("event_id");
        let id_of = |i: usize| -> String {
            if let Some(s) = ids.as_any().downcast_ref::<StringArray>() {
                return s.value(i).to_owned();
            }
            let b = ids
                .as_any()
                .downcast_ref::<arrow::array::FixedSizeBinaryArray>()
                .expect("event_id is a string or a 16-byte uuid")
                .value(i);
            uuid_text(b)
        };
        for i in 0..batch.num_rows() {
            rows.push(TableRow {
                partition: parts.value(i),
                offset: offsets.value(i),
                event_id: id_of(i),
            });
        }
    }
    rows
}

/// Rows read more than once, and the count of distinct (partition, offset) pairs.
pub fn table_duplicates(rows: &[TableRow]) -> (usize, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut dups = 0;
    for r in rows {
        if !seen.insert((r.partition, r.offset)) {
            dups += 1;
        }
    }
    (dups, seen.len())
}

/// The canonical text of a 16-byte uuid.
pub fn uuid_text(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Holds every record and its ack until opened: a destination that has stopped
/// answering, while the records wait in memory as a buffering sink keeps them. Once
/// open, it acknowledges at once.
#[derive(Clone, Default)]
pub struct GateSink {
    inner: std::sync::Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    received: std::sync::atomic::AtomicU64,
    open: std::sync::atomic::AtomicBool,
    held: std::sync::Mutex<
        Vec<(
            eventbus_runtime::Record<bytes::Bytes>,
            eventbus_runtime::Ack,
        )>,
    >,
}

impl GateSink {
    pub fn received(&self) -> u64 {
        self.inner
            .received
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn open(&self) {
        self.inner
            .open
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let held = std::mem::take(&mut *self.inner.held.lock().unwrap());
        for (_record, ack) in held {
            ack.done();
        }
    }
}

impl eventbus_runtime::Sink<bytes::Bytes> for GateSink {
    async fn send(
        &self,
        record: eventbus_runtime::Record<bytes::Bytes>,
        ack: eventbus_runtime::Ack,
    ) -> Result<(), eventbus_runtime::SinkError> {
        self.inner
            .received
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut held = self.inner.held.lock().unwrap();
        if self.inner.open.load(std::sync::atomic::Ordering::SeqCst) {
            drop(held);
            ack.done();
        } else {
            held.push((record, ack));
        }
        Ok(())
    }
}

/// A built job running on the test's runtime until [`Running::stop`].
pub struct Running {
    pub stats: Arc<eventbus_runtime::JobStats>,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<
        Result<eventbus_runtime::JobReport, eventbus_runtime::RuntimeError>,
    >,
}

impl Running {
    /// Spawns `job`; it runs until stopped, its source ends, or it fails.
    pub fn start<S, Op, K>(job: eventbus_runtime::RunnableJob<S, Op, K>) -> Self
    where
        S: eventbus_runtime::Source,
        Op: eventbus_runtime::Operator<S::Item>,
        K: eventbus_runtime::Sink<Op::Out>,
    {
        let stats = job.stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(job.run(async move {
            let _ = stopped.await;
        }));
        Self {
            stats,
            stop,
            handle,
        }
    }

    /// Waits until the job has committed `n` records in all (offsets summed over
    /// partitions), failing the test after `timeout`.
    pub async fn wait_committed(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats.committed().values().sum::<i64>() < n {
            assert!(
                Instant::now() < deadline,
                "committed {:?} of {n} records within {timeout:?} ({} consumed)",
                self.stats.committed(),
                self.stats.consumed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the job as a signal would, and returns its report; a failed job fails the
    /// test.
    pub async fn stop(self) -> eventbus_runtime::JobReport {
        let _ = self.stop.send(());
        self.handle
            .await
            .expect("join the job")
            .expect("the job stops cleanly")
    }
}
