//! AccessKey pairs of the HTTP gateway: operators create, list, disable and delete them; the
//! data plane reads one, its secret still sealed, to resolve it for the gateway. The secret is
//! made and sealed by the data plane; the control plane passes it on once, in the answer to
//! its creation, and stores only the sealed form.

use kms_store::{Abort, Store};
use kms_types::access_key::ACCESS_KEY_ID_SUFFIX_LEN;
use kms_types::{AccessKeyId, AccessKeyRecord, AccessKeyStatus, DomainError, Principal};

use super::{Registry, store_error};
use crate::index::user;
use crate::material::NewAccessKeySecret;
use crate::schema;

impl<S: Store> Registry<S> {
    /// Makes a pair acting as `principal`, for operator `caller`: the record and the secret,
    /// which is not kept anywhere in plaintext.
    pub async fn create_access_key(
        &self,
        caller: &Principal,
        principal: Principal,
    ) -> Result<(AccessKeyRecord, NewAccessKeySecret), DomainError> {
        self.check_operator(caller)?;
        let id = new_access_key_id();
        let secret = self.material.new_access_key_secret(&id).await?;
        let record = AccessKeyRecord {
            id,
            principal,
            status: AccessKeyStatus::Enabled,
            created: self.now(),
            creator: caller.clone(),
            sealed_secret: secret.sealed.clone(),
        };
        let written = record.clone();
        self.commit(move |tx| {
            let key = schema::access_key(&written.id);
            if tx.get(&key)?.is_some() {
                return Err(Abort::User(DomainError::Internal(
                    "a new access key id is taken".into(),
                )));
            }
            tx.put(&key, &user(schema::encode_access_key(&written))?)?;
            Ok(((), Vec::new()))
        })
        .await?;
        tracing::info!(
            operator = %caller.arn(),
            access_key_id = %record.id,
            principal = %record.principal.arn(),
            "access key created"
        );
        Ok((record, secret))
    }

    /// Every pair, or those acting as `principal`, for operator `caller`.
    pub async fn list_access_keys(
        &self,
        caller: &Principal,
        principal: Option<Principal>,
    ) -> Result<Vec<AccessKeyRecord>, DomainError> {
        self.check_operator(caller)?;
        self.read(move |store| {
            let entries = crate::index::scan_all(store, schema::ACCESS_KEY_PREFIX)?;
            let mut out = Vec::new();
            for (_, value) in entries {
                let record = schema::decode_access_key(&value)?;
                if principal.as_ref().is_none_or(|p| *p == record.principal) {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Disables pair `id`, for operator `caller`.
    pub async fn disable_access_key(
        &self,
        caller: &Principal,
        id: AccessKeyId,
    ) -> Result<AccessKeyRecord, DomainError> {
        self.check_operator(caller)?;
        let record = self
            .commit(move |tx| {
                let key = schema::access_key(&id);
                let bytes = tx
                    .get(&key)?
                    .ok_or(Abort::User(DomainError::AccessKeyNotFound))?;
                let mut record = user(schema::decode_access_key(&bytes))?;
                if record.status != AccessKeyStatus::Disabled {
                    record.status = AccessKeyStatus::Disabled;
                    tx.put(&key, &user(schema::encode_access_key(&record))?)?;
                }
                Ok((record, Vec::new()))
            })
            .await?;
        tracing::info!(operator = %caller.arn(), access_key_id = %record.id, "access key disabled");
        Ok(record)
    }

    /// Deletes pair `id`, for operator `caller`.
    pub async fn delete_access_key(
        &self,
        caller: &Principal,
        id: AccessKeyId,
    ) -> Result<(), DomainError> {
        self.check_operator(caller)?;
        let deleted = id.clone();
        self.commit(move |tx| {
            let key = schema::access_key(&deleted);
            if tx.get(&key)?.is_none() {
                return Err(Abort::User(DomainError::AccessKeyNotFound));
            }
            tx.delete(&key)?;
            Ok(((), Vec::new()))
        })
        .await?;
        tracing::info!(operator = %caller.arn(), access_key_id = %id, "access key deleted");
        Ok(())
    }

    /// Pair `id` with its sealed secret, for the data plane (`KeyDirectory.GetAccessKey`).
    pub async fn directory_access_key(
        &self,
        id: AccessKeyId,
    ) -> Result<AccessKeyRecord, DomainError> {
        self.read(move |store| {
            store
                .get(&schema::access_key(&id))
                .map_err(store_error)?
                .map(|b| schema::decode_access_key(&b))
                .transpose()?
                .ok_or(DomainError::AccessKeyNotFound)
        })
        .await
    }
}

/// A fresh id: `LTAI` and 20 letters and digits from two random UUIDs. Ids are not secret;
/// they need only not collide.
fn new_access_key_id() -> AccessKeyId {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut random = [0u8; ACCESS_KEY_ID_SUFFIX_LEN];
    for (slot, byte) in random
        .iter_mut()
        .zip(a.as_bytes().iter().chain(b.as_bytes().iter()))
    {
        *slot = *byte;
    }
    AccessKeyId::from_random(&random)
}
