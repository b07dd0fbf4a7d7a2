//! Wall-clock instants as milliseconds since the Unix epoch, and the durations the rules use.

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub i64);

/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400_000;

impl UnixMillis {
    /// This instant plus `days` days, saturating.
    pub fn plus_days(self, days: i64) -> Self {
        Self(self.0.saturating_add(days.saturating_mul(DAY_MS)))
    }

    /// This instant plus `ms` milliseconds, saturating.
    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}
