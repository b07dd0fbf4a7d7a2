//! Usage reporting for key association: every successful cryptographic call is noted (key,
//! version, caller, operation, time) in a bounded in-memory batch, and a background task sends
//! the batch to `KeyDirectory.ReportUsage` every second, or as soon as it holds
//! [`FLUSH_AT`] records.
//!
//! Noting a call takes one short lock and never waits on the network. Calls with the same key,
//! version, caller and operation fold into one record with the latest time, so a busy key
//! costs one record per flush, not one per call. The batch holds at most [`MAX_PENDING`]
//! records; beyond that new combinations are counted and dropped, never queued without bound.
//! A crash loses at most the batch not yet sent; a send that fails keeps its records (merged
//! with newer ones, within the bound) for the next attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kms_types::{DomainError, KeyId, KeyVersionId, Principal, UnixMillis, UsageEvent, UsageOp};
use tokio::sync::Notify;

use crate::crypto::wall_clock;
use crate::directory::DirectoryClient;

/// How often the batch is sent.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// A batch this large is sent at once.
pub const FLUSH_AT: usize = 512;
/// Most records held while the control plane does not take them.
pub const MAX_PENDING: usize = 65_536;
/// Most records per `ReportUsage` call. Each report's records exist as messages only while it
/// is sent, so this also bounds that transient memory (about 100 KiB).
pub const MAX_PER_REPORT: usize = 256;

/// One caller's records: by version and operation (a version belongs to one key), the key
/// and the latest time.
type Calls = HashMap<(KeyVersionId, UsageOp), (KeyId, UnixMillis)>;

/// The batch: records by caller, then by version and operation, so noting a call already in
/// it allocates nothing.
#[derive(Debug, Default)]
struct Batch {
    by_caller: HashMap<Principal, Calls>,
    records: usize,
}

/// The batch of usage not yet reported.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<Batch>,
    full: Notify,
    dropped: AtomicU64,
}

impl UsageRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes one successful call, now. `key_id` is the resolved key id a response names; a
    /// malformed one (never expected) is ignored.
    pub fn record(&self, key_id: &str, version: KeyVersionId, principal: &Principal, op: UsageOp) {
        self.note(principal, version, op, wall_clock(), || {
            KeyId::parse(key_id).ok()
        });
    }

    /// Notes a use at `at`; `key_id` is asked for only when the record is new.
    fn note(
        &self,
        principal: &Principal,
        version: KeyVersionId,
        op: UsageOp,
        at: UnixMillis,
        key_id: impl FnOnce() -> Option<KeyId>,
    ) {
        let records = {
            let mut batch = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let Batch { by_caller, records } = &mut *batch;
            let calls = by_caller.get_mut(principal);
            if let Some((_, latest)) = calls.and_then(|c| c.get_mut(&(version, op))) {
                if at > *latest {
                    *latest = at;
                }
                return;
            }
            if *records >= MAX_PENDING {
                drop(batch);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Some(key_id) = key_id() else {
                return;
            };
            match by_caller.get_mut(principal) {
                Some(calls) => {
                    calls.insert((version, op), (key_id, at));
                }
                None => {
                    let calls = HashMap::from([((version, op), (key_id, at))]);
                    by_caller.insert(principal.clone(), calls);
                }
            }
            *records += 1;
            *records
        };
        if records == FLUSH_AT {
            self.full.notify_one();
        }
    }

    /// How many records wait to be sent.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records
    }

    /// Takes the whole batch, as events made one at a time: a large batch is never copied
    /// whole.
    fn take(&self) -> impl Iterator<Item = UsageEvent> + Send + use<> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        batch.by_caller.into_iter().flat_map(|(principal, calls)| {
            calls
                .into_iter()
                .map(move |((version, op), (key_id, at))| UsageEvent {
                    key_id,
                    version,
                    principal: principal.clone(),
                    op,
                    at,
                })
        })
    }

    /// Puts records that could not be sent back, within the bound.
    fn restore(&self, events: impl IntoIterator<Item = UsageEvent>) {
        for e in events {
            self.note(&e.principal, e.version, e.op, e.at, || Some(e.key_id));
        }
    }

    /// Sends everything pending to the control plane, in calls of at most
    /// [`MAX_PER_REPORT`] records. On failure the unsent records stay pending.
    pub async fn flush(&self, directory: &DirectoryClient) -> Result<usize, DomainError> {
        let mut events = self.take();
        let mut sent = 0;
        loop {
            let part: Vec<UsageEvent> = events.by_ref().take(MAX_PER_REPORT).collect();
            if part.is_empty() {
                break;
            }
            if let Err(e) = directory.report_usage(&part).await {
                self.restore(part.into_iter().chain(events));
                return Err(e);
            }
            sent += part.len();
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "usage records were dropped: the batch was full while the control plane did not take it"
            );
        }
        Ok(sent)
    }

    /// Sends the batch every [`FLUSH_INTERVAL`], or when it fills, until `stop` resolves; then
    /// sends what is left once.
    pub async fn run(&self, directory: DirectoryClient, stop: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticks.tick() => {}
                _ = self.full.notified() => {}
            }
            if let Err(e) = self.flush(&directory).await {
                tracing::warn!(error = %e, pending = self.pending(), "cannot report key usage; retrying");
            }
        }
        if let Err(e) = self.flush(&directory).await {
            tracing::warn!(error = %e, pending = self.pending(), "key usage not reported at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal::parse(&format!("acs:ram::42:user/{name}")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn calls_fold_into_the_latest_time() {
        let r = UsageRecorder::new();
        let key = KeyId::generate();
        let v = KeyVersionId::generate();
        let note = |p: &str, op, at| r.note(&principal(p), v, op, UnixMillis(at), || Some(key));
        note("a", UsageOp::Encrypt, 20);
        note("a", UsageOp::Encrypt, 10);
        note("a", UsageOp::Encrypt, 30);
        note("a", UsageOp::Decrypt, 5);
        note("b", UsageOp::Encrypt, 7);
        assert_eq!(r.pending(), 3);
        let mut events: Vec<UsageEvent> = r.take().collect();
        events.sort_by_key(|e| (e.principal.arn().to_string(), e.op));
        let got: Vec<(String, UsageOp, i64)> = events
            .iter()
            .map(|e| (e.principal.arn().to_string(), e.op, e.at.0))
            .collect();
        assert_eq!(
            got,
            [
                ("acs:ram::42:user/a".to_string(), UsageOp::Encrypt, 30),
                ("acs:ram::42:user/a".to_string(), UsageOp::Decrypt, 5),
                ("acs:ram::42:user/b".to_string(), UsageOp::Encrypt, 7),
            ]
        );
        assert_eq!(r.pending(), 0);
        r.restore(events);
        assert_eq!(r.pending(), 3, "unsent records come back");
        assert_eq!(r.take().map(|e| e.at.0).sum::<i64>(), 42);
        r.record(
            "not-a-key",
            KeyVersionId::generate(),
            &principal("a"),
            UsageOp::Encrypt,
        );
        assert_eq!(r.pending(), 0);
    }

    /// A batch larger than one report that cannot be sent stays whole for the next attempt.
    #[tokio::test]
    async fn an_unsent_batch_is_kept() {
        let r = UsageRecorder::new();
        let key = KeyId::generate();
        let records = 2 * MAX_PER_REPORT + 7;
        for _ in 0..records {
            let v = KeyVersionId::generate();
            r.note(&principal("a"), v, UsageOp::Encrypt, UnixMillis(1), || {
                Some(key)
            });
        }
        // Nothing listens on port 1 of the loopback address: every report fails.
        let unreachable =
            DirectoryClient::new(&["http://127.0.0.1:1".into()], "kms-data".into(), None)
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.flush(&unreachable).await.is_err());
        assert_eq!(r.pending(), records);
    }

    #[test]
    fn the_batch_is_bounded() {
        let r = UsageRecorder::new();
        let key = KeyId::generate();
        let p = principal("a");
        for _ in 0..MAX_PENDING + 10 {
            r.note(
                &p,
                KeyVersionId::generate(),
                UsageOp::AsymmetricSign,
                UnixMillis(1),
                || Some(key),
            );
        }
        assert_eq!(r.pending(), MAX_PENDING);
        assert_eq!(r.dropped.load(Ordering::Relaxed), 10);
    }
}
