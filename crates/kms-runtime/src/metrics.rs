//! Metrics: counters, gauges and histograms in Prometheus's text format, served over HTTP at
//! `/metrics` when `[metrics] listen_addr` is set.
//!
//! One registry per process ([`register`], [`encode`]); every series is named `kms_…`. The
//! series both planes have live here: calls by method, status code and reason, and their
//! latency ([`EDGE`]); rate-limit refusals; the audit log's queue, write and fsync latency and
//! failures ([`AUDIT`]). Each plane registers its own (HSM calls, key cache, store, keys by
//! state) beside them. Labels are bounded sets (method names, code names, reason codes), never
//! principals, key ids or anything a caller chooses freely.

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
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
            addr.parse::<SocketAddr>().map_err(|e| {
                format!("metrics.listen_addr {addr:?} is not an address like 127.0.0.1:9464: {e}")
            })?;
        }
        Ok(())
    }
}

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("kms")));

/// Adds a series to the process's registry under `kms_<name>`.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .register(name, help, metric);
}

/// Adds a collector, asked for its series at each scrape.
pub fn register_collector(collector: impl Collector) {
    REGISTRY
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .register_collector(Box::new(collector));
}

/// Writes one gauge with no labels from a collector.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// Writes one counter with no labels from a collector.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

/// Every series in the text exposition format (OpenMetrics).
pub fn encode() -> String {
    let mut out = String::new();
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// Buckets for latencies from 25 µs to about 13 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 20))
}

/// A histogram family whose members are [`latency_histogram`]s.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A new, empty [`LatencyFamily`].
pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// Labels of a finished call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `package.Service/Method`, or `unknown` for a path the service does not serve.
    pub method: &'static str,
    /// The gRPC code name.
    pub code: &'static str,
    /// The reason code of a refusal; empty on success and for errors without one.
    pub reason: String,
}

/// The method of a call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// `package.Service/Method`, or `unknown`.
    pub method: &'static str,
}

/// A rate-limit class (`symmetric`, `read`, …, `unauthenticated`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The class's table under `[limits]`.
    pub limit: &'static str,
}

/// What the edge layer counts.
#[derive(Debug)]
pub struct EdgeMetrics {
    requests: Family<CallLabels, Counter>,
    latency: LatencyFamily<MethodLabel>,
    rate_limited: Family<LimitLabel, Counter>,
}

impl EdgeMetrics {
    /// Counts a finished call and its latency.
    pub fn call(
        &self,
        method: &'static str,
        code: &'static str,
        reason: String,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&CallLabels {
                method,
                code,
                reason,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel { method })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a call refused by a rate limit.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }
}

/// The edge layer's series.
pub static EDGE: LazyLock<EdgeMetrics> = LazyLock::new(|| {
    let m = EdgeMetrics {
        requests: Family::default(),
        latency: latency_family(),
        rate_limited: Family::default(),
    };
    register(
        "requests",
        "Calls answered, by method, gRPC code and reason code",
        m.requests.clone(),
    );
    register(
        "request_duration_seconds",
        "Time from a call's arrival to its answer, audit line included, by method",
        m.latency.clone(),
    );
    register(
        "rate_limited",
        "Calls refused by a rate limit, by the limit's table under [limits]",
        m.rate_limited.clone(),
    );
    m
});

/// What the audit log's writer counts.
#[derive(Debug)]
pub struct AuditMetrics {
    /// Lines and checkpoint requests waiting for the writer.
    pub queue: Gauge,
    /// Time of each batch's `write`.
    pub write: Histogram,
    /// Time of each batch's `fdatasync`.
    pub fsync: Histogram,
    /// Batches that could not be written.
    pub failures: Counter,
}

/// The audit log's series.
pub static AUDIT: LazyLock<AuditMetrics> = LazyLock::new(|| {
    let m = AuditMetrics {
        queue: Gauge::default(),
        write: latency_histogram(),
        fsync: latency_histogram(),
        failures: Counter::default(),
    };
    register(
        "audit_queue_depth",
        "Audit lines waiting for the writer",
        m.queue.clone(),
    );
    register(
        "audit_write_seconds",
        "Time to write one batch of audit lines",
        m.write.clone(),
    );
    register(
        "audit_fsync_seconds",
        "Time to fsync one batch of audit lines",
        m.fsync.clone(),
    );
    register(
        "audit_write_failures",
        "Batches of audit lines that could not be written or synced",
        m.failures.clone(),
    );
    m
});

/// Registers the series both planes have, so they show from the first scrape.
pub fn init() {
    LazyLock::force(&EDGE);
    LazyLock::force(&AUDIT);
}

/// Serves `/metrics` on `config.listen_addr` until the process ends; returns the bound address,
/// or `None` when no address is set.
pub async fn serve(config: &MetricsConfig) -> Result<Option<SocketAddr>, String> {
    let Some(addr) = &config.listen_addr else {
        return Ok(None);
    };
    init();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                encode(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(Some(local))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn calls_show_in_the_exposition() {
        init();
        EDGE.call(
            "kms.v1.Test/Call",
            "INVALID_ARGUMENT",
            "InvalidParameter".into(),
            Duration::from_millis(3),
        );
        // A label of its own: other tests in this process count real limits.
        EDGE.rate_limited("metrics-test");
        let text = encode();
        assert!(text.contains(
            r#"kms_requests_total{method="kms.v1.Test/Call",code="INVALID_ARGUMENT",reason="InvalidParameter"} 1"#
        ), "{text}");
        assert!(
            text.contains(r#"kms_request_duration_seconds_count{method="kms.v1.Test/Call"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"kms_rate_limited_total{limit="metrics-test"} 1"#));
        assert!(text.contains("kms_audit_queue_depth"));
        assert!(text.ends_with("# EOF\n"));
    }
}
