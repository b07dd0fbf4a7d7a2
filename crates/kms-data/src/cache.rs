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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kms_backend::KeyHandle;
use kms_types::policy::{self, PolicyDocument};
use kms_types::{DomainError, KeyEntry, KeyId, KeyVersionId, Principal};

use crate::directory::{DirectoryClient, Lookup};
use crate::vault::KeyVault;

/// Entries kept before the first sweep of expired ones; later sweeps run when the cache has
/// doubled since the last, so a large cache of fresh entries is not swept on every miss.
const SWEEP_AT: usize = 10_000;
/// Keys whose last change revision is remembered one by one; past this, the map is emptied
/// and its highest revision kept as a floor, so it does not grow with every key ever changed.
const CHANGES_KEPT: usize = 4096;
/// How many times a fetch older than a seen event is retried before giving up.
const STALE_FETCH_RETRIES: usize = 3;

/// A key as the data plane uses it.
#[derive(Debug)]
pub struct CachedKey {
    /// What the control plane said about the key.
    pub entry: KeyEntry,
    /// Its policy, parsed once for this revision ([`policy::compile_stored`]).
    pub policy: Option<PolicyDocument>,
    /// The opened material of `entry.versions[i]`, once a call has needed it.
    materials: Box<[OnceLock<KeyHandle>]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CachedKey {
    fn new(entry: KeyEntry) -> Self {
        Self {
            policy: policy::compile_stored(entry.policy.as_deref()),
            materials: entry.versions.iter().map(|_| OnceLock::new()).collect(),
            entry,
        }
    }

    fn slot(&self, version: &KeyVersionId) -> Option<&OnceLock<KeyHandle>> {
        let i = self.entry.versions.iter().position(|v| v.id == *version)?;
        self.materials.get(i)
    }

    /// Whether `version`'s material is loaded, so [`CachedKey::material`] returns at once.
    pub fn is_loaded(&self, version: &KeyVersionId) -> bool {
        self.slot(version).is_some_and(|m| m.get().is_some())
    }

    /// The loaded key of `version`, opening its sealed material on first use. Blocks.
    pub fn material(
        &self,
        vault: &KeyVault,
        version: &KeyVersionId,
    ) -> Result<KeyHandle, DomainError> {
        let slot = self.slot(version).ok_or(DomainError::KeyVersionNotFound)?;
        if let Some(m) = slot.get() {
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
        // Two calls may open it at once; the first kept wins and the other copy is dropped.
        Ok(slot.get_or_init(|| loaded).clone())
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

/// How a cached entry was looked up. Key ids and versions, which nearly every call uses, are
/// held in place; other spellings (an alias in its account, a key ARN) as shared text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Name {
    /// A key id.
    Key(KeyId),
    /// The key owning a version.
    Version(KeyVersionId),
    /// `a:<account>:alias/…`, or `k:<anything else a request named>`.
    Text(Arc<str>),
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Name, Slot>,
    /// The cached lookups other than by key id, by the key they led to, so an event touches
    /// only its key's entries (a lookup by id is found from the id alone). May name a lookup
    /// since re-pointed to another key (an alias): users check the slot's key.
    other_lookups: HashMap<KeyId, Vec<Name>>,
    watch_up: bool,
    last_contact: Option<Instant>,
    revision: u64,
    resync_revision: u64,
    changed_at: HashMap<KeyId, u64>,
    /// Every change forgotten from `changed_at` is at or below this revision.
    changed_floor: u64,
    /// Entries at which the next sweep runs.
    sweep_at: usize,
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
            || revision < self.changed_floor
            || self.changed_at.get(key_id).is_some_and(|r| revision < *r)
    }

    /// Remembers that `key_id` changed at `revision`.
    fn note_change(&mut self, key_id: KeyId, revision: u64) {
        if self.changed_at.len() >= CHANGES_KEPT && !self.changed_at.contains_key(&key_id) {
            let highest = self.changed_at.values().copied().max().unwrap_or(0);
            self.changed_floor = self.changed_floor.max(highest);
            self.changed_at.clear();
        }
        self.changed_at.insert(key_id, revision);
    }

    /// Caches `slot` under lookup `name`.
    fn insert(&mut self, name: Name, slot: Slot) {
        if !matches!(name, Name::Key(_)) {
            let names = self.other_lookups.entry(slot.key.entry.id).or_default();
            if !names.contains(&name) {
                // Most keys are reached by one such lookup at most: no spare room per key.
                names.reserve_exact(1);
                names.push(name.clone());
            }
        }
        self.entries.insert(name, slot);
    }

    /// A cached entry of `key_id`, whose opened material a refresh may carry over.
    fn cached(&self, key_id: &KeyId) -> Option<&Arc<CachedKey>> {
        if let Some(slot) = self.entries.get(&Name::Key(*key_id)) {
            return Some(&slot.key);
        }
        self.other_lookups
            .get(key_id)?
            .iter()
            .filter_map(|name| self.entries.get(name))
            .map(|slot| &slot.key)
            .find(|key| key.entry.id == *key_id)
    }

    /// Drops the entries of `key_id` that `keep` refuses.
    fn retain_key(&mut self, key_id: &KeyId, keep: impl Fn(&Slot) -> bool) {
        let by_id = Name::Key(*key_id);
        if self.entries.get(&by_id).is_some_and(|slot| !keep(slot)) {
            self.entries.remove(&by_id);
        }
        let Some(mut names) = self.other_lookups.remove(key_id) else {
            return;
        };
        names.retain(|name| {
            let Some(slot) = self.entries.get(name) else {
                return false;
            };
            if slot.key.entry.id != *key_id {
                return false;
            }
            let kept = keep(slot);
            if !kept {
                self.entries.remove(name);
            }
            kept
        });
        if !names.is_empty() {
            self.other_lookups.insert(*key_id, names);
        }
    }

    fn drop_key(&mut self, key_id: &KeyId) {
        self.retain_key(key_id, |_| false);
    }

    /// Drops entries older than `ttl` when the cache has grown enough since the last sweep.
    fn sweep(&mut self, ttl: Duration) {
        if self.entries.len() < self.sweep_at.max(SWEEP_AT) {
            return;
        }
        self.entries.retain(|_, s| s.fetched.elapsed() < ttl);
        self.prune_lookups();
        self.sweep_at = self.entries.len().saturating_mul(2);
    }

    /// Forgets indexed lookups whose entry is gone or now names another key.
    fn prune_lookups(&mut self) {
        let entries = &self.entries;
        self.other_lookups.retain(|id, names| {
            names.retain(|n| entries.get(n).is_some_and(|s| s.key.entry.id == *id));
            !names.is_empty()
        });
    }

    /// Events up to `revision` were missed. Keeps only the entries read at exactly that
    /// revision, which show every change up to it: a data plane whose first watch opens after
    /// its first fetches keeps them. Everything else goes: an entry read earlier may have
    /// missed a change, and a stream behind what was already seen means a store restored or
    /// a replica behind, whose revisions need not name the same history.
    fn resync(&mut self, revision: u64) {
        self.changed_at.clear();
        self.changed_floor = 0;
        if revision < self.revision {
            self.entries.clear();
            self.other_lookups.clear();
            return;
        }
        self.entries.retain(|_, s| s.revision == revision);
        self.prune_lookups();
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
        self.retain_key(key_id, |slot| slot.revision >= revision);
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
        let name = if key_id.starts_with("alias/") {
            Name::Text(format!("a:{}:{key_id}", caller.account()).into())
        } else if let Ok(id) = KeyId::parse(key_id) {
            Name::Key(id)
        } else {
            Name::Text(format!("k:{key_id}").into())
        };
        self.get(name, Lookup::Key(key_id, caller)).await
    }

    /// The key owning `version`.
    pub async fn by_version(&self, version: &KeyVersionId) -> Result<Arc<CachedKey>, DomainError> {
        self.get(Name::Version(*version), Lookup::Version(version))
            .await
    }

    async fn get(&self, name: Name, lookup: Lookup<'_>) -> Result<Arc<CachedKey>, DomainError> {
        {
            let state = lock(&self.state);
            if let Some(s) = state.entries.get(&name)
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
                Err(DomainError::Unavailable(why)) => return self.stale(&name, why),
                Err(e @ (DomainError::KeyNotFound | DomainError::AliasNotFound)) => {
                    let mut state = lock(&self.state);
                    state.last_contact = Some(Instant::now());
                    if let Some(gone) = state.entries.remove(&name) {
                        let id = gone.key.entry.id;
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
            let key = carry_over(&state, entry);
            state.insert(
                name,
                Slot {
                    fetched: Instant::now(),
                    revision,
                    key: Arc::clone(&key),
                },
            );
            let ttl = state.ttl(&self.times);
            state.sweep(ttl);
            return Ok(key);
        }
    }

    /// The cached entry while the last contact is recent enough; else `UNAVAILABLE`.
    fn stale(&self, name: &Name, why: String) -> Result<Arc<CachedKey>, DomainError> {
        let state = lock(&self.state);
        let recent = state
            .last_contact
            .is_some_and(|t| t.elapsed() < self.times.max_staleness);
        match state.entries.get(name) {
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
                state.note_change(key_id, revision);
            }
            Event::Resync { revision } => {
                tracing::info!(revision, "key cache resynchronised");
                state.resync(revision);
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
fn carry_over(state: &State, entry: KeyEntry) -> Arc<CachedKey> {
    let key = CachedKey::new(entry);
    if let Some(previous) = state.cached(&key.entry.id) {
        for (v, slot) in key.entry.versions.iter().zip(key.materials.iter()) {
            let unchanged = previous
                .entry
                .version(&v.id)
                .is_some_and(|pv| pv.wrapped_material == v.wrapped_material);
            if let (true, Some(m)) = (unchanged, previous.slot(&v.id).and_then(OnceLock::get)) {
                let _ = slot.set(m.clone());
            }
        }
    }
    Arc::new(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kms_types::{
        AccountId, KeyOrigin, KeySpec, KeyState, KeyUsage, KeyVersionRecord, ProtectionLevel,
        UnixMillis,
    };

    fn entry(id: &KeyId, versions: Vec<KeyVersionRecord>) -> KeyEntry {
        KeyEntry {
            id: *id,
            account: AccountId::parse("42").unwrap_or_else(|e| panic!("{e}")),
            instance_owner: None,
            spec: KeySpec::AliyunAes256,
            usage: KeyUsage::EncryptDecrypt,
            state: KeyState::Enabled,
            protection: ProtectionLevel::Software,
            origin: KeyOrigin::Kms,
            primary_version: KeyVersionId::generate(),
            versions,
            policy: None,
            material_expire: None::<UnixMillis>,
        }
    }

    fn cached(id: &KeyId) -> Arc<CachedKey> {
        Arc::new(CachedKey::new(entry(id, Vec::new())))
    }

    fn sealed(id: KeyVersionId, wrapped: &[u8]) -> KeyVersionRecord {
        KeyVersionRecord {
            id,
            created: UnixMillis(0),
            wrapped_material: wrapped.to_vec(),
            public_key_der: Vec::new(),
        }
    }

    /// A refreshed entry keeps the opened material of versions whose sealed bytes did not
    /// change, whichever lookup cached the key; a version sealed anew is opened again.
    #[test]
    fn a_refresh_keeps_material_only_for_unchanged_versions() {
        let id = KeyId::generate();
        let (same, resealed) = (KeyVersionId::generate(), KeyVersionId::generate());
        for name in [Name::Key(id), Name::Version(same)] {
            let first =
                CachedKey::new(entry(&id, vec![sealed(same, b"a"), sealed(resealed, b"b")]));
            for v in [same, resealed] {
                let opened = KeyHandle::new("test", KeySpec::AliyunAes256, ());
                assert!(first.slot(&v).is_some_and(|m| m.set(opened).is_ok()));
            }
            let mut state = State::default();
            state.insert(
                name.clone(),
                Slot {
                    fetched: Instant::now(),
                    revision: 1,
                    key: Arc::new(first),
                },
            );
            let refreshed = carry_over(
                &state,
                entry(&id, vec![sealed(same, b"a"), sealed(resealed, b"c")]),
            );
            assert!(refreshed.is_loaded(&same), "{name:?}");
            assert!(!refreshed.is_loaded(&resealed), "{name:?}");
            assert!(!refreshed.is_loaded(&KeyVersionId::generate()), "{name:?}");
        }
    }

    fn with_entry(id: &KeyId, read_at: u64) -> State {
        let mut state = State::default();
        state.insert(
            Name::Key(*id),
            Slot {
                fetched: Instant::now(),
                revision: read_at,
                key: cached(id),
            },
        );
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
                state.entries.len() == 1,
                kept,
                "event at {event_revision}, deleted {deleted}"
            );
        }
        // Other keys' entries are untouched.
        let mut state = with_entry(&id, 5);
        state.changed(&KeyId::generate(), 9, true);
        assert_eq!(state.entries.len(), 1);
    }

    /// A resync keeps only entries read at its revision, and nothing when it is behind what
    /// the cache already saw.
    #[test]
    fn a_resync_keeps_only_entries_that_show_its_revision() {
        let (read_at, before, after) = (KeyId::generate(), KeyId::generate(), KeyId::generate());
        let mut state = with_entry(&read_at, 7);
        for (id, at) in [(before, 6), (after, 8)] {
            state.insert(
                Name::Version(KeyVersionId::generate()),
                Slot {
                    fetched: Instant::now(),
                    revision: at,
                    key: cached(&id),
                },
            );
        }
        state.resync(7);
        assert_eq!(state.entries.len(), 1);
        assert!(state.entries.contains_key(&Name::Key(read_at)));
        assert!(state.other_lookups.is_empty());
        state.revision = 9;
        state.resync(7);
        assert!(state.entries.is_empty(), "a stream behind what was seen");
    }

    /// A lookup re-pointed to another key (an alias) belongs to its new key only: a change
    /// to the old key leaves it, a change to the new key drops it.
    #[test]
    fn a_repointed_lookup_follows_its_new_key() {
        let (old, new) = (KeyId::generate(), KeyId::generate());
        let mut state = with_entry(&old, 5);
        let slot = |key: &Arc<CachedKey>| Slot {
            fetched: Instant::now(),
            revision: 5,
            key: Arc::clone(key),
        };
        let alias = Name::Text("a:42:alias/x".into());
        state.insert(alias.clone(), slot(&cached(&old)));
        state.insert(alias.clone(), slot(&cached(&new)));
        state.changed(&old, 9, true);
        assert_eq!(state.entries.len(), 1, "the alias now names the new key");
        assert!(state.entries.contains_key(&alias));
        state.changed(&new, 9, false);
        assert!(state.entries.is_empty());
        assert!(state.other_lookups.is_empty());
    }

    /// Past `CHANGES_KEPT` keys, per-key change revisions are forgotten but a floor keeps a
    /// fetch read before any of them outdated.
    #[test]
    fn forgotten_changes_still_outdate_older_reads() {
        let mut state = State::default();
        let first = KeyId::generate();
        state.note_change(first, 10);
        for r in 0..CHANGES_KEPT as u64 {
            state.note_change(KeyId::generate(), 11 + r);
        }
        assert!(state.changed_at.len() <= CHANGES_KEPT);
        assert!(!state.changed_at.contains_key(&first));
        assert!(state.outdated(&first, 9), "read before its change");
        let newest = 10 + CHANGES_KEPT as u64;
        assert!(!state.outdated(&KeyId::generate(), newest + 1));
    }

    /// A sweep of fresh entries keeps them and waits for the cache to double before the next.
    #[test]
    fn a_sweep_of_fresh_entries_is_not_repeated_on_every_miss() {
        let mut state = State::default();
        for _ in 0..SWEEP_AT {
            let id = KeyId::generate();
            state.insert(
                Name::Key(id),
                Slot {
                    fetched: Instant::now(),
                    revision: 1,
                    key: cached(&id),
                },
            );
        }
        state.sweep(Duration::from_secs(60));
        assert_eq!(state.entries.len(), SWEEP_AT);
        assert_eq!(state.sweep_at, 2 * SWEEP_AT);
        assert!(
            state.other_lookups.is_empty(),
            "lookups by id need no index"
        );
    }
}
