//! The policy parser: never panics, refuses with `InvalidParameter.Policy`, and a document it
//! accepts prints to one that parses back to it.
#![no_main]

use kms_types::policy::PolicyDocument;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicyDocument::parse(text) {
        Ok(doc) => assert_eq!(PolicyDocument::parse(&doc.to_json()), Ok(doc)),
        Err(e) => assert_eq!(e.reason_code(), "InvalidParameter.Policy"),
    }
});
