//! Batched commits: transaction bodies submitted concurrently run one after another inside one
//! store transaction, each in a layer of its own, so a body that aborts leaves the others.
//!
//! Why: some engines pay per transaction far more than per write. sled seals and writes its
//! log buffer twice for every transaction (a `pwrite` and a `sync_file_range` each), which
//! under many concurrent writers cost the control plane more CPU than the writes themselves.
//! Run in one transaction, N bodies pay that once.
//!
//! How: a caller queues its body and awaits its outcome. The caller that finds the queue idle
//! starts one blocking thread, the runner, which takes the queue (up to the engine's
//! [`Store::commit_batch_limit`] bodies at a time) and runs it as one batch, until the queue is
//! empty. Inside the batch each body writes to a layer of staged writes over the transaction:
//! when the body returns `Ok` the layer's writes go into the transaction, when it aborts they
//! are dropped. Bodies see the writes of the bodies before them, so the outcome is that of
//! running them one by one in queue order. If the batch cannot commit (an engine failure, or a
//! body's failed store operation), each body of it runs again in a transaction of its own, so
//! one body's failure is its own. Each committed batch is made durable (a flush) on a thread
//! of its own, which answers the batch's callers once the flush returns, while the runner
//! commits the next. So many writers cost a wake-up each, not a blocked thread apiece; those
//! hand-offs were a quarter of the control plane's time under many concurrent writers.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::runtime::Handle;

use crate::staged::Staged;
use crate::{Abort, Store, StoreError, TxError, Txn};

/// Bodies an engine that batches ([`Store::commit_batch_limit`]) runs in one transaction at
/// most: enough to take every writer of a busy control plane at once, few enough that one
/// batch's bodies stay a few milliseconds of work.
pub(crate) const BATCH_LIMIT: usize = 64;

/// A type-erased body: it runs against a transaction and keeps its value aside.
type Body<E> = Box<dyn Fn(&mut dyn Txn) -> Result<(), Abort<E>> + Send>;

/// What makes a committed batch durable (a flush) before its callers learn their outcome.
pub type Durable<S> = Arc<dyn Fn(&S) -> Result<(), StoreError> + Send + Sync>;

/// A job of a batch that ran, with its outcome.
type Ran<E> = (Job<E>, Result<(), TxError<E>>);

/// Hands a body's outcome to the caller that queued it.
type Finish<E> = Box<dyn FnOnce(Result<(), TxError<E>>) + Send>;

struct Job<E> {
    body: Body<E>,
    /// Taken when the outcome is handed over; a job dropped before that (its batch's thread
    /// unwound) hands over an internal error, so its caller does not wait forever.
    finish: Option<Finish<E>>,
}

impl<E: Send + 'static> Job<E> {
    /// A job running `body`, whose value (of its last run) goes to `finish` with the outcome.
    fn new<T: Send + 'static>(
        body: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>> + Send + 'static,
        finish: impl FnOnce(Result<T, TxError<E>>) + Send + 'static,
    ) -> Self {
        let value = Arc::new(Mutex::new(None));
        let kept = Arc::clone(&value);
        Job {
            body: Box::new(move |tx| {
                let out = body(tx)?;
                *lock(&value) = Some(out);
                Ok(())
            }),
            finish: Some(Box::new(move |result| {
                finish(result.and_then(|()| {
                    lock(&kept).take().ok_or_else(|| {
                        TxError::Store(StoreError::Internal(
                            "a committed body left no value".to_owned(),
                        ))
                    })
                }));
            })),
        }
    }
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

/// The runner's turn. It ends with the queue empty; if it
/// ends otherwise (its thread never ran because the runtime is shutting down, or the runner
/// itself failed) the bodies still queued fail, since no runner is left to serve them.
struct RunnerTurn<E> {
    queue: Arc<CommitQueue<E>>,
    /// Set when the runner returned with the queue empty (and already handed it over).
    ended: bool,
}

impl<E: Send + 'static> RunnerTurn<E> {
    fn run<S: Store>(mut self, store: &Arc<S>, durable: &Durable<S>, runtime: &Handle) {
        self.queue.drain(store, durable, runtime);
        self.ended = true;
    }
}

impl<E> Drop for RunnerTurn<E> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let stranded = {
            let mut state = lock(&self.queue.state);
            state.running = false;
            std::mem::take(&mut state.waiting)
        };
        drop(stranded);
    }
}

/// Runs concurrently submitted transaction bodies in as few store transactions as the engine
/// allows. One queue per store.
pub struct CommitQueue<E> {
    state: Mutex<Queue<E>>,
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
    /// others submit meanwhile: on `Ok` its writes are committed and `durable` has returned
    /// `Ok` since. A failed `durable` fails every body of its batch that committed. Needs a
    /// tokio runtime; `body` may run more than once. An engine that does not batch runs `body`
    /// alone on a blocking thread.
    pub async fn commit_durable<S: Store, T: Send + 'static>(
        self: &Arc<Self>,
        store: &Arc<S>,
        durable: &Durable<S>,
        body: impl Fn(&mut dyn Txn) -> Result<T, Abort<E>> + Send + 'static,
    ) -> Result<T, TxError<E>> {
        if store.commit_batch_limit() <= 1 {
            let (store, durable) = (Arc::clone(store), Arc::clone(durable));
            return tokio::task::spawn_blocking(move || {
                let out = store.transaction(body)?;
                durable(&*store)?;
                Ok(out)
            })
            .await
            .unwrap_or_else(|e| {
                Err(TxError::Store(StoreError::Internal(format!(
                    "the transaction's thread failed: {e}"
                ))))
            });
        }
        let (answer, outcome) = tokio::sync::oneshot::channel();
        let job = Job::new(body, move |result| {
            // The caller may have gone; the commit stands either way.
            let _ = answer.send(result);
        });
        let start = {
            let mut state = lock(&self.state);
            state.waiting.push(job);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let turn = RunnerTurn {
                queue: Arc::clone(self),
                ended: false,
            };
            let (store, durable) = (Arc::clone(store), Arc::clone(durable));
            let runtime = Handle::current();
            drop(tokio::task::spawn_blocking(move || {
                turn.run(&store, &durable, &runtime)
            }));
        }
        outcome.await.unwrap_or_else(|_| {
            Err(TxError::Store(StoreError::Internal(
                "the batch this transaction was in failed".to_owned(),
            )))
        })
    }

    /// Runs batches until the queue is empty. Each committed batch is made durable, and its
    /// callers answered, on a blocking thread of its own, so the next batch commits while the
    /// last one's flush runs (concurrent flushes share one through `durable`'s
    /// [`crate::GroupFlush`]).
    fn drain<S: Store>(&self, store: &Arc<S>, durable: &Durable<S>, runtime: &Handle) {
        let limit = store.commit_batch_limit().max(1);
        loop {
            let batch: Vec<Job<E>> = {
                let mut state = lock(&self.state);
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                let take = state.waiting.len().min(limit);
                state.waiting.drain(..take).collect()
            };
            // A body that panics fails its batch (the jobs, dropped as it unwinds, answer
            // with an error) and the runner goes on with the next; were it to stop instead,
            // a body queued meanwhile could find it still running and wait for nothing.
            let outcomes = match std::panic::catch_unwind(AssertUnwindSafe(|| run(&**store, batch)))
            {
                Ok(outcomes) => outcomes,
                Err(_) => continue,
            };
            if outcomes.iter().any(|(_, outcome)| outcome.is_ok()) {
                let (store, durable) = (Arc::clone(store), Arc::clone(durable));
                drop(runtime.spawn_blocking(move || {
                    let flushed = durable(&*store);
                    answer(outcomes, flushed.as_ref().err());
                }));
            } else {
                answer(outcomes, None);
            }
        }
    }
}

/// Hands each job of a batch its outcome; a commit whose flush failed fails with it.
fn answer<E>(outcomes: Vec<Ran<E>>, flush_failed: Option<&StoreError>) {
    for (job, outcome) in outcomes {
        let outcome = match (outcome, flush_failed) {
            (Ok(()), Some(e)) => Err(TxError::Store(e.duplicate())),
            (outcome, _) => outcome,
        };
        job.finish(outcome);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `batch` in one transaction, or each of its bodies alone if that cannot commit; returns
/// each job with its outcome.
fn run<S: Store, E>(store: &S, batch: Vec<Job<E>>) -> Vec<Ran<E>> {
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
            return batch
                .into_iter()
                .zip(aborted)
                .map(|(job, aborted)| (job, aborted.map_or(Ok(()), |e| Err(TxError::Aborted(e)))))
                .collect();
        }
    }
    batch
        .into_iter()
        .map(|job| {
            let alone = store.transaction(|tx| (job.body)(tx));
            (job, alone)
        })
        .collect()
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

    /// Queues `bodies` behind a first body that holds the runner until they all wait, so they
    /// run as the next batch; returns their outcomes in order.
    fn queued_behind_one(
        store: &Arc<Counting>,
        bodies: Vec<TestBody>,
    ) -> Vec<Result<u32, TxError<String>>> {
        let queue = Arc::new(CommitQueue::<String>::new());
        let durable = flush_of();
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let count = bodies.len();
        runtime().block_on(async {
            let commit = |body: TestBody| {
                let (queue, store, durable) =
                    (Arc::clone(&queue), Arc::clone(store), Arc::clone(&durable));
                tokio::spawn(async move { queue.commit_durable(&store, &durable, body).await })
            };
            let first = commit(Box::new(move |tx| {
                lock(&held).recv().ok();
                tx.put(b"first", b"1")?;
                Ok(0)
            }));
            // The runner has taken the first body when the queue runs and nothing waits.
            while !{
                let state = lock(&queue.state);
                state.running && state.waiting.is_empty()
            } {
                tokio::task::yield_now().await;
            }
            let rest: Vec<_> = bodies.into_iter().map(commit).collect();
            while lock(&queue.state).waiting.len() < count {
                tokio::task::yield_now().await;
            }
            release.send(()).unwrap();
            assert_eq!(first.await.unwrap().unwrap(), 0);
            let mut outcomes = Vec::new();
            for task in rest {
                outcomes.push(task.await.unwrap());
            }
            outcomes
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
        let store = Arc::new(Counting::default());
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
        let store = Arc::new(Counting::default());
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

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn flush_of() -> Durable<Counting> {
        Arc::new(|store: &Counting| store.flush())
    }

    #[test]
    fn a_failed_flush_fails_the_bodies_that_committed_and_the_next_batch_flushes_again() {
        let store = Arc::new(Counting::default());
        let queue = Arc::new(CommitQueue::<String>::new());
        let durable = flush_of();
        runtime().block_on(async {
            store.fail_flush.store(true, Ordering::SeqCst);
            let committed = queue
                .commit_durable(&store, &durable, |tx| {
                    tx.put(b"k", b"1")?;
                    Ok(1)
                })
                .await;
            assert!(
                matches!(committed, Err(TxError::Store(StoreError::Unavailable(_)))),
                "{committed:?}"
            );
            // An aborted body needs no flush: its answer is its own.
            let aborted = queue
                .commit_durable(&store, &durable, |_| -> Result<u32, _> {
                    abort("refused".to_owned())
                })
                .await;
            assert!(matches!(aborted, Err(TxError::Aborted(ref e)) if e == "refused"));
            store.fail_flush.store(false, Ordering::SeqCst);
            let flushes = store.flushes.load(Ordering::SeqCst);
            let again = queue
                .commit_durable(&store, &durable, |tx| {
                    tx.put(b"k", b"2")?;
                    Ok(2)
                })
                .await;
            assert_eq!(again.unwrap(), 2);
            assert_eq!(store.flushes.load(Ordering::SeqCst), flushes + 1);
        });
    }

    #[test]
    fn a_body_that_panics_fails_its_callers_and_the_queue_serves_on() {
        let store = Arc::new(Counting::default());
        let queue = Arc::new(CommitQueue::<String>::new());
        let durable = flush_of();
        runtime().block_on(async {
            let panicked = queue
                .commit_durable(&store, &durable, |_| -> Result<u32, _> {
                    panic!("a body's bug")
                })
                .await;
            assert!(
                matches!(panicked, Err(TxError::Store(StoreError::Internal(_)))),
                "{panicked:?}"
            );
            let next = queue
                .commit_durable(&store, &durable, |tx| {
                    tx.put(b"after", b"x")?;
                    Ok(7)
                })
                .await;
            assert_eq!(next.unwrap(), 7);
            assert!(store.get(b"after").unwrap().is_some());
        });
    }
}
