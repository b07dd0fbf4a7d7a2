//! Conversions between wire types and domain types. Unknown or unspecified enum values and
//! malformed ids fail closed with `InvalidParameter.<Field>`.

use kms_types::usage::{KeyAssociations, UsageEvent, UsageOp};
use kms_types::{
    AccountId, DomainError, InstanceId, InstanceRecord, InstanceType, KeyEntry, KeyEvent,
    KeyEventKind, KeyFilter, KeyId, KeyOrigin, KeyQuery, KeyRecord, KeySpec, KeyState, KeyUsage,
    KeyVersionId, KeyVersionRecord, NewInstance, NewKey, PageRequest, Principal, ProtectionLevel,
    QuotaChange, RotationStatus, Tag, UnixMillis,
};

use crate::kms::internal::v1 as ipb;
use crate::kms::v1 as pb;

macro_rules! enum_map {
    ($domain:ty, $wire:ty, $field:literal, { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl From<$domain> for $wire {
            fn from(v: $domain) -> Self {
                match v {
                    $(<$domain>::$d => <$wire>::$w),+
                }
            }
        }

        impl TryFrom<$wire> for $domain {
            type Error = DomainError;
            fn try_from(v: $wire) -> Result<Self, DomainError> {
                match v {
                    $(<$wire>::$w => Ok(<$domain>::$d),)+
                    #[allow(unreachable_patterns)]
                    _ => Err(DomainError::invalid($field, concat!($field, " is required"))),
                }
            }
        }

        impl WireEnum for $domain {
            fn from_wire(v: i32) -> Result<Self, DomainError> {
                let wire = <$wire>::try_from(v)
                    .map_err(|_| DomainError::invalid($field, format!("unknown {} value {v}", $field)))?;
                Self::try_from(wire)
            }

            fn to_wire(self) -> i32 {
                <$wire>::from(self) as i32
            }
        }
    };
}

/// Domain enums read from and written to the wire's `i32` enum fields.
pub trait WireEnum: Sized {
    /// Reads the wire's `i32` form; unknown and unspecified values are refused.
    fn from_wire(v: i32) -> Result<Self, DomainError>;
    /// The wire's `i32` form.
    fn to_wire(self) -> i32;
}

mod enums {
    use super::*;

    enum_map!(KeySpec, pb::KeySpec, "KeySpec", {
        AliyunAes256 <=> AliyunAes256,
        AliyunAes192 <=> AliyunAes192,
        AliyunAes128 <=> AliyunAes128,
        Rsa2048 <=> Rsa2048,
        Rsa3072 <=> Rsa3072,
        Rsa4096 <=> Rsa4096,
        EcP256 <=> EcP256,
        EcP256K <=> EcP256k,
    });
    enum_map!(KeyUsage, pb::KeyUsage, "KeyUsage", {
        EncryptDecrypt <=> EncryptDecrypt,
        SignVerify <=> SignVerify,
    });
    enum_map!(KeyState, pb::KeyState, "KeyState", {
        Enabled <=> Enabled,
        Disabled <=> Disabled,
        PendingDeletion <=> PendingDeletion,
        PendingImport <=> PendingImport,
    });
    enum_map!(ProtectionLevel, pb::ProtectionLevel, "ProtectionLevel", {
        Software <=> Software,
        Hsm <=> Hsm,
    });
    enum_map!(KeyOrigin, pb::KeyOrigin, "Origin", {
        Kms <=> Kms,
        External <=> External,
    });
    enum_map!(RotationStatus, pb::RotationStatus, "RotationStatus", {
        Enabled <=> Enabled,
        Disabled <=> Disabled,
        Suspended <=> Suspended,
    });
    enum_map!(kms_types::InstanceType, pb::InstanceType, "InstanceType", {
        Software <=> Software,
        Hardware <=> Hardware,
    });
    enum_map!(kms_types::Algorithm, pb::Algorithm, "Algorithm", {
        RsaPssSha256 <=> RsaPssSha256,
        RsaPkcs1Sha256 <=> RsaPkcs1Sha256,
        EcdsaSha256 <=> EcdsaSha256,
        RsaesOaepSha256 <=> RsaesOaepSha256,
        RsaesOaepSha1 <=> RsaesOaepSha1,
        RsaAesKeyWrapSha256 <=> RsaAesKeyWrapSha256,
    });
    enum_map!(kms_types::DataKeySpec, pb::DataKeySpec, "KeySpec", {
        Aes256 <=> Aes256,
        Aes128 <=> Aes128,
    });
}

/// A domain instant as a protobuf timestamp.
pub fn timestamp(t: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as a domain instant, rounded down to the millisecond; one beyond the
/// range of [`UnixMillis`] is its first or last instant. Computed in `i128`, so the instants
/// near the ends of the range, which [`timestamp`] writes as seconds beyond them plus
/// nanoseconds back, read back as themselves.
pub fn from_timestamp(t: &prost_types::Timestamp) -> UnixMillis {
    let ms = i128::from(t.seconds) * 1000 + i128::from(t.nanos).div_euclid(1_000_000);
    let clamped = ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
    UnixMillis(i64::try_from(clamped).unwrap_or(i64::MAX))
}

/// The public view of a key.
pub fn key_metadata(r: &KeyRecord, region: &str) -> pb::KeyMetadata {
    pb::KeyMetadata {
        key_id: r.id.to_string(),
        arn: kms_types::ids::key_arn(region, &r.account, &r.id),
        kms_instance_id: r
            .instance
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        is_default_key: r.is_default(),
        key_spec: r.spec.to_wire(),
        key_usage: r.usage.to_wire(),
        key_state: r.state.to_wire(),
        protection_level: r.protection.to_wire(),
        origin: r.origin.to_wire(),
        description: r.description.clone(),
        creator: r.creator.clone(),
        creation_date: Some(timestamp(r.created)),
        delete_date: r.delete_date.map(timestamp),
        deletion_protection: r.deletion_protection,
        deletion_protection_description: r.deletion_protection_description.clone(),
        rotation_status: r.rotation_status().to_wire(),
        rotation_interval: r.rotation_settings().map(|p| prost_types::Duration {
            seconds: p.interval_days * 86_400,
            nanos: 0,
        }),
        last_rotation_date: r.last_rotation.map(timestamp),
        next_rotation_date: r.next_rotation().map(timestamp),
        primary_key_version_id: r.primary_version.to_string(),
        material_expire_time: r.material_expire.map(timestamp),
        aliases: r.aliases.clone(),
        tags: r
            .tags
            .iter()
            .map(|t| pb::Tag {
                key: t.key.clone(),
                value: t.value.clone(),
            })
            .collect(),
    }
}

/// What the data plane needs to know about a key, on the wire.
pub fn key_entry(e: &KeyEntry) -> ipb::KeyEntry {
    ipb::KeyEntry {
        key_id: e.id.to_string(),
        account_id: e.account.to_string(),
        key_spec: e.spec.to_wire(),
        key_usage: e.usage.to_wire(),
        key_state: e.state.to_wire(),
        protection_level: e.protection.to_wire(),
        origin: e.origin.to_wire(),
        primary_key_version_id: e.primary_version.to_string(),
        versions: e
            .versions
            .iter()
            .map(|v| ipb::KeyVersionMaterial {
                key_version_id: v.id.to_string(),
                wrapped_material: v.wrapped_material.clone(),
                public_key_der: v.public_key_der.clone(),
                creation_date: Some(timestamp(v.created)),
            })
            .collect(),
        policy: e.policy.clone().unwrap_or_default(),
        material_expire_time: e.material_expire.map(timestamp),
        instance_owner_account_id: e
            .instance_owner
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    }
}

impl TryFrom<ipb::KeyEntry> for KeyEntry {
    type Error = DomainError;

    fn try_from(w: ipb::KeyEntry) -> Result<Self, DomainError> {
        let mut versions = w
            .versions
            .into_iter()
            .map(|v| {
                Ok(KeyVersionRecord {
                    id: KeyVersionId::parse(&v.key_version_id)?,
                    created: v
                        .creation_date
                        .as_ref()
                        .map(from_timestamp)
                        .unwrap_or(UnixMillis(0)),
                    wrapped_material: v.wrapped_material,
                    public_key_der: v.public_key_der,
                })
            })
            .collect::<Result<Vec<_>, DomainError>>()?;
        // Collected in place, the vector keeps the wire messages' larger allocation; the
        // entry lives in the data plane's cache, so give the excess back.
        versions.shrink_to_fit();
        Ok(KeyEntry {
            id: KeyId::parse(&w.key_id)?,
            account: AccountId::parse(&w.account_id)?,
            instance_owner: if w.instance_owner_account_id.is_empty() {
                None
            } else {
                Some(AccountId::parse(&w.instance_owner_account_id)?)
            },
            spec: KeySpec::from_wire(w.key_spec)?,
            usage: KeyUsage::from_wire(w.key_usage)?,
            state: KeyState::from_wire(w.key_state)?,
            protection: ProtectionLevel::from_wire(w.protection_level)?,
            origin: KeyOrigin::from_wire(w.origin)?,
            primary_version: KeyVersionId::parse(&w.primary_key_version_id)?,
            versions,
            policy: (!w.policy.is_empty()).then_some(w.policy),
            material_expire: w.material_expire_time.as_ref().map(from_timestamp),
        })
    }
}

/// Whole days in a rotation interval; anything not a whole number of days is refused.
pub fn interval_days(d: &prost_types::Duration) -> Result<i64, DomainError> {
    if d.nanos != 0 || d.seconds % 86_400 != 0 {
        return Err(DomainError::invalid(
            "RotationInterval",
            "rotation_interval must be a whole number of days",
        ));
    }
    Ok(d.seconds / 86_400)
}

impl TryFrom<pb::CreateKeyRequest> for NewKey {
    type Error = DomainError;

    fn try_from(w: pb::CreateKeyRequest) -> Result<Self, DomainError> {
        let optional_enum = |v: i32| v != 0;
        Ok(NewKey {
            instance: if w.kms_instance_id.is_empty() {
                None
            } else {
                Some(InstanceId::parse(&w.kms_instance_id)?)
            },
            spec: optional_enum(w.key_spec)
                .then(|| KeySpec::from_wire(w.key_spec))
                .transpose()?,
            usage: optional_enum(w.key_usage)
                .then(|| KeyUsage::from_wire(w.key_usage))
                .transpose()?,
            origin: optional_enum(w.origin)
                .then(|| KeyOrigin::from_wire(w.origin))
                .transpose()?,
            description: w.description,
            alias: (!w.alias.is_empty()).then_some(w.alias),
            tags: w
                .tags
                .into_iter()
                .map(|t| Tag {
                    key: t.key,
                    value: t.value,
                })
                .collect(),
            rotation_enabled: w.enable_automatic_rotation,
            rotation_interval_days: w
                .rotation_interval
                .as_ref()
                .map(interval_days)
                .transpose()?,
            policy: (!w.policy.is_empty()).then_some(w.policy),
        })
    }
}

/// A domain tag on the wire.
pub fn tag(t: &Tag) -> pb::Tag {
    pb::Tag {
        key: t.key.clone(),
        value: t.value.clone(),
    }
}

/// Wire tags as domain tags; their rules are checked where they are used.
pub fn tags_from_wire(tags: Vec<pb::Tag>) -> Vec<Tag> {
    tags.into_iter()
        .map(|t| Tag {
            key: t.key,
            value: t.value,
        })
        .collect()
}

/// One version of a key, as `DescribeKeyVersion` and `ListKeyVersions` show it.
pub fn key_version(key: &KeyRecord, v: &KeyVersionRecord) -> pb::KeyVersion {
    pb::KeyVersion {
        key_id: key.id.to_string(),
        key_version_id: v.id.to_string(),
        creation_date: Some(timestamp(v.created)),
        is_primary: v.id == key.primary_version,
    }
}

/// An alias of `account` pointing at `key_id`.
pub fn alias(region: &str, account: &AccountId, name: &str, key_id: &KeyId) -> pb::Alias {
    pb::Alias {
        alias_name: name.to_string(),
        alias_arn: kms_types::ids::alias_arn(region, account, name),
        key_id: key_id.to_string(),
    }
}

/// A KMS instance on the wire. Quotas and counts beyond `i32` show as `i32::MAX`.
pub fn kms_instance(i: &InstanceRecord) -> pb::KmsInstance {
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    pb::KmsInstance {
        kms_instance_id: i.id.to_string(),
        instance_type: i.instance_type.to_wire(),
        owner_account_id: i.owner.to_string(),
        key_quota: int(i.key_quota),
        key_count: int(i.key_count),
        access_management_quota: int(i.access_management_quota),
        shared_with_account_ids: i.shared_with.iter().map(|a| a.to_string()).collect(),
    }
}

/// A key event on the wire.
pub fn key_event(e: &KeyEvent) -> ipb::KeyEvent {
    let kind = match e.kind {
        KeyEventKind::Changed => ipb::KeyEventKind::Changed,
        KeyEventKind::Deleted => ipb::KeyEventKind::Deleted,
        KeyEventKind::Resync => ipb::KeyEventKind::Resync,
    };
    ipb::KeyEvent {
        revision: e.revision,
        key_id: e.key_id.as_ref().map(|k| k.to_string()).unwrap_or_default(),
        kind: kind as i32,
    }
}

/// An optional instance id field: empty means none.
pub fn optional_instance(id: &str) -> Result<Option<InstanceId>, DomainError> {
    if id.is_empty() {
        Ok(None)
    } else {
        InstanceId::parse(id).map(Some)
    }
}

/// A required account id field named `field` (`OwnerAccountId`, `AccountId`).
pub fn account_field(field: &'static str, id: &str) -> Result<AccountId, DomainError> {
    AccountId::parse(id)
        .map_err(|_| DomainError::invalid(field, format!("{id:?} is not an account id")))
}

impl TryFrom<pb::ListKeysFilter> for KeyFilter {
    type Error = DomainError;

    fn try_from(w: pb::ListKeysFilter) -> Result<Self, DomainError> {
        Ok(KeyFilter {
            state: w.key_state.map(KeyState::from_wire).transpose()?,
            spec: w.key_spec.map(KeySpec::from_wire).transpose()?,
            usage: w.key_usage.map(KeyUsage::from_wire).transpose()?,
            protection: w
                .protection_level
                .map(ProtectionLevel::from_wire)
                .transpose()?,
            tag_key: w.tag_key,
            tag_value: w.tag_value,
            alias: w.alias,
        })
    }
}

impl TryFrom<pb::ListKeysRequest> for KeyQuery {
    type Error = DomainError;

    fn try_from(w: pb::ListKeysRequest) -> Result<Self, DomainError> {
        Ok(KeyQuery {
            instance: optional_instance(&w.kms_instance_id)?,
            default_keys_only: w.default_keys_only,
            filter: w
                .filters
                .map(KeyFilter::try_from)
                .transpose()?
                .unwrap_or_default(),
            page: PageRequest::new(w.page_size, &w.page_token)?,
        })
    }
}

impl TryFrom<pb::CreateKmsInstanceRequest> for NewInstance {
    type Error = DomainError;

    fn try_from(w: pb::CreateKmsInstanceRequest) -> Result<Self, DomainError> {
        Ok(NewInstance {
            instance_type: InstanceType::from_wire(w.instance_type)?,
            owner: account_field("OwnerAccountId", &w.owner_account_id)?,
            key_quota: w.key_quota,
            access_management_quota: w.access_management_quota,
        })
    }
}

impl From<&pb::UpdateKmsInstanceRequest> for QuotaChange {
    fn from(w: &pb::UpdateKmsInstanceRequest) -> Self {
        QuotaChange {
            key_quota: w.key_quota,
            access_management_quota: w.access_management_quota,
        }
    }
}

/// The wrapping of `GetParametersForImport`: unknown or unspecified values are
/// `InvalidParameter.WrappingAlgorithm` / `InvalidParameter.WrappingKeySpec`.
pub fn import_wrapping(
    wrapping_algorithm: i32,
    wrapping_key_spec: i32,
) -> Result<(kms_types::Algorithm, KeySpec), DomainError> {
    let algorithm = kms_types::Algorithm::from_wire(wrapping_algorithm).map_err(|_| {
        DomainError::invalid(
            "WrappingAlgorithm",
            "wrapping_algorithm must be RSAES_OAEP_SHA_256, RSAES_OAEP_SHA_1 or \
             RSA_AES_KEY_WRAP_SHA_256",
        )
    })?;
    let spec = KeySpec::from_wire(wrapping_key_spec).map_err(|_| {
        DomainError::invalid("WrappingKeySpec", "wrapping_key_spec must be RSA_2048")
    })?;
    Ok((algorithm, spec))
}

/// A usage event on the wire, as the data plane reports it.
pub fn usage_record(e: &UsageEvent) -> ipb::UsageRecord {
    ipb::UsageRecord {
        key_id: e.key_id.to_string(),
        key_version_id: e.version.to_string(),
        principal: e.principal.arn().to_string(),
        operation: e.op.name().to_string(),
        time: Some(timestamp(e.at)),
    }
}

impl TryFrom<&ipb::UsageRecord> for UsageEvent {
    type Error = DomainError;

    fn try_from(w: &ipb::UsageRecord) -> Result<Self, DomainError> {
        Ok(UsageEvent {
            key_id: KeyId::parse(&w.key_id)?,
            version: KeyVersionId::parse(&w.key_version_id)?,
            principal: Principal::parse(&w.principal).map_err(|_| {
                DomainError::invalid("Principal", "a usage record names a principal ARN")
            })?,
            op: UsageOp::parse(&w.operation)?,
            at: w
                .time
                .as_ref()
                .map(from_timestamp)
                .ok_or_else(|| DomainError::invalid("Time", "a usage record needs its time"))?,
        })
    }
}

/// `CheckKeyAssociation`'s answer on the wire.
pub fn key_associations(a: &KeyAssociations) -> pb::CheckKeyAssociationResponse {
    pb::CheckKeyAssociationResponse {
        associations: a
            .associations
            .iter()
            .map(|x| pb::KeyAssociation {
                principal: x.principal.clone(),
                operation: x.op.name().to_string(),
                last_called_at: Some(timestamp(x.last_called)),
            })
            .collect(),
        version_usage: a
            .versions
            .iter()
            .map(|v| pb::VersionUsage {
                key_version_id: v.version.to_string(),
                last_used_at: v.last_used.map(timestamp),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_refuse_unspecified() {
        for s in KeySpec::ALL {
            assert_eq!(KeySpec::from_wire(s.to_wire()), Ok(*s));
        }
        for s in KeyState::ALL {
            assert_eq!(KeyState::from_wire(s.to_wire()), Ok(*s));
        }
        let err = KeySpec::from_wire(0).err().map(|e| e.reason_code());
        assert_eq!(err.as_deref(), Some("InvalidParameter.KeySpec"));
        let err = KeyUsage::from_wire(999).err().map(|e| e.reason_code());
        assert_eq!(err.as_deref(), Some("InvalidParameter.KeyUsage"));
    }

    #[test]
    fn list_keys_request_converts_and_fails_closed() {
        let req = pb::ListKeysRequest {
            kms_instance_id: "kst-abc".into(),
            default_keys_only: false,
            filters: Some(pb::ListKeysFilter {
                key_state: Some(pb::KeyState::Disabled as i32),
                tag_key: Some("env".into()),
                ..Default::default()
            }),
            page_size: 5,
            page_token: String::new(),
        };
        let q = KeyQuery::try_from(req.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.filter.state, Some(KeyState::Disabled));
        assert_eq!(q.filter.tag_key.as_deref(), Some("env"));
        assert_eq!(q.page.size, 5);
        assert_eq!(
            q.instance.map(|i| i.to_string()).as_deref(),
            Some("kst-abc")
        );
        let mut bad = req.clone();
        bad.filters = Some(pb::ListKeysFilter {
            key_spec: Some(0),
            ..Default::default()
        });
        assert_eq!(
            KeyQuery::try_from(bad)
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("InvalidParameter.KeySpec")
        );
        let mut bad = req;
        bad.page_token = "%%%".into();
        assert_eq!(
            KeyQuery::try_from(bad)
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("InvalidParameter.PageToken")
        );
    }

    #[test]
    fn instance_requests_and_events() {
        let ok = pb::CreateKmsInstanceRequest {
            instance_type: pb::InstanceType::Hardware as i32,
            owner_account_id: "42".into(),
            key_quota: 10,
            access_management_quota: Some(1),
        };
        let n = NewInstance::try_from(ok.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.instance_type, InstanceType::Hardware);
        let mut bad = ok.clone();
        bad.owner_account_id = "x".into();
        assert_eq!(
            NewInstance::try_from(bad)
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("InvalidParameter.OwnerAccountId")
        );
        let mut bad = ok;
        bad.instance_type = 0;
        assert_eq!(
            NewInstance::try_from(bad)
                .err()
                .map(|e| e.reason_code())
                .as_deref(),
            Some("InvalidParameter.InstanceType")
        );
        let e = key_event(&KeyEvent::resync(9));
        assert_eq!(
            (e.revision, e.key_id.as_str(), e.kind),
            (9, "", ipb::KeyEventKind::Resync as i32)
        );
    }

    #[test]
    fn timestamps_round_trip() {
        for ms in [
            0,
            1,
            999,
            1_000,
            1_700_000_000_123,
            -1,
            -1_500,
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
        ] {
            assert_eq!(
                from_timestamp(&timestamp(UnixMillis(ms))),
                UnixMillis(ms),
                "{ms}"
            );
        }
    }

    #[test]
    fn usage_records_round_trip_and_fail_closed() {
        let event = UsageEvent {
            key_id: KeyId::generate(),
            version: KeyVersionId::generate(),
            principal: Principal::parse("acs:ram::42:user/alice").unwrap_or_else(|e| panic!("{e}")),
            op: UsageOp::ReEncryptFrom,
            at: UnixMillis(1_700_000_000_123),
        };
        let wire = usage_record(&event);
        assert_eq!(UsageEvent::try_from(&wire), Ok(event));
        for (bad, reason) in [
            (
                ipb::UsageRecord {
                    operation: "Frobnicate".into(),
                    ..wire.clone()
                },
                "InvalidParameter.Operation",
            ),
            (
                ipb::UsageRecord {
                    time: None,
                    ..wire.clone()
                },
                "InvalidParameter.Time",
            ),
            (
                ipb::UsageRecord {
                    principal: "alice".into(),
                    ..wire
                },
                "InvalidParameter.Principal",
            ),
        ] {
            assert_eq!(
                UsageEvent::try_from(&bad)
                    .err()
                    .map(|e| e.reason_code())
                    .as_deref(),
                Some(reason)
            );
        }
    }
}
