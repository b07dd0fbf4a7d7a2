//! The key cache: entries from `KeyDirectory.GetKey`, used for a short time-to-live, with each
//! version's unsealed material kept beside its entry so the HSM is not asked on every call.
//!
//! A refreshed entry keeps the unsealed material of versions whose sealed bytes did not
//! change. When a key disappears from the directory, its entry and material go with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kms_backend::SecretBytes;
use kms_types::{DomainError, KeyEntry, KeyId, KeyVersionId, Principal};

use crate::directory::{DirectoryClient, Lookup};
use crate::vault::KeyVault;

/// Most entries kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

/// A key as the data plane uses it.
#[derive(Debug)]
pub struct CachedKey {
    /// What the control plane said about the key.
    pub entry: KeyEntry,
    materials: Mutex<HashMap<KeyVersionId, Arc<SecretBytes>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CachedKey {
    /// The unsealed material of `version`, opening it through the HSM on first use. Blocks.
    pub fn material(
        &self,
        vault: &KeyVault,
        version: &KeyVersionId,
    ) -> Result<Arc<SecretBytes>, DomainError> {
        if let Some(m) = lock(&self.materials).get(version) {
            return Ok(Arc::clone(m));
        }
        let record = self
            .entry
            .version(version)
            .ok_or(DomainError::KeyVersionNotFound)?;
        if record.wrapped_material.is_empty() {
            return Err(DomainError::InvalidState(
                kms_types::KeyState::PendingImport,
            ));
        }
        let opened = Arc::new(vault.open(version, &record.wrapped_material)?);
        lock(&self.materials).insert(*version, Arc::clone(&opened));
        Ok(opened)
    }
}

/// Entries by lookup, each with the instant it was fetched.
#[derive(Debug)]
pub struct KeyCache {
    ttl: Duration,
    directory: DirectoryClient,
    entries: Mutex<HashMap<String, (Instant, Arc<CachedKey>)>>,
    latest: Mutex<HashMap<KeyId, Arc<CachedKey>>>,
}

impl KeyCache {
    /// A cache over `directory` whose entries live for `ttl`.
    pub fn new(directory: DirectoryClient, ttl: Duration) -> Self {
        Self {
            ttl,
            directory,
            entries: Mutex::new(HashMap::new()),
            latest: Mutex::new(HashMap::new()),
        }
    }

    /// The key a request's `key_id` names, resolving aliases in the caller's account.
    pub async fn by_ref(
        &self,
        key_id: &str,
        caller: &Principal,
    ) -> Result<Arc<CachedKey>, DomainError> {
        let slot = if key_id.starts_with("alias/") {
            format!("a:{}:{key_id}", caller.account())
        } else {
            format!("k:{key_id}")
        };
        self.get(slot, Lookup::Key(key_id, caller)).await
    }

    /// The key owning `version`.
    pub async fn by_version(&self, version: &KeyVersionId) -> Result<Arc<CachedKey>, DomainError> {
        self.get(format!("v:{version}"), Lookup::Version(version))
            .await
    }

    async fn get(&self, slot: String, lookup: Lookup<'_>) -> Result<Arc<CachedKey>, DomainError> {
        if let Some((at, key)) = lock(&self.entries).get(&slot)
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(key));
        }
        let fetched = match self.directory.get(lookup).await {
            Ok(entry) => entry,
            Err(e @ (DomainError::KeyNotFound | DomainError::AliasNotFound)) => {
                lock(&self.entries).remove(&slot);
                self.prune_latest();
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let key = self.carry_over(fetched);
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        entries.insert(slot, (now, Arc::clone(&key)));
        if entries.len() >= SWEEP_AT {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            drop(entries);
            self.prune_latest();
        }
        Ok(key)
    }

    /// A new cached key for `entry`, keeping unsealed material whose sealed bytes match.
    fn carry_over(&self, entry: KeyEntry) -> Arc<CachedKey> {
        let mut latest = lock(&self.latest);
        let mut kept = HashMap::new();
        if let Some(previous) = latest.get(&entry.id) {
            let old = lock(&previous.materials);
            for v in &entry.versions {
                let unchanged = previous
                    .entry
                    .version(&v.id)
                    .is_some_and(|pv| pv.wrapped_material == v.wrapped_material);
                if let (true, Some(m)) = (unchanged, old.get(&v.id)) {
                    kept.insert(v.id, Arc::clone(m));
                }
            }
        }
        let key = Arc::new(CachedKey {
            entry,
            materials: Mutex::new(kept),
        });
        latest.insert(key.entry.id.clone(), Arc::clone(&key));
        key
    }

    /// Drops carried-over material of keys no live entry refers to, so a deleted key's
    /// material does not outlive its entries.
    fn prune_latest(&self) {
        let live: std::collections::HashSet<KeyId> = lock(&self.entries)
            .values()
            .map(|(_, k)| k.entry.id.clone())
            .collect();
        lock(&self.latest).retain(|id, _| live.contains(id));
    }
}
