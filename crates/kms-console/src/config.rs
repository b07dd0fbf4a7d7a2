//! The console's configuration: TOML (`deploy/config/console.toml` documents every option)
//! with `KMS_*` environment overrides, parsed into [`ConsoleConfig`] and checked into
//! [`Params`] before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use kms_runtime::identity::IpNet;
use kms_runtime::telemetry::LogConfig;
use serde::Deserialize;

/// `console.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsoleConfig {
    #[serde(default = "default_listen_addr")]
    pub(crate) listen_addr: String,
    pub(crate) control_plane_url: String,
    pub(crate) data_plane_url: String,
    #[serde(default)]
    pub(crate) session_secret_file: Option<PathBuf>,
    #[serde(default = "default_session_hours")]
    pub(crate) session_hours: u64,
    #[serde(default)]
    pub(crate) identity: IdentityConfig,
    #[serde(default)]
    pub(crate) planes: PlanesConfig,
    #[serde(default)]
    pub(crate) tls: Option<TlsConfig>,
    #[serde(default)]
    pub(crate) log: LogConfig,
}

/// `[identity]`: how the console learns who is signed in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityConfig {
    #[serde(default)]
    pub(crate) proxy_header: Option<ProxyHeaderConfig>,
    #[serde(default)]
    pub(crate) dev_sign_in: Option<DevSignInConfig>,
}

/// `[identity.proxy_header]`: an authenticating proxy in front of the console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyHeaderConfig {
    #[serde(default = "default_proxy_header")]
    pub(crate) header: String,
    pub(crate) trusted_proxies: Vec<String>,
}

/// `[identity.dev_sign_in]`: a sign-in page offering the principals of a dev stack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DevSignInConfig {
    pub(crate) dev_json: PathBuf,
}

/// `[planes]`: how the console calls the planes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanesConfig {
    #[serde(default = "default_plane_header")]
    pub(crate) principal_header: String,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
}

impl Default for PlanesConfig {
    fn default() -> Self {
        Self {
            principal_header: default_plane_header(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// `[tls]`: serve HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsConfig {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

fn default_listen_addr() -> String {
    "127.0.0.1:7702".into()
}

fn default_session_hours() -> u64 {
    8
}

fn default_proxy_header() -> String {
    "x-kms-principal".into()
}

fn default_plane_header() -> String {
    "x-kms-principal".into()
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) listen_addr: SocketAddr,
    pub(crate) control_plane_url: String,
    pub(crate) data_plane_url: String,
    pub(crate) session_secret_file: Option<PathBuf>,
    pub(crate) session_seconds: u64,
    pub(crate) proxy: Option<Proxy>,
    pub(crate) dev_json: Option<PathBuf>,
    pub(crate) plane_header: String,
    pub(crate) plane_tls: Option<PlaneTls>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) log: LogConfig,
}

/// Trusted proxies and the header they set.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    pub(crate) header: String,
    pub(crate) trusted: Vec<IpNet>,
}

impl Proxy {
    /// Whether a request from `peer` may name its principal in the header.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }
}

/// TLS towards the planes.
#[derive(Debug, Clone)]
pub(crate) struct PlaneTls {
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// Loads `path` with `KMS_*` overrides and checks it.
pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Params> {
    let raw: ConsoleConfig = kms_runtime::config::load(path, "KMS_", std::env::vars())?;
    raw.validate()
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ConsoleConfig {
    /// Checks every value; the first rule broken is the error.
    pub(crate) fn validate(self) -> anyhow::Result<Params> {
        let listen_addr: SocketAddr = self
            .listen_addr
            .parse()
            .map_err(|_| anyhow::anyhow!("listen_addr {:?} is not an IP:PORT", self.listen_addr))?;
        for (name, url) in [
            ("control_plane_url", &self.control_plane_url),
            ("data_plane_url", &self.data_plane_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("{name} {url:?} must start with http:// or https://");
            }
        }
        if !(1..=24 * 7).contains(&self.session_hours) {
            anyhow::bail!("session_hours must be 1 to 168, not {}", self.session_hours);
        }
        let proxy = match self.identity.proxy_header {
            None => None,
            Some(p) => {
                if !is_header_name(&p.header) {
                    anyhow::bail!(
                        "identity.proxy_header.header {:?} must be a lowercase header name",
                        p.header
                    );
                }
                if p.trusted_proxies.is_empty() {
                    anyhow::bail!(
                        "identity.proxy_header.trusted_proxies is empty: list the proxies' addresses"
                    );
                }
                let mut trusted = Vec::new();
                for t in &p.trusted_proxies {
                    let net: IpNet = t.parse().map_err(|e| {
                        anyhow::anyhow!("identity.proxy_header.trusted_proxies: {e}")
                    })?;
                    if net.to_string().ends_with("/0") {
                        anyhow::bail!(
                            "identity.proxy_header.trusted_proxies: {t:?} trusts every address"
                        );
                    }
                    trusted.push(net);
                }
                Some(Proxy {
                    header: p.header,
                    trusted,
                })
            }
        };
        let dev_json = self.identity.dev_sign_in.map(|d| d.dev_json);
        if proxy.is_none() && dev_json.is_none() {
            anyhow::bail!(
                "no identity mode: configure [identity.proxy_header] or [identity.dev_sign_in]"
            );
        }
        if !is_header_name(&self.planes.principal_header) {
            anyhow::bail!(
                "planes.principal_header {:?} must be a lowercase header name",
                self.planes.principal_header
            );
        }
        let plane_tls = match (
            self.planes.ca_file,
            self.planes.cert_file,
            self.planes.key_file,
        ) {
            (None, None, None) => None,
            (Some(ca_file), Some(cert_file), Some(key_file)) => Some(PlaneTls {
                ca_file,
                cert_file,
                key_file,
            }),
            _ => anyhow::bail!("planes.ca_file, cert_file and key_file go together"),
        };
        self.log.validate().map_err(anyhow::Error::msg)?;
        Ok(Params {
            listen_addr,
            control_plane_url: self.control_plane_url,
            data_plane_url: self.data_plane_url,
            session_secret_file: self.session_secret_file,
            session_seconds: self.session_hours * 3600,
            proxy,
            dev_json,
            plane_header: self.planes.principal_header,
            plane_tls,
            tls: self.tls,
            log: self.log,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> anyhow::Result<Params> {
        let table: toml::Table = text.parse()?;
        let raw: ConsoleConfig = table.try_into()?;
        raw.validate()
    }

    const PLANES: &str = "control_plane_url = \"http://127.0.0.1:7700\"\n\
                          data_plane_url = \"http://127.0.0.1:7701\"\n";

    #[test]
    fn needs_an_identity_mode() {
        let err = parse(PLANES).unwrap_err().to_string();
        assert!(err.contains("no identity mode"), "{err}");
    }

    #[test]
    fn proxies_are_trusted_by_address_only() {
        let p = parse(&format!(
            "{PLANES}[identity.proxy_header]\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
        ))
        .unwrap();
        let proxy = p.proxy.unwrap();
        assert!(proxy.trusts("10.1.2.3".parse().unwrap()));
        assert!(!proxy.trusts("127.0.0.1".parse().unwrap()));
        assert_eq!(proxy.header, "x-kms-principal");
    }

    #[test]
    fn refuses_trusting_everyone_and_bad_values() {
        for (extra, expected) in [
            (
                "[identity.proxy_header]\ntrusted_proxies = [\"0.0.0.0/0\"]\n",
                "trusts every address",
            ),
            (
                "[identity.proxy_header]\ntrusted_proxies = []\n",
                "is empty",
            ),
            (
                "[identity.proxy_header]\nheader = \"X Bad\"\ntrusted_proxies = [\"127.0.0.1\"]\n",
                "lowercase header name",
            ),
            (
                "session_hours = 0\n[identity.dev_sign_in]\ndev_json = \"/x\"\n",
                "session_hours",
            ),
            (
                "[identity.dev_sign_in]\ndev_json = \"/x\"\n[planes]\nca_file = \"/ca\"\n",
                "go together",
            ),
        ] {
            let err = parse(&format!("{PLANES}{extra}")).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn the_reference_file_is_valid_and_complete() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/console.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let p = parse(&text).unwrap();
        assert!(p.proxy.is_some() && p.plane_tls.is_some() && p.tls.is_some());
        assert_eq!(p.listen_addr.to_string(), "127.0.0.1:7702");
        // Every option of the config is in the reference, commented or not.
        for option in [
            "listen_addr",
            "control_plane_url",
            "data_plane_url",
            "session_secret_file",
            "session_hours",
            "[identity.proxy_header]",
            "header",
            "trusted_proxies",
            "[identity.dev_sign_in]",
            "dev_json",
            "[planes]",
            "principal_header",
            "ca_file",
            "cert_file",
            "key_file",
            "[tls]",
            "[log]",
            "level",
            "format",
        ] {
            assert!(text.contains(option), "{option}");
        }
    }
}
