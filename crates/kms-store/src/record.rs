//! Versioned record framing: every stored value is `magic (2) | format version (1) | body`.
//!
//! The store does not interpret the version; the domain layer dispatches on it and keeps old
//! formats readable for migration. The magic is frozen: changing it orphans every stored value.

use crate::StoreError;

/// The two bytes every record starts with. Not ASCII, so text stored raw by mistake is caught.
pub const RECORD_MAGIC: [u8; 2] = [0xCB, 0x52];

/// Bytes before the body: the magic and the format version.
pub const RECORD_HEADER_LEN: usize = RECORD_MAGIC.len() + 1;

/// Frames `body` as a record of format version `format`.
pub fn encode_record(format: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(format);
    out.extend_from_slice(body);
    out
}

/// Splits a stored record into its format version and body.
///
/// Fails with [`StoreError::Corrupt`] when `bytes` is shorter than the header or does not start
/// with [`RECORD_MAGIC`]. The body may be empty.
pub fn decode_record(bytes: &[u8]) -> Result<(u8, &[u8]), StoreError> {
    match bytes {
        [m0, m1, format, body @ ..] if [*m0, *m1] == RECORD_MAGIC => Ok((*format, body)),
        [_, _, _, ..] => Err(StoreError::Corrupt(
            "record does not start with the record magic".to_owned(),
        )),
        _ => Err(StoreError::Corrupt(format!(
            "record is {} bytes, shorter than its {RECORD_HEADER_LEN}-byte header",
            bytes.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn round_trips_every_format_and_body() {
        for format in [0u8, 1, 2, 127, 255] {
            for body in [&b""[..], b"x", b"key/123 \x00\xff body"] {
                let bytes = encode_record(format, body);
                assert_eq!(bytes.len(), RECORD_HEADER_LEN + body.len());
                assert_eq!(decode_record(&bytes).unwrap(), (format, body));
            }
        }
    }

    #[test]
    fn layout_is_magic_then_version_then_body() {
        assert_eq!(encode_record(7, b"ab"), vec![0xCB, 0x52, 7, b'a', b'b']);
    }

    #[test]
    fn rejects_every_truncation_of_the_header() {
        let full = encode_record(1, b"");
        for len in 0..RECORD_HEADER_LEN {
            let err = decode_record(&full[..len]).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "len {len}: {err:?}");
        }
        assert_eq!(decode_record(&full).unwrap(), (1, &b""[..]));
    }

    #[test]
    fn rejects_wrong_magic() {
        for bytes in [
            &[0x52, 0xCB, 1, 9][..],
            &[0xCB, 0x00, 1],
            &[0x00, 0x52, 1],
            b"{\"json\":true}",
        ] {
            let err = decode_record(bytes).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{bytes:?}: {err:?}");
        }
    }

    #[test]
    fn error_messages_are_lowercase_without_trailing_period() {
        for bytes in [&b""[..], b"abc"] {
            let msg = decode_record(bytes).unwrap_err().to_string();
            assert!(msg.starts_with("stored data is corrupt: "), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
        }
    }
}
