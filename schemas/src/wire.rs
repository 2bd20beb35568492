//! The Confluent wire format: a magic byte 0, a 4-byte big-endian schema id, then the
//! Avro binary body.

use eventbus_runtime::Origin;

use crate::error::DecodeError;

/// The first byte of every framed message.
pub const MAGIC: u8 = 0;
/// Bytes before the body.
pub const HEADER_LEN: usize = 5;

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits framed bytes into the schema id and the body.
///
/// # Errors
/// [`DecodeError::Truncated`] or [`DecodeError::WrongMagic`], naming `origin`.
pub fn split<'a>(bytes: &'a [u8], origin: Option<&Origin>) -> Result<(u32, &'a [u8]), DecodeError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated {
            origin: origin.cloned(),
            len: bytes.len(),
        });
    };
    if header[0] != MAGIC {
        return Err(DecodeError::WrongMagic {
            origin: origin.cloned(),
            found: header[0],
        });
    }
    let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Ok((id, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_split_are_inverse() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        let (id, body) = split(&framed, None).expect("valid");
        assert_eq!((id, body), (0x0102_0304, &b"body"[..]));
    }

    #[test]
    fn short_and_foreign_bytes_are_named() {
        let o = Origin {
            topic: "vehicle.state.v1".into(),
            partition: 3,
            offset: 99,
        };
        let e = split(&[0, 0, 1], Some(&o)).expect_err("short");
        assert!(matches!(e, DecodeError::Truncated { len: 3, .. }));
        assert!(e.to_string().contains("partition 3 offset 99"), "{e}");
        let e = split(b"{\"json\":1}", None).expect_err("json");
        assert!(
            matches!(e, DecodeError::WrongMagic { found: b'{', .. }),
            "{e}"
        );
    }
}
