//! The on-disk engine: one sled database, default tree only.
//!
//! A transaction runs alone: it holds the store's writer lock from its first read to its
//! commit, stages its writes, and applies them as one `sled::Batch`, which sled writes to its
//! log atomically (on recovery all of it or none). No transaction can then invalidate another's
//! reads, so none is retried, and a write is not preceded by the read that a sled transaction
//! makes of every key it inserts. Writers queue anyway ([`crate::CommitQueue`] runs the bodies
//! of concurrent writers one after another in one transaction), so the lock costs no
//! concurrency. Reads outside transactions take no lock of ours: sled's own keeps a `get` from
//! running while a batch applies.
//!
//! sled cannot read a past state, so a snapshot copies every entry under the writer lock.
//! sled errors are converted in one place, [`to_store_error`].

use std::fmt;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::staged::{Base, Staged};
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
    /// Held by a transaction from its first read to its commit, so no other write comes
    /// between what it read and what it writes, and by a snapshot while it copies, so the copy
    /// sees no commit in part. Holds nothing: sled keeps the data.
    writer: Mutex<()>,
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
            writer: Mutex::new(()),
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

impl Store for SledStore {
    /// Reads come from memory, or the local disk at worst.
    fn reads_block(&self) -> bool {
        false
    }

    /// sled seals and writes its log buffer twice for every atomic batch (each transaction is
    /// one), whatever its size.
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
            let _alone = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
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
        let alone = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut txn = Staged::over(Reads {
            db: &self.db,
            failed: None,
        });
        let out = f(&mut txn);
        // A failed read decides the outcome even if the body swallowed its error.
        if let Some(failure) = txn.base.failed.take() {
            return Err(TxError::Store(failure));
        }
        let out = match out {
            Ok(out) => out,
            Err(Abort::User(e)) => return Err(TxError::Aborted(e)),
            Err(Abort::Store(e)) => return Err(TxError::Store(e.into_store_error())),
        };
        let mut batch = sled::Batch::default();
        for (key, value) in &txn.writes {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        self.db.apply_batch(batch).map_err(to_store_error)?;
        drop(alone);
        self.subscribers
            .committed(txn.writes.keys().map(Vec::as_slice));
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

/// What a transaction reads under its staged writes: the database as it is, no other writer
/// running. The first failed read is kept for the commit to refuse.
struct Reads<'a> {
    db: &'a sled::Db,
    failed: Option<StoreError>,
}

impl Base for Reads<'_> {
    fn read(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError> {
        match self.db.get(key) {
            Ok(value) => Ok(value.map(|v| v.to_vec())),
            Err(e) => {
                self.failed.get_or_insert(to_store_error(e.clone()));
                Err(TxStoreError::store(to_store_error(e)))
            }
        }
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
