//! The operations endpoint against the real broker (tansu) and the S3 server: consumer
//! lag as Prometheus reads it, and readiness while a sink is stalled. `make test` starts
//! both.
#![cfg(feature = "real-broker")]
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use eventbus_jobs::topic_io;
use eventbus_tests::{JobProcess, run_python, shared_brokers, unique, wait_committed_to_end};

const SCRAPE: &str = include_str!("../python/scrape_lag.py");

/// `GET path` on `addr`: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match ok() {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends SIGCONT to the S3 server when dropped, so a failing test never leaves it
/// stopped for the tests after it.
struct Stopped(u32);

impl Stopped {
    fn signal(pid: u32, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        Self::signal(self.0, "CONT");
    }
}

fn scrape(addr: &str, topic: &str) -> serde_json::Value {
    serde_json::from_str(&run_python(
        SCRAPE,
        &[format!("http://{addr}/metrics"), topic.to_owned()],
    ))
    .unwrap()
}

/// Every partition's scraped lag equals its end offset minus the group's committed
/// offset, as the broker reports them.
fn lag_matches(addr: &str, topic: &str, group: &str) -> Result<(), String> {
    let ends = topic_io::end_offsets(&shared_brokers(), topic).map_err(|e| e.to_string())?;
    let committed =
        topic_io::committed(&shared_brokers(), group, topic).map_err(|e| e.to_string())?;
    let scraped = scrape(addr, topic);
    for (p, end) in &ends {
        let want = end - committed.get(p).copied().unwrap_or(0).max(0);
        let got = scraped["lag"][p.to_string()].as_i64();
        if got != Some(want) {
            return Err(format!(
                "partition {p}: scraped lag {got:?}, end {end} - committed {:?} = {want}; scraped {scraped}",
                committed.get(p)
            ));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_follows_the_committed_offsets_and_readiness_names_a_stalled_partition() {
    let endpoint =
        std::env::var("EVENTBUS_TEST_S3").expect("EVENTBUS_TEST_S3: run through make test");
    let pid: u32 = std::env::var("EVENTBUS_TEST_S3_PID")
        .expect("EVENTBUS_TEST_S3_PID")
        .trim()
        .parse()
        .unwrap();
    let brokers = shared_brokers();
    let topic = unique("ops");
    topic_io::create_topics(&brokers, &[(&topic, 3), (&format!("{topic}.dlq"), 1)])
        .await
        .unwrap();
    let batch = |seed: u64| {
        let (id, _) = eventbus_tests::vehicle_state_schema();
        eventbus_tests::vehicle_states(seed, id, 300)
    };
    let (b, t, first) = (brokers.clone(), topic.clone(), batch(1));
    tokio::task::spawn_blocking(move || topic_io::produce(&b, &t, first, |_| {}))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = unique("ops_g");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.path().join("warehouse.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
"max.poll.interval.ms" = "20000"
"statistics.interval.ms" = "500"
[source]
group_id = "{group}"
topics = ["{topic}"]
commit_interval_ms = 200
[warehouse]
table_root = "s3://eventbus-test/{prefix}"
roll_rows = 4000
max_age_ms = 500
[warehouse.event_time]
"{topic}" = "event_time"
[warehouse.s3]
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
[telemetry]
stall_after_ms = 3000
"#,
            prefix = unique("ops_tables"),
        ),
    )
    .unwrap();
    let (t, g, a) = (topic.clone(), group.clone(), addr.clone());
    tokio::task::spawn_blocking(move || {
        let mut job = JobProcess::warehouse(&cfg, dir.path(), "ops", &["--metrics-addr", &a]);
        wait_for("the probes answer", Duration::from_secs(30), || {
            let (health, _) = get(&a, "/healthz");
            (health == 200)
                .then_some(())
                .ok_or(format!("/healthz {health}"))
        });
        wait_for("ready", Duration::from_secs(60), || {
            let (status, body) = get(&a, "/readyz");
            (status == 200)
                .then_some(())
                .ok_or(format!("/readyz {status}: {body}"))
        });
        wait_committed_to_end(&shared_brokers(), &g, &t, Duration::from_secs(60), || {
            job.log_tail()
        });
        wait_for("lag 0 once caught up", Duration::from_secs(20), || {
            lag_matches(&a, &t, &g)
        });

        // The S3 server stops answering: the sink stalls, records wait, the lag grows.
        Stopped::signal(pid, "STOP");
        let stopped = Stopped(pid);
        let (b, tt) = (shared_brokers(), t.clone());
        topic_io::produce(&b, &tt, batch(2), |_| {}).unwrap();
        wait_for(
            "not ready, naming a stalled partition",
            Duration::from_secs(30),
            || {
                let (status, body) = get(&a, "/readyz");
                (status == 503
                    && body.contains(&format!("partition {t}["))
                    && body.contains("stalled"))
                .then_some(())
                .ok_or(format!("/readyz {status}: {body}"))
            },
        );
        wait_for(
            "the lag equals end minus committed while stalled",
            Duration::from_secs(20),
            || lag_matches(&a, &t, &g),
        );
        let lagging: i64 = scrape(&a, &t)["lag"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum();
        assert!(lagging > 0, "the stalled records show as lag");

        // The server answers again: the job catches up, the lag falls to 0, ready again.
        drop(stopped);
        wait_committed_to_end(&shared_brokers(), &g, &t, Duration::from_secs(90), || {
            job.log_tail()
        });
        wait_for("lag 0 again", Duration::from_secs(20), || {
            lag_matches(&a, &t, &g)
        });
        wait_for("ready again", Duration::from_secs(30), || {
            let (status, body) = get(&a, "/readyz");
            (status == 200)
                .then_some(())
                .ok_or(format!("/readyz {status}: {body}"))
        });
        job.signal("TERM");
        assert!(
            job.wait(Duration::from_secs(60)).success(),
            "{}",
            job.log_tail()
        );
    })
    .await
    .unwrap();
}
