//! A memory store that counts what is asked of it, for the unit tests of what drives a store
//! from many threads ([`crate::GroupFlush`], [`crate::CommitQueue`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{Abort, Entry, MemoryStore, Notify, Snapshot, Store, StoreError, TxError, Txn};

#[derive(Default)]
pub(crate) struct Counting {
    inner: MemoryStore,
    /// Transactions begun.
    pub(crate) transactions: AtomicU64,
    /// Flushes begun.
    pub(crate) flushes: AtomicU64,
    /// Commits a test says it made (it counts them itself: see `begun_after`).
    pub(crate) committed: AtomicU64,
    /// The highest of `committed` when a flush began: every such commit is covered by it.
    pub(crate) begun_after: AtomicU64,
    /// Flushes fail while set.
    pub(crate) fail_flush: AtomicBool,
}

impl Store for Counting {
    fn commit_batch_limit(&self) -> usize {
        self.inner.commit_batch_limit()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan_prefix(prefix, after, limit)
    }

    fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        self.inner.snapshot()
    }

    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>>,
    ) -> Result<T, TxError<E>> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.inner.transaction(f)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let now = self.committed.load(Ordering::SeqCst);
        self.begun_after.fetch_max(now, Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::SeqCst);
        std::thread::yield_now();
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk full".into()));
        }
        Ok(())
    }

    fn subscribe(&self, prefix: &[u8], notify: Notify) -> Result<(), StoreError> {
        self.inner.subscribe(prefix, notify)
    }

    fn lead(
        &self,
        key: &[u8],
        holder: &[u8],
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.inner.lead(key, holder, ttl)
    }
}
