//! A producer whose delivery reports are served by a thread that sleeps until
//! librdkafka has one for it.
//!
//! rdkafka's `ThreadedProducer` serves its reports in 100 ms rounds, and each round
//! ends by asking for the sub-millisecond rest of its deadline, which librdkafka takes
//! as 0 ms: the thread spins for up to a millisecond per round. That was about 0.5 % of
//! a core per producer with nothing to send, and more under load (an idle analytics job,
//! with three producers, used 3 % of a core). Here librdkafka writes a byte to a socket
//! when the producer's event queue goes from empty to non-empty, and the thread blocks
//! on that socket between rounds.
//!
//! The unsafe code is librdkafka's documented queue API on the producer's own handle:
//! `rd_kafka_queue_get_main`, `rd_kafka_queue_io_event_enable`, `rd_kafka_queue_length`
//! and `rd_kafka_queue_destroy`.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::bindings as rdsys;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

/// The longest the serving thread sleeps without a wake-up: it notices a stop this late
/// at most, and serves anything a lost wake-up left.
const ROUND: Duration = Duration::from_millis(100);

/// Reports served in one go before the thread checks its socket again.
const BURST: usize = 10_000;

/// A handle on the producer's main queue, where its delivery reports arrive.
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// librdkafka's queue handles may be used from any thread.
unsafe impl Send for MainQueue {}

impl MainQueue {
    fn len(&self) -> usize {
        // SAFETY: the handle is live until `drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.0) }
    }
}

impl Drop for MainQueue {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_main` and is destroyed once;
        // a fd of -1 turns the wake-up off before the socket closes.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.0, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.0);
        }
    }
}

/// A [`BaseProducer`] with a thread of its own that serves its delivery reports (and
/// so settles whatever waits on them) as soon as librdkafka has them. Dereferences to
/// the `BaseProducer`, so `send`, `flush` and the [`Producer`] methods work on it as
/// on rdkafka's `ThreadedProducer`, which it replaces.
pub struct EventProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    /// The socket librdkafka writes to; the drop writes to it too, to wake the thread.
    wake: UnixStream,
    /// Owns the queue handle, so that it is destroyed when the thread ends (in `Drop`),
    /// before the producer: librdkafka wants its queue handles gone first.
    thread: Option<JoinHandle<()>>,
    /// Rounds the serving thread has made (a wake-up, or a timeout, each).
    rounds: Arc<AtomicU64>,
}

impl<C: ProducerContext + 'static> FromClientConfigAndContext<C> for EventProducer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(config, context)?);
        let failed = |e: std::io::Error| {
            KafkaError::ClientCreation(format!("cannot set up the producer's wake-up socket: {e}"))
        };
        let (wake, waiting) = UnixStream::pair().map_err(failed)?;
        // librdkafka must never block writing a wake-up: a full socket already wakes.
        wake.set_nonblocking(true).map_err(failed)?;
        waiting.set_read_timeout(Some(ROUND)).map_err(failed)?;
        // SAFETY: the client pointer is live for the producer's life; the returned handle
        // is owned by `MainQueue`. librdkafka copies the one-byte payload, and the socket
        // outlives the queue handle (the thread that owns the handle is joined first, in
        // `Drop`).
        let queue = unsafe {
            let q = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            rdsys::rd_kafka_queue_io_event_enable(q, wake.as_raw_fd(), b"1".as_ptr().cast(), 1);
            MainQueue(q)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("kafka-reports".into())
            .spawn({
                let (producer, stop, rounds) = (producer.clone(), stop.clone(), rounds.clone());
                move || serve(&producer, &stop, &queue, &rounds, waiting)
            })
            .map_err(failed)?;
        Ok(Self {
            producer,
            stop,
            wake,
            thread: Some(thread),
            rounds,
        })
    }
}

/// Serves every report queued, then sleeps until librdkafka says there are more (or a
/// round has passed).
fn serve<C: ProducerContext>(
    producer: &BaseProducer<C>,
    stop: &AtomicBool,
    queue: &MainQueue,
    rounds: &AtomicU64,
    mut waiting: UnixStream,
) {
    let mut bytes = [0u8; 64];
    while !stop.load(Ordering::Acquire) {
        rounds.fetch_add(1, Ordering::Relaxed);
        let mut served = 0;
        while queue.len() > 0 && served < BURST {
            // One event, without waiting.
            producer.poll(Duration::ZERO);
            served += 1;
        }
        if served == BURST {
            continue;
        }
        // A wake-up, a timeout, or a closed socket: each is a reason to look again.
        if let Ok(0) = waiting.read(&mut bytes) {
            return;
        }
    }
}

impl<C: ProducerContext + 'static> EventProducer<C> {
    /// Rounds the serving thread has made: one per wake-up from librdkafka or per
    /// `ROUND` without one. An idle producer makes about ten a second.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

impl<C: ProducerContext + 'static> Deref for EventProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for EventProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&self.wake).write(b"0");
        // The thread's end destroys the queue handle. Reports that came after it stopped
        // are served by the producer's own drop (it purges and flushes), which follows.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;
    use std::time::Instant;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DeliveryResult};
    use rdkafka::{ClientContext, Message};

    use super::*;

    #[derive(Default)]
    struct Reports(Mutex<Vec<i64>>);

    impl ClientContext for Reports {}

    impl ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
            let offset = result.as_ref().map_or(-1, |m| m.offset());
            self.0.lock().unwrap().push(offset);
        }
    }

    #[test]
    fn every_report_is_served_and_an_idle_producer_sleeps() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let producer: EventProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "1")
            .create_with_context(Reports::default())
            .unwrap();
        for i in 0..2_000u32 {
            let payload = i.to_be_bytes();
            let mut record = BaseRecord::<(), [u8], ()>::to("t").payload(&payload[..]);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        // Nobody polls but the serving thread: every report arrives through it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while producer.context().0.lock().unwrap().len() < 2_000 {
            assert!(Instant::now() < deadline, "reports did not arrive");
            std::thread::sleep(Duration::from_millis(10));
        }
        let reports = producer.context().0.lock().unwrap().clone();
        assert!(reports.iter().all(|&o| o >= 0), "a record failed");

        // Idle for 1 s: about ten rounds. rdkafka's ThreadedProducer, spinning out the
        // last millisecond of each round, made thousands of polls in that time.
        let before = producer.rounds();
        std::thread::sleep(Duration::from_secs(1));
        let idle = producer.rounds() - before;
        assert!(
            idle <= 30,
            "the idle serving thread made {idle} rounds in 1 s"
        );
        drop(producer);
    }
}
