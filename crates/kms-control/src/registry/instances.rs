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
        let account = caller.account().clone();
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

    /// `ShareKmsInstance`: operators only.
    pub async fn share_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        account: AccountId,
    ) -> Result<InstanceRecord, DomainError> {
        self.change_instance(caller, id, move |i| i.share_with(account.clone()))
            .await
    }

    /// `UpdateKmsInstance`: operators only. The quotas it sets are never below what is in
    /// use: the keys the instance holds (checked in the transaction) and the other accounts
    /// using it, those it is shared with (in the transaction) and those its key policies grant
    /// (read just before).
    pub async fn update_instance(
        &self,
        caller: &Principal,
        id: InstanceId,
        change: QuotaChange,
    ) -> Result<InstanceRecord, DomainError> {
        self.check_operator(caller)?;
        let granted = match change.access_management_quota {
            None => Default::default(),
            Some(_) => {
                let id = id.clone();
                self.read(move |store| {
                    let instance =
                        index::load_instance(store, &id)?.ok_or(DomainError::InstanceNotFound)?;
                    super::access::policy_grants(store, &instance, None)
                })
                .await?
            }
        };
        let record = self
            .change_instance(caller, id, move |i| {
                let mut in_use = granted.clone();
                in_use.extend(i.shared_with.iter().map(ToString::to_string));
                i.update_quotas(change, in_use.len())
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
