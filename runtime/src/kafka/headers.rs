//! Kafka headers read and written as bytes, keys included.
//!
//! rdkafka's own header accessors take a key as `&str` and unwrap it as UTF-8 when
//! reading, so a record whose header key is not UTF-8 (Kafka allows any bytes, and
//! producers in other languages send such keys) panics the thread that reads it. These
//! two functions call librdkafka's header functions directly instead: a key is whatever
//! bytes the producer wrote, and it survives byte for byte into anything eventbus
//! produces from the record (a Kafka sink's output, a dead letter).
//!
//! Each unsafe block is librdkafka's documented use of a headers object that the caller
//! borrows or owns (the other unsafe code is `kafka::producer`'s queue wake-up and
//! `kafka::fetch`'s batch reads).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, OwnedHeaders};

#[cfg(header_probe)]
unsafe extern "C" {
    /// `csrc/header_probe.c`: 0 only for a consumed message whose header count is 0.
    fn eventbus_message_may_have_headers(
        message: *mut rdsys::rd_kafka_message_t,
    ) -> std::ffi::c_int;
}

/// Whether `message` may carry headers; `false` only when it certainly carries none.
///
/// librdkafka allocates, zeroes and frees a parse buffer to find a consumed message's
/// headers even when there are none (about 5 % of the warehouse job's CPU in a profile,
/// `rd_kafka_buf_new_shadow`). The probe reads the header count's first byte from
/// librdkafka's own message struct instead, compiled against the headers of the
/// librdkafka linked here (`build.rs`); without them it answers `true`.
///
/// # Safety
/// `message` must be a live message for the whole call.
pub(super) unsafe fn may_have_headers(message: *mut rdsys::rd_kafka_message_t) -> bool {
    #[cfg(header_probe)]
    {
        // SAFETY: a live message (the caller's promise); the probe only reads it.
        unsafe { eventbus_message_may_have_headers(message) != 0 }
    }
    #[cfg(not(header_probe))]
    {
        let _ = message;
        true
    }
}

/// [`may_have_headers`] of a message rdkafka's `poll` returned.
pub(super) fn borrowed_may_have_headers(message: &BorrowedMessage<'_>) -> bool {
    // SAFETY: the message is live while borrowed.
    unsafe { may_have_headers(message.ptr()) }
}

/// Calls `f(key, value)` for every header of `headers`, in order; `value` is `None` for
/// a null header.
///
/// A key is read up to its first NUL byte, since librdkafka stores keys as C strings.
pub fn for_each(headers: &BorrowedHeaders, f: impl FnMut(&[u8], Option<&[u8]>)) {
    // `BorrowedHeaders` is a zero-sized view whose address is librdkafka's headers object.
    let native = ptr::from_ref(headers).cast::<rdsys::rd_kafka_headers_t>();
    // SAFETY: the object lives as long as `headers` is borrowed, which spans the call.
    unsafe { for_each_native(native, f) }
}

/// [`for_each`] over librdkafka's headers object itself.
///
/// # Safety
/// `native` must be a live headers object for the whole call.
pub(super) unsafe fn for_each_native(
    native: *const rdsys::rd_kafka_headers_t,
    mut f: impl FnMut(&[u8], Option<&[u8]>),
) {
    for idx in 0.. {
        let mut name: *const c_char = ptr::null();
        let mut value: *const c_void = ptr::null();
        let mut size = 0usize;
        // SAFETY: `native` is a live headers object (the caller's promise); librdkafka
        // fills the three out-pointers, or returns an error past the last index.
        let err = unsafe {
            rdsys::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size)
        };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return;
        }
        // SAFETY: librdkafka stores each name NUL-terminated, and both the name and the
        // value (`size` bytes) live inside the headers object borrowed above.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        f(key, value);
    }
}

/// Builds librdkafka headers from `(key, value)` pairs, keys taken as bytes.
pub fn to_owned<'a>(
    headers: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len());
    // The object behind `owned` is ours alone until it is returned; its view's address
    // is the object itself (see `for_each`).
    let native = ptr::from_ref(owned.as_borrowed())
        .cast::<rdsys::rd_kafka_headers_t>()
        .cast_mut();
    for (key, value) in headers {
        let (value_ptr, value_len) = match value {
            Some(v) => (
                v.as_ptr().cast::<c_void>(),
                isize::try_from(v.len()).unwrap_or(isize::MAX),
            ),
            None => (ptr::null(), 0),
        };
        // SAFETY: librdkafka copies `key` and `value` (lengths given, no NUL needed) into
        // the headers object, which no one else reads or writes meanwhile. It fails only
        // on a read-only object, and a new one is writable.
        unsafe {
            rdsys::rd_kafka_header_add(
                native,
                key.as_ptr().cast::<c_char>(),
                isize::try_from(key.len()).unwrap_or(isize::MAX),
                value_ptr,
                value_len,
            );
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers as _;

    #[test]
    #[allow(clippy::assertions_on_constants)] // the constant is what build.rs decided
    fn the_header_probe_is_built_against_the_linked_librdkafka() {
        // Without it headers are still read correctly, only slower: this says when a
        // change to rdkafka-sys's build (or linking a system librdkafka) drops it.
        assert!(
            cfg!(header_probe),
            "build.rs did not build csrc/header_probe.c"
        );
    }

    #[test]
    fn keys_that_are_not_utf8_survive_a_round_trip_byte_for_byte() {
        let input: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"\xff\xfekey", Some(b"v\x00\xff")),
            (b"plain", None),
            (b"empty", Some(b"")),
            (b"plain", Some(b"again")),
        ];
        let owned = to_owned(input.iter().copied());
        assert_eq!(owned.count(), 4);
        let mut read: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        for_each(owned.as_borrowed(), |k, v| {
            read.push((k.to_vec(), v.map(<[u8]>::to_vec)))
        });
        let expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = input
            .iter()
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(read, expected);
    }
}
