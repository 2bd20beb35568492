//! The consumer thread's message path: many messages per librdkafka call.
//!
//! rdkafka's `poll` returns one message per call, and every call takes the queue's lock
//! and reads the clock three or four times (librdkafka's poll bookkeeping and rdkafka's
//! own timeout). On tansu that was about a third of the bare consumer's CPU, and the
//! executor's consumer thread paid it too. Here each owned partition's fetch queue is
//! forwarded to a queue of our own, read with `rd_kafka_consume_batch_queue`: one lock
//! and two clock reads for up to a batch of messages.
//!
//! Everything else stays on the consumer queue and is served by rdkafka's `poll` as
//! before: rebalances (which must reach the source's callbacks; a batch read would
//! answer them with librdkafka's own forced unassign), commit results, statistics,
//! errors, and the messages of a partition not forwarded yet.
//!
//! **Order.** The consumer thread alone forwards partitions, and it takes everything on
//! the consumer queue before it reads ours. A partition's messages that reached the
//! consumer queue before its forward are therefore read before any that reached ours
//! after it. A partition whose forward is undone (below) keeps its messages in its own
//! queue, and forwarding it again appends them to ours in order.
//!
//! **Forwarding.** librdkafka undoes a partition's forward when its fetch stops (a
//! revoke), and keeps our claim on it, so it is never forwarded to the consumer queue
//! again. The consumer thread forwards every owned partition after each assign or
//! revoke, and again every second: a revoke's stop, processed late by librdkafka after
//! an assign of the same partition was already forwarded, delays that partition by a
//! second at most and loses nothing.
//!
//! **Waking.** Both queues write a byte to one socket when they turn non-empty; the
//! thread sleeps on that socket when both are empty.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io::Read;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::record::TopicPartition;

/// Messages read from our queue in one call at most.
const MAX_TAKE: usize = 1024;

/// The two queues of a consumer and the socket they wake the consumer thread through.
/// Borrows the consumer: librdkafka wants queue handles destroyed before their client.
pub(super) struct Fetch<'c> {
    rk: *mut rdsys::rd_kafka_t,
    /// Ours: every forwarded partition's messages.
    messages: *mut rdsys::rd_kafka_queue_t,
    /// A handle on the consumer queue, to see whether it holds anything.
    events: *mut rdsys::rd_kafka_queue_t,
    /// The end librdkafka writes to; open as long as the queues may write.
    _wake: UnixStream,
    waiting: UnixStream,
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    consumer: PhantomData<&'c ()>,
}

impl<'c> Fetch<'c> {
    /// Sets up our queue and the wake-up socket for `consumer` (a group member, so it has
    /// a consumer queue).
    pub(super) fn new<C: ConsumerContext>(consumer: &'c BaseConsumer<C>) -> std::io::Result<Self> {
        let (wake, waiting) = UnixStream::pair()?;
        // librdkafka must never block writing a wake-up: a full socket already wakes.
        wake.set_nonblocking(true)?;
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is a live consumer for `'c`; both handles are ours to destroy (in
        // `Drop`, before the consumer can go). librdkafka copies the one-byte payload.
        let (messages, events) = unsafe {
            let messages = rdsys::rd_kafka_queue_new(rk);
            let events = rdsys::rd_kafka_queue_get_consumer(rk);
            for q in [messages, events] {
                if !q.is_null() {
                    rdsys::rd_kafka_queue_io_event_enable(
                        q,
                        wake.as_raw_fd(),
                        b"1".as_ptr().cast(),
                        1,
                    );
                }
            }
            (messages, events)
        };
        let fetch = Self {
            rk,
            messages,
            events,
            _wake: wake,
            waiting,
            taken: vec![std::ptr::null_mut(); MAX_TAKE],
            consumer: PhantomData,
        };
        if messages.is_null() || events.is_null() {
            return Err(std::io::Error::other(
                "librdkafka gave no queue for the consumer's messages",
            ));
        }
        Ok(fetch)
    }

    /// Sends these partitions' messages to our queue from now on; messages they already
    /// hold in their own queues come along, in order.
    pub(super) fn forward<'a>(&self, partitions: impl IntoIterator<Item = &'a TopicPartition>) {
        for tp in partitions {
            let Ok(topic) = CString::new(tp.topic.as_bytes()) else {
                continue;
            };
            // SAFETY: `rk` is live; the partition's queue handle is ours and destroyed
            // right after the forward, which keeps its own reference to our queue.
            unsafe {
                let q = rdsys::rd_kafka_queue_get_partition(self.rk, topic.as_ptr(), tp.partition);
                if !q.is_null() {
                    rdsys::rd_kafka_queue_forward(q, self.messages);
                    rdsys::rd_kafka_queue_destroy(q);
                }
            }
        }
    }

    /// Whether the consumer queue holds anything (an event, or a message of a partition
    /// not forwarded yet): it must be served before our queue is read.
    pub(super) fn consumer_queue_waiting(&self) -> bool {
        // SAFETY: the handle is live until `Drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.events) > 0 }
    }

    /// Reads up to `max` messages from our queue without waiting and hands each to
    /// `f`; returns how many there were. Messages are destroyed after `f` has seen
    /// them, even when `f` panics.
    pub(super) fn take(&mut self, max: usize, mut f: impl FnMut(&Fetched<'_>)) -> usize {
        /// Destroys the messages of one read.
        struct Taken<'a>(&'a [*mut rdsys::rd_kafka_message_t]);
        impl Drop for Taken<'_> {
            fn drop(&mut self) {
                for &m in self.0 {
                    // SAFETY: each was returned by the read below and is destroyed once.
                    unsafe { rdsys::rd_kafka_message_destroy(m) };
                }
            }
        }
        let max = max.clamp(1, self.taken.len());
        // SAFETY: the array has room for `max` pointers; a timeout of 0 never waits.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.messages, 0, self.taken.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        let taken = Taken(&self.taken[..n]);
        for &m in taken.0 {
            f(&Fetched {
                m,
                life: PhantomData,
            });
        }
        n
    }

    /// Sleeps until either queue turns non-empty, or `timeout` passes.
    pub(super) fn wait(&mut self, timeout: Duration) {
        let mut bytes = [0u8; 64];
        if self.waiting.set_read_timeout(Some(timeout)).is_ok() {
            let _ = self.waiting.read(&mut bytes);
        }
    }
}

impl Drop for Fetch<'_> {
    fn drop(&mut self) {
        // SAFETY: both handles are ours; the wake-ups are turned off before the socket
        // closes (after this body). Partitions still forwarded to our queue find it
        // disabled and drop what they fetch: nothing read from it was registered.
        unsafe {
            for q in [self.messages, self.events] {
                if !q.is_null() {
                    rdsys::rd_kafka_queue_io_event_enable(q, -1, std::ptr::null(), 0);
                    rdsys::rd_kafka_queue_destroy(q);
                }
            }
        }
    }
}

/// A message as the consumer thread reads it: from rdkafka's `poll` (the consumer
/// queue) or from a batch read (the batch queue).
pub(super) trait Polled {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// Milliseconds, when the record has a timestamp.
    fn timestamp(&self) -> Option<i64>;
    /// Calls `f(key, value)` for every header, keys byte for byte.
    fn headers(&self, f: impl FnMut(&[u8], Option<&[u8]>));
}

/// One message read from our queue, valid while [`Fetch::take`]'s callback runs.
pub(super) struct Fetched<'a> {
    m: *mut rdsys::rd_kafka_message_t,
    life: PhantomData<&'a ()>,
}

impl Fetched<'_> {
    fn message(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: `m` is a live message until `take` destroys it, after the callback.
        unsafe { &*self.m }
    }

    /// A consumer error carried by the message in place of a record.
    pub(super) fn error(&self) -> Option<RDKafkaErrorCode> {
        let err = self.message().err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| err.into())
    }
}

impl Polled for Fetched<'_> {
    fn topic(&self) -> &str {
        let rkt = self.message().rkt;
        if rkt.is_null() {
            return "";
        }
        // SAFETY: the message holds its topic; Kafka topic names are ASCII.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(rkt)) }
            .to_str()
            .unwrap_or_default()
    }

    fn partition(&self) -> i32 {
        self.message().partition
    }

    fn offset(&self) -> i64 {
        self.message().offset
    }

    fn key(&self) -> Option<&[u8]> {
        let m = self.message();
        // SAFETY: `key_len` bytes at `key`, owned by the live message.
        (!m.key.is_null()).then(|| unsafe { std::slice::from_raw_parts(m.key.cast(), m.key_len) })
    }

    fn payload(&self) -> Option<&[u8]> {
        let m = self.message();
        // SAFETY: `len` bytes at `payload`, owned by the live message.
        (!m.payload.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(m.payload.cast(), m.len) })
    }

    fn timestamp(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live; librdkafka writes the kind.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.m, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts)
    }

    fn headers(&self, f: impl FnMut(&[u8], Option<&[u8]>)) {
        let mut headers = std::ptr::null_mut();
        // SAFETY: the message is live and owns the headers object librdkafka returns.
        unsafe {
            if super::headers::may_have_headers(self.m)
                && rdsys::rd_kafka_message_headers(self.m, &mut headers)
                    == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && !headers.is_null()
            {
                super::headers::for_each_native(headers, f);
            }
        }
    }
}
