//! Control-plane configuration: the raw TOML shape and its validated form.

use std::path::PathBuf;
use std::time::Duration;

use kms_runtime::audit::AuditConfig;
use kms_runtime::identity::IdentityConfig;
use kms_runtime::limits::LimitsConfig;
use kms_runtime::telemetry::LogConfig;
use kms_types::Principal;
use serde::Deserialize;

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
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// URL of the data plane's gRPC endpoint.
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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
        }
    }
}

fn default_interval_ms() -> u64 {
    60_000
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
    /// sled directory.
    pub data_dir: PathBuf,
    /// Data-plane URL.
    pub data_plane_url: String,
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
    /// The clock offset file, if time is moved for tests or drills.
    pub clock_offset_file: Option<PathBuf>,
    /// Time between scheduler runs.
    pub scheduler_interval: Duration,
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
        if !(self.data_plane_url.starts_with("http://")
            || self.data_plane_url.starts_with("https://"))
        {
            return Err(format!(
                "data_plane_url {:?} must start with http:// or https://",
                self.data_plane_url
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err("data_dir is required".into());
        }
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
        if self.identity.tls.is_some() && !self.data_plane_url.starts_with("https://") {
            return Err("data_plane_url must be https:// when identity.tls is set".into());
        }
        if self.scheduler.interval_ms < MIN_SCHEDULER_INTERVAL_MS {
            return Err(format!(
                "scheduler.interval_ms must be at least {MIN_SCHEDULER_INTERVAL_MS}, got {}",
                self.scheduler.interval_ms
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
            data_dir: self.data_dir,
            data_plane_url: self.data_plane_url,
            operators,
            identity: self.identity,
            audit: self.audit,
            limits: self.limits,
            log: self.log,
            clock_offset_file: self.clock.offset_file,
            scheduler_interval: Duration::from_millis(self.scheduler.interval_ms),
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
    }

    #[test]
    fn good_config_and_defaults() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.listen_addr, "127.0.0.1:7700");
        assert_eq!(p.region, "local");
        assert_eq!(p.operators.len(), 1);
        assert_eq!(p.scheduler_interval, Duration::from_secs(60));
        assert_eq!(p.clock_offset_file, None);
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
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
