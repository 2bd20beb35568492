//! IncrementalAlterConfigs for topics, over librdkafka's C API.
//!
//! The rdkafka crate wraps only the legacy AlterConfigs request, which replaces a topic's
//! whole config set and which several brokers (tansu among them) no longer answer.
//! librdkafka itself has `rd_kafka_IncrementalAlterConfigs`; this module is the one place
//! in eventbus that calls C directly. It borrows the admin client's handle, so every
//! connection setting (security, timeouts) is the client's own.
//!
//! Safety rests on three rules kept below: every pointer handed to C is either owned here
//! and destroyed on every path (resources, options, queue, event) or borrowed from a
//! value that outlives the call (the client, the `CString`s); strings read back from C
//! are copied before the event that owns them is destroyed; no pointer escapes.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientContext;
use rdkafka::bindings as rd;
use rdkafka::client::Client;

/// Sets `key = value` on each topic with one IncrementalAlterConfigs request (op SET),
/// leaving every other config of the topic as it is. Returns, per topic, the broker's
/// answer: `Ok` or the error it gave.
///
/// # Errors
/// A name or value holds a NUL byte, librdkafka refuses a topic name (an empty one) or a
/// config entry, or no answer comes within `timeout`.
pub(crate) fn set_topic_configs<C: ClientContext>(
    client: &Client<C>,
    changes: &[(String, Vec<(String, String)>)],
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Result<(), String>)>> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for (topic, configs) in changes {
        names.push(CString::new(topic.as_str()).context("topic name holds a NUL byte")?);
        let mut kvs = Vec::new();
        for (k, v) in configs {
            kvs.push((
                CString::new(k.as_str()).with_context(|| format!("config key {k:?}"))?,
                CString::new(v.as_str()).with_context(|| format!("config value of {k}"))?,
            ));
        }
        entries.push(kvs);
    }
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let rk = client.native_ptr();

    // SAFETY: `rk` is the live handle of `client`, borrowed for this call. Each object
    // created below is destroyed before returning, on the error paths as well.
    unsafe {
        let mut resources: Vec<*mut rd::rd_kafka_ConfigResource_t> = Vec::new();
        let cleanup = |resources: &mut Vec<*mut rd::rd_kafka_ConfigResource_t>| {
            for r in resources.drain(..) {
                rd::rd_kafka_ConfigResource_destroy(r);
            }
        };
        for (name, kvs) in names.iter().zip(&entries) {
            let res = rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
            );
            // librdkafka answers NULL for a name it refuses (an empty one): adding
            // configs to it, or sending it, would dereference that NULL.
            if res.is_null() {
                cleanup(&mut resources);
                bail!(
                    "librdkafka refused the topic name {:?} for IncrementalAlterConfigs",
                    name.to_string_lossy()
                );
            }
            resources.push(res);
            for (k, v) in kvs {
                let err = rd::rd_kafka_ConfigResource_add_incremental_config(
                    res,
                    k.as_ptr(),
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                    v.as_ptr(),
                );
                if !err.is_null() {
                    let msg = copy_str(rd::rd_kafka_error_string(err));
                    rd::rd_kafka_error_destroy(err);
                    cleanup(&mut resources);
                    bail!(
                        "config {} of topic {}: {msg}",
                        k.to_string_lossy(),
                        name.to_string_lossy()
                    );
                }
            }
        }

        let opts = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        let mut errbuf = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            opts,
            timeout_ms,
            errbuf.as_mut_ptr(),
            errbuf.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_IncrementalAlterConfigs(
            rk,
            resources.as_mut_ptr(),
            resources.len(),
            opts,
            queue,
        );
        // The request holds its own copies; ours can go now.
        cleanup(&mut resources);
        rd::rd_kafka_AdminOptions_destroy(opts);

        // A little beyond the request timeout, so librdkafka's own timeout answers first.
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(5_000));
        if event.is_null() {
            rd::rd_kafka_queue_destroy(queue);
            bail!("no answer to IncrementalAlterConfigs within {timeout:?}");
        }
        let answer = read_answer(event);
        rd::rd_kafka_event_destroy(event);
        rd::rd_kafka_queue_destroy(queue);
        answer
    }
}

/// Reads the per-topic results out of an IncrementalAlterConfigs result event.
///
/// # Safety
/// `event` must be a live event returned by `rd_kafka_queue_poll` for that request.
unsafe fn read_answer(
    event: *mut rd::rd_kafka_event_t,
) -> anyhow::Result<Vec<(String, Result<(), String>)>> {
    // SAFETY: the caller guarantees `event` is live; everything read from it is copied.
    unsafe {
        let code = rd::rd_kafka_event_error(event);
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            bail!(
                "IncrementalAlterConfigs failed: {}",
                copy_str(rd::rd_kafka_event_error_string(event))
            );
        }
        let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
        if result.is_null() {
            bail!("unexpected answer to IncrementalAlterConfigs");
        }
        let mut count = 0usize;
        let list = rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let res = *list.add(i);
            let name = copy_str(rd::rd_kafka_ConfigResource_name(res));
            let outcome = if rd::rd_kafka_ConfigResource_error(res)
                == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                Ok(())
            } else {
                let text = copy_str(rd::rd_kafka_ConfigResource_error_string(res));
                let code = copy_str(rd::rd_kafka_err2str(rd::rd_kafka_ConfigResource_error(res)));
                Err(if text.is_empty() {
                    code
                } else {
                    format!("{code}: {text}")
                })
            };
            out.push((name, outcome));
        }
        Ok(out)
    }
}

/// Copies a C string owned by librdkafka; a null pointer reads as empty.
///
/// # Safety
/// `ptr` is null or points at a NUL-terminated string alive for this call.
unsafe fn copy_str(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        // SAFETY: non-null and NUL-terminated per the caller.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::admin::AdminClient;
    use rdkafka::client::DefaultClientContext;

    #[test]
    fn an_empty_topic_name_is_an_error_not_a_null_dereference() {
        // No broker is needed: the name is refused before anything is sent.
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
            .expect("admin client");
        let changes = vec![(
            String::new(),
            vec![("retention.ms".to_owned(), "1".to_owned())],
        )];
        let err = set_topic_configs(admin.inner(), &changes, Duration::from_secs(1))
            .expect_err("an empty name is refused");
        assert!(err.to_string().contains("refused the topic name"), "{err}");
    }
}
