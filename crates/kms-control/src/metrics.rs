//! The control plane's own series, beside the edge's: store flush latency and size on disk,
//! `WatchKeys` streams and their lag, and keys by state and spec. Counting keys reads every
//! key record, so it runs off the scrape: a scrape asks for a count and shows the previous
//! one; counts run at most every [`KEY_COUNT_MIN_GAP`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use kms_runtime::metrics::{encode_gauge, latency_histogram, register, register_collector};
use kms_store::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::registry::Registry;

/// Least time between two counts of keys by state and spec.
pub const KEY_COUNT_MIN_GAP: Duration = Duration::from_secs(2);

/// A key state and spec.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    state: &'static str,
    spec: &'static str,
}

/// What the control plane counts as it works.
#[derive(Debug)]
pub struct ControlMetrics {
    /// Time of each store flush before an acknowledgement (per batch of writes on sled).
    pub flush: Histogram,
    /// Transaction bodies run again because another transaction conflicted with them.
    pub transaction_retries: Counter,
    /// `WatchKeys` streams open.
    pub watch_streams: Gauge,
    /// How many revisions behind the store the last stream to look was, before it caught up.
    pub watch_lag: Gauge,
    /// Events sent on `WatchKeys` streams.
    pub watch_events: Counter,
    /// Resyncs sent (a stream behind the retained window, or ahead of the store).
    pub watch_resyncs: Counter,
    keys: Family<KeyLabels, Gauge>,
}

/// The control plane's series.
pub static CONTROL: LazyLock<ControlMetrics> = LazyLock::new(|| {
    let m = ControlMetrics {
        flush: latency_histogram(),
        transaction_retries: Counter::default(),
        watch_streams: Gauge::default(),
        watch_lag: Gauge::default(),
        watch_events: Counter::default(),
        watch_resyncs: Counter::default(),
        keys: Family::default(),
    };
    register(
        "store_flush_seconds",
        "Time to make commits durable before they are acknowledged: per write on etcd, per batch of concurrent writes on sled",
        m.flush.clone(),
    );
    register(
        "store_transaction_retries",
        "Store transactions run again after a conflict with another (writes to the same records at once), or alone after their batch could not commit",
        m.transaction_retries.clone(),
    );
    register(
        "watch_streams",
        "WatchKeys streams open (one per data-plane replica)",
        m.watch_streams.clone(),
    );
    register(
        "watch_lag_revisions",
        "Revisions the last WatchKeys stream to read was behind the store before catching up",
        m.watch_lag.clone(),
    );
    register(
        "watch_events",
        "Key events sent on WatchKeys streams",
        m.watch_events.clone(),
    );
    register(
        "watch_resyncs",
        "Resync events sent on WatchKeys streams",
        m.watch_resyncs.clone(),
    );
    register(
        "keys",
        "Keys by state and spec, as of the count the previous scrape asked for",
        m.keys.clone(),
    );
    m
});

/// The sled directory's size, read at each scrape.
#[derive(Debug)]
struct StoreSize {
    dir: PathBuf,
    last: Mutex<f64>,
}

impl Collector for StoreSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let size = dir_size(&self.dir);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(size) = size {
            *last = size as f64;
        }
        encode_gauge(
            &mut encoder,
            "store_size_bytes",
            "Bytes the sled store takes on disk",
            *last,
        )
    }
}

/// The total size of the regular files under `dir`, one level of subdirectories deep (sled's
/// layout).
fn dir_size(dir: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            total += meta.len();
        } else if meta.is_dir() {
            for inner in std::fs::read_dir(entry.path()).ok()?.flatten() {
                if let Ok(meta) = inner.metadata()
                    && meta.is_file()
                {
                    total += meta.len();
                }
            }
        }
    }
    Some(total)
}

/// Asks for a count of keys at each scrape.
#[derive(Debug)]
struct CountOnScrape(Arc<Notify>);

impl Collector for CountOnScrape {
    fn encode(&self, _encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.notify_one();
        Ok(())
    }
}

/// Registers the control plane's series, the edge's included, and starts counting keys for
/// them; `sled_dir` is the store's directory when the engine is sled.
pub fn init<S: Store>(registry: Arc<Registry<S>>, sled_dir: Option<PathBuf>) {
    kms_runtime::metrics::init();
    LazyLock::force(&CONTROL);
    if let Some(dir) = sled_dir {
        register_collector(StoreSize {
            dir,
            last: Mutex::new(0.0),
        });
    }
    let asked = Arc::new(Notify::new());
    register_collector(CountOnScrape(Arc::clone(&asked)));
    tokio::spawn(count_keys(registry, asked));
}

/// Counts keys by state and spec when a scrape asks, at most every [`KEY_COUNT_MIN_GAP`],
/// until the registry closes.
async fn count_keys<S: Store>(registry: Arc<Registry<S>>, asked: Arc<Notify>) {
    let mut seen: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            () = registry.closed() => return,
            () = asked.notified() => {}
        }
        if let Some(at) = last {
            tokio::time::sleep_until((at + KEY_COUNT_MIN_GAP).into()).await;
        }
        last = Some(Instant::now());
        match registry.key_counts().await {
            Ok(counts) => {
                // Series of combinations that no longer exist drop to zero rather than vanish.
                for labels in seen.keys() {
                    if !counts.contains_key(labels) {
                        set_keys(*labels, 0);
                    }
                }
                for (labels, n) in &counts {
                    set_keys(*labels, *n);
                }
                seen.extend(counts);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count keys for metrics"),
        }
    }
}

fn set_keys((state, spec): (&'static str, &'static str), n: u64) {
    CONTROL
        .keys
        .get_or_create(&KeyLabels { state, spec })
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}
