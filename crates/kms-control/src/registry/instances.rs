//! KMS instances: operators create, share them and change their quotas; owners and accounts
//! they are shared with see them and create keys in them; everyone else is told they do not
//! exist.

use kms_store::{Abort, Store};
use kms_types::{
    AccountId, DomainError, InstanceId, InstanceRecord, NewInstance, Page, PageRequest, Principal,
    QuotaChange,
};

use super::Registry;
use crate::index;
use crate::schema;

impl<S: Store> Registry<S> {
    /// `CreateKmsInstance`: operators only.
    pub async fn create_instance(
        &self,
        caller: &Principal,
        req: NewInstance,
    ) -> Result<InstanceRecord, DomainError> {
        self.check_operator(caller)?;
        let record = req.into_record(InstanceId::generate(), self.clock.now())?;
        let stored = record.clone();
        self.commit(move |tx| {
            index::put_instance(tx, None, &stored)?;
            Ok(((), Vec::new()))
        })
        .await?;
        tracing::info!(kms_instance_id = %record.id, owner = %record.owner, instance_type = %record.instance_type, "kms instance created");
        Ok(record)
    }

    /// `GetKmsInstance`: operators see every instance, accounts the ones they own or that are
    /// shared with them.
    pub async fn get_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
    ) -> Result<InstanceRecord, DomainError> {
        let operator = self.is_operator(caller);
        let account = *caller.account();
        self.read(move |store| index::load_instance(store, &id))
            .await?
            .filter(|i| operator || i.is_visible_to(&account))
            .ok_or(DomainError::InstanceNotFound)
    }

    /// `ListKmsInstances`: what [`Registry::get_instance`] would show, by instance id.
    pub async fn list_instances(
        &self,
        caller: &Principal,
        page: PageRequest,
    ) -> Result<Page<InstanceRecord>, DomainError> {
        let after = page.after_as(InstanceId::parse)?;
        let prefix = if self.is_operator(caller) {
            schema::INSTANCE_PREFIX.to_vec()
        } else {
            schema::access_prefix(caller.account())
        };
        self.read(move |store| {
            let cursor = after.map(|a| [prefix.as_slice(), a.as_str().as_bytes()].concat());
            let entries = store
                .scan_prefix(&prefix, cursor.as_deref(), page.size + 1)
                .map_err(crate::index::store_error)?;
            let mut items = Vec::with_capacity(entries.len());
            for (slot, _) in &entries {
                let id = InstanceId::parse(schema::suffix(slot, &prefix)?)
                    .map_err(|_| DomainError::Internal("malformed instance entry".into()))?;
                if let Some(record) = index::load_instance(store, &id)? {
                    items.push(record);
                }
            }
            Ok(Page::from_lookahead(items, page.size, |i| i.id.to_string()))
        })
        .await
    }

    /// Applies `change` to an instance in one transaction: operators only.
    async fn change_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        change: impl Fn(&mut InstanceRecord) -> Result<(), DomainError> + Send + 'static,
    ) -> Result<InstanceRecord, DomainError> {
        self.check_operator(caller)?;
        self.commit(move |tx| {
            let old =
                index::get_instance(tx, &id)?.ok_or(Abort::User(DomainError::InstanceNotFound))?;
            let mut new = old.clone();
            index::user(change(&mut new))?;
            if new != old {
                index::put_instance(tx, Some(&old), &new)?;
            }
            Ok((new, Vec::new()))
        })
        .await
    }

    /// `ShareKmsInstance`: operators only. The account takes a place in the instance's
    /// access-management quota unless a key policy in it grants the account already; decided
    /// in the transaction that shares.
    pub async fn share_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        account: AccountId,
    ) -> Result<InstanceRecord, DomainError> {
        self.check_operator(caller)?;
        let key = id.clone();
        self.commit_with_grants(&id, None, move |tx, granted| {
            let old =
                index::get_instance(tx, &key)?.ok_or(Abort::User(DomainError::InstanceNotFound))?;
            let mut new = old.clone();
            index::user(new.share_with(account, &granted.accounts))?;
            if new != old {
                index::put_instance(tx, Some(&old), &new)?;
            }
            Ok((new, Vec::new()))
        })
        .await
    }

    /// `UpdateKmsInstance`: operators only. The quotas it sets are never below what is in
    /// use: the keys the instance holds and the other accounts using it, those it is shared
    /// with and those its key policies grant, all decided in the transaction that writes.
    pub async fn update_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        change: QuotaChange,
    ) -> Result<InstanceRecord, DomainError> {
        self.check_operator(caller)?;
        let key = id.clone();
        let record = self
            .commit_with_grants(&id, None, move |tx, granted| {
                let old = index::get_instance(tx, &key)?
                    .ok_or(Abort::User(DomainError::InstanceNotFound))?;
                let mut new = old.clone();
                let in_use = new.accounts_in_use(&granted.accounts);
                index::user(new.update_quotas(change, in_use))?;
                if new != old {
                    index::put_instance(tx, Some(&old), &new)?;
                }
                Ok((new, Vec::new()))
            })
            .await?;
        tracing::info!(kms_instance_id = %record.id, key_quota = record.key_quota, access_management_quota = record.access_management_quota, "kms instance quotas updated");
        Ok(record)
    }

    /// `UnshareKmsInstance`: operators only.
    pub async fn unshare_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        account: AccountId,
    ) -> Result<InstanceRecord, DomainError> {
        self.change_instance(caller, id, move |i| {
            i.unshare_with(&account);
            Ok(())
        })
        .await
    }
}
