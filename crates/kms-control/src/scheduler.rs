//! The loop that keeps this replica's scheduler claim and, while it holds it, runs the
//! rotation scheduler, the deletion reaper and the expiry of imported material every
//! interval, until the registry closes. What is due is decided by the registry's clock, not by
//! this loop's timer. With several replicas on one etcd, one holds the claim; the others
//! renew their attempt every third of the lease and take over within a lease of its end.

use std::sync::Arc;
use std::time::Duration;

use kms_store::Store;
use tokio::time::{Instant, MissedTickBehavior};

use crate::registry::Registry;

/// Runs scheduled work every `interval` while this replica holds the scheduler claim, until
/// [`Registry::close`].
pub async fn run<S: Store>(registry: Arc<Registry<S>>, interval: Duration) {
    let renew = (registry.lease() / 3).min(interval);
    let mut ticks = tokio::time::interval(renew);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut leading = false;
    let mut last_run: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = registry.closed() => return,
            _ = ticks.tick() => {
                let now_leading = match registry.lead().await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the scheduler claim");
                        false
                    }
                };
                if now_leading != leading {
                    leading = now_leading;
                    if leading {
                        tracing::info!(replica = registry.replica(), "this replica runs the schedulers");
                    } else {
                        tracing::info!(replica = registry.replica(), "this replica no longer runs the schedulers");
                    }
                }
                if !leading || last_run.is_some_and(|at| at.elapsed() < interval) {
                    continue;
                }
                last_run = Some(Instant::now());
                let report = registry.run_scheduled().await;
                if report.rotated + report.deleted + report.expired + report.failed > 0 {
                    tracing::debug!(?report, "scheduler run");
                }
            }
        }
    }
}
