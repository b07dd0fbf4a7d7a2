//! A bounded pool of read-only PKCS#11 sessions, opened on demand and reused.
//!
//! The mutex guards only the bookkeeping; no PKCS#11 call (open, close, or an operation)
//! runs while it is held. A session that saw an error is closed, never reused: a token may
//! leave it in the middle of an operation (`CKR_OPERATION_ACTIVE` on its next use).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

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
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
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
