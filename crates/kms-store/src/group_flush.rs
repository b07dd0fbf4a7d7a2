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
    use crate::counting::Counting;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn every_caller_is_covered_by_a_flush_that_began_after_it() {
        let store = Arc::new(Counting::default());
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
        let store = Counting::default();
        let group = GroupFlush::new();
        store.fail_flush.store(true, Ordering::SeqCst);
        assert!(group.flush(&store).is_err());
        store.fail_flush.store(false, Ordering::SeqCst);
        group.flush(&store).unwrap();
        assert_eq!(store.flushes.load(Ordering::SeqCst), 2);
    }
}
