//! Tags: `TagResources` and `UntagResources` change up to 50 keys. Every key is checked
//! first (it exists, the caller may change it, the change fits), so a refused key leaves
//! every key as it was; then each key changes in a transaction of its own (which decides
//! again), so no transaction outgrows etcd's limits (50 keys × 20 tags would be 1,000
//! writes). Only a key changed by someone else between the check and its own transaction
//! can end a batch part-way; the call then fails and may be repeated: tagging is idempotent.

use kms_store::{Abort, Store};
use kms_types::{DomainError, KeyId, KeyRef, Principal, Tag, validate};

use super::Registry;
use crate::index;
use kms_types::authz::{Rpc, Touch};

impl<S: Store> Registry<S> {
    /// Resolves 1–50 key references for a tag call, without repeats.
    async fn tag_targets(
        &self,
        caller: &Principal,
        key_refs: Vec<KeyRef>,
        action: &str,
    ) -> Result<Vec<KeyId>, DomainError> {
        validate::tag_call_key_count(key_refs.len())?;
        let mut ids: Vec<KeyId> = Vec::with_capacity(key_refs.len());
        for key_ref in key_refs {
            let id = self.resolve(caller, key_ref, action).await?.id;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Applies `change` to every key in `ids`: first checks it on every key (nothing is
    /// written if one refuses), then changes each key in its own transaction, deciding
    /// `action` for `caller` again on it.
    async fn change_tags(
        &self,
        caller: &Principal,
        ids: Vec<KeyId>,
        action: &'static str,
        change: impl Fn(&mut kms_types::KeyRecord) -> Result<(), DomainError> + Send + Sync + 'static,
    ) -> Result<(), DomainError> {
        let change = std::sync::Arc::new(change);
        let (check_caller, check_ids, check) = (caller.clone(), ids.clone(), change.clone());
        // A transaction that writes nothing: every key read at one point in time.
        self.commit(move |tx| {
            for id in &check_ids {
                let old = index::get_key(tx, id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
                super::authorize_in(tx, &check_caller, &old, action)?;
                index::user(check(&mut old.clone()))?;
            }
            Ok(((), Vec::new()))
        })
        .await?;
        for id in ids {
            let change = change.clone();
            self.mutate_id(caller, id, action, move |k| change(k))
                .await?;
        }
        Ok(())
    }

    /// `TagResources`: adds the tags to every key, replacing values of tag keys a key has.
    pub async fn tag_resources(
        &self,
        caller: &Principal,
        key_refs: Vec<KeyRef>,
        tags: Vec<Tag>,
    ) -> Result<(), DomainError> {
        validate::tag_call_key_count(key_refs.len())?;
        validate::tags_to_add(&tags)?;
        let action = Rpc::TagResources.action(Touch::EveryKey);
        let ids = self.tag_targets(caller, key_refs, action).await?;
        self.change_tags(caller, ids, action, move |k| k.add_tags(&tags))
            .await
    }

    /// `UntagResources`: removes the tags with these keys from every key.
    pub async fn untag_resources(
        &self,
        caller: &Principal,
        key_refs: Vec<KeyRef>,
        tag_keys: Vec<String>,
    ) -> Result<(), DomainError> {
        validate::tag_call_key_count(key_refs.len())?;
        validate::tag_keys_to_remove(&tag_keys)?;
        let action = Rpc::UntagResources.action(Touch::EveryKey);
        let ids = self.tag_targets(caller, key_refs, action).await?;
        self.change_tags(caller, ids, action, move |k| k.remove_tags(&tag_keys))
            .await
    }

    /// `ListResourceTags`.
    pub async fn list_resource_tags(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<Vec<Tag>, DomainError> {
        Ok(self
            .resolve(caller, key_ref, Rpc::ListResourceTags.action(Touch::Key))
            .await?
            .tags)
    }
}
