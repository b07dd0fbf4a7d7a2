//! The in-memory engine: a mutex around a `BTreeMap`, for tests and development.
//!
//! A transaction holds the lock for its whole body and stages writes in an overlay that is
//! applied only when the body returns `Ok`, so transactions are trivially serializable and never
//! retried; a snapshot copies the map under the same lock. A poisoned lock is recovered: a
//! panicking body never got to apply its overlay, so the map is still consistent.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use crate::staged::Staged;
use crate::{Abort, Entry, Notify, Snapshot, Store, StoreError, Subscribers, TxError, Txn};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// A [`Store`] that keeps everything in process memory; nothing survives a restart.
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<Map>,
    subscribers: Subscribers,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the contents: values hold wrapped key material.
        f.debug_struct("MemoryStore")
            .field("entries", &self.lock().len())
            .finish()
    }
}

impl Store for MemoryStore {
    /// Reads come from memory, or the local disk at worst.
    fn reads_block(&self) -> bool {
        false
    }

    /// Batches as sled does, so that code tested on this engine runs batched commits too.
    fn commit_batch_limit(&self) -> usize {
        crate::commit_queue::BATCH_LIMIT
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let map = self.lock();
        Ok(map
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// A copy of the map, made under the lock that transactions hold.
    fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        let copy: Vec<Entry> = self
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Box::new(copy.into_iter().map(Ok)))
    }

    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>>,
    ) -> Result<T, TxError<E>> {
        let mut map = self.lock();
        let mut txn = Staged::over(&*map);
        match f(&mut txn) {
            Ok(out) => {
                let writes = txn.writes;
                let written: Vec<Vec<u8>> = writes.keys().cloned().collect();
                for (key, value) in writes {
                    match value {
                        Some(value) => map.insert(key, value),
                        None => map.remove(&key),
                    };
                }
                drop(map);
                self.subscribers
                    .committed(written.iter().map(Vec::as_slice));
                Ok(out)
            }
            Err(Abort::User(e)) => Err(TxError::Aborted(e)),
            Err(Abort::Store(e)) => Err(TxError::Store(e.into_store_error())),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self, prefix: &[u8], notify: Notify) -> Result<(), StoreError> {
        self.subscribers.add(prefix, notify);
        Ok(())
    }

    fn lead(&self, key: &[u8], holder: &[u8], _ttl: Duration) -> Result<bool, StoreError> {
        crate::subscribers::claim_alone(self, key, holder)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    #[test]
    fn a_panicking_transaction_leaves_nothing_behind_and_the_store_usable() {
        let store = MemoryStore::new();
        store.put(b"k", b"before").unwrap();

        let result = catch_unwind(AssertUnwindSafe(|| {
            store.transaction::<(), ()>(|txn| {
                txn.put(b"k", b"during")?;
                txn.put(b"other", b"x")?;
                panic!("transaction body panics");
            })
        }));
        assert!(result.is_err());
        assert!(store.map.is_poisoned());

        assert_eq!(store.get(b"k").unwrap(), Some(b"before".to_vec()));
        assert_eq!(store.get(b"other").unwrap(), None);
        store.put(b"k", b"after").unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(b"after".to_vec()));
    }

    #[test]
    fn debug_does_not_print_contents() {
        let store = MemoryStore::new();
        store.put(b"key/1", b"secret-wrapped-bytes").unwrap();
        let shown = format!("{store:?}");
        assert_eq!(shown, "MemoryStore { entries: 1 }");
    }
}
