//! Offset commits that wait for the coordinator's answer, but not forever.
//!
//! librdkafka's synchronous commit waits on a queue of its own without a deadline: with
//! the group coordinator gone (its broker died), it never returns, and a consumer thread
//! inside it never sees a shutdown. Here the commit's result is posted to a queue of ours
//! (`rd_kafka_commit_queue`, event API), which is polled until a deadline.
#![allow(unsafe_code)]

use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::cstr_to_owned;

/// Commits `offsets` and waits up to `timeout` for the answer. A commit that times out
/// may still be applied later: commits carry absolute offsets, so that is harmless.
///
/// # Errors
/// What the coordinator or librdkafka answered, naming each partition it refused, or
/// that no answer came in time.
pub(super) fn commit_within<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Result<(), String> {
    let rk = consumer.client().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is a live consumer for the whole call. The queue is ours and destroyed
    // before returning; librdkafka keeps its own reference for a reply still in flight.
    // `offsets` is copied by librdkafka. The event, and the partition list it owns, are
    // read before the event is destroyed.
    unsafe {
        let queue = rdsys::rd_kafka_queue_new(rk);
        if queue.is_null() {
            return Err("librdkafka could not create a queue for the commit's answer".into());
        }
        let sent =
            rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        let result = if sent != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(RDKafkaErrorCode::from(sent).to_string())
        } else {
            let event = rdsys::rd_kafka_queue_poll(queue, timeout_ms);
            if event.is_null() {
                Err(format!(
                    "no answer from the group coordinator within {} s",
                    timeout.as_secs_f64()
                ))
            } else {
                let answer = answer(event);
                rdsys::rd_kafka_event_destroy(event);
                answer
            }
        };
        rdsys::rd_kafka_queue_destroy(queue);
        result
    }
}

/// The outcome an offset-commit event reports, naming each partition refused (librdkafka
/// sets the event's own error to the last refused partition's, without naming it).
///
/// # Safety
/// `event` is a live offset-commit event.
unsafe fn answer(event: *mut rdsys::rd_kafka_event_t) -> Result<(), String> {
    // SAFETY: a live event (the caller's promise); its error string and partition list
    // live as long as it does, and are copied out here.
    unsafe {
        let list = rdsys::rd_kafka_event_topic_partition_list(event);
        let count = if list.is_null() {
            0
        } else {
            usize::try_from((*list).cnt).unwrap_or(0)
        };
        let refused: Vec<String> = (0..count)
            .map(|i| &*(*list).elems.add(i))
            .filter(|p| p.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .map(|p| {
                let topic = if p.topic.is_null() {
                    String::new()
                } else {
                    cstr_to_owned(p.topic)
                };
                format!(
                    "{topic}[{}]: {}",
                    p.partition,
                    RDKafkaErrorCode::from(p.err)
                )
            })
            .collect();
        if !refused.is_empty() {
            return Err(format!("refused for {}", refused.join(", ")));
        }
        let err = rdsys::rd_kafka_event_error(event);
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        let text = rdsys::rd_kafka_event_error_string(event);
        Err(if text.is_null() {
            RDKafkaErrorCode::from(err).to_string()
        } else {
            cstr_to_owned(text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::DefaultConsumerContext;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, TopicPartitionList};

    #[test]
    fn a_refused_commit_is_an_error_naming_why() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t", 2, 1).expect("topic");
        let consumer: BaseConsumer<DefaultConsumerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "commit-test")
            .create()
            .expect("consumer");
        let mut offsets = TopicPartitionList::new();
        for p in 0..2 {
            offsets
                .add_partition_offset("t", p, Offset::Offset(5))
                .expect("offset");
        }
        let timeout = Duration::from_secs(30);
        commit_within(&consumer, &offsets, timeout).expect("a commit the coordinator takes");

        // A partition the topic does not have is refused: the error names it (librdkafka's
        // own error for the commit would not).
        let mut partly = offsets.clone();
        partly
            .add_partition_offset("t", 7, Offset::Offset(5))
            .expect("offset");
        let err = commit_within(&consumer, &partly, timeout).expect_err("t[7] refused");
        assert!(err.contains("t[7]"), "{err}");

        // A non-retriable refusal: the mock answers it for every partition of the request.
        cluster.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
        );
        let err = commit_within(&consumer, &offsets, timeout).expect_err("refused");
        assert!(err.contains("metadata"), "{err}");
    }
}
