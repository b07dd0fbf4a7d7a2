//! The one source of time for the control plane, injectable so tests need not sleep.
//!
//! - [`SystemClock`]: the wall clock.
//! - [`OffsetFileClock`]: the wall clock plus a signed number of milliseconds read from a file,
//!   for end-to-end tests and drills that move time forward against the real binary
//!   (`[clock] offset_file`). The file is re-read when its modification time or length
//!   changes; a missing file means no offset.
//! - [`ManualClock`]: a clock the caller sets, for in-process tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use kms_types::UnixMillis;

/// Where the control plane reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> UnixMillis;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(system_now())
    }
}

/// What identifies one version of the offset file, and the offset it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    offset_ms: i64,
}

/// The wall clock moved by the offset in a file. For tests and drills only.
#[derive(Debug)]
pub struct OffsetFileClock {
    path: PathBuf,
    seen: Mutex<Option<Seen>>,
}

impl OffsetFileClock {
    /// A clock reading its offset from `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            seen: Mutex::new(None),
        }
    }

    /// The file this clock reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current offset in milliseconds: 0 without a file; the last good value when the
    /// file does not parse (a half-written file, say), with a warning.
    pub fn offset_ms(&self) -> i64 {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(meta) = std::fs::metadata(&self.path) else {
            *seen = None;
            return 0;
        };
        let modified = meta.modified().ok();
        let previous = seen.map_or(0, |s| s.offset_ms);
        if let Some(s) = *seen
            && s.modified == modified
            && s.len == meta.len()
        {
            return s.offset_ms;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the clock offset file; keeping the previous offset");
                return previous;
            }
        };
        match text.trim().parse::<i64>() {
            Ok(offset_ms) => {
                if offset_ms != previous {
                    tracing::info!(offset_ms, "clock offset changed");
                }
                *seen = Some(Seen {
                    modified,
                    len: meta.len(),
                    offset_ms,
                });
                offset_ms
            }
            Err(_) => {
                tracing::warn!(path = %self.path.display(), "the clock offset file does not hold a number of milliseconds; keeping the previous offset");
                previous
            }
        }
    }
}

impl Clock for OffsetFileClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(system_now().saturating_add(self.offset_ms()))
    }
}

/// A clock that says what it was last set to. For tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock at `start`.
    pub fn new(start: UnixMillis) -> Self {
        Self(AtomicI64::new(start.0))
    }

    /// Sets the time.
    pub fn set(&self, t: UnixMillis) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn offset_file_is_optional_reread_and_tolerant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = OffsetFileClock::new(path.clone());
        assert_eq!(clock.offset_ms(), 0, "missing file: no offset");
        std::fs::write(&path, "86400000\n").unwrap();
        assert_eq!(clock.offset_ms(), 86_400_000);
        let before = system_now();
        let now = clock.now().0;
        assert!(now >= before + 86_400_000 && now < before + 86_400_000 + 60_000);
        std::fs::write(&path, "-5").unwrap();
        assert_eq!(clock.offset_ms(), -5, "a changed file is re-read");
        std::fs::write(&path, "soon").unwrap();
        assert_eq!(clock.offset_ms(), -5, "garbage keeps the last good offset");
        std::fs::write(&path, "1234567").unwrap();
        assert_eq!(clock.offset_ms(), 1_234_567);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(clock.offset_ms(), 0, "a removed file: no offset");
    }

    #[test]
    fn manual_clock() {
        let c = ManualClock::new(UnixMillis(10));
        c.advance_ms(5);
        assert_eq!(c.now(), UnixMillis(15));
        c.set(UnixMillis(1));
        assert_eq!(c.now(), UnixMillis(1));
    }
}
