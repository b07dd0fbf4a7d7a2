//! Page tokens and import tokens: decoding never panics, and a token that decodes is the one
//! token for its cursor.
#![no_main]

use kms_types::ImportTokenId;
use kms_types::listing::{decode_token, encode_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(cursor)) = decode_token(text) {
        assert_eq!(encode_token(&cursor), text);
    }
    if let Ok(token) = ImportTokenId::parse(text) {
        assert_eq!(token.as_str(), text);
    }
});
