//! Aliases: names unique within an account that point at one key each. An alias lives in its
//! key's record and in the `a/<account>/<alias>` index; both change in one transaction.

use kms_store::{Abort, Store, abort};
use kms_types::{DomainError, KeyId, KeyRecord, KeyRef, Page, PageRequest, Principal, validate};

use super::Registry;
use crate::index;
use crate::schema;

impl<S: Store> Registry<S> {
    /// `CreateAlias`: a new alias in the caller's account for a key not pending deletion.
    pub async fn create_alias(
        &self,
        caller: &Principal,
        alias: String,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        validate::alias_name(&alias)?;
        let target = self.resolve(caller, key_ref, "kms:CreateAlias").await?;
        let slot = schema::alias(&target.account, &alias);
        self.commit(move |tx| {
            if tx.get(&slot)?.is_some() {
                return abort(DomainError::AliasExists);
            }
            let old =
                index::get_key(tx, &target.id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            let mut new = old.clone();
            index::user(new.add_alias(&alias))?;
            let event = index::put_key(tx, Some(&old), &new)?;
            Ok((new, vec![event]))
        })
        .await
    }

    /// `UpdateAlias`: points an existing alias of the caller's account at another key, which
    /// must not be pending deletion (as for `CreateAlias`).
    pub async fn update_alias(
        &self,
        caller: &Principal,
        alias: String,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        validate::alias_name(&alias)?;
        let target = self.resolve(caller, key_ref, "kms:UpdateAlias").await?;
        let slot = schema::alias(&target.account, &alias);
        self.commit(move |tx| {
            let current =
                index::get_key_id(tx, &slot)?.ok_or(Abort::User(DomainError::AliasNotFound))?;
            let mut events = Vec::new();
            if current != target.id {
                match index::get_key(tx, &current)? {
                    Some(old) => {
                        let mut new = old.clone();
                        new.remove_alias(&alias);
                        events.push(index::put_key(tx, Some(&old), &new)?);
                    }
                    // An alias left behind by a key that is gone: free the slot.
                    None => tx.delete(&slot)?,
                }
            }
            let old =
                index::get_key(tx, &target.id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            let mut new = old.clone();
            index::user(new.add_alias(&alias))?;
            if new != old {
                events.push(index::put_key(tx, Some(&old), &new)?);
            }
            Ok((new, events))
        })
        .await
    }

    /// `DeleteAlias`: the key is unaffected otherwise.
    pub async fn delete_alias(&self, caller: &Principal, alias: String) -> Result<(), DomainError> {
        validate::alias_name(&alias)?;
        let slot = schema::alias(caller.account(), &alias);
        self.commit(move |tx| {
            let id =
                index::get_key_id(tx, &slot)?.ok_or(Abort::User(DomainError::AliasNotFound))?;
            match index::get_key(tx, &id)? {
                Some(old) => {
                    let mut new = old.clone();
                    new.remove_alias(&alias);
                    let event = index::put_key(tx, Some(&old), &new)?;
                    Ok(((), vec![event]))
                }
                None => {
                    tx.delete(&slot)?;
                    Ok(((), Vec::new()))
                }
            }
        })
        .await
    }

    /// `ListAliases`: the caller's account's aliases, by name.
    pub async fn list_aliases(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> Result<Page<(String, KeyId)>, DomainError> {
        let prefix = schema::alias_prefix(caller.account());
        let after = page.after_as(|a| validate::alias_name(a).map(|()| a.to_string()))?;
        self.read(move |store| {
            let cursor = after.map(|a| [prefix.as_slice(), a.as_bytes()].concat());
            let entries = store
                .scan_prefix(&prefix, cursor.as_deref(), page.size + 1)
                .map_err(|e| DomainError::Internal(format!("store: {e}")))?;
            let items = entries
                .iter()
                .map(|(slot, value)| {
                    Ok((
                        schema::suffix(slot, &prefix)?.to_string(),
                        schema::decode_key_id(value)?,
                    ))
                })
                .collect::<Result<Vec<_>, DomainError>>()?;
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
            .resolve(caller, key_ref, "kms:ListAliasesByKeyId")
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
