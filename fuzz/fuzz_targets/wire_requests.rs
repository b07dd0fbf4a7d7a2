//! Wire ↔ domain conversions: any bytes decoded as a request or key entry convert, or are
//! refused with `InvalidParameter.<Field>`, never a panic; a converted key entry writes back as
//! itself.
#![no_main]

use kms_proto::convert::key_entry;
use kms_proto::kms::internal::v1 as ipb;
use kms_proto::kms::v1 as pb;
use kms_types::usage::UsageEvent;
use kms_types::{DomainError, KeyEntry, KeyQuery, NewInstance, NewKey};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn refused_as_field<T>(r: Result<T, DomainError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(e.reason_code().starts_with("InvalidParameter."), "{e:?}");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = pb::CreateKeyRequest::decode(data) {
        refused_as_field(NewKey::try_from(w));
    }
    if let Ok(w) = pb::ListKeysRequest::decode(data) {
        refused_as_field(KeyQuery::try_from(w));
    }
    if let Ok(w) = pb::CreateKmsInstanceRequest::decode(data) {
        refused_as_field(NewInstance::try_from(w));
    }
    if let Ok(w) = ipb::UsageRecord::decode(data) {
        refused_as_field(UsageEvent::try_from(&w));
    }
    if let Ok(w) = ipb::KeyEntry::decode(data)
        && let Some(entry) = refused_as_field(KeyEntry::try_from(w))
    {
        assert_eq!(KeyEntry::try_from(key_entry(&entry)), Ok(entry));
    }
});
