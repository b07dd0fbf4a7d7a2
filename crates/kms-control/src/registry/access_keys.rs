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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use kms_store::MemoryStore;
    use kms_types::{AccessKeyStatus, DomainError, Principal};

    use super::*;
    use crate::clock::SystemClock;
    use crate::material::{MaterialSource, NewMaterial};

    /// Secrets as the data plane would hand them over: the plaintext, and a stand-in for its
    /// sealed form that does not contain it.
    #[derive(Debug)]
    struct Secrets;

    #[tonic::async_trait]
    impl MaterialSource for Secrets {
        async fn generate(
            &self,
            _key_id: &kms_types::KeyId,
            _version: &kms_types::KeyVersionId,
            _spec: kms_types::KeySpec,
            _protection: kms_types::ProtectionLevel,
        ) -> Result<NewMaterial, DomainError> {
            Err(DomainError::Internal("no key material here".into()))
        }

        async fn new_access_key_secret(
            &self,
            id: &AccessKeyId,
        ) -> Result<NewAccessKeySecret, DomainError> {
            Ok(NewAccessKeySecret {
                secret: zeroize::Zeroizing::new("s".repeat(30)),
                sealed: format!("sealed:{id}").into_bytes(),
            })
        }
    }

    fn p(arn: &str) -> Principal {
        Principal::parse(arn).unwrap()
    }

    #[tokio::test]
    async fn operators_manage_pairs_and_only_sealed_secrets_are_stored() {
        let store = Arc::new(MemoryStore::new());
        let operator = p("acs:ram::1000000000000000:user/operator");
        let alice = p("acs:ram::1234567890123456:root");
        let registry = Registry::new(
            Arc::clone(&store),
            "local".into(),
            Arc::new(SystemClock),
            Secrets,
        )
        .with_operators(vec![operator.clone()]);

        assert_eq!(
            registry
                .create_access_key(&alice, alice.clone())
                .await
                .unwrap_err(),
            DomainError::NoPermission
        );
        let (record, secret) = registry
            .create_access_key(&operator, alice.clone())
            .await
            .unwrap();
        assert_eq!(secret.secret.as_str(), "s".repeat(30));
        assert_eq!(record.status, AccessKeyStatus::Enabled);
        assert_eq!(record.creator, operator);
        let (other, _) = registry
            .create_access_key(&operator, operator.clone())
            .await
            .unwrap();
        assert_ne!(record.id, other.id);

        // Stored sealed only.
        for (_, value) in crate::index::scan_all(&*store, schema::ACCESS_KEY_PREFIX).unwrap() {
            assert!(!value.windows(30).any(|w| w == "s".repeat(30).as_bytes()));
        }
        let mine = registry
            .list_access_keys(&operator, Some(alice.clone()))
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(
            registry
                .list_access_keys(&operator, None)
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            registry.list_access_keys(&alice, None).await.unwrap_err(),
            DomainError::NoPermission
        );

        let disabled = registry
            .disable_access_key(&operator, record.id.clone())
            .await
            .unwrap();
        assert_eq!(disabled.status, AccessKeyStatus::Disabled);
        let seen = registry
            .directory_access_key(record.id.clone())
            .await
            .unwrap();
        assert_eq!(seen.status, AccessKeyStatus::Disabled);
        assert_eq!(
            seen.sealed_secret,
            format!("sealed:{}", record.id).into_bytes()
        );

        registry
            .delete_access_key(&operator, record.id.clone())
            .await
            .unwrap();
        for gone in [
            registry
                .directory_access_key(record.id.clone())
                .await
                .unwrap_err(),
            registry
                .delete_access_key(&operator, record.id.clone())
                .await
                .unwrap_err(),
            registry
                .disable_access_key(&operator, record.id.clone())
                .await
                .unwrap_err(),
        ] {
            assert_eq!(gone, DomainError::AccessKeyNotFound);
        }
    }
}
