//! The encryption context's canonical form: for any map (entries separated by NUL, key and
//! value by `=`) that validates, the canonical bytes read back as the map.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use kms_types::EncryptionContext;
use libfuzzer_sys::fuzz_target;

fn read(mut bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let take = |bytes: &mut &[u8]| -> Option<String> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let text = String::from_utf8(bytes.get(4..4 + len)?.to_vec()).ok()?;
        *bytes = &bytes[4 + len..];
        Some(text)
    };
    let mut map = BTreeMap::new();
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        map.insert(k, v);
    }
    Some(map)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let map: HashMap<String, String> = text
        .split('\0')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    if let Ok(context) = EncryptionContext::new(map.clone()) {
        assert_eq!(
            read(&context.canonical_bytes()),
            Some(map.into_iter().collect())
        );
    }
});
