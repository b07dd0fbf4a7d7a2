//! The one source of time for the control plane, injectable so tests need not sleep.

use std::time::{SystemTime, UNIX_EPOCH};

use kms_types::UnixMillis;

/// Where the control plane reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        UnixMillis(ms)
    }
}
