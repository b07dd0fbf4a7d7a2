//! The key cache: entries from `KeyDirectory.GetKey`, kept fresh by the `WatchKeys` stream,
//! with each version's unsealed material kept beside its entry so the HSM is not asked on
//! every call.
//!
//! Freshness rules:
//! - while the watch stream is up, an entry is used until an event invalidates it, or for at
//!   most `watched_ttl`;
//! - while it is down, an entry is used for at most `unwatched_ttl`, then fetched again;
//! - when the control plane cannot be reached, entries are served for at most `max_staleness`
//!   after the last successful contact, then calls fail closed with `UNAVAILABLE`.
//!
//! Every event carries the directory's revision; a fetched entry older than an event already
//! seen for its key is fetched again rather than cached, so an invalidation is never undone by
//! a slow reply. A refreshed entry keeps the unsealed material of versions whose sealed bytes
//! did not change; a deleted key's material is dropped with its entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kms_backend::KeyHandle;
use kms_types::policy::{self, PolicyDocument};
use kms_types::{DomainError, KeyEntry, KeyId, KeyVersionId, Principal};

use crate::directory::{DirectoryClient, Lookup};
use crate::vault::KeyVault;

/// Most entries kept before stale ones are swept.
const SWEEP_AT: usize = 10_000;
/// How many times a fetch older than a seen event is retried before giving up.
const STALE_FETCH_RETRIES: usize = 3;

/// A key as the data plane uses it.
#[derive(Debug)]
pub struct CachedKey {
    /// What the control plane said about the key.
    pub entry: KeyEntry,
    /// Its policy, parsed once for this revision ([`policy::compile_stored`]).
    pub policy: Option<PolicyDocument>,
    materials: Mutex<HashMap<KeyVersionId, KeyHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CachedKey {
    fn new(entry: KeyEntry, materials: HashMap<KeyVersionId, KeyHandle>) -> Self {
        Self {
            policy: policy::compile_stored(entry.policy.as_deref()),
            entry,
            materials: Mutex::new(materials),
        }
    }

    /// Whether `version`'s material is loaded, so [`CachedKey::material`] returns at once.
    pub fn is_loaded(&self, version: &KeyVersionId) -> bool {
        lock(&self.materials).contains_key(version)
    }

    /// The loaded key of `version`, opening its sealed material on first use. Blocks.
    pub fn material(
        &self,
        vault: &KeyVault,
        version: &KeyVersionId,
    ) -> Result<KeyHandle, DomainError> {
        if let Some(m) = lock(&self.materials).get(version) {
            return Ok(m.clone());
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
        let loaded = vault.load(
            version,
            self.entry.spec,
            self.entry.protection,
            &record.wrapped_material,
        )?;
        lock(&self.materials).insert(*version, loaded.clone());
        Ok(loaded)
    }
}

/// How long entries live.
#[derive(Debug, Clone, Copy)]
pub struct CacheTimes {
    /// Longest use of an entry while the watch stream is up.
    pub watched_ttl: Duration,
    /// Longest use of an entry while the watch stream is down.
    pub unwatched_ttl: Duration,
    /// Longest service from cache after the last contact with the control plane.
    pub max_staleness: Duration,
}

/// A change the watch stream reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key changed or was deleted: drop its entries.
    Changed {
        /// The key.
        key_id: KeyId,
        /// The directory revision of the change.
        revision: u64,
        /// Whether the key is gone.
        deleted: bool,
    },
    /// Events were missed: drop everything.
    Resync {
        /// The directory revision to resume from.
        revision: u64,
    },
}

#[derive(Debug)]
struct Slot {
    fetched: Instant,
    /// The directory revision the entry was read at: it reflects every change up to it.
    revision: u64,
    key: Arc<CachedKey>,
}

/// A view of the cache for metrics.
#[derive(Debug, Clone, Copy)]
pub struct CacheStats {
    /// Lookups cached.
    pub entries: usize,
    /// Time since the last answer or event from the control plane; `None` before the first.
    pub contact_age: Option<Duration>,
    /// Whether the watch stream is up.
    pub watch_up: bool,
    /// The last directory revision applied.
    pub revision: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Slot>,
    latest: HashMap<KeyId, Arc<CachedKey>>,
    watch_up: bool,
    last_contact: Option<Instant>,
    revision: u64,
    resync_revision: u64,
    changed_at: HashMap<KeyId, u64>,
}

impl State {
    fn ttl(&self, times: &CacheTimes) -> Duration {
        if self.watch_up {
            times.watched_ttl
        } else {
            times.unwatched_ttl
        }
    }

    /// Whether an entry read at `revision` predates something already seen for its key.
    fn outdated(&self, key_id: &KeyId, revision: u64) -> bool {
        revision < self.resync_revision
            || self.changed_at.get(key_id).is_some_and(|r| revision < *r)
    }

    fn drop_key(&mut self, key_id: &KeyId) {
        self.entries.retain(|_, slot| slot.key.entry.id != *key_id);
        self.latest.remove(key_id);
    }

    /// A change to `key_id` at `revision`: drops the entries read before it. An entry read at
    /// or after it already shows the change (a watch resumed from an older revision replays
    /// such events, which must not empty the cache the stale window relies on). A deletion
    /// drops every entry of the key.
    fn changed(&mut self, key_id: &KeyId, revision: u64, deleted: bool) {
        if deleted {
            self.drop_key(key_id);
            return;
        }
        self.entries
            .retain(|_, slot| slot.key.entry.id != *key_id || slot.revision >= revision);
        if !self.entries.values().any(|s| s.key.entry.id == *key_id) {
            self.latest.remove(key_id);
        }
    }
}

/// Keys by lookup, kept fresh as described in the module docs.
#[derive(Debug)]
pub struct KeyCache {
    times: CacheTimes,
    directory: DirectoryClient,
    state: Mutex<State>,
}

impl KeyCache {
    /// A cache over `directory`.
    pub fn new(directory: DirectoryClient, times: CacheTimes) -> Self {
        Self {
            times,
            directory,
            state: Mutex::new(State::default()),
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
        {
            let state = lock(&self.state);
            if let Some(s) = state.entries.get(&slot)
                && s.fetched.elapsed() < state.ttl(&self.times)
            {
                crate::metrics::lookup("hit");
                return Ok(Arc::clone(&s.key));
            }
        }
        crate::metrics::lookup("miss");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let fetched = match self.directory.get(lookup).await {
                Ok(fetched) => fetched,
                Err(DomainError::Unavailable(why)) => return self.stale(&slot, why),
                Err(e @ (DomainError::KeyNotFound | DomainError::AliasNotFound)) => {
                    let mut state = lock(&self.state);
                    state.last_contact = Some(Instant::now());
                    if let Some(gone) = state.entries.remove(&slot) {
                        let id = gone.key.entry.id.clone();
                        state.drop_key(&id);
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            let (entry, revision) = fetched;
            let mut state = lock(&self.state);
            state.last_contact = Some(Instant::now());
            if state.outdated(&entry.id, revision) && attempts < STALE_FETCH_RETRIES {
                continue;
            }
            let key = carry_over(&mut state, entry);
            state.entries.insert(
                slot,
                Slot {
                    fetched: Instant::now(),
                    revision,
                    key: Arc::clone(&key),
                },
            );
            if state.entries.len() >= SWEEP_AT {
                let ttl = state.ttl(&self.times);
                state.entries.retain(|_, s| s.fetched.elapsed() < ttl);
                let live: std::collections::HashSet<KeyId> = state
                    .entries
                    .values()
                    .map(|s| s.key.entry.id.clone())
                    .collect();
                state.latest.retain(|id, _| live.contains(id));
            }
            return Ok(key);
        }
    }

    /// The cached entry while the last contact is recent enough; else `UNAVAILABLE`.
    fn stale(&self, slot: &str, why: String) -> Result<Arc<CachedKey>, DomainError> {
        let state = lock(&self.state);
        let recent = state
            .last_contact
            .is_some_and(|t| t.elapsed() < self.times.max_staleness);
        match state.entries.get(slot) {
            Some(s) if recent => {
                crate::metrics::lookup("stale");
                Ok(Arc::clone(&s.key))
            }
            _ => Err(DomainError::Unavailable(why)),
        }
    }

    /// Applies an event from the watch stream.
    pub fn apply(&self, event: Event) {
        let mut state = lock(&self.state);
        state.last_contact = Some(Instant::now());
        match event {
            Event::Changed {
                key_id,
                revision,
                deleted,
            } => {
                state.revision = state.revision.max(revision);
                state.changed(&key_id, revision, deleted);
                if deleted {
                    tracing::debug!(key_id = %key_id, "key deleted; cache entries and material dropped");
                }
                state.changed_at.insert(key_id, revision);
            }
            Event::Resync { revision } => {
                tracing::info!(revision, "key cache resynchronised");
                state.entries.clear();
                state.latest.clear();
                state.changed_at.clear();
                state.revision = revision;
                state.resync_revision = revision;
            }
        }
    }

    /// Records whether the watch stream is up.
    pub fn set_watch_up(&self, up: bool) {
        let mut state = lock(&self.state);
        if up {
            state.last_contact = Some(Instant::now());
        }
        state.watch_up = up;
    }

    /// What the cache holds and how fresh it is, for metrics.
    pub fn stats(&self) -> CacheStats {
        let state = lock(&self.state);
        CacheStats {
            entries: state.entries.len(),
            contact_age: state.last_contact.map(|t| t.elapsed()),
            watch_up: state.watch_up,
            revision: state.revision,
        }
    }

    /// The last directory revision seen, to resume the watch from.
    pub fn revision(&self) -> u64 {
        lock(&self.state).revision
    }

    /// The directory client.
    pub fn directory(&self) -> &DirectoryClient {
        &self.directory
    }
}

/// A new cached key for `entry`, keeping unsealed material whose sealed bytes match.
fn carry_over(state: &mut State, entry: KeyEntry) -> Arc<CachedKey> {
    let mut kept = HashMap::new();
    if let Some(previous) = state.latest.get(&entry.id) {
        let old = lock(&previous.materials);
        for v in &entry.versions {
            let unchanged = previous
                .entry
                .version(&v.id)
                .is_some_and(|pv| pv.wrapped_material == v.wrapped_material);
            if let (true, Some(m)) = (unchanged, old.get(&v.id)) {
                kept.insert(v.id, m.clone());
            }
        }
    }
    let key = Arc::new(CachedKey::new(entry, kept));
    state.latest.insert(key.entry.id.clone(), Arc::clone(&key));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use kms_types::{
        AccountId, KeyOrigin, KeySpec, KeyState, KeyUsage, ProtectionLevel, UnixMillis,
    };

    fn cached(id: &KeyId) -> Arc<CachedKey> {
        Arc::new(CachedKey {
            entry: KeyEntry {
                id: id.clone(),
                arn: String::new(),
                account: AccountId::parse("42").unwrap_or_else(|e| panic!("{e}")),
                instance: None,
                instance_owner: None,
                spec: KeySpec::AliyunAes256,
                usage: KeyUsage::EncryptDecrypt,
                state: KeyState::Enabled,
                protection: ProtectionLevel::Software,
                origin: KeyOrigin::Kms,
                primary_version: KeyVersionId::generate(),
                versions: Vec::new(),
                policy: None,
                material_expire: None::<UnixMillis>,
                aliases: Vec::new(),
                creator: String::new(),
            },
            policy: None,
            materials: Mutex::new(HashMap::new()),
        })
    }

    fn with_entry(id: &KeyId, read_at: u64) -> State {
        let key = cached(id);
        let mut state = State::default();
        state.entries.insert(
            format!("k:{id}"),
            Slot {
                fetched: Instant::now(),
                revision: read_at,
                key: Arc::clone(&key),
            },
        );
        state.latest.insert(id.clone(), key);
        state
    }

    /// A change the entry already shows (a replayed event) keeps it; a later change, or a
    /// deletion, drops it.
    #[test]
    fn changes_drop_only_entries_read_before_them() {
        let id = KeyId::generate();
        for (event_revision, deleted, kept) in [
            (3, false, true),
            (5, false, true),
            (6, false, false),
            (3, true, false),
        ] {
            let mut state = with_entry(&id, 5);
            state.changed(&id, event_revision, deleted);
            assert_eq!(
                (state.entries.len() == 1, state.latest.contains_key(&id)),
                (kept, kept),
                "event at {event_revision}, deleted {deleted}"
            );
        }
        // Other keys' entries are untouched.
        let mut state = with_entry(&id, 5);
        state.changed(&KeyId::generate(), 9, true);
        assert_eq!(state.entries.len(), 1);
    }
}
