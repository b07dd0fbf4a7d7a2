//! The load loops: closed (a fixed number of requests in flight) and open (a fixed rate, each
//! request's latency measured from the moment it was meant to be sent, so a slow server cannot
//! hide its queue by slowing the sender), bounded by a count or a duration; latencies go into
//! one HDR histogram, failures are counted by gRPC code and reason, and a progress line is shown
//! on a terminal.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::Status;

use crate::connect::{code_name, reason};

/// Highest latency the histogram holds exactly, in microseconds (longer ones are recorded as
/// this): ten minutes.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A fresh latency histogram: microseconds, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts; the fallback is never taken.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

#[allow(clippy::panic)]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("a histogram with 3 significant digits is always valid")
}

/// One request's future: `Ok(None)` when it succeeded (its latency is the time it took),
/// `Ok(Some(d))` when it measured its own latency `d` (disable → refusal), or the status it
/// failed with.
pub(crate) type CallFuture = Pin<Box<dyn Future<Output = Result<Option<Duration>, Status>> + Send>>;

/// Makes request number `i`.
pub(crate) type Call = Arc<dyn Fn(u64) -> CallFuture + Send + Sync>;

/// How a load is shaped and bounded.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// Closed loop: requests in flight. Open loop: the most in flight at once.
    pub(crate) concurrency: usize,
    /// Open loop: requests per second.
    pub(crate) rate: Option<f64>,
    /// Stop after this many requests (started).
    pub(crate) requests: Option<u64>,
    /// Stop starting requests after this long.
    pub(crate) duration: Option<Duration>,
}

/// A failure kind: code and reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FailureKind {
    pub(crate) code: String,
    pub(crate) reason: String,
}

/// Failures of one kind.
#[derive(Debug, Clone)]
pub(crate) struct Failures {
    pub(crate) count: u64,
    /// The first message of this kind.
    pub(crate) example: String,
}

/// What a load measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) failures: BTreeMap<FailureKind, Failures>,
    /// Latencies of successful requests, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// From the first request's start to the last one's end.
    pub(crate) elapsed: Duration,
}

impl Measured {
    /// Successful requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` in milliseconds (0 without samples).
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1e3
    }

    /// The highest latency in milliseconds.
    pub(crate) fn max_ms(&self) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.max() as f64 / 1e3
    }
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    failures: Mutex<BTreeMap<FailureKind, Failures>>,
    ok: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn record(&self, result: Result<Option<Duration>, Status>, took: Duration) {
        match result {
            Ok(own) => {
                let us = own.unwrap_or(took).as_micros();
                let us = u64::try_from(us).unwrap_or(MAX_LATENCY_US).max(1);
                self.latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .saturating_record(us);
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let kind = FailureKind {
                    code: code_name(status.code()).to_string(),
                    reason: reason(&status),
                };
                let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
                failures
                    .entry(kind)
                    .or_insert_with(|| Failures {
                        count: 0,
                        example: status.message().chars().take(300).collect(),
                    })
                    .count += 1;
            }
        }
    }
}

/// Runs `call` with `shape`, showing progress as `label` on a terminal.
pub(crate) async fn run(label: &str, shape: &Shape, call: Call) -> Measured {
    let shared = Arc::new(Shared {
        latency: Mutex::new(histogram()),
        failures: Mutex::new(BTreeMap::new()),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let progress = std::io::stderr().is_terminal().then(|| {
        tokio::spawn(show_progress(
            label.to_string(),
            Arc::clone(&shared),
            Arc::clone(&stop),
        ))
    });
    let start = Instant::now();
    let deadline = shape.duration.map(|d| start + d);
    match shape.rate {
        None => closed(shape, deadline, &shared, call).await,
        Some(rate) => open(shape, rate, start, deadline, &shared, call).await,
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let failures = shared
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    Measured {
        ok: shared.ok.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        failures,
        latency,
        elapsed,
    }
}

/// `concurrency` workers, each sending its next request when the last one is answered.
async fn closed(shape: &Shape, deadline: Option<Instant>, shared: &Arc<Shared>, call: Call) {
    let next = Arc::new(AtomicU64::new(0));
    let limit = shape.requests.unwrap_or(u64::MAX);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..shape.concurrency.max(1) {
        let (next, shared, call) = (Arc::clone(&next), Arc::clone(shared), Arc::clone(&call));
        workers.spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let t = Instant::now();
                let result = call(i).await;
                shared.record(result, t.elapsed());
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// Request `i` is due at `start + i / rate`; its latency counts from then, however late it is
/// actually sent (the sender waits for a free slot when `concurrency` are in flight).
async fn open(
    shape: &Shape,
    rate: f64,
    start: Instant,
    deadline: Option<Instant>,
    shared: &Arc<Shared>,
    call: Call,
) {
    let limit = shape.requests.unwrap_or(u64::MAX);
    let slots = Arc::new(tokio::sync::Semaphore::new(shape.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let interval = 1.0 / rate.max(1e-6);
    let mut i = 0u64;
    while i < limit {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        if deadline.is_some_and(|d| due >= d) {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (shared, call) = (Arc::clone(shared), Arc::clone(&call));
        tasks.spawn(async move {
            let result = call(i).await;
            shared.record(result, due.elapsed());
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
}

/// Prints `label: done, rate, errors, p50/p99` on stderr every half second until `stop`.
async fn show_progress(label: String, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let ok = shared.ok.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let (p50, p99) = {
            let h = shared
                .latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if h.is_empty() {
                (0.0, 0.0)
            } else {
                (
                    h.value_at_quantile(0.5) as f64 / 1e3,
                    h.value_at_quantile(0.99) as f64 / 1e3,
                )
            }
        };
        let rate = ok as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{label}: {} done, {rate:.0}/s, {errors} errors, p50 {p50:.2} ms, p99 {p99:.2} ms",
            ok + errors
        );
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ok_after(d: Duration) -> Call {
        Arc::new(move |_| {
            Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok(None)
            })
        })
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_request_count() {
        let shape = Shape {
            concurrency: 4,
            rate: None,
            requests: Some(40),
            duration: None,
        };
        let m = run("t", &shape, ok_after(Duration::from_millis(1))).await;
        assert_eq!(m.ok, 40);
        assert_eq!(m.errors, 0);
        assert!(m.quantile_ms(0.5) >= 1.0, "{}", m.quantile_ms(0.5));
    }

    #[tokio::test]
    async fn failures_are_counted_by_code_and_reason() {
        let shape = Shape {
            concurrency: 2,
            rate: None,
            requests: Some(10),
            duration: None,
        };
        let call: Call = Arc::new(|i| {
            Box::pin(async move {
                if i % 2 == 0 {
                    Err(Status::failed_precondition("Rejected.Disabled: disabled"))
                } else {
                    Ok(None)
                }
            })
        });
        let m = run("t", &shape, call).await;
        assert_eq!((m.ok, m.errors), (5, 5));
        let (kind, f) = m.failures.iter().next().unwrap();
        assert_eq!(kind.code, "FAILED_PRECONDITION");
        assert_eq!(kind.reason, "Rejected.Disabled");
        assert_eq!(f.count, 5);
    }

    /// A server that answers one request at a time, 10 ms each, offered 200/s: requests queue,
    /// and latency counted from the intended send time shows the queue.
    #[tokio::test]
    async fn open_loop_counts_from_the_intended_send_time() {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let call: Call = Arc::new(move |_| {
            let gate = Arc::clone(&gate);
            Box::pin(async move {
                let _one = gate.lock().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(None)
            })
        });
        let shape = Shape {
            concurrency: 100,
            rate: Some(200.0),
            requests: Some(40),
            duration: None,
        };
        let m = run("t", &shape, call).await;
        assert_eq!(m.ok, 40);
        // 40 requests in 0.2 s of offered load take 0.4 s to serve: the last waited ~0.2 s.
        assert!(m.max_ms() > 100.0, "max {}", m.max_ms());
    }
}
