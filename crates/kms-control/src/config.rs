//! Control-plane configuration: the raw TOML shape and its validated form.

use std::path::PathBuf;
use std::time::Duration;

use kms_runtime::audit::AuditConfig;
use kms_runtime::identity::IdentityConfig;
use kms_runtime::limits::LimitsConfig;
use kms_runtime::metrics::MetricsConfig;
use kms_runtime::serve::HealthConfig;
use kms_runtime::telemetry::{LogConfig, TelemetryConfig};
use kms_types::Principal;
use serde::Deserialize;

pub use kms_store::config::{Engine, EtcdConfig, StoreConfig, StoreParams};

/// `control.toml` as written; see `deploy/config/control.toml` for every option.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// Region named in ARNs.
    #[serde(default = "default_region")]
    pub region: String,
    /// Directory of the sled database (engine `sled`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Where records are kept: sled in `data_dir`, or etcd.
    #[serde(default)]
    pub store: StoreConfig,
    /// URL of the data plane's gRPC endpoint, or of each replica, separated by commas.
    pub data_plane_url: String,
    /// Principals allowed to manage KMS instances.
    #[serde(default)]
    pub operators: Vec<String>,
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
    /// Where time comes from (tests and drills).
    #[serde(default)]
    pub clock: ClockConfig,
    /// How often the rotation scheduler and the deletion reaper run.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
}

/// `[clock]`: for tests and drills only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// A file holding a signed number of milliseconds added to the system time; a missing
    /// file means 0. Re-read when it changes.
    #[serde(default)]
    pub offset_file: Option<PathBuf>,
}

/// `[scheduler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Milliseconds between runs of the rotation scheduler and the reaper; at least 10.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Milliseconds a replica keeps the scheduler lease without renewing it; another replica
    /// takes over this long after the holder stops. 2000 to 600000.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
            lease_ms: default_lease_ms(),
        }
    }
}

fn default_interval_ms() -> u64 {
    60_000
}

fn default_lease_ms() -> u64 {
    10_000
}

/// Shortest scheduler interval accepted, in milliseconds.
pub const MIN_SCHEDULER_INTERVAL_MS: u64 = 10;

fn default_listen() -> String {
    "127.0.0.1:7700".into()
}

fn default_region() -> String {
    "local".into()
}

/// Validated control-plane settings.
#[derive(Debug, Clone)]
pub struct ControlParams {
    /// Address to serve on.
    pub listen_addr: String,
    /// Region named in ARNs.
    pub region: String,
    /// Where records are kept.
    pub store: StoreParams,
    /// Data-plane replica URLs, at least one.
    pub data_plane_urls: Vec<String>,
    /// Instance operators.
    pub operators: Vec<Principal>,
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
    /// The clock offset file, if time is moved for tests or drills.
    pub clock_offset_file: Option<PathBuf>,
    /// Time between scheduler runs.
    pub scheduler_interval: Duration,
    /// How long the scheduler lease lasts without renewal.
    pub scheduler_lease: Duration,
}

impl ControlConfig {
    /// Checks every rule and produces the settings the server runs with.
    pub fn validate(self) -> Result<ControlParams, String> {
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "region {:?} must be letters, digits and -",
                self.region
            ));
        }
        let data_plane_urls =
            kms_runtime::replicas::parse_urls("data_plane_url", &self.data_plane_url)?;
        let store = self.store.params(self.data_dir)?;
        let operators = self
            .operators
            .iter()
            .map(|arn| {
                Principal::parse(arn)
                    .map_err(|_| format!("operators: {arn:?} is not a principal ARN"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.identity.validate()?;
        self.audit.validate()?;
        self.limits.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        self.metrics.validate()?;
        self.health.validate()?;
        if self.identity.tls.is_some() && !data_plane_urls[0].starts_with("https://") {
            return Err("data_plane_url must be https:// when identity.tls is set".into());
        }
        if self.scheduler.interval_ms < MIN_SCHEDULER_INTERVAL_MS {
            return Err(format!(
                "scheduler.interval_ms must be at least {MIN_SCHEDULER_INTERVAL_MS}, got {}",
                self.scheduler.interval_ms
            ));
        }
        if !(2_000..=600_000).contains(&self.scheduler.lease_ms) {
            return Err(format!(
                "scheduler.lease_ms must be 2000 to 600000, got {}",
                self.scheduler.lease_ms
            ));
        }
        if self
            .clock
            .offset_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("clock.offset_file must not be empty; leave it out for no offset".into());
        }
        Ok(ControlParams {
            listen_addr: self.listen_addr,
            region: self.region,
            store,
            data_plane_urls,
            operators,
            identity: self.identity,
            audit: self.audit,
            limits: self.limits,
            log: self.log,
            telemetry: self.telemetry,
            metrics: self.metrics,
            health: self.health,
            clock_offset_file: self.clock.offset_file,
            scheduler_interval: Duration::from_millis(self.scheduler.interval_ms),
            scheduler_lease: Duration::from_millis(self.scheduler.lease_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<ControlParams, String> {
        let raw: ControlConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate()
    }

    const GOOD: &str = r#"
data_dir = "/tmp/x"
data_plane_url = "http://127.0.0.1:7701"
operators = ["acs:ram::1:user/op"]
[identity]
dev_header = true
service_principal = "acs:ram::1:role/control"
peer_principal = "acs:ram::1:role/data"
[audit]
path = "/tmp/kms-control-audit.log"
"#;

    #[test]
    fn reference_config_parses() {
        let raw: ControlConfig =
            toml::from_str(include_str!("../../../deploy/config/control.toml")).unwrap();
        assert_eq!(raw.region, "local");
        assert!(raw.identity.tls.is_some());
        assert_eq!(raw.store.engine, Engine::Sled);
    }

    /// The commented-out `[store.etcd]` of the reference config names every option, and
    /// uncommented it is a valid etcd store.
    #[test]
    fn reference_etcd_section_parses_when_uncommented() {
        let reference = include_str!("../../../deploy/config/control.toml");
        let start = reference.find("# [store.etcd]").unwrap();
        let section: String = reference[start..]
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let text =
            GOOD.replace("data_dir = \"/tmp/x\"\n", "") + "[store]\nengine = \"etcd\"\n" + &section;
        let p = parse(&text).unwrap();
        let StoreParams::Etcd(etcd) = p.store else {
            panic!("etcd expected");
        };
        assert_eq!(etcd.endpoints.len(), 3);
        assert_eq!(etcd.username.as_deref(), Some("kms"));
        assert!(etcd.ca_file.is_some() && etcd.cert_file.is_some() && etcd.key_file.is_some());
        assert_eq!((etcd.max_txn_ops, etcd.request_timeout_ms), (128, 5000));
    }

    #[test]
    fn good_config_and_defaults() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.listen_addr, "127.0.0.1:7700");
        assert_eq!(p.region, "local");
        assert_eq!(p.operators.len(), 1);
        assert_eq!(p.scheduler_interval, Duration::from_secs(60));
        assert_eq!(p.clock_offset_file, None);
        assert!(matches!(&p.store, StoreParams::Sled(d) if d == &PathBuf::from("/tmp/x")));
        assert_eq!(p.data_plane_urls, vec!["http://127.0.0.1:7701".to_owned()]);
        assert_eq!(p.scheduler_lease, Duration::from_secs(10));
    }

    #[test]
    fn etcd_store_and_replicas() {
        let p = parse(&format!(
            "{}[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [\"http://a:2379\", \"http://b:2379\"]\n",
            GOOD.replace("\"http://127.0.0.1:7701\"", "\"http://d1:7701, http://d2:7701\"")
        ))
        .unwrap();
        assert_eq!(p.data_plane_urls.len(), 2);
        let StoreParams::Etcd(etcd) = &p.store else {
            panic!("etcd expected");
        };
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, "kms/");
        assert_eq!(etcd.max_txn_ops, 128);
    }

    #[test]
    fn clock_and_scheduler_sections() {
        let p = parse(&format!(
            "{GOOD}[clock]\noffset_file = \"/tmp/off\"\n[scheduler]\ninterval_ms = 10\n"
        ))
        .unwrap();
        assert_eq!(p.clock_offset_file, Some(PathBuf::from("/tmp/off")));
        assert_eq!(p.scheduler_interval, Duration::from_millis(10));
    }

    #[test]
    fn each_rule() {
        let cases = [
            (GOOD.replace("http://127", "ftp://127"), "data_plane_url"),
            (GOOD.replace("acs:ram::1:user/op", "op"), "operators"),
            (
                GOOD.replace("dev_header = true", "dev_header = false"),
                "no authentication mode",
            ),
            (GOOD.replace("role/data", "nobody"), "peer_principal"),
            (format!("region = \"a b\"\n{GOOD}"), "region"),
            (format!("surprise = 1\n{GOOD}"), "surprise"),
            (
                format!("{GOOD}[scheduler]\ninterval_ms = 9\n"),
                "scheduler.interval_ms",
            ),
            (
                format!("{GOOD}[clock]\noffset_file = \"\"\n"),
                "clock.offset_file",
            ),
            (format!("{GOOD}[clock]\nspeed = 2\n"), "speed"),
            (
                format!("{GOOD}[scheduler]\nlease_ms = 1000\n"),
                "scheduler.lease_ms",
            ),
            (
                GOOD.replace("data_dir = \"/tmp/x\"", ""),
                "data_dir is required",
            ),
            (
                format!("{GOOD}[store]\nengine = \"etcd\"\n"),
                "store.etcd is required",
            ),
            (
                format!("{GOOD}[store]\nengine = \"raft\"\n"),
                "unknown variant",
            ),
            (
                format!("{GOOD}[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = []\n"),
                "at least one URL",
            ),
            (
                format!(
                    "{GOOD}[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [\"https://e:2379\"]\n"
                ),
                "ca_file is not set",
            ),
            (
                format!(
                    "{GOOD}[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [\"http://e:2379\"]\nusername = \"kms\"\n"
                ),
                "username and password_file",
            ),
            (
                format!(
                    "{GOOD}[store]\nengine = \"etcd\"\n[store.etcd]\nendpoints = [\"http://e:2379\"]\nprefix = \"\"\n"
                ),
                "prefix must not be empty",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
