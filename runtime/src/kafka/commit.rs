//! Offset commits that wait for the coordinator's answer, but not forever.
//!
//! librdkafka's synchronous commit waits on a queue of its own without a deadline: with
//! the group coordinator gone (its broker died), it never returns, and a consumer thread
//! inside it never sees a shutdown. Here the commit's result is posted to a queue of ours
//! (`rd_kafka_commit_queue`, event API), which is polled until a deadline.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// Commits `offsets` and waits up to `timeout` for the answer. A commit that times out
/// may still be applied later: commits carry absolute offsets, so that is harmless.
///
/// # Errors
/// What the coordinator or librdkafka answered, or that no answer came in time.
pub(super) fn commit_within<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Result<(), String> {
    let rk = consumer.client().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is a live consumer for the whole call. The queue is ours and destroyed
    // before returning; librdkafka keeps its own reference for a reply still in flight.
    // `offsets` is copied by librdkafka. The event is destroyed once read.
    unsafe {
        let queue = rdsys::rd_kafka_queue_new(rk);
        if queue.is_null() {
            return Err("librdkafka could not create a queue for the commit's answer".into());
        }
        let sent =
            rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        let result = if sent == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            let event = rdsys::rd_kafka_queue_poll(queue, timeout_ms);
            if event.is_null() {
                Err(format!(
                    "no answer from the group coordinator within {} s",
                    timeout.as_secs_f64()
                ))
            } else {
                let answer = if rdsys::rd_kafka_event_error(event)
                    == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    Ok(())
                } else {
                    Err(text(rdsys::rd_kafka_event_error_string(event)))
                };
                rdsys::rd_kafka_event_destroy(event);
                answer
            }
        } else {
            Err(text(rdsys::rd_kafka_err2str(sent)))
        };
        rdsys::rd_kafka_queue_destroy(queue);
        result
    }
}

/// A C string of librdkafka's, or a placeholder for none.
///
/// # Safety
/// `s` is null or a NUL-terminated string that outlives the call.
unsafe fn text(s: *const std::ffi::c_char) -> String {
    if s.is_null() {
        return "unknown error".into();
    }
    // SAFETY: as the caller promises.
    unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
}
