//! The on-disk engine: one sled database, default tree only, sled's transactions.
//!
//! sled cannot read a past state, so a snapshot copies every entry while no transaction runs:
//! transactions share a gate that a snapshot takes alone. sled errors are converted in one
//! place, [`to_store_error`].

use std::cell::RefCell;
use std::fmt;
use std::ops::Bound;
use std::path::Path;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use crate::{
    Abort, Entry, Notify, Snapshot, Store, StoreError, Subscribers, TxError, TxStoreError, Txn,
};

/// A [`Store`] on a sled database directory.
///
/// sled holds an exclusive lock on the directory: a second open, from this or another process,
/// fails with [`StoreError::Io`] until the first store is dropped.
pub struct SledStore {
    db: sled::Db,
    subscribers: Subscribers,
    /// Held shared by every transaction and alone by a snapshot while it copies, so the copy
    /// sees no commit in part. Holds nothing: sled keeps the data.
    gate: RwLock<()>,
}

impl SledStore {
    /// Opens the database in directory `path`, creating it if it does not exist.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(to_store_error)?;
        Ok(Self {
            db,
            subscribers: Subscribers::default(),
            gate: RwLock::new(()),
        })
    }
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `sled::Db`'s own Debug dumps every entry, and values hold wrapped key material.
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// The one conversion from sled's errors.
fn to_store_error(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(e) => StoreError::Io(e),
        sled::Error::Corruption { at, .. } => {
            StoreError::Corrupt(format!("sled found corrupted data at {at:?}"))
        }
        sled::Error::CollectionNotFound(name) => {
            StoreError::Internal(format!("sled tree {name:?} does not exist"))
        }
        sled::Error::Unsupported(what) => {
            StoreError::Internal(format!("unsupported sled operation: {what}"))
        }
        sled::Error::ReportableBug(what) => StoreError::Internal(format!("sled bug: {what}")),
    }
}

/// What the transaction body's outcome becomes as sled's abort value.
enum Exit<E> {
    User(E),
    Store(StoreError),
}

impl Store for SledStore {
    /// Reads come from memory, or the local disk at worst.
    fn reads_block(&self) -> bool {
        false
    }

    /// sled seals and writes its log buffer twice for every transaction, whatever its size.
    fn commit_batch_limit(&self) -> usize {
        crate::commit_queue::BATCH_LIMIT
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.db.get(key).map_err(to_store_error)?;
        Ok(value.map(|v| v.to_vec()))
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
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for entry in self.db.range::<&[u8], _>((start, Bound::Unbounded)) {
            let (key, value) = entry.map_err(to_store_error)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        let copy = {
            let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
            self.db
                .iter()
                .map(|entry| {
                    let (key, value) = entry.map_err(to_store_error)?;
                    Ok((key.to_vec(), value.to_vec()))
                })
                .collect::<Result<Vec<Entry>, StoreError>>()?
        };
        Ok(Box::new(copy.into_iter().map(Ok)))
    }

    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>>,
    ) -> Result<T, TxError<E>> {
        // The keys the attempt that committed wrote, for the subscribers.
        let written = RefCell::new(Vec::new());
        let shared = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        let result = self.db.transaction(|tree| {
            let mut txn = SledTxn {
                tree,
                failed: None,
                written: Vec::new(),
            };
            let out = f(&mut txn);
            written.replace(std::mem::take(&mut txn.written));
            // A failed operation decides the outcome even if the body swallowed its error.
            if let Some(failure) = txn.failed {
                return Err(ConflictableTransactionError::from(failure));
            }
            match out {
                Ok(out) => Ok(out),
                Err(Abort::User(e)) => Err(ConflictableTransactionError::Abort(Exit::User(e))),
                Err(Abort::Store(e)) if e.is_conflict() => {
                    Err(ConflictableTransactionError::Conflict)
                }
                Err(Abort::Store(e)) => Err(ConflictableTransactionError::Abort(Exit::Store(
                    e.into_store_error(),
                ))),
            }
        });
        drop(shared);
        let out = result.map_err(|e| match e {
            TransactionError::Abort(Exit::User(e)) => TxError::Aborted(e),
            TransactionError::Abort(Exit::Store(e)) => TxError::Store(e),
            TransactionError::Storage(e) => TxError::Store(to_store_error(e)),
        })?;
        self.subscribers
            .committed(written.borrow().iter().map(Vec::as_slice));
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(to_store_error)?;
        Ok(())
    }

    fn subscribe(&self, prefix: &[u8], notify: Notify) -> Result<(), StoreError> {
        // The directory lock keeps other processes out: every commit is made here.
        self.subscribers.add(prefix, notify);
        Ok(())
    }

    fn lead(&self, key: &[u8], holder: &[u8], _ttl: Duration) -> Result<bool, StoreError> {
        crate::subscribers::claim_alone(self, key, holder)
    }
}

struct SledTxn<'a> {
    tree: &'a TransactionalTree,
    /// The first failed operation; the transaction must not commit once one failed.
    failed: Option<UnabortableTransactionError>,
    /// Keys put or deleted.
    written: Vec<Vec<u8>>,
}

impl SledTxn<'_> {
    fn check<T>(
        &mut self,
        result: Result<T, UnabortableTransactionError>,
    ) -> Result<T, TxStoreError> {
        result.map_err(|e| {
            let for_body = match &e {
                UnabortableTransactionError::Conflict => TxStoreError::conflict(),
                UnabortableTransactionError::Storage(inner) => {
                    TxStoreError::store(to_store_error(inner.clone()))
                }
            };
            self.failed.get_or_insert(e);
            for_body
        })
    }
}

impl Txn for SledTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        let value = self.check(self.tree.get(key))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxStoreError> {
        self.written.push(key.to_vec());
        self.check(self.tree.insert(key, value)).map(drop)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), TxStoreError> {
        self.written.push(key.to_vec());
        self.check(self.tree.remove(key)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sled_errors_map_to_the_matching_condition() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        assert!(matches!(
            to_store_error(sled::Error::Io(io)),
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied
        ));
        for e in [
            sled::Error::ReportableBug("x".to_owned()),
            sled::Error::Unsupported("y".to_owned()),
            sled::Error::CollectionNotFound(sled::IVec::from(&b"t"[..])),
        ] {
            let mapped = to_store_error(e);
            assert!(matches!(mapped, StoreError::Internal(_)), "{mapped:?}");
            assert!(!mapped.to_string().ends_with('.'));
        }
    }

    #[test]
    fn debug_does_not_print_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.put(b"key/1", b"secret-wrapped-bytes").unwrap();
        assert_eq!(format!("{store:?}"), "SledStore { .. }");
    }
}
