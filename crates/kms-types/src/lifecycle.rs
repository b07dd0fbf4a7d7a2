//! The rules of a key's life: what a new key gets from its request and its home, and every
//! change a key can go through, each checking the API contract's validation and state rules
//! before touching the record. The control plane loads a record, applies one of these, and
//! stores the result; it decides nothing itself.

use crate::error::DomainError;
use crate::ids::{AccountId, InstanceId, KeyId, KeyVersionId};
use crate::key::{KeyRecord, KeyVersionRecord, NewKey, RotationPolicy, Tag};
use crate::policy;
use crate::spec::{InstanceType, KeyOrigin, KeySpec, KeyUsage, ProtectionLevel, check_usage_fits};
use crate::state::{KeyState, Operation};
use crate::time::UnixMillis;
use crate::validate;

/// Rotation interval a key gets when the request names none, in days.
pub const DEFAULT_ROTATION_DAYS: i64 = 365;

/// Where a new key is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHome {
    /// The account's default key: no instance.
    DefaultKey,
    /// A key in an instance of this type.
    Instance(InstanceType),
}

/// The settings of a key about to be created, decided from its request and home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    /// Key spec.
    pub spec: KeySpec,
    /// Key usage.
    pub usage: KeyUsage,
    /// Who makes the material; `External` keys start in `PendingImport` without material.
    pub origin: KeyOrigin,
    /// Where the material is protected.
    pub protection: ProtectionLevel,
    /// Automatic rotation; `None` for asymmetric keys.
    pub rotation: Option<RotationPolicy>,
}

impl KeyPlan {
    /// Whether the key needs material generated before it is stored.
    pub fn needs_material(&self) -> bool {
        self.origin == KeyOrigin::Kms
    }
}

/// The rotation settings a key of `spec` and `origin` gets: symmetric keys rotate (on by
/// default when `on_by_default`); asymmetric keys never do, and asking them to is
/// `InvalidParameter.RotationInterval`; keys with imported material never do either (a new
/// version only comes by importing material), and asking them to is
/// `InvalidParameter.EnableAutomaticRotation` (or `.RotationInterval` for an interval).
pub fn rotation_for(
    spec: KeySpec,
    origin: KeyOrigin,
    enabled: Option<bool>,
    interval_days: Option<i64>,
    on_by_default: bool,
) -> Result<Option<RotationPolicy>, DomainError> {
    if let Some(days) = interval_days {
        validate::rotation_interval_days(days)?;
    }
    if origin == KeyOrigin::External {
        const WHY: &str = "keys with imported material (origin EXTERNAL) do not rotate \
                           automatically: a new version only comes by importing material";
        if enabled == Some(true) {
            return Err(DomainError::invalid("EnableAutomaticRotation", WHY));
        }
        if interval_days.is_some() {
            return Err(DomainError::invalid(
                "RotationInterval",
                format!("{WHY}, so they take no rotation interval"),
            ));
        }
        return Ok(None);
    }
    if !spec.is_symmetric() {
        if enabled == Some(true) || interval_days.is_some() {
            return Err(DomainError::invalid(
                "RotationInterval",
                format!("only symmetric keys rotate automatically, not {spec}"),
            ));
        }
        return Ok(None);
    }
    Ok(Some(RotationPolicy {
        enabled: enabled.unwrap_or(on_by_default),
        interval_days: interval_days.unwrap_or(DEFAULT_ROTATION_DAYS),
    }))
}

impl NewKey {
    /// Checks every field of the request against the rules for `home` and decides the key's
    /// settings. Default keys: `Aliyun_AES_256` only, software, no tags, rotation on. Instance
    /// keys: a spec the instance type offers; rotation on by default for symmetric keys in a
    /// software instance.
    pub fn plan(&self, home: KeyHome) -> Result<KeyPlan, DomainError> {
        validate::description(&self.description)?;
        if let Some(alias) = &self.alias {
            validate::alias_name(alias)?;
        }
        validate::tag_set(&self.tags)?;
        if let Some(doc) = &self.policy {
            policy::validate_document(doc)?;
        }
        let spec = self.spec.unwrap_or(KeySpec::AliyunAes256);
        let (protection, rotation_on) = match home {
            KeyHome::DefaultKey => {
                if spec != KeySpec::AliyunAes256 {
                    return Err(DomainError::invalid(
                        "KeySpec",
                        format!("the default key is always Aliyun_AES_256, not {spec}"),
                    ));
                }
                if !self.tags.is_empty() {
                    return Err(DomainError::invalid(
                        "Tags",
                        "the default key takes no tags",
                    ));
                }
                (ProtectionLevel::Software, true)
            }
            KeyHome::Instance(kind) => {
                if !kind.offers(spec) {
                    let offered: Vec<String> =
                        kind.offered().iter().map(ToString::to_string).collect();
                    return Err(DomainError::invalid(
                        "KeySpec",
                        format!(
                            "a {kind} instance does not offer key spec {spec}; it offers {} \
                             (a HARDWARE instance offers all eight)",
                            offered.join(", ")
                        ),
                    ));
                }
                (kind.protection_level(), kind == InstanceType::Software)
            }
        };
        let usage = self.usage.unwrap_or_else(|| spec.default_usage());
        check_usage_fits(spec, usage)?;
        let origin = self.origin.unwrap_or(KeyOrigin::Kms);
        let rotation = rotation_for(
            spec,
            origin,
            self.rotation_enabled,
            self.rotation_interval_days,
            rotation_on,
        )?;
        Ok(KeyPlan {
            spec,
            usage,
            origin,
            protection,
            rotation,
        })
    }
}

/// Who creates a key, where, and when: what a new record needs besides its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBirth {
    /// The new key's id.
    pub id: KeyId,
    /// The owning account (the creator's).
    pub account: AccountId,
    /// The instance; `None` for the default key.
    pub instance: Option<InstanceId>,
    /// The creator's ARN.
    pub creator: String,
    /// Creation time.
    pub now: UnixMillis,
    /// The id of the first version (the primary once material exists).
    pub first_version: KeyVersionId,
}

impl KeyRecord {
    /// The record of a new key: `Enabled` with its first version when material was made,
    /// `PendingImport` without one otherwise.
    pub fn new_key(
        req: NewKey,
        plan: KeyPlan,
        birth: KeyBirth,
        first: Option<KeyVersionRecord>,
    ) -> Self {
        let state = if first.is_some() {
            KeyState::Enabled
        } else {
            KeyState::PendingImport
        };
        Self {
            id: birth.id,
            account: birth.account,
            instance: birth.instance,
            spec: plan.spec,
            usage: plan.usage,
            state,
            protection: plan.protection,
            origin: plan.origin,
            description: req.description,
            creator: birth.creator,
            created: birth.now,
            delete_date: None,
            deletion_protection: false,
            deletion_protection_description: String::new(),
            rotation: plan.rotation,
            last_rotation: None,
            primary_version: birth.first_version,
            versions: first.into_iter().collect(),
            aliases: req.alias.into_iter().collect(),
            tags: req.tags,
            policy: req.policy,
            material_expire: None,
            material_digest: None,
        }
    }

    /// `EnableKey`: from Enabled or Disabled.
    pub fn enable(&mut self) -> Result<(), DomainError> {
        Operation::EnableKey.check_state(self.state)?;
        self.state = KeyState::Enabled;
        Ok(())
    }

    /// `DisableKey`: from Enabled or Disabled.
    pub fn disable(&mut self) -> Result<(), DomainError> {
        Operation::DisableKey.check_state(self.state)?;
        self.state = KeyState::Disabled;
        Ok(())
    }

    /// `UpdateKeyDescription`: at most 8,192 characters; refused in PendingDeletion.
    pub fn set_description(&mut self, text: &str) -> Result<(), DomainError> {
        validate::description(text)?;
        Operation::UpdateKeyDescription.check_state(self.state)?;
        self.description = text.to_string();
        Ok(())
    }

    /// `SetDeletionProtection`: turning it on is refused in PendingDeletion; turning it off
    /// clears the description.
    pub fn set_deletion_protection(&mut self, on: bool, text: &str) -> Result<(), DomainError> {
        validate::deletion_protection_description(text)?;
        if on {
            Operation::EnableDeletionProtection.check_state(self.state)?;
        } else {
            Operation::SetDeletionProtection.check_state(self.state)?;
        }
        self.deletion_protection = on;
        self.deletion_protection_description = if on { text.to_string() } else { String::new() };
        Ok(())
    }

    /// `ScheduleKeyDeletion`: a 7–366-day window, from Enabled, Disabled or PendingImport, and
    /// not while deletion protection is on.
    pub fn schedule_deletion(&mut self, now: UnixMillis, days: i64) -> Result<(), DomainError> {
        validate::pending_window_days(days)?;
        Operation::ScheduleKeyDeletion.check_state(self.state)?;
        if self.deletion_protection {
            return Err(DomainError::DeletionProtection);
        }
        self.state = KeyState::PendingDeletion;
        self.delete_date = Some(now.plus_days(days));
        Ok(())
    }

    /// `CancelKeyDeletion`: from PendingDeletion only; the key returns to Enabled, or to
    /// PendingImport when it has no material yet.
    pub fn cancel_deletion(&mut self) -> Result<(), DomainError> {
        Operation::CancelKeyDeletion.check_state(self.state)?;
        self.state = if self.versions.is_empty() {
            KeyState::PendingImport
        } else {
            KeyState::Enabled
        };
        self.delete_date = None;
        Ok(())
    }

    /// `UpdateRotationPolicy`: Enabled keys only, symmetric keys with generated material only;
    /// unset fields stay. A key with imported material takes only "off".
    pub fn update_rotation(
        &mut self,
        enabled: Option<bool>,
        interval_days: Option<i64>,
    ) -> Result<(), DomainError> {
        let current = self.rotation_settings();
        let next = rotation_for(
            self.spec,
            self.origin,
            enabled.or(current.map(|r| r.enabled)),
            interval_days.or(current.map(|r| r.interval_days)),
            false,
        )?;
        Operation::UpdateRotationPolicy.check_state(self.state)?;
        self.rotation = next;
        Ok(())
    }

    /// Whether a new version may be made now (`CreateKeyVersion`, rotation): Enabled keys with
    /// generated material only.
    pub fn check_can_add_version(&self) -> Result<(), DomainError> {
        Operation::CreateKeyVersion.check_state(self.state)?;
        if self.origin == KeyOrigin::External {
            return Err(DomainError::invalid(
                "Origin",
                "keys with imported material get new versions by import, not generation",
            ));
        }
        Ok(())
    }

    /// Adds a version and makes it primary; it counts as a rotation at `now`.
    pub fn add_version(
        &mut self,
        version: KeyVersionRecord,
        now: UnixMillis,
    ) -> Result<(), DomainError> {
        self.check_can_add_version()?;
        self.primary_version = version.id;
        self.versions.push(version);
        self.last_rotation = Some(now);
        Ok(())
    }

    /// Whether the rotation scheduler should make a new version at `now`: rotation on, key
    /// Enabled (not suspended), material generated here, and the interval since the last
    /// rotation (or creation) passed.
    pub fn rotation_due(&self, now: UnixMillis) -> bool {
        self.scheduled_rotation().is_some_and(|at| at <= now)
    }

    /// When the rotation scheduler will rotate the key, if it will: rotation on, key Enabled,
    /// material generated here.
    pub fn scheduled_rotation(&self) -> Option<UnixMillis> {
        if self.rotation_status() == crate::spec::RotationStatus::Enabled
            && self.origin == KeyOrigin::Kms
        {
            self.next_rotation()
        } else {
            None
        }
    }

    /// Whether the reaper should delete the key at `now`.
    pub fn deletion_due(&self, now: UnixMillis) -> bool {
        self.state == KeyState::PendingDeletion && self.delete_date.is_some_and(|at| at <= now)
    }

    /// `CreateAlias` (and the new key of `UpdateAlias`): refused in PendingDeletion.
    /// Uniqueness within the account is the store's to check.
    pub fn add_alias(&mut self, alias: &str) -> Result<(), DomainError> {
        validate::alias_name(alias)?;
        Operation::CreateAlias.check_state(self.state)?;
        if !self.aliases.iter().any(|a| a == alias) {
            self.aliases.push(alias.to_string());
            self.aliases.sort();
        }
        Ok(())
    }

    /// Removes an alias from the key (`DeleteAlias`, the old key of `UpdateAlias`).
    pub fn remove_alias(&mut self, alias: &str) {
        self.aliases.retain(|a| a != alias);
    }

    /// `TagResources` on this key: adds tags and replaces the values of existing tag keys.
    /// Default keys take no tags; refused in PendingDeletion; at most 20 tags afterwards. The
    /// batch call names the key in the error.
    pub fn add_tags(&mut self, tags: &[Tag]) -> Result<(), DomainError> {
        if self.is_default() {
            return Err(DomainError::invalid(
                "Tags",
                "it is a default key, which takes no tags",
            ));
        }
        Operation::ChangeTags.check_state(self.state)?;
        let mut merged = self.tags.clone();
        for t in tags {
            match merged.iter_mut().find(|m| m.key == t.key) {
                Some(existing) => existing.value = t.value.clone(),
                None => merged.push(t.clone()),
            }
        }
        validate::tag_set(&merged)?;
        self.tags = merged;
        Ok(())
    }

    /// `UntagResources` on this key: removes the tags with these keys; absent keys are
    /// ignored. Refused in PendingDeletion.
    pub fn remove_tags(&mut self, tag_keys: &[String]) -> Result<(), DomainError> {
        Operation::ChangeTags.check_state(self.state)?;
        self.tags.retain(|t| !tag_keys.contains(&t.key));
        Ok(())
    }

    /// `SetKeyPolicy`: a valid document replaces the policy.
    pub fn set_policy(&mut self, doc: &str) -> Result<(), DomainError> {
        policy::validate_document(doc)?;
        self.policy = Some(doc.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason<T>(r: Result<T, DomainError>) -> Option<String> {
        r.err().map(|e| e.reason_code())
    }

    fn birth() -> KeyBirth {
        KeyBirth {
            id: KeyId::generate(),
            account: AccountId::parse("7").unwrap_or_else(|e| panic!("{e}")),
            instance: Some(InstanceId::generate()),
            creator: "acs:ram::7:root".into(),
            now: UnixMillis(1_000),
            first_version: KeyVersionId::generate(),
        }
    }

    fn version(id: KeyVersionId) -> KeyVersionRecord {
        KeyVersionRecord {
            id,
            created: UnixMillis(1_000),
            wrapped_material: vec![1; 60],
            public_key_der: vec![],
        }
    }

    fn key(state: KeyState) -> KeyRecord {
        let b = birth();
        let first = version(b.first_version);
        let plan = NewKey::default()
            .plan(KeyHome::Instance(InstanceType::Software))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut k = KeyRecord::new_key(NewKey::default(), plan, b, Some(first));
        k.state = state;
        k
    }

    fn t(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn plans_follow_the_home() {
        use KeySpec::*;
        let req = |spec: Option<KeySpec>| NewKey {
            spec,
            ..NewKey::default()
        };
        let default = req(None)
            .plan(KeyHome::DefaultKey)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.spec, AliyunAes256);
        assert_eq!(default.protection, ProtectionLevel::Software);
        assert_eq!(
            default.rotation,
            Some(RotationPolicy {
                enabled: true,
                interval_days: 365
            })
        );
        assert_eq!(
            reason(req(Some(Rsa2048)).plan(KeyHome::DefaultKey)).as_deref(),
            Some("InvalidParameter.KeySpec")
        );
        let tagged = NewKey {
            tags: vec![t("a", "b")],
            ..NewKey::default()
        };
        assert_eq!(
            reason(tagged.plan(KeyHome::DefaultKey)).as_deref(),
            Some("InvalidParameter.Tags")
        );
        let soft = KeyHome::Instance(InstanceType::Software);
        let hard = KeyHome::Instance(InstanceType::Hardware);
        for spec in [AliyunAes192, AliyunAes128, Rsa4096] {
            let refused = req(Some(spec)).plan(soft).err();
            assert_eq!(
                refused.as_ref().map(DomainError::reason_code).as_deref(),
                Some("InvalidParameter.KeySpec")
            );
            assert_eq!(
                refused.map(|e| e.to_string()).unwrap_or_default(),
                format!(
                    "a SOFTWARE instance does not offer key spec {spec}; it offers \
                     Aliyun_AES_256, RSA_2048, RSA_3072, EC_P256, EC_P256K (a HARDWARE instance \
                     offers all eight)"
                )
            );
        }
        for spec in KeySpec::ALL {
            assert!(req(Some(*spec)).plan(hard).is_ok(), "{spec} in hardware");
        }
        let ec = req(Some(EcP256))
            .plan(hard)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ec.usage, KeyUsage::SignVerify);
        assert_eq!(ec.protection, ProtectionLevel::Hsm);
        assert_eq!(ec.rotation, None);
        let hw_aes = req(Some(AliyunAes128))
            .plan(hard)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hw_aes.rotation.map(|r| r.enabled), Some(false));
        let sw_aes = req(None).plan(soft).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sw_aes.rotation.map(|r| r.enabled), Some(true));
        let bad_usage = NewKey {
            spec: Some(EcP256K),
            usage: Some(KeyUsage::EncryptDecrypt),
            ..NewKey::default()
        };
        assert_eq!(
            reason(bad_usage.plan(soft)).as_deref(),
            Some("InvalidParameter.KeyUsage")
        );
        let rsa_rotation = NewKey {
            spec: Some(Rsa2048),
            rotation_enabled: Some(true),
            ..NewKey::default()
        };
        assert_eq!(
            reason(rsa_rotation.plan(soft)).as_deref(),
            Some("InvalidParameter.RotationInterval")
        );
        let short = NewKey {
            rotation_interval_days: Some(6),
            ..NewKey::default()
        };
        assert_eq!(
            reason(short.plan(soft)).as_deref(),
            Some("InvalidParameter.RotationInterval")
        );
    }

    #[test]
    fn new_key_state_follows_material() {
        let b = birth();
        let plan = NewKey::default()
            .plan(KeyHome::DefaultKey)
            .unwrap_or_else(|e| panic!("{e}"));
        let pending = KeyRecord::new_key(NewKey::default(), plan.clone(), b.clone(), None);
        assert_eq!(pending.state, KeyState::PendingImport);
        assert!(pending.versions.is_empty());
        let enabled = KeyRecord::new_key(
            NewKey::default(),
            plan,
            b.clone(),
            Some(version(b.first_version)),
        );
        assert_eq!(enabled.state, KeyState::Enabled);
        assert_eq!(enabled.primary_version, b.first_version);
    }

    #[test]
    fn deletion_schedule_and_cancel() {
        let now = UnixMillis(10_000);
        let mut k = key(KeyState::Disabled);
        assert_eq!(
            reason(k.schedule_deletion(now, 6)).as_deref(),
            Some("InvalidParameter.PendingWindowInDays")
        );
        k.set_deletion_protection(true, "prod")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.schedule_deletion(now, 7),
            Err(DomainError::DeletionProtection)
        );
        k.set_deletion_protection(false, "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.deletion_protection_description, "");
        assert_eq!(k.schedule_deletion(now, 7), Ok(()));
        assert_eq!(k.state, KeyState::PendingDeletion);
        assert_eq!(k.delete_date, Some(now.plus_days(7)));
        assert!(!k.deletion_due(now.plus_days(7).plus_millis(-1)));
        assert!(k.deletion_due(now.plus_days(7)));
        assert_eq!(
            reason(k.set_deletion_protection(true, "")).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        assert_eq!(k.cancel_deletion(), Ok(()));
        assert_eq!(k.state, KeyState::Enabled);
        assert_eq!(k.delete_date, None);

        let mut external = key(KeyState::PendingImport);
        external.versions.clear();
        assert_eq!(external.schedule_deletion(now, 30), Ok(()));
        assert_eq!(external.cancel_deletion(), Ok(()));
        assert_eq!(external.state, KeyState::PendingImport);
    }

    #[test]
    fn rotation_policy_and_due_dates() {
        let mut k = key(KeyState::Enabled);
        let created = k.created;
        assert!(!k.rotation_due(created.plus_days(365).plus_millis(-1)));
        assert!(k.rotation_due(created.plus_days(365)));
        k.update_rotation(None, Some(30))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.rotation.map(|r| (r.enabled, r.interval_days)),
            Some((true, 30))
        );
        assert!(k.rotation_due(created.plus_days(30)));
        k.update_rotation(Some(false), None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.rotation.map(|r| (r.enabled, r.interval_days)),
            Some((false, 30))
        );
        assert!(!k.rotation_due(created.plus_days(400)));
        k.update_rotation(Some(true), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let v = KeyVersionId::generate();
        let at = created.plus_days(31);
        k.add_version(version(v), at)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.primary_version, v);
        assert_eq!(k.last_rotation, Some(at));
        assert!(!k.rotation_due(at.plus_days(29)));
        assert!(k.rotation_due(at.plus_days(30)));
        k.disable().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !k.rotation_due(at.plus_days(300)),
            "disabled keys do not rotate"
        );
        assert_eq!(
            reason(k.update_rotation(Some(true), None)).as_deref(),
            Some("Rejected.Disabled")
        );
        assert_eq!(
            reason(k.add_version(version(KeyVersionId::generate()), at)).as_deref(),
            Some("Rejected.Disabled")
        );

        let mut rsa = key(KeyState::Enabled);
        rsa.spec = KeySpec::Rsa2048;
        rsa.rotation = None;
        assert_eq!(
            reason(rsa.update_rotation(Some(true), None)).as_deref(),
            Some("InvalidParameter.RotationInterval")
        );
        assert_eq!(rsa.update_rotation(Some(false), None), Ok(()));
        assert!(!rsa.rotation_due(UnixMillis(i64::MAX)));
    }

    #[test]
    fn tags_merge_and_limits() {
        let mut k = key(KeyState::Enabled);
        k.add_tags(&[t("env", "dev"), t("team", "a")])
            .unwrap_or_else(|e| panic!("{e}"));
        k.add_tags(&[t("env", "prod")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.tags, vec![t("env", "prod"), t("team", "a")]);
        let many: Vec<Tag> = (0..19).map(|i| t(&format!("k{i}"), "v")).collect();
        assert_eq!(
            reason(k.add_tags(&many)).as_deref(),
            Some("InvalidParameter.Tags")
        );
        assert_eq!(k.tags.len(), 2, "a refused change leaves the tags alone");
        k.remove_tags(&["env".into(), "absent".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(k.tags, vec![t("team", "a")]);
        k.state = KeyState::PendingDeletion;
        assert_eq!(
            reason(k.add_tags(&[t("x", "y")])).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        assert_eq!(
            reason(k.remove_tags(&["team".into()])).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        let mut d = key(KeyState::Enabled);
        d.instance = None;
        assert_eq!(
            reason(d.add_tags(&[t("x", "y")])).as_deref(),
            Some("InvalidParameter.Tags")
        );
    }

    #[test]
    fn aliases_description_policy() {
        let mut k = key(KeyState::Disabled);
        k.add_alias("alias/b").unwrap_or_else(|e| panic!("{e}"));
        k.add_alias("alias/a").unwrap_or_else(|e| panic!("{e}"));
        k.add_alias("alias/a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            k.aliases,
            vec!["alias/a".to_string(), "alias/b".to_string()]
        );
        k.remove_alias("alias/a");
        assert_eq!(k.aliases, vec!["alias/b".to_string()]);
        assert_eq!(
            reason(k.set_description(&"x".repeat(8193))).as_deref(),
            Some("InvalidParameter.Description")
        );
        assert_eq!(k.set_description("ok"), Ok(()));
        assert_eq!(
            reason(k.set_policy("{}")).as_deref(),
            Some("InvalidParameter.Policy")
        );
        k.state = KeyState::PendingDeletion;
        assert_eq!(
            reason(k.add_alias("alias/c")).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        assert_eq!(
            reason(k.set_description("later")).as_deref(),
            Some("Rejected.PendingDeletion")
        );
        assert_eq!(k.set_policy(r#"{"Version":"1","Statement":[]}"#), Ok(()));
    }

    #[test]
    fn enable_disable() {
        for (state, ok) in [
            (KeyState::Enabled, true),
            (KeyState::Disabled, true),
            (KeyState::PendingDeletion, false),
            (KeyState::PendingImport, false),
        ] {
            let mut k = key(state);
            assert_eq!(k.enable().is_ok(), ok, "enable from {state:?}");
            let mut k = key(state);
            assert_eq!(k.disable().is_ok(), ok, "disable from {state:?}");
        }
    }

    /// Keys with imported material never rotate automatically: asking at creation or later is
    /// refused, saying why; rotation shows as Disabled with no interval or date, also for a
    /// record stored with rotation settings before the rule.
    #[test]
    fn external_keys_do_not_rotate_automatically() {
        use crate::spec::RotationStatus;
        let soft = KeyHome::Instance(InstanceType::Software);
        let req = |enabled: Option<bool>, days: Option<i64>| NewKey {
            origin: Some(KeyOrigin::External),
            rotation_enabled: enabled,
            rotation_interval_days: days,
            ..NewKey::default()
        };
        let plan = req(None, None).plan(soft).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.rotation, None,
            "not on by default in a software instance"
        );
        assert_eq!(
            req(Some(false), None).plan(soft).map(|p| p.rotation),
            Ok(None)
        );
        for (enabled, days, want) in [
            (Some(true), None, "InvalidParameter.EnableAutomaticRotation"),
            (
                Some(true),
                Some(30),
                "InvalidParameter.EnableAutomaticRotation",
            ),
            (None, Some(30), "InvalidParameter.RotationInterval"),
        ] {
            let refused = req(enabled, days).plan(soft).err();
            assert_eq!(
                refused.as_ref().map(DomainError::reason_code).as_deref(),
                Some(want),
                "{enabled:?} {days:?}"
            );
            assert!(
                refused.is_some_and(|e| e.to_string().contains("only comes by importing")),
                "the refusal says why"
            );
        }

        let mut k = key(KeyState::Enabled);
        k.origin = KeyOrigin::External;
        // As stored before the rule: rotation on.
        assert!(k.rotation.is_some_and(|r| r.enabled));
        assert_eq!(k.rotation_status(), RotationStatus::Disabled);
        assert_eq!(k.rotation_settings(), None);
        assert_eq!(k.next_rotation(), None);
        assert!(!k.rotation_due(UnixMillis(i64::MAX)));
        assert_eq!(
            reason(k.update_rotation(Some(true), None)).as_deref(),
            Some("InvalidParameter.EnableAutomaticRotation")
        );
        assert_eq!(
            reason(k.update_rotation(None, Some(30))).as_deref(),
            Some("InvalidParameter.RotationInterval")
        );
        assert_eq!(k.update_rotation(Some(false), None), Ok(()));
        assert_eq!(k.rotation, None);
    }

    #[test]
    fn external_keys_get_no_generated_versions() {
        let mut k = key(KeyState::Enabled);
        k.origin = KeyOrigin::External;
        assert_eq!(
            reason(k.check_can_add_version()).as_deref(),
            Some("InvalidParameter.Origin")
        );
        assert!(!k.rotation_due(UnixMillis(i64::MAX)));
    }
}
