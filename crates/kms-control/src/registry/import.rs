//! Bring your own key: `GetParametersForImport` (an import token and a one-time import key
//! from the data plane), `ImportKeyMaterial` (the data plane opens and re-seals the material;
//! the key, its digest and the spent token are written in one transaction), and
//! `DeleteKeyMaterial`; plus the scheduled work, expiring imported material and forgetting old
//! tokens. The rules are `kms_types::import`'s.

use kms_store::{Abort, Store};
use kms_types::import::{MAX_ENCRYPTED_MATERIAL, unknown_token};
use kms_types::{
    Algorithm, DomainError, ImportTokenId, ImportTokenRecord, KeyId, KeyRecord, KeyRef, KeySpec,
    KeyVersionRecord, Principal, UnixMillis,
};

use super::Registry;
use crate::index;
use crate::material::MaterialImport;
use crate::schema;
use kms_types::authz::{Rpc, Touch};

/// What `GetParametersForImport` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportParameters {
    /// The resolved key id.
    pub key_id: KeyId,
    /// The token to pass to `ImportKeyMaterial`.
    pub token: ImportTokenId,
    /// The import public key, SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// When the token expires.
    pub expires: UnixMillis,
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<S: Store> Registry<S> {
    /// `GetParametersForImport`: a token for the key, valid 24 hours, bound to a fresh RSA_2048
    /// import key made in the HSM, whose public key the caller wraps its material with.
    pub async fn get_parameters_for_import(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        algorithm: Algorithm,
        wrapping_key_spec: KeySpec,
    ) -> Result<ImportParameters, DomainError> {
        let record = self
            .resolve(
                caller,
                key_ref,
                Rpc::GetParametersForImport.action(Touch::Key),
            )
            .await?;
        record.check_import_parameters(algorithm, wrapping_key_spec)?;
        let id = ImportTokenId::generate();
        let key = self
            .material
            .create_import_key(&record.id, &id, algorithm, wrapping_key_spec)
            .await?;
        let token = ImportTokenRecord::issue(
            id,
            record.id,
            algorithm,
            wrapping_key_spec,
            key.sealed_private_key,
            self.clock.now(),
        );
        let stored = token.clone();
        self.commit(move |tx| {
            index::put_token(tx, &stored)?;
            Ok(((), Vec::new()))
        })
        .await?;
        tracing::info!(key_id = %record.id, wrapping_algorithm = %algorithm, "import token issued");
        Ok(ImportParameters {
            key_id: record.id,
            token: token.id,
            public_key_der: key.public_key_der,
            expires: token.expires,
        })
    }

    /// `ImportKeyMaterial`: checks the key and the token, has the data plane open the material
    /// and seal it for the key's version, then in one transaction enables the key, keeps the
    /// material's digest and spends the token. A refused import leaves the token unspent.
    pub async fn import_key_material(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        token: &str,
        encrypted_material: Vec<u8>,
        expire: Option<UnixMillis>,
    ) -> Result<KeyRecord, DomainError> {
        let record = self
            .resolve(caller, key_ref, Rpc::ImportKeyMaterial.action(Touch::Key))
            .await?;
        let token_id = ImportTokenId::parse(token)?;
        if encrypted_material.is_empty() || encrypted_material.len() > MAX_ENCRYPTED_MATERIAL {
            return Err(DomainError::invalid(
                "EncryptedKeyMaterial",
                format!("encrypted_key_material must be 1 to {MAX_ENCRYPTED_MATERIAL} bytes"),
            ));
        }
        record.check_can_import(expire, self.clock.now())?;
        let lookup = token_id.clone();
        let issued = self
            .read(move |store| index::load_token(store, &lookup))
            .await?
            .ok_or_else(unknown_token)?;
        issued.check_usable(&record.id, self.clock.now())?;

        let imported = self
            .material
            .import_material(MaterialImport {
                key_id: record.id,
                version: record.primary_version,
                spec: record.spec,
                protection: record.protection,
                wrapping_algorithm: issued.wrapping_algorithm,
                token: token_id.clone(),
                sealed_import_key: issued.sealed_import_key,
                encrypted_material,
            })
            .await?;
        let digest = hex(&imported.digest);
        let now = self.clock.now();
        let version = KeyVersionRecord {
            id: record.primary_version,
            created: now,
            wrapped_material: imported.wrapped,
            public_key_der: imported.public_key_der,
        };
        let key_id = record.id;
        let record = self
            .commit(move |tx| {
                let old =
                    index::get_key(tx, &key_id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
                let mut token =
                    index::get_token(tx, &token_id)?.ok_or_else(|| Abort::User(unknown_token()))?;
                index::user(token.check_usable(&key_id, now))?;
                let mut new = old.clone();
                index::user(new.import_material(version.clone(), &digest, expire, now))?;
                let event = index::put_key(tx, Some(&old), &new)?;
                token.spend(now);
                index::put_token(tx, &token)?;
                Ok((new, vec![event]))
            })
            .await?;
        tracing::info!(key_id = %record.id, key_version_id = %record.primary_version, expires = ?record.material_expire, "key material imported");
        Ok(record)
    }

    /// `DeleteKeyMaterial`: the key's imported material is gone at once; the key waits for an
    /// import again.
    pub async fn delete_key_material(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        let record = self
            .mutate_key(
                caller,
                key_ref,
                Rpc::DeleteKeyMaterial.action(Touch::Key),
                |k| k.delete_material(),
            )
            .await?;
        tracing::info!(key_id = %record.id, "key material deleted");
        Ok(record)
    }

    /// Removes the material of every key whose imported material expired; those keys return
    /// to `PendingImport`. Returns how many keys it changed, and how many it could not.
    pub async fn expire_material_due(&self) -> Result<(usize, usize), DomainError> {
        let now = self.clock.now();
        let (mut expired, mut failed) = (0, 0);
        for id in self.due(schema::MATERIAL_EXPIRY_QUEUE, now).await? {
            let key_id = id;
            let changed = self
                .commit_fenced(move |tx| {
                    let Some(old) = index::get_key(tx, &id)? else {
                        return Ok((false, Vec::new()));
                    };
                    let mut new = old.clone();
                    if !new.expire_material(now) {
                        return Ok((false, Vec::new()));
                    }
                    let event = index::put_key(tx, Some(&old), &new)?;
                    Ok((true, vec![event]))
                })
                .await;
            match changed {
                Ok(true) => {
                    expired += 1;
                    tracing::info!(key_id = %key_id, "imported key material expired");
                }
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(key_id = %key_id, error = %e, "cannot expire imported key material");
                }
            }
        }
        Ok((expired, failed))
    }

    /// Forgets import tokens whose retention after expiry has passed.
    pub async fn purge_import_tokens(&self) -> Result<usize, DomainError> {
        let now = self.clock.now();
        let due = self
            .read(move |store| {
                let mut ids = Vec::new();
                for (slot, _) in index::scan_all(store, schema::TOKEN_PURGE_QUEUE)? {
                    let (at, id) = schema::decode_dated(&slot)?;
                    if at > now {
                        break;
                    }
                    ids.push(ImportTokenId::parse(id).map_err(|_| {
                        DomainError::Internal("malformed token purge entry".into())
                    })?);
                }
                Ok(ids)
            })
            .await?;
        let count = due.len();
        if count > 0 {
            self.commit(move |tx| {
                for id in &due {
                    if let Some(token) = index::get_token(tx, id)? {
                        index::delete_token(tx, &token)?;
                    }
                }
                Ok(((), Vec::new()))
            })
            .await?;
        }
        Ok(count)
    }

    /// Forgets the import tokens of a deleted key, with their sealed import keys.
    pub(super) async fn forget_key_tokens(&self, key: &KeyId) -> Result<(), DomainError> {
        let prefix = schema::key_tokens_prefix(key);
        let ids = self
            .read(move |store| {
                index::scan_all(store, &prefix)?
                    .into_iter()
                    .map(|(slot, _)| {
                        let id = schema::suffix(&slot, &prefix)?;
                        ImportTokenId::parse(id)
                            .map_err(|_| DomainError::Internal("malformed key token entry".into()))
                    })
                    .collect::<Result<Vec<_>, DomainError>>()
            })
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        self.commit(move |tx| {
            for id in &ids {
                if let Some(token) = index::get_token(tx, id)? {
                    index::delete_token(tx, &token)?;
                }
            }
            Ok(((), Vec::new()))
        })
        .await
    }
}
