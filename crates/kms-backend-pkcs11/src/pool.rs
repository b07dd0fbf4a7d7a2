//! A bounded pool of read-only PKCS#11 sessions, opened on demand and reused.
//!
//! The mutex guards only the bookkeeping; no PKCS#11 call (open, close, or an operation)
//! runs while it is held. A session that saw an error is closed, never reused: a token may
//! leave it in the middle of an operation (`CKR_OPERATION_ACTIVE` on its next use).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

struct PoolState {
    idle: Vec<Session>,
    /// Sessions that exist: idle, checked out, or being opened.
    open: usize,
}

pub(crate) struct SessionPool {
    ctx: Pkcs11,
    slot: Slot,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Checkouts that had to wait for a session, and their total wait in nanoseconds.
    waits: AtomicU64,
    wait_nanos: AtomicU64,
}

/// What the session pool has done since the backend opened.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionStats {
    /// Sessions that exist now (idle, in use, or being opened).
    pub open: usize,
    /// The most that may exist.
    pub max: usize,
    /// Checkouts that found every session in use and waited.
    pub waits: u64,
    /// Their total wait, in seconds.
    pub wait_seconds: f64,
}

impl SessionPool {
    pub(crate) fn new(ctx: Pkcs11, slot: Slot, max: usize) -> SessionPool {
        SessionPool {
            ctx,
            slot,
            max,
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(max),
                open: 0,
            }),
            freed: Condvar::new(),
            waits: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> SessionStats {
        SessionStats {
            open: self.lock().open,
            max: self.max,
            waits: self.waits.load(Ordering::Relaxed),
            wait_seconds: self.wait_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on a pooled session. The session goes back to the pool if `op` succeeds
    /// and is closed if it fails (or panics).
    pub(crate) fn with_session<T>(
        &self,
        op: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let session = self.checkout()?;
        let reservation = Reservation {
            pool: self,
            armed: true,
        };
        match op(&session) {
            Ok(value) => {
                self.lock().idle.push(session);
                reservation.keep();
                self.freed.notify_one();
                Ok(value)
            }
            Err(e) => {
                // C_CloseSession runs here, outside the lock; then the place is freed.
                drop(session);
                drop(reservation);
                Err(e)
            }
        }
    }

    /// Takes an idle session, opens one if fewer than `max` exist, or waits for one.
    fn checkout(&self) -> Result<Session, CkError> {
        let mut state = self.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(session);
            }
            if state.open < self.max {
                state.open += 1;
                break;
            }
            let since = Instant::now();
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            self.waits.fetch_add(1, Ordering::Relaxed);
            let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.wait_nanos.fetch_add(waited, Ordering::Relaxed);
        }
        drop(state);
        self.ctx
            .open_ro_session(self.slot)
            .inspect_err(|_| self.forget(1))
    }

    /// Closes every idle session (after a lost login or a reset, they may all be dead).
    pub(crate) fn drain_idle(&self) {
        let idle = {
            let mut state = self.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open = state.open.saturating_sub(idle.len());
            idle
        };
        // C_CloseSession for each, outside the lock, before waiters may open new ones.
        drop(idle);
        self.freed.notify_all();
    }

    fn forget(&self, count: usize) {
        {
            let mut state = self.lock();
            state.open = state.open.saturating_sub(count);
        }
        self.freed.notify_one();
    }
}

/// A checked-out session's place in the count; gives it up on drop unless kept.
struct Reservation<'a> {
    pool: &'a SessionPool,
    armed: bool,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.forget(1);
        }
    }
}
