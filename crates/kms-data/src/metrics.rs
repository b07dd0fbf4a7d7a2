//! The data plane's own series, beside the edge's: HSM calls by operation and algorithm (each
//! also a `hsm` span, child of the call's), the PKCS#11 session pool, and the key cache.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use kms_backend_pkcs11::Hsm;
use kms_runtime::metrics::{
    LatencyFamily, encode_counter, encode_gauge, latency_family, register, register_collector,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::cache::KeyCache;

/// An HSM call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HsmLabels {
    operation: &'static str,
    algorithm: &'static str,
}

/// How a key lookup was answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

struct DataMetrics {
    hsm: LatencyFamily<HsmLabels>,
    lookups: Family<LookupLabels, Counter>,
}

static DATA: LazyLock<DataMetrics> = LazyLock::new(|| {
    let m = DataMetrics {
        hsm: latency_family(),
        lookups: Family::default(),
    };
    register(
        "hsm_call_seconds",
        "Time of each HSM call, by operation and algorithm (or key spec)",
        m.hsm.clone(),
    );
    register(
        "key_cache_lookups",
        "Key lookups: hit (fresh entry), miss (fetched from the control plane), stale (served \
         past its lifetime while the control plane is unreachable)",
        m.lookups.clone(),
    );
    m
});

/// Runs `f`, an HSM call, in a `hsm` span and times it.
pub fn hsm_call<T>(operation: &'static str, algorithm: &'static str, f: impl FnOnce() -> T) -> T {
    // Debug level, like the call's span: only traces (or a debug log) pay for it.
    let span = tracing::debug_span!("hsm", operation, algorithm);
    let _entered = span.enter();
    let start = Instant::now();
    let out = f();
    DATA.hsm
        .get_or_create(&HsmLabels {
            operation,
            algorithm,
        })
        .observe(start.elapsed().as_secs_f64());
    out
}

/// Counts a key lookup: `hit`, `miss` or `stale`.
pub fn lookup(result: &'static str) {
    DATA.lookups.get_or_create(&LookupLabels { result }).inc();
}

/// What is read at each scrape: the session pool and the cache's state.
struct Live {
    hsm: Arc<Hsm>,
    cache: Arc<KeyCache>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pool = self.hsm.session_stats();
        encode_gauge(
            &mut encoder,
            "hsm_sessions_open",
            "PKCS#11 sessions open (idle, in use or being opened)",
            pool.open as f64,
        )?;
        encode_gauge(
            &mut encoder,
            "hsm_sessions_max",
            "The most PKCS#11 sessions that may be open (hsm.max_sessions)",
            pool.max as f64,
        )?;
        encode_counter(
            &mut encoder,
            "hsm_session_waits",
            "HSM calls that found every session in use and waited",
            pool.waits as f64,
        )?;
        encode_counter(
            &mut encoder,
            "hsm_session_wait_seconds",
            "Total time HSM calls waited for a session",
            pool.wait_seconds,
        )?;
        let cache = self.cache.stats();
        encode_gauge(
            &mut encoder,
            "key_cache_entries",
            "Key lookups cached (by id, alias or version)",
            cache.entries as f64,
        )?;
        encode_gauge(
            &mut encoder,
            "key_cache_contact_age_seconds",
            "Seconds since the last answer or event from the control plane; past \
             key_cache.max_staleness_ms calls fail closed",
            cache.contact_age.map_or(f64::INFINITY, |d| d.as_secs_f64()),
        )?;
        encode_gauge(
            &mut encoder,
            "key_cache_watch_up",
            "1 while the WatchKeys stream from the control plane is up",
            if cache.watch_up { 1.0 } else { 0.0 },
        )?;
        encode_gauge(
            &mut encoder,
            "key_cache_revision",
            "The last directory revision the cache applied",
            cache.revision as f64,
        )?;
        Ok(())
    }
}

/// Registers the data plane's series, the edge's included.
pub fn init(hsm: Arc<Hsm>, cache: Arc<KeyCache>) {
    kms_runtime::metrics::init();
    LazyLock::force(&DATA);
    register_collector(Live { hsm, cache });
}
