//! The key registry: control-plane rules over the store. Handlers call these methods after
//! converting wire types; every rule lives here or in `kms-types`, never in a handler.
//!
//! Every mutation goes through [`Registry::commit`]: one store transaction on a blocking thread
//! (records and indexes change together through [`crate::index`]), a flush before anything is
//! acknowledged. Key events reach `WatchKeys` streams from the store itself: every stream
//! reads them back after the store's change feed says the directory revision moved, whichever
//! replica wrote it, so every replica serves the same events under the same revisions.
//!
//! Scheduled work runs on one replica at a time: the one holding the scheduler claim
//! ([`Registry::lead`]); each of its writes checks the claim in its own transaction.
//!
//! The methods are split by subject: keys and their lifecycle (`registry/keys.rs`), versions
//! (`registry/versions.rs`), aliases, tags, instances, the data plane's directory, imported
//! material (`registry/import.rs`), key usage and association (`registry/usage.rs`), the
//! scheduled work, rotation and deletion (`registry/schedule.rs`), and backups
//! (`registry/backup.rs`).

mod access;
mod access_keys;
mod aliases;
mod audit;
mod backup;
mod directory;
mod import;
mod instances;
mod keys;
mod schedule;
mod tags;
mod usage;
mod versions;

use std::sync::Arc;
use std::time::Duration;

use kms_store::{Abort, Store, TxError, Txn};
use kms_types::{
    AccountId, DomainError, KeyEvent, KeyId, KeyRecord, KeyRef, Principal, UnixMillis, policy,
};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::index::{self, TxResult};
use crate::material::MaterialSource;
use crate::schema;

pub use backup::{BACKUP_CHUNK_BYTES, BackupChunks};
pub use import::ImportParameters;
pub use schedule::SweepReport;

/// Default rotation interval, in days.
pub const DEFAULT_ROTATION_DAYS: i64 = kms_types::lifecycle::DEFAULT_ROTATION_DAYS;

/// How long the scheduler claim lasts without renewal, unless set with
/// [`Registry::with_replica`].
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Control-plane state and rules.
pub struct Registry<S: Store> {
    store: Arc<S>,
    region: String,
    clock: Arc<dyn Clock>,
    material: Arc<dyn MaterialSource>,
    operators: Vec<Principal>,
    /// Bumped whenever the directory revision may have moved (the store's change feed, and
    /// this replica's own commits); `WatchKeys` streams then read the new events.
    changes: Arc<watch::Sender<u64>>,
    closing: watch::Sender<bool>,
    /// This replica's name in the scheduler claim.
    replica: String,
    /// How long the scheduler claim lasts without renewal.
    lease: Duration,
    /// Concurrent writers share transactions, as far as the engine allows.
    queue: Arc<kms_store::CommitQueue<DomainError>>,
    /// What makes the queue's commits durable: a flush that writers waiting at once share.
    durable: kms_store::Durable<S>,
}

impl<S: Store> std::fmt::Debug for Registry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("region", &self.region)
            .field("operators", &self.operators.len())
            .finish_non_exhaustive()
    }
}

fn store_error(e: kms_store::StoreError) -> DomainError {
    index::store_error(e)
}

/// A flush shared with the other writers ([`kms_store::GroupFlush`]), timed.
fn flush<S: Store>(
    flusher: &kms_store::GroupFlush,
    store: &S,
) -> Result<(), kms_store::StoreError> {
    let start = std::time::Instant::now();
    flusher.flush(store)?;
    crate::metrics::CONTROL
        .flush
        .observe(start.elapsed().as_secs_f64());
    Ok(())
}

fn tx_error(e: TxError<DomainError>) -> DomainError {
    match e {
        TxError::Aborted(d) => d,
        TxError::Store(s) => store_error(s),
    }
}

impl<S: Store> Registry<S> {
    /// A registry over `store`, naming `region` in ARNs, with no operators.
    pub fn new(
        store: Arc<S>,
        region: String,
        clock: Arc<dyn Clock>,
        material: impl MaterialSource,
    ) -> Self {
        let changes = Arc::new(watch::channel(0u64).0);
        let feed = Arc::clone(&changes);
        let notify: kms_store::Notify = Arc::new(move || {
            feed.send_modify(|n| *n = n.wrapping_add(1));
        });
        if let Err(e) = store.subscribe(schema::REVISION, notify) {
            // Streams still poll the revision (see `registry/directory.rs`).
            tracing::error!(error = %e, "cannot follow the store's changes; key watches fall back to polling");
        }
        let (closing, _) = watch::channel(false);
        let flusher = Arc::new(kms_store::GroupFlush::new());
        let durable: kms_store::Durable<S> = Arc::new(move |store: &S| flush(&flusher, store));
        Self {
            store,
            region,
            clock,
            material: Arc::new(material),
            operators: Vec::new(),
            changes,
            closing,
            replica: format!("replica-{}", uuid::Uuid::new_v4().simple()),
            lease: DEFAULT_LEASE,
            queue: Arc::new(kms_store::CommitQueue::new()),
            durable,
        }
    }

    /// The same registry naming itself `replica` in the scheduler claim, which lasts `lease`
    /// without renewal.
    pub fn with_replica(mut self, replica: String, lease: Duration) -> Self {
        self.replica = replica;
        self.lease = lease;
        self
    }

    /// This replica's name in the scheduler claim.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// How long the scheduler claim lasts without renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Claims or renews the scheduler claim for this replica: true while it holds it.
    pub async fn lead(&self) -> Result<bool, DomainError> {
        let replica = self.replica.clone();
        let lease = self.lease;
        self.read(move |store| {
            store
                .lead(schema::SCHEDULER_LEADER, replica.as_bytes(), lease)
                .map_err(store_error)
        })
        .await
    }

    /// The same registry with `operators` allowed to manage instances.
    pub fn with_operators(mut self, operators: Vec<Principal>) -> Self {
        self.operators = operators;
        self
    }

    /// The region named in ARNs.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Now, by the registry's clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Ends every `WatchKeys` stream and scheduler loop; called at shutdown so in-flight
    /// streams do not hold the server open.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Registry::close`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|closing| *closing).await;
    }

    /// Runs `body` as one store transaction and flushes before returning, so nothing is
    /// acknowledged before it is on disk (concurrent writers share transactions, as far as the
    /// engine allows, and flushes: [`kms_store::CommitQueue::commit_durable`],
    /// [`kms_store::GroupFlush`]); then wakes the `WatchKeys` streams if it appended key
    /// events (they read them from the store). The body returns its value and the key events
    /// its writes appended; it may run more than once.
    async fn commit<T: Send + 'static>(
        &self,
        body: impl Fn(&mut dyn Txn) -> TxResult<(T, Vec<KeyEvent>)> + Send + 'static,
    ) -> Result<T, DomainError> {
        let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&attempts);
        let out = self
            .queue
            .commit_durable(&self.store, &self.durable, move |tx| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                body(tx)
            })
            .await;
        let retries = attempts
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1);
        if retries > 0 {
            crate::metrics::CONTROL.transaction_retries.inc_by(retries);
        }
        let (out, events) = out.map_err(tx_error)?;
        if !events.is_empty() {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(out)
    }

    /// [`Registry::commit`] for scheduled work: the transaction commits only while this
    /// replica holds the scheduler claim, so a replica that lost it (paused, cut off) cannot
    /// act on what it decided as leader.
    async fn commit_fenced<T: Send + 'static>(
        &self,
        body: impl Fn(&mut dyn Txn) -> TxResult<(T, Vec<KeyEvent>)> + Send + 'static,
    ) -> Result<T, DomainError> {
        let replica = self.replica.clone();
        self.commit(move |tx| {
            index::fence(tx, replica.as_bytes())?;
            body(tx)
        })
        .await
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

    /// Runs a store read of a few keys: in place when the engine's reads do not block
    /// ([`Store::reads_block`]), where a hand-off to a blocking thread would cost more than
    /// the read; off the async workers otherwise.
    async fn read_point<T: Send + 'static>(
        &self,
        op: impl FnOnce(&S) -> Result<T, DomainError> + Send + 'static,
    ) -> Result<T, DomainError> {
        if self.store.reads_block() {
            self.read(op).await
        } else {
            op(&self.store)
        }
    }

    /// The key `key_ref` names, if `caller` may perform `action` on it under the key's
    /// policy (the default one, or its stored document). For reads; a write decides again
    /// inside its transaction ([`authorize_in`]).
    pub async fn resolve(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        action: &str,
    ) -> Result<KeyRecord, DomainError> {
        let region = self.region.clone();
        let account = *caller.account();
        let (record, instance_owner) = self
            .read_point(move |store| {
                let record = load_ref(store, &region, &account, key_ref)?;
                let instance_owner = match &record.instance {
                    Some(id) => index::load_instance(store, id)?.map(|i| i.owner),
                    None => None,
                };
                Ok((record, instance_owner))
            })
            .await?;
        decide(caller, &record, instance_owner.as_ref(), action)?;
        Ok(record)
    }

    /// Resolves `key_ref` for `caller` and `action`, then applies `change` (see
    /// [`Registry::mutate_id`]).
    async fn mutate_key(
        &self,
        caller: &Principal,
        key_ref: KeyRef,
        action: &'static str,
        change: impl Fn(&mut KeyRecord) -> Result<(), DomainError> + Send + 'static,
    ) -> Result<KeyRecord, DomainError> {
        let id = self.resolve(caller, key_ref, action).await?.id;
        self.mutate_id(caller, id, action, change).await
    }

    /// Applies `change` to key `id` in one transaction that decides `action` for `caller`
    /// again on the record it changes, so a policy changed since the caller's key was
    /// resolved is seen. An unchanged record is not written.
    async fn mutate_id(
        &self,
        caller: &Principal,
        id: KeyId,
        action: &'static str,
        change: impl Fn(&mut KeyRecord) -> Result<(), DomainError> + Send + 'static,
    ) -> Result<KeyRecord, DomainError> {
        let caller = caller.clone();
        self.commit(move |tx| {
            let old = index::get_key(tx, &id)?.ok_or(Abort::User(DomainError::KeyNotFound))?;
            authorize_in(tx, &caller, &old, action)?;
            let mut new = old.clone();
            index::user(change(&mut new))?;
            if new == old {
                return Ok((new, Vec::new()));
            }
            let event = index::put_key(tx, Some(&old), &new)?;
            Ok((new, vec![event]))
        })
        .await
    }

    fn check_operator(&self, caller: &Principal) -> Result<(), DomainError> {
        if self.operators.contains(caller) {
            Ok(())
        } else {
            Err(DomainError::NoPermission)
        }
    }

    fn is_operator(&self, caller: &Principal) -> bool {
        self.operators.contains(caller)
    }
}

/// The policy decision for `caller` and `action` on `record`, whose instance (if shared) is
/// owned by `instance_owner`.
fn decide(
    caller: &Principal,
    record: &KeyRecord,
    instance_owner: Option<&AccountId>,
    action: &str,
) -> Result<(), DomainError> {
    let ownership = policy::KeyOwnership {
        owner: &record.account,
        instance_owner: instance_owner.filter(|o| **o != record.account),
    };
    policy::decide_stored(caller, ownership, record.policy.as_deref(), action)
}

/// Which keys a caller may describe, for listings: a listing shows only keys the caller may
/// `DescribeKey`, so a key's policy hides its description, aliases and tags there too.
/// Instance owners are read once per instance.
struct Describable {
    caller: Principal,
    owners: std::collections::HashMap<kms_types::InstanceId, Option<AccountId>>,
}

impl Describable {
    fn new(caller: &Principal) -> Self {
        Self {
            caller: caller.clone(),
            owners: std::collections::HashMap::new(),
        }
    }

    fn allows<S: Store>(&mut self, store: &S, record: &KeyRecord) -> Result<bool, DomainError> {
        let owner = match &record.instance {
            None => None,
            Some(id) => match self.owners.get(id) {
                Some(owner) => *owner,
                None => {
                    let owner = index::load_instance(store, id)?.map(|i| i.owner);
                    self.owners.insert(id.clone(), owner);
                    owner
                }
            },
        };
        let action = kms_types::authz::Rpc::DescribeKey.action(kms_types::authz::Touch::Key);
        Ok(decide(&self.caller, record, owner.as_ref(), action).is_ok())
    }
}

/// [`decide`] inside a transaction: the instance is read in it too, so the decision and the
/// write it guards see the same policy and the same instance owner.
fn authorize_in(
    tx: &mut dyn Txn,
    caller: &Principal,
    record: &KeyRecord,
    action: &str,
) -> TxResult<()> {
    let instance_owner = match &record.instance {
        Some(id) => index::get_instance(tx, id)?.map(|i| i.owner),
        None => None,
    };
    index::user(decide(caller, record, instance_owner.as_ref(), action))
}

/// Resolves a key reference to its record: aliases in `account`'s namespace, ARNs only in
/// this region and for the account they name.
fn load_ref<S: Store>(
    store: &S,
    region: &str,
    account: &AccountId,
    key_ref: KeyRef,
) -> Result<KeyRecord, DomainError> {
    let id = match key_ref {
        KeyRef::Id(id) => id,
        KeyRef::Alias(alias) => index::load_key_id(store, &schema::alias(account, &alias))?
            .ok_or(DomainError::AliasNotFound)?,
        KeyRef::Arn {
            region: arn_region,
            account: arn_account,
            key_id,
        } => {
            let record = index::load_key(store, &key_id)?.ok_or(DomainError::KeyNotFound)?;
            if arn_region != region || record.account != arn_account {
                return Err(DomainError::KeyNotFound);
            }
            return Ok(record);
        }
    };
    index::load_key(store, &id)?.ok_or(DomainError::KeyNotFound)
}

#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod tests;
