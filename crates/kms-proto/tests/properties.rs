//! Properties of the wire ↔ domain conversions (`kms_proto::convert`) on generated input: every
//! enum's wire number, timestamps and intervals, the key entry the data plane reads, usage
//! records, and the requests converted whole (`CreateKey`, `ListKeys`, `CreateKmsInstance`):
//! what the domain writes reads back as itself, and whatever arrives off the wire converts or
//! is refused with `InvalidParameter.<Field>`, never a panic.
//!
//! Each property runs `PROPTEST_CASES` cases (proptest's default, 256, unless set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_proto::convert::{
    WireEnum, from_timestamp, interval_days, key_entry, timestamp, usage_record,
};
use kms_proto::kms::internal::v1 as ipb;
use kms_proto::kms::v1 as pb;
use kms_types::usage::{UsageEvent, UsageOp};
use kms_types::{
    AccountId, Algorithm, DataKeySpec, DomainError, InstanceType, KeyEntry, KeyId, KeyOrigin,
    KeyQuery, KeySpec, KeyState, KeyUsage, KeyVersionId, KeyVersionRecord, NewInstance, NewKey,
    Principal, ProtectionLevel, RotationStatus, UnixMillis,
};
use proptest::prelude::*;

/// The refusal of a field, as every failed conversion must be.
fn refused_as_field(e: &DomainError) -> bool {
    e.reason_code().starts_with("InvalidParameter.")
}

/// Checks `from_wire` and `to_wire` of one enum over every `i32`.
fn enum_round_trip<T: WireEnum + Copy + PartialEq + std::fmt::Debug>(
    all: &[T],
    n: i32,
) -> Result<(), TestCaseError> {
    for v in all {
        prop_assert_eq!(T::from_wire(v.to_wire()), Ok(*v));
    }
    match T::from_wire(n) {
        Ok(v) => prop_assert_eq!(v.to_wire(), n),
        Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
    }
    prop_assert!(T::from_wire(0).is_err(), "0 is unspecified");
    Ok(())
}

proptest! {
    #[test]
    fn enums_read_back_what_they_write_and_refuse_the_rest(n in prop_oneof![-2..20i32, any::<i32>()]) {
        enum_round_trip(KeySpec::ALL, n)?;
        enum_round_trip(KeyUsage::ALL, n)?;
        enum_round_trip(KeyState::ALL, n)?;
        enum_round_trip(ProtectionLevel::ALL, n)?;
        enum_round_trip(KeyOrigin::ALL, n)?;
        enum_round_trip(RotationStatus::ALL, n)?;
        enum_round_trip(InstanceType::ALL, n)?;
        enum_round_trip(Algorithm::ALL, n)?;
        enum_round_trip(DataKeySpec::ALL, n)?;
    }

    #[test]
    fn timestamps_read_back_what_they_write(
        ms in prop_oneof![any::<i64>(), i64::MIN..i64::MIN + 2000, i64::MAX - 2000..=i64::MAX],
    ) {
        let wire = timestamp(UnixMillis(ms));
        prop_assert!((0..1_000_000_000).contains(&wire.nanos));
        prop_assert_eq!(from_timestamp(&wire), UnixMillis(ms));
    }

    #[test]
    fn any_wire_timestamp_converts(seconds in any::<i64>(), nanos in any::<i32>()) {
        let _ = from_timestamp(&prost_types::Timestamp { seconds, nanos });
    }

    #[test]
    fn intervals_are_whole_days(seconds in any::<i64>(), nanos in any::<i32>()) {
        match interval_days(&prost_types::Duration { seconds, nanos }) {
            Ok(days) => {
                prop_assert_eq!(nanos, 0);
                prop_assert_eq!(days.checked_mul(86_400), Some(seconds));
            }
            Err(e) => prop_assert_eq!(e.reason_code(), "InvalidParameter.RotationInterval"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The key entry.

fn pick<T: Copy + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(all)
}

fn account() -> impl Strategy<Value = AccountId> {
    "[1-9][0-9]{0,31}".prop_map(|s| AccountId::parse(&s).unwrap())
}

fn version_id() -> impl Strategy<Value = KeyVersionId> {
    any::<[u8; 16]>().prop_map(KeyVersionId::from_bytes)
}

fn version() -> impl Strategy<Value = KeyVersionRecord> {
    (
        version_id(),
        any::<i64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, ms, wrapped, spki)| KeyVersionRecord {
            id,
            created: UnixMillis(ms),
            wrapped_material: wrapped,
            public_key_der: spki,
        })
}

prop_compose! {
    fn entry()(
        hex in "[0-9a-f]{32}",
        owner in account(),
        instance_owner in proptest::option::of(account()),
        ((spec, usage, state), (protection, origin)) in (
            (pick(KeySpec::ALL), pick(KeyUsage::ALL), pick(KeyState::ALL)),
            (pick(ProtectionLevel::ALL), pick(KeyOrigin::ALL)),
        ),
        primary in version_id(),
        versions in proptest::collection::vec(version(), 0..4),
        policy in proptest::option::of(".{1,60}"),
        expire in proptest::option::of(any::<i64>()),
    ) -> KeyEntry {
        KeyEntry {
            id: KeyId::parse(&format!("key-{hex}")).unwrap(),
            account: owner,
            instance_owner,
            spec,
            usage,
            state,
            protection,
            origin,
            primary_version: primary,
            versions,
            policy,
            material_expire: expire.map(UnixMillis),
        }
    }
}

fn wire_timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    proptest::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// Wire strings: usually well-formed for their field, sometimes anything.
fn wire_text(good: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![4 => good, 1 => ".{0,40}"]
}

fn wire_enum() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..10i32, 1 => any::<i32>()]
}

prop_compose! {
    fn wire_entry()(
        key_id in wire_text("key-[0-9a-f]{32}"),
        account_id in wire_text("[1-9][0-9]{0,5}"),
        enums in proptest::collection::vec(wire_enum(), 5),
        primary in wire_text("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        versions in proptest::collection::vec(
            (wire_text("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), wire_timestamp()),
            0..3,
        ),
        policy in ".{0,20}",
        expire in wire_timestamp(),
        instance_owner in wire_text("([1-9][0-9]{0,5})?"),
    ) -> ipb::KeyEntry {
        ipb::KeyEntry {
            key_id,
            account_id,
            key_spec: enums[0],
            key_usage: enums[1],
            key_state: enums[2],
            protection_level: enums[3],
            origin: enums[4],
            primary_key_version_id: primary,
            versions: versions
                .into_iter()
                .map(|(id, created)| ipb::KeyVersionMaterial {
                    key_version_id: id,
                    wrapped_material: vec![1, 2, 3],
                    public_key_der: Vec::new(),
                    creation_date: created,
                })
                .collect(),
            policy,
            material_expire_time: expire,
            instance_owner_account_id: instance_owner,
        }
    }
}

proptest! {
    #[test]
    fn key_entries_read_back_what_they_write(e in entry()) {
        let wire = key_entry(&e);
        prop_assert_eq!(KeyEntry::try_from(wire), Ok(e));
    }

    #[test]
    fn any_wire_key_entry_converts_or_is_refused(w in wire_entry()) {
        match KeyEntry::try_from(w.clone()) {
            Ok(e) => {
                // What converted writes back as the same entry (its default-key flag derived).
                let back = key_entry(&e);
                prop_assert_eq!(KeyEntry::try_from(back), Ok(e));
            }
            Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Usage records and requests.

prop_compose! {
    fn usage_event()(
        hex in "[0-9a-f]{32}",
        version in version_id(),
        principal in "acs:ram::[1-9][0-9]{0,15}:(root|user/[a-z]{1,8}|role/[a-z]{1,8})",
        op in pick(UsageOp::ALL),
        ms in any::<i64>(),
    ) -> UsageEvent {
        UsageEvent {
            key_id: KeyId::parse(&format!("key-{hex}")).unwrap(),
            version,
            principal: Principal::parse(&principal).unwrap(),
            op,
            at: UnixMillis(ms),
        }
    }
}

prop_compose! {
    fn wire_usage()(
        key_id in wire_text("key-[0-9a-f]{32}"),
        key_version_id in wire_text("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        principal in wire_text("acs:ram::[1-9][0-9]{0,5}:root"),
        operation in wire_text("(Encrypt|Decrypt|ReEncrypt|Frob)"),
        time in wire_timestamp(),
    ) -> ipb::UsageRecord {
        ipb::UsageRecord { key_id, key_version_id, principal, operation, time }
    }
}

prop_compose! {
    fn wire_create_key()(
        kms_instance_id in wire_text("(kst-[a-z0-9]{1,8})?"),
        enums in proptest::collection::vec(wire_enum(), 3),
        description in ".{0,20}",
        alias in ".{0,20}",
        tags in proptest::collection::vec((".{0,6}", ".{0,6}"), 0..3),
        rotation in proptest::option::of(any::<bool>()),
        interval in proptest::option::of((any::<i64>(), any::<i32>())),
        policy in ".{0,20}",
    ) -> pb::CreateKeyRequest {
        pb::CreateKeyRequest {
            kms_instance_id,
            key_spec: enums[0],
            key_usage: enums[1],
            origin: enums[2],
            description,
            alias,
            tags: tags.into_iter().map(|(key, value)| pb::Tag { key, value }).collect(),
            enable_automatic_rotation: rotation,
            rotation_interval: interval.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            policy,
        }
    }
}

prop_compose! {
    fn wire_list_keys()(
        kms_instance_id in wire_text("(kst-[a-z0-9]{1,8})?"),
        default_keys_only in any::<bool>(),
        filters in proptest::option::of((
            proptest::collection::vec(proptest::option::of(wire_enum()), 4),
            proptest::option::of(".{0,6}"),
            proptest::option::of(".{0,6}"),
            proptest::option::of(".{0,12}"),
        )),
        page_size in prop_oneof![0..=101i32, any::<i32>()],
        page_token in wire_text("[A-Za-z0-9_-]{0,16}"),
    ) -> pb::ListKeysRequest {
        pb::ListKeysRequest {
            kms_instance_id,
            default_keys_only,
            filters: filters.map(|(enums, tag_key, tag_value, alias)| pb::ListKeysFilter {
                key_state: enums[0],
                key_spec: enums[1],
                key_usage: enums[2],
                protection_level: enums[3],
                tag_key,
                tag_value,
                alias,
            }),
            page_size,
            page_token,
        }
    }
}

proptest! {
    #[test]
    fn usage_records_read_back_what_they_write(e in usage_event()) {
        prop_assert_eq!(UsageEvent::try_from(&usage_record(&e)), Ok(e));
    }

    #[test]
    fn any_wire_usage_record_converts_or_is_refused(w in wire_usage()) {
        match UsageEvent::try_from(&w) {
            Ok(e) => prop_assert_eq!(UsageEvent::try_from(&usage_record(&e)), Ok(e)),
            Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
        }
    }

    #[test]
    fn any_create_key_request_converts_or_is_refused(w in wire_create_key()) {
        match NewKey::try_from(w.clone()) {
            Ok(k) => {
                prop_assert_eq!(k.description, w.description);
                prop_assert_eq!(k.alias.unwrap_or_default(), w.alias);
                prop_assert_eq!(k.policy.unwrap_or_default(), w.policy);
                prop_assert_eq!(k.tags.len(), w.tags.len());
                prop_assert_eq!(k.spec.map(WireEnum::to_wire).unwrap_or(0), w.key_spec);
            }
            Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
        }
    }

    #[test]
    fn any_list_keys_request_converts_or_is_refused(w in wire_list_keys()) {
        match KeyQuery::try_from(w.clone()) {
            Ok(q) => {
                prop_assert!((1..=100).contains(&q.page.size));
                prop_assert_eq!(q.default_keys_only, w.default_keys_only);
                prop_assert_eq!(
                    q.instance.map(|i| i.to_string()).unwrap_or_default(),
                    w.kms_instance_id
                );
            }
            Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
        }
    }

    #[test]
    fn any_create_instance_request_converts_or_is_refused(
        instance_type in wire_enum(),
        owner in wire_text("[1-9][0-9]{0,5}"),
        key_quota in any::<i32>(),
        quota in proptest::option::of(any::<i32>()),
    ) {
        let w = pb::CreateKmsInstanceRequest {
            instance_type,
            owner_account_id: owner,
            key_quota,
            access_management_quota: quota,
        };
        match NewInstance::try_from(w.clone()) {
            Ok(n) => {
                prop_assert_eq!(n.instance_type.to_wire(), w.instance_type);
                prop_assert_eq!(n.owner.as_str(), w.owner_account_id.as_str());
            }
            Err(e) => prop_assert!(refused_as_field(&e), "{:?}", e),
        }
    }
}
