//! What the running jobs of this process say about themselves, for health probes.
//!
//! Every job registers its [`JobStats`] here when it starts ([`running`] lists them).
//! Its source refreshes, about once a second, each assigned partition's records waiting
//! (delivered to the executor, not yet committable) and records done, and marks the job
//! started once its group gave it partitions. A [`Readiness`] check reads them:
//!
//! - a job that has not been given partitions yet is **not ready** (it has not joined);
//! - a job that failed (a sink failed, a fatal Kafka error) is **not ready**;
//! - a partition with records waiting and none done for `stall_after` is **stalled**,
//!   and so not ready. A partition whose records wait in an operator's state (a window)
//!   is not waiting: those are held, not in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::executor::JobStats;
pub use crate::executor::Progress;
use crate::record::TopicPartition;

static RUNNING: Mutex<Vec<(String, Weak<JobStats>)>> = Mutex::new(Vec::new());

/// Registers a job that starts running.
pub(crate) fn register(name: &str, stats: &Arc<JobStats>) {
    let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    running.retain(|(_, s)| s.strong_count() > 0);
    running.push((name.to_owned(), Arc::downgrade(stats)));
}

/// The jobs of this process that are still running, by name.
pub fn running() -> Vec<(String, Arc<JobStats>)> {
    let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    running.retain(|(_, s)| s.strong_count() > 0);
    running
        .iter()
        .filter_map(|(n, s)| s.upgrade().map(|s| (n.clone(), s)))
        .filter(|(_, s)| !s.is_finished())
        .collect()
}

/// Remembers when each partition last made progress, across checks.
#[derive(Debug, Default)]
pub struct Readiness {
    since: HashMap<(String, TopicPartition), (u64, Instant)>,
}

impl Readiness {
    /// No check yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every job of `jobs` is ready at `now`; otherwise why not, one line per
    /// problem, naming the job and the partition.
    ///
    /// # Errors
    /// The reasons the process is not ready.
    pub fn check(
        &mut self,
        jobs: &[(String, Arc<JobStats>)],
        now: Instant,
        stall_after: Duration,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if jobs.is_empty() {
            problems.push("no job is running yet".to_owned());
        }
        let mut seen = Vec::new();
        for (name, stats) in jobs {
            if let Some(failure) = stats.failure() {
                problems.push(format!("job {name} failed: {failure}"));
                continue;
            }
            if !stats.started() {
                problems.push(format!("job {name} has not been given partitions yet"));
                continue;
            }
            for (tp, p) in stats.progress() {
                let key = (name.clone(), tp.clone());
                let entry = self.since.entry(key.clone()).or_insert((p.done, now));
                if entry.0 != p.done || p.waiting == 0 {
                    *entry = (p.done, now);
                }
                let quiet = now.saturating_duration_since(entry.1);
                if p.waiting > 0 && quiet >= stall_after {
                    problems.push(format!(
                        "job {name}: partition {tp} is stalled: {} records waiting and none done for {} s",
                        p.waiting,
                        quiet.as_secs()
                    ));
                }
                seen.push(key);
            }
        }
        self.since.retain(|k, _| seen.contains(k));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(progress: &[(i32, usize, u64)]) -> Vec<(String, Arc<JobStats>)> {
        let stats = Arc::new(JobStats::default());
        stats.set_started();
        stats.set_progress(
            progress
                .iter()
                .map(|(p, waiting, done)| {
                    (
                        TopicPartition::new("t", *p),
                        Progress {
                            waiting: *waiting,
                            done: *done,
                        },
                    )
                })
                .collect(),
        );
        vec![("j".to_owned(), stats)]
    }

    #[test]
    fn a_partition_waiting_without_progress_is_stalled_until_it_moves() {
        let mut r = Readiness::new();
        let t0 = Instant::now();
        let stall = Duration::from_secs(60);
        assert!(r.check(&job(&[(0, 5, 10), (1, 0, 3)]), t0, stall).is_ok());
        let later = t0 + Duration::from_secs(61);
        let e = r
            .check(&job(&[(0, 5, 10), (1, 0, 3)]), later, stall)
            .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("t[0]") && e[0].contains("5 records waiting"),
            "{e:?}"
        );
        // It moves again: ready.
        assert!(
            r.check(&job(&[(0, 5, 11), (1, 0, 3)]), later, stall)
                .is_ok()
        );
    }

    #[test]
    fn a_job_without_partitions_or_failed_is_not_ready() {
        let mut r = Readiness::new();
        let stats = Arc::new(JobStats::default());
        let jobs = vec![("j".to_owned(), stats.clone())];
        let e = r
            .check(&jobs, Instant::now(), Duration::from_secs(1))
            .unwrap_err();
        assert!(e[0].contains("not been given partitions"), "{e:?}");
        stats.set_started();
        assert!(
            r.check(&jobs, Instant::now(), Duration::from_secs(1))
                .is_ok()
        );
        stats.set_failure("sink: bucket gone".to_owned());
        let e = r
            .check(&jobs, Instant::now(), Duration::from_secs(1))
            .unwrap_err();
        assert!(e[0].contains("failed: sink: bucket gone"), "{e:?}");
    }
}
