//! The key record the control plane stores, and what follows from it (rotation status, dates).

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, InstanceId, KeyId, KeyVersionId};
use crate::spec::{KeyOrigin, KeySpec, KeyUsage, ProtectionLevel, RotationStatus};
use crate::state::KeyState;
use crate::time::UnixMillis;

/// A tag on a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tag {
    /// 1–128 characters.
    pub key: String,
    /// 1–128 characters.
    pub value: String,
}

/// Automatic rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// Whether automatic rotation is on.
    pub enabled: bool,
    /// Interval in days (7–365); kept while rotation is off so turning it on again restores it.
    pub interval_days: i64,
}

/// One version of a key's material, as the control plane stores it: wrapped, never plain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    /// The version id.
    pub id: KeyVersionId,
    /// When it was created.
    pub created: UnixMillis,
    /// Material sealed under the HSM root key (empty until imported for External keys).
    #[serde(with = "b64")]
    pub wrapped_material: Vec<u8>,
    /// SubjectPublicKeyInfo DER for asymmetric keys; empty otherwise.
    #[serde(with = "b64")]
    pub public_key_der: Vec<u8>,
}

/// Everything the control plane knows about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key id.
    pub id: KeyId,
    /// The account that owns the key.
    pub account: AccountId,
    /// The instance it lives in; `None` for an account's default key.
    pub instance: Option<InstanceId>,
    /// Key spec.
    pub spec: KeySpec,
    /// Key usage.
    pub usage: KeyUsage,
    /// Lifecycle state.
    pub state: KeyState,
    /// Software or HSM.
    pub protection: ProtectionLevel,
    /// Who made the material.
    pub origin: KeyOrigin,
    /// Free text, at most 8,192 characters.
    pub description: String,
    /// ARN of the principal that created it.
    pub creator: String,
    /// Creation time.
    pub created: UnixMillis,
    /// When a pending deletion completes.
    pub delete_date: Option<UnixMillis>,
    /// Whether deletion is refused.
    pub deletion_protection: bool,
    /// Why deletion is refused.
    pub deletion_protection_description: String,
    /// Automatic rotation; `None` for keys that cannot rotate automatically.
    pub rotation: Option<RotationPolicy>,
    /// When the last automatic or manual rotation happened.
    pub last_rotation: Option<UnixMillis>,
    /// The version that encrypts and signs.
    pub primary_version: KeyVersionId,
    /// Every live version, oldest first.
    pub versions: Vec<KeyVersionRecord>,
    /// Aliases pointing at the key.
    pub aliases: Vec<String>,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Custom policy document; `None` means the default policy.
    pub policy: Option<String>,
    /// When imported material expires.
    pub material_expire: Option<UnixMillis>,
    /// Keyed digest (hex) of the first material imported into the key, kept when the material
    /// is deleted or expires: a re-import must bring the same material. Never a plain hash.
    #[serde(default)]
    pub material_digest: Option<String>,
}

impl KeyRecord {
    /// Whether this is an account's default key.
    pub fn is_default(&self) -> bool {
        self.instance.is_none()
    }

    /// The key's automatic-rotation settings; `None` for keys that cannot rotate automatically:
    /// asymmetric keys, and keys with imported material (a new version only comes by import;
    /// a record stored before that rule may still hold settings, which mean nothing).
    pub fn rotation_settings(&self) -> Option<RotationPolicy> {
        self.rotation.filter(|_| self.origin == KeyOrigin::Kms)
    }

    /// Rotation status: on and usable → Enabled; on but Disabled or pending → Suspended;
    /// off, or not applicable (asymmetric keys, keys with imported material) → Disabled.
    pub fn rotation_status(&self) -> RotationStatus {
        match self.rotation_settings() {
            Some(RotationPolicy { enabled: true, .. }) if self.state == KeyState::Enabled => {
                RotationStatus::Enabled
            }
            Some(RotationPolicy { enabled: true, .. }) => RotationStatus::Suspended,
            _ => RotationStatus::Disabled,
        }
    }

    /// When the next automatic rotation is due, while rotation is on (never for keys with
    /// imported material).
    pub fn next_rotation(&self) -> Option<UnixMillis> {
        match self.rotation_settings() {
            Some(RotationPolicy {
                enabled: true,
                interval_days,
            }) => Some(
                self.last_rotation
                    .unwrap_or(self.created)
                    .plus_days(interval_days),
            ),
            _ => None,
        }
    }

    /// A version by id.
    pub fn version(&self, id: &KeyVersionId) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|v| v.id == *id)
    }
}

/// A request to create a key, validated field by field by the registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewKey {
    /// The instance; `None` asks for the account's default key.
    pub instance: Option<InstanceId>,
    /// Key spec; `None` means the default for the kind of key.
    pub spec: Option<KeySpec>,
    /// Usage; `None` means the spec's default usage.
    pub usage: Option<KeyUsage>,
    /// Who makes the material; `None` means KMS.
    pub origin: Option<KeyOrigin>,
    /// Description.
    pub description: String,
    /// An alias to create with the key.
    pub alias: Option<String>,
    /// Tags to put on the key.
    pub tags: Vec<Tag>,
    /// Whether automatic rotation is on; `None` means the default for the key.
    pub rotation_enabled: Option<bool>,
    /// Rotation interval in whole days; `None` means the default (365).
    pub rotation_interval_days: Option<i64>,
    /// Custom policy document; `None` means the default policy.
    pub policy: Option<String>,
}

/// What the data plane needs to know to use a key: no description, tags or dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// The key id.
    pub id: KeyId,
    /// The owning account.
    pub account: AccountId,
    /// The account owning the key's instance, when it is not the key's owner (a shared instance):
    /// under the default policy its principals may manage and use the key too.
    pub instance_owner: Option<AccountId>,
    /// Key spec.
    pub spec: KeySpec,
    /// Key usage.
    pub usage: KeyUsage,
    /// Lifecycle state.
    pub state: KeyState,
    /// Software or HSM.
    pub protection: ProtectionLevel,
    /// Who made the material.
    pub origin: KeyOrigin,
    /// The version that encrypts and signs.
    pub primary_version: KeyVersionId,
    /// Every live version with its wrapped material.
    pub versions: Vec<KeyVersionRecord>,
    /// Custom policy; `None` means the default policy.
    pub policy: Option<String>,
    /// When imported material expires.
    pub material_expire: Option<UnixMillis>,
}

impl KeyEntry {
    /// The entry for a stored key whose instance, if any, `instance_owner` owns.
    pub fn from_record(r: &KeyRecord, instance_owner: Option<&AccountId>) -> Self {
        Self {
            id: r.id,
            account: r.account,
            instance_owner: instance_owner.filter(|o| **o != r.account).cloned(),
            spec: r.spec,
            usage: r.usage,
            state: r.state,
            protection: r.protection,
            origin: r.origin,
            primary_version: r.primary_version,
            versions: r.versions.clone(),
            policy: r.policy.clone(),
            material_expire: r.material_expire,
        }
    }

    /// A version by id.
    pub fn version(&self, id: &KeyVersionId) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|v| v.id == *id)
    }
}

pub(crate) mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: KeyState, rotation: Option<RotationPolicy>) -> KeyRecord {
        let v = KeyVersionId::generate();
        KeyRecord {
            id: KeyId::generate(),
            account: AccountId::parse("1").unwrap_or_else(|e| panic!("{e}")),
            instance: None,
            spec: KeySpec::AliyunAes256,
            usage: KeyUsage::EncryptDecrypt,
            state,
            protection: ProtectionLevel::Software,
            origin: KeyOrigin::Kms,
            description: String::new(),
            creator: "acs:ram::1:root".into(),
            created: UnixMillis(1_000),
            delete_date: None,
            deletion_protection: false,
            deletion_protection_description: String::new(),
            rotation,
            last_rotation: None,
            primary_version: v,
            versions: vec![KeyVersionRecord {
                id: v,
                created: UnixMillis(1_000),
                wrapped_material: vec![1, 2, 3],
                public_key_der: vec![],
            }],
            aliases: vec![],
            tags: vec![],
            policy: None,
            material_expire: None,
            material_digest: None,
        }
    }

    #[test]
    fn rotation_status_follows_state() {
        let on = Some(RotationPolicy {
            enabled: true,
            interval_days: 30,
        });
        let off = Some(RotationPolicy {
            enabled: false,
            interval_days: 30,
        });
        assert_eq!(
            record(KeyState::Enabled, on).rotation_status(),
            RotationStatus::Enabled
        );
        assert_eq!(
            record(KeyState::Disabled, on).rotation_status(),
            RotationStatus::Suspended
        );
        assert_eq!(
            record(KeyState::PendingDeletion, on).rotation_status(),
            RotationStatus::Suspended
        );
        assert_eq!(
            record(KeyState::Enabled, off).rotation_status(),
            RotationStatus::Disabled
        );
        assert_eq!(
            record(KeyState::Enabled, None).rotation_status(),
            RotationStatus::Disabled
        );
        assert_eq!(
            record(KeyState::Enabled, on).next_rotation(),
            Some(UnixMillis(1_000).plus_days(30))
        );
        assert_eq!(record(KeyState::Enabled, off).next_rotation(), None);
    }

    #[test]
    fn serde_round_trip_keeps_material_base64() {
        let r = record(KeyState::Enabled, None);
        let json = serde_json::to_string(&r).unwrap_or_default();
        assert!(json.contains("\"wrapped_material\":\"AQID\""), "{json}");
        let back: KeyRecord = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
    }
}
