//! Metrics: counters, gauges and histograms in Prometheus's text format, served over HTTP at
//! `/metrics` when `[metrics] listen_addr` is set.

use serde::Deserialize;

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on (plain HTTP); no endpoint when unset.
    #[serde(default)]
    pub listen_addr: Option<String>,
}

impl MetricsConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(addr) = &self.listen_addr {
            addr.parse::<std::net::SocketAddr>().map_err(|e| {
                format!("metrics.listen_addr {addr:?} is not an address like 127.0.0.1:9464: {e}")
            })?;
        }
        Ok(())
    }
}
