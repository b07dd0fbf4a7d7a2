//! The access-management quota: how many other accounts may use an instance's keys.
//!
//! Accounts count once, however many keys or statements name them: every account an instance
//! is shared with, and every account other than the key's and the instance owner's that an
//! Allow statement of a key policy in the instance names. Administrators and users of the
//! owning accounts do not count. Removing a grant frees its account at once.
//!
//! What the policies grant takes a scan of the instance's keys, which a transaction cannot do
//! (and etcd could not hold). So a write that adds a grant, a share or lowers the quota reads
//! the grants as [`Grants`] just before its transaction, with the revision of the instance's
//! grants ([`crate::index::grants_revision`], which every change of a key policy in the
//! instance moves on), and decides inside the transaction only if that revision is still the
//! one it read; otherwise it reads them again and tries again ([`Registry::commit_with_grants`]).
//! Two concurrent grants therefore cannot both pass the quota.

use std::collections::BTreeSet;
use std::sync::Arc;

use kms_store::{Abort, Store, Txn};
use kms_types::policy::PolicyDocument;
use kms_types::{AccountId, DomainError, InstanceId, InstanceRecord, KeyEvent, KeyId};

use super::Registry;
use crate::index::{self, TxResult};
use crate::schema;

/// How many times a write guarded by an instance's grants reads them again after a key policy
/// of the instance changed under it. Each retry follows another write that committed, so this
/// bounds waiting, not progress.
const GRANTS_ATTEMPTS: usize = 64;

/// The other accounts an instance's key policies grant, as read at one revision of them.
#[derive(Debug, Clone)]
pub(crate) struct Grants {
    revision: u64,
    /// The accounts, leaving out those of the key the read was told to leave out.
    pub(crate) accounts: BTreeSet<String>,
}

impl Grants {
    /// Reads the grants of `instance`, leaving out `except`'s policy (the key a write is about
    /// to change): the revision first, so a change made during the scan is seen as one.
    fn read<S: Store>(
        store: &S,
        instance: &InstanceId,
        except: Option<&KeyId>,
    ) -> Result<Self, DomainError> {
        let revision = store
            .get(&schema::instance_grants(instance))
            .map_err(index::store_error)?
            .map(|b| schema::decode_u64(&b))
            .transpose()?
            .unwrap_or(0);
        let record = index::load_instance(store, instance)?.ok_or(DomainError::InstanceNotFound)?;
        Ok(Self {
            revision,
            accounts: policy_grants(store, &record, except)?,
        })
    }

    /// These grants with those `policy` (of a key owned by `key_account` in `instance`) adds.
    pub(crate) fn with_policy(
        &self,
        instance: &InstanceRecord,
        key_account: &AccountId,
        policy: Option<&str>,
    ) -> BTreeSet<String> {
        let mut accounts = self.accounts.clone();
        if let Some(doc) = policy {
            grants(instance, doc, key_account, &mut accounts);
        }
        accounts
    }
}

impl<S: Store> Registry<S> {
    /// Runs `body` in one transaction with the grants of `instance` (leaving out `except`'s
    /// policy) read just before it; if a key policy of the instance changed in between, reads
    /// them again and runs it again. For every write that the access-management quota decides.
    pub(crate) async fn commit_with_grants<T: Send + 'static>(
        &self,
        instance: &InstanceId,
        except: Option<&KeyId>,
        body: impl Fn(&mut dyn Txn, &Grants) -> TxResult<(T, Vec<KeyEvent>)> + Send + Sync + 'static,
    ) -> Result<T, DomainError> {
        let body = Arc::new(body);
        for _ in 0..GRANTS_ATTEMPTS {
            let (id, key) = (instance.clone(), except.cloned());
            let grants = self
                .read(move |store| Grants::read(store, &id, key.as_ref()))
                .await?;
            let (id, body) = (instance.clone(), Arc::clone(&body));
            let done = self
                .commit(move |tx| {
                    if index::grants_revision(tx, &id)? != grants.revision {
                        return Ok((None, Vec::new()));
                    }
                    let (out, events) = body(tx, &grants)?;
                    Ok((Some(out), events))
                })
                .await?;
            if let Some(out) = done {
                return Ok(out);
            }
        }
        Err(DomainError::Unavailable(format!(
            "the key policies of kms instance {instance} kept changing during the call; try again"
        )))
    }
}

/// The quota check before a transaction, to refuse early, before costly work (new key
/// material); the write decides again inside its transaction.
pub(crate) fn check_early<S: Store>(
    store: &S,
    instance: &InstanceRecord,
    key_account: &AccountId,
    policy: Option<&str>,
) -> Result<(), DomainError> {
    let mut granted = policy_grants(store, instance, None)?;
    if let Some(doc) = policy {
        grants(instance, doc, key_account, &mut granted);
    }
    instance.check_access_quota(&granted)
}

/// Inside a transaction: refuses unless `instance` (as the transaction reads it) keeps within
/// its quota when its key policies grant `granted`.
pub(crate) fn check_in(instance: &InstanceRecord, granted: &BTreeSet<String>) -> TxResult<()> {
    instance.check_access_quota(granted).map_err(Abort::User)
}

/// The other accounts the policy `doc` of a key owned by `owner` grants.
fn grants(instance: &InstanceRecord, doc: &str, owner: &AccountId, into: &mut BTreeSet<String>) {
    if let Ok(parsed) = PolicyDocument::parse(doc) {
        into.extend(parsed.foreign_accounts(&[owner, &instance.owner]));
    }
}

/// The other accounts the key policies in the instance grant now, leaving out `except`'s.
pub(crate) fn policy_grants<S: Store>(
    store: &S,
    instance: &InstanceRecord,
    except: Option<&KeyId>,
) -> Result<BTreeSet<String>, DomainError> {
    let mut accounts = BTreeSet::new();
    let prefix = schema::instance_keys_prefix(&instance.id);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store
            .scan_prefix(&prefix, after.as_deref(), 256)
            .map_err(crate::index::store_error)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (slot, _) in &page {
            let Some(id) = std::str::from_utf8(&slot[prefix.len()..])
                .ok()
                .and_then(|s| KeyId::parse(s).ok())
            else {
                continue;
            };
            if Some(&id) == except {
                continue;
            }
            if let Some(record) = index::load_key(store, &id)?
                && let Some(doc) = &record.policy
            {
                grants(instance, doc, &record.account, &mut accounts);
            }
        }
    }
    Ok(accounts)
}
