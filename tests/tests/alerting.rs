//! The alerting job against the real broker (tansu): exact alerts under SIGKILLs, and
//! webhooks under failure. The alerts are read back by Python's confluent-kafka and
//! fastavro and compared with alerts computed there from the produced events
//! (`tests/python/alerts_check.py`). `make test` starts tansu.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_schemas::events::{
    EmergencyEvent, EmergencyKind, Position, Severity, VehicleState, VehicleStatus,
};
use eventbus_tests::{
    JobProcess, run_python, shared_brokers, unique, wait_committed_to_end, wait_records,
};
use rand::Rng;

const CHECK: &str = include_str!("../python/alerts_check.py");

/// Event time of the first event: a fixed instant, so runs compare.
const T0: i64 = 1_790_000_000_000;
/// Seconds of history produced before the job starts.
const HISTORY_S: i64 = 300;
const VEHICLES: usize = 60;
const SILENT: usize = 59;

fn vehicle(v: usize) -> String {
    format!("veh-{v:02}")
}

/// The state of vehicle `v` at second `s`: speeders, brief speeders, low batteries and
/// a vehicle that goes silent, as the module docs of `alerts_check.py` expect.
fn state(v: usize, s: i64, event_time: i64) -> VehicleState {
    let in_any = |ranges: &[(i64, i64)]| ranges.iter().any(|(a, b)| (*a..*b).contains(&s));
    let speeding = match v {
        // Sustained: alert at s=40; the second incident falls in the cool-down; the
        // third fires at s=160.
        0..=5 => in_any(&[(30, 50), (60, 80), (150, 170)]),
        // Brief: never 10 s.
        6..=11 => in_any(&[(30, 35), (100, 108)]),
        _ => false,
    };
    let low = match v {
        // Alerts at s=20 and s=200; s=50..60 is inside the 120 s cool-down.
        12..=18 => in_any(&[(20, 40), (50, 60), (200, 210)]),
        _ => false,
    };
    let status = if v == 18 {
        VehicleStatus::Charging
    } else if v % 10 == 9 && !speeding {
        VehicleStatus::Idle
    } else {
        VehicleStatus::Driving
    };
    let v_i = i64::try_from(v).unwrap();
    VehicleState {
        event_id: format!("00000000-0000-4000-8000-{:012}", v_i * 1_000_000 + s),
        vehicle_id: vehicle(v),
        fleet_id: format!("fleet-{}", v % 4),
        event_time,
        position: Position {
            lat: 52.0 + v as f64 / 100.0,
            lon: 13.0,
            heading_deg: None,
        },
        speed_kph: if speeding {
            130.0
        } else {
            40.0 + ((v_i * 7 + s) % 40) as f32
        },
        battery_pct: if low { 10.0 } else { 80.0 },
        status,
        odometer_km: None,
        driver_id: Some(format!("driver-{v}")),
        firmware_version: None,
    }
}

struct Fixture {
    states: String,
    emergencies: String,
    alerts: String,
    group: String,
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

impl Fixture {
    async fn new(extra: &str) -> Self {
        let brokers = shared_brokers();
        let (states, emergencies, alerts) =
            (unique("al_states"), unique("al_emerg"), unique("al_alerts"));
        topic_io::create_topics(
            &brokers,
            &[
                (&states, 6),
                (&emergencies, 2),
                (&alerts, 3),
                (&format!("{states}.dlq"), 1),
                (&format!("{alerts}.dlq"), 1),
            ],
        )
        .await
        .expect("create topics");
        let dir = tempfile::tempdir().expect("tempdir");
        let group = unique("al_g");
        let cfg = dir.path().join("alerting.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "20000"
[source]
group_id = "{group}"
topics = []
[alerting]
output = "{alerts}"
[alerting.topics]
"vehicle.state.v1" = "{states}"
"safety.emergency.v1" = "{emergencies}"
[dlq.topics]
"{states}" = "{states}.dlq"
"{alerts}" = "{alerts}.dlq"

[[rule]]
name = "speeding"
topic = "vehicle.state.v1"
when = "speed_kph > 120.0 && status == 'DRIVING'"
severity = "WARNING"
message = "{{vehicle_id}} at {{speed_kph}} km/h, driver {{driver_id}}"
for = "10s"
cooldown = "60s"

[[rule]]
name = "low_battery"
topic = "vehicle.state.v1"
when = "battery_pct < 15 && status == 'DRIVING' && position.lat > 0.0"
severity = "CRITICAL"
message = "{{vehicle_id}} at {{battery_pct}}% while driving"
cooldown = "2m"

[[rule]]
name = "silent"
topic = "vehicle.state.v1"
absent_for = "6s"
severity = "INFO"
message = "{{vehicle_id}} silent since {{event_time}}"
{extra}
"#
            ),
        )
        .expect("write config");
        Self {
            states,
            emergencies,
            alerts,
            group,
            dir,
            cfg,
        }
    }

    fn logs(&self) -> &Path {
        self.dir.path()
    }

    /// Produces the history: every vehicle each second (the silent one only for the
    /// first 100 s), and 40 emergencies.
    async fn produce_history(&self) {
        self.produce_history_of(true).await;
    }

    /// The history, with or without the vehicle states.
    async fn produce_history_of(&self, states: bool) {
        let (id, schema) = eventbus_tests::vehicle_state_schema();
        let mut records = Vec::new();
        for s in (0..HISTORY_S).filter(|_| states) {
            for v in 0..VEHICLES {
                if v == SILENT && s >= 100 {
                    continue;
                }
                let e = state(v, s, T0 + s * 1_000);
                records.push((
                    e.vehicle_id.clone(),
                    eventbus_schemas::encode(id, &schema, &e).unwrap(),
                ));
            }
        }
        let registry = eventbus_schemas::FileRegistry::embedded().unwrap();
        let (eid, eschema) = registry.latest_of("safety.emergency.v1-value").unwrap();
        let emergencies: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| {
                let e = EmergencyEvent {
                    emergency_id: format!("00000000-0000-4000-9000-{i:012}"),
                    vehicle_id: vehicle(i % 7),
                    event_time: T0 + i64::try_from(i).unwrap() * 3_000,
                    severity: Severity::High,
                    kind: EmergencyKind::Medical,
                    lat: 52.5,
                    lon: 13.4,
                    occupants: 2,
                    description: Some(format!("call {i}")),
                    acknowledged_by: Some("operator-7".to_owned()),
                };
                (
                    e.vehicle_id.clone(),
                    eventbus_schemas::encode(eid, &eschema, &e).unwrap(),
                )
            })
            .collect();
        let (b, s, e) = (
            shared_brokers(),
            self.states.clone(),
            self.emergencies.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if !records.is_empty() {
                topic_io::produce(&b, &s, records, |_| {}).expect("produce states");
            }
            topic_io::produce(&b, &e, emergencies, |_| {}).expect("produce emergencies");
        })
        .await
        .unwrap();
    }

    /// Live events of every vehicle but the silent one, every 500 ms, until stopped.
    fn heartbeats(&self) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, brokers, topic) = (stop.clone(), shared_brokers(), self.states.clone());
        let handle = std::thread::spawn(move || {
            let (id, schema) = eventbus_tests::vehicle_state_schema();
            let start = Instant::now();
            let mut round = 0;
            while !flag.load(Ordering::Relaxed) {
                let ms = i64::try_from(start.elapsed().as_millis()).unwrap();
                let records: Vec<(String, Vec<u8>)> = (0..VEHICLES)
                    .filter(|v| *v != SILENT)
                    .map(|v| {
                        let e = state(v, HISTORY_S + 1_000 + round, T0 + HISTORY_S * 1_000 + ms);
                        (
                            e.vehicle_id.clone(),
                            eventbus_schemas::encode(id, &schema, &e).unwrap(),
                        )
                    })
                    .collect();
                topic_io::produce(&brokers, &topic, records, |_| {}).expect("heartbeats");
                round += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        (stop, handle)
    }

    /// Every alert on the alerts topic, decoded.
    fn alerts(&self) -> Vec<eventbus_schemas::events::Alert> {
        use rdkafka::Message;
        let decoder = eventbus_schemas::Decoder::new(Arc::new(
            eventbus_schemas::FileRegistry::embedded().unwrap(),
        ));
        topic_io::read_all(&shared_brokers(), &self.alerts, Duration::from_secs(30))
            .unwrap()
            .iter()
            .map(|m| decoder.decode_typed(m.payload().unwrap(), None).unwrap())
            .collect()
    }

    fn check(&self) -> serde_json::Value {
        let schemas = eventbus_schemas::bundled_dir();
        let out = run_python(
            CHECK,
            &[
                shared_brokers().as_str(),
                self.states.as_str(),
                self.emergencies.as_str(),
                self.alerts.as_str(),
                schemas.to_str().unwrap(),
            ],
        );
        serde_json::from_str(&out).expect("json")
    }
}

/// Starts the job; when it has no partitions within 30 s (tansu sometimes strands a
/// member that joins soon after a kill), starts it again in a group of its own, which
/// reads everything again: the alerts it raises have the same ids. Returns the job and
/// its group.
fn start_assigned(fx: &Fixture, name: &str) -> (JobProcess, String) {
    let mut group = fx.group.clone();
    for attempt in 0..3 {
        let mut job = if attempt == 0 {
            JobProcess::run("alerting", &fx.cfg, fx.logs(), name, &[])
        } else {
            group = unique("al_g_retry");
            JobProcess::run(
                "alerting",
                &fx.cfg,
                fx.logs(),
                &format!("{name}-{attempt}"),
                &["--group", &group],
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && job.log_count("partitions assigned") == 0 {
            assert!(
                job.exited().is_none(),
                "the job stopped:\n{}",
                job.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if job.log_count("partitions assigned") > 0 {
            return (job, group);
        }
        job.kill();
    }
    panic!("the alerting job was never assigned partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_then_the_alerts_equal_those_computed_from_the_input() {
    let fx = Fixture::new("").await;
    fx.produce_history().await;
    let (stop, beats) = fx.heartbeats();
    let fx = Arc::new(fx);
    let f = fx.clone();
    tokio::task::spawn_blocking(move || {
        let mut rng = rand::rng();
        for n in 0..3 {
            let (mut job, _) = start_assigned(&f, &format!("run{n}"));
            if n == 0 {
                // Killed only once it raised something: the next runs start mid-way.
                wait_records(&shared_brokers(), &f.alerts, 1, Duration::from_secs(60));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(300..3_000)));
            assert!(
                job.exited().is_none(),
                "the job stopped:\n{}",
                job.log_tail()
            );
            job.kill();
        }
        let (mut job, group) = start_assigned(&f, "final");
        // The silent vehicle's absence alert comes 6 s after the job reads its last
        // event; then the others go quiet too, and their absences release the last
        // holds, so the group commits to the end.
        std::thread::sleep(Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        beats.join().unwrap();
        let diag = || job_log(&f, "final");
        wait_committed_to_end(
            &shared_brokers(),
            &group,
            &f.states,
            Duration::from_secs(120),
            diag,
        );
        wait_committed_to_end(
            &shared_brokers(),
            &group,
            &f.emergencies,
            Duration::from_secs(60),
            diag,
        );
        job.signal("TERM");
        assert!(
            job.wait(Duration::from_secs(60)).success(),
            "{}",
            job.log_tail()
        );
    })
    .await
    .unwrap();
    let summary = fx.check();
    eprintln!("alerts check: {summary}");
    assert_eq!(summary["missing"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["extra"], serde_json::json!([]), "{summary}");
    // The speeding message names {driver_id}, a PII field: masked in every copy.
    assert_eq!(summary["pii_leaks"], 0, "{summary}");
    assert!(summary["masked"].as_u64().unwrap() > 0, "{summary}");
    // 6 sustained speeders twice, 6 drivers with low batteries twice (the charging one
    // never), every emergency.
    assert_eq!(
        summary["by_rule"],
        serde_json::json!({"speeding": 12, "low_battery": 12, "emergency": 40}),
        "{summary}"
    );
    // The silent vehicle's absence, pointing at its last event.
    let last = &summary["last_of"][vehicle(SILENT)];
    let silent: Vec<&serde_json::Value> = summary["silent_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a[0] == vehicle(SILENT).as_str())
        .collect();
    assert_eq!(silent.len(), 1, "{summary}");
    assert_eq!(silent[0][1], last[0], "{summary}");
    assert_eq!(silent[0][2], last[1], "{summary}");
}

fn job_log(fx: &Fixture, name: &str) -> String {
    std::fs::read_to_string(fx.logs().join(format!("{name}.log")))
        .map(|l| l.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

const WEBHOOK_SERVER: &str = include_str!("../python/webhook_server.py");

/// The misbehaving webhook receiver of `webhook_server.py`, as a child process.
struct Receiver {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port_file, log) = (dir.path().join("port"), dir.path().join("requests.jsonl"));
        let child = std::process::Command::new(std::env::var("EVENTBUS_TEST_PYTHON").unwrap())
            .arg("-c")
            .arg(WEBHOOK_SERVER)
            .arg(&port_file)
            .arg(&log)
            .spawn()
            .expect("start the webhook receiver");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the webhook receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Every request logged so far.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every alert reaches a webhook that fails 30% of requests and is down for 5 s, within
/// its rate limit (by the receiver's own clock); the alerts of a webhook that refuses
/// everything end in the DLQ with their context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_every_alert_within_their_rate_and_the_refused_go_to_the_dlq() {
    let receiver = Receiver::start();
    let port = receiver.port;
    let fx = Fixture::new(&format!(
        r#"
[[webhook]]
url = "http://127.0.0.1:{port}/ok"
severities = ["CRITICAL"]
rate_per_sec = 20
headers = {{ Authorization = "Bearer s3cret-token" }}
[webhook.retry]
initial_delay_ms = 100
max_delay_ms = 1000
max_attempts = 40
max_elapsed_ms = 60000

[[webhook]]
url = "http://127.0.0.1:{port}/refuse"
rules = ["emergency"]
rate_per_sec = 20
[webhook.retry]
initial_delay_ms = 20
max_delay_ms = 50
max_attempts = 3
"#
    ))
    .await;
    // Emergencies only: 40 CRITICAL alerts.
    fx.produce_history_of(false).await;
    let fx = Arc::new(fx);
    let f = fx.clone();
    let receiver = Arc::new(receiver);
    let r = receiver.clone();
    tokio::task::spawn_blocking(move || {
        let (mut job, group) = start_assigned(&f, "hooks");
        let diag = || job_log(&f, "hooks");
        wait_committed_to_end(
            &shared_brokers(),
            &group,
            &f.emergencies,
            Duration::from_secs(120),
            diag,
        );
        job.signal("TERM");
        assert!(
            job.wait(Duration::from_secs(60)).success(),
            "{}",
            job.log_tail()
        );
        let _ = r;
    })
    .await
    .unwrap();

    let requests = receiver.requests();
    assert!(
        requests.iter().any(|r| r["down"] == true),
        "the receiver never went down: {} requests",
        requests.len()
    );
    let ids: std::collections::BTreeSet<String> =
        fx.alerts().into_iter().map(|a| a.alert_id).collect();
    assert_eq!(ids.len(), 40, "one alert per emergency");
    // Every alert was taken (200) by the flaky webhook, with its header.
    let ok = |path: &str| {
        requests
            .iter()
            .filter(move |r| r["path"] == path)
            .collect::<Vec<_>>()
    };
    let taken: std::collections::BTreeSet<String> = ok("/ok")
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["alert_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(taken, ids, "every alert reached the flaky webhook");
    assert!(ok("/ok").iter().all(|r| r["auth"] == "Bearer s3cret-token"));
    assert!(
        ok("/ok").iter().any(|r| r["status"] == 503),
        "the flaky webhook failed nothing"
    );
    // The rate limit, by the receiver's clock: at most 20 requests a second per URL
    // (one more at a window's edge, one for scheduling).
    for path in ["/ok", "/refuse"] {
        let times: Vec<f64> = ok(path).iter().map(|r| r["t"].as_f64().unwrap()).collect();
        let worst = times
            .iter()
            .map(|t| times.iter().filter(|u| **u >= *t && **u < t + 1.0).count())
            .max()
            .unwrap_or(0);
        assert!(worst <= 22, "{path}: {worst} requests within one second");
    }
    // The refused webhook (503s, and refused connections while the receiver is down):
    // each alert tried 3 times, then dead-lettered with its context.
    let letters = topic_io::read_all(
        &shared_brokers(),
        &format!("{}.dlq", fx.alerts),
        Duration::from_secs(30),
    )
    .unwrap();
    let mut lettered = std::collections::BTreeSet::new();
    for m in &letters {
        use rdkafka::Message;
        let headers = eventbus_runtime::Headers::from_kafka(m.headers().unwrap().as_borrowed());
        let h = |k: &str| String::from_utf8_lossy(headers.get(k).unwrap_or_default()).into_owned();
        assert!(
            h("eventbus.webhook.url").ends_with("/refuse"),
            "{}",
            h("eventbus.webhook.url")
        );
        assert_eq!(h("eventbus.alert.rule"), "emergency");
        assert!(
            h("eventbus.alert.source").contains(&fx.emergencies),
            "{}",
            h("eventbus.alert.source")
        );
        assert_eq!(h("eventbus.error.stage"), "sink:webhook");
        assert_eq!(h("eventbus.attempts"), "3");
        assert!(
            h("kafka_dlt-exception-message").contains("/refuse"),
            "{}",
            h("kafka_dlt-exception-message")
        );
        lettered.insert(h("eventbus.alert.id"));
    }
    assert_eq!(
        lettered, ids,
        "every alert the refusing webhook never took is in the DLQ"
    );
    // No secret in the job's log.
    let log = std::fs::read_to_string(fx.logs().join("hooks.log")).unwrap();
    assert!(!log.contains("s3cret-token"));
}

/// SIGHUP reads the rules again: a file that does not load leaves the old rules in
/// force (and the job running); one that loads puts its rules in force. Foreign bytes
/// before them go to the DLQ without stopping the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_and_keeps_the_old_ones_when_the_file_is_wrong() {
    let fx = Fixture::new("").await;
    // Two records no producer of ours writes: they go to the DLQ, and the partition
    // goes on to raise the alert below.
    let foreign = vec![
        ("veh-30".to_owned(), b"not avro at all".to_vec()),
        ("veh-30".to_owned(), vec![0, 0, 0, 0, 1, 0xff, 0xff]),
    ];
    let (b, t) = (shared_brokers(), fx.states.clone());
    tokio::task::spawn_blocking(move || topic_io::produce(&b, &t, foreign, |_| {}))
        .await
        .unwrap()
        .unwrap();
    let good = std::fs::read_to_string(&fx.cfg).unwrap();
    let fx = Arc::new(fx);
    let f = fx.clone();
    tokio::task::spawn_blocking(move || {
        let (mut job, _) = start_assigned(&f, "hup");
        std::fs::write(&f.cfg, good.replace("speed_kph > 120.0", "speed_kph >> 120.0")).unwrap();
        job.signal("HUP");
        job.wait_log("the old ones stay in force", 1, Duration::from_secs(20));
        assert!(job.log_tail().contains("not valid CEL"), "{}", job.log_tail());
        assert!(job.exited().is_none(), "{}", job.log_tail());
        // A rule that fires on any moving vehicle, at once.
        let added = "\n[[rule]]\nname = \"moving\"\ntopic = \"vehicle.state.v1\"\nwhen = \"speed_kph > 0.0\"\nseverity = \"INFO\"\nmessage = \"{vehicle_id} moves\"\n";
        std::fs::write(&f.cfg, format!("{good}{added}")).unwrap();
        job.signal("HUP");
        job.wait_log("rules reloaded", 1, Duration::from_secs(20));
        let (id, schema) = eventbus_tests::vehicle_state_schema();
        let e = state(30, 0, T0);
        topic_io::produce(
            &shared_brokers(),
            &f.states,
            vec![(e.vehicle_id.clone(), eventbus_schemas::encode(id, &schema, &e).unwrap())],
            |_| {},
        )
        .unwrap();
        wait_records(&shared_brokers(), &f.alerts, 1, Duration::from_secs(30));
        job.signal("TERM");
        assert!(job.wait(Duration::from_secs(60)).success(), "{}", job.log_tail());
    })
    .await
    .unwrap();
    let rules: Vec<String> = fx.alerts().into_iter().map(|a| a.rule).collect();
    assert_eq!(rules, vec!["moving".to_owned()]);
    let letters = topic_io::read_all(
        &shared_brokers(),
        &format!("{}.dlq", fx.states),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(letters.len(), 2, "both foreign records are in the DLQ");
}
