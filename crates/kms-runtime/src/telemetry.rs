//! Logging and tracing: `tracing` to stderr, as text or JSON lines, filtered by level or
//! `RUST_LOG`; and, when `[telemetry] otlp_endpoint` is set, spans exported over OTLP.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(config: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // cryptoki logs every mechanism of the token it has no name for at error level while
    // listing mechanisms; those are not errors of ours.
    if let Ok(quiet) = "cryptoki::mechanism=off".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
