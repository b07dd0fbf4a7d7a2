//! Logging: `tracing` to stderr, as text or JSON lines, filtered by level or `RUST_LOG`.

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
