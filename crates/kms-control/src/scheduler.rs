//! The loop that runs the rotation scheduler, the deletion reaper and the expiry of imported
//! material every interval, until the registry closes. What is due is decided by the
//! registry's clock, not by this loop's timer.

use std::sync::Arc;
use std::time::Duration;

use kms_store::Store;
use tokio::time::MissedTickBehavior;

use crate::registry::Registry;

/// Runs scheduled work every `interval` until [`Registry::close`].
pub async fn run<S: Store>(registry: Arc<Registry<S>>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = registry.closed() => return,
            _ = ticks.tick() => {
                let report = registry.run_scheduled().await;
                if report.rotated + report.deleted + report.expired + report.failed > 0 {
                    tracing::debug!(?report, "scheduler run");
                }
            }
        }
    }
}
