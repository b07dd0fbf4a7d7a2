//! Aliases: names unique within an account that point at one key each. An alias lives in its
//! key's record and in the `a/<account>/<alias>` index; both change in one transaction.

use kms_store::{Abort, Store, abort};
use kms_types::{DomainError, KeyId, KeyRecord, KeyRef, Page, PageRequest, Principal, validate};

use super::Registry;
use crate::index;
use crate::schema;

/// Index entries read per store scan while listing.
const SCAN_BATCH: usize = 256;
use kms_types::authz::{Rpc, Touch};

impl<S: Store> Registry<S> {
    /// `CreateAlias`: a new alias in the caller's account for one of the account's keys, not
    /// pending deletion.
    pub async fn create_alias(
        &self,
        caller: &Principal,
        alias: String,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        validate::alias_name(&alias)?;
        let action = Rpc::CreateAlias.action(Touch::AliasNewKey);
        let target = self.resolve(caller, key_ref, action).await?;
        own_account_key(caller, &target, action)?;
        let slot = schema::alias(caller.account(), &alias);
        let caller = caller.clone();
        self.commit(move |tx| {
            if tx.get(&slot)?.is_some() {
                return abort(DomainError::AliasExists);
            }
            let old =
                index::get_key(tx, &target.id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            authorize_alias_key(tx, &caller, &old, action)?;
            let mut new = old.clone();
            index::user(new.add_alias(&alias))?;
            let event = index::put_key(tx, Some(&old), &new)?;
            Ok((new, vec![event]))
        })
        .await
    }

    /// `UpdateAlias`: points an existing alias of the caller's account at another of the
    /// account's keys, not pending deletion (as for `CreateAlias`). The caller must be allowed
    /// `kms:UpdateAlias` on both the key the alias names now and the new one: whoever may not
    /// use a key may not redirect what its callers encrypt. Returns the new target and the
    /// key the alias named before (none if that key is gone).
    pub async fn update_alias(
        &self,
        caller: &Principal,
        alias: String,
        key_ref: KeyRef,
    ) -> Result<(KeyRecord, Option<KeyId>), DomainError> {
        validate::alias_name(&alias)?;
        let old_action = Rpc::UpdateAlias.action(Touch::AliasOldKey);
        let new_action = Rpc::UpdateAlias.action(Touch::AliasNewKey);
        let target = self.resolve(caller, key_ref, new_action).await?;
        own_account_key(caller, &target, new_action)?;
        let slot = schema::alias(caller.account(), &alias);
        let caller = caller.clone();
        self.commit(move |tx| {
            let current =
                index::get_key_id(tx, &slot)?.ok_or(Abort::User(DomainError::AliasNotFound))?;
            let mut events = Vec::new();
            let current_record = index::get_key(tx, &current)?;
            if let Some(old) = &current_record {
                authorize_alias_key(tx, &caller, old, old_action).map_err(|e| match e {
                    Abort::User(e) => Abort::User(e.on(format!("the key {alias} names now"))),
                    other => other,
                })?;
            }
            let old =
                index::get_key(tx, &target.id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            authorize_alias_key(tx, &caller, &old, new_action)?;
            let previous = current_record.as_ref().map(|r| r.id);
            if current != target.id {
                match current_record {
                    Some(previous) => {
                        let mut new = previous.clone();
                        new.remove_alias(&alias);
                        events.push(index::put_key(tx, Some(&previous), &new)?);
                    }
                    // An alias left behind by a key that is gone: free the slot.
                    None => tx.delete(&slot)?,
                }
            }
            let mut new = old.clone();
            index::user(new.add_alias(&alias))?;
            if new != old {
                events.push(index::put_key(tx, Some(&old), &new)?);
            }
            Ok(((new, previous), events))
        })
        .await
    }

    /// `DeleteAlias`: removes an alias of the caller's account, if the caller is allowed
    /// `kms:DeleteAlias` on the key it names; the key is unaffected otherwise. An alias left
    /// naming a key that is gone can be deleted by any principal of the account. Returns the
    /// key the alias named, if it still exists.
    pub async fn delete_alias(
        &self,
        caller: &Principal,
        alias: String,
    ) -> Result<Option<KeyId>, DomainError> {
        validate::alias_name(&alias)?;
        let action = Rpc::DeleteAlias.action(Touch::AliasOldKey);
        let slot = schema::alias(caller.account(), &alias);
        let caller = caller.clone();
        self.commit(move |tx| {
            let id =
                index::get_key_id(tx, &slot)?.ok_or(Abort::User(DomainError::AliasNotFound))?;
            match index::get_key(tx, &id)? {
                Some(old) => {
                    authorize_alias_key(tx, &caller, &old, action)?;
                    let mut new = old.clone();
                    new.remove_alias(&alias);
                    let event = index::put_key(tx, Some(&old), &new)?;
                    Ok((Some(old.id), vec![event]))
                }
                None => {
                    tx.delete(&slot)?;
                    Ok((None, Vec::new()))
                }
            }
        })
        .await
    }

    /// `ListAliases`: the caller's account's aliases, by name; only aliases of keys the caller
    /// may `DescribeKey`, as for `ListKeys`. An alias left naming a key that is gone is listed,
    /// so it can be seen and deleted.
    pub async fn list_aliases(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> Result<Page<(String, KeyId)>, DomainError> {
        let prefix = schema::alias_prefix(caller.account());
        let after = page.after_as(|a| validate::alias_name(a).map(|()| a.to_string()))?;
        let caller = caller.clone();
        self.read(move |store| {
            let mut describable = super::Describable::new(&caller);
            let mut items = Vec::new();
            let mut cursor = after.map(|a| [prefix.as_slice(), a.as_bytes()].concat());
            'scan: loop {
                let batch = store
                    .scan_prefix(&prefix, cursor.as_deref(), SCAN_BATCH)
                    .map_err(crate::index::store_error)?;
                for (slot, value) in &batch {
                    let id = schema::decode_key_id(value)?;
                    let shown = match index::load_key(store, &id)? {
                        Some(record) => describable.allows(store, &record)?,
                        None => true,
                    };
                    if shown {
                        items.push((schema::suffix(slot, &prefix)?.to_string(), id));
                    }
                    if items.len() > page.size {
                        break 'scan;
                    }
                }
                match batch.last() {
                    Some((last, _)) if batch.len() == SCAN_BATCH => cursor = Some(last.clone()),
                    _ => break,
                }
            }
            Ok(Page::from_lookahead(items, page.size, |(a, _)| a.clone()))
        })
        .await
    }

    /// `ListAliasesByKeyId`: one key's aliases, by name.
    pub async fn list_aliases_by_key_id(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        page: PageRequest,
    ) -> Result<(KeyRecord, Page<String>), DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::ListAliasesByKeyId.action(Touch::Key))
            .await?;
        let after = page.after_as(|a| validate::alias_name(a).map(|()| a.to_string()))?;
        let mut names = record.aliases.clone();
        names.sort();
        let items: Vec<String> = names
            .into_iter()
            .filter(|a| after.as_ref().is_none_or(|after| a > after))
            .take(page.size + 1)
            .collect();
        Ok((record, Page::from_lookahead(items, page.size, Clone::clone)))
    }
}

/// Aliases are names in one account for that account's keys: a principal of another account
/// (a cross-account grantee, the owner of a shared instance) may not alias a key it does not
/// own, even where the key's policy lets it see or use the key.
fn own_account_key(caller: &Principal, key: &KeyRecord, action: &str) -> Result<(), DomainError> {
    if key.account == *caller.account() {
        Ok(())
    } else {
        Err(DomainError::NotAllowed {
            principal: caller.arn().to_string(),
            action: action.into(),
            target: "a key of another account (aliases name keys of their own account only)".into(),
        })
    }
}

/// The decision for an alias change on `key`, inside the transaction: the key's policy, then
/// the key's account.
fn authorize_alias_key(
    tx: &mut dyn kms_store::Txn,
    caller: &Principal,
    key: &KeyRecord,
    action: &str,
) -> index::TxResult<()> {
    super::authorize_in(tx, caller, key, action)?;
    index::user(own_account_key(caller, key, action))
}
