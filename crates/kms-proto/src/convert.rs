//! Conversions between wire types and domain types. Unknown or unspecified enum values and
//! malformed ids fail closed with `InvalidParameter.<Field>`.

use kms_types::{
    AccountId, DomainError, InstanceId, KeyEntry, KeyId, KeyOrigin, KeyRecord, KeySpec, KeyState,
    KeyUsage, KeyVersionId, KeyVersionRecord, NewKey, ProtectionLevel, RotationStatus, Tag,
    UnixMillis,
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

/// A protobuf timestamp as a domain instant, rounded down to the millisecond.
pub fn from_timestamp(t: &prost_types::Timestamp) -> UnixMillis {
    UnixMillis(
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000),
    )
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
        rotation_interval: r.rotation.map(|p| prost_types::Duration {
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
        arn: e.arn.clone(),
        account_id: e.account.to_string(),
        kms_instance_id: e
            .instance
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        is_default_key: e.instance.is_none(),
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
        aliases: e.aliases.clone(),
        creator: e.creator.clone(),
    }
}

impl TryFrom<ipb::KeyEntry> for KeyEntry {
    type Error = DomainError;

    fn try_from(w: ipb::KeyEntry) -> Result<Self, DomainError> {
        let versions = w
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
        Ok(KeyEntry {
            id: KeyId::parse(&w.key_id)?,
            arn: w.arn,
            account: AccountId::parse(&w.account_id)?,
            instance: if w.kms_instance_id.is_empty() {
                None
            } else {
                Some(InstanceId::parse(&w.kms_instance_id)?)
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
            aliases: w.aliases,
            creator: w.creator,
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
    fn timestamps_round_trip() {
        for ms in [0, 1, 999, 1_000, 1_700_000_000_123, -1, -1_500] {
            assert_eq!(
                from_timestamp(&timestamp(UnixMillis(ms))),
                UnixMillis(ms),
                "{ms}"
            );
        }
    }
}
