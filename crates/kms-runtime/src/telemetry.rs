//! Logging and tracing: `tracing` to stderr, as text or JSON lines, filtered by level or
//! `RUST_LOG`; and, when `[telemetry] otlp_endpoint` is set, spans exported over OTLP.

use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `kms_data=debug,info`; `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    #[serde(default = "default_format")]
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: default_format(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

fn default_format() -> String {
    "text".into()
}

impl LogConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(format!(
                "log.format must be text or json, not {:?}",
                self.format
            ));
        }
        EnvFilter::try_new(&self.level).map_err(|e| format!("log.level {:?}: {e}", self.level))?;
        Ok(())
    }
}

/// `[telemetry]`: where spans go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector URL (`http://collector:4317`); spans are exported only when set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0.0 to 1.0; a caller's sampled trace is always
    /// continued.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.instance.id` of this process's spans; default the host name and process id.
    #[serde(default)]
    pub instance: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            instance: None,
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TelemetryConfig {
    /// Checks the values; called once at start.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "telemetry.sample_ratio must be 0.0 to 1.0, got {}",
                self.sample_ratio
            ));
        }
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "telemetry.otlp_endpoint must be an http:// or https:// URL, got {url:?}"
            ));
        }
        if let Some(instance) = &self.instance
            && (instance.is_empty() || instance.len() > 256)
        {
            return Err("telemetry.instance must be 1 to 256 bytes".into());
        }
        Ok(())
    }
}

/// What must outlive the server for spans to reach the collector; [`Telemetry::shutdown`]
/// sends what is left.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered and stops the exporter. Blocks; call off the workers.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "spans could not all be sent at shutdown");
        }
    }
}

/// The spans every call makes: the edge's (`rpc`) and each HSM call's (`hsm`).
const CALL_SPANS: [&str; 2] = ["rpc", "hsm"];

/// Installs the global subscriber: logs to stderr, and spans to the OTLP collector when
/// `telemetry.otlp_endpoint` is set, as `service` (`kms-control`, `kms-data`). Call once,
/// early in `main`, inside the runtime (the exporter runs on it).
pub fn init(
    config: &LogConfig,
    telemetry: &TelemetryConfig,
    service: &'static str,
) -> Result<Telemetry, String> {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // cryptoki logs every mechanism of the token it has no name for at error level while
    // listing mechanisms; those are not errors of ours.
    if let Ok(quiet) = "cryptoki::mechanism=off".parse() {
        filter = filter.add_directive(quiet);
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if config.format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let provider = match &telemetry.otlp_endpoint {
        Some(endpoint) => Some(provider(endpoint, telemetry, service)?),
        None => None,
    };
    // Spans go to the collector whatever the log level, so a quiet log still traces: events
    // at info, and the call spans (`rpc`, `hsm`), which are debug-level so that a log at info
    // does not pay for formatting their fields.
    let otel = provider.as_ref().map(|p| {
        let call_spans = tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && CALL_SPANS.contains(&meta.name())
        });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(EnvFilter::new("info,cryptoki=off").or(call_spans))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn provider(
    endpoint: &str,
    telemetry: &TelemetryConfig,
    service: &'static str,
) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint {endpoint:?}: {e}"))?;
    let instance = telemetry.instance.clone().unwrap_or_else(|| {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}/{}", std::process::id())
    });
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            telemetry.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The W3C trace context a caller sent in `headers` (`traceparent`, `tracestate`), if any.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Puts the current span's trace context in `metadata`, so the call continues the trace on
/// the other side. Nothing is added outside a traced call.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
    }
}

/// The trace id of `cx`, or of the current span's context, as 32 hex digits; empty when
/// neither is traced.
pub fn trace_id(cx: &opentelemetry::Context) -> String {
    let remote = cx.span().span_context().trace_id();
    let id = if remote != TraceId::INVALID {
        remote
    } else {
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
    };
    if id == TraceId::INVALID {
        String::new()
    } else {
        id.to_string()
    }
}

/// `spawn_blocking` in the caller's span, so spans made inside (HSM calls) are its children.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}
