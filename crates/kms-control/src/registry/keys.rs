//! Keys: creation (default keys and keys in instances), description, listing, and the
//! lifecycle operations that change one key's state or settings.

use kms_store::{Abort, Store, Txn};
use kms_types::{
    DomainError, KeyBirth, KeyHome, KeyId, KeyQuery, KeyRecord, KeyRef, KeyVersionId,
    KeyVersionRecord, NewKey, Page, Principal, policy,
};

use super::Registry;
use super::access::{self, Grants};
use crate::index;
use crate::schema;
use kms_types::authz::{Rpc, Touch};

/// Index entries read per store scan while listing.
const SCAN_BATCH: usize = 256;

impl<S: Store> Registry<S> {
    /// `CreateKey`. Without an instance, the caller's account's default key; otherwise a key
    /// in an instance the account owns or that is shared with it.
    pub async fn create_key(
        &self,
        caller: &Principal,
        req: NewKey,
    ) -> Result<KeyRecord, DomainError> {
        let account = *caller.account();
        let instance = match &req.instance {
            None => None,
            Some(id) => {
                let id = id.clone();
                let found = self
                    .read_point(move |store| index::load_instance(store, &id))
                    .await?;
                Some(
                    found
                        .filter(|i| i.is_visible_to(&account))
                        .ok_or(DomainError::InstanceNotFound)?,
                )
            }
        };
        let home = instance
            .as_ref()
            .map_or(KeyHome::DefaultKey, |i| KeyHome::Instance(i.instance_type));
        let plan = req.plan(home)?;
        // Fail fast, before asking the data plane for material; the transaction checks again.
        if let Some(i) = &instance {
            i.check_room_for_key()?;
            if let Some(doc) = &req.policy {
                let (i, doc) = (i.clone(), doc.clone());
                self.read(move |store| super::access::check_early(store, &i, &account, Some(&doc)))
                    .await?;
            }
        }
        {
            let alias = req.alias.clone();
            let is_default = instance.is_none();
            let caller = caller.clone();
            self.read_point(move |store| {
                if is_default
                    && let Some(id) = index::load_key_id(store, &schema::default_key(&account))?
                {
                    return Err(DomainError::DefaultKeyExists(existing_default_key(
                        store, &caller, &id,
                    )?));
                }
                if let Some(alias) = alias
                    && index::load_key_id(store, &schema::alias(&account, &alias))?.is_some()
                {
                    return Err(DomainError::AliasExists);
                }
                Ok(())
            })
            .await?;
        }

        let birth = KeyBirth {
            id: KeyId::generate(),
            account,
            instance: req.instance.clone(),
            creator: caller.arn().to_string(),
            now: self.clock.now(),
            first_version: KeyVersionId::generate(),
        };
        let first = if plan.needs_material() {
            let m = self
                .material
                .generate(&birth.id, &birth.first_version, plan.spec, plan.protection)
                .await?;
            Some(KeyVersionRecord {
                id: birth.first_version,
                created: birth.now,
                wrapped_material: m.wrapped,
                public_key_der: m.public_key_der,
            })
        } else {
            None
        };
        let record = KeyRecord::new_key(req, plan, birth, first);
        let stored = record.clone();
        // The instance's quotas are decided in the transaction that writes: its key count in
        // `put_key`, and the other accounts a policy grants here.
        let put = move |tx: &mut dyn Txn, granted: Option<&Grants>| {
            if let Some(id) = &stored.instance {
                let instance = index::get_instance(tx, id)?
                    .filter(|i| i.is_visible_to(&stored.account))
                    .ok_or(Abort::User(DomainError::InstanceNotFound))?;
                if let Some(granted) = granted {
                    let policy = stored.policy.as_deref();
                    access::check_in(
                        &instance,
                        &granted.with_policy(&instance, &stored.account, policy),
                    )?;
                }
            }
            let event = index::put_key(tx, None, &stored)?;
            Ok(((), vec![event]))
        };
        match (&record.instance, &record.policy) {
            (Some(instance), Some(_)) => {
                self.commit_with_grants(instance, None, move |tx, granted| put(tx, Some(granted)))
                    .await?
            }
            _ => self.commit(move |tx| put(tx, None)).await?,
        }
        tracing::info!(key_id = %record.id, account = %record.account, instance = ?record.instance.as_ref().map(|i| i.to_string()), spec = %record.spec, "key created");
        Ok(record)
    }

    /// `DescribeKey`.
    pub async fn describe_key(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        self.resolve(caller, key_ref, Rpc::DescribeKey.action(Touch::Key))
            .await
    }

    /// `ListKeys`: the caller's account's keys matching the query, by key id; only keys the
    /// caller may `DescribeKey` are listed, so a key's policy hides its description, aliases
    /// and tags from listings too.
    pub async fn list_keys(
        &self,
        caller: &Principal,
        query: KeyQuery,
    ) -> Result<Page<KeyRecord>, DomainError> {
        let account = *caller.account();
        let caller = caller.clone();
        if let Some(alias) = &query.filter.alias {
            kms_types::validate::alias_name(alias)?;
        }
        let after = query.page.after_as(KeyId::parse)?;
        self.read(move |store| {
            let want = query.page.size + 1;
            let mut found = Vec::new();
            let mut describable = super::Describable::new(&caller);
            let mut consider =
                |found: &mut Vec<KeyRecord>, record: KeyRecord| -> Result<(), DomainError> {
                    if record.account == account
                        && query.matches(&record)
                        && describable.allows(store, &record)?
                    {
                        found.push(record);
                    }
                    Ok(())
                };
            // One candidate at most: the default key, or the key the alias names.
            let single_slot = if query.default_keys_only {
                Some(schema::default_key(&account))
            } else {
                query
                    .filter
                    .alias
                    .as_ref()
                    .map(|a| schema::alias(&account, a))
            };
            if let Some(slot) = single_slot {
                if let Some(id) = index::load_key_id(store, &slot)?
                    && after.as_ref().is_none_or(|a| id > *a)
                    && let Some(record) = index::load_key(store, &id)?
                {
                    consider(&mut found, record)?;
                }
                return Ok(Page::from_lookahead(found, query.page.size, |r| {
                    r.id.to_string()
                }));
            }
            // Otherwise the narrowest index that lists key ids in order.
            let prefix = match (&query.instance, &query.filter.tag_key) {
                (Some(instance), _) => schema::instance_keys_prefix(instance),
                (None, Some(tag_key)) => schema::tag_prefix(&account, tag_key),
                (None, None) => schema::owner_prefix(&account),
            };
            let mut cursor = after.map(|a| [prefix.as_slice(), a.as_str().as_bytes()].concat());
            'scan: loop {
                let batch = store
                    .scan_prefix(&prefix, cursor.as_deref(), SCAN_BATCH)
                    .map_err(crate::index::store_error)?;
                for (slot, _) in &batch {
                    let id = KeyId::parse(schema::suffix(slot, &prefix)?)
                        .map_err(|_| DomainError::Internal("malformed key index entry".into()))?;
                    if let Some(record) = index::load_key(store, &id)? {
                        consider(&mut found, record)?;
                    }
                    if found.len() >= want {
                        break 'scan;
                    }
                }
                match batch.last() {
                    Some((last, _)) if batch.len() == SCAN_BATCH => cursor = Some(last.clone()),
                    _ => break,
                }
            }
            Ok(Page::from_lookahead(found, query.page.size, |r| {
                r.id.to_string()
            }))
        })
        .await
    }

    /// Keys by state and spec, for metrics: reads every key record, a page at a time, each
    /// page in its own read.
    pub async fn key_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<(&'static str, &'static str), u64>, DomainError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let after = cursor.clone();
            let batch = self
                .read(move |store| {
                    store
                        .scan_prefix(schema::KEY_PREFIX, after.as_deref(), SCAN_BATCH)
                        .map_err(crate::index::store_error)
                })
                .await?;
            for (_, value) in &batch {
                let record = schema::decode_key(value)?;
                *counts
                    .entry((record.state.display_name(), record.spec.display_name()))
                    .or_insert(0) += 1;
            }
            match batch.last() {
                Some((last, _)) if batch.len() == SCAN_BATCH => cursor = Some(last.clone()),
                _ => return Ok(counts),
            }
        }
    }

    /// `EnableKey`.
    pub async fn enable_key(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        self.mutate_key(caller, key_ref, Rpc::EnableKey.action(Touch::Key), |k| {
            k.enable()
        })
        .await
    }

    /// `DisableKey`.
    pub async fn disable_key(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        self.mutate_key(caller, key_ref, Rpc::DisableKey.action(Touch::Key), |k| {
            k.disable()
        })
        .await
    }

    /// `UpdateKeyDescription`.
    pub async fn update_key_description(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        description: String,
    ) -> Result<KeyRecord, DomainError> {
        kms_types::validate::description(&description)?;
        self.mutate_key(
            caller,
            key_ref,
            Rpc::UpdateKeyDescription.action(Touch::Key),
            move |k| k.set_description(&description),
        )
        .await
    }

    /// `SetDeletionProtection`.
    pub async fn set_deletion_protection(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        on: bool,
        description: String,
    ) -> Result<KeyRecord, DomainError> {
        kms_types::validate::deletion_protection_description(&description)?;
        self.mutate_key(
            caller,
            key_ref,
            Rpc::SetDeletionProtection.action(Touch::Key),
            move |k| k.set_deletion_protection(on, &description),
        )
        .await
    }

    /// `ScheduleKeyDeletion`: the key goes to PendingDeletion until `days` from now.
    pub async fn schedule_key_deletion(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        days: i64,
    ) -> Result<KeyRecord, DomainError> {
        kms_types::validate::pending_window_days(days)?;
        let now = self.clock.now();
        let record = self
            .mutate_key(
                caller,
                key_ref,
                Rpc::ScheduleKeyDeletion.action(Touch::Key),
                move |k| k.schedule_deletion(now, days),
            )
            .await?;
        tracing::info!(key_id = %record.id, delete_date = ?record.delete_date, "key deletion scheduled");
        Ok(record)
    }

    /// `CancelKeyDeletion`.
    pub async fn cancel_key_deletion(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        self.mutate_key(
            caller,
            key_ref,
            Rpc::CancelKeyDeletion.action(Touch::Key),
            |k| k.cancel_deletion(),
        )
        .await
    }

    /// `UpdateRotationPolicy`: unset fields stay as they are.
    pub async fn update_rotation_policy(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        enabled: Option<bool>,
        interval_days: Option<i64>,
    ) -> Result<KeyRecord, DomainError> {
        if let Some(days) = interval_days {
            kms_types::validate::rotation_interval_days(days)?;
        }
        self.mutate_key(
            caller,
            key_ref,
            Rpc::UpdateRotationPolicy.action(Touch::Key),
            move |k| k.update_rotation(enabled, interval_days),
        )
        .await
    }

    /// `SetKeyPolicy`: stores a valid document, if the instance's access-management quota
    /// allows the other accounts it grants; both planes evaluate it from then on.
    pub async fn set_key_policy(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        document: String,
    ) -> Result<KeyRecord, DomainError> {
        policy::validate_document(&document)?;
        let action = Rpc::SetKeyPolicy.action(Touch::Key);
        let record = self.resolve(caller, key_ref, action).await?;
        let Some(instance_id) = record.instance.clone() else {
            return self
                .mutate_id(caller, record.id, action, move |k| k.set_policy(&document))
                .await;
        };
        // In an instance, the accounts the document grants count against its quota, decided
        // in the transaction that writes it.
        let (caller, id, instance) = (caller.clone(), record.id, instance_id.clone());
        self.commit_with_grants(&instance, Some(&record.id), move |tx, granted| {
            let old = index::get_key(tx, &id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            super::authorize_in(tx, &caller, &old, action)?;
            let instance = index::get_instance(tx, &instance_id)?
                .ok_or(Abort::User(DomainError::InstanceNotFound))?;
            access::check_in(
                &instance,
                &granted.with_policy(&instance, &old.account, Some(&document)),
            )?;
            let mut new = old.clone();
            index::user(new.set_policy(&document))?;
            if new == old {
                return Ok((new, Vec::new()));
            }
            let event = index::put_key(tx, Some(&old), &new)?;
            Ok((new, vec![event]))
        })
        .await
    }

    /// `GetKeyPolicy`: the stored document, or the default policy's.
    pub async fn get_key_policy(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<String, DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::GetKeyPolicy.action(Touch::Key))
            .await?;
        Ok(record
            .policy
            .unwrap_or_else(|| default_policy_document(&record.account)))
    }
}

/// The default policy as a document, for `GetKeyPolicy`: every principal of the owning account
/// may do everything with the key.
fn default_policy_document(owner: &kms_types::AccountId) -> String {
    serde_json::json!({
        "Version": "1",
        "Statement": [{
            "Sid": "Enable RAM User Permissions",
            "Effect": "Allow",
            "Principal": { "RAM": [format!("acs:ram::{owner}:*")] },
            "Action": ["kms:*"],
            "Resource": ["*"],
        }],
    })
    .to_string()
}

/// The account's default key `id` as a second default key's refusal names it: its id and
/// aliases, when `caller` may describe it; nothing otherwise.
fn existing_default_key<S: Store>(
    store: &S,
    caller: &Principal,
    id: &KeyId,
) -> Result<Option<String>, DomainError> {
    let Some(record) = index::load_key(store, id)? else {
        return Ok(None);
    };
    if super::decide(caller, &record, None, Rpc::DescribeKey.action(Touch::Key)).is_err() {
        return Ok(None);
    }
    Ok(Some(if record.aliases.is_empty() {
        record.id.to_string()
    } else {
        format!("{} ({})", record.id, record.aliases.join(", "))
    }))
}
