//! The gateway's configuration: TOML (`deploy/config/gateway.toml` documents every option)
//! with `KMS_*` environment overrides, checked into [`GatewayParams`] before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use kms_runtime::telemetry::{LogConfig, TelemetryConfig};
use kms_types::Principal;
use serde::Deserialize;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to serve HTTP (or HTTPS with `[tls]`) on.
    #[serde(default = "default_listen")]
    pub listen_addr: String,
    /// The control plane's gRPC URL.
    pub control_plane_url: String,
    /// The data plane's gRPC URL.
    pub data_plane_url: String,
    /// The region id `DescribeRegions` answers with.
    #[serde(default = "default_region")]
    pub region: String,
    /// How the gateway identifies itself and its callers to the planes.
    pub identity: IdentityConfig,
    /// Signature checks.
    #[serde(default)]
    pub signature: SignatureConfig,
    /// Serve HTTPS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Reach the planes over TLS (their `https://` URLs).
    #[serde(default)]
    pub planes_tls: Option<PlanesTlsConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[identity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The gateway's own principal: the data plane's `gateway_principals` must list it.
    pub service_principal: String,
    /// The header the planes read a caller's principal from: `x-kms-principal` (their
    /// `dev_header`) or their `[identity.trusted_sidecar] header`, with the gateway's address
    /// among the trusted peers.
    #[serde(default = "default_principal_header")]
    pub principal_header: String,
}

/// `[signature]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    /// Most a request's timestamp may be off the gateway's clock, in seconds.
    #[serde(default = "default_skew")]
    pub max_clock_skew_s: u64,
    /// How long a nonce is remembered, in seconds.
    #[serde(default = "default_skew")]
    pub nonce_ttl_s: u64,
    /// Most nonces remembered at once; requests beyond are refused until some expire.
    #[serde(default = "default_max_nonces")]
    pub max_nonces: usize,
    /// How long a resolved AccessKey pair is kept, in milliseconds (at most 1000).
    #[serde(default = "default_secret_ttl")]
    pub secret_cache_ms: u64,
}

impl Default for SignatureConfig {
    fn default() -> Self {
        Self {
            max_clock_skew_s: default_skew(),
            nonce_ttl_s: default_skew(),
            max_nonces: default_max_nonces(),
            secret_cache_ms: default_secret_ttl(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Its private key, PEM.
    pub key_file: PathBuf,
}

/// `[planes_tls]`: TLS towards the planes, checking their certificates; no client certificate
/// (the planes would then take the gateway's certificate for every caller), so the planes must
/// let certificate-less connections in (`require_client_cert = false`) and believe the
/// gateway's header as a trusted sidecar's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanesTlsConfig {
    /// CA bundle (PEM) the planes' certificates chain to.
    pub ca_file: PathBuf,
    /// The name the planes' certificates carry; default the host of each URL.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:7703".into()
}

fn default_region() -> String {
    "local".into()
}

fn default_principal_header() -> String {
    kms_runtime::identity::DEV_PRINCIPAL_HEADER.into()
}

fn default_skew() -> u64 {
    900
}

fn default_max_nonces() -> usize {
    1_000_000
}

fn default_secret_ttl() -> u64 {
    1000
}

/// What the gateway runs with.
#[derive(Debug)]
pub struct GatewayParams {
    /// Address to serve on.
    pub listen_addr: String,
    /// Control-plane URL.
    pub control_plane_url: String,
    /// Data-plane URL.
    pub data_plane_url: String,
    /// Region id.
    pub region: String,
    /// The gateway's principal.
    pub service_principal: Principal,
    /// Where the caller's principal goes.
    pub principal_header: http::HeaderName,
    /// Timestamp window either side of now.
    pub max_clock_skew: Duration,
    /// Nonce memory.
    pub nonce_ttl: Duration,
    /// Most nonces remembered.
    pub max_nonces: usize,
    /// Secret cache lifetime.
    pub secret_ttl: Duration,
    /// HTTPS files.
    pub tls: Option<TlsConfig>,
    /// TLS towards the planes.
    pub planes_tls: Option<PlanesTlsConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Span export (off: the gateway's spans go to its log).
    pub telemetry: TelemetryConfig,
}

impl GatewayConfig {
    /// Checks every rule.
    pub fn validate(self) -> Result<GatewayParams, String> {
        for (name, url) in [
            ("control_plane_url", &self.control_plane_url),
            ("data_plane_url", &self.data_plane_url),
        ] {
            match (url.split_once("://").map(|(s, _)| s), &self.planes_tls) {
                (Some("http"), None) | (Some("https"), Some(_)) => {}
                (Some("https"), None) => {
                    return Err(format!(
                        "{name} {url:?} is https://: set [planes_tls] ca_file to check the \
                         planes' certificates"
                    ));
                }
                (Some("http"), Some(_)) => {
                    return Err(format!(
                        "{name} {url:?} is http:// while [planes_tls] is set: use https://"
                    ));
                }
                _ => return Err(format!("{name} {url:?} is not an http:// or https:// URL")),
            }
        }
        let service_principal =
            Principal::parse(&self.identity.service_principal).map_err(|_| {
                format!(
                    "identity.service_principal {:?} is not a principal ARN",
                    self.identity.service_principal
                )
            })?;
        let principal_header = http::HeaderName::from_bytes(
            self.identity
                .principal_header
                .to_ascii_lowercase()
                .as_bytes(),
        )
        .map_err(|_| {
            format!(
                "identity.principal_header {:?} is not a header name",
                self.identity.principal_header
            )
        })?;
        let s = &self.signature;
        if !(60..=3600).contains(&s.max_clock_skew_s) {
            return Err("signature.max_clock_skew_s must be 60–3600".into());
        }
        if s.nonce_ttl_s < s.max_clock_skew_s {
            return Err(
                "signature.nonce_ttl_s must be at least signature.max_clock_skew_s, or a nonce \
                 could be replayed while its timestamp is still accepted"
                    .into(),
            );
        }
        if s.max_nonces == 0 {
            return Err("signature.max_nonces must be at least 1".into());
        }
        if s.secret_cache_ms > 1000 {
            return Err(
                "signature.secret_cache_ms must be at most 1000: a disabled or deleted pair must \
                 stop working within a second"
                    .into(),
            );
        }
        Ok(GatewayParams {
            listen_addr: self.listen_addr,
            control_plane_url: self.control_plane_url,
            data_plane_url: self.data_plane_url,
            region: self.region,
            service_principal,
            principal_header,
            max_clock_skew: Duration::from_secs(s.max_clock_skew_s),
            nonce_ttl: Duration::from_secs(s.nonce_ttl_s),
            max_nonces: s.max_nonces,
            secret_ttl: Duration::from_millis(s.secret_cache_ms),
            tls: self.tls,
            planes_tls: self.planes_tls,
            log: self.log,
            telemetry: TelemetryConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const GOOD: &str = r#"
control_plane_url = "http://127.0.0.1:7700"
data_plane_url = "http://127.0.0.1:7701"
[identity]
service_principal = "acs:ram::1000000000000000:role/kms-gateway"
"#;

    fn check(text: &str) -> Result<GatewayParams, String> {
        toml::from_str::<GatewayConfig>(text)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn defaults_and_rules() {
        let p = check(GOOD).unwrap();
        assert_eq!(p.listen_addr, "127.0.0.1:7703");
        assert_eq!(p.principal_header.as_str(), "x-kms-principal");
        assert_eq!(p.max_clock_skew, Duration::from_secs(900));
        assert_eq!(p.secret_ttl, Duration::from_millis(1000));
        for (bad, what) in [
            (
                format!("{GOOD}[signature]\nsecret_cache_ms = 1001\n"),
                "secret_cache_ms",
            ),
            (
                format!("{GOOD}[signature]\nnonce_ttl_s = 100\n"),
                "nonce_ttl_s",
            ),
            (
                GOOD.replace("role/kms-gateway", "nope"),
                "service_principal",
            ),
            (
                GOOD.replace("http://127.0.0.1:7700", "127.0.0.1:7700"),
                "control_plane_url",
            ),
            (format!("{GOOD}surprise = 1\n"), "surprise"),
        ] {
            let err = check(&bad).err().unwrap_or_default();
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    /// The commented reference file loads, and names every option with its default.
    #[test]
    fn the_reference_file_loads() {
        let text = include_str!("../../../deploy/config/gateway.toml");
        let p = check(text).unwrap();
        assert_eq!(p.listen_addr, "127.0.0.1:7703");
        let uncommented = text
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for option in [
            "listen_addr",
            "control_plane_url",
            "data_plane_url",
            "region",
            "service_principal",
            "principal_header",
            "max_clock_skew_s",
            "nonce_ttl_s",
            "max_nonces",
            "secret_cache_ms",
            "cert_file",
            "key_file",
            "ca_file",
            "server_name",
            "level",
            "format",
        ] {
            assert!(
                uncommented.contains(&format!("{option} = ")),
                "deploy/config/gateway.toml does not show {option}"
            );
        }
    }
}
