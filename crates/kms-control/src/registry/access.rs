//! The access-management quota: how many other accounts may use an instance's keys.
//!
//! Accounts count once, however many keys or statements name them: every account an instance
//! is shared with, and every account other than the key's and the instance owner's that an
//! Allow statement of a key policy in the instance names. Administrators and users of the
//! owning accounts do not count. Removing a grant frees its account at once.

use std::collections::BTreeSet;

use kms_store::Store;
use kms_types::policy::PolicyDocument;
use kms_types::{AccountId, DomainError, InstanceRecord, KeyId};

use crate::{index, schema};

/// Checks that the instance stays within its quota when `key` (owned by `key_account`) has
/// `policy`; other keys count with the policies they have now.
pub(crate) fn check_quota<S: Store>(
    store: &S,
    instance: &InstanceRecord,
    key: Option<&KeyId>,
    key_account: &AccountId,
    policy: Option<&str>,
) -> Result<(), DomainError> {
    let mut accounts: BTreeSet<String> =
        instance.shared_with.iter().map(|a| a.to_string()).collect();
    if let Some(doc) = policy {
        grants(instance, doc, key_account, &mut accounts);
    }
    accounts.extend(policy_grants(store, instance, key)?);
    let quota = instance.access_management_quota as usize;
    if accounts.len() > quota {
        return Err(DomainError::LimitExceeded(format!(
            "the instance's access management quota allows {quota} other accounts; this would make {}",
            accounts.len()
        )));
    }
    Ok(())
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
