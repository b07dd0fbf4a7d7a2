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

/// A key of a tag call, with how the request named it and where, for messages.
struct Target {
    id: KeyId,
    named: String,
    position: usize,
    count: usize,
}

impl Target {
    /// `e` as the failure of this key of the batch.
    fn failed(&self, e: DomainError) -> DomainError {
        e.in_batch(self.named.clone(), self.position, self.count)
    }
}

impl<S: Store> Registry<S> {
    /// Resolves 1–50 key references for a tag call, without repeats. A key that fails is
    /// named, with its place in the request.
    async fn tag_targets(
        &self,
        caller: &Principal,
        key_refs: Vec<KeyRef>,
        action: &str,
    ) -> Result<Vec<Target>, DomainError> {
        validate::tag_call_key_count(key_refs.len())?;
        let count = key_refs.len();
        let mut targets: Vec<Target> = Vec::with_capacity(count);
        for (i, key_ref) in key_refs.into_iter().enumerate() {
            let named = key_ref.to_string();
            let id = self
                .resolve(caller, key_ref, action)
                .await
                .map_err(|e| e.in_batch(named.clone(), i + 1, count))?
                .id;
            if !targets.iter().any(|t| t.id == id) {
                targets.push(Target {
                    id,
                    named,
                    position: i + 1,
                    count,
                });
            }
        }
        Ok(targets)
    }

    /// Applies `change` to every key in `targets`: first checks it on every key (nothing is
    /// written if one refuses), then changes each key in its own transaction, deciding
    /// `action` for `caller` again on it.
    async fn change_tags(
        &self,
        caller: &Principal,
        targets: Vec<Target>,
        action: &'static str,
        change: impl Fn(&mut kms_types::KeyRecord) -> Result<(), DomainError> + Send + Sync + 'static,
    ) -> Result<(), DomainError> {
        let change = std::sync::Arc::new(change);
        let targets = std::sync::Arc::new(targets);
        let (check_caller, check_targets, check) =
            (caller.clone(), targets.clone(), change.clone());
        // A transaction that writes nothing: every key read at one point in time.
        self.commit(move |tx| {
            for target in check_targets.iter() {
                let failed = |e: Abort<DomainError>| match e {
                    Abort::User(e) => Abort::User(target.failed(e)),
                    other => other,
                };
                let old = index::get_key(tx, &target.id)?
                    .ok_or(Abort::User(DomainError::KeyNotFound))
                    .map_err(failed)?;
                super::authorize_in(tx, &check_caller, &old, action).map_err(failed)?;
                index::user(check(&mut old.clone())).map_err(failed)?;
            }
            Ok(((), Vec::new()))
        })
        .await?;
        for target in targets.iter() {
            let change = change.clone();
            self.mutate_id(caller, target.id, action, move |k| change(k))
                .await
                .map_err(|e| target.failed(e))?;
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
        let targets = self.tag_targets(caller, key_refs, action).await?;
        self.change_tags(caller, targets, action, move |k| k.add_tags(&tags))
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
        let targets = self.tag_targets(caller, key_refs, action).await?;
        self.change_tags(caller, targets, action, move |k| k.remove_tags(&tag_keys))
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
