//! The control plane's narrow key-value store: the `Store` trait, its errors, and three engines.
//!
//! Keys and values are byte strings; the domain layer chooses key prefixes (`key/<id>`,
//! `alias/<account>/<name>`, ...) and wraps every value with [`encode_record`] so it carries a
//! format version. Every write goes through [`Store::transaction`], so a record and its
//! secondary indexes change together or not at all.
//!
//! Engines: [`SledStore`] (on disk, one process), [`EtcdStore`] (an etcd cluster that several
//! processes share) and [`MemoryStore`] (tests, dev). All pass [`conformance::run_all`]; a new
//! engine must too. With the `testing` feature, `etcd_testing` starts real etcd processes.
//! [`backup`] writes a snapshot to a file and restores one into an empty store; [`config`] is
//! the `[store]` section of the control plane's configuration. [`CommitQueue`] runs
//! transactions that many callers submit at once in as few engine transactions as the engine
//! allows.
//!
//! ```
//! use kms_store::{MemoryStore, Store, TxError, abort, decode_record, encode_record};
//!
//! #[derive(Debug, PartialEq)]
//! enum CreateError {
//!     AliasTaken,
//! }
//!
//! let store = MemoryStore::new();
//! let create = |id: &str| {
//!     store.transaction(|txn| {
//!         if txn.get(b"alias/acct/main")?.is_some() {
//!             return abort(CreateError::AliasTaken);
//!         }
//!         let key = format!("key/{id}");
//!         txn.put(key.as_bytes(), &encode_record(1, b"record body"))?;
//!         txn.put(b"alias/acct/main", key.as_bytes())?;
//!         Ok(key)
//!     })
//! };
//!
//! assert_eq!(create("1").unwrap(), "key/1");
//! assert!(matches!(create("2"), Err(TxError::Aborted(CreateError::AliasTaken))));
//! store.flush().unwrap();
//!
//! let stored = store.get(b"key/1").unwrap().unwrap();
//! assert_eq!(decode_record(&stored).unwrap(), (1, &b"record body"[..]));
//! assert_eq!(store.get(b"key/2").unwrap(), None);
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub mod backup;
mod commit_queue;
pub mod config;
pub mod conformance;
#[cfg(test)]
mod counting;
mod etcd_engine;
#[cfg(feature = "testing")]
pub mod etcd_testing;
mod group_flush;
mod memory;
mod record;
mod sled_engine;
mod staged;
mod subscribers;

pub use commit_queue::{CommitQueue, Durable};
pub use etcd_engine::{EtcdOptions, EtcdStore, EtcdTls};
pub use group_flush::GroupFlush;
pub use memory::MemoryStore;
pub use record::{RECORD_HEADER_LEN, RECORD_MAGIC, decode_record, encode_record};
pub use sled_engine::SledStore;
pub use subscribers::Subscribers;

/// A stored key and its value, as returned by [`Store::scan_prefix`].
pub type Entry = (Vec<u8>, Vec<u8>);

/// Every entry of a store as of one moment, in ascending byte order of key, as returned by
/// [`Store::snapshot`]. An error item means reading further failed; nothing follows it.
pub type Snapshot<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + 'a>;

/// What [`Store::subscribe`] calls when something under its prefix changed. It runs on an
/// engine's thread: it must return quickly (wake a task, set a flag) and never call the store.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A synchronous, ordered key-value store with serializable transactions.
///
/// Implementations are cheap to share (`&self` everywhere) and safe to call from many threads.
/// Calls block: from async code, run them on a blocking thread.
///
/// Reads outside a transaction see the latest committed state; they are not a snapshot across
/// calls (two `get`s may straddle a commit). Read inside [`Store::transaction`] when several
/// keys must agree.
pub trait Store: Send + Sync + 'static {
    /// The committed value under `key`, or `None` if there is none.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Committed entries whose key starts with `prefix`, in ascending byte order of key.
    ///
    /// With `after: Some(k)` only keys strictly greater than `k` are returned, so a caller pages
    /// by passing the last key of the previous page. At most `limit` entries are returned;
    /// `limit == 0` returns none. An empty `prefix` matches every key. A page is consistent in
    /// itself, but entries may change between pages.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// Every entry of the store as of one moment, in ascending byte order of key: each commit
    /// that returned before this call is in it, none that began after this call returned is,
    /// and no commit is in it in part. Commits go on while it is read (it is taken online).
    ///
    /// How an engine keeps that moment: one that cannot read a past state (sled, memory) copies
    /// every entry while it keeps commits out, so the copy costs memory the size of the store
    /// and holds up commits while it is made; one that can (etcd) reads pages at one revision
    /// as the iterator is consumed, and fails with [`StoreError::Unavailable`] if that
    /// revision is compacted away before the last page (take the snapshot again).
    fn snapshot(&self) -> Result<Snapshot<'_>, StoreError>;

    /// Whether a read outside a transaction ([`Store::get`], [`Store::scan_prefix`]) may wait
    /// on something slower than local memory and disk, such as the network. Async callers run
    /// such reads on a blocking thread and may run the others in place, where a thread
    /// hand-off would cost more than the read. The default, `true`, is the safe answer.
    fn reads_block(&self) -> bool {
        true
    }

    /// How many transaction bodies a [`CommitQueue`] may run in one transaction of this engine.
    /// An engine that pays much more per transaction than per write (sled) allows many; one
    /// that limits a transaction's size (etcd) keeps the default, 1: each body alone.
    fn commit_batch_limit(&self) -> usize {
        1
    }

    /// Runs `f` atomically and serializably against the store, and commits its writes.
    ///
    /// - All writes made through the [`Txn`] commit together when `f` returns `Ok`, or none do.
    /// - Reads through the `Txn` see the transaction's own earlier writes.
    /// - `f` may run more than once (an engine retries it on conflict), so it must have no side
    ///   effects outside the `Txn` and must not call back into this store (an engine may hold a
    ///   lock while `f` runs).
    /// - `Err(Abort::User(e))` from `f` (see [`abort`]) discards every write and returns
    ///   [`TxError::Aborted`]`(e)`.
    /// - A failed `Txn` operation returns [`TxStoreError`]; propagate it with `?`. It discards
    ///   every write and returns [`TxError::Store`] (or retries `f`, for a conflict). An engine
    ///   never commits a transaction in which an operation failed, even if `f` swallowed the
    ///   error and returned `Ok`.
    ///
    /// A commit is atomic and visible to later reads, but not necessarily on disk: call
    /// [`Store::flush`] before acknowledging it to anyone.
    fn transaction<T, E>(
        &self,
        f: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>>,
    ) -> Result<T, TxError<E>>;

    /// Makes every write committed so far durable (fsync) before returning. An engine whose
    /// commits are durable when they return (a replicated one) does nothing here.
    fn flush(&self) -> Result<(), StoreError>;

    /// Calls `notify` after each commit that wrote a key starting with `prefix`, whichever
    /// process made it (for an engine several processes share), for as long as the store
    /// lives.
    ///
    /// A notification carries no data: it may be spurious, or stand for several commits, and
    /// reads made after it see the commits it stands for. An engine that loses its change feed
    /// for a while (a broken connection) notifies once it has it back, so a subscriber reads
    /// again whatever it may have missed. Commits are not necessarily flushed when notified.
    fn subscribe(&self, prefix: &[u8], notify: Notify) -> Result<(), StoreError>;

    /// Claims `key` for `holder`, or renews the claim, for `ttl`: `Ok(true)` while `holder`
    /// holds it, `Ok(false)` while another holder does.
    ///
    /// The claim is `key`'s value (`holder`), so a transaction fences on it by reading `key`
    /// and aborting unless it holds `holder`: a transaction that read it conflicts with a
    /// claim that lapsed or moved before it committed. In an engine several processes share,
    /// the key vanishes when its holder has not renewed it for `ttl`, and only then can
    /// another holder claim it; call this every `ttl / 3` or so to keep it. In an engine only
    /// one process can open (sled, memory) every claim succeeds and replaces the last.
    fn lead(&self, key: &[u8], holder: &[u8], ttl: Duration) -> Result<bool, StoreError>;

    /// Sets `key` to `value` in a transaction of its own.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.transaction::<_, Infallible>(|txn| Ok(txn.put(key, value)?))
            .map_err(StoreError::from)
    }

    /// Removes `key` (a no-op if absent) in a transaction of its own.
    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.transaction::<_, Infallible>(|txn| Ok(txn.delete(key)?))
            .map_err(StoreError::from)
    }
}

/// The view of the store inside [`Store::transaction`]: reads see this transaction's writes.
///
/// Errors are [`TxStoreError`]; `?` converts them into [`Abort`] so the engine can roll back or
/// retry. Range scans are deliberately absent: index maintenance needs only point operations.
pub trait Txn {
    /// The value under `key` as this transaction sees it.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, TxStoreError>;
    /// Sets `key` to `value` when the transaction commits.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), TxStoreError>;
    /// Removes `key` (a no-op if absent) when the transaction commits.
    fn delete(&mut self, key: &[u8]) -> Result<(), TxStoreError>;
}

/// Why a storage engine failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the underlying files failed (disk full, permissions, lock held by
    /// another process, ...).
    #[error("storage i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes are not what they should be: engine-level corruption, or a value that is not
    /// a valid record.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The engine cannot serve requests right now but may later (a remote or replicated engine
    /// that lost its peers); callers may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The engine reported a bug or an unsupported use; not retryable.
    #[error("storage engine failed: {0}")]
    Internal(String),
}

impl StoreError {
    /// A copy of the error, for each of several callers it fails (`StoreError` is not
    /// `Clone`: an `io::Error` is kept by kind and message).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            StoreError::Io(io) => StoreError::Io(std::io::Error::new(io.kind(), io.to_string())),
            StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Internal(m) => StoreError::Internal(m.clone()),
        }
    }
}

/// The outcome of a [`Store::transaction`] that did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TxError<E> {
    /// The transaction body returned `Err(Abort::User(e))`; nothing was written.
    #[error("transaction aborted: {0}")]
    Aborted(E),
    /// The engine failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TxError<Infallible>> for StoreError {
    fn from(e: TxError<Infallible>) -> Self {
        match e {
            TxError::Aborted(never) => match never {},
            TxError::Store(e) => e,
        }
    }
}

/// How a transaction body stops without committing.
#[derive(Debug)]
pub enum Abort<E> {
    /// The body gave up with its own error `E`; [`Store::transaction`] returns
    /// [`TxError::Aborted`]`(E)`. Build it with [`abort`].
    User(E),
    /// A store operation failed; [`Store::transaction`] returns [`TxError::Store`], or retries
    /// the body if the failure was a conflict. Produced by `?` on a [`Txn`] method or a
    /// [`StoreError`] (such as a corrupt record found inside the transaction).
    Store(TxStoreError),
}

/// `Err(Abort::User(e))`, for `return abort(e)` inside a transaction body.
pub fn abort<T, E>(e: E) -> Result<T, Abort<E>> {
    Err(Abort::User(e))
}

impl<E> From<TxStoreError> for Abort<E> {
    fn from(e: TxStoreError) -> Self {
        Abort::Store(e)
    }
}

impl<E> From<StoreError> for Abort<E> {
    fn from(e: StoreError) -> Self {
        Abort::Store(TxStoreError::store(e))
    }
}

/// A failed operation inside a transaction. Opaque: propagate it with `?`.
///
/// It may stand for a conflict that the engine resolves by running the body again; that is why
/// it is not a plain [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TxStoreError(TxFailure);

#[derive(Debug, thiserror::Error)]
enum TxFailure {
    #[error("transaction conflicted with another and must be retried")]
    Conflict,
    #[error(transparent)]
    Store(StoreError),
}

impl TxStoreError {
    pub(crate) fn conflict() -> Self {
        TxStoreError(TxFailure::Conflict)
    }

    pub(crate) fn store(e: StoreError) -> Self {
        TxStoreError(TxFailure::Store(e))
    }

    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self.0, TxFailure::Conflict)
    }

    /// The error to return from `transaction` when this failure ends it for good. A conflict
    /// only gets here if it escaped the engine that raised it (e.g. carried into another
    /// transaction), which is a caller bug.
    pub(crate) fn into_store_error(self) -> StoreError {
        match self.0 {
            TxFailure::Conflict => StoreError::Internal(
                "a transaction conflict escaped the transaction that raised it".to_owned(),
            ),
            TxFailure::Store(e) => e,
        }
    }
}
