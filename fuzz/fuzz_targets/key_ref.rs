//! Key references (ids, aliases, ARNs), principals, alias names and tags: parsing never panics,
//! and what parses prints as it was given.
#![no_main]

use kms_types::ids::KeyRef;
use kms_types::{Principal, Tag, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = KeyRef::parse(text) {
        assert_eq!(key.to_string(), text);
    }
    if let Ok(p) = Principal::parse(text) {
        assert_eq!(p.arn(), text);
    }
    let _ = validate::alias_name(text);
    let (key, value) = text.split_once('=').unwrap_or((text, "v"));
    let _ = validate::tag(&Tag {
        key: key.to_string(),
        value: value.to_string(),
    });
});
