//! The key registry: control-plane rules over the store. Handlers call these methods after
//! converting wire types; every rule lives here or in `kms-types`, never in a handler.

use std::sync::Arc;

use kms_store::{Store, TxError, abort};
use kms_types::key::NewKey;
use kms_types::policy;
use kms_types::validate;
use kms_types::{
    DomainError, KeyEntry, KeyId, KeyOrigin, KeyRecord, KeyRef, KeySpec, KeyState, KeyUsage,
    KeyVersionId, KeyVersionRecord, Principal, ProtectionLevel, RotationPolicy,
};

use crate::clock::Clock;
use crate::material::MaterialClient;
use crate::schema;

/// Default rotation interval, in days.
pub const DEFAULT_ROTATION_DAYS: i64 = 365;

/// Control-plane state and rules.
pub struct Registry<S: Store> {
    store: Arc<S>,
    region: String,
    clock: Arc<dyn Clock>,
    material: MaterialClient,
}

impl<S: Store> std::fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn store_error(e: kms_store::StoreError) -> DomainError {
    DomainError::Internal(format!("store: {e}"))
}

fn tx_error(e: TxError<DomainError>) -> DomainError {
    match e {
        TxError::Aborted(d) => d,
        TxError::Store(s) => store_error(s),
    }
}

impl<S: Store> Registry<S> {
    /// A registry over `store`, naming `region` in ARNs.
    pub fn new(
        store: Arc<S>,
        region: String,
        clock: Arc<dyn Clock>,
        material: MaterialClient,
    ) -> Self {
        Self {
            store,
            region,
            clock,
            material,
        }
    }

    /// The region named in ARNs.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Runs a blocking store operation off the async workers and flushes before returning, so
    /// nothing is acknowledged before it is on disk.
    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&S) -> Result<T, DomainError> + Send + 'static,
    ) -> Result<T, DomainError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let out = op(&store)?;
            store.flush().map_err(store_error)?;
            Ok(out)
        })
        .await
        .map_err(|e| DomainError::Internal(format!("store task failed: {e}")))?
    }

    /// Runs a blocking store read off the async workers.
    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&S) -> Result<T, DomainError> + Send + 'static,
    ) -> Result<T, DomainError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| DomainError::Internal(format!("store task failed: {e}")))?
    }

    /// Creates a key. Without an instance, it is the caller's account's default key.
    pub async fn create_key(
        &self,
        caller: &Principal,
        req: NewKey,
    ) -> Result<KeyRecord, DomainError> {
        validate::description(&req.description)?;
        if let Some(alias) = &req.alias {
            validate::alias_name(alias)?;
        }
        validate::tag_set(&req.tags)?;
        if let Some(doc) = &req.policy {
            policy::validate_document(doc)?;
        }
        if let Some(days) = req.rotation_interval_days {
            validate::rotation_interval_days(days)?;
        }
        if req.instance.is_some() {
            return Err(DomainError::InstanceNotFound);
        }
        // The account's default key: Aliyun_AES_256, software-protected, no tags.
        let spec = req.spec.unwrap_or(KeySpec::AliyunAes256);
        if spec != KeySpec::AliyunAes256 {
            return Err(DomainError::invalid(
                "KeySpec",
                "the default key is always Aliyun_AES_256",
            ));
        }
        let usage = req.usage.unwrap_or(KeyUsage::EncryptDecrypt);
        kms_types::spec::check_usage_fits(spec, usage)?;
        if !req.tags.is_empty() {
            return Err(DomainError::invalid(
                "Tags",
                "the default key takes no tags",
            ));
        }
        let protection = ProtectionLevel::Software;
        let origin = req.origin.unwrap_or(KeyOrigin::Kms);
        let rotation = spec.is_symmetric().then(|| RotationPolicy {
            enabled: req.rotation_enabled.unwrap_or(true),
            interval_days: req.rotation_interval_days.unwrap_or(DEFAULT_ROTATION_DAYS),
        });
        if rotation.is_none()
            && (req.rotation_enabled == Some(true) || req.rotation_interval_days.is_some())
        {
            return Err(DomainError::invalid(
                "RotationInterval",
                "only symmetric keys rotate automatically",
            ));
        }

        let id = KeyId::generate();
        let version = KeyVersionId::generate();
        let now = self.clock.now();
        let (state, versions) = match origin {
            KeyOrigin::Kms => {
                let m = self
                    .material
                    .generate(&id, &version, spec, protection)
                    .await?;
                let v = KeyVersionRecord {
                    id: version,
                    created: now,
                    wrapped_material: m.wrapped,
                    public_key_der: m.public_key_der,
                };
                (KeyState::Enabled, vec![v])
            }
            KeyOrigin::External => (KeyState::PendingImport, Vec::new()),
        };
        let record = KeyRecord {
            id,
            account: caller.account().clone(),
            instance: None,
            spec,
            usage,
            state,
            protection,
            origin,
            description: req.description,
            creator: caller.arn().to_string(),
            created: now,
            delete_date: None,
            deletion_protection: false,
            deletion_protection_description: String::new(),
            rotation,
            last_rotation: None,
            primary_version: version,
            versions,
            aliases: req.alias.into_iter().collect(),
            tags: req.tags,
            policy: req.policy,
            material_expire: None,
        };
        let stored = record.clone();
        self.write(move |store| {
            let value = schema::encode_key(&stored)?;
            let default_slot = schema::default_key(&stored.account);
            store
                .transaction(|tx| {
                    if tx.get(&default_slot)?.is_some() {
                        return abort(DomainError::DefaultKeyExists);
                    }
                    for alias in &stored.aliases {
                        let slot = schema::alias(&stored.account, alias);
                        if tx.get(&slot)?.is_some() {
                            return abort(DomainError::AliasExists);
                        }
                        tx.put(&slot, stored.id.as_str().as_bytes())?;
                    }
                    tx.put(&default_slot, stored.id.as_str().as_bytes())?;
                    for v in &stored.versions {
                        tx.put(&schema::version(&v.id), stored.id.as_str().as_bytes())?;
                    }
                    tx.put(&schema::key(&stored.id), &value)?;
                    Ok(())
                })
                .map_err(tx_error)
        })
        .await?;
        tracing::info!(key_id = %record.id, account = %record.account, "key created");
        Ok(record)
    }

    /// Loads the key `key_ref` names, resolving aliases in `account`'s namespace.
    async fn load(
        &self,
        account: kms_types::AccountId,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        let region = self.region.clone();
        self.read(move |store| {
            let id = match key_ref {
                KeyRef::Id(id) => id,
                KeyRef::Alias(alias) => {
                    let bytes = store
                        .get(&schema::alias(&account, &alias))
                        .map_err(store_error)?
                        .ok_or(DomainError::AliasNotFound)?;
                    schema::decode_key_id(&bytes)?
                }
                KeyRef::Arn {
                    region: arn_region,
                    account: arn_account,
                    key_id,
                } => {
                    if arn_region != region {
                        return Err(DomainError::KeyNotFound);
                    }
                    let bytes = store
                        .get(&schema::key(&key_id))
                        .map_err(store_error)?
                        .ok_or(DomainError::KeyNotFound)?;
                    let record = schema::decode_key(&bytes)?;
                    if record.account != arn_account {
                        return Err(DomainError::KeyNotFound);
                    }
                    return Ok(record);
                }
            };
            let bytes = store
                .get(&schema::key(&id))
                .map_err(store_error)?
                .ok_or(DomainError::KeyNotFound)?;
            schema::decode_key(&bytes)
        })
        .await
    }

    /// The key `key_ref` names, if `caller` may perform `action` on it.
    pub async fn resolve(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        action: &str,
    ) -> Result<KeyRecord, DomainError> {
        let record = self.load(caller.account().clone(), key_ref).await?;
        policy::authorize(caller, &record.account, action)?;
        Ok(record)
    }

    /// `DescribeKey`.
    pub async fn describe_key(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
    ) -> Result<KeyRecord, DomainError> {
        self.resolve(caller, key_ref, "kms:DescribeKey").await
    }

    /// `KeyDirectory.GetKey` by key reference, resolving aliases in `account`. No policy check:
    /// the data plane evaluates the policy it receives.
    pub async fn directory_key(
        &self,
        account: kms_types::AccountId,
        key_ref: KeyRef,
    ) -> Result<KeyEntry, DomainError> {
        let record = self.load(account, key_ref).await?;
        Ok(KeyEntry::from_record(&record, &self.region))
    }

    /// `KeyDirectory.GetKey` by key version id.
    pub async fn directory_version(&self, version: KeyVersionId) -> Result<KeyEntry, DomainError> {
        let id = self
            .read(move |store| {
                let bytes = store
                    .get(&schema::version(&version))
                    .map_err(store_error)?
                    .ok_or(DomainError::KeyNotFound)?;
                schema::decode_key_id(&bytes)
            })
            .await?;
        let record = self
            .load(kms_types::AccountId::parse("0")?, KeyRef::Id(id))
            .await?;
        Ok(KeyEntry::from_record(&record, &self.region))
    }
}
