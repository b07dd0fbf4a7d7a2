//! Data-plane configuration: the raw TOML shape and its validated form.

use std::path::PathBuf;
use std::time::Duration;

use kms_backend_pkcs11::HsmParams;

use crate::cache::CacheTimes;
use kms_runtime::audit::AuditConfig;
use kms_runtime::identity::IdentityConfig;
use kms_runtime::limits::LimitsConfig;
use kms_runtime::metrics::MetricsConfig;
use kms_runtime::serve::HealthConfig;
use kms_runtime::telemetry::{LogConfig, TelemetryConfig};
use secrecy::SecretString;
use serde::Deserialize;

/// `data.toml` as written; see `deploy/config/data.toml` for every option.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Address to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// URL of the control plane's gRPC endpoint, or of each replica, separated by commas.
    pub control_plane_url: String,
    /// Principal ARNs of the HTTP gateways (`kms-gateway`) allowed to resolve AccessKey pairs
    /// (`kms.v1.AccessKeyResolver`); empty: none.
    #[serde(default)]
    pub gateway_principals: Vec<String>,
    /// The HSM holding the root key.
    pub hsm: HsmConfig,
    /// The key cache.
    #[serde(default)]
    pub key_cache: CacheConfig,
    /// Caller identity.
    pub identity: IdentityConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Span export (OpenTelemetry).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Health checks on a plain-text port of their own.
    #[serde(default)]
    pub health: HealthConfig,
}

/// `[hsm]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module.
    pub module_path: PathBuf,
    /// Label of the token holding the root key.
    pub token_label: String,
    /// User PIN; prefer `user_pin_file` or `KMS_HSM__USER_PIN`.
    #[serde(default)]
    pub user_pin: Option<SecretString>,
    /// File whose first line is the user PIN.
    #[serde(default)]
    pub user_pin_file: Option<PathBuf>,
    /// Label of the root key, created at first start.
    #[serde(default = "default_root_label")]
    pub root_key_label: String,
    /// Most PKCS#11 sessions open at once.
    #[serde(default = "default_sessions")]
    pub max_sessions: usize,
}

/// `[key_cache]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Longest use of a cached key while the WatchKeys stream is up, in ms.
    #[serde(default = "default_ttl")]
    pub ttl_ms: u64,
    /// Longest use of a cached key while the WatchKeys stream is down, in ms: a disabled key is
    /// refused at most this long after the control plane commits the change.
    #[serde(default = "default_unwatched_ttl")]
    pub unwatched_ttl_ms: u64,
    /// Longest service from cache after the last contact with the control plane, in ms; after
    /// that, calls fail closed with UNAVAILABLE.
    #[serde(default = "default_staleness")]
    pub max_staleness_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_ms: default_ttl(),
            unwatched_ttl_ms: default_unwatched_ttl(),
            max_staleness_ms: default_staleness(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:7701".into()
}

fn default_root_label() -> String {
    "kms-root-v1".into()
}

fn default_sessions() -> usize {
    8
}

fn default_ttl() -> u64 {
    300_000
}

fn default_unwatched_ttl() -> u64 {
    1000
}

fn default_staleness() -> u64 {
    30_000
}

/// Validated data-plane settings.
#[derive(Debug)]
pub struct DataParams {
    /// Address to serve on.
    pub listen_addr: String,
    /// Control-plane replica URLs, at least one.
    pub control_plane_urls: Vec<String>,
    /// The gateways allowed to resolve AccessKey pairs.
    pub gateway_principals: Vec<kms_types::Principal>,
    /// HSM settings, PIN resolved.
    pub hsm: HsmParams,
    /// Cache lifetimes.
    pub cache: CacheTimes,
    /// Identity settings.
    pub identity: IdentityConfig,
    /// Audit settings.
    pub audit: AuditConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Span export.
    pub telemetry: TelemetryConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The plain-text health port.
    pub health: HealthConfig,
}

impl DataConfig {
    /// Checks every rule, reads the PIN file, and produces the settings the server runs with.
    pub fn validate(self) -> Result<DataParams, String> {
        let control_plane_urls =
            kms_runtime::replicas::parse_urls("control_plane_url", &self.control_plane_url)?;
        let pin = match (self.hsm.user_pin, &self.hsm.user_pin_file) {
            (Some(_), Some(_)) => return Err("hsm: set user_pin or user_pin_file, not both".into()),
            (Some(pin), None) => pin,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("hsm.user_pin_file {}: {e}", path.display()))?;
                let pin =
                    SecretString::from(text.lines().next().unwrap_or_default().trim().to_string());
                drop(text);
                pin
            }
            (None, None) => return Err("hsm: user_pin or user_pin_file is required".into()),
        };
        if self.hsm.token_label.is_empty() || self.hsm.token_label.len() > 32 {
            return Err("hsm.token_label must be 1 to 32 bytes".into());
        }
        if !(1..=256).contains(&self.hsm.max_sessions) {
            return Err(format!(
                "hsm.max_sessions must be 1 to 256, got {}",
                self.hsm.max_sessions
            ));
        }
        let c = &self.key_cache;
        if !(1..=3_600_000).contains(&c.ttl_ms) {
            return Err(format!(
                "key_cache.ttl_ms must be 1 to 3600000, got {}",
                c.ttl_ms
            ));
        }
        if c.unwatched_ttl_ms > 60_000 || c.unwatched_ttl_ms > c.ttl_ms {
            return Err(format!(
                "key_cache.unwatched_ttl_ms must be at most 60000 and at most ttl_ms, got {}",
                c.unwatched_ttl_ms
            ));
        }
        if c.max_staleness_ms > 3_600_000 {
            return Err(format!(
                "key_cache.max_staleness_ms must be at most 3600000, got {}",
                c.max_staleness_ms
            ));
        }
        self.identity.validate()?;
        self.audit.validate()?;
        self.limits.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        self.metrics.validate()?;
        self.health.validate()?;
        if self.identity.tls.is_some() && !control_plane_urls[0].starts_with("https://") {
            return Err("control_plane_url must be https:// when identity.tls is set".into());
        }
        let gateway_principals = self
            .gateway_principals
            .iter()
            .map(|arn| {
                kms_types::Principal::parse(arn)
                    .map_err(|_| format!("gateway_principals: {arn:?} is not a principal ARN"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DataParams {
            listen_addr: self.listen_addr,
            control_plane_urls,
            gateway_principals,
            hsm: HsmParams {
                module_path: self.hsm.module_path,
                token_label: self.hsm.token_label,
                user_pin: pin,
                root_key_label: self.hsm.root_key_label,
                max_sessions: self.hsm.max_sessions,
            },
            cache: CacheTimes {
                watched_ttl: Duration::from_millis(self.key_cache.ttl_ms),
                unwatched_ttl: Duration::from_millis(self.key_cache.unwatched_ttl_ms),
                max_staleness: Duration::from_millis(self.key_cache.max_staleness_ms),
            },
            identity: self.identity,
            audit: self.audit,
            limits: self.limits,
            log: self.log,
            telemetry: self.telemetry,
            metrics: self.metrics,
            health: self.health,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret;

    const GOOD: &str = r#"
control_plane_url = "http://127.0.0.1:7700"
[hsm]
module_path = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "kms"
user_pin = "1234"
[identity]
dev_header = true
service_principal = "acs:ram::1:role/data"
peer_principal = "acs:ram::1:role/control"
[audit]
path = "/tmp/kms-data-audit.log"
"#;

    fn parse(text: &str) -> Result<DataParams, String> {
        let raw: DataConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate()
    }

    #[test]
    fn good_config_and_defaults() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.listen_addr, "127.0.0.1:7701");
        assert_eq!(p.hsm.root_key_label, "kms-root-v1");
        assert_eq!(p.hsm.max_sessions, 8);
        assert_eq!(p.cache.watched_ttl, Duration::from_millis(300_000));
        assert_eq!(p.cache.unwatched_ttl, Duration::from_millis(1000));
        assert_eq!(p.cache.max_staleness, Duration::from_millis(30_000));
        assert!(
            !format!("{p:?}").contains("1234"),
            "the PIN leaks through Debug"
        );
    }

    #[test]
    fn reference_config_parses() {
        let raw: DataConfig =
            toml::from_str(include_str!("../../../deploy/config/data.toml")).unwrap();
        assert_eq!(raw.hsm.token_label, "kms");
    }

    #[test]
    fn pin_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        std::fs::write(&f, "s3cret\n").unwrap();
        let text = GOOD.replace(
            "user_pin = \"1234\"",
            &format!("user_pin_file = {:?}", f.display().to_string()),
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.hsm.user_pin.expose_secret(), "s3cret");
    }

    #[test]
    fn each_rule() {
        let cases = [
            (GOOD.replace("http://127", "127"), "control_plane_url"),
            (
                GOOD.replace("user_pin = \"1234\"", ""),
                "user_pin or user_pin_file is required",
            ),
            (
                GOOD.replace(
                    "user_pin = \"1234\"",
                    "user_pin = \"1\"\nuser_pin_file = \"/x\"",
                ),
                "not both",
            ),
            (
                GOOD.replace(
                    "user_pin = \"1234\"",
                    "user_pin_file = \"/nonexistent/pin\"",
                ),
                "user_pin_file",
            ),
            (
                GOOD.replace("token_label = \"kms\"", "token_label = \"\""),
                "token_label",
            ),
            (
                GOOD.replace("[identity]", "[key_cache]\nttl_ms = 0\n[identity]"),
                "ttl_ms",
            ),
            (
                GOOD.replace(
                    "[identity]",
                    "[key_cache]\nttl_ms = 500\nunwatched_ttl_ms = 600\n[identity]",
                ),
                "unwatched_ttl_ms",
            ),
            (
                GOOD.replace(
                    "[identity]",
                    "[key_cache]\nmax_staleness_ms = 4000000\n[identity]",
                ),
                "max_staleness_ms",
            ),
            (
                GOOD.replace("[identity]", "max_sessions = 0\n[identity]"),
                "max_sessions",
            ),
            (GOOD.replace("[hsm]", "[hsm]\nmodul = 1"), "modul"),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
