//! The ciphertext blob parser: never panics, and what parses assembles back to the same bytes.
#![no_main]

use kms_types::blob::{CiphertextBlob, assemble};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(blob) = CiphertextBlob::parse(data) {
        assert_eq!(assemble(&blob.header(), blob.sealed), data);
    }
});
