//! The resident set of another process (a plane), sampled from `/proc/PID/status` every second
//! during a run: for the memory targets and the soak's growth bound.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// Samples taken so far, in KiB.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rss {
    pub(crate) pid: u32,
    pub(crate) samples_kib: Vec<u64>,
}

impl Rss {
    fn first(&self) -> u64 {
        self.samples_kib.first().copied().unwrap_or(0)
    }

    fn last(&self) -> u64 {
        self.samples_kib.last().copied().unwrap_or(0)
    }

    fn max(&self) -> u64 {
        self.samples_kib.iter().copied().max().unwrap_or(0)
    }

    /// Growth from the first sample to the last, in percent.
    fn growth_percent(&self) -> f64 {
        let first = self.first();
        if first == 0 {
            return 0.0;
        }
        (self.last() as f64 - first as f64) / first as f64 * 100.0
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "pid": self.pid,
            "samples": self.samples_kib.len(),
            "first_mib": self.first() as f64 / 1024.0,
            "last_mib": self.last() as f64 / 1024.0,
            "max_mib": self.max() as f64 / 1024.0,
            "growth_percent": self.growth_percent(),
        })
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "RSS of pid {}: first {:.1} MiB, last {:.1} MiB, highest {:.1} MiB, growth {:+.1} % ({} samples)",
            self.pid,
            self.first() as f64 / 1024.0,
            self.last() as f64 / 1024.0,
            self.max() as f64 / 1024.0,
            self.growth_percent(),
            self.samples_kib.len()
        )
    }
}

/// `VmRSS` of `pid` in KiB.
fn read(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {path}: is process {pid} running on this machine?")
    })?;
    parse_vm_rss(&status).with_context(|| format!("{path} has no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A running sampler.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Rss>,
}

impl Sampler {
    /// Takes a first sample now (failing if the process cannot be read), then one a second.
    pub(crate) fn start(pid: u32) -> Result<Self> {
        let first = read(pid)?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut rss = Rss {
                pid,
                samples_kib: vec![first],
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Ok(v) = read(pid) {
                            rss.samples_kib.push(v);
                        }
                    }
                }
            }
            if let Ok(v) = read(pid) {
                rss.samples_kib.push(v);
            }
            rss
        });
        Ok(Self { stop, task })
    }

    /// Stops sampling (after a last sample) and returns the samples.
    pub(crate) async fn stop(self) -> Rss {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tkms-data\nVmPeak:\t  400000 kB\nVmRSS:\t   19588 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(19588));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[tokio::test]
    async fn samples_this_process() {
        let s = Sampler::start(std::process::id()).unwrap();
        let rss = s.stop().await;
        assert!(rss.samples_kib.len() >= 2);
        assert!(rss.json()["first_mib"].as_f64().unwrap() > 0.0);
        assert!(Sampler::start(u32::MAX).is_err());
    }
}
