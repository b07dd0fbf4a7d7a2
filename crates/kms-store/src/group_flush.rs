//! Group commit for [`Store::flush`]: many writers that each need "a flush that began after my
//! commit" share one.
//!
//! A writer takes a ticket after its commit returns. If no flush is running it runs one for
//! every ticket taken so far; otherwise it waits, and the flush that starts next covers it.
//! A ticket is done only when a flush that began after it was taken succeeded, so every
//! commit acknowledged through here is on disk. With N writers waiting, the store sees about
//! one flush per flush time instead of N.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::{Store, StoreError};

/// Shares flushes among concurrent writers of one store.
#[derive(Debug, Default)]
pub struct GroupFlush {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The last ticket taken.
    taken: u64,
    /// Every ticket up to this one is on disk.
    flushed: u64,
    /// A flush is in progress.
    running: bool,
}

impl GroupFlush {
    /// A flusher with no flush yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns once a flush of `store` that began after this call succeeded: the caller's
    /// earlier commits are on disk. Blocks. A failed flush fails the caller that ran it;
    /// callers waiting on it run the next one themselves.
    pub fn flush<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.taken += 1;
        let ticket = state.taken;
        loop {
            if state.flushed >= ticket {
                return Ok(());
            }
            if !state.running {
                state.running = true;
                let covers = state.taken;
                drop(state);
                let result = store.flush();
                state = self.lock();
                state.running = false;
                if result.is_ok() {
                    state.flushed = state.flushed.max(covers);
                }
                self.done.notify_all();
                return result;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemoryStore;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts flushes and checks each writer's commit is covered by a flush that began after
    /// it.
    struct Counting {
        inner: MemoryStore,
        flushes: AtomicU64,
        /// Highest commit number covered by a flush that has begun.
        begun_after: AtomicU64,
        committed: AtomicU64,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        fn new() -> Self {
            Self {
                inner: MemoryStore::new(),
                flushes: AtomicU64::new(0),
                begun_after: AtomicU64::new(0),
                committed: AtomicU64::new(0),
                fail: std::sync::atomic::AtomicBool::new(false),
            }
        }
    }

    #[test]
    fn every_caller_is_covered_by_a_flush_that_began_after_it() {
        let store = Arc::new(Counting::new());
        let group = Arc::new(GroupFlush::new());
        let covered = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, group, covered) =
                    (Arc::clone(&store), Arc::clone(&group), Arc::clone(&covered));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let mine = store.committed.fetch_add(1, Ordering::SeqCst) + 1;
                        group.flush(&*store).unwrap();
                        // A flush that began after this commit has completed.
                        assert!(store.begun_after.load(Ordering::SeqCst) >= mine);
                        covered.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(covered.load(Ordering::SeqCst), 1600);
        let flushes = store.flushes.load(Ordering::SeqCst);
        assert!((1..=1600).contains(&flushes), "{flushes}");
    }

    #[test]
    fn a_failed_flush_fails_its_caller_and_the_next_caller_flushes_again() {
        let store = Counting::new();
        let group = GroupFlush::new();
        store.fail.store(true, Ordering::SeqCst);
        assert!(group.flush(&store).is_err());
        store.fail.store(false, Ordering::SeqCst);
        group.flush(&store).unwrap();
        assert_eq!(store.flushes.load(Ordering::SeqCst), 2);
    }

    impl Store for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_prefix(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<crate::Entry>, StoreError> {
            self.inner.scan_prefix(prefix, after, limit)
        }
        fn snapshot(&self) -> Result<crate::Snapshot<'_>, StoreError> {
            self.inner.snapshot()
        }
        fn transaction<T, E>(
            &self,
            f: impl Fn(&mut dyn crate::Txn) -> Result<T, crate::Abort<E>>,
        ) -> Result<T, crate::TxError<E>> {
            self.inner.transaction(f)
        }
        fn flush(&self) -> Result<(), StoreError> {
            // Everything committed so far is covered by this flush.
            let now = self.committed.load(Ordering::SeqCst);
            self.begun_after.fetch_max(now, Ordering::SeqCst);
            self.flushes.fetch_add(1, Ordering::SeqCst);
            std::thread::yield_now();
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("disk full".into()));
            }
            Ok(())
        }
        fn subscribe(&self, prefix: &[u8], notify: crate::Notify) -> Result<(), StoreError> {
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
}
