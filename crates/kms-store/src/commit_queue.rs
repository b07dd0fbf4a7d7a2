//! Batched commits: transaction bodies submitted concurrently run one after another inside one
//! store transaction, each in a layer of its own, so a body that aborts leaves the others.
//!
//! Why: some engines pay per transaction far more than per write. sled seals and writes its
//! log buffer twice for every transaction (a `pwrite` and a `sync_file_range` each), which
//! under many concurrent writers cost the control plane more CPU than the writes themselves.
//! Run in one transaction, N bodies pay that once.
//!
//! How: a caller queues its body. If no batch is running it takes the queue (its own body and
//! every body queued since, up to the engine's [`Store::commit_batch_limit`]) and runs it;
//! otherwise it waits, and is served by a batch that starts after the one running. Inside the
//! batch each body writes to a layer of staged writes over the transaction: when the body
//! returns `Ok` the layer's writes go into the transaction, when it aborts they are dropped.
//! Bodies see the writes of the bodies before them, so the outcome is that of running them one
//! by one in queue order. If the batch cannot commit (an engine failure, or a body's failed
//! store operation), each body of it runs again in a transaction of its own, so one body's
//! failure is its own.

use std::convert::Infallible;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::staged::Staged;
use crate::{Abort, Store, StoreError, TxError, Txn};

/// Bodies an engine that batches ([`Store::commit_batch_limit`]) runs in one transaction at
/// most: enough to take every writer of a busy control plane at once, few enough that one
/// batch's bodies stay a few milliseconds of work.
pub(crate) const BATCH_LIMIT: usize = 64;

/// A type-erased body: it runs against a transaction and keeps its value aside.
type Body<E> = Box<dyn Fn(&mut dyn Txn) -> Result<(), Abort<E>> + Send>;

/// Hands a body's outcome to the caller that queued it.
type Finish<E> = Box<dyn FnOnce(Result<(), TxError<E>>) + Send>;

struct Job<E> {
    body: Body<E>,
    /// Taken when the outcome is handed over; a job dropped before that (its batch's thread
    /// unwound) hands over an internal error, so its caller does not wait forever.
    finish: Option<Finish<E>>,
}

impl<E> Job<E> {
    fn finish(mut self, result: Result<(), TxError<E>>) {
        if let Some(finish) = self.finish.take() {
            finish(result);
        }
    }
}

impl<E> Drop for Job<E> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish(Err(TxError::Store(StoreError::Internal(
                "the batch this transaction was in failed".to_owned(),
            ))));
        }
    }
}

/// The running batch's turn; ending it, even by unwinding, lets the next batch start.
struct Turn<'q, E>(&'q CommitQueue<E>);

impl<E> Drop for Turn<'_, E> {
    fn drop(&mut self) {
        lock(&self.0.state).running = false;
        self.0.served.notify_all();
    }
}

/// Runs concurrently submitted transaction bodies in as few store transactions as the engine
/// allows. One queue per store.
pub struct CommitQueue<E> {
    state: Mutex<Queue<E>>,
    served: Condvar,
}

struct Queue<E> {
    waiting: Vec<Job<E>>,
    running: bool,
}

impl<E> Default for CommitQueue<E> {
    fn default() -> Self {
        Self {
            state: Mutex::new(Queue {
                waiting: Vec::new(),
                running: false,
            }),
            served: Condvar::new(),
        }
    }
}

impl<E> std::fmt::Debug for CommitQueue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitQueue").finish_non_exhaustive()
    }
}

impl<E: Send + 'static> CommitQueue<E> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `body` as [`Store::transaction`] would, possibly in one transaction with bodies
    /// other threads submit meanwhile. Blocks until its outcome is known: on `Ok` its writes
    /// are committed (and, like any commit, not yet flushed). `body` may run more than once.
    pub fn commit<S: Store, T: Send + 'static>(
        &self,
        store: &S,
        body: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>> + Send + 'static,
    ) -> Result<T, TxError<E>> {
        if store.commit_batch_limit() <= 1 {
            return store.transaction(body);
        }
        // The value of the body's last run, and the outcome once its batch is done.
        let value = Arc::new(Mutex::new(None));
        let outcome = Arc::new(Mutex::new(None));
        let job = {
            let kept = Arc::clone(&value);
            let outcome = Arc::clone(&outcome);
            Job::<E> {
                body: Box::new(move |tx| {
                    let out = body(tx)?;
                    *lock(&value) = Some(out);
                    Ok(())
                }),
                finish: Some(Box::new(move |result| {
                    let result = result.and_then(|()| {
                        lock(&kept).take().ok_or_else(|| {
                            TxError::Store(StoreError::Internal(
                                "a committed body left no value".to_owned(),
                            ))
                        })
                    });
                    *lock(&outcome) = Some(result);
                })),
            }
        };
        let mut state = lock(&self.state);
        state.waiting.push(job);
        loop {
            if let Some(result) = lock(&outcome).take() {
                return result;
            }
            if !state.running {
                state.running = true;
                let take = state.waiting.len().min(store.commit_batch_limit());
                let batch: Vec<Job<E>> = state.waiting.drain(..take).collect();
                drop(state);
                {
                    let _turn = Turn(self);
                    run(store, batch);
                }
                state = lock(&self.state);
                continue;
            }
            state = self
                .served
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `batch` in one transaction, or each of its bodies alone if that cannot commit, and
/// finishes every job.
fn run<S: Store, E>(store: &S, batch: Vec<Job<E>>) {
    if batch.len() > 1 {
        let together = store.transaction::<_, Infallible>(|tx| {
            let mut aborted = Vec::with_capacity(batch.len());
            for job in &batch {
                let mut layer = Staged::over(&mut *tx);
                match (job.body)(&mut layer) {
                    Ok(()) => {
                        for (key, value) in layer.writes {
                            match value {
                                Some(value) => tx.put(&key, &value)?,
                                None => tx.delete(&key)?,
                            }
                        }
                        aborted.push(None);
                    }
                    Err(Abort::User(e)) => aborted.push(Some(e)),
                    Err(Abort::Store(e)) => return Err(Abort::Store(e)),
                }
            }
            Ok(aborted)
        });
        if let Ok(aborted) = together {
            for (job, aborted) in batch.into_iter().zip(aborted) {
                job.finish(aborted.map_or(Ok(()), |e| Err(TxError::Aborted(e))));
            }
            return;
        }
    }
    for job in batch {
        let alone = store.transaction(|tx| (job.body)(tx));
        job.finish(alone);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::Ordering;
    use std::sync::mpsc;

    use super::*;
    use crate::abort;
    use crate::counting::Counting;

    /// A test body: its value, or why it gave up.
    type TestBody = Box<dyn Fn(&mut dyn Txn) -> Result<u32, Abort<String>> + Send>;

    /// Queues `bodies` behind a first body that holds the batch until they all wait, so they
    /// run as the next batch; returns their outcomes in order.
    fn queued_behind_one(
        store: &Counting,
        bodies: Vec<TestBody>,
    ) -> Vec<Result<u32, TxError<String>>> {
        let queue = CommitQueue::<String>::new();
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let count = bodies.len();
        std::thread::scope(|scope| {
            let (queue, store) = (&queue, store);
            let first = scope.spawn(move || {
                queue.commit(store, move |tx| {
                    lock(&held).recv().ok();
                    tx.put(b"first", b"1")?;
                    Ok(0)
                })
            });
            while !lock(&queue.state).running {
                std::thread::yield_now();
            }
            let rest: Vec<_> = bodies
                .into_iter()
                .map(|body| scope.spawn(move || queue.commit(store, body)))
                .collect();
            while lock(&queue.state).waiting.len() < count {
                std::thread::yield_now();
            }
            release.send(()).unwrap();
            assert_eq!(first.join().unwrap().unwrap(), 0);
            rest.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    fn writer(n: u32) -> TestBody {
        Box::new(move |tx| {
            let seen = tx.get(b"counter")?.map_or(0, |b| b.len());
            tx.put(b"counter", &vec![0; seen + 1])?;
            tx.put(format!("body/{n}").as_bytes(), b"x")?;
            Ok(n)
        })
    }

    #[test]
    fn bodies_queued_behind_a_batch_commit_together_and_an_abort_is_their_own() {
        let store = Counting::default();
        let mut bodies: Vec<_> = (1..=9).map(writer).collect();
        bodies.insert(
            4,
            Box::new(|tx: &mut dyn Txn| {
                tx.put(b"counter", b"clobbered")?;
                tx.put(b"aborted", b"x")?;
                abort("refused".to_owned())
            }),
        );
        let outcomes = queued_behind_one(&store, bodies);

        // The first body alone, then the ten queued behind it in one transaction.
        assert_eq!(store.transactions.load(Ordering::SeqCst), 2);
        let mut committed = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(n) => committed.push(n),
                Err(TxError::Aborted(e)) => assert_eq!(e, "refused"),
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(committed, (1..=9).collect::<Vec<_>>());
        // Each body saw the writes of those before it, and none of the aborted one's.
        assert_eq!(store.get(b"counter").unwrap().unwrap().len(), 9);
        assert_eq!(store.get(b"aborted").unwrap(), None);
        for n in 1..=9 {
            assert!(store.get(format!("body/{n}").as_bytes()).unwrap().is_some());
        }
    }

    #[test]
    fn a_body_whose_store_operation_fails_fails_alone() {
        let store = Counting::default();
        let mut bodies: Vec<_> = (1..=4).map(writer).collect();
        bodies.insert(
            2,
            Box::new(|tx: &mut dyn Txn| {
                tx.put(b"broken", b"x")?;
                Err(StoreError::Corrupt("a record does not decode".to_owned()).into())
            }),
        );
        let outcomes = queued_behind_one(&store, bodies);

        // The batch could not commit, so each of its five bodies ran alone.
        assert_eq!(store.transactions.load(Ordering::SeqCst), 1 + 1 + 5);
        assert!(matches!(
            outcomes[2],
            Err(TxError::Store(StoreError::Corrupt(_)))
        ));
        let committed: Vec<u32> = outcomes.into_iter().filter_map(Result::ok).collect();
        assert_eq!(committed, vec![1, 2, 3, 4]);
        assert_eq!(store.get(b"counter").unwrap().unwrap().len(), 4);
        assert_eq!(store.get(b"broken").unwrap(), None);
    }
}
